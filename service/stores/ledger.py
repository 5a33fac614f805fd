"""Account lifecycle in the database: the current status of every account that has one, and the audit log.

A transition is committed (status and audit entry in one transaction) before it takes
effect anywhere, so a lock survives a restart and every change has its record. The
audit log is append-only: the database refuses updates and deletes.

When the database does not take the record (it is down, locked, read-only), `record`
raises `LedgerUnavailable` (a 503 on the API) and the change must not be applied: an
admin's change is refused, and the scoring path keeps its change pending in the hot
state, deferring the account's mail, until a later message records it
(`service.lifecycle.hold_back`, `service.scoring.Scorer`).

An admin's vouching for an account's mail (an unlock with a reason, a clean verdict:
`service.lifecycle.vouch_for_templates`) records the templates it made known-good in
its audit entry; a status read here carries the latest of them back, so a false lock
stays the last one after a restart too.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from sqlalchemy import Connection, RowMapping, text
from sqlalchemy.exc import DBAPIError

from service.errors import StorageUnavailable
from service.lifecycle import Transition
from service.stores import AccountKey, AccountState, AccountStatus
from service.stores.database import Database, mappings
from service.stores.writer import WriterStopped

_UPSERT = text("""
INSERT INTO account_status (relay, account, status, locked_until, temporary_locks, allowlisted, lock_reason, updated_at)
VALUES (:relay, :account, :status, :locked_until, :temporary_locks, :allowlisted, :lock_reason, :updated_at)
ON CONFLICT (relay, account) DO UPDATE SET status = excluded.status, locked_until = excluded.locked_until,
    temporary_locks = excluded.temporary_locks, allowlisted = excluded.allowlisted,
    lock_reason = excluded.lock_reason, updated_at = excluded.updated_at
""")
_AUDIT = text("""
INSERT INTO audit_log (ts, relay, account, action, actor, reason, from_status, to_status, details)
VALUES (:ts, :relay, :account, :action, :actor, :reason, :from_status, :to_status, :details)
""")


# The latest audit entry that vouched for the account's templates (the index on
# relay, account, id finds it without a scan).
_WITH_VOUCHED = """
SELECT s.*, (
    SELECT a.details FROM audit_log a
    WHERE a.relay = s.relay AND a.account = s.account AND a.action IN ('unlocked', 'vouched')
        AND a.details LIKE '%"known_good_templates"%'
    ORDER BY a.id DESC LIMIT 1
) AS vouched
FROM account_status s
"""


class LedgerUnavailable(StorageUnavailable):
    """The database did not commit a lifecycle record: the change it describes must not take effect."""


def _state(row: RowMapping) -> AccountState:
    vouched = orjson.loads(row["vouched"]) if row.get("vouched") else {}
    return AccountState(
        status=AccountStatus(row["status"]),
        locked_until=row["locked_until"],
        temporary_locks=row["temporary_locks"],
        allowlisted=bool(row["allowlisted"]),
        lock_reason=row["lock_reason"],
        templates=vouched.get("known_good_templates", ""),
    )


class SqlAccountLedger:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def record(self, key: AccountKey, state: AccountState, transitions: list[Transition]) -> None:
        """Commit the account's status (`state`, as it is after `transitions`) and their audit entries.

        Returns once committed; `LedgerUnavailable` when the database refused, and then
        nothing of it is stored.
        """
        if not transitions:
            return
        status_row = {
            "relay": key.relay,
            "account": key.account,
            "status": state.status.value,
            "locked_until": state.locked_until,
            "temporary_locks": state.temporary_locks,
            "allowlisted": int(state.allowlisted),
            "lock_reason": state.lock_reason,
            "updated_at": time.time(),
        }
        audit_rows = [
            {
                "ts": t.timestamp,
                "relay": key.relay,
                "account": key.account,
                "action": t.action,
                "actor": t.actor,
                "reason": t.reason,
                "from_status": t.previous.value,
                "to_status": t.status.value,
                "details": orjson.dumps(t.details).decode(),
            }
            for t in transitions
        ]

        def write(connection: Connection) -> None:
            connection.execute(_UPSERT, status_row)
            connection.execute(_AUDIT, audit_rows)

        try:
            await self.database.writer.submit(write)
        except (DBAPIError, WriterStopped) as error:  # locked, read-only, gone: any refusal is the same here
            raise LedgerUnavailable(
                "the database did not take the account's change: it has not taken effect; retry later"
            ) from error

    def load(self) -> dict[AccountKey, AccountState]:
        """Every stored status, for the in-memory state at start-up."""
        rows = self.database.read_now(lambda c: list(c.execute(text(_WITH_VOUCHED)).mappings()))
        return {AccountKey(r["relay"], r["account"]): _state(r) for r in rows}

    async def status(self, key: AccountKey) -> AccountState | None:
        """The account's stored lifecycle status, or None for one that never had one."""

        def query(connection: Connection) -> AccountState | None:
            row = (
                connection.execute(
                    text(_WITH_VOUCHED + " WHERE s.relay = :relay AND s.account = :account"),
                    {"relay": key.relay, "account": key.account},
                )
                .mappings()
                .first()
            )
            return _state(row) if row is not None else None

        return await self.database.read(query)

    async def changed_since(self, since: float) -> dict[AccountKey, AccountState]:
        """Statuses recorded at or after `since` (wall clock), to write back over a cache that missed them."""

        def query(connection: Connection) -> dict[AccountKey, AccountState]:
            rows = connection.execute(
                text("SELECT * FROM account_status WHERE updated_at >= :since"), {"since": since}
            ).mappings()
            return {AccountKey(r["relay"], r["account"]): _state(r) for r in rows}

        return await self.database.read(query)

    async def history(self, key: AccountKey, limit: int = 100) -> list[dict[str, Any]]:
        def query(connection: Connection) -> list[dict[str, Any]]:
            rows = mappings(
                connection,
                "SELECT * FROM audit_log WHERE relay = :relay AND account = :account ORDER BY id DESC LIMIT :limit",
                {"relay": key.relay, "account": key.account, "limit": limit},
            )
            for row in rows:
                row["details"] = orjson.loads(row["details"])
            return rows

        return await self.database.read(query)
