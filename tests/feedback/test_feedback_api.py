"""Feedback over HTTP: durable, idempotent, attributed to the right account, and felt by the next score."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from features.spec import FEATURE_INDEX
from service.stores.events import read_scored
from service.stores.feedback import training_labels
from tests.conftest import make_raw
from tests.feedback import reports

pytestmark = pytest.mark.backends

RFC822 = {"content-type": "message/rfc822"}


def send(client: TestClient, message_id: str, account: str, relay: str = "default", **extra: object) -> dict:
    body = {"message_id": message_id, "relay": relay, "sasl_username": account, "raw": make_raw(), **extra}
    response = client.post("/v1/score", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def feedback(client: TestClient, **event: object) -> dict:
    response = client.post("/v1/feedback", json=event)
    assert response.status_code == 200, response.text
    return response.json()


def stored_rows(client: TestClient) -> list[dict]:
    from sqlalchemy import create_engine, text

    from service.stores.database import normalise_url

    engine = create_engine(normalise_url(client.app.state.container.settings.database_url))
    try:
        with engine.connect() as connection:  # a fresh connection: what is durable
            query = text("SELECT * FROM feedback_events ORDER BY received_at, event_id")
            return [dict(r) for r in connection.execute(query).mappings()]
    finally:
        engine.dispose()


def test_an_event_is_attributed_to_the_scored_message_and_stored_before_the_answer(client: TestClient) -> None:
    send(client, "<m1@x>", "alice", recipients=["bob@example.org"])
    result = feedback(client, event_id="e1", type="delivered", message_id="<m1@x>", recipient="Bob@Example.org")
    assert result == {"event_id": "e1", "status": "stored", "matched": True, "relay": "default", "account": "alice"}
    [row] = stored_rows(client)
    assert (row["event_id"], row["account"], row["matched"]) == ("e1", "alice", 1)
    assert row["recipient_hash"] == client.app.state.container.scorer.hash_recipient("bob@example.org")


def test_the_same_event_twice_counts_once(client: TestClient) -> None:
    send(client, "<m2@x>", "alice", recipients=["a@b.org"])
    event = {"event_id": "dup", "type": "complaint", "message_id": "<m2@x>", "recipient": "a@b.org"}
    assert feedback(client, **event)["status"] == "stored"
    assert feedback(client, **event)["status"] == "duplicate"
    assert len(stored_rows(client)) == 1
    container = client.app.state.container
    from service.stores import AccountKey

    snapshot = client.portal.call(container.engagement.snapshot, AccountKey("default", "alice"))
    assert snapshot.outcomes["complaint"] == pytest.approx(1.0)


def test_unknown_message_ids_are_stored_unmatched_or_by_account(client: TestClient) -> None:
    unknown = feedback(client, event_id="u1", type="bounce", message_id="<never@x>", detail={"status": "5.1.1"})
    assert (unknown["matched"], unknown["account"]) == (False, None)
    named = feedback(client, event_id="u2", type="reply", message_id="<never2@x>", account="bob", relay="r2")
    assert (named["matched"], named["relay"], named["account"]) == (False, "r2", "bob")
    assert len(stored_rows(client)) == 2


def test_a_report_reaching_another_relay_is_attributed_where_the_message_was_scored(client: TestClient) -> None:
    send(client, "<cross@x>", "carol", relay="relay-a")
    body = reports.postfix_user_unknown("<cross@x>")
    response = client.post("/v1/feedback/dsn?relay=relay-b", content=body, headers=RFC822)
    assert response.status_code == 200, response.text
    [event] = response.json()["events"]
    assert (event["relay"], event["account"], event["matched"], event["type"]) == ("relay-a", "carol", True, "bounce")


def test_the_same_message_id_on_two_relays_prefers_the_named_relay(client: TestClient) -> None:
    send(client, "<both@x>", "dave", relay="relay-a")
    send(client, "<both@x>", "erin", relay="relay-b")
    event = feedback(client, event_id="r1", type="complaint", message_id="<both@x>", relay="relay-a")
    assert (event["relay"], event["account"]) == ("relay-a", "dave")


def test_dsn_matched_by_queue_id(client: TestClient) -> None:
    send(client, "<q@x>", "frank", queue_id="4ABC123")
    body = reports.postfix_user_unknown(None, queue_id="4ABC123")
    [event] = client.post("/v1/feedback/dsn", content=body, headers=RFC822).json()["events"]
    assert (event["account"], event["matched"]) == ("frank", True)


def test_feedback_found_in_the_log_after_a_restart(client: TestClient, settings) -> None:
    from service.app import create_app

    send(client, "<old@x>", "grace")
    asyncio.run(client.app.state.container.events.flush())
    with TestClient(create_app(settings)) as restarted:  # an empty in-memory index
        event = restarted.post("/v1/feedback", json={"event_id": "x", "type": "open", "message_id": "<old@x>"}).json()
    assert (event["account"], event["matched"]) == ("grace", True)


def test_arf_complaint_over_http(client: TestClient) -> None:
    send(client, "<arf@x>", "heidi")
    response = client.post("/v1/feedback/arf", content=reports.arf("<arf@x>"), headers=RFC822)
    assert response.status_code == 200
    [event] = response.json()["events"]
    assert (event["type"], event["account"]) == ("complaint", "heidi")
    again = client.post("/v1/feedback/arf", content=reports.arf("<arf@x>"), headers=RFC822).json()
    assert again["events"][0]["status"] == "duplicate"


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "says"),
    [
        ("/v1/feedback/dsn", b"From: a@b\r\n\r\nbounced", RFC822, 422, "message/delivery-status"),
        ("/v1/feedback/arf", reports.postfix_user_unknown("<o@x>"), RFC822, 422, "message/feedback-report"),
        ("/v1/feedback/dsn", reports.postfix_user_unknown("<o@x>"), {"content-type": "text/plain"}, 415, "rfc822"),
        ("/v1/feedback/dsn", b"", RFC822, 422, "empty"),
    ],
)
def test_bad_reports_get_a_clear_4xx(
    client: TestClient, path: str, body: bytes, headers: dict, status: int, says: str
) -> None:
    response = client.post(path, content=body, headers=headers)
    assert response.status_code == status
    assert says in str(response.json()["detail"])


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"type": "bounce", "message_id": "<a@x>"}, "event_id"),
        ({"event_id": "a", "type": "exploded", "message_id": "<a@x>"}, "type"),
        ({"event_id": "a", "type": "bounce"}, "body"),
        ({"event_id": "a", "type": "bounce", "message_id": "<a@x>", "detail": {"status": "five"}}, "detail.status"),
    ],
)
def test_bad_events_name_the_field(client: TestClient, event: dict, field: str) -> None:
    response = client.post("/v1/feedback", json=event)
    assert response.status_code == 422
    assert field in {p["field"] for p in response.json()["detail"]}


def test_a_batch_is_answered_per_event_in_order(client: TestClient) -> None:
    send(client, "<b@x>", "ivan", recipients=["x@y.org"])
    events = [
        {"event_id": f"b{i}", "type": kind, "message_id": "<b@x>"}
        for i, kind in enumerate(["delivered", "open", "click", "reply"])
    ]
    events.append({"event_id": "b0", "type": "delivered", "message_id": "<b@x>"})
    results = client.post("/v1/feedback/batch", json={"events": events}).json()["results"]
    assert [r["event_id"] for r in results] == ["b0", "b1", "b2", "b3", "b0"]
    assert [r["status"] for r in results] == ["stored"] * 4 + ["duplicate"]


def test_bounces_to_invalid_recipients_reach_the_next_score(client: TestClient) -> None:
    recipients = [f"r{i}@list.example" for i in range(20)]
    before = send(client, "<s0@x>", "spammer", recipients=recipients)
    events = [
        {"event_id": f"bb{i}", "type": "bounce", "message_id": "<s0@x>", "recipient": r, "detail": {"status": "5.1.1"}}
        for i, r in enumerate(recipients[:12])
    ]
    client.post("/v1/feedback/batch", json={"events": events})
    after = send(client, "<s1@x>", "spammer", recipients=recipients)
    assert after["account_risk"] > before["account_risk"]
    assert after["lock_recommended"]  # 12 of 20 recipients do not exist: a bought list
    asyncio.run(client.app.state.container.events.flush())
    logged = [e for e in read_scored(client.app.state.container.settings.database_url) if e["account"] == "spammer"]
    rate = FEATURE_INDEX["eng_invalid_recipient_rate"]
    assert logged[1]["features"][rate] > 10 * logged[0]["features"][rate]


def test_out_of_order_feedback_still_counts(client: TestClient) -> None:
    send(client, "<o@x>", "judy", recipients=["a@b.org"], timestamp="2026-01-10T12:00:00Z")
    for i, when in enumerate(["2026-01-10T15:00:00Z", "2026-01-10T13:00:00Z", "2026-01-10T14:00:00Z"]):
        feedback(client, event_id=f"o{i}", type="open", message_id="<o@x>", timestamp=when)
    from service.stores import AccountKey

    snapshot = client.portal.call(client.app.state.container.engagement.snapshot, AccountKey("default", "judy"))
    assert 2.9 < snapshot.outcomes["open"] <= 3.0  # three opens, the two late ones decayed by an hour or two


def test_complaints_and_verdicts_become_training_labels(client: TestClient) -> None:
    send(client, "<l1@x>", "ken")
    send(client, "<l2@x>", "ken")
    send(client, "<l3@x>", "lou")
    feedback(client, event_id="c1", type="complaint", message_id="<l1@x>")
    verdict = client.post(
        "/v1/labels", json={"target": "message", "label": "ham", "message_id": "<l2@x>", "actor": "ops"}
    )
    assert verdict.status_code == 201
    assert (verdict.json()["account"], verdict.json()["matched"]) == ("ken", True)
    account = {"target": "account", "label": "compromised", "relay": "default", "account": "lou", "actor": "ops"}
    assert client.post("/v1/labels", json=account).status_code == 201
    asyncio.run(client.app.state.container.events.flush())
    labels = {r["message_id"]: r for r in training_labels(client.app.state.container.database)}
    assert labels["<l1@x>"]["label"] == 1
    assert labels["<l2@x>"]["label"] == 0
    assert labels["<l3@x>"]["label"] is None
    assert labels["<l3@x>"]["account_verdict"] == "compromised"
    assert not labels["<l3@x>"]["lock_confirmed"]
    client.post(
        "/v1/accounts/default/lou/lock", json={"actor": "ops", "reason": "confirmed: password leaked", "force": True}
    )
    relabelled = {r["message_id"]: r for r in training_labels(client.app.state.container.database)}
    assert relabelled["<l3@x>"]["lock_confirmed"]
    assert len(labels["<l1@x>"]["features"]) == len(FEATURE_INDEX)


def test_an_account_called_compromised_is_recommended_for_locking_at_once(client: TestClient) -> None:
    send(client, "<v1@x>", "mallory")
    label = {"target": "account", "label": "compromised", "account": "mallory", "actor": "ops", "reason": "ticket 42"}
    client.post("/v1/labels", json=label)
    assert send(client, "<v2@x>", "mallory")["lock_recommended"]
    client.post("/v1/labels", json=label | {"label": "clean"})
    assert not send(client, "<v3@x>", "mallory")["lock_recommended"]


@pytest.mark.parametrize(
    "label",
    [
        {"target": "message", "label": "compromised", "message_id": "<a@x>", "actor": "ops"},
        {"target": "account", "label": "spam", "account": "a", "actor": "ops"},
        {"target": "message", "label": "spam", "actor": "ops"},
        {"target": "account", "label": "clean", "actor": "ops"},
    ],
)
def test_labels_that_do_not_fit_their_target_are_refused(client: TestClient, label: dict) -> None:
    assert client.post("/v1/labels", json=label).status_code == 422
