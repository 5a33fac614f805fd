"""Account lifecycle in SQLite: the current status of every account that has one, and the audit log.

A transition is committed (status and audit entry in one transaction) before it takes
effect anywhere, so a lock survives a restart and every change has its record. The
audit log is append-only: triggers refuse updates and deletes.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import orjson

from service.lifecycle import Transition
from service.stores import AccountKey, AccountState, AccountStatus
from service.stores.sqlite import SqliteDatabase, rows_as_dicts

_UPSERT = """
INSERT INTO account_status (relay, account, status, locked_until, temporary_locks, allowlisted, lock_reason, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (relay, account) DO UPDATE SET status = excluded.status, locked_until = excluded.locked_until,
    temporary_locks = excluded.temporary_locks, allowlisted = excluded.allowlisted,
    lock_reason = excluded.lock_reason, updated_at = excluded.updated_at
"""
_AUDIT = """
INSERT INTO audit_log (ts, relay, account, action, actor, reason, from_status, to_status, details)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


class SqliteAccountLedger:
    def __init__(self, database: SqliteDatabase) -> None:
        self.database = database

    async def record(self, key: AccountKey, state: AccountState, transitions: list[Transition]) -> None:
        if not transitions:
            return
        status_row = (
            key.relay,
            key.account,
            state.status.value,
            state.locked_until,
            state.temporary_locks,
            int(state.allowlisted),
            state.lock_reason,
            time.time(),
        )
        audit_rows = [
            (
                t.timestamp,
                key.relay,
                key.account,
                t.action,
                t.actor,
                t.reason,
                t.previous.value,
                t.status.value,
                orjson.dumps(t.details).decode(),
            )
            for t in transitions
        ]

        def write(connection: sqlite3.Connection) -> None:
            connection.execute(_UPSERT, status_row)
            connection.executemany(_AUDIT, audit_rows)

        await self.database.writer.submit(write)

    def load(self) -> dict[AccountKey, AccountState]:
        """Every stored status, for the in-memory state at start-up."""
        rows = self.database.read_now(lambda c: c.execute("SELECT * FROM account_status").fetchall())
        return {
            AccountKey(r["relay"], r["account"]): AccountState(
                status=AccountStatus(r["status"]),
                locked_until=r["locked_until"],
                temporary_locks=r["temporary_locks"],
                allowlisted=bool(r["allowlisted"]),
                lock_reason=r["lock_reason"],
            )
            for r in rows
        }

    async def history(self, key: AccountKey, limit: int = 100) -> list[dict[str, Any]]:
        def query(connection: sqlite3.Connection) -> list[dict[str, Any]]:
            cursor = connection.execute(
                "SELECT * FROM audit_log WHERE relay = ? AND account = ? ORDER BY id DESC LIMIT ?",
                (key.relay, key.account, limit),
            )
            rows = rows_as_dicts(cursor)
            for row in rows:
                row["details"] = orjson.loads(row["details"])
            return rows

        return await self.database.read(query)
