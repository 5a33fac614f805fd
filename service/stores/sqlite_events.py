"""The scored-message log in SQLite, written by one background thread in group commits.

Handlers enqueue and return; the writer thread drains the queue in batches, one
transaction per batch (WAL, synchronous=NORMAL). If the queue is full the event is
dropped and counted rather than stalling scoring: scoring answers are not
acknowledgements of a write. Feedback, labels and locks, which are, get stores
that commit before the reply.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson

from service.stores import ScoredEvent

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS scored_messages (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    relay TEXT NOT NULL,
    account TEXT NOT NULL,
    identity_source TEXT NOT NULL,
    message_id TEXT NOT NULL,
    model_version TEXT NOT NULL,
    feature_spec_version TEXT NOT NULL,
    features BLOB,
    spam_probability REAL,
    account_risk REAL NOT NULL,
    action TEXT NOT NULL,
    lock_recommended INTEGER NOT NULL,
    recipients_hashed TEXT NOT NULL,
    client_ip TEXT,
    scored_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS scored_messages_account_ts ON scored_messages (relay, account, ts);
CREATE INDEX IF NOT EXISTS scored_messages_message_id ON scored_messages (message_id);
"""

_INSERT = """
INSERT INTO scored_messages (ts, relay, account, identity_source, message_id, model_version,
    feature_spec_version, features, spam_probability, account_risk, action, lock_recommended,
    recipients_hashed, client_ip, scored_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

_STOP = object()
BATCH_MAX = 1_000


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA busy_timeout=5000")
    return connection


def _row(event: ScoredEvent) -> tuple[object, ...]:
    return (
        event.timestamp,
        event.relay,
        event.account,
        event.identity_source,
        event.message_id,
        event.model_version,
        event.feature_spec_version,
        orjson.dumps(event.features) if event.features is not None else None,
        event.spam_probability,
        event.account_risk,
        event.action,
        int(event.lock_recommended),
        orjson.dumps(event.recipients_hashed).decode(),
        event.client_ip,
        event.scored_at,
    )


class SqliteEventLog:
    def __init__(
        self,
        path: Path,
        queue_max: int,
        on_drop: Callable[[], None] | None = None,
        on_write_failure: Callable[[int], None] | None = None,
    ) -> None:
        self.path = path
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_max)
        self._on_drop = on_drop or (lambda: None)
        self._on_write_failure = on_write_failure or (lambda _count: None)
        with connect(path) as setup:
            setup.executescript(SCHEMA)
        self._writer = threading.Thread(target=self._write_loop, name="event-log-writer", daemon=True)
        self._writer.start()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    async def append(self, event: ScoredEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._on_drop()

    async def flush(self) -> None:
        await asyncio.to_thread(self._queue.join)

    async def ping(self) -> bool:
        return await asyncio.to_thread(self._ping)

    def _ping(self) -> bool:
        try:
            with sqlite3.connect(self.path, timeout=2) as connection:
                connection.execute("SELECT 1 FROM scored_messages LIMIT 1")
        except sqlite3.Error:
            return False
        return self._writer.is_alive()

    def close(self) -> None:
        if self._writer.is_alive():
            self._queue.put(_STOP)
            self._writer.join(timeout=30)

    def _write_loop(self) -> None:
        connection = connect(self.path)
        try:
            while True:
                batch = [self._queue.get()]
                while len(batch) < BATCH_MAX:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                try:
                    self._write(connection, [item for item in batch if isinstance(item, ScoredEvent)])
                except Exception:  # the writer must outlive any one bad batch
                    log.exception("event log writer: a batch of %d events was not written", len(batch))
                    self._on_write_failure(len(batch))
                finally:
                    for _ in batch:
                        self._queue.task_done()
                if any(item is _STOP for item in batch):
                    return
        finally:
            connection.close()

    def _write(self, connection: sqlite3.Connection, events: list[ScoredEvent]) -> None:
        if not events:
            return
        rows = [_row(event) for event in events]
        for attempt in range(3):
            try:
                with connection:
                    connection.execute("BEGIN")
                    connection.executemany(_INSERT, rows)
                return
            except sqlite3.OperationalError as exc:  # locked by another process; brief retry
                log.warning("event log write failed (attempt %d): %s", attempt + 1, exc)
                time.sleep(0.1 * (attempt + 1))
        log.error("event log: %d scored events not written after repeated failures", len(events))
        self._on_write_failure(len(events))


def read_scored(path: Path, limit: int | None = None) -> Iterator[dict[str, object]]:
    """Logged events as dicts, oldest first: for training, tests and replays."""
    connection = sqlite3.connect(path)
    connection.row_factory = sqlite3.Row
    try:
        sql = "SELECT * FROM scored_messages ORDER BY id" + (f" LIMIT {int(limit)}" if limit else "")
        for row in connection.execute(sql):
            record = dict(row)
            record["features"] = orjson.loads(record["features"]) if record["features"] is not None else None
            record["recipients_hashed"] = orjson.loads(record["recipients_hashed"])
            yield record
    finally:
        connection.close()
