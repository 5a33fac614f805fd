"""Values generated once and shared by every replica, kept in the database (`service_settings`).

Read at start, before the service takes requests: the recipient hashing key, and the
database's instance id (which tells a checkpoint of the in-process state whether it
was taken against this database).

`value_or_create` is safe for replicas that start together: the first insert wins,
and every process reads back the stored row.
"""

from __future__ import annotations

import time

from sqlalchemy import text

from service.stores.database import Database

_INSERT = text(
    "INSERT INTO service_settings (name, value, created_at) VALUES (:name, :value, :at) ON CONFLICT (name) DO NOTHING"
)
_SELECT = text("SELECT value FROM service_settings WHERE name = :name")


class SqlServiceSettings:
    def __init__(self, database: Database) -> None:
        self.database = database

    def get(self, name: str) -> str | None:
        return self.database.read_now(lambda c: c.execute(_SELECT, {"name": name}).scalar_one_or_none())

    def value_or_create(self, name: str, proposed: str) -> str:
        """The stored value; `proposed` is stored first if there is none. Synchronous: for start-up."""
        with self.database.engine.begin() as connection:
            connection.execute(_INSERT, {"name": name, "value": proposed, "at": time.time()})
            return str(connection.execute(_SELECT, {"name": name}).scalar_one())
