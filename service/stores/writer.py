"""One writer thread per database, committing in groups.

Every write goes through this thread, so SQLite writers never contend for its lock
and PostgreSQL sees one transaction per burst rather than one per request. Each
queued operation is a function of a SQLAlchemy connection; the thread drains what is
queued, runs it in one transaction, commits, and then answers:

- `submit` (awaited): for writes the service acknowledges (feedback, labels, locks).
  The caller's reply waits until the transaction holding its write has committed;
  concurrent callers share the commit, so a burst costs one fsync, not one each.
- `submit_nowait` (fire and forget): for the scored-message log, where scoring must
  never wait on disk. When the queue is full the write is refused (`False`).
- `append_nowait`: a fire-and-forget row for one insert statement; consecutive rows of
  the same statement go to the database as one multi-row insert.

One failing operation fails its own caller, not the batch it was committed with.

A failure is logged once, by whoever is told of it: an awaited write's caller (the
HTTP error handler, a chore, the webhook dispatcher), and here only the writes nobody
waits for. Never with the rows' values (`describe`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Executable
from sqlalchemy.exc import StatementError

log = logging.getLogger(__name__)

BATCH_MAX = 1_000
Operation = Callable[[Connection], Any]


@dataclass(slots=True)
class _Item:
    operation: Operation | None
    future: concurrent.futures.Future[Any] | None
    statement: Executable | None = None  # an append: `row` for this insert
    row: dict[str, Any] | None = None


_STOP = object()


def _noop(_connection: Connection) -> None:
    return None


class WriterStopped(RuntimeError):
    """The writer thread is gone: nothing more can be stored."""


def describe(error: BaseException) -> str:
    """A database error for the log: what failed, and in which statement, but none of the data.

    Bound parameters are never shown (the engines are made with `hide_parameters`), and
    of the database's own message only the first line is kept: PostgreSQL repeats a
    row's values in the DETAIL that follows.
    """
    if isinstance(error, StatementError):
        cause = error.orig if error.orig is not None else error
        lines = str(cause).strip().splitlines()
        statement = " ".join((error.statement or "").split())
        statement = statement if len(statement) <= 200 else statement[:200] + "..."
        return f"{type(cause).__name__}: {lines[0] if lines else ''} [SQL: {statement}]"
    return f"{type(error).__name__}: {error}"


class Writer:
    def __init__(
        self,
        engine: Engine,
        name: str,
        queue_max: int = 100_000,
        on_failure: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_max)
        self._on_failure = on_failure or (lambda _count: None)
        self._thread = threading.Thread(target=self._loop, name=f"db-writer:{name}", daemon=True)
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
            raise WriterStopped("the database writer has stopped")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        # Never block the event loop: an acknowledged write waits for room in a thread.
        try:
            self._queue.put_nowait(_Item(operation, future))
        except queue.Full:
            await asyncio.to_thread(self._queue.put, _Item(operation, future))
        return await asyncio.wrap_future(future)

    def submit_nowait(self, operation: Operation) -> bool:
        return self._put_nowait(_Item(operation, None))

    def append_nowait(self, statement: Executable, row: dict[str, Any]) -> bool:
        return self._put_nowait(_Item(None, None, statement, row))

    def _put_nowait(self, item: _Item) -> bool:
        try:
            self._queue.put_nowait(item)
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
        while True:
            batch = [self._queue.get()]
            while len(batch) < BATCH_MAX:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._commit([item for item in batch if isinstance(item, _Item)])
            finally:
                for _ in batch:
                    self._queue.task_done()
            if any(item is _STOP for item in batch):
                return

    def _commit(self, items: list[_Item]) -> None:
        if not items:
            return
        results: list[tuple[_Item, Any, BaseException | None]] = []
        try:
            with self.engine.connect() as connection, connection.begin():
                for group in _runs(items):
                    results += _run_group(connection, group)
        except Exception as exc:  # the transaction itself failed: nothing of it is stored
            # Awaited writes fail their callers, who report them; only the unawaited ones are reported here.
            if lost := sum(1 for item in items if item.future is None):
                log.error("database writer: a transaction failed, %d queued writes are lost: %s", lost, describe(exc))
            self._on_failure(lost)
            for item in items:
                _settle(item.future, None, exc)
            return
        for item, result, error in results:
            if item.future is None:
                if error is not None:
                    log.error("database writer: a queued write failed: %s", describe(error))
                    self._on_failure(1)
                continue
            _settle(item.future, result, error)


def _settle(future: concurrent.futures.Future[Any] | None, result: Any, error: BaseException | None) -> None:
    # A caller that gave up (its request was cancelled) has a cancelled future: the write
    # still happened, there is just nobody left to tell, and the thread must go on.
    if future is None or future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _runs(items: list[_Item]) -> list[list[_Item]]:
    """Consecutive appends to the same statement together; every other operation alone."""
    groups: list[list[_Item]] = []
    for item in items:
        previous = groups[-1][0] if groups else None
        if item.statement is not None and previous is not None and previous.statement is item.statement:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def _run_group(connection: Connection, group: list[_Item]) -> list[tuple[_Item, Any, BaseException | None]]:
    head = group[0]
    try:
        with connection.begin_nested():  # this group only: a failure rolls back to here
            if head.statement is not None:
                connection.execute(head.statement, [item.row for item in group])
                return [(item, None, None) for item in group]
            result = head.operation(connection) if head.operation is not None else None
            return [(head, result, None)]
    except Exception as exc:
        if connection.invalidated or not connection.in_transaction():
            raise  # the connection is gone, not this operation: the whole transaction failed
        if len(group) > 1:  # one bad row must not cost the others: store them one by one
            return [r for item in group for r in _run_group(connection, [item])]
        return [(head, None, exc)]
