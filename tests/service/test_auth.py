"""Bearer tokens and scopes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

BODY = {"message_id": "<a@x>", "text": "hello"}


@pytest.fixture
def secured(settings: Settings) -> Iterator[TestClient]:
    tokens = {"relay-token": ["score"], "feedback-token": ["feedback"], "admin-token": ["admin"]}
    with TestClient(create_app(settings.model_copy(update={"tokens": tokens}))) as client:
        yield client


def test_missing_token_is_401_with_a_challenge(secured: TestClient) -> None:
    response = secured.post("/v1/score", json=BODY)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "Authorization" in response.json()["detail"]


def test_wrong_token_is_401(secured: TestClient) -> None:
    response = secured.post("/v1/score", json=BODY, headers={"Authorization": "Bearer guess"})
    assert response.status_code == 401
    assert response.json()["detail"] == "unknown token"


def test_token_without_the_scope_is_403(secured: TestClient) -> None:
    response = secured.post("/v1/score", json=BODY, headers={"Authorization": "Bearer feedback-token"})
    assert response.status_code == 403
    assert "`score` scope" in response.json()["detail"]


@pytest.mark.parametrize("token", ["relay-token", "admin-token"])
def test_scoring_and_admin_tokens_may_score(secured: TestClient, token: str) -> None:
    response = secured.post("/v1/score", json=BODY, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


def test_health_needs_no_token(secured: TestClient) -> None:
    assert secured.get("/healthz").status_code == 200


def test_the_token_is_checked_before_the_body_is_read(secured: TestClient) -> None:
    response = secured.post("/v1/score", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 401


def test_unlisted_v1_routes_need_admin(secured: TestClient) -> None:
    relay = secured.get("/v1/accounts/default/alice", headers={"Authorization": "Bearer relay-token"})
    assert relay.status_code == 403
    assert "`admin` scope" in relay.json()["detail"]
    admin = secured.get("/v1/accounts/default/alice", headers={"Authorization": "Bearer admin-token"})
    assert admin.status_code == 200


def test_tokens_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTGUARD_TOKENS", '{"t1": ["score", "feedback"]}')
    assert Settings().tokens == {"t1": ["score", "feedback"]}
