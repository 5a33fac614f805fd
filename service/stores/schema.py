"""The database schema's version: Alembic migrations in `service/migrations`, checked or applied at open.

`outguard db upgrade` runs `upgrade`; `ensure_schema` applies it by itself on SQLite
(the zero-setup default) and, elsewhere, refuses a database that is behind.
A SQLite file made before the migrations existed is brought to the first revision by
adding the columns it lacks, then stamped, so its data is kept.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, inspect, text

from service.stores.database import normalise_url

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
FIRST_REVISION = "0001"

# Columns added to the first schema before the migrations existed: (table, column, type).
LEGACY_ADDED_COLUMNS = (
    ("scored_messages", "fingerprint", "BLOB"),
    ("scored_messages", "shadow_model_version", "TEXT"),
    ("scored_messages", "shadow_probability", "REAL"),
)


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def ensure_schema(engine: Engine, migrate: bool) -> None:
    """Bring the schema to the head revision when `migrate`, else check that it is there."""
    head = head_revision()
    with engine.connect() as connection:
        current = current_revision(connection)
        legacy = current is None and inspect(connection).has_table("scored_messages")
    if current == head:
        return
    if not migrate:
        raise SchemaOutOfDate(
            f"the database schema is at revision {current or 'none'}, this release needs {head}: "
            "run `outguard db upgrade`"
        )
    upgrade(engine, legacy=legacy)


def upgrade(engine: Engine, legacy: bool = False) -> None:
    with engine.begin() as connection:
        if legacy:
            _add_legacy_columns(connection)
            command.stamp(alembic_config(connection), FIRST_REVISION)
        command.upgrade(alembic_config(connection), "head")


@contextlib.contextmanager
def scratch_schema(base_url: str, prefix: str) -> Iterator[str]:
    """A URL whose tables live in a fresh, migrated schema of `base_url`'s PostgreSQL; the schema is dropped after.

    For tests and benchmarks: each run gets its own tables on a shared server.
    """
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalise_url(base_url), hide_parameters=True)
    try:
        with admin.begin() as connection:
            connection.execute(text(f"CREATE SCHEMA {schema}"))
        url = f"{base_url}?options=-csearch_path%3D{schema}"
        engine = create_engine(normalise_url(url), hide_parameters=True)
        upgrade(engine)
        engine.dispose()
        try:
            yield url
        finally:
            with admin.begin() as connection:
                connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    finally:
        admin.dispose()


def _add_legacy_columns(connection: Connection) -> None:
    for table, column, kind in LEGACY_ADDED_COLUMNS:
        present = {c["name"] for c in inspect(connection).get_columns(table)}
        if column not in present:
            connection.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {kind}"))


class SchemaOutOfDate(RuntimeError):
    """The database's schema is not the one this release expects."""
