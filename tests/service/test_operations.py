"""Health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import make_raw


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready"
    assert ready["checks"] == {"model": True, "event_log": True}


def test_readiness_turns_red_when_the_event_log_is_gone(client: TestClient) -> None:
    client.app.state.container.database.close()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "event_log" in response.json()["detail"]


def test_metrics_count_requests_scores_and_actions(client: TestClient) -> None:
    client.post("/v1/score", json={"message_id": "m", "sasl_username": "a", "raw": make_raw()})
    text = client.get("/metrics").text
    assert 'outguard_http_requests_total{method="POST",route="/v1/score",status="200"} 1.0' in text
    assert "outguard_spam_probability_count 1.0" in text
    assert 'outguard_actions_total{action="accept",relay="' in text
    assert "outguard_http_request_seconds_bucket" in text
    assert "outguard_model_info{" in text


def test_openapi_documents_the_scoring_routes(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/v1/score", "/v1/score/batch", "/healthz", "/readyz"} <= set(schema["paths"])
    assert "ScoreOut" in schema["components"]["schemas"]
    assert client.get("/docs").status_code == 200
