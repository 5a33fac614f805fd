"""Identity rules per relay in the database, cached in memory for the scoring path.

A relay without rules of its own uses `DEFAULT_RULES`; saving an empty list means
"no rules" for that relay. Each rule is stored with all its fields, `trusted` and
`identifies` included (a JSON list per relay); one saved before those existed loads as
untrusted, as migration 0002 writes it out. Saves are committed before the reply. Other replicas see
a change at their next `refresh` (the service polls, `OUTGUARD_SHARED_REFRESH_S`).
"""

from __future__ import annotations

import time

import orjson
from sqlalchemy import Connection, text

from service.identity import DEFAULT_RULES, HeaderRule
from service.stores.database import Database

_SAVE = text(
    "INSERT INTO identity_rules (relay, rules, actor, updated_at) VALUES (:relay, :rules, :actor, :at) "
    "ON CONFLICT (relay) DO UPDATE SET rules = excluded.rules, actor = excluded.actor, updated_at = excluded.updated_at"
)


def _rules(raw: str) -> tuple[HeaderRule, ...]:
    return tuple(HeaderRule.build(**r) for r in orjson.loads(raw))


def _load(connection: Connection) -> dict[str, tuple[HeaderRule, ...]]:
    return {relay: _rules(raw) for relay, raw in connection.execute(text("SELECT relay, rules FROM identity_rules"))}


class SqlIdentityRules:
    def __init__(self, database: Database) -> None:
        self.database = database
        self._custom = database.read_now(_load)

    async def refresh(self) -> None:
        """Pick up what other replicas saved."""
        self._custom = await self.database.read(_load)

    def rules_for(self, relay: str) -> tuple[HeaderRule, ...]:
        return self._custom.get(relay, DEFAULT_RULES)

    def is_default(self, relay: str) -> bool:
        return relay not in self._custom

    async def put(self, relay: str, rules: list[HeaderRule], actor: str) -> None:
        params = {"relay": relay, "rules": orjson.dumps([r.as_dict() for r in rules]).decode(), "actor": actor}
        await self.database.writer.submit(lambda c: c.execute(_SAVE, params | {"at": time.time()}))
        self._custom = self._custom | {relay: tuple(rules)}

    async def reset(self, relay: str) -> None:
        await self.database.writer.submit(
            lambda c: c.execute(text("DELETE FROM identity_rules WHERE relay = :relay"), {"relay": relay})
        )
        self._custom = {r: rules for r, rules in self._custom.items() if r != relay}
