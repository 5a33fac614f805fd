"""Identity rules per relay in SQLite, cached in memory for the scoring path.

A relay without rules of its own uses `DEFAULT_RULES`; saving an empty list means
"no rules" for that relay. Saves are committed before the reply.
"""

from __future__ import annotations

import sqlite3
import time

import orjson

from service.identity import DEFAULT_RULES, HeaderRule
from service.stores.sqlite import SqliteDatabase


def _rules(raw: str) -> tuple[HeaderRule, ...]:
    return tuple(HeaderRule.build(**r) for r in orjson.loads(raw))


class SqliteIdentityRules:
    def __init__(self, database: SqliteDatabase) -> None:
        self.database = database
        rows = database.read_now(lambda c: c.execute("SELECT relay, rules FROM identity_rules").fetchall())
        self._custom: dict[str, tuple[HeaderRule, ...]] = {relay: _rules(raw) for relay, raw in rows}

    def rules_for(self, relay: str) -> tuple[HeaderRule, ...]:
        return self._custom.get(relay, DEFAULT_RULES)

    def is_default(self, relay: str) -> bool:
        return relay not in self._custom

    async def put(self, relay: str, rules: list[HeaderRule], actor: str) -> None:
        payload = orjson.dumps([r.as_dict() for r in rules]).decode()

        def save(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT INTO identity_rules (relay, rules, actor, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (relay) DO UPDATE SET rules = excluded.rules, actor = excluded.actor, "
                "updated_at = excluded.updated_at",
                (relay, payload, actor, time.time()),
            )

        await self.database.writer.submit(save)
        self._custom[relay] = tuple(rules)

    async def reset(self, relay: str) -> None:
        await self.database.writer.submit(lambda c: c.execute("DELETE FROM identity_rules WHERE relay = ?", (relay,)))
        self._custom.pop(relay, None)
