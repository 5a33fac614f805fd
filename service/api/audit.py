"""The audit log over the API: `GET /v1/audit`, every account change and who made it, newest first.

Each entry has the `actor` its request named and the `principal`, the name of the token
that made the request (`service.api.auth`; `outguard` changes made while scoring carry
the scoring request's token). Filters combine (all must hold); `cursor` pages on: pass
the `next_cursor` of the previous page. A token limited to some relays sees only theirs.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from service.api.auth import PrincipalDep
from service.api.common import ContainerDep, json_response
from service.api.reports import parse_time
from service.api.routes import ERRORS
from service.api.schemas import Name
from service.errors import InvalidInput
from service.stores.ledger import AUDIT_PAGE_MAX, AuditQuery

audit_router = APIRouter(prefix="/v1", tags=["audit"], responses=ERRORS)
MAX_LISTED = 100  # relays or actions one query may name


def _listed(name: str, values: list[str] | None, longest: int) -> list[str] | None:
    if not values:
        return None
    if len(values) > MAX_LISTED:
        raise InvalidInput(f"`{name}` is given {len(values)} times, over the limit of {MAX_LISTED}")
    for value in values:
        if not value or len(value) > longest:
            raise InvalidInput(f"`{name}` must be 1 to {longest} characters")
    return values


@audit_router.get("/audit", summary="The audit log: account changes and who made them (token and actor), newest first")
async def audit_log(
    container: ContainerDep,
    caller: PrincipalDep,
    relay: Annotated[list[Name] | None, Query(description="Only this relay (repeat for several)")] = None,
    account: Annotated[Name | None, Query(min_length=1, max_length=998)] = None,
    action: Annotated[
        list[Name] | None, Query(description="Only this action, e.g. locked, unlocked, reset (repeat for several)")
    ] = None,
    actor: Annotated[Name | None, Query(min_length=1, max_length=256, description="As the request named it")] = None,
    principal: Annotated[Name | None, Query(min_length=1, max_length=64, description="The token's name")] = None,
    operation_id: Annotated[Name | None, Query(min_length=1, max_length=64, description="A bulk operation")] = None,
    since: Annotated[str | None, Query(description="From, unix seconds or RFC 3339")] = None,
    until: Annotated[str | None, Query(description="Up to (exclusive), unix seconds or RFC 3339")] = None,
    cursor: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="`next_cursor` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=AUDIT_PAGE_MAX, description="Entries per page")] = 100,
) -> Response:
    relays = _listed("relay", relay, 128)
    if caller.relays is not None and relays is None:
        relays = sorted(caller.relays)  # a token limited to some relays sees theirs (relay_guard checked named ones)
    start = parse_time(since, "since", 0.0) if since is not None else None
    end = parse_time(until, "until", time.time()) if until is not None else None
    if start is not None and end is not None and start >= end:
        raise InvalidInput(f"`since` ({start}) must be before `until` ({end})")
    query = AuditQuery(
        relays=relays,
        account=account,
        actions=_listed("action", action, 64),
        actor=actor,
        principal=principal,
        operation_id=operation_id,
        since=start,
        until=end,
        before_id=cursor,
        limit=limit + 1,
    )
    rows = await container.ledger.audit(query)
    page = rows[:limit]
    more = len(rows) > limit
    return json_response(
        {"entries": page, "limit": limit, "next_cursor": page[-1]["id"] if more and page else None},
    )
