"""GET /v1/audit (issue 20, item 3): every account change, who made it, with filters and bounded pages."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

pytestmark = pytest.mark.backends

TOKENS = [
    {"name": "alice", "token": "alice-secret", "scopes": ["admin"]},
    {"name": "bob", "token": "bob-secret", "scopes": ["admin"]},
]
ALICE = {"Authorization": "Bearer alice-secret"}
BOB = {"Authorization": "Bearer bob-secret"}


@pytest.fixture
def named(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update={"tokens": TOKENS}))) as client:
        yield client


def act(client: TestClient, who: dict[str, str], action: str, account: str, relay: str = "r1", **body: object) -> None:
    body = {"reason": f"{action} {account}", **body}
    if action == "lock":
        body["force"] = True
    response = client.post(f"/v1/accounts/{relay}/{account}/{action}", json=body, headers=who)
    assert response.status_code == 200, response.text


def audit(client: TestClient, **params: object) -> dict:
    response = client.get("/v1/audit", params=params, headers=ALICE)
    assert response.status_code == 200, response.text
    return response.json()


def summary(entries: list[dict]) -> list[tuple[str, str, str, str]]:
    return [(e["relay"], e["account"], e["action"], e["principal"]) for e in entries]


def test_filters_combine(named: TestClient) -> None:
    act(named, ALICE, "lock", "x")
    act(named, BOB, "unlock", "x", actor="ticket-7")
    middle = time.time()
    act(named, ALICE, "lock", "y", relay="r2")
    act(named, BOB, "reset", "z")

    assert summary(audit(named)["entries"]) == [
        ("r1", "z", "reset", "bob"),
        ("r2", "y", "locked", "alice"),
        ("r1", "x", "unlocked", "bob"),
        ("r1", "x", "locked", "alice"),
    ]
    assert summary(audit(named, principal="alice")["entries"]) == [
        ("r2", "y", "locked", "alice"),
        ("r1", "x", "locked", "alice"),
    ]
    assert summary(audit(named, actor="ticket-7")["entries"]) == [("r1", "x", "unlocked", "bob")]
    assert summary(audit(named, relay="r2")["entries"]) == [("r2", "y", "locked", "alice")]
    assert len(audit(named, relay=["r1", "r2"])["entries"]) == 4
    assert summary(audit(named, relay="r1", account="x", action="locked")["entries"]) == [
        ("r1", "x", "locked", "alice")
    ]
    assert len(audit(named, action=["locked", "reset"])["entries"]) == 3
    assert [e["account"] for e in audit(named, since=str(middle))["entries"]] == ["z", "y"]
    assert [e["account"] for e in audit(named, until=str(middle))["entries"]] == ["x", "x"]
    assert audit(named, account="nobody")["entries"] == []
    assert audit(named, since="2020-01-01T00:00:00Z", until="2020-01-02T00:00:00Z")["entries"] == []


def test_bulk_operations_are_found_by_their_id(named: TestClient) -> None:
    accounts = ["p", "q", "r"]
    done = named.post(
        "/v1/accounts/r1/bulk",
        json={"action": "lock", "accounts": accounts, "reason": "r", "force": True},
        headers=BOB,
    ).json()
    act(named, ALICE, "lock", "s")
    entries = audit(named, operation_id=done["operation_id"])["entries"]
    assert sorted(e["account"] for e in entries) == accounts
    assert {(e["principal"], e["actor"]) for e in entries} == {("bob", "bob")}


def test_pages_follow_a_cursor_newest_first(named: TestClient) -> None:
    for n in range(4):
        act(named, ALICE, "lock", f"a{n}")
        act(named, ALICE, "unlock", f"a{n}")
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        page = audit(named, limit=3, **({"cursor": cursor} if cursor else {}))
        seen += [e["id"] for e in page["entries"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and len(seen) == 8
    assert seen == sorted(seen, reverse=True) and len(set(seen)) == 8
    exact = audit(named, limit=8)
    assert (len(exact["entries"]), exact["next_cursor"]) == (8, None)


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"cursor": 0}, "cursor"),
        ({"since": "yesterday"}, "give unix seconds or an RFC 3339 time"),
        ({"since": "200", "until": "100"}, "must be before"),
        ({"relay": "x" * 129}, "1 to 128 characters"),
    ],
)
def test_bad_filters_are_422s(named: TestClient, params: dict, problem: str) -> None:
    response = named.get("/v1/audit", params=params, headers=ALICE)
    assert response.status_code == 422, response.text
    assert problem in response.text


def test_the_audit_log_needs_an_admin_token(settings: Settings) -> None:
    tokens = [*TOKENS, {"name": "relay", "token": "relay-secret", "scopes": ["score"]}]
    with TestClient(create_app(settings.model_copy(update={"tokens": tokens}))) as client:
        assert client.get("/v1/audit").status_code == 401
        refused = client.get("/v1/audit", headers={"Authorization": "Bearer relay-secret"})
        assert refused.status_code == 403 and "`admin` scope" in refused.json()["detail"]
