"""The service's database, SQLite or PostgreSQL through SQLAlchemy: its writer thread and reads off the event loop.

Tables (see `service/migrations`): `scored_messages` (every scored message and its
feature vector; partitioned by day on PostgreSQL), `feedback_events` (idempotent by
`event_id`), `labels`, `account_status` and the append-only `audit_log`, `signatures`,
`identity_rules`, and the webhook tables. Reads run in worker threads from a
connection pool, so the event loop never waits on the database.

SQLite is the zero-setup default: its schema is brought up to date at open. A
PostgreSQL database is migrated by `outguard db upgrade`; the service refuses to start
on one that is behind, rather than write into a schema it does not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from service.stores.writer import Writer

log = logging.getLogger(__name__)

T = TypeVar("T")


class DatabaseClosed(RuntimeError):
    """A read after `close`: the service is shutting down."""


def normalise_url(url: str) -> URL:
    """`postgresql://` means psycopg 3; SQLite paths get their folder created."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    return parsed


def _storable_text(value: str, nul: bool) -> str:
    if nul and "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: one U+FFFD each, as at the HTTP edge
            value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def _storable(parameters: Any, nul: bool) -> Any:
    if isinstance(parameters, str):
        return _storable_text(parameters, nul)
    if isinstance(parameters, dict):
        return {key: _storable(value, nul) for key, value in parameters.items()}
    if isinstance(parameters, list | tuple):
        return type(parameters)(_storable(value, nul) for value in parameters)
    return parameters


def store_any_text(engine: Engine) -> None:
    """Text the database cannot hold is stored with U+FFFD in its place rather than refused.

    Names and ids are refused at the HTTP edge when they hold U+0000 or a lone surrogate
    (`service.api.schemas.storable`); this is for text taken out of content, such as a
    subject or a DSN's fields. Without it PostgreSQL refuses U+0000 (and either database a
    lone surrogate) and the whole row is lost: a scored message missing from the log, an
    acknowledged event never stored. SQLite keeps U+0000 as it is.
    """
    nul = engine.dialect.name == "postgresql"

    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def _replace(
        _connection: Connection, _cursor: object, statement: str, parameters: Any, _context: object, _many: bool
    ) -> tuple[str, Any]:
        return statement, _storable(parameters, nul)


def _sqlite_engine(url: URL, synchronous: str, writer: bool) -> Engine:
    # NullPool: a connection per use, closed after; SQLite opens in microseconds and
    # no connection outlives `close`. Errors never carry the statement's parameters
    # (subjects, message ids, accounts) into the logs: `hide_parameters`.
    engine = create_engine(
        url, poolclass=NullPool, connect_args={"check_same_thread": False, "timeout": 10}, hide_parameters=True
    )
    store_any_text(engine)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        # The driver's own transaction handling is off; SQLAlchemy's begin decides.
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        # FULL for the writer: a committed transaction survives power loss, which is
        # what an acknowledgement promises.
        dbapi_connection.execute(f"PRAGMA synchronous={synchronous}")

    if writer:

        @event.listens_for(engine, "begin")
        def _begin(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Database:
    def __init__(
        self,
        url: str,
        queue_max: int = 100_000,
        on_write_failure: Callable[[int], None] | None = None,
        migrate: bool | None = None,
        pool_size: int = 8,
    ) -> None:
        self.url = normalise_url(url)
        self.dialect = self.url.get_backend_name()
        if self.dialect == "sqlite":
            self.engine = _sqlite_engine(self.url, "FULL", writer=True)
            self.reader = _sqlite_engine(self.url, "NORMAL", writer=False)
        elif self.dialect == "postgresql":
            self.engine = create_engine(
                self.url, pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size, hide_parameters=True
            )
            store_any_text(self.engine)
            self.reader = self.engine
        else:
            raise ValueError(f"unsupported database {self.url.render_as_string()}: use sqlite:/// or postgresql://")
        # Lazily: the migrations import Alembic, which a scoring process never otherwise needs.
        from service.stores.schema import ensure_schema

        ensure_schema(self.engine, migrate=self.dialect == "sqlite" if migrate is None else migrate)
        self.writer = Writer(self.engine, self.url.database or "db", queue_max=queue_max, on_failure=on_write_failure)
        # Reads in flight: disposing of a pool another thread is using crashes SQLite.
        self._active = 0
        self._closed = False
        self._idle = threading.Condition()

    @contextlib.contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read connection, counted so that `close` waits for it (for reads that stream)."""
        with self._idle:
            if self._closed:
                raise DatabaseClosed(f"the database at {self.url.render_as_string()} is closed")
            self._active += 1
        try:
            with self.reader.connect() as connection:
                yield connection
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def _run(self, query: Callable[[Connection], T]) -> T:
        with self.reading() as connection:
            return query(connection)

    async def read(self, query: Callable[[Connection], T]) -> T:
        """Run a read-only `query` in a worker thread."""
        return await asyncio.to_thread(self._run, query)

    def read_now(self, query: Callable[[Connection], T]) -> T:
        """The same, from synchronous code (CLI, training, tests)."""
        return self._run(query)

    async def ping(self) -> bool:
        try:
            await self.read(lambda c: c.execute(text("SELECT 1")).scalar_one())
        except (SQLAlchemyError, DatabaseClosed) as exc:
            log.warning("database ping failed: %s", exc)
            return False
        return self.writer.alive

    def close(self) -> None:
        self.writer.close()
        with self._idle:
            self._closed = True
            # A read cancelled on the event loop still runs in its thread: let it finish.
            self._idle.wait_for(lambda: self._active == 0, timeout=30)
        self.engine.dispose()
        self.reader.dispose()


@dataclass(frozen=True, slots=True)
class Sql:
    """The few SQL expressions SQLite and PostgreSQL spell differently; `Sql.of(connection)`."""

    postgresql: bool

    @staticmethod
    def of(connection: Connection) -> Sql:
        return Sql(connection.dialect.name == "postgresql")

    def day(self, column: str) -> str:
        """The UTC day, YYYY-MM-DD, of a unix-seconds column."""
        if self.postgresql:
            return f"to_char(to_timestamp({column}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
        return f"strftime('%Y-%m-%d', {column}, 'unixepoch')"

    def json_length(self, column: str) -> str:
        """The length of a JSON array stored as text."""
        return f"json_array_length({column}::json)" if self.postgresql else f"json_array_length({column})"

    def round(self, expression: str, digits: int) -> str:
        if self.postgresql:  # PostgreSQL rounds only numerics to a number of digits
            return f"CAST(round(CAST({expression} AS numeric), {digits}) AS double precision)"
        return f"round({expression}, {digits})"

    def whole(self, expression: str) -> str:
        """A non-negative number's integer part (PostgreSQL's CAST rounds, SQLite's truncates)."""
        return f"CAST(floor({expression}) AS integer)" if self.postgresql else f"CAST({expression} AS INTEGER)"

    @property
    def no_limit(self) -> str:
        return "ALL" if self.postgresql else "-1"


def mappings(connection: Connection, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows of a query as plain dicts."""
    return [dict(row) for row in connection.execute(text(sql), params or {}).mappings()]
