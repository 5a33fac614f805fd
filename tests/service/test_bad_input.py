"""Bad input gets a clear 4xx that says what was wrong; never a 500."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post("/v1/score", content=b'{"message_id": ', headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == "malformed_json"


def test_missing_message_id_names_the_field(client: TestClient) -> None:
    response = client.post("/v1/score", json={"text": "hi"})
    assert response.status_code == 422
    assert response.json()["detail"] == [{"field": "message_id", "problem": "Field required"}]


def test_raw_and_structured_content_together_is_refused(client: TestClient) -> None:
    response = client.post("/v1/score", json={"message_id": "x", "raw": "Subject: a\r\n\r\nb", "text": "b"})
    assert response.status_code == 422
    assert "either as `raw` or as structured fields" in response.text


def test_unknown_fields_and_bad_types_are_named(client: TestClient) -> None:
    response = client.post("/v1/score", json={"message_id": "x", "recipient": "a@b", "client_ip": "not-an-ip"})
    assert response.status_code == 422
    fields = {p["field"] for p in response.json()["detail"]}
    assert fields == {"recipient", "client_ip"}


def test_bad_timestamp(client: TestClient) -> None:
    response = client.post("/v1/score", json={"message_id": "x", "timestamp": "yesterday"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "timestamp"


def test_batch_over_the_limit_is_413(settings: Settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"max_batch": 3}))) as client:
        messages = [{"message_id": f"m{i}", "text": "hi"} for i in range(4)]
        response = client.post("/v1/score/batch", json={"messages": messages})
    assert response.status_code == 413
    assert "4 messages, over the limit of 3" in response.json()["detail"]


def test_empty_batch_is_422(client: TestClient) -> None:
    assert client.post("/v1/score/batch", json={"messages": []}).status_code == 422


def test_raw_over_the_size_limit_is_413(settings: Settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"max_raw_bytes": 2048}))) as client:
        response = client.post("/v1/score", json={"message_id": "big", "raw": "Subject: x\r\n\r\n" + "a" * 5000})
    assert response.status_code == 413
    assert "over the limit of 2048 bytes" in response.json()["detail"]


@pytest.mark.parametrize("field", ["raw", "subject", "text", "html"])
@pytest.mark.parametrize("junk", ["\\ud800", "\\udcff", "\\udbff\\u0000"])
def test_lone_surrogates_and_control_characters_are_still_scored(client: TestClient, field: str, junk: str) -> None:
    # Valid JSON escapes that decode to text no encoder accepts.
    body = f'{{"message_id": "g", "{field}": "Subject: x\\r\\n\\r\\nbody {junk} end"}}'.encode()
    response = client.post("/v1/score", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


def test_eight_bit_mail_arrives_exact_as_base64(client: TestClient) -> None:
    import base64

    raw = (
        b"From: x@example.com\r\nSubject: caf\xe9\r\nContent-Type: text/plain; charset=latin-1\r\n\r\nd\xe9j\xe0 vu\r\n"
    )
    response = client.post("/v1/score", json={"message_id": "b64", "raw_base64": base64.b64encode(raw).decode()})
    assert response.status_code == 200
    bad = client.post("/v1/score", json={"message_id": "b64", "raw_base64": "not base64!"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["field"] == "raw_base64"


def test_a_timestamp_far_in_the_future_is_refused(client: TestClient) -> None:
    response = client.post("/v1/score", json={"message_id": "f", "timestamp": "2099-01-01T00:00:00Z", "text": "x"})
    assert response.status_code == 422
    assert "in the future" in response.json()["detail"]


def test_garbage_raw_content_is_still_scored(client: TestClient) -> None:
    response = client.post("/v1/score", json={"message_id": "g", "raw": "no headers, just text"})
    assert response.status_code == 200


def test_unknown_route_is_a_json_404(client: TestClient) -> None:
    response = client.get("/v1/nope")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_a_request_body_over_the_limit_is_refused_before_it_is_read(settings: Settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"max_request_bytes": 4096}))) as client:
        declared = client.post("/v1/score", content=b"x" * 5000, headers={"content-type": "application/json"})

        def chunks():
            for _ in range(10):
                yield b"y" * 1000

        streamed = client.post("/v1/score", content=chunks(), headers={"content-type": "application/json"})
    for response in (declared, streamed):
        assert response.status_code == 413
        assert "over the limit of 4096 bytes" in response.json()["detail"]
