"""The SQLite database's shutdown: a read still running is let finish; reads after close are refused."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from service.stores.sqlite import DatabaseClosed, SqliteDatabase


def test_close_waits_for_a_read_in_flight_and_refuses_later_ones(tmp_path: Path) -> None:
    database = SqliteDatabase(tmp_path / "x.db", queue_max=10)
    started, release = threading.Event(), threading.Event()
    results: list[object] = []

    def slow(connection: sqlite3.Connection) -> int:
        started.set()
        release.wait(5)
        return connection.execute("SELECT count(*) FROM scored_messages").fetchone()[0]

    reader = threading.Thread(target=lambda: results.append(database.read_now(slow)))
    reader.start()
    assert started.wait(5)
    closer = threading.Thread(target=database.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive()  # still waiting for the read
    release.set()
    reader.join(5)
    closer.join(5)
    assert results == [0] and not closer.is_alive()
    with pytest.raises(DatabaseClosed, match="is closed"):
        database.read_now(lambda c: c.execute("SELECT 1").fetchone())
