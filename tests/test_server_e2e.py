"""End to end: a real `outguard serve` process, real HTTP, a graceful stop that keeps every event."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from service.stores.events import read_scored
from tests.conftest import make_raw, server_process
from training.modern_mail import ham_messages, spam_messages

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    with server_process(tmp_path, '{"relay-secret": ["score"]}') as (url, process):
        yield url, process, tmp_path / "events.db"


def test_a_relay_scores_real_messages_and_every_one_is_logged(server) -> None:
    url, process, db = server
    headers = {"Authorization": "Bearer relay-secret"}
    messages = {**ham_messages(), **spam_messages()}
    with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
        for i, (name, message) in enumerate(messages.items()):
            body = {
                "message_id": f"<{name}@e2e>",
                "sasl_username": f"user{i}",
                "recipients": ["someone@example.org"],
                "raw": message.as_string(),
            }
            answer = client.post("/v1/score", json=body)
            assert answer.status_code == 200, answer.text
            assert answer.json()["action"] in ("accept", "hold")
        batch = [{"message_id": f"<b{i}@e2e>", "account": "shop", "raw": make_raw()} for i in range(5)]
        assert len(client.post("/v1/score/batch", json={"messages": batch}).json()["results"]) == 5
        assert client.post("/v1/score", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert "outguard_messages_scored_total" in client.get("/metrics").text

    process.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    output = process.stdout.read().decode() if process.stdout else ""
    assert "Finished server process" in output
    logged = list(read_scored(db))
    assert len(logged) == len(messages) + 5
    assert {e["message_id"] for e in logged} >= {f"<{name}@e2e>" for name in messages}
