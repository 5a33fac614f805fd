"""Signatures and campaigns through the API: add, match, remove, learn from feedback, detect campaigns."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
from datetime import UTC, datetime

import numpy as np
from fastapi.testclient import TestClient

from features.spec import FEATURE_INDEX
from service.app import create_app
from service.settings import Settings
from service.stores.events import read_scored
from tests.conftest import make_raw
from tests.fingerprints.test_fingerprint import MINUTES, OFFER
from training.mutations import mutate_text

ADMIN = {"actor": "abuse-desk", "note": "seen in a feedback loop"}


def copy_of_offer(seed: int) -> str:
    return make_raw(subject="Designer watches 80% off", body=mutate_text(OFFER, np.random.default_rng(seed)))


def score(client: TestClient, message_id: str, raw: str, account: str = "alice@example.net", **extra: object) -> dict:
    body = {"message_id": message_id, "sasl_username": account, "recipients": ["bob@example.org"], "raw": raw}
    response = client.post("/v1/score", json={**body, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def flush(client: TestClient) -> None:
    asyncio.run(client.app.state.container.events.flush())


def logged_feature(settings: Settings, message_id: str, name: str) -> float:
    [row] = [r for r in read_scored(settings.sqlite_path) if r["message_id"] == message_id]
    return row["features"][FEATURE_INDEX[name]]


def test_added_content_matches_its_copies_until_removed(client: TestClient, settings: Settings) -> None:
    added = client.post("/v1/signatures", json={"raw": copy_of_offer(1), **ADMIN})
    assert added.status_code == 201, added.text
    assert added.json()["created"] is True
    again = client.post("/v1/signatures", json={"raw": copy_of_offer(2), **ADMIN})
    assert again.status_code == 200 and again.json() == {**added.json(), "created": False}  # refreshed, not stored

    score(client, "<copy1@example.net>", copy_of_offer(3))
    score(client, "<minutes@example.net>", make_raw(body=MINUTES))
    flush(client)
    assert logged_feature(settings, "<copy1@example.net>", "sig_similarity") >= 0.6
    assert logged_feature(settings, "<minutes@example.net>", "sig_similarity") == 0.0

    removed = client.post("/v1/signatures", json={"action": "remove", "raw": copy_of_offer(4), **ADMIN})
    assert removed.status_code == 200 and removed.json()["removed"] == 1
    score(client, "<copy2@example.net>", copy_of_offer(5))
    flush(client)
    assert logged_feature(settings, "<copy2@example.net>", "sig_similarity") == 0.0
    incident = client.get("/v1/accounts/default/alice%40example.net/incident").json()
    assert incident["what_was_seen"]["matched_known_spam"] == 1  # copy1, before the removal
    with sqlite3.connect(settings.sqlite_path) as db:
        assert db.execute("SELECT removed_by FROM signatures").fetchall() == [("abuse-desk",)]


def test_a_scored_message_is_added_by_its_message_id_and_survives_a_restart(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        score(client, "<first@example.net>", copy_of_offer(1))
        response = client.post("/v1/signatures", json={"message_id": "<first@example.net>", **ADMIN})
        assert response.status_code == 201, response.text
        assert client.get("/v1/signatures").json()["signatures"] == 1
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/signatures").json()["signatures"] == 1
        score(client, "<later@example.net>", copy_of_offer(2))
        flush(client)
    assert logged_feature(settings, "<later@example.net>", "sig_similarity") >= 0.6


def test_bad_signature_requests_say_what_is_wrong(client: TestClient) -> None:
    unknown = client.post("/v1/signatures", json={"message_id": "<never@example.net>", **ADMIN})
    assert unknown.status_code == 404 and "raw message instead" in unknown.json()["detail"]
    both = client.post("/v1/signatures", json={"message_id": "<m@x>", "raw": OFFER, **ADMIN})
    assert both.status_code == 422 and "exactly one" in both.text
    short = client.post("/v1/signatures", json={"raw": make_raw(body="Lunch at one?"), **ADMIN})
    assert short.status_code == 422 and "too little text" in short.json()["detail"]
    bad64 = client.post("/v1/signatures", json={"raw_base64": "%%%", **ADMIN})
    assert bad64.status_code == 422 and "base64" in bad64.text
    ok64 = client.post(
        "/v1/signatures", json={"raw_base64": base64.b64encode(copy_of_offer(1).encode()).decode(), **ADMIN}
    )
    assert ok64.status_code == 201
    surrogate = '{"raw": "Subject: x\\r\\n\\r\\n' + "word " * 20 + '\\ud800", "actor": "a"}'
    lone = client.post("/v1/signatures", content=surrogate, headers={"content-type": "application/json"})
    assert lone.status_code == 201, lone.text  # a lone surrogate is replaced, as in scoring, not a 500


def test_a_complaint_about_spam_like_content_makes_a_signature(client: TestClient) -> None:
    spam = score(client, "<spam@example.net>", copy_of_offer(1), account="mallory")
    ham = score(client, "<ham@example.net>", make_raw(body=MINUTES))
    assert spam["spam_probability"] >= 0.5 > ham["spam_probability"]
    for n, message_id in enumerate(("<spam@example.net>", "<ham@example.net>")):
        event = {"event_id": f"c{n}", "type": "complaint", "message_id": message_id, "recipient": "bob@example.org"}
        assert client.post("/v1/feedback", json=event).status_code == 200
    assert client.get("/v1/signatures").json()["signatures"] == 1  # the newsletter-like one did not


def test_a_batch_of_complaints_about_one_run_makes_one_signature(client: TestClient, settings: Settings) -> None:
    for n in range(4):
        score(client, f"<run{n}@example.net>", copy_of_offer(1), account=f"user{n}")  # one run, one text
    events = [
        {"event_id": f"b{n}", "type": "complaint", "message_id": f"<run{n}@example.net>", "recipient": "b@example.org"}
        for n in range(4)
    ]
    assert client.post("/v1/feedback/batch", json={"events": events}).status_code == 200
    assert client.get("/v1/signatures").json()["signatures"] == 1
    with sqlite3.connect(settings.sqlite_path) as db:  # durable, once
        assert db.execute("SELECT count(*), min(source) FROM signatures").fetchone() == (1, "complaint")


def test_verdicts_add_and_take_down_signatures(client: TestClient) -> None:
    score(client, "<v1@example.net>", copy_of_offer(1))
    spam = client.post(
        "/v1/labels", json={"target": "message", "label": "spam", "message_id": "<v1@example.net>", **_who()}
    )
    assert spam.status_code == 201 and len(spam.json()["signatures"]["added"]) == 1
    ham = client.post(
        "/v1/labels", json={"target": "message", "label": "ham", "message_id": "<v1@example.net>", **_who()}
    )
    assert ham.json()["signatures"]["removed"] == spam.json()["signatures"]["added"]
    assert client.get("/v1/signatures").json()["signatures"] == 0


def _who() -> dict[str, str]:
    return {"actor": "abuse-desk", "reason": "checked by hand"}


def test_one_content_through_many_accounts_is_announced_as_a_campaign(settings: Settings) -> None:
    hooked = settings.model_copy(update={"webhook_allow_private": True})
    with TestClient(create_app(hooked)) as client:
        subscribed = client.post(
            "/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["campaign.detected"], "secret": "s" * 20}
        )
        assert subscribed.status_code == 201, subscribed.text
        at = datetime(2026, 9, 21, 12, 7, tzinfo=UTC).timestamp()
        for n in range(7):
            stamp = f"2026-09-21T12:{n:02d}:00Z"
            score(client, f"<c{n}@example.net>", copy_of_offer(n), account=f"user{n}@example.net", timestamp=stamp)
        active = client.get("/v1/campaigns", params={"at": at}).json()["campaigns"]
        flush(client)
        incident = client.get("/v1/accounts/default/user6%40example.net/incident").json()
        markdown = client.get("/v1/accounts/default/user6%40example.net/incident", params={"format": "markdown"})
    assert incident["what_was_seen"]["most_accounts_sending_its_content"] == 7
    assert "sent by up to 7 accounts (this one included) within an hour" in markdown.text
    [campaign] = active
    assert len(campaign["accounts"]) == 7
    assert campaign["mean_spam_probability"] >= 0.5
    with sqlite3.connect(settings.sqlite_path) as db:
        types = [r[0] for r in db.execute("SELECT event_type FROM webhook_outbox")]
    assert types == ["campaign.detected"]


def test_a_campaign_raises_the_risk_of_the_accounts_sending_it(settings: Settings) -> None:
    def risks(fingerprints: bool) -> list[float]:
        changed = settings.model_copy(
            update={"fingerprints": fingerprints, "database_url": f"{settings.database_url}-{fingerprints}"}
        )
        with TestClient(create_app(changed)) as client:
            answers = [
                score(
                    client,
                    f"<r{n}@x>",
                    copy_of_offer(n),
                    f"user{n}@example.net",
                    timestamp=f"2026-09-21T12:{n:02d}:00Z",
                )
                for n in range(7)
            ]
            # The first sender writes again, about something else: its risk carries the campaign's.
            again = score(
                client, "<r0b@x>", make_raw(body=MINUTES), "user0@example.net", timestamp="2026-09-21T12:08:00Z"
            )
        return [a["account_risk"] for a in [*answers, again]]

    without, with_campaigns = risks(False), risks(True)
    assert with_campaigns[:4] == without[:4]  # not a campaign yet: the same answers
    assert all(a > b for a, b in zip(with_campaigns[4:], without[4:], strict=True))
