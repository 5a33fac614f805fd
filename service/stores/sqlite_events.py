"""The scored-message log in SQLite.

Appends go to the database's writer thread without waiting: scoring answers are not
acknowledgements of a write, so a full queue drops the event and counts it rather
than stalling scoring. Feedback, labels and locks, which are acknowledged, are
committed before their reply (`sqlite_feedback`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import orjson

from service.stores import MessageRef, ScoredEvent
from service.stores.sqlite import SqliteDatabase

_INSERT = """
INSERT INTO scored_messages (ts, relay, account, identity_source, message_id, queue_id, model_version,
    feature_spec_version, features, spam_probability, account_risk, action, lock_recommended,
    recipients_hashed, client_ip, subject, scored_at, fingerprint, shadow_model_version, shadow_probability)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
# SQLite's default limit on bound parameters per statement is 999 on old builds.
_LOOKUP_CHUNK = 500


def _row(event: ScoredEvent) -> tuple[object, ...]:
    return (
        event.timestamp,
        event.relay,
        event.account,
        event.identity_source,
        event.message_id,
        event.queue_id,
        event.model_version,
        event.feature_spec_version,
        orjson.dumps(event.features) if event.features is not None else None,
        event.spam_probability,
        event.account_risk,
        event.action,
        int(event.lock_recommended),
        orjson.dumps(event.recipients_hashed).decode(),
        event.client_ip,
        event.subject,
        event.scored_at,
        event.fingerprint,
        event.shadow_model_version,
        event.shadow_probability,
    )


class SqliteEventLog:
    def __init__(self, database: SqliteDatabase, on_drop: Callable[[], None] | None = None) -> None:
        self.database = database
        self._on_drop = on_drop or (lambda: None)

    @property
    def queue_depth(self) -> int:
        return self.database.writer.queue_depth

    async def append(self, event: ScoredEvent) -> None:
        row = _row(event)
        if not self.database.writer.submit_nowait(lambda c: c.execute(_INSERT, row)):
            self._on_drop()

    async def flush(self) -> None:
        await self.database.writer.flush()

    async def ping(self) -> bool:
        return await self.database.ping()

    async def find_messages(self, message_ids: Iterable[str], queue_ids: Iterable[str]) -> list[MessageRef]:
        """Scored messages with any of these Message-IDs or queue ids, newest first."""
        message_ids, queue_ids = list(set(message_ids)), list(set(queue_ids))
        return await self.database.read(lambda c: _find(c, message_ids, queue_ids))


def _find(connection: sqlite3.Connection, message_ids: list[str], queue_ids: list[str]) -> list[MessageRef]:
    found: list[MessageRef] = []
    for column, values in (("message_id", message_ids), ("queue_id", queue_ids)):
        for start in range(0, len(values), _LOOKUP_CHUNK):
            chunk = values[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            cursor = connection.execute(
                "SELECT message_id, queue_id, relay, account, ts, fingerprint, spam_probability "
                f"FROM scored_messages WHERE {column} IN ({marks})",
                chunk,
            )
            found += [MessageRef(*r) for r in cursor]
    return sorted(found, key=lambda ref: ref.timestamp, reverse=True)


def read_scored(path: Path, limit: int | None = None) -> Iterator[dict[str, object]]:
    """Logged events as dicts, oldest first: for training, tests and replays."""
    connection = sqlite3.connect(path)
    connection.row_factory = sqlite3.Row
    try:
        sql = "SELECT * FROM scored_messages ORDER BY id" + (f" LIMIT {int(limit)}" if limit else "")
        for row in connection.execute(sql):
            record = dict(row)
            record["features"] = orjson.loads(record["features"]) if record["features"] is not None else None
            record["recipients_hashed"] = orjson.loads(record["recipients_hashed"])
            yield record
    finally:
        connection.close()
