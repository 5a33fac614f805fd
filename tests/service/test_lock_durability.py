"""No lifecycle change takes effect without its record (issue 16, item 4).

The database really refuses the writes here, nothing is mocked:

- SQLite: a second connection holds the database's write lock (`BEGIN EXCLUSIVE`), so
  the writer's transaction waits out its busy timeout and fails ("database is locked");
- PostgreSQL: a second connection holds `LOCK TABLE audit_log IN EXCLUSIVE MODE` (reads
  go on, writes wait) and the service's connections carry a short `lock_timeout` (a
  libpq option in the URL), so the ledger's insert fails ("lock timeout").

A lock the database refuses is not applied: the account is neither locked in the hot
state nor reported locked, its mail is deferred with a reason saying so, and no record
exists. Once the database takes writes again the account's next message commits the
lock, and only then does it take effect; a restarted service (on the same database,
with the hot state gone) still has it. Admin changes and a temporary lock's expiry are
held to the same order.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, make_url, text

from service.app import create_app
from service.settings import Settings
from service.stores import AccountKey, AccountState, AccountStatus
from service.stores.database import normalise_url
from tests.conftest import make_raw, redis_namespace, run_sql
from tests.service.test_score_api import SPAM, SPRAYED

ACCOUNT = "hijacked"
KEY = AccountKey("default", ACCOUNT)
ADMIN = {"actor": "ops", "reason": "ticket 42"}
LOCK = {**ADMIN, "force": True}  # bob and carol were never seen before their lock
POSTGRES_ONLY = pytest.mark.parametrize("backend", ["postgresql", "postgresql+redis"], indirect=True)
LOCK_TIMEOUT_MS = 300


@pytest.fixture
def durable_settings(settings: Settings, backend: str) -> Settings:
    """On PostgreSQL, the service's connections give up on a table lock after a moment, as a production one should."""
    if backend == "sqlite":
        return settings
    return settings.model_copy(update={"database_url": f"{settings.database_url}%20-clock_timeout%3D{LOCK_TIMEOUT_MS}"})


@contextlib.contextmanager
def writes_refused(url: str) -> Iterator[None]:
    """While this holds, the database refuses the ledger's writes (see the module docstring)."""
    if make_url(url).get_backend_name() == "sqlite":
        holder = sqlite3.connect(make_url(url).database or "", timeout=5, isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    engine = create_engine(normalise_url(url))
    try:
        with engine.connect() as connection:
            connection.execute(text("LOCK TABLE audit_log IN EXCLUSIVE MODE"))
            try:
                yield
            finally:
                connection.rollback()
    finally:
        engine.dispose()


def spam(client: TestClient, n: int, account: str = ACCOUNT, at: datetime | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"message_id": f"<s{n}@x>", "sasl_username": account, "recipients": SPRAYED, "raw": SPAM}
    if at is not None:
        message["timestamp"] = at.isoformat()
    response = client.post("/v1/score", json=message)
    assert response.status_code == 200, response.text
    return response.json()


def hot_state(client: TestClient, key: AccountKey = KEY) -> AccountState:
    return client.portal.call(client.app.state.container.accounts.get, key)


def audit(url: str, account: str = ACCOUNT) -> list[str]:
    rows = run_sql(url, "SELECT action FROM audit_log WHERE account = :a ORDER BY id", {"a": account})
    return [action for (action,) in rows]


def stored_status(url: str, account: str = ACCOUNT) -> str | None:
    rows = run_sql(url, "SELECT status FROM account_status WHERE account = :a", {"a": account})
    return rows[0][0] if rows else None


def unrecorded(answer: dict[str, Any]) -> str:
    """The description of the answer's reason saying a change waits for its record ('' without one)."""
    return next((r["description"] for r in answer["reasons"] if r["name"] == "lifecycle_not_recorded"), "")


def rate_limited_short_of_a_lock(client: TestClient, at: datetime | None = None) -> int:
    """Spam while writes work, until the account is rate limited (recorded) but not locked; the next message number."""
    n = 0
    while hot_state(client).status is not AccountStatus.RATE_LIMITED:
        answer = spam(client, n, at=at + timedelta(seconds=n) if at else None)
        n += 1
        assert not answer["lock_recommended"] and n < 5, answer
    client.portal.call(client.app.state.container.events.flush)  # nothing of before waits in the writer
    return n


@pytest.mark.backends
def test_a_lock_the_database_refuses_is_not_applied_and_the_next_message_commits_it(
    durable_settings: Settings, backend: str
) -> None:
    url = durable_settings.database_url
    with TestClient(create_app(durable_settings)) as client:
        n = rate_limited_short_of_a_lock(client)
        assert audit(url) == ["rate_limited"]

        with writes_refused(url):
            while not (answer := spam(client, n))["lock_recommended"]:
                n += 1
                assert n < 10, "the spam run never reached a lock"
            n += 1
            # The lock would be taken now, but its record failed: not applied, the mail deferred.
            assert (answer["action"], answer["account_locked"]) == ("defer", False)
            assert "lock could not be recorded" in unrecorded(answer)
            state = hot_state(client)
            assert (state.status, state.locked) == (AccountStatus.RATE_LIMITED, False)
            assert state.pending_change  # waiting for its record
            if backend != "sqlite":  # (SQLite waits out a 10 s busy timeout per try)
                # The next message tries the record again, fails again: still deferred, still not locked.
                again = spam(client, n)
                n += 1
                assert (again["action"], again["account_locked"], again["spam_probability"]) == ("defer", False, None)
                assert again["lock_recommended"] is True
                assert "lock could not be recorded" in unrecorded(again)
                assert not hot_state(client).locked
                # Only that account waits: another one in the same batch is scored as ever.
                batch = client.post(
                    "/v1/score/batch",
                    json={
                        "messages": [
                            {"message_id": f"<s{n}@x>", "sasl_username": ACCOUNT, "raw": SPAM},
                            {"message_id": "<a1@x>", "sasl_username": "alice", "raw": make_raw()},
                        ]
                    },
                )
                n += 1
                held, alice = batch.json()["results"]
                assert (held["action"], held["account_locked"]) == ("defer", False)
                assert (alice["action"], unrecorded(alice)) == ("accept", "")

        # Writes work again. Nothing happened behind the relay's back: no record, no lock.
        assert audit(url) == ["rate_limited"]
        assert stored_status(url) == "rate_limited"
        view = client.get(f"/v1/accounts/default/{ACCOUNT}").json()
        assert (view["status"], view["locked"]) == ("rate_limited", False)

        # The account's next message commits the lock, which then takes effect.
        committed = spam(client, n)
        n += 1
        assert (committed["action"], committed["account_locked"], committed["spam_probability"]) == (
            "reject",
            True,
            None,
        )
        assert not unrecorded(committed)
        assert audit(url) == ["rate_limited", "locked_temporary"]
        assert stored_status(url) == "locked_temporary"
        state = hot_state(client)
        assert (state.status, state.pending_change, state.temporary_locks) == (AccountStatus.LOCKED_TEMPORARY, "", 1)
        assert state.locked_until is not None and state.lock_reason
        history = client.get(f"/v1/accounts/default/{ACCOUNT}/lock-history").json()["history"]
        assert history[0]["action"] == "locked_temporary" and history[0]["details"]["automatic_locks"] == 1

    # A restart, with the hot state gone (on Redis, a namespace of its own): the ledger has the lock.
    with contextlib.ExitStack() as stack:
        restarted = durable_settings
        if backend.endswith("+redis"):
            restarted = restarted.model_copy(update={"redis_prefix": stack.enter_context(redis_namespace())})
        with TestClient(create_app(restarted)) as client:
            after = spam(client, n)
            assert (after["action"], after["account_locked"]) == ("reject", True)
            view = client.get(f"/v1/accounts/default/{ACCOUNT}").json()
            assert (view["status"], view["locked"], view["automatic_locks"]) == ("locked_temporary", True, 1)


@POSTGRES_ONLY
def test_an_admin_change_the_database_refuses_is_not_applied(durable_settings: Settings) -> None:
    url, key = durable_settings.database_url, AccountKey("default", "bob")
    with TestClient(create_app(durable_settings)) as client:
        with writes_refused(url):
            refused = client.post("/v1/accounts/default/bob/lock", json=LOCK)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "storage_unavailable"
            assert not hot_state(client, key).locked
        assert audit(url, "bob") == []
        hello = client.post("/v1/score", json={"message_id": "<b1@x>", "sasl_username": "bob", "raw": make_raw()})
        assert hello.json()["account_locked"] is False

        assert client.post("/v1/accounts/default/bob/lock", json=LOCK).status_code == 200
        with writes_refused(url):
            refused = client.post("/v1/accounts/default/bob/unlock", json=ADMIN)
            assert refused.status_code == 503, refused.text
            assert hot_state(client, key).status is AccountStatus.LOCKED
        assert audit(url, "bob") == ["locked"]
        still = client.post("/v1/score", json={"message_id": "<b2@x>", "sasl_username": "bob", "raw": make_raw()})
        assert (still.json()["action"], still.json()["account_locked"]) == ("reject", True)


@POSTGRES_ONLY
def test_a_clean_verdict_the_database_refuses_does_not_unlock(durable_settings: Settings) -> None:
    url, key = durable_settings.database_url, AccountKey("default", "carol")
    verdict = {"target": "account", "label": "clean", "relay": "default", "account": "carol", **ADMIN}
    with TestClient(create_app(durable_settings)) as client:
        assert client.post("/v1/accounts/default/carol/lock", json=LOCK).status_code == 200
        with writes_refused(url):
            refused = client.post("/v1/labels", json=verdict)
            assert refused.status_code == 503, refused.text
            assert hot_state(client, key).status is AccountStatus.LOCKED
        assert audit(url, "carol") == ["locked"]
        still = client.post("/v1/score", json={"message_id": "<c1@x>", "sasl_username": "carol", "raw": make_raw()})
        assert (still.json()["action"], still.json()["account_locked"]) == ("reject", True)

        assert client.post("/v1/labels", json=verdict).status_code == 201
        assert audit(url, "carol") == ["locked", "unlocked"]
        assert hot_state(client, key).status is AccountStatus.ACTIVE


@POSTGRES_ONLY
def test_a_lock_expiry_the_database_refuses_keeps_the_lock_until_recorded(durable_settings: Settings) -> None:
    url = durable_settings.database_url
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    with TestClient(create_app(durable_settings)) as client:
        # A spam run two hours ago (message time) got the account a one-hour lock, long over now.
        n = rate_limited_short_of_a_lock(client, at=two_hours_ago)
        while not spam(client, n, at=two_hours_ago + timedelta(seconds=n))["lock_recommended"]:
            n += 1
            assert n < 10, "the spam run never reached a lock"
        n += 1
        assert hot_state(client).status is AccountStatus.LOCKED_TEMPORARY
        assert audit(url) == ["rate_limited", "locked_temporary"]

        ham = {"message_id": "<h1@x>", "sasl_username": ACCOUNT, "raw": make_raw()}
        with writes_refused(url):
            answer = client.post("/v1/score", json=ham).json()
            # The lock is due to end but the end is not recorded: still locked, the mail deferred (not rejected).
            assert (answer["action"], answer["account_locked"], answer["spam_probability"]) == ("defer", True, None)
            assert "end of its temporary lock could not be recorded" in unrecorded(answer)
            state = hot_state(client)
            assert (state.status, bool(state.pending_change)) == (AccountStatus.LOCKED_TEMPORARY, True)
        assert audit(url) == ["rate_limited", "locked_temporary"]
        assert stored_status(url) == "locked_temporary"

        answer = client.post("/v1/score", json={**ham, "message_id": "<h2@x>"}).json()
        assert answer["account_locked"] is False and answer["spam_probability"] is not None
        assert not unrecorded(answer)
        assert audit(url) == ["rate_limited", "locked_temporary", "lock_expired"]
        assert stored_status(url) == "active"
        state = hot_state(client)
        assert (state.status, state.pending_change) == (AccountStatus.ACTIVE, "")
        assert answer["account_risk"] < 1.0  # the evidence started over at the expiry; this message's only
