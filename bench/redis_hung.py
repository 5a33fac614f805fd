"""Scoring throughput with Redis answering, then with Redis hung by SIGSTOP: what the circuit breaker saves.

    python -m bench.redis_hung [--messages 600] [--seconds 8] [--connections 8]

Starts a Redis server of its own on a free loopback port (the shared one on 6379 is
never stopped) and takes a fresh schema of OUTGUARD_TEST_POSTGRES_URL, dropped after.
Two setups, each measured with Redis answering, then with Redis stopped by SIGSTOP,
then Redis is continued:

- in process, one message at a time (the scorer, no HTTP);
- HTTP, one replica (uvicorn), `--connections` requests at once.

The hung run has no warm-up: the first calls' timeouts are part of it. The breaker
counters (`outguard_shared_state_failures`: calls that went to Redis and failed;
`outguard_shared_state_skipped`: calls the open breaker kept from it) are printed beside
the rates. The goal (issue 16): hung throughput at least half of normal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import redis
from rich.console import Console
from rich.table import Table

from bench.backends import fresh_schema, servers
from bench.load import LoadResult, encode_post, run_load
from bench.run import BENCH_POLICY, _inputs, free_port, sample_messages
from service.container import build_container
from service.settings import Settings

console = Console(width=160)  # the table whole, even through a pipe
TIMEOUT_S = 0.25  # the default OUTGUARD_REDIS_TIMEOUT_S
PROBE_S = 1.0  # the default OUTGUARD_REDIS_PROBE_INTERVAL_S


class PrivateRedis:
    """A redis-server of this run's own, which it may stop (SIGSTOP) and continue (SIGCONT)."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not on PATH")
        self.port = free_port()
        if self.port == 6379:
            raise SystemExit("refusing to run a private Redis on the shared port 6379")
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @contextlib.contextmanager
    def hung(self) -> Iterator[None]:
        os.kill(self.process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.process.pid, signal.SIGCONT)

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGCONT)
        self.process.terminate()
        self.process.wait(timeout=10)


@contextlib.contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    try:
        yield server
    finally:
        server.close()


def counters(text: str) -> tuple[float, float]:
    """(failed, skipped) Redis calls from a Prometheus exposition."""
    values = {"outguard_shared_state_failures_total": 0.0, "outguard_shared_state_skipped_total": 0.0}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in values:
            values[name] = float(value)
    return values["outguard_shared_state_failures_total"], values["outguard_shared_state_skipped_total"]


def in_process(settings: Settings, messages: list[dict[str, object]], server: PrivateRedis) -> list[tuple]:
    """(phase, messages/s, p50 ms, p99 ms, failed, skipped) with Redis answering, then hung; one at a time."""
    container = build_container(settings)
    inputs = _inputs(messages)
    metrics = container.metrics

    async def one_pass() -> tuple[float, np.ndarray]:
        latencies = []
        started = time.perf_counter()
        for message in inputs:
            t0 = time.perf_counter()
            await container.scorer.score([message])
            latencies.append(time.perf_counter() - t0)
        return len(inputs) / (time.perf_counter() - started), np.array(latencies) * 1000

    async def run() -> list[tuple]:
        rows = []
        for phase in ("normal", "hung"):
            with server.hung() if phase == "hung" else contextlib.nullcontext():
                rate, latencies = await one_pass()
                failed = metrics.shared_state_failures._value.get()
                skipped = metrics.shared_state_skipped._value.get()
            p50, p99 = np.percentile(latencies, 50), np.percentile(latencies, 99)
            rows.append((phase, rate, float(p50), float(p99), failed, skipped))
        await container.events.flush()
        await container.aclose()
        return rows

    try:
        return asyncio.run(run())
    finally:
        container.close()


def over_http(
    env: dict[str, str], state: Path, messages: list[dict[str, object]], server: PrivateRedis, args: argparse.Namespace
) -> list[tuple]:
    """The same rows for one uvicorn replica under `--connections` concurrent requests."""
    rows = []
    with servers(1, state, env) as [port]:
        requests = [encode_post("127.0.0.1", port, "/v1/score", orjson.dumps(m)) for m in messages]
        for phase in ("normal", "hung"):
            warmup = 1.0 if phase == "normal" else 0.0  # the hung run pays its first timeouts
            with server.hung() if phase == "hung" else contextlib.nullcontext():
                result: LoadResult = asyncio.run(
                    run_load("127.0.0.1", port, requests, args.connections, args.seconds, warmup=warmup)
                )
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
                    failed, skipped = counters(answer.read().decode())
            if result.errors:
                raise RuntimeError(f"{phase}: {result.errors} non-200 answers")
            rows.append((phase, result.rate, result.percentile(50), result.percentile(99), failed, skipped))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    command = "python -m bench.redis_hung " + " ".join(sys.argv[1:])
    os.environ["OUTGUARD_RELAY_POLICIES"] = BENCH_POLICY  # no automatic locks: both phases score every message
    base = Settings()
    messages = sample_messages(base, args.messages)
    table = Table(
        title=f"scoring with Redis answering, then hung by SIGSTOP ({command.strip()}; {os.cpu_count()} cores; "
        f"Redis timeout {TIMEOUT_S} s, probe every {PROBE_S} s)"
    )
    for column in ("setup", "Redis", "messages/s", "p50 ms", "p99 ms", "calls failed", "calls skipped", "vs normal"):
        table.add_column(column, justify="left" if column in ("setup", "Redis") else "right")
    with tempfile.TemporaryDirectory(prefix="outguard-bench-") as tmp, private_redis() as server:
        state = Path(tmp)
        with fresh_schema() as url:
            settings = base.model_copy(
                update={
                    "database_url": url,
                    "state_dir": state,
                    "redis_url": server.url,
                    "redis_prefix": "inproc",
                    "redis_timeout_s": TIMEOUT_S,
                    "redis_probe_interval_s": PROBE_S,
                }
            )
            results = [("in process, one at a time", in_process(settings, messages, server))]
        with fresh_schema() as url:
            env = {
                "OUTGUARD_DATABASE_URL": url,
                "OUTGUARD_REDIS_URL": server.url,
                "OUTGUARD_REDIS_PREFIX": "http",
                "OUTGUARD_REDIS_TIMEOUT_S": str(TIMEOUT_S),
                "OUTGUARD_REDIS_PROBE_INTERVAL_S": str(PROBE_S),
                "OUTGUARD_RECIPIENT_HASH_KEY": "bench",
            }
            setup = f"HTTP, 1 replica, {args.connections} connections"
            results.append((setup, over_http(env, state / "http", messages, server, args)))
    for setup, rows in results:
        normal = rows[0][1]
        for phase, rate, p50, p99, failed, skipped in rows:
            ratio = f"{rate / normal:.2f}" if phase == "hung" else ""
            table.add_row(
                setup, phase, f"{rate:,.0f}", f"{p50:.2f}", f"{p99:.2f}", f"{failed:,.0f}", f"{skipped:,.0f}", ratio
            )
    console.print(table)


if __name__ == "__main__":
    main()
