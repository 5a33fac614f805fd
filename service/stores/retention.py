"""Retention of the event log, and on PostgreSQL its daily partitions.

`maintain` runs at start-up and hourly (`service.maintenance`). On PostgreSQL it makes
the partitions of the next days before rows arrive for them, drops whole days past
the retention (no row-by-row delete, no table bloat), and trims the default partition,
which takes rows for days with no partition of their own (a replay of an old log). On
SQLite it deletes the old rows. Feedback past the retention is deleted on both.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from service.stores.database import Database

log = logging.getLogger(__name__)

DAY_S = 86_400
DAYS_AHEAD = 3
_PARTITION = re.compile(r"^scored_messages_p(\d{8})$")


@dataclass(slots=True)
class Maintenance:
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # rows for that day already sit in the default partition
    deleted_messages: int = 0
    deleted_feedback: int = 0


def partition_name(day_start: float) -> str:
    return "scored_messages_p" + datetime.fromtimestamp(day_start, UTC).strftime("%Y%m%d")


def partitions(connection: Connection) -> dict[str, float]:
    """The daily partitions of scored_messages and the start of each one's day."""
    names = connection.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'scored_messages'::regclass"
        )
    ).scalars()
    found = {}
    for name in names:
        if match := _PARTITION.match(name):
            found[name] = datetime.strptime(match.group(1), "%Y%m%d").replace(tzinfo=UTC).timestamp()
    return found


def ensure_partitions(connection: Connection, first_day: float, days: int, result: Maintenance) -> None:
    existing = partitions(connection)
    start = first_day // DAY_S * DAY_S
    for day in range(days):
        low = start + day * DAY_S
        name = partition_name(low)
        if name in existing:
            continue
        try:
            with connection.begin_nested():
                connection.execute(
                    text(f"CREATE TABLE {name} PARTITION OF scored_messages FOR VALUES FROM ({low}) TO ({low + DAY_S})")
                )
            result.created.append(name)
        except DBAPIError as error:  # the default partition already holds rows of that day: leave them there
            log.warning("partition %s not created: %s", name, error.orig)
            result.skipped.append(name)


def maintain(connection: Connection, now: float, retention_days: float) -> Maintenance:
    result = Maintenance()
    cutoff = now - retention_days * DAY_S
    if connection.dialect.name == "postgresql":
        ensure_partitions(connection, now - DAY_S, DAYS_AHEAD + 1, result)
        for name, day_start in sorted(partitions(connection).items()):
            if day_start + DAY_S <= cutoff:
                connection.execute(text(f"DROP TABLE {name}"))
                result.dropped.append(name)
        table = "scored_messages_default"
    else:
        table = "scored_messages"
    result.deleted_messages = connection.execute(
        text(f"DELETE FROM {table} WHERE ts < :cutoff"), {"cutoff": cutoff}
    ).rowcount
    result.deleted_feedback = connection.execute(
        text("DELETE FROM feedback_events WHERE ts < :cutoff"), {"cutoff": cutoff}
    ).rowcount
    return result


async def run_maintenance(database: Database, retention_days: float, now: float | None = None) -> Maintenance:
    at = time.time() if now is None else now
    result: Maintenance = await database.writer.submit(lambda c: maintain(c, at, retention_days))
    if result.created or result.dropped or result.deleted_messages or result.deleted_feedback:
        log.info(
            "retention: %d partitions made, %d dropped, %d old messages and %d old feedback events deleted",
            len(result.created),
            len(result.dropped),
            result.deleted_messages,
            result.deleted_feedback,
        )
    return result
