"""Accounts over HTTP: automatic locks, the admin's actions, the audit trail, names that need encoding."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import DBAPIError

from service.app import create_app
from tests.conftest import make_raw, run_sql
from tests.service.test_score_api import SPAM, SPRAYED

pytestmark = pytest.mark.backends

ADMIN = {"actor": "ops@host.example", "reason": "ticket 4711"}
LOCK = {**ADMIN, "force": True}  # the accounts these tests lock were never seen before


def url(account: str, relay: str = "default") -> str:
    return f"/v1/accounts/{relay}/{quote(account, safe='')}"


def score(client: TestClient, account: str, i: int, raw: str = SPAM, recipients: list[str] | None = None) -> dict:
    # Spam goes to many domains at once: a new account is not locked on its content alone.
    recipients = recipients or (SPRAYED if raw == SPAM else ["a@b.org"])
    body = {"message_id": f"<{account}-{i}@x>", "sasl_username": account, "recipients": recipients, "raw": raw}
    return client.post("/v1/score", json=body).json()


def test_a_spam_run_is_locked_automatically_with_its_reason_in_the_audit_log(client: TestClient) -> None:
    results = [score(client, "hijacked@example.net", i) for i in range(6)]
    assert results[-1]["account_locked"]
    view = client.get(url("hijacked@example.net")).json()
    assert view["status"] == "locked_temporary"
    assert view["automatic_locks"] == 1
    [entry] = [h for h in view["lock_history"] if h["action"] == "locked_temporary"]
    assert entry["actor"] == "outguard"
    assert "spam probability" in entry["reason"]
    assert entry["details"]["account_risk"] == 1.0
    assert len(view["recent_scores"]) == 6


def test_the_admin_locks_and_unlocks_an_account_named_with_slashes_and_parentheses(client: TestClient) -> None:
    name = "33:wp-content/plugins/hello(1)/mail.php"
    locked = client.post(url(name) + "/lock", json=LOCK)
    assert locked.status_code == 200
    assert (locked.json()["account"], locked.json()["status"]) == (name, "locked")
    blocked = client.post("/v1/score", json={"message_id": "<p@x>", "account": name, "raw": make_raw()}).json()
    assert (blocked["action"], blocked["account_locked"]) == ("reject", True)
    unlocked = client.post(url(name) + "/unlock", json={**ADMIN, "reason": "script removed"}).json()
    assert unlocked["status"] == "active"
    assert [h["action"] for h in unlocked["lock_history"]] == ["unlocked", "locked"]
    assert (
        client.post("/v1/score", json={"message_id": "<p2@x>", "account": name, "raw": make_raw()}).json()["action"]
        == "accept"
    )


def test_an_allowlisted_account_is_scored_but_never_locked(client: TestClient) -> None:
    client.post(url("newsletter@example.net") + "/allowlist", json=ADMIN)
    results = [score(client, "newsletter@example.net", i) for i in range(6)]
    assert not any(r["account_locked"] for r in results)
    assert results[-1]["lock_recommended"]  # still reported
    assert client.get(url("newsletter@example.net")).json()["allowlisted"] is True


def test_locks_survive_a_restart(client: TestClient, settings) -> None:
    client.post(url("kept") + "/lock", json=LOCK)
    with TestClient(create_app(settings)) as restarted:
        answer = restarted.post("/v1/score", json={"message_id": "<k@x>", "account": "kept", "text": "hi"}).json()
    assert answer["account_locked"]


def test_the_audit_log_cannot_be_rewritten(client: TestClient, settings) -> None:
    client.post(url("audited") + "/lock", json=LOCK)
    with pytest.raises(DBAPIError, match="append-only"):
        run_sql(settings.database_url, "DELETE FROM audit_log")


@pytest.mark.parametrize(("body", "field"), [({"actor": "ops", "force": True}, "reason"), ({"reason": ""}, "reason")])
def test_admin_actions_need_a_reason(client: TestClient, body: dict, field: str) -> None:
    response = client.post(url("x") + "/lock", json=body)
    assert response.status_code == 422
    assert field in {p["field"] for p in response.json()["detail"]}


def test_without_an_actor_the_token_name_is_the_actor(client: TestClient) -> None:
    view = client.post(url("x") + "/lock", json={"reason": "typo check", "force": True}).json()
    [entry] = view["lock_history"]
    assert (entry["actor"], entry["principal"]) == ("anonymous", "anonymous")  # auth off: the local user


def test_locking_an_account_never_seen_needs_force(client: TestClient) -> None:
    refused = client.post(url("alcie@example.net") + "/lock", json=ADMIN)
    assert refused.status_code == 409
    assert refused.json()["error"] == "account_never_seen"
    assert "'alcie@example.net' has never been seen" in refused.json()["detail"]
    assert "force" in refused.json()["detail"]
    assert client.get(url("alcie@example.net")).json()["lock_history"] == []  # nothing recorded
    score(client, "alice@example.net", 0, raw=make_raw())
    assert client.post(url("alice@example.net") + "/lock", json=ADMIN).status_code == 200  # seen: no force needed
    forced = client.post(url("new@example.net") + "/lock", json=LOCK)
    assert (forced.status_code, forced.json()["status"]) == (200, "locked")


def test_a_temporary_admin_lock(client: TestClient) -> None:
    view = client.post(url("cool") + "/lock", json={**LOCK, "duration_s": 600}).json()
    assert view["status"] == "locked_temporary"
    assert view["locked_until"] > 0


def test_the_account_view_shows_its_windows(client: TestClient) -> None:
    for i in range(3):
        score(client, "counted", i, raw=make_raw())
    counters = client.get(url("counted")).json()["counters"]
    assert counters["msgs_1h"] == 3
    assert counters["rcpts_24h"] == 3
