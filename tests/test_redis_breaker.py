"""A hung Redis costs one timeout, not one per call: the circuit breaker in front of every Redis call.

Each test starts a Redis server of its own on a free loopback port, scores through the
app against it, then hangs it with SIGSTOP (the shared Redis on 6379 is never touched).
Calls that went to Redis are counted by `outguard_shared_state_failures`, calls the
breaker kept from it by `outguard_shared_state_skipped`: the assertions are on those
counts, not on wall time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app
from service.metrics import Metrics
from service.settings import Settings
from service.stores import AccountKey
from service.stores.breaker import BreakerState, CircuitBreaker
from service.stores.redis_state import account_tag
from tests.conftest import make_raw, require_service

TIMEOUT_S = 0.2  # per Redis command, as OUTGUARD_REDIS_TIMEOUT_S
PROBE_S = 0.2  # OUTGUARD_REDIS_PROBE_INTERVAL_S
HUNG_MESSAGES = 30
ADMIN = {"actor": "ops", "reason": "test"}


@dataclass
class PrivateRedis:
    """A redis-server of the test's own, which it may stop and continue."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    binary = shutil.which("redis-server")
    require_service("redis-server", binary is not None, "PATH")
    assert binary is not None
    port = free_port()
    assert port != 6379
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = PrivateRedis(process, port)
    try:
        admin = redis.Redis(port=port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                admin.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        admin.close()
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def hung_redis() -> Iterator[PrivateRedis]:
    with private_redis() as server:
        yield server


def redis_settings(settings: Settings, server: PrivateRedis, *, fail_open: bool = True) -> Settings:
    return settings.model_copy(
        update={
            "redis_url": server.url,
            "redis_prefix": "bt",
            "redis_timeout_s": TIMEOUT_S,
            "redis_probe_interval_s": PROBE_S,
            "redis_fail_open": fail_open,
        }
    )


def count(metric: object) -> float:
    return metric._value.get()  # type: ignore[attr-defined]


def probes(metrics: Metrics, result: str) -> float:
    return count(metrics.shared_state_probes.labels(result))


def score(client: TestClient, n: int, account: str = "alice") -> object:
    return client.post(
        "/v1/score", json={"message_id": f"<m{n}-{account}@x>", "sasl_username": account, "raw": make_raw()}
    )


def messages_24h(server: PrivateRedis, account: str) -> int:
    """What the shared 24 h window in Redis holds for the account (read beside the app)."""
    direct = redis.Redis(port=server.port, socket_timeout=2)
    try:
        stored = direct.hgetall(f"bt:b:{account_tag(AccountKey('default', account))}:24h")
    finally:
        direct.close()
    return sum(int(value.split(b":")[0]) for value in stored.values())


def wait_ready(client: TestClient, seconds: float = 15.0) -> dict[str, object]:
    """Poll /readyz until it is green: the probe found Redis and the breaker closed."""
    deadline = time.monotonic() + seconds
    while True:
        answer = client.get("/readyz")
        if answer.status_code == 200:
            return answer.json()
        if time.monotonic() > deadline:
            pytest.fail(f"the breaker never closed: {answer.text}")
        time.sleep(0.05)


def test_hung_redis_is_skipped_after_the_first_timeout_and_used_again_after_a_probe(
    settings: Settings, hung_redis: PrivateRedis
) -> None:
    with TestClient(create_app(redis_settings(settings, hung_redis))) as client:
        metrics = client.app.state.container.metrics
        for n in range(3):
            assert score(client, n).status_code == 200
        assert messages_24h(hung_redis, "alice") == 3  # the shared state is in use
        ready = client.get("/readyz").json()
        assert ready["shared_state"]["state"] == "closed"
        assert count(metrics.shared_state_failures) == 0 and count(metrics.shared_state_skipped) == 0

        hung_redis.stop()
        answers = [score(client, 100 + n) for n in range(HUNG_MESSAGES)]
        assert [a.status_code for a in answers] == [200] * HUNG_MESSAGES
        assert {a.json()["action"] for a in answers} == {"accept"}  # fail open: scored on content
        # One call waited out its timeout; every later call (5 a message today) never reached Redis.
        assert count(metrics.shared_state_failures) == 1
        assert count(metrics.shared_state_skipped) >= 4 * HUNG_MESSAGES
        assert count(metrics.shared_state_breaker_open) == 1

        ready = client.get("/readyz")  # answered from the breaker: no PING to wait on
        assert ready.status_code == 503
        body = ready.json()
        assert body["error"] == "not_ready" and body["checks"]["shared_state"] is False
        assert body["shared_state"]["state"] in ("open", "half_open")
        assert "Timeout" in body["shared_state"]["last_error"]
        assert count(metrics.shared_state_failures) == 1

        # A lock made during the outage goes to the ledger, and is written back to Redis on recovery.
        assert client.post("/v1/accounts/default/mallory/lock", json={**ADMIN, "force": True}).status_code == 200
        assert score(client, 0, "mallory").json()["account_locked"] is True
        skipped_while_hung = count(metrics.shared_state_skipped)
        assert count(metrics.shared_state_failures) == 1

        hung_redis.resume()
        ready_again = wait_ready(client)
        assert ready_again["shared_state"]["state"] == "closed"
        assert probes(metrics, "ok") == 1
        assert count(metrics.shared_state_breaker_open) == 0

        # Of the messages scored while hung, only the first one's call reached Redis (it timed out
        # in the client, but the server ran it once continued); the others never left the process.
        after_outage = messages_24h(hung_redis, "alice")
        assert after_outage in (3, 3 + 1)
        for n in range(5):
            assert score(client, 200 + n).status_code == 200
        # Redis is used again: the new messages are in the shared window, and no call was skipped or failed since.
        assert messages_24h(hung_redis, "alice") == after_outage + 5
        assert count(metrics.shared_state_skipped) == skipped_while_hung
        assert count(metrics.shared_state_failures) == 1

        direct = redis.Redis(port=hung_redis.port, socket_timeout=2)
        try:
            stored = direct.get(f"bt:a:{account_tag(AccountKey('default', 'mallory'))}")
        finally:
            direct.close()
        assert stored is not None and orjson.loads(stored)["status"] == "locked"

        exposed = client.get("/metrics").text
        assert "outguard_shared_state_breaker_open 0.0" in exposed
        assert "outguard_shared_state_skipped_total" in exposed


def test_fail_closed_answers_503_at_once_while_hung_and_scores_again_after(
    settings: Settings, hung_redis: PrivateRedis
) -> None:
    with TestClient(create_app(redis_settings(settings, hung_redis, fail_open=False))) as client:
        metrics = client.app.state.container.metrics
        assert score(client, 0).status_code == 200

        hung_redis.stop()
        answers = [score(client, 100 + n) for n in range(HUNG_MESSAGES)]
        assert {a.status_code for a in answers} == {503}
        assert {a.json()["error"] for a in answers} == {"shared_state_unavailable"}
        assert {a.headers["retry-after"] for a in answers} == {"5"}
        # The first message waited out one timeout; each later one was refused before any Redis call.
        assert count(metrics.shared_state_failures) == 1
        assert count(metrics.shared_state_skipped) == HUNG_MESSAGES - 1

        hung_redis.resume()
        wait_ready(client)
        assert score(client, 200).status_code == 200
        assert count(metrics.shared_state_failures) == 1


# The breaker alone, with probes the test controls: exactly one probe in flight however
# many callers are refused, and recovery before calls resume.


def test_one_probe_at_a_time_whatever_the_number_of_refused_callers() -> None:
    async def main() -> None:
        release = asyncio.Event()
        in_flight = 0
        most_in_flight = 0
        started = asyncio.Event()

        async def probe() -> bool:
            nonlocal in_flight, most_in_flight
            in_flight += 1
            most_in_flight = max(most_in_flight, in_flight)
            started.set()
            await release.wait()
            in_flight -= 1
            return True

        changes: list[bool] = []
        closed = asyncio.Event()

        def changed(is_open: bool) -> None:
            changes.append(is_open)
            if not is_open:
                closed.set()

        breaker = CircuitBreaker(probe, interval_s=0.01, on_change=changed)
        assert breaker.allow()
        assert breaker.trip(TimeoutError("hung"))
        assert not breaker.trip(TimeoutError("again"))  # already open
        assert [breaker.allow() for _ in range(1_000)] == [False] * 1_000
        await started.wait()
        assert breaker.state is BreakerState.HALF_OPEN
        assert [breaker.allow() for _ in range(1_000)] == [False] * 1_000  # still refused while probing
        await asyncio.gather(*(asyncio.sleep(0) for _ in range(100)))
        assert most_in_flight == 1 and breaker.probes == 1
        release.set()
        await closed.wait()
        assert breaker.closed and breaker.allow()
        assert breaker.skipped == 2_000
        assert changes == [True, False]
        await breaker.close()

    asyncio.run(main())


def test_a_failed_probe_or_recovery_keeps_it_open_until_both_succeed() -> None:
    async def main() -> None:
        answers = [False, True, True]  # down, back (recovery fails), back (recovery works)
        recoveries = 0
        probed: list[bool] = []

        async def probe() -> bool:
            return answers.pop(0)

        async def recover() -> None:
            nonlocal recoveries
            recoveries += 1
            if recoveries == 1:
                raise ConnectionError("flapping")

        breaker = CircuitBreaker(probe, interval_s=0.001, recover=recover, on_probe=probed.append)
        breaker.trip(ConnectionError("refused"))
        while not breaker.closed:
            assert not breaker.allow()
            await asyncio.sleep(0.001)
        assert probed == [False, True, True]
        assert recoveries == 2
        assert breaker.opened_at is None and breaker.last_error == "ConnectionError: flapping"
        await breaker.close()

    asyncio.run(main())
