"""The database layer on SQLite and PostgreSQL: group commits, one bad write failing alone, the schema's
version, the event log's partitions and retention, and a shutdown that lets reads finish."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import IntegrityError

from service.stores import ScoredEvent
from service.stores.database import Database, DatabaseClosed, normalise_url
from service.stores.events import INSERT, SqlEventLog, event_row, read_scored
from service.stores.retention import DAY_S, partition_name, partitions, run_maintenance
from service.stores.schema import SchemaOutOfDate, head_revision
from tests.conftest import postgres_schema

pytestmark = pytest.mark.backends


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'x.db'}"
    else:
        with postgres_schema() as url:
            yield url


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    database = Database(database_url, queue_max=10_000, migrate=True)
    yield database
    database.close()


def _event(ts: float, message_id: str = "<m@x>") -> ScoredEvent:
    return ScoredEvent(
        timestamp=ts,
        relay="r",
        account="a",
        identity_source="sasl",
        message_id=message_id,
        model_version="v",
        feature_spec_version="s",
        features=[0.5, 1.0],
        spam_probability=0.1,
        account_risk=0.0,
        action="accept",
        lock_recommended=False,
        recipients_hashed=["h1", "h2"],
        fingerprint=b"\x00\x01",
        scored_at=ts,
    )


def test_appended_events_are_stored_as_logged(database: Database, database_url: str) -> None:
    log = SqlEventLog(database)

    async def run() -> None:
        for i in range(250):
            await log.append(_event(1_700_000_000.0 + i, f"<m{i}@x>"))
        await log.flush()

    asyncio.run(run())
    stored = list(read_scored(database_url))
    assert [r["message_id"] for r in stored] == [f"<m{i}@x>" for i in range(250)]
    assert stored[0]["features"] == [0.5, 1.0] and stored[0]["recipients_hashed"] == ["h1", "h2"]
    assert bytes(stored[0]["fingerprint"]) == b"\x00\x01"


def test_one_bad_write_fails_alone_and_its_batch_commits(database: Database) -> None:
    duplicate = text("INSERT INTO identity_rules (relay, rules, actor, updated_at) VALUES ('r', '[]', 'a', 0)")

    async def run() -> list[object]:
        return await asyncio.gather(
            database.writer.submit(lambda c: c.execute(duplicate)),
            database.writer.submit(lambda c: c.execute(duplicate)),  # the same primary key
            database.writer.submit(lambda c: c.execute(text("SELECT 1")).scalar_one()),
            return_exceptions=True,
        )

    first, second, third = asyncio.run(run())
    assert first is not None and not isinstance(first, Exception)
    assert isinstance(second, IntegrityError)
    assert third == 1
    assert database.read_now(lambda c: c.execute(text("SELECT count(*) FROM identity_rules")).scalar_one()) == 1


def test_a_bad_row_among_appends_costs_only_itself(database: Database) -> None:
    bad = event_row(_event(1.0)) | {"relay": None}  # NOT NULL
    database.writer.append_nowait(INSERT, event_row(_event(1.0, "<a@x>")))
    database.writer.append_nowait(INSERT, bad)
    database.writer.append_nowait(INSERT, event_row(_event(2.0, "<b@x>")))
    asyncio.run(database.writer.flush())
    ids = database.read_now(lambda c: c.execute(text("SELECT message_id FROM scored_messages ORDER BY ts")).all())
    assert [i for (i,) in ids] == ["<a@x>", "<b@x>"]


def test_the_audit_log_refuses_changes(database: Database) -> None:
    insert = text(
        "INSERT INTO audit_log (ts, relay, account, action, actor, reason, from_status, to_status, details) "
        "VALUES (1, 'r', 'a', 'locked', 'admin', 'x', 'active', 'locked', '{}')"
    )
    asyncio.run(database.writer.submit(lambda c: c.execute(insert)))
    for change in ("UPDATE audit_log SET reason = 'y'", "DELETE FROM audit_log"):
        with pytest.raises(Exception, match="append-only"):
            asyncio.run(database.writer.submit(lambda c, sql=change: c.execute(text(sql))))


def test_retention_deletes_old_rows_and_keeps_recent_ones(database: Database) -> None:
    now = time.time()
    for ts, message_id in ((now - 100 * DAY_S, "<old@x>"), (now - 3_600, "<new@x>")):
        database.writer.append_nowait(INSERT, event_row(_event(ts, message_id)))
    asyncio.run(database.writer.flush())
    result = asyncio.run(run_maintenance(database, retention_days=30, now=now))
    assert result.deleted_messages == 1
    left = database.read_now(lambda c: list(c.execute(text("SELECT message_id FROM scored_messages")).scalars()))
    assert left == ["<new@x>"]


def test_reads_after_close_are_refused(database_url: str) -> None:
    database = Database(database_url, queue_max=10, migrate=True)
    started, release = threading.Event(), threading.Event()
    results: list[object] = []

    def slow(connection: Connection) -> int:
        started.set()
        release.wait(5)
        return connection.execute(text("SELECT count(*) FROM scored_messages")).scalar_one()

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
        database.read_now(lambda c: c.execute(text("SELECT 1")).scalar_one())


# -- PostgreSQL only: partitions and the schema check


@pytest.fixture
def postgres(backend: str, database: Database) -> Database:
    if backend == "sqlite":
        pytest.skip("PostgreSQL only")
    return database


def test_rows_land_in_their_days_partition(postgres: Database) -> None:
    now = time.time()
    result = asyncio.run(run_maintenance(postgres, retention_days=30, now=now))
    assert partition_name(now) in result.created
    postgres.writer.append_nowait(INSERT, event_row(_event(now, "<today@x>")))
    postgres.writer.append_nowait(INSERT, event_row(_event(now - 40 * DAY_S, "<old@x>")))  # no partition: default
    asyncio.run(postgres.writer.flush())
    placed = dict(
        postgres.read_now(
            lambda c: c.execute(text("SELECT message_id, tableoid::regclass::text FROM scored_messages")).all()
        )
    )
    assert placed == {"<today@x>": partition_name(now), "<old@x>": "scored_messages_default"}


def test_partitions_past_the_retention_are_dropped_whole(postgres: Database) -> None:
    now = time.time()
    asyncio.run(run_maintenance(postgres, retention_days=30, now=now - 40 * DAY_S))  # days made 40 days ago
    postgres.writer.append_nowait(INSERT, event_row(_event(now - 40 * DAY_S, "<old@x>")))
    asyncio.run(postgres.writer.flush())
    result = asyncio.run(run_maintenance(postgres, retention_days=30, now=now))
    assert partition_name(now - 40 * DAY_S) in result.dropped
    assert partition_name(now - 40 * DAY_S) not in postgres.read_now(partitions)
    assert postgres.read_now(lambda c: c.execute(text("SELECT count(*) FROM scored_messages")).scalar_one()) == 0


def test_a_database_behind_the_release_is_refused_until_upgraded(backend: str) -> None:
    if backend == "sqlite":
        pytest.skip("PostgreSQL only: SQLite upgrades itself at open")
    with postgres_schema() as url:
        engine = create_engine(normalise_url(url))
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = 'behind'"))
        engine.dispose()
        with pytest.raises(SchemaOutOfDate, match="outguard db upgrade"):
            Database(url)


def test_a_sqlite_file_from_before_migrations_is_kept_and_brought_up_to_date(backend: str, tmp_path: Path) -> None:
    if backend != "sqlite":
        pytest.skip("SQLite only")
    path = tmp_path / "legacy.db"
    with sqlite3.connect(path) as connection:  # the first release's table, before the added columns
        connection.execute(
            "CREATE TABLE scored_messages (id INTEGER PRIMARY KEY, ts REAL NOT NULL, relay TEXT NOT NULL, "
            "account TEXT NOT NULL, identity_source TEXT NOT NULL, message_id TEXT NOT NULL, queue_id TEXT, "
            "model_version TEXT NOT NULL, feature_spec_version TEXT NOT NULL, features BLOB, spam_probability REAL, "
            "account_risk REAL NOT NULL, action TEXT NOT NULL, lock_recommended INTEGER NOT NULL, "
            "recipients_hashed TEXT NOT NULL, client_ip TEXT, subject TEXT, scored_at REAL NOT NULL)"
        )
        connection.execute(
            "INSERT INTO scored_messages (ts, relay, account, identity_source, message_id, model_version, "
            "feature_spec_version, account_risk, action, lock_recommended, recipients_hashed, scored_at) "
            "VALUES (1, 'r', 'a', 'sasl', '<kept@x>', 'v', 's', 0, 'accept', 0, '[]', 1)"
        )
    database = Database(f"sqlite:///{path}")
    try:
        revision = database.read_now(lambda c: c.execute(text("SELECT version_num FROM alembic_version")).scalar())
        assert revision == head_revision()
        assert [r["message_id"] for r in read_scored(path)] == ["<kept@x>"]
    finally:
        database.close()


def test_a_caller_that_gives_up_does_not_stop_the_writer(database: Database) -> None:
    started, release = threading.Event(), threading.Event()

    def slow(connection: Connection) -> int:
        started.set()
        release.wait(5)
        return connection.execute(text("SELECT 1")).scalar_one()

    async def run() -> int:
        waiting = asyncio.create_task(database.writer.submit(slow))
        await asyncio.to_thread(started.wait, 5)
        waiting.cancel()  # the request was cancelled while its write was in the transaction
        release.set()
        return await database.writer.submit(lambda c: c.execute(text("SELECT 2")).scalar_one())

    assert asyncio.run(run()) == 2
    assert database.writer.alive
