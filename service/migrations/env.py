"""Alembic's entry point: migrate the connection the caller hands over, or the configured URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from service.stores.database import normalise_url


def _run(connection: Connection) -> None:
    context.configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = create_engine(normalise_url(context.config.get_main_option("sqlalchemy.url") or ""), hide_parameters=True)
    with engine.connect() as fresh:
        _run(fresh)
    engine.dispose()
