"""The scored-message log in the database (SQLite or PostgreSQL).

Appends go to the database's writer thread without waiting: scoring answers are not
acknowledgements of a write, so a full queue drops the event and counts it rather
than stalling scoring. Feedback, labels and locks, which are acknowledged, are
committed before their reply (`stores.feedback`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, bindparam, create_engine, text

from service.stores import MessageRef, ScoredEvent
from service.stores.database import Database, normalise_url

COLUMNS = [
    "ts",
    "relay",
    "account",
    "identity_source",
    "message_id",
    "queue_id",
    "model_version",
    "feature_spec_version",
    "features",
    "spam_probability",
    "account_risk",
    "action",
    "lock_recommended",
    "recipients_hashed",
    "client_ip",
    "subject",
    "scored_at",
    "fingerprint",
    "shadow_model_version",
    "shadow_probability",
]
INSERT = text(f"INSERT INTO scored_messages ({', '.join(COLUMNS)}) VALUES ({', '.join(':' + c for c in COLUMNS)})")
_FIND = {
    column: text(
        "SELECT message_id, queue_id, relay, account, ts, fingerprint, spam_probability "
        f"FROM scored_messages WHERE {column} IN :values"
    ).bindparams(bindparam("values", expanding=True))
    for column in ("message_id", "queue_id")
}
# SQLite's default limit on bound parameters per statement is 999 on old builds.
_LOOKUP_CHUNK = 500


def event_row(event: ScoredEvent) -> dict[str, Any]:
    return {
        "ts": event.timestamp,
        "relay": event.relay,
        "account": event.account,
        "identity_source": event.identity_source,
        "message_id": event.message_id,
        "queue_id": event.queue_id,
        "model_version": event.model_version,
        "feature_spec_version": event.feature_spec_version,
        "features": orjson.dumps(event.features) if event.features is not None else None,
        "spam_probability": event.spam_probability,
        "account_risk": event.account_risk,
        "action": event.action,
        "lock_recommended": int(event.lock_recommended),
        "recipients_hashed": orjson.dumps(event.recipients_hashed).decode(),
        "client_ip": event.client_ip,
        "subject": event.subject,
        "scored_at": event.scored_at,
        "fingerprint": event.fingerprint,
        "shadow_model_version": event.shadow_model_version,
        "shadow_probability": event.shadow_probability,
    }


class SqlEventLog:
    def __init__(self, database: Database, on_drop: Callable[[], None] | None = None) -> None:
        self.database = database
        self._on_drop = on_drop or (lambda: None)

    @property
    def queue_depth(self) -> int:
        return self.database.writer.queue_depth

    async def append(self, event: ScoredEvent) -> None:
        if not self.database.writer.append_nowait(INSERT, event_row(event)):
            self._on_drop()

    async def flush(self) -> None:
        await self.database.writer.flush()

    async def ping(self) -> bool:
        return await self.database.ping()

    async def find_messages(self, message_ids: Iterable[str], queue_ids: Iterable[str]) -> list[MessageRef]:
        """Scored messages with any of these Message-IDs or queue ids, newest first."""
        message_ids, queue_ids = list(set(message_ids)), list(set(queue_ids))
        return await self.database.read(lambda c: _find(c, message_ids, queue_ids))


def _find(connection: Connection, message_ids: list[str], queue_ids: list[str]) -> list[MessageRef]:
    found: list[MessageRef] = []
    for column, values in (("message_id", message_ids), ("queue_id", queue_ids)):
        for start in range(0, len(values), _LOOKUP_CHUNK):
            chunk = values[start : start + _LOOKUP_CHUNK]
            found += [MessageRef(*row) for row in connection.execute(_FIND[column], {"values": chunk})]
    return sorted(found, key=lambda ref: ref.timestamp, reverse=True)


def read_scored(source: str | Path, limit: int | None = None) -> Iterator[dict[str, object]]:
    """Logged events as dicts, oldest first, from a database URL or SQLite file: for training, tests and replays."""
    engine = create_engine(normalise_url(source if isinstance(source, str) else f"sqlite:///{source}"))
    sql = "SELECT * FROM scored_messages ORDER BY id" + (f" LIMIT {int(limit)}" if limit else "")
    try:
        with engine.connect() as connection:
            for row in connection.execute(text(sql)).mappings():
                record = dict(row)
                record["features"] = orjson.loads(record["features"]) if record["features"] is not None else None
                record["recipients_hashed"] = orjson.loads(record["recipients_hashed"])
                yield record
    finally:
        engine.dispose()
