"""The embedded SQLite database: schema, its one writer thread, and reads off the event loop.

Tables: `scored_messages` (every scored message and its feature vector),
`feedback_events` (delivery results, bounces, complaints, engagement; idempotent by
`event_id`) and `labels` (admin verdicts). Reads run in worker threads, each with its
own connection, so the event loop never waits on disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from service.stores.sqlite_writer import SqliteWriter, connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS scored_messages (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    relay TEXT NOT NULL,
    account TEXT NOT NULL,
    identity_source TEXT NOT NULL,
    message_id TEXT NOT NULL,
    queue_id TEXT,
    model_version TEXT NOT NULL,
    feature_spec_version TEXT NOT NULL,
    features BLOB,
    spam_probability REAL,
    account_risk REAL NOT NULL,
    action TEXT NOT NULL,
    lock_recommended INTEGER NOT NULL,
    recipients_hashed TEXT NOT NULL,
    client_ip TEXT,
    subject TEXT,
    scored_at REAL NOT NULL,
    fingerprint BLOB,
    shadow_model_version TEXT,
    shadow_probability REAL
);
CREATE INDEX IF NOT EXISTS scored_messages_account_ts ON scored_messages (relay, account, ts);
CREATE INDEX IF NOT EXISTS scored_messages_message_id ON scored_messages (message_id);
CREATE INDEX IF NOT EXISTS scored_messages_queue_id ON scored_messages (queue_id) WHERE queue_id IS NOT NULL;
-- Time-range reports and the dashboard (14% off bulk insert speed, still far above scoring's rate;
-- python -m bench.reports).
CREATE INDEX IF NOT EXISTS scored_messages_ts ON scored_messages (ts);

CREATE TABLE IF NOT EXISTS signatures (
    id INTEGER PRIMARY KEY,
    fingerprint BLOB NOT NULL,
    source TEXT NOT NULL,
    message_id TEXT,
    actor TEXT NOT NULL,
    note TEXT,
    added_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    removed_at REAL,
    removed_by TEXT
);
CREATE INDEX IF NOT EXISTS signatures_live ON signatures (expires_at) WHERE removed_at IS NULL;

CREATE TABLE IF NOT EXISTS feedback_events (
    event_id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    ts REAL NOT NULL,
    message_id TEXT,
    queue_id TEXT,
    relay TEXT,
    account TEXT,
    recipient_hash TEXT,
    detail TEXT NOT NULL,
    matched INTEGER NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_events_message_id ON feedback_events (message_id);
CREATE INDEX IF NOT EXISTS feedback_events_account_ts ON feedback_events (relay, account, ts);
CREATE INDEX IF NOT EXISTS feedback_events_ts ON feedback_events (ts);

CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY,
    target TEXT NOT NULL,
    message_id TEXT,
    relay TEXT,
    account TEXT,
    label TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    ts REAL NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS labels_message_id ON labels (message_id);
CREATE INDEX IF NOT EXISTS labels_account ON labels (relay, account, ts);

CREATE TABLE IF NOT EXISTS account_status (
    relay TEXT NOT NULL,
    account TEXT NOT NULL,
    status TEXT NOT NULL,
    locked_until REAL,
    temporary_locks INTEGER NOT NULL,
    allowlisted INTEGER NOT NULL,
    lock_reason TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (relay, account)
);

CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    relay TEXT NOT NULL,
    account TEXT NOT NULL,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    from_status TEXT NOT NULL,
    to_status TEXT NOT NULL,
    details TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_account ON audit_log (relay, account, id);
CREATE INDEX IF NOT EXISTS audit_log_ts ON audit_log (ts);
-- Append-only: the database refuses to change or remove history.
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;

CREATE TABLE IF NOT EXISTS webhooks (
    id INTEGER PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    description TEXT NOT NULL,
    active INTEGER NOT NULL,
    created_at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS webhook_outbox (
    id INTEGER PRIMARY KEY,
    webhook_id INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload BLOB NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    created_at REAL NOT NULL,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox (status, next_attempt_at);

CREATE TABLE IF NOT EXISTS webhook_attempts (
    id INTEGER PRIMARY KEY,
    outbox_id INTEGER NOT NULL,
    ts REAL NOT NULL,
    status_code INTEGER,
    error TEXT,
    duration_ms REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_attempts_outbox ON webhook_attempts (outbox_id);

CREATE TABLE IF NOT EXISTS identity_rules (
    relay TEXT PRIMARY KEY,
    rules TEXT NOT NULL,
    actor TEXT NOT NULL,
    updated_at REAL NOT NULL
);
"""

T = TypeVar("T")


# Columns added after a table first shipped: (table, column, type). Applied at open.
ADDED_COLUMNS = (
    ("scored_messages", "fingerprint", "BLOB"),
    ("scored_messages", "shadow_model_version", "TEXT"),
    ("scored_messages", "shadow_probability", "REAL"),
)


def add_missing_columns(path: Path) -> None:
    """Bring a database made by an older release up to `SCHEMA` (SQLite has no IF NOT EXISTS for columns)."""
    if not path.exists():
        return
    connection = sqlite3.connect(path)
    try:
        for table, column, kind in ADDED_COLUMNS:
            present = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
            if present and column not in present:
                connection.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        connection.commit()
    finally:
        connection.close()


class DatabaseClosed(sqlite3.ProgrammingError):
    """A read after `close`: the service is shutting down."""


class SqliteDatabase:
    def __init__(self, path: Path, queue_max: int, on_write_failure: Callable[[int], None] | None = None) -> None:
        self.path = path
        add_missing_columns(path)
        self.writer = SqliteWriter(path, SCHEMA, queue_max=queue_max, on_failure=on_write_failure)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        # Reads in flight: closing a connection another thread is using crashes the process.
        self._active = 0
        self._closed = False
        self._idle = threading.Condition()

    def _reader(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = connect(self.path, synchronous="NORMAL")
            connection.row_factory = sqlite3.Row
            self._local.connection = connection
            with self._readers_lock:
                self._readers.append(connection)
        return connection

    def _run(self, query: Callable[[sqlite3.Connection], T]) -> T:
        with self._idle:
            if self._closed:
                raise DatabaseClosed(f"the database at {self.path} is closed")
            self._active += 1
        try:
            return query(self._reader())
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    async def read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only `query` in a worker thread."""
        return await asyncio.to_thread(self._run, query)

    def read_now(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """The same, from synchronous code (CLI, training, tests)."""
        return self._run(query)

    async def ping(self) -> bool:
        try:
            await self.read(lambda c: c.execute("SELECT 1").fetchone())
        except sqlite3.Error:
            return False
        return self.writer.alive

    def close(self) -> None:
        self.writer.close()
        with self._idle:
            self._closed = True
            # A read cancelled on the event loop still runs in its thread: let it finish.
            self._idle.wait_for(lambda: self._active == 0, timeout=30)
        with self._readers_lock:
            for connection in self._readers:
                connection.close()
            self._readers.clear()


def rows_as_dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    return [dict(row) for row in cursor.fetchall()]
