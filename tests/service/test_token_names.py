"""Named people (issue 20, item 3): each token has a name the audit log records, and may be limited to relays."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import make_raw
from tests.service.test_score_api import SPAM, SPRAYED

ALICE, BOB, RELAY_A, RESELLER = "alice-secret-1", "bob-secret-2", "relay-a-secret-3", "reseller-secret-4"
TOKENS = [
    {"name": "alice", "token": ALICE, "scopes": ["admin"]},
    {"name": "bob", "token": BOB, "scopes": ["admin"]},
    {"name": "relay-a", "token": RELAY_A, "scopes": ["score"], "relays": ["relay-a"]},
    {"name": "reseller", "token": RESELLER, "scopes": ["admin"], "relays": ["relay-a", "relay-c"]},
]
SAME_ORIGIN = {"origin": "http://testserver", "sec-fetch-site": "same-origin"}


def as_(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def named(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update={"tokens": TOKENS}))) as client:
        yield client


def score(client: TestClient, token: str, relay: str, account: str, n: int = 0, raw: str | None = None):
    body = {"message_id": f"<{account}-{n}@x>", "relay": relay, "sasl_username": account, "raw": raw or make_raw()}
    return client.post("/v1/score", json=body, headers=as_(token))


# -- configuration


def test_tokens_come_named_or_in_the_old_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "OUTGUARD_TOKENS", '[{"name": "alice", "token": "t1", "scopes": ["admin"], "relays": ["relay-a"]}]'
    )
    [alice] = Settings().named_tokens
    assert (alice.name, alice.token.get_secret_value(), alice.relays) == ("alice", "t1", ["relay-a"])
    assert "t1" not in repr(Settings().tokens)  # a secret, also in reprs and logs
    monkeypatch.setenv("OUTGUARD_TOKENS", '{"t1": ["score", "feedback"]}')
    assert Settings().tokens == {"t1": ["score", "feedback"]}  # the old form keeps working
    [old] = Settings().named_tokens
    assert old.name == "token-" + hashlib.sha256(b"t1").hexdigest()[:4]
    assert old.relays is None


@pytest.mark.parametrize(
    ("tokens", "problem"),
    [
        (
            '[{"name": "a", "token": "x", "scopes": ["admin"]}, {"name": "a", "token": "y", "scopes": ["admin"]}]',
            "name",
        ),
        (
            '[{"name": "a", "token": "x", "scopes": ["admin"]}, {"name": "b", "token": "x", "scopes": ["admin"]}]',
            "token",
        ),
        ('[{"name": "a b", "token": "x", "scopes": ["admin"]}]', "pattern"),
        ('[{"name": "a", "token": "x", "scopes": []}]', "at least 1"),
        ('[{"name": "a", "token": "x", "scopes": ["admin"], "relays": []}]', "at least 1"),
        ('[{"name": "a", "token": "x", "scopes": ["admin"], "relays": ["a b"]}]', "pattern"),
        ('[{"name": "a", "token": " x", "scopes": ["admin"]}]', "surrounding spaces"),
    ],
)
def test_bad_tokens_are_refused_at_start(monkeypatch: pytest.MonkeyPatch, tokens: str, problem: str) -> None:
    monkeypatch.setenv("OUTGUARD_TOKENS", tokens)
    with pytest.raises(ValueError, match=problem):
        Settings()


def test_two_old_form_tokens_never_share_a_name() -> None:
    from service.settings import named_tokens

    # Tokens whose hashes share their first 4 hex digits (found by search): the names grow until they differ.
    first, second = "k-2", "k-77"
    assert hashlib.sha256(first.encode()).hexdigest()[:4] == hashlib.sha256(second.encode()).hexdigest()[:4]
    names = [t.name for t in named_tokens({first: ["admin"], second: ["admin"]})]
    assert len(set(names)) == 2 and all(len(n) == len("token-") + 8 for n in names)


# -- who did it, in the audit log


@pytest.mark.backends
def test_every_change_records_the_token_that_made_it(named: TestClient) -> None:
    assert score(named, RELAY_A, "relay-a", "carol@example.net").status_code == 200
    lock = named.post("/v1/accounts/relay-a/carol%40example.net/lock", json={"reason": "phished"}, headers=as_(ALICE))
    assert lock.status_code == 200, lock.text
    unlock = named.post(
        "/v1/accounts/relay-a/carol%40example.net/unlock",
        json={"actor": "ticket-bot", "reason": "password reset"},
        headers=as_(BOB),
    )
    assert unlock.status_code == 200, unlock.text
    [unlocked, locked] = named.get("/v1/audit", headers=as_(ALICE)).json()["entries"]
    assert (locked["action"], locked["actor"], locked["principal"]) == ("locked", "alice", "alice")
    assert (unlocked["action"], unlocked["actor"], unlocked["principal"]) == ("unlocked", "ticket-bot", "bob")


@pytest.mark.backends
def test_the_dashboard_bulk_actions_and_verdicts_record_their_token_too(named: TestClient) -> None:
    score(named, RELAY_A, "relay-a", "dave@example.net")
    named.post("/dashboard/login", data={"token": ALICE}, headers=SAME_ORIGIN)
    page = named.post(
        "/dashboard/accounts/relay-a/dave%40example.net/lock", data={"reason": "FBL"}, headers=SAME_ORIGIN
    )
    assert page.status_code == 200, page.text
    verdict = {"target": "account", "label": "clean", "relay": "relay-a", "account": "dave@example.net", "actor": "jo"}
    assert named.post("/v1/labels", json={**verdict, "reason": "ok"}, headers=as_(BOB)).status_code == 201
    done = named.post(
        "/v1/accounts/relay-a/bulk",
        json={"action": "lock", "accounts": ["dave@example.net"], "reason": "again"},
        headers=as_(BOB),
    )
    assert done.json()["principal"] == "bob"
    entries = named.get("/v1/audit", params={"account": "dave@example.net"}, headers=as_(ALICE)).json()["entries"]
    assert [(e["action"], e["principal"]) for e in entries] == [
        ("locked", "bob"),
        ("unlocked", "bob"),
        ("locked", "alice"),
    ]


@pytest.mark.backends
def test_an_automatic_lock_is_the_services_made_while_serving_the_relays_token(named: TestClient) -> None:
    for n in range(6):
        body = {"message_id": f"<s{n}@x>", "relay": "relay-a", "sasl_username": "eve", "recipients": SPRAYED}
        named.post("/v1/score", json={**body, "raw": SPAM}, headers=as_(RELAY_A))
    entries = named.get("/v1/audit", params={"account": "eve"}, headers=as_(ALICE)).json()["entries"]
    assert entries and {(e["actor"], e["principal"]) for e in entries} == {("outguard", "relay-a")}


def test_the_old_token_form_is_recorded_under_its_name(settings: Settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"tokens": {"ops-token": ["admin"]}}))) as client:
        client.post("/v1/accounts/default/x/lock", json={"reason": "r", "force": True}, headers=as_("ops-token"))
        [entry] = client.get("/v1/audit", headers=as_("ops-token")).json()["entries"]
    assert entry["principal"] == entry["actor"] == "token-" + hashlib.sha256(b"ops-token").hexdigest()[:4]


# -- tokens limited to some relays: every refusal names the relay


@pytest.mark.parametrize(
    ("method", "path", "body", "refused"),
    [
        ("post", "/v1/score", {"message_id": "<a@x>", "relay": "relay-b", "text": "hi"}, "relay-b"),
        ("post", "/v1/score", {"message_id": "<a@x>", "text": "hi"}, "default"),
        (
            "post",
            "/v1/score/batch",
            {"messages": [{"message_id": "<a@x>", "relay": "relay-a"}, {"message_id": "<b@x>", "relay": "relay-b"}]},
            "relay-b",
        ),
        ("get", "/v1/accounts/relay-b/carol", None, "relay-b"),
        ("post", "/v1/accounts/relay-b/carol/lock", {"reason": "r", "force": True}, "relay-b"),
        ("post", "/v1/accounts/relay-b/bulk", {"action": "lock", "accounts": ["c"], "reason": "r"}, "relay-b"),
        ("get", "/v1/accounts/relay-b/bulk/8d4a7e4e-7f0e-4a55-9f0e-2f1f5b0c9a11", None, "relay-b"),
        ("get", "/v1/audit?relay=relay-b", None, "relay-b"),
        ("get", "/v1/reports/outbound?relay=relay-b", None, "relay-b"),
        ("get", "/v1/reports/outbound", None, "name one with `?relay=`"),
        ("put", "/v1/identity-rules/relay-b", {"rules": [], "actor": "r"}, "relay-b"),
        ("get", "/v1/webhooks", None, "spans every relay"),
        ("get", "/v1/campaigns", None, "spans every relay"),
        ("post", "/v1/labels", {"target": "message", "label": "spam", "message_id": "<a@x>", "actor": "r"}, "spans"),
    ],
)
def test_a_token_limited_to_relays_is_refused_the_others(
    named: TestClient, method: str, path: str, body: dict | None, refused: str
) -> None:
    response = named.request(method, path, json=body, headers=as_(RESELLER))
    assert response.status_code == 403, response.text
    detail = response.json()["detail"]
    assert refused in detail and "'reseller'" in detail and "'relay-a', 'relay-c'" in detail
    assert RESELLER not in response.text


def test_a_token_limited_to_relays_works_on_its_own(named: TestClient) -> None:
    assert score(named, RESELLER, "relay-a", "frank@example.net").status_code == 200
    assert score(named, RELAY_A, "relay-a", "frank@example.net", 1).status_code == 200
    batch = {"messages": [{"message_id": "<b1@x>", "relay": "relay-c", "text": "hi"}]}
    assert named.post("/v1/score/batch", json=batch, headers=as_(RESELLER)).status_code == 200
    assert named.get("/v1/accounts/relay-a/frank%40example.net", headers=as_(RESELLER)).status_code == 200
    lock = named.post(
        "/v1/accounts/relay-a/bulk",
        json={"action": "lock", "accounts": ["frank@example.net"], "reason": "r"},
        headers=as_(RESELLER),
    )
    assert lock.status_code == 201, lock.text
    assert named.get(lock.headers["location"], headers=as_(RESELLER)).status_code == 200
    assert named.get("/v1/reports/outbound?relay=relay-a", headers=as_(RESELLER)).status_code == 200
    assert named.get("/healthz").status_code == 200
    refused = score(named, RELAY_A, "relay-c", "frank@example.net", 2)
    assert refused.status_code == 403 and "'relay-c'" in refused.json()["detail"]


def test_the_audit_log_of_a_token_limited_to_relays_shows_only_theirs(named: TestClient) -> None:
    for relay in ("relay-a", "relay-b", "relay-c"):
        named.post(f"/v1/accounts/{relay}/grace/lock", json={"reason": "r", "force": True}, headers=as_(ALICE))
    mine = named.get("/v1/audit", headers=as_(RESELLER)).json()["entries"]
    assert sorted(e["relay"] for e in mine) == ["relay-a", "relay-c"]
    one = named.get("/v1/audit", params={"relay": "relay-c"}, headers=as_(RESELLER)).json()["entries"]
    assert [e["relay"] for e in one] == ["relay-c"]
    assert len(named.get("/v1/audit", headers=as_(ALICE)).json()["entries"]) == 3


def test_rspamd_scans_are_limited_by_their_mta_tag(named: TestClient) -> None:
    raw = make_raw().encode()
    allowed = named.post("/checkv2", content=raw, headers={**as_(RELAY_A), "MTA-Tag": "relay-a", "User": "h"})
    assert allowed.status_code == 200, allowed.text
    refused = named.post("/checkv2", content=raw, headers={**as_(RELAY_A), "MTA-Tag": "relay-b", "User": "h"})
    assert refused.status_code == 403 and "'relay-b'" in refused.json()["detail"]
    untagged = named.post("/checkv2", content=raw, headers={**as_(RELAY_A), "User": "h"})
    assert untagged.status_code == 403 and "'default'" in untagged.json()["detail"]


def test_the_dashboard_needs_an_admin_of_every_relay(named: TestClient) -> None:
    refused = named.post("/dashboard/login", data={"token": RESELLER}, headers=SAME_ORIGIN, follow_redirects=False)
    assert "error=1" in refused.headers["location"]
    assert named.get("/dashboard", headers=as_(RESELLER), follow_redirects=False).status_code == 303
    assert named.get("/dashboard", headers=as_(ALICE), follow_redirects=False).status_code == 200
