"""One writer thread per SQLite database, committing in groups.

Every write to the database goes through this thread, so writers never contend for
SQLite's lock. Each queued operation is a function of the connection; the thread
drains what is queued, runs it in one transaction, commits, and then answers:

- `submit` (awaited): for writes the service acknowledges (feedback, labels). The
  caller's reply waits until the transaction holding its write has committed;
  concurrent callers share the commit, so a burst costs one fsync, not one each.
- `submit_nowait` (fire and forget): for the scored-message log, where scoring must
  never wait on disk. When the queue is full the write is refused (`False`).

One failing operation fails its own caller, not the batch it was committed with.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BATCH_MAX = 1_000
Operation = Callable[[sqlite3.Connection], Any]


def connect(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
    connection.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed transaction survives power loss, which is what an
    # acknowledgement promises.
    connection.execute(f"PRAGMA synchronous={synchronous}")
    return connection


@dataclass(slots=True)
class _Item:
    operation: Operation
    future: concurrent.futures.Future[Any] | None


_STOP = object()


def _noop(_connection: sqlite3.Connection) -> None:
    return None


class SqliteWriter:
    def __init__(
        self,
        path: Path,
        schema: str,
        queue_max: int = 100_000,
        on_failure: Callable[[int], None] | None = None,
    ) -> None:
        self.path = path
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_max)
        self._on_failure = on_failure or (lambda _count: None)
        setup = connect(path)
        try:
            setup.executescript(schema)
        finally:
            setup.close()
        self._thread = threading.Thread(target=self._loop, name=f"sqlite-writer:{path.name}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    async def submit(self, operation: Operation) -> Any:
        """Run `operation` in the next transaction; return its result once committed."""
        if not self._thread.is_alive():
            raise RuntimeError("the database writer has stopped")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        # Never block the event loop: an acknowledged write waits for room in a thread.
        try:
            self._queue.put_nowait(_Item(operation, future))
        except queue.Full:
            await asyncio.to_thread(self._queue.put, _Item(operation, future))
        return await asyncio.wrap_future(future)

    def submit_nowait(self, operation: Operation) -> bool:
        try:
            self._queue.put_nowait(_Item(operation, None))
        except queue.Full:
            return False
        return True

    async def flush(self) -> None:
        """Wait until everything queued before this call is committed.

        A barrier, not a drain: a no-op queued behind them (the queue is FIFO and the
        thread commits in order), so it returns even while new writes keep arriving.
        """
        await self.submit(_noop)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout=30)

    def _loop(self) -> None:
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
                    self._commit(connection, [item for item in batch if isinstance(item, _Item)])
                finally:
                    for _ in batch:
                        self._queue.task_done()
                if any(item is _STOP for item in batch):
                    return
        finally:
            connection.close()

    def _commit(self, connection: sqlite3.Connection, items: list[_Item]) -> None:
        if not items:
            return
        results: list[tuple[_Item, Any, BaseException | None]] = []
        try:
            connection.execute("BEGIN IMMEDIATE")
            for item in items:
                connection.execute("SAVEPOINT op")
                try:
                    results.append((item, item.operation(connection), None))
                    connection.execute("RELEASE op")
                except Exception as exc:  # this operation only: roll back to its savepoint
                    connection.execute("ROLLBACK TO op")
                    connection.execute("RELEASE op")
                    results.append((item, None, exc))
            connection.execute("COMMIT")
        except Exception as exc:  # the transaction itself failed: nothing of it is stored
            log.exception("database writer: a transaction of %d operations failed", len(items))
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            self._on_failure(sum(1 for item in items if item.future is None))
            for item in items:
                if item.future is not None:
                    item.future.set_exception(exc)
            return
        for item, result, error in results:
            if error is not None and item.future is None:
                log.error("database writer: a queued write failed: %s", error)
                self._on_failure(1)
            if item.future is None:
                continue
            if error is not None:
                item.future.set_exception(error)
            else:
                item.future.set_result(result)
