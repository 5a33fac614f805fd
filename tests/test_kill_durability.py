"""kill -9 in the middle of a feedback burst: every event the service acknowledged is there after a restart.

A real `outguard serve` process; four clients post feedback events as fast as they can;
the process is killed with SIGKILL mid-burst, restarted on the same database, and each
acknowledged event is posted again: the service must answer `duplicate` for every one,
which it only does for an event it has stored.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import server_process

pytestmark = pytest.mark.slow

TOKENS = '{"relay-secret": ["score", "feedback"]}'
HEADERS = {"Authorization": "Bearer relay-secret"}


def _event(worker: int, n: int) -> dict:
    return {"event_id": f"kill-{worker}-{n}", "type": "bounce", "message_id": f"<m{worker}-{n}@kill>"}


def test_no_acknowledged_feedback_is_lost_to_kill_9(tmp_path: Path) -> None:
    acknowledged: list[dict] = []
    lock = threading.Lock()
    stop = threading.Event()

    def burst(url: str, worker: int) -> None:
        with httpx.Client(base_url=url, headers=HEADERS, timeout=5) as client:
            n = 0
            while not stop.is_set():
                event = _event(worker, n)
                n += 1
                try:
                    answer = client.post("/v1/feedback", json=event)
                except httpx.TransportError:
                    return  # the server is gone: what it acknowledged is what counts
                if answer.status_code == 200:
                    with lock:
                        acknowledged.append(event)

    with server_process(tmp_path, TOKENS) as (url, process):
        workers = [threading.Thread(target=burst, args=(url, w)) for w in range(4)]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 30
        while len(acknowledged) < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        stop.set()
        for worker in workers:
            worker.join(timeout=10)
    assert len(acknowledged) >= 200

    with server_process(tmp_path, TOKENS) as (url, _), httpx.Client(base_url=url, headers=HEADERS) as client:
        answers = [
            answer
            for start in range(0, len(acknowledged), 1000)
            for answer in client.post("/v1/feedback/batch", json={"events": acknowledged[start : start + 1000]}).json()[
                "results"
            ]
        ]
        assert len(answers) == len(acknowledged)
        lost = [a["event_id"] for a in answers if a["status"] != "duplicate"]
        assert lost == [], f"{len(lost)} acknowledged events lost: {lost[:5]}"
