"""Scoring throughput on each storage backend, and over HTTP with one and two replicas sharing PostgreSQL and Redis.

    python -m bench.backends [--messages 1000] [--seconds 10] [--connections 8]

Needs the PostgreSQL and Redis of OUTGUARD_TEST_POSTGRES_URL / OUTGUARD_TEST_REDIS_URL
(default: this machine's). Each run gets a fresh schema and key prefix, dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import redis
from rich.console import Console
from rich.table import Table

from bench.load import encode_post, run_load
from bench.run import _inputs, free_port, sample_messages, wait_healthy
from service.container import build_container
from service.settings import PROJECT_ROOT, Settings
from service.stores.schema import scratch_schema

console = Console()
POSTGRES_URL = os.environ.get("OUTGUARD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("OUTGUARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def fresh_schema() -> contextlib.AbstractContextManager[str]:
    return scratch_schema(POSTGRES_URL, "bench")


@contextlib.contextmanager
def fresh_prefix() -> Iterator[str]:
    prefix = f"bench{uuid.uuid4().hex[:10]}"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}:*", count=1_000):
            client.delete(key)
        client.close()


def in_process(settings: Settings, messages: list[dict[str, object]]) -> tuple[float, float, float]:
    """Messages/s, p50 and p99 ms, scoring one at a time."""
    container = build_container(settings)
    inputs = _inputs(messages)

    async def run() -> tuple[float, np.ndarray]:
        latencies = []
        started = time.perf_counter()
        for message in inputs:
            t0 = time.perf_counter()
            await container.scorer.score([message])
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
        await container.events.flush()
        await container.aclose()
        return elapsed, np.array(latencies) * 1000

    try:
        elapsed, latencies = asyncio.run(run())
    finally:
        container.close()
    return len(inputs) / elapsed, float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99))


@contextlib.contextmanager
def servers(count: int, state: Path, env: dict[str, str]) -> Iterator[list[int]]:
    ports, processes = [], []
    try:
        for n in range(count):
            port = free_port()
            folder = state / f"replica-{n}"
            folder.mkdir(parents=True)
            environment = {**os.environ, **env, "OUTGUARD_STATE_DIR": str(folder)}
            command = [sys.executable, "-m", "uvicorn", "service.app:app_from_environment", "--factory"]
            command += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
            processes.append(subprocess.Popen(command, env=environment, cwd=PROJECT_ROOT))
            wait_healthy(port)
            ports.append(port)
        yield ports
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)


def over_http(ports: list[int], messages: list[dict[str, object]], seconds: float, connections: int) -> float:
    """Messages/s with `connections` spread over the replicas, one message per request."""
    per_replica = max(1, connections // len(ports))

    async def run() -> float:
        results = await asyncio.gather(
            *(
                run_load(
                    "127.0.0.1",
                    port,
                    [encode_post("127.0.0.1", port, "/v1/score", orjson.dumps(m)) for m in messages],
                    per_replica,
                    seconds,
                )
                for port in ports
            )
        )
        if any(r.errors for r in results):
            raise RuntimeError(f"non-200 answers: {[r.errors for r in results]}")
        return sum(r.rate for r in results)

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    command = "python -m bench.backends " + " ".join(sys.argv[1:])
    base = Settings()
    messages = sample_messages(base, args.messages)
    table = Table(title=f"scoring by storage backend ({command.strip()}; {os.cpu_count()} cores)")
    for column in ("setup", "backend", "messages/s", "p50 ms", "p99 ms"):
        table.add_column(column, justify="right" if column not in ("setup", "backend") else "left")
    with tempfile.TemporaryDirectory(prefix="outguard-bench-") as tmp:
        state = Path(tmp)
        local = base.model_copy(update={"database_url": f"sqlite:///{state / 'b.db'}", "state_dir": state})
        rate, p50, p99 = in_process(local, messages)
        table.add_row("in process, single", "SQLite + in-process state", f"{rate:,.0f}", f"{p50:.2f}", f"{p99:.2f}")
        with fresh_schema() as url:
            postgres = local.model_copy(update={"database_url": url})
            rate, p50, p99 = in_process(postgres, messages)
            table.add_row("in process, single", "PostgreSQL + in-process", f"{rate:,.0f}", f"{p50:.2f}", f"{p99:.2f}")
        with fresh_schema() as url, fresh_prefix() as prefix:
            shared = local.model_copy(update={"database_url": url, "redis_url": REDIS_URL, "redis_prefix": prefix})
            rate, p50, p99 = in_process(shared, messages)
            table.add_row("in process, single", "PostgreSQL + Redis", f"{rate:,.0f}", f"{p50:.2f}", f"{p99:.2f}")
        for count in (1, 2):
            with fresh_schema() as url, fresh_prefix() as prefix:
                env = {
                    "OUTGUARD_DATABASE_URL": url,
                    "OUTGUARD_REDIS_URL": REDIS_URL,
                    "OUTGUARD_REDIS_PREFIX": prefix,
                    "OUTGUARD_RECIPIENT_HASH_KEY": "bench",
                }
                with servers(count, state / f"http-{count}", env) as ports:
                    rate = over_http(ports, messages, args.seconds, args.connections)
            table.add_row(f"HTTP, {count} replica(s)", "PostgreSQL + Redis", f"{rate:,.0f}", "", "")
    console.print(table)


if __name__ == "__main__":
    main()
