"""Bulk actions (issue 20, item 1): many accounts, one audited operation, a dry run first, read back after."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import DBAPIError

from service.app import create_app
from service.settings import Settings
from service.stores import AccountKey, AccountStatus
from tests.conftest import make_raw, run_sql
from tests.service.test_lock_durability import durable_settings, writes_refused  # noqa: F401 (a fixture)
from tests.service.test_score_api import SPAM, SPRAYED

pytestmark = pytest.mark.backends

NEWSLETTER = make_raw(
    subject="Our autumn catalogue is out",
    body=(
        "Hello,\n\nthe autumn catalogue is out: forty pages of boots, coats and scarves, with a voucher for "
        "your next order inside. Browse it online or ask for a printed copy at any of our shops.\n\n"
        "Kind regards,\nThe shop team\n"
    ),
)
CAMPAIGN = [f"shop{i}@mail.example" for i in range(12)]


def scored(client: TestClient, account: str, n: int = 0, raw: str | None = None, relay: str = "default", **extra):
    body = {
        "message_id": f"<{account}-{n}@x>",
        "relay": relay,
        "sasl_username": account,
        "recipients": ["reader@example.org"],
        "raw": raw or make_raw(),
        **extra,
    }
    response = client.post("/v1/score", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def status(client: TestClient, account: str, relay: str = "default") -> str:
    return client.get(f"/v1/accounts/{relay}/{quote(account, safe='')}").json()["status"]


def bulk(client: TestClient, relay: str = "default", **body: object):
    return client.post(f"/v1/accounts/{relay}/bulk", json={"reason": "ticket 20", **body})


def test_a_campaign_is_locked_in_one_operation_and_unlocked_again(client: TestClient) -> None:
    for account in CAMPAIGN:
        scored(client, account, raw=NEWSLETTER)
    scored(client, "bystander@mail.example")
    [campaign] = client.get("/v1/campaigns").json()["campaigns"]
    assert {a["account"] for a in campaign["accounts"]} == set(CAMPAIGN)
    by_campaign = {"filter": {"campaign_id": campaign["campaign_id"]}}

    dry = bulk(client, action="lock", dry_run=True, **by_campaign)
    assert dry.status_code == 200, dry.text
    assert (dry.json()["operation_id"], dry.json()["matched"], dry.json()["changed"]) == (None, 12, 12)
    assert {(a["outcome"], a["from_status"], a["to_status"]) for a in dry.json()["accounts"]} == {
        ("changed", "active", "locked")
    }
    assert {status(client, a) for a in CAMPAIGN} == {"active"}  # nothing changed
    assert client.get("/v1/audit").json()["entries"] == []  # nothing recorded

    done = bulk(client, action="lock", actor="abuse-desk", **by_campaign)
    assert done.status_code == 201, done.text
    operation = done.json()["operation_id"]
    assert done.headers["location"] == f"/v1/accounts/default/bulk/{operation}"
    assert (done.json()["changed"], done.json()["principal"]) == (12, "anonymous")
    assert {status(client, a) for a in CAMPAIGN} == {"locked"}
    assert status(client, "bystander@mail.example") == "active"
    assert scored(client, CAMPAIGN[3], 1)["action"] == "reject"

    back = client.get(done.headers["location"]).json()
    assert (back["action"], back["actor"], back["reason"], back["changed"]) == ("lock", "abuse-desk", "ticket 20", 12)
    assert back["selector"] == by_campaign
    assert sorted(e["account"] for e in back["entries"]) == sorted(CAMPAIGN)
    assert {(e["action"], e["operation_id"], e["principal"]) for e in back["entries"]} == {
        ("locked", operation, "anonymous")
    }
    history = client.get(f"/v1/accounts/default/{CAMPAIGN[0]}/lock-history").json()["history"]
    assert history[0]["operation_id"] == operation

    again = bulk(client, action="lock", **by_campaign).json()
    assert (again["changed"], again["unchanged"]) == (0, 12)  # already locked: left alone, not audited
    undone = bulk(client, action="unlock", **by_campaign)
    assert (undone.status_code, undone.json()["changed"]) == (201, 12)
    assert {status(client, a) for a in CAMPAIGN} == {"active"}
    assert scored(client, CAMPAIGN[3], 2)["action"] == "accept"
    audit = client.get("/v1/audit", params={"limit": 1000}).json()["entries"]
    assert sorted(e["action"] for e in audit) == ["locked"] * 12 + ["unlocked"] * 12


def test_a_filter_by_domain_status_identity_source_and_risk(client: TestClient) -> None:
    for account in ("a@x.example", "b@X.example", "c@y.example"):
        scored(client, account)
    script = client.post(
        "/v1/score", json={"message_id": "<s@x>", "account": "33:shop/mail.php", "raw": make_raw()}
    ).json()
    assert script["identity_source"] == "account"
    for n in range(6):  # a spam run: high risk
        client.post(
            "/v1/score",
            json={"message_id": f"<h{n}@x>", "sasl_username": "hot@y.example", "recipients": SPRAYED, "raw": SPAM},
        )

    by_domain = bulk(client, action="lock", filter={"domain": "X.EXAMPLE"}).json()
    assert sorted(a["account"] for a in by_domain["accounts"]) == ["a@x.example", "b@X.example"]
    locked = bulk(client, action="unlock", dry_run=True, filter={"status": "locked"}).json()
    assert sorted(a["account"] for a in locked["accounts"]) == ["a@x.example", "b@X.example"]
    by_source = bulk(client, action="allowlist", filter={"identity_source": "account"}).json()
    assert [a["account"] for a in by_source["accounts"]] == ["33:shop/mail.php"]
    assert client.get(f"/v1/accounts/default/{quote('33:shop/mail.php', safe='')}").json()["allowlisted"]
    risky = bulk(client, action="lock", filter={"min_risk": 0.5, "domain": "y.example"}).json()
    assert [(a["account"], a["to_status"]) for a in risky["accounts"]] == [("hot@y.example", "locked")]
    assert status(client, "c@y.example") == "active"
    statuses = {"status": ["locked", "locked_temporary"]}
    reset = bulk(client, action="reset", filter=statuses).json()
    assert sorted(a["account"] for a in reset["accounts"]) == ["a@x.example", "b@X.example", "hot@y.example"]
    assert {status(client, a) for a in ("a@x.example", "b@X.example", "hot@y.example")} == {"active"}


def test_named_accounts_never_seen_are_skipped_unless_forced(client: TestClient) -> None:
    scored(client, "alice@example.net")
    named = {"action": "lock", "accounts": ["alice@example.net", "alcie@example.net", "alice@example.net"]}
    first = bulk(client, **named).json()
    assert (first["matched"], first["changed"], first["unseen"]) == (2, 1, 1)
    assert [a["outcome"] for a in first["accounts"]] == ["changed", "unseen"]
    assert client.get(f"/v1/accounts/default/bulk/{first['operation_id']}").json()["unseen_accounts"] == [
        "alcie@example.net"
    ]
    assert status(client, "alcie@example.net") == "active"
    assert client.get("/v1/audit", params={"account": "alcie@example.net"}).json()["entries"] == []
    forced = bulk(client, force=True, **named).json()
    assert [a["outcome"] for a in forced["accounts"]] == ["unchanged", "changed"]
    assert status(client, "alcie@example.net") == "locked"


def test_temporary_locks_allowlisting_and_taking_it_back(client: TestClient) -> None:
    for account in ("p@example.net", "q@example.net"):
        scored(client, account)
    accounts = ["p@example.net", "q@example.net"]
    temporary = bulk(client, action="lock", accounts=accounts, duration_s=600).json()
    assert {a["to_status"] for a in temporary["accounts"]} == {"locked_temporary"}
    assert client.get(f"/v1/accounts/default/bulk/{temporary['operation_id']}").json()["details"] == {
        "force": False,
        "duration_s": 600,
    }
    assert bulk(client, action="allowlist", accounts=accounts).json()["changed"] == 2
    assert client.get("/v1/accounts/default/p%40example.net").json()["allowlisted"] is True
    assert bulk(client, action="allowlist", accounts=accounts).json()["unchanged"] == 2
    assert bulk(client, action="allowlist", allowlisted=False, accounts=accounts).json()["changed"] == 2
    assert client.get("/v1/accounts/default/p%40example.net").json()["allowlisted"] is False


def test_bulk_locks_survive_a_restart(client: TestClient, settings: Settings) -> None:
    scored(client, "kept@example.net")
    assert bulk(client, action="lock", accounts=["kept@example.net"]).status_code == 201
    with TestClient(create_app(settings)) as restarted:
        assert scored(restarted, "kept@example.net", 1)["account_locked"] is True


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"action": "lock"}, "either `accounts` or `filter`"),
        ({"action": "lock", "accounts": ["a"], "filter": {"domain": "x"}}, "either `accounts` or `filter`"),
        ({"action": "lock", "filter": {}}, "at least one of"),
        ({"action": "unlock", "accounts": ["a"], "duration_s": 600}, "`duration_s` goes with the lock"),
        ({"action": "lock", "accounts": ["a"], "allowlisted": True}, "`allowlisted` goes with the allowlist"),
        ({"action": "delete", "accounts": ["a"]}, "'lock', 'unlock', 'allowlist' or 'reset'"),
        ({"action": "lock", "accounts": []}, "at least 1 item"),
        ({"action": "lock", "filter": {"domain": "a@b"}}, "pattern"),
        ({"action": "lock", "filter": {"min_risk": 2}}, "less than or equal to 1"),
        ({"action": "lock", "filter": {"status": "gone"}}, "'active', 'rate_limited'"),
    ],
)
def test_a_bad_request_is_a_422_saying_what_is_wrong(client: TestClient, body: dict, problem: str) -> None:
    response = bulk(client, **body)
    assert response.status_code == 422, response.text
    assert problem in response.text


def test_unknown_campaigns_and_operations_are_404s(client: TestClient) -> None:
    missing = bulk(client, action="lock", filter={"campaign_id": 999})
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    assert "no campaign 999" in missing.json()["detail"]
    assert client.get(f"/v1/accounts/default/bulk/{uuid.uuid4()}").status_code == 404
    scored(client, "m@example.net")
    operation = bulk(client, action="lock", accounts=["m@example.net"]).json()["operation_id"]
    assert client.get(f"/v1/accounts/default/bulk/{operation}").status_code == 200
    assert client.get(f"/v1/accounts/other/bulk/{operation}").status_code == 404  # not that relay's


def test_bulk_operations_cannot_be_rewritten(client: TestClient, settings: Settings) -> None:
    scored(client, "n@example.net")
    assert bulk(client, action="lock", accounts=["n@example.net"]).status_code == 201
    with pytest.raises(DBAPIError, match="append-only"):
        run_sql(settings.database_url, "DELETE FROM bulk_operations")
    with pytest.raises(DBAPIError, match="append-only"):
        run_sql(settings.database_url, "UPDATE bulk_operations SET changed = 0")


def test_an_operation_the_database_refuses_changes_nothing(durable_settings: Settings, backend: str) -> None:  # noqa: F811
    if backend == "sqlite":
        pytest.skip("SQLite refuses a write only after its 10 s busy timeout (test_lock_durability: PostgreSQL too)")
    url = durable_settings.database_url
    accounts = [f"r{i}@example.net" for i in range(5)]
    with TestClient(create_app(durable_settings)) as client:
        for account in accounts:
            scored(client, account)
        with writes_refused(url):
            refused = bulk(client, action="lock", accounts=accounts)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "storage_unavailable"
            states = [
                client.portal.call(client.app.state.container.accounts.get, AccountKey("default", a)) for a in accounts
            ]
            assert {s.status for s in states} == {AccountStatus.ACTIVE}
        assert run_sql(url, "SELECT count(*) FROM audit_log") == [(0,)]
        assert run_sql(url, "SELECT count(*) FROM bulk_operations") == [(0,)]
        assert {scored(client, a, 1)["action"] for a in accounts} == {"accept"}
        assert bulk(client, action="lock", accounts=accounts).json()["changed"] == 5
