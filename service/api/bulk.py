"""Bulk actions: lock, unlock, allowlist or reset many accounts of a relay as one audited operation.

`POST /v1/accounts/{relay}/bulk` names the accounts (`accounts`) or a `filter` (every
criterion given must hold): `min_risk` (account risk at least this), `status`, `domain`
(the part after the last @, any case), `identity_source` (scored under an identity found
that way, e.g. `rule:php-script`), `campaign_id` (a cluster of `GET /v1/campaigns`: its
senders on this relay). A filter looks at the accounts the service knows on the relay
(scored mail in the retained log, or a recorded status); a campaign's senders are those
its cluster keeps (`GET /v1/campaigns`; at most `max_accounts_per_cluster`).

Each selected account is one of:

- `changed`: the action changes it (or, in a dry run, would);
- `unchanged`: already so (locked for a lock, not locked for an unlock, allowlisted as
  asked, nothing to reset), left alone;
- `unseen`: named in `accounts` but never seen on the relay, skipped unless `force`
  (a typo must not create an account).

A dry run (`dry_run: true`) answers the same without changing or recording anything.
Otherwise the operation is recorded before any of it takes effect: one transaction
holds its `bulk_operations` row, every changed account's audit entry (carrying the
operation's id and the token's name as principal) and its status
(`SqlAccountLedger.record_bulk`). Only once committed is each change applied to the
hot state (to the freshest state, as `change_account` does), announced (webhooks), and,
for an unlock, are the signatures of its false locks taken down. When the database
refuses, nothing has changed (503). Should the hot state refuse an account's change
after the record, the others are still applied and the request answers the error;
the same operation again finds what was left and applies it.
`GET /v1/accounts/{relay}/bulk/{operation_id}` reads the operation back with its entries.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from service.api.accounts import MAX_LOCK_S, Actor, Reason, RelayPath, evidently_seen
from service.api.auth import PrincipalDep
from service.api.common import ContainerDep, json_response
from service.api.routes import ERRORS, NOT_FOUND
from service.api.schemas import Name
from service.container import Container
from service.decision import account_risk
from service.errors import InvalidInput, NotFound
from service.feedback.verdicts import signatures_to_take_down
from service.lifecycle import Transition, admin_allowlist, admin_lock, admin_reset, admin_unlock
from service.stores import AccountKey, AccountState, AccountStatus
from service.stores.ledger import BulkOperation

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

bulk_router = APIRouter(prefix="/v1/accounts", tags=["accounts"], responses=ERRORS)

MAX_ACCOUNTS = 50_000  # accounts one operation may select
MAX_CANDIDATES = 200_000  # accounts a filter may look at on the way
# Hot-state reads and writes in flight: Redis round trips overlap, and most of the pool's 100
# connections stay free for scoring (the client's work, not the wait, bounds it past ~8).
CONCURRENCY = 16
ENTRIES_PAGE_MAX = 10_000

BulkAction = Literal["lock", "unlock", "allowlist", "reset"]
AccountName = Annotated[Name, StringConstraints(min_length=1, max_length=998)]
Domain = Annotated[Name, StringConstraints(min_length=1, max_length=253, pattern=r"^[^@\s]+$")]
BIGINT = 2**63 - 1  # ids and offsets the databases can compare


class BulkFilter(BaseModel):
    """Which accounts: every criterion given must hold (at least one)."""

    model_config = ConfigDict(extra="forbid")

    min_risk: float | None = Field(default=None, ge=0, le=1, description="Account risk at least this (0 to 1)")
    status: list[AccountStatus] | None = Field(
        default=None, min_length=1, description="One status or a list: active, rate_limited, locked_temporary, locked"
    )
    domain: Domain | None = Field(default=None, description="The part of the account after its last @ (any case)")
    identity_source: Annotated[Name, StringConstraints(min_length=1, max_length=1024)] | None = Field(
        default=None, description="Scored under an identity found this way, e.g. `sasl` or `rule:php-script`"
    )
    campaign_id: int | None = Field(
        default=None, ge=1, le=BIGINT, description="A campaign of GET /v1/campaigns: its senders"
    )

    @field_validator("status", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _something(self) -> BulkFilter:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError("a filter needs at least one of min_risk, status, domain, identity_source, campaign_id")
        if self.domain is not None:
            self.domain = self.domain.lower()
        return self


class BulkIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "action": "lock",
                "filter": {"campaign_id": 12, "min_risk": 0.5},
                "reason": "phishing run, ticket 4711",
                "dry_run": True,
            }
        },
    )

    action: BulkAction
    accounts: list[AccountName] | None = Field(
        default=None, min_length=1, max_length=MAX_ACCOUNTS, description="The accounts, by name (or a filter)"
    )
    filter: BulkFilter | None = Field(default=None, description="Which accounts (or `accounts`)")
    actor: Actor | None = Field(default=None, description="Who asks; default: the token's name")
    reason: Reason
    dry_run: bool = Field(default=False, description="Say what would change; change and record nothing")
    force: bool = Field(default=False, description="Act on named accounts never seen on the relay too")
    duration_s: int | None = Field(
        default=None, ge=60, le=MAX_LOCK_S, description="lock: a temporary lock; default: permanent"
    )
    allowlisted: bool | None = Field(default=None, description="allowlist: true (default) or false to take it back")

    @model_validator(mode="after")
    def _consistent(self) -> BulkIn:
        if (self.accounts is None) == (self.filter is None):
            raise ValueError("give either `accounts` or `filter`, not both or neither")
        if self.duration_s is not None and self.action != "lock":
            raise ValueError("`duration_s` goes with the lock action only")
        if self.allowlisted is not None and self.action != "allowlist":
            raise ValueError("`allowlisted` goes with the allowlist action only")
        return self


Change = Callable[[AccountState, float], Transition]


@dataclass(slots=True)
class Planned:
    key: AccountKey
    state: AccountState  # as read
    outcome: Literal["changed", "unchanged", "unseen"]
    after: AccountState | None = None
    transition: Transition | None = None

    def public(self) -> dict[str, Any]:
        to_status = self.after.status if self.after is not None else self.state.status
        return {
            "account": self.key.account,
            "outcome": self.outcome,
            "from_status": self.state.status.value,
            "to_status": to_status.value,
        }


def _change(body: BulkIn, actor: str) -> Change:
    reason = body.reason
    if body.action == "lock":
        return lambda s, at: admin_lock(s, actor, reason, at, body.duration_s)
    if body.action == "unlock":
        return lambda s, at: admin_unlock(s, actor, reason, at)
    if body.action == "reset":
        return lambda s, at: admin_reset(s, actor, reason, at)
    allowlisted = body.allowlisted is not False
    return lambda s, at: admin_allowlist(s, allowlisted, actor, reason, at)


def _already(body: BulkIn) -> Callable[[AccountState], bool]:
    """Whether the action would leave the account as it is (it is left alone, and not audited)."""
    if body.action == "lock":
        if body.duration_s is None:
            return lambda s: s.status is AccountStatus.LOCKED
        return lambda s: s.locked  # a temporary lock never shortens a lock in place
    if body.action == "unlock":
        return lambda s: s.status is AccountStatus.ACTIVE and not s.pending_change
    if body.action == "reset":
        return lambda s: (
            s.status is AccountStatus.ACTIVE
            and s.evidence == 0.0
            and s.temporary_locks == 0
            and not s.compromised_verdict
            and not s.pending_change
        )
    allowlisted = body.allowlisted is not False
    return lambda s: s.allowlisted == allowlisted


async def each(items: Sequence[T], call: Callable[[T], Awaitable[R]], concurrency: int = CONCURRENCY) -> list[R]:
    """`call` on every item, `concurrency` at a time, results in order; the first failure stops the rest."""
    results: list[Any] = [None] * len(items)
    indexes = iter(range(len(items)))

    async def worker() -> None:
        for i in indexes:
            results[i] = await call(items[i])

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(concurrency, len(items))):
                group.create_task(worker())
    except BaseExceptionGroup as failed:  # the first one, as the error handlers know it (a 503...)
        raise failed.exceptions[0]  # noqa: B904
    return results


def _domain_of(account: str) -> str | None:
    _, at, domain = account.rpartition("@")
    return domain.lower() if at else None


async def _candidates(container: Container, relay: str, where: BulkFilter) -> list[str]:
    """Accounts on the relay the filter's name-based criteria allow (risk and status are read after)."""
    names: list[str] | None = None
    if where.campaign_id is not None:
        fingerprints = container.fingerprints
        if fingerprints is None:
            raise NotFound("content fingerprints are off (OUTGUARD_FINGERPRINTS=false): there are no campaigns")
        cluster = await fingerprints.cluster(where.campaign_id)
        if cluster is None:
            raise NotFound(
                f"no campaign {where.campaign_id}: see GET /v1/campaigns (a cluster is forgotten once evicted)"
            )
        names = [k.account for k in cluster.senders if k.relay == relay]
        if where.domain is not None:
            names = [n for n in names if _domain_of(n) == where.domain]
    if names is None or where.identity_source is not None:
        await container.events.flush()  # messages scored just before are in the log
        known = await container.ledger.accounts_on(
            relay,
            MAX_CANDIDATES + 1,
            domain=where.domain if names is None else None,
            identity_source=where.identity_source,
        )
        if len(known) > MAX_CANDIDATES:
            raise InvalidInput(
                f"the filter would look at more than {MAX_CANDIDATES} accounts of relay {relay!r}: narrow it "
                "(domain, identity_source, campaign_id)"
            )
        if names is None:
            names = known
        else:
            allowed = set(known)
            names = [n for n in names if n in allowed]
    return names


def _matches(where: BulkFilter, state: AccountState, lock_threshold: float) -> bool:
    if where.status is not None and state.status not in where.status:
        return False
    return where.min_risk is None or account_risk(state.evidence, lock_threshold) >= where.min_risk


async def plan(container: Container, relay: str, body: BulkIn, actor: str, at: float) -> list[Planned]:
    """What the action does to each selected account (nothing is changed here)."""
    names = list(dict.fromkeys(body.accounts)) if body.accounts is not None else None
    if body.filter is not None:
        names = await _candidates(container, relay, body.filter)
    assert names is not None
    keys = [AccountKey(relay, name) for name in names]
    states = await each(keys, container.accounts.get)
    selected = list(zip(keys, states, strict=True))
    if body.filter is not None:
        threshold = container.scorer.policy.lock_threshold
        selected = [(k, s) for k, s in selected if _matches(body.filter, s, threshold)]
    if len(selected) > MAX_ACCOUNTS:
        raise InvalidInput(
            f"the filter selects {len(selected)} accounts, over the limit of {MAX_ACCOUNTS} for one operation: "
            "narrow it, or act in several operations"
        )
    unseen: set[str] = set()
    if body.accounts is not None:  # a filter only finds accounts the service knows
        doubtful = [k.account for k, s in selected if not evidently_seen(s)]
        if doubtful:
            await container.events.flush()
            unseen = set(doubtful) - await container.ledger.seen(relay, doubtful)
    change, already = _change(body, actor), _already(body)
    planned: list[Planned] = []
    for key, state in selected:
        if key.account in unseen and not body.force:
            planned.append(Planned(key, state, "unseen"))
        elif already(state):
            planned.append(Planned(key, state, "unchanged"))
        else:
            after = replace(state)
            planned.append(Planned(key, state, "changed", after, change(after, at)))
    return planned


def _selector(body: BulkIn) -> dict[str, Any]:
    if body.filter is not None:
        return {"filter": body.filter.model_dump(mode="json", exclude_none=True)}
    return {"accounts": len(body.accounts or ())}


async def commit(container: Container, operation: BulkOperation, planned: list[Planned], change: Change) -> None:
    """Record the operation, then apply and announce each change (`LedgerUnavailable`: nothing changed)."""
    changed = [p for p in planned if p.outcome == "changed"]
    false_lock: list[int] = []
    for p in changed:
        assert p.after is not None and p.transition is not None
        # An unlock names the signatures its account's own false lock taught in the entry, then takes them down.
        false_lock += signatures_to_take_down(container.fingerprints, [p.transition], p.after.templates)
    await container.ledger.record_bulk(operation, [(p.key, p.after, p.transition) for p in changed])  # type: ignore[misc]
    at = operation.ts
    failed: list[Exception] = []

    async def apply(p: Planned) -> None:
        # One account's failure does not leave the others recorded but not applied; the first is raised after.
        try:
            await container.accounts.update(p.key, lambda fresh: change(fresh, at))
        except Exception as error:
            failed.append(error)

    async def announce(p: Planned) -> None:
        assert p.after is not None and p.transition is not None
        await container.scorer.announce_transitions(p.key, p.after, [p.transition])

    await each(changed, apply)
    if failed:
        log.error(
            "bulk operation %s: %d of %d changes recorded but not applied", operation.id, len(failed), len(changed)
        )
        raise failed[0]
    await each(changed, announce)
    if false_lock and container.fingerprints is not None:
        await container.fingerprints.remove(sorted(set(false_lock)), operation.actor, at)


def _summary(
    operation_id: str | None, relay: str, body: BulkIn, actor: str, principal: str, planned: list[Planned]
) -> dict[str, Any]:
    counts = {outcome: 0 for outcome in ("changed", "unchanged", "unseen")}
    for p in planned:
        counts[p.outcome] += 1
    return {
        "operation_id": operation_id,
        "dry_run": body.dry_run,
        "relay": relay,
        "action": body.action,
        "actor": actor,
        "principal": principal,
        "reason": body.reason,
        "selector": _selector(body),
        "matched": len(planned),
        **counts,
        "accounts": [p.public() for p in planned],
    }


@bulk_router.post(
    "/{relay}/bulk",
    summary="Lock, unlock, allowlist or reset many accounts (named, or by a filter) as one audited operation",
    responses={201: {"description": "Done and recorded; Location reads it back"}, **NOT_FOUND},
    status_code=201,
)
async def bulk_action(relay: RelayPath, body: BulkIn, container: ContainerDep, principal: PrincipalDep) -> Response:
    at = time.time()
    actor = body.actor or principal.name
    planned = await plan(container, relay, body, actor, at)
    if body.dry_run:
        return json_response(_summary(None, relay, body, actor, principal.name, planned), status_code=200)
    summary = _summary(str(uuid.uuid4()), relay, body, actor, principal.name, planned)
    details: dict[str, Any] = {
        "force": body.force,
        "unchanged_accounts": [p.key.account for p in planned if p.outcome == "unchanged"],
        "unseen_accounts": [p.key.account for p in planned if p.outcome == "unseen"],
    }
    if body.duration_s is not None:
        details["duration_s"] = body.duration_s
    if body.action == "allowlist":
        details["allowlisted"] = body.allowlisted is not False
    operation = BulkOperation(
        id=summary["operation_id"],
        ts=at,
        relay=relay,
        action=body.action,
        actor=actor,
        principal=principal.name,
        reason=body.reason,
        selector=summary["selector"],
        matched=summary["matched"],
        changed=summary["changed"],
        unchanged=summary["unchanged"],
        unseen=summary["unseen"],
        details=details,
    )
    await commit(container, operation, planned, _change(body, actor))
    response = json_response(summary, status_code=201)
    response.headers["location"] = f"/v1/accounts/{quote(relay, safe='')}/bulk/{operation.id}"
    return response


@bulk_router.get(
    "/{relay}/bulk/{operation_id:uuid}",
    summary="A bulk operation as recorded: who, what, the counts, and its accounts' audit entries",
    responses=NOT_FOUND,
)
async def bulk_operation(
    relay: RelayPath,
    operation_id: uuid.UUID,
    container: ContainerDep,
    offset: Annotated[int, Query(ge=0, le=BIGINT, description="Entries to skip")] = 0,
    limit: Annotated[int, Query(ge=1, le=ENTRIES_PAGE_MAX, description="Entries in this answer")] = 1_000,
) -> Response:
    operation = await container.ledger.bulk_operation(str(operation_id))
    if operation is None or operation["relay"] != relay:
        raise NotFound(f"no bulk operation {operation_id} on relay {relay!r}")
    entries = await container.ledger.operation_entries(str(operation_id), offset, limit)
    details = operation.pop("details")
    return json_response(
        {
            "operation_id": operation.pop("id"),
            **operation,
            "details": {k: v for k, v in details.items() if not k.endswith("_accounts")},
            "unchanged_accounts": details.get("unchanged_accounts", []),
            "unseen_accounts": details.get("unseen_accounts", []),
            "offset": offset,
            "limit": limit,
            "entries": entries,
        }
    )
