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

Every audit entry names its principal: the token whose request made the change
(`acting_principal`, set by `service.api.auth` for each request), besides the actor the
request named. A bulk action (`record_bulk`) is one `bulk_operations` row and its
accounts' audit entries (carrying its id) and statuses, in one transaction.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Connection, RowMapping, bindparam, text
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
INSERT INTO audit_log (ts, relay, account, action, actor, reason, from_status, to_status, details, principal,
    operation_id)
VALUES (:ts, :relay, :account, :action, :actor, :reason, :from_status, :to_status, :details, :principal,
    :operation_id)
""")
_BULK = text("""
INSERT INTO bulk_operations (id, ts, relay, action, actor, principal, reason, selector, matched, changed, unchanged,
    unseen, details)
VALUES (:id, :ts, :relay, :action, :actor, :principal, :reason, :selector, :matched, :changed, :unchanged, :unseen,
    :details)
""")
# Accounts the service knows on a relay: it scored their mail, or recorded a status for them.
_SEEN = text(
    "SELECT account FROM account_status WHERE relay = :relay AND account IN :accounts "
    "UNION SELECT account FROM scored_messages WHERE relay = :relay AND account IN :accounts"
).bindparams(bindparam("accounts", expanding=True))
SEEN_CHUNK = 500
AUDIT_PAGE_MAX = 1_000

# The name of the token whose request is being served (`service.api.auth` sets it); what
# `record` writes as the audit entries' principal when it is not told one.
acting_principal: ContextVar[str | None] = ContextVar("outguard_acting_principal", default=None)


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


@dataclass(slots=True)
class BulkOperation:
    """One bulk action as `bulk_operations` keeps it; its accounts' changes are audit entries carrying its id."""

    id: str
    ts: float
    relay: str
    action: str
    actor: str
    principal: str | None
    reason: str
    selector: dict[str, Any]
    matched: int
    changed: int
    unchanged: int
    unseen: int
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters of `GET /v1/audit`; newest first, `before_id` pages on (the last page's smallest id)."""

    relays: Sequence[str] | None = None  # None: every relay
    account: str | None = None
    actions: Sequence[str] | None = None
    actor: str | None = None
    principal: str | None = None
    operation_id: str | None = None
    since: float | None = None
    until: float | None = None
    before_id: int | None = None
    limit: int = 100


def _status_row(key: AccountKey, state: AccountState, at: float) -> dict[str, Any]:
    return {
        "relay": key.relay,
        "account": key.account,
        "status": state.status.value,
        "locked_until": state.locked_until,
        "temporary_locks": state.temporary_locks,
        "allowlisted": int(state.allowlisted),
        "lock_reason": state.lock_reason,
        "updated_at": at,
    }


def _audit_row(key: AccountKey, t: Transition, principal: str | None, operation_id: str | None) -> dict[str, Any]:
    return {
        "ts": t.timestamp,
        "relay": key.relay,
        "account": key.account,
        "action": t.action,
        "actor": t.actor,
        "reason": t.reason,
        "from_status": t.previous.value,
        "to_status": t.status.value,
        "details": orjson.dumps(t.details).decode(),
        "principal": principal,
        "operation_id": operation_id,
    }


def _entry(row: dict[str, Any]) -> dict[str, Any]:
    row["details"] = orjson.loads(row["details"])
    return row


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

    async def record(
        self, key: AccountKey, state: AccountState, transitions: list[Transition], principal: str | None = None
    ) -> None:
        """Commit the account's status (`state`, as it is after `transitions`) and their audit entries.

        The entries' principal is `principal`, else the request's (`acting_principal`).
        Returns once committed; `LedgerUnavailable` when the database refused, and then
        nothing of it is stored.
        """
        if not transitions:
            return
        status_row = _status_row(key, state, time.time())
        who = principal if principal is not None else acting_principal.get()
        audit_rows = [_audit_row(key, t, who, None) for t in transitions]

        def write(connection: Connection) -> None:
            connection.execute(_UPSERT, status_row)
            connection.execute(_AUDIT, audit_rows)

        await self._submit(write, "the database did not take the account's change: it has not taken effect; retry")

    async def record_bulk(
        self, operation: BulkOperation, changes: Sequence[tuple[AccountKey, AccountState, Transition]]
    ) -> None:
        """Commit a bulk operation: its record, and every account's status and audit entry, in one transaction.

        All of it or (`LedgerUnavailable`) none of it.
        """
        at = time.time()
        operation_row = {
            "id": operation.id,
            "ts": operation.ts,
            "relay": operation.relay,
            "action": operation.action,
            "actor": operation.actor,
            "principal": operation.principal,
            "reason": operation.reason,
            "selector": orjson.dumps(operation.selector).decode(),
            "matched": operation.matched,
            "changed": operation.changed,
            "unchanged": operation.unchanged,
            "unseen": operation.unseen,
            "details": orjson.dumps(operation.details).decode(),
        }
        status_rows = [_status_row(key, state, at) for key, state, _ in changes]
        audit_rows = [_audit_row(key, t, operation.principal, operation.id) for key, _, t in changes]

        def write(connection: Connection) -> None:
            connection.execute(_BULK, operation_row)
            if changes:
                connection.execute(_UPSERT, status_rows)
                connection.execute(_AUDIT, audit_rows)

        await self._submit(write, "the database did not take the bulk operation: nothing of it has taken effect; retry")

    async def _submit(self, write: Any, refused: str) -> None:
        try:
            await self.database.writer.submit(write)
        except (DBAPIError, WriterStopped) as error:  # locked, read-only, gone: any refusal is the same here
            raise LedgerUnavailable(refused) from error

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
            return [_entry(row) for row in rows]

        return await self.database.read(query)

    async def audit(self, query: AuditQuery) -> list[dict[str, Any]]:
        """Audit entries matching every filter given, newest first, at most `query.limit` (bounded)."""
        where: list[str] = []
        # One more than a page: whether there is a next one.
        params: dict[str, Any] = {"limit": max(1, min(query.limit, AUDIT_PAGE_MAX + 1))}
        expanding: list[str] = []
        for column, value in (
            ("account", query.account),
            ("actor", query.actor),
            ("principal", query.principal),
            ("operation_id", query.operation_id),
        ):
            if value is not None:
                where.append(f"{column} = :{column}")
                params[column] = value
        for column, values in (("relay", query.relays), ("action", query.actions)):
            if values is not None:
                where.append(f"{column} IN :{column}s")
                params[f"{column}s"] = list(values)
                expanding.append(f"{column}s")
        for clause, name, value in (
            ("ts >= :since", "since", query.since),
            ("ts < :until", "until", query.until),
            ("id < :before_id", "before_id", query.before_id),
        ):
            if value is not None:
                where.append(clause)
                params[name] = value
        sql = "SELECT * FROM audit_log" + (" WHERE " + " AND ".join(where) if where else "")
        statement = text(sql + " ORDER BY id DESC LIMIT :limit")
        if expanding:
            statement = statement.bindparams(*(bindparam(name, expanding=True) for name in expanding))

        def read(connection: Connection) -> list[dict[str, Any]]:
            if any(not params[name] for name in expanding):  # IN (): nothing can match
                return []
            return [_entry(dict(row)) for row in connection.execute(statement, params).mappings()]

        return await self.database.read(read)

    async def bulk_operation(self, operation_id: str) -> dict[str, Any] | None:
        """A bulk operation's record, or None."""

        def read(connection: Connection) -> dict[str, Any] | None:
            rows = mappings(connection, "SELECT * FROM bulk_operations WHERE id = :id", {"id": operation_id})
            if not rows:
                return None
            row = rows[0]
            row["selector"], row["details"] = orjson.loads(row["selector"]), orjson.loads(row["details"])
            return row

        return await self.database.read(read)

    async def operation_entries(self, operation_id: str, offset: int, limit: int) -> list[dict[str, Any]]:
        """The audit entries of a bulk operation, in the order they were written."""

        def read(connection: Connection) -> list[dict[str, Any]]:
            rows = mappings(
                connection,
                "SELECT * FROM audit_log WHERE operation_id = :id ORDER BY id LIMIT :limit OFFSET :offset",
                {"id": operation_id, "limit": limit, "offset": offset},
            )
            return [_entry(row) for row in rows]

        return await self.database.read(read)

    async def seen(self, relay: str, accounts: Sequence[str]) -> set[str]:
        """Of `accounts`, those the service knows on `relay`: it scored their mail or recorded a status."""

        def read(connection: Connection) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(accounts), SEEN_CHUNK):
                chunk = list(accounts[start : start + SEEN_CHUNK])
                found.update(connection.execute(_SEEN, {"relay": relay, "accounts": chunk}).scalars())
            return found

        return await self.database.read(read) if accounts else set()

    async def accounts_on(
        self, relay: str, limit: int, domain: str | None = None, identity_source: str | None = None
    ) -> list[str]:
        """Accounts known on `relay` (scored mail in the retained log, or a recorded status), by name, at most `limit`.

        `domain`: only those whose part after the last @ is it (any case). `identity_source`:
        only those scored under an identity found that way (the status table has none).
        """
        params: dict[str, Any] = {"relay": relay, "limit": limit}
        suffix = ""
        if domain is not None:
            escaped = domain.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            params["suffix"] = f"%@{escaped}"
            suffix = " AND lower(account) LIKE :suffix ESCAPE '\\'"
        sql = "SELECT account FROM scored_messages WHERE relay = :relay" + suffix
        if identity_source is not None:
            sql += " AND identity_source = :source"
            params["source"] = identity_source
        else:
            sql += " UNION SELECT account FROM account_status WHERE relay = :relay" + suffix
        statement = text(f"SELECT account FROM ({sql}) AS known GROUP BY account ORDER BY account LIMIT :limit")
        return await self.database.read(lambda c: list(c.execute(statement, params).scalars()))
