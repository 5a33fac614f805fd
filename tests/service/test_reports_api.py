"""`GET /v1/reports/outbound`: who sent what, how it scored, what came back, who was locked; JSON pages and CSV."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_raw
from tests.training.test_events import SHOUTING

pytestmark = pytest.mark.backends

NOW = time.time()


def stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


@pytest.fixture
def traffic(client: TestClient) -> TestClient:
    """spammer@r1 sends 2 held spam and is locked; owner@r1 3 ordinary messages; other@r2 one, via SASL."""

    def send(n: int, relay: str, spam: bool, **who: str) -> None:
        raw = make_raw(subject="FREE VIAGRA!!! 80% OFF $$$", body=SHOUTING) if spam else make_raw()
        body = {"message_id": f"<r{n}@x>", "relay": relay, "recipients": ["a@example.org"], "raw": raw}
        answer = client.post("/v1/score", json={**body, **who, "timestamp": stamp(NOW - 3_600 + n)})
        assert answer.status_code == 200, answer.text

    send(0, "r1", True, account="spammer")
    send(1, "r1", True, account="spammer")
    for n in (2, 3, 4):
        send(n, "r1", False, account="owner")
    send(5, "r2", False, sasl_username="other")
    for event_id, kind, message in (("c", "complaint", 0), ("b", "bounce", 2), ("r", "reply", 3)):
        event = {"event_id": event_id, "type": kind, "message_id": f"<r{message}@x>", "recipient": "a@example.org"}
        assert client.post("/v1/feedback", json={**event, "timestamp": stamp(NOW - 60)}).status_code in (200, 201)
    lock = client.post("/v1/accounts/r1/spammer/lock", json={"actor": "ops", "reason": "spam run", "force": True})
    assert lock.status_code == 200
    asyncio.run(client.app.state.container.events.flush())
    return client


def report(client: TestClient, **params: object) -> dict:
    # Locks are stamped with the wall clock when they are made, after NOW was read.
    answer = client.get("/v1/reports/outbound", params={"since": NOW - 7_200, "until": time.time() + 60, **params})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_accounts_come_riskiest_first_with_their_feedback_and_locks(traffic: TestClient) -> None:
    body = report(traffic)
    assert body["total"] == 3
    first, *rest = body["rows"]
    assert (first["relay"], first["account"], first["messages"], first["spam_messages"]) == ("r1", "spammer", 2, 2)
    assert (first["complaints"], first["locks"]) == (1, 1)
    owner = next(r for r in rest if r["account"] == "owner")
    assert (owner["messages"], owner["recipients"], owner["bounces"], owner["replies"], owner["locks"]) == (
        3,
        3,
        1,
        1,
        0,
    )
    assert owner["max_spam_probability"] < first["mean_spam_probability"]


def test_relays_days_and_identities(traffic: TestClient) -> None:
    by_relay = {r["relay"]: r["messages"] for r in report(traffic, group_by="relay")["rows"]}
    assert by_relay == {"r1": 5, "r2": 1}
    [day] = report(traffic, group_by="day")["rows"]
    assert (day["day"], day["messages"]) == (datetime.fromtimestamp(NOW - 3_600, UTC).strftime("%Y-%m-%d"), 6)
    sasl = report(traffic, group_by="identity", identity_source="sasl")["rows"]
    assert [(r["identity_source"], r["account"]) for r in sasl] == [("sasl", "other")]


def test_pages_follow_the_sort(traffic: TestClient) -> None:
    names = [r["account"] for r in report(traffic, sort="account")["rows"]]
    assert names == ["other", "owner", "spammer"]
    page = report(traffic, sort="account", limit=1, offset=1)
    assert (page["total"], [r["account"] for r in page["rows"]]) == (3, ["owner"])


def test_csv_has_a_header_and_every_row(traffic: TestClient) -> None:
    answer = traffic.get(
        "/v1/reports/outbound",
        params={"since": NOW - 7_200, "until": time.time() + 60, "format": "csv", "sort": "-messages"},
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    assert answer.text.endswith("\r\n") and "\r\n" in answer.text.splitlines(keepends=True)[0]
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert [r["account"] for r in rows] == ["owner", "spammer", "other"]
    assert rows[0]["messages"] == "3"


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"sort": "-password"}, "cannot sort by '-password'"),
        ({"group_by": "relay", "sort": "account"}, "grouped by relay has no 'account' column"),
        ({"since": "yesterday"}, "`since` is 'yesterday'"),
        ({"since": NOW, "until": NOW - 1}, "must be before `until`"),
        ({"since": "nan"}, "not a time"),
        ({"group_by": "week"}, "group_by"),
        ({"limit": 0}, "limit"),
    ],
)
def test_bad_parameters_say_what_is_wrong(client: TestClient, params: dict, says: str) -> None:
    answer = client.get("/v1/reports/outbound", params=params)
    assert answer.status_code == 422
    assert says in answer.text


def test_feedback_lands_on_the_identity_of_the_message_it_is_about(client: TestClient) -> None:
    raw = make_raw()
    for n, who in enumerate(({"sasl_username": "dual"}, {"account": "dual"})):
        body = {"message_id": f"<d{n}@x>", "recipients": ["a@example.org"], "raw": raw, **who}
        assert client.post("/v1/score", json={**body, "timestamp": stamp(NOW - 600 + n)}).status_code == 200
    complaint = {"event_id": "dc", "type": "complaint", "message_id": "<d0@x>", "recipient": "a@example.org"}
    assert client.post("/v1/feedback", json={**complaint, "timestamp": stamp(NOW - 60)}).status_code in (200, 201)
    asyncio.run(client.app.state.container.events.flush())
    rows = report(client, group_by="identity")["rows"]
    complaints = {r["identity_source"]: r["complaints"] for r in rows if r["account"] == "dual"}
    assert complaints == {"sasl": 1, "account": 0}


def test_a_sender_chosen_name_cannot_become_a_spreadsheet_formula(client: TestClient) -> None:
    body = {"message_id": "<f@x>", "account": '=HYPERLINK("http://evil.example")', "raw": make_raw()}
    assert client.post("/v1/score", json={**body, "timestamp": stamp(NOW - 60)}).status_code == 200
    asyncio.run(client.app.state.container.events.flush())
    text = client.get(
        "/v1/reports/outbound", params={"since": NOW - 7_200, "until": time.time() + 60, "format": "csv"}
    ).text
    [row] = list(csv.DictReader(io.StringIO(text)))
    assert row["account"] == '\'=HYPERLINK("http://evil.example")'
