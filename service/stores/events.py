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

from service.stores import AccountKey, MessageRef, ScoredEvent
from service.stores.database import Database, Sql, normalise_url

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
    "identity_conflict",
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
        "identity_conflict": event.identity_conflict,
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
    engine = create_engine(
        normalise_url(source if isinstance(source, str) else f"sqlite:///{source}"), hide_parameters=True
    )
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


def account_activity(
    connection: Connection, key: AccountKey, since: float | None, until: float | None, spam_threshold: float
) -> dict[str, Any]:
    """One account's logged mail in [since, until) (None: unbounded), summed up for the incident report.

    `spam_like` counts messages scored at or over `spam_threshold`; `scored` excludes
    messages refused while locked (no score). Times are None when there was no mail.
    """
    bounds = (" AND ts >= :since" if since is not None else "") + (" AND ts < :until" if until is not None else "")
    statement = text(
        "SELECT count(*) AS messages, min(ts) AS first_ts, max(ts) AS last_ts, "
        f"coalesce(sum({Sql.of(connection).json_length('recipients_hashed')}), 0) AS recipients, "
        "count(spam_probability) AS scored, "
        "coalesce(sum(CASE WHEN spam_probability >= :spam THEN 1 ELSE 0 END), 0) AS spam_like, "
        "count(DISTINCT client_ip) AS client_ips "
        f"FROM scored_messages WHERE relay = :relay AND account = :account{bounds}"
    )
    params = {"relay": key.relay, "account": key.account, "since": since, "until": until, "spam": spam_threshold}
    return dict(connection.execute(statement, params).mappings().one())


_CLIENT_IPS_BEFORE = text(
    "SELECT DISTINCT client_ip FROM scored_messages "
    "WHERE relay = :relay AND account = :account AND ts < :until AND client_ip IN :ips"
).bindparams(bindparam("ips", expanding=True))


def client_ips_seen_before(connection: Connection, key: AccountKey, until: float, ips: Iterable[str]) -> set[str]:
    """Which of these client IPs the account had already sent from before `until`."""
    wanted, seen = sorted(set(ips)), set()
    for start in range(0, len(wanted), _LOOKUP_CHUNK):
        params = {
            "relay": key.relay,
            "account": key.account,
            "until": until,
            "ips": wanted[start : start + _LOOKUP_CHUNK],
        }
        seen |= {row[0] for row in connection.execute(_CLIENT_IPS_BEFORE, params)}
    return seen
