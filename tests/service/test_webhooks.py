"""Webhooks against a real HTTP receiver: signatures, retries after a 500, no duplicates across restarts."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from service.webhooks.signing import HEADER, sign, verify
from tests.conftest import run_sql

pytestmark = pytest.mark.backends

SECRET = "whsec-test-0123456789abcdef"
ADMIN = {"actor": "ops", "reason": "ticket 1"}
LOCK = {**ADMIN, "force": True}  # accounts never seen before


class Receiver:
    """A local HTTP server that records what it receives and fails its first `fail_first` requests."""

    def __init__(self, fail_first: int = 0, port: int = 0) -> None:
        self.fail_first = fail_first
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                failing = len(receiver.received) <= receiver.fail_first
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/outguard"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_allow_private": True, "webhook_backoff_s": 0.05})


def subscribe(client: TestClient, url: str, events: list[str] | None = None) -> int:
    body = {"url": url, "events": events or ["account.locked", "account.unlocked"], "secret": SECRET}
    response = client.post("/v1/webhooks", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def wait_for(client: TestClient, webhook_id: int, status: str, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deliveries = client.get(f"/v1/webhooks/{webhook_id}/deliveries").json()["deliveries"]
        if deliveries and all(d["status"] == status for d in deliveries):
            return deliveries
        time.sleep(0.05)
    pytest.fail(f"deliveries did not reach {status!r}: {deliveries}")


def test_a_lock_is_delivered_signed_with_its_evidence(hook_settings: Settings, receiver: Receiver) -> None:
    with TestClient(create_app(hook_settings)) as client:
        webhook_id = subscribe(client, receiver.url)
        client.post(f"/v1/accounts/default/{quote('alice@example.net', safe='')}/lock", json=LOCK)
        [delivery] = wait_for(client, webhook_id, "delivered")
    [(headers, body)] = receiver.received
    assert verify(SECRET, headers[HEADER], body)
    assert not verify("another-secret-000000", headers[HEADER], body)
    assert not verify(SECRET, headers[HEADER], body + b" ")
    event = json.loads(body)
    assert (event["type"], event["relay"], event["account"]) == ("account.locked", "default", "alice@example.net")
    assert event["reason_codes"] == ["locked"]
    assert event["incident_report"].endswith("/v1/accounts/default/alice%40example.net/incident")
    assert headers["Outguard-Delivery"] == event["id"] == delivery["event_id"]


def test_a_500_is_retried_and_every_attempt_is_visible(hook_settings: Settings) -> None:
    flaky = Receiver(fail_first=2)
    try:
        with TestClient(create_app(hook_settings)) as client:
            webhook_id = subscribe(client, flaky.url)
            client.post("/v1/accounts/default/bob/lock", json=LOCK)
            [delivery] = wait_for(client, webhook_id, "delivered")
    finally:
        flaky.close()
    assert [a["status_code"] for a in delivery["attempts_log"]] == [500, 500, 204]
    assert delivery["attempts"] == 3
    assert len(flaky.received) == 3
    assert len({body for _, body in flaky.received}) == 1  # the same event each time


def test_no_duplicate_delivery_after_a_restart(hook_settings: Settings, receiver: Receiver) -> None:
    with TestClient(create_app(hook_settings)) as client:
        webhook_id = subscribe(client, receiver.url)
        client.post("/v1/accounts/default/carol/lock", json=LOCK)
        wait_for(client, webhook_id, "delivered")
    with TestClient(create_app(hook_settings)) as restarted:
        restarted.post("/v1/accounts/default/carol/unlock", json=ADMIN)
        deliveries = wait_for(restarted, webhook_id, "delivered")
    assert [d["event_type"] for d in deliveries] == ["account.unlocked", "account.locked"]
    assert [json.loads(body)["type"] for _, body in receiver.received] == ["account.locked", "account.unlocked"]


def test_an_event_queued_while_the_receiver_is_down_is_delivered_after_a_restart(hook_settings: Settings) -> None:
    down = Receiver()
    url, port = down.url, down.port
    down.close()  # nothing listens there now
    slow_retry = hook_settings.model_copy(update={"webhook_backoff_s": 3600.0})
    with TestClient(create_app(slow_retry)) as client:
        webhook_id = subscribe(client, url)
        client.post("/v1/accounts/default/dave/lock", json=LOCK)
        deadline = time.monotonic() + 10
        while not client.get(f"/v1/webhooks/{webhook_id}/deliveries").json()["deliveries"][0]["attempts"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    run_sql(hook_settings.database_url, "UPDATE webhook_outbox SET next_attempt_at = 0")  # the retry is due now
    back = Receiver(port=port)
    try:
        with TestClient(create_app(hook_settings)) as restarted:
            [delivery] = wait_for(restarted, webhook_id, "delivered")
    finally:
        back.close()
    assert delivery["attempts"] == 2
    assert len(back.received) == 1


def test_private_targets_are_refused_unless_allowed(settings: Settings, receiver: Receiver) -> None:
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/webhooks", json={"url": receiver.url, "events": ["account.locked"]})
    assert response.status_code == 422
    assert "loopback/private" in response.json()["detail"]


def test_unknown_event_types_are_refused(hook_settings: Settings, receiver: Receiver) -> None:
    with TestClient(create_app(hook_settings)) as client:
        response = client.post("/v1/webhooks", json={"url": receiver.url, "events": ["account.exploded"]})
    assert response.status_code == 422
    assert "account.exploded" in response.json()["detail"]


def test_the_signature_scheme_matches_the_documented_snippet() -> None:
    header = sign(SECRET, b'{"a":1}', 1_795_430_400)
    assert header.startswith("t=1795430400,v1=")
    assert verify(SECRET, header, b'{"a":1}', now=1_795_430_400 + 299)
    assert not verify(SECRET, header, b'{"a":1}', now=1_795_430_400 + 301)  # a replay, too old


def test_bounces_to_invalid_recipients_are_announced_once(hook_settings: Settings, receiver: Receiver) -> None:
    with TestClient(create_app(hook_settings)) as client:
        webhook_id = subscribe(client, receiver.url, ["account.invalid_recipients"])
        recipients = [f"r{i}@list.example" for i in range(20)]
        body = {"message_id": "<run@x>", "sasl_username": "spammer", "recipients": recipients, "text": "hi"}
        client.post("/v1/score", json=body)
        events = [
            {"event_id": f"b{i}", "type": "bounce", "message_id": "<run@x>", "detail": {"status": "5.1.1"}}
            for i in range(10)
        ]
        client.post("/v1/feedback/batch", json={"events": events})
        [delivery] = wait_for(client, webhook_id, "delivered")
    event = json.loads(receiver.received[0][1])
    assert (event["type"], event["account"], event["reason_codes"]) == (
        "account.invalid_recipients",
        "spammer",
        ["invalid_recipient"],
    )
    assert event["evidence"]["details"]["count"] >= 5 and "of" in event["evidence"]["summary"]
    assert delivery["event_type"] == "account.invalid_recipients"


def test_every_event_type_carries_evidence_in_one_shape(hook_settings: Settings, receiver: Receiver) -> None:
    """A spam run from one account: spam detected, a volume spike and the lock, each with a
    sentence for a person and the figures behind it under `evidence`."""
    from tests.service.test_score_api import SPAM, SPRAYED

    events = ["account.locked", "account.spam_detected", "account.volume_spike", "account.rate_limited"]
    with TestClient(create_app(hook_settings)) as client:
        webhook_id = subscribe(client, receiver.url, events)
        for n in range(30):
            body = {"message_id": f"<run{n}@x>", "sasl_username": "mallory", "recipients": SPRAYED, "raw": SPAM}
            assert client.post("/v1/score", json=body).status_code == 200
        wait_for(client, webhook_id, "delivered")
    received = [json.loads(body) for _, body in receiver.received]
    assert {"account.spam_detected", "account.locked"} <= {e["type"] for e in received}
    for event in received:
        assert set(event["evidence"]) == {"summary", "details"}, event
        assert isinstance(event["evidence"]["summary"], str) and event["evidence"]["summary"]
        assert isinstance(event["evidence"]["details"], dict)
