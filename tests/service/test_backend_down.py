"""Backing services down. Redis unreachable: scoring goes on degraded (or answers 503 when configured to),
readiness turns red, locks still hold, and acknowledged feedback is still stored. The database unable to
write: a 503 the sender retries, never a 500."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import make_raw, postgres_schema

DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1
ADMIN = {"actor": "ops", "reason": "test"}


@pytest.fixture
def down_settings(settings: Settings) -> Iterator[Settings]:
    with postgres_schema() as url:
        yield settings.model_copy(update={"database_url": url, "redis_url": DEAD_REDIS, "redis_timeout_s": 0.2})


def test_fail_open_scores_on_content_and_still_enforces_locks(down_settings: Settings) -> None:
    with TestClient(create_app(down_settings)) as client:
        answer = client.post("/v1/score", json={"message_id": "<a@x>", "sasl_username": "alice", "raw": make_raw()})
        assert answer.status_code == 200, answer.text
        assert answer.json()["action"] == "accept"

        ready = client.get("/readyz")
        assert ready.status_code == 503 and "shared_state" in ready.text

        assert client.post("/v1/accounts/default/mallory/lock", json={**ADMIN, "force": True}).status_code == 200
        locked = client.post("/v1/score", json={"message_id": "<b@x>", "sasl_username": "mallory", "text": "hi"})
        assert locked.json()["account_locked"] is True  # from the ledger in PostgreSQL

        event = {"event_id": "e1", "type": "complaint", "message_id": "<a@x>"}
        stored = client.post("/v1/feedback", json=event)
        assert stored.status_code == 200 and stored.json()["status"] == "stored"
        assert client.app.state.container.metrics.shared_state_failures._value.get() > 0


def test_fail_closed_answers_503_for_the_relay_to_retry(down_settings: Settings) -> None:
    closed = down_settings.model_copy(update={"redis_fail_open": False})
    with TestClient(create_app(closed)) as client:
        answer = client.post("/v1/score", json={"message_id": "<a@x>", "sasl_username": "alice", "raw": make_raw()})
        assert answer.status_code == 503
        assert answer.json()["error"] == "shared_state_unavailable"
        assert answer.headers["retry-after"] == "5"


def test_feedback_the_database_cannot_take_gets_a_503_not_a_500(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        client.app.state.container.database.writer.close()  # the database is gone for writes
        answer = client.post("/v1/feedback", json={"event_id": "e1", "type": "complaint", "message_id": "<a@x>"})
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "storage_unavailable"
        assert answer.headers["retry-after"] == "5"
