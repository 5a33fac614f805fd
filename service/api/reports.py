"""Reports over the API: `GET /v1/reports/outbound`, as JSON pages or a streamed RFC 4180 CSV."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import math
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response, StreamingResponse

from service.api.common import ContainerDep, json_response
from service.api.routes import ERRORS
from service.api.schemas import Name
from service.errors import InvalidInput
from service.reports.outbound import SORTABLE, GroupBy, OutboundQuery, count_groups, iter_outbound, outbound_rows
from service.stores.database import Database

reports_router = APIRouter(prefix="/v1/reports", tags=["reports"], responses=ERRORS)

DAY_S = 86_400.0
MAX_PAGE = 10_000
MAX_OFFSET = 2**63 - 1  # the databases' integers
REPORT_CONTENT = {
    200: {
        "description": "A page of the report (JSON), or all of it as RFC 4180 CSV with a header row",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/csv": {"schema": {"type": "string"}},
        },
    }
}


def parse_time(value: str | None, name: str, default: float) -> float:
    """Unix seconds or RFC 3339."""
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidInput(f"`{name}` is {value!r}: give unix seconds or an RFC 3339 time") from None
        seconds = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()  # no offset: UTC
    if not math.isfinite(seconds):
        raise InvalidInput(f"`{name}` is {value!r}: not a time")
    return seconds


# A cell a spreadsheet would run as a formula: account names come from senders (CWE-1236).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: object) -> object:
    return f"'{value}" if isinstance(value, str) and value.startswith(_FORMULA_START) else value


def _query(
    since: str | None,
    until: str | None,
    group_by: GroupBy,
    relay: str | None,
    identity_source: str | None,
    sort: str,
    limit: int | None,
    offset: int,
    hold: float,
) -> OutboundQuery:
    end = parse_time(until, "until", time.time())
    start = parse_time(since, "since", end - DAY_S)
    if start >= end:
        raise InvalidInput(f"`since` ({start}) must be before `until` ({end})")
    if sort.lstrip("-") not in SORTABLE:
        raise InvalidInput(f"cannot sort by {sort!r}; sort by one of {sorted(SORTABLE)}, `-` first for descending")
    query = OutboundQuery(start, end, group_by, relay, identity_source, sort, limit, offset, hold)
    if sort.lstrip("-") not in query.columns():
        raise InvalidInput(f"a report grouped by {group_by.value} has no {sort.lstrip('-')!r} column to sort by")
    return query


async def _csv_pages(database: Database, query: OutboundQuery) -> AsyncIterator[bytes]:
    """The report as CSV, read page by page from its own connection in worker threads."""
    stack = contextlib.ExitStack()
    connection = await asyncio.to_thread(stack.enter_context, database.reading())
    try:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")  # RFC 4180
        writer.writerow(query.columns())
        yield buffer.getvalue().encode()
        pages = iter_outbound(connection, query)
        while (rows := await asyncio.to_thread(next, pages, None)) is not None:
            buffer.seek(0)
            buffer.truncate()
            writer.writerows([_csv_cell(v) for v in row] for row in rows)
            yield buffer.getvalue().encode()
    finally:
        await asyncio.to_thread(stack.close)


@reports_router.get(
    "/outbound",
    summary="Messages, scores, feedback and locks per account, identity, relay or day",
    responses=REPORT_CONTENT,
)
async def outbound_report(
    container: ContainerDep,
    since: Annotated[str | None, Query(description="Start, unix seconds or RFC 3339 (default: until - 24 h)")] = None,
    until: Annotated[str | None, Query(description="End, exclusive (default: now)")] = None,
    group_by: GroupBy = GroupBy.ACCOUNT,
    relay: Annotated[Name | None, Query(max_length=128)] = None,
    identity_source: Annotated[
        Name | None,
        Query(max_length=1024, description="Only identities found this way, e.g. `rule:php-script` or `sasl`"),
    ] = None,
    sort: Annotated[str, Query(max_length=64, description="A column; `-` first for descending")] = "-spam_messages",
    limit: Annotated[int | None, Query(ge=1, le=MAX_PAGE, description="Rows per page (CSV: all by default)")] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    format: Literal["json", "csv"] = "json",
) -> Response:
    hold = container.settings.hold_threshold
    if format == "csv":
        query = _query(since, until, group_by, relay, identity_source, sort, limit, offset, hold)
        name = f"outbound-{group_by.value}-{int(query.since)}-{int(query.until)}.csv"
        return StreamingResponse(
            _csv_pages(container.database, query),
            media_type="text/csv; charset=utf-8; header=present",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    query = _query(since, until, group_by, relay, identity_source, sort, limit or 100, offset, hold)
    rows, total = await container.database.read(lambda c: (outbound_rows(c, query), count_groups(c, query)))
    columns = query.columns()
    return json_response(
        {
            "since": query.since,
            "until": query.until,
            "group_by": group_by.value,
            "sort": sort,
            "offset": offset,
            "limit": query.limit,
            "total": total,
            "rows": [dict(zip(columns, row, strict=True)) for row in rows],
        }
    )
