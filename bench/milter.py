"""Messages/s through the milter against the JSON API, on the same corpus messages.

    python -m bench.milter [--messages 1000] [--seconds 8] [--connections 8]

One real `uvicorn` server process (one worker) serves both: `/v1/score` (JSON, HTTP
keep-alive) and the milter on `OUTGUARD_MILTER_LISTEN`, driven by `MilterClient` the way
Postfix drives it (negotiation, connect, HELO, MAIL, RCPT, one packet per header, 64 KB
body chunks, end of message). Postfix opens one milter connection per SMTP session, so
the milter is measured with one message per connection and with ten (a client that sends
several messages in one session). The relay never locks or rate-limits, so every message
runs the model; the last row is a locked account refused at MAIL FROM (one state read,
no content, no model). Load comes from this process, `--connections` at a time, for
`--seconds` each after a one-second warm-up.
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
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

from bench.load import LoadResult, encode_post, run_load
from bench.run import UVICORN_FLAGS, free_port, sample_messages, wait_healthy
from service.adapters.milter_client import Frame, MilterClient
from service.settings import PROJECT_ROOT, Settings

console = Console(width=160)
LOCKED = "locked-bench@example.net"
# Never locked, and a rate limit nobody reaches: every message runs the model on both paths.
POLICY = orjson.dumps(
    {"bench": {"auto_lock": False, "rate_limit_risk": 1.0, "rate_limit_per_minute": 1e9, "rate_limit_burst": 1e9}}
).decode()


@contextlib.contextmanager
def server(state: Path) -> Iterator[tuple[int, int]]:
    """(HTTP, milter) ports of one outguard process."""
    http, milter = free_port(), free_port()
    env = {
        **os.environ,
        "OUTGUARD_DATABASE_URL": f"sqlite:///{state / 'milter.db'}",
        "OUTGUARD_STATE_DIR": str(state),
        "OUTGUARD_RELAY_POLICIES": POLICY,
        "OUTGUARD_MILTER_LISTEN": f"127.0.0.1:{milter}",
        "OUTGUARD_MILTER_RELAY": "bench",
    }
    command = [sys.executable, "-m", "uvicorn", "service.app:app_from_environment", "--factory"]
    process = subprocess.Popen([*command, "--port", str(http), *UVICORN_FLAGS], env=env, cwd=PROJECT_ROOT)
    try:
        wait_healthy(http)
        yield http, milter
    finally:
        process.terminate()
        process.wait(timeout=30)


async def _workers(
    connections: int, seconds: float, one: Callable[[int, list[float]], Awaitable[None]], warmup: float = 1.0
) -> LoadResult:
    """`connections` workers calling `one(worker, latencies)` until the time is up (after a warm-up)."""

    async def worker(n: int, until: float, latencies: list[float]) -> None:
        while time.perf_counter() < until:
            await one(n, latencies)

    await asyncio.gather(*(worker(n, time.perf_counter() + warmup, []) for n in range(connections)))
    latencies: list[float] = []
    started = time.perf_counter()
    await asyncio.gather(*(worker(n, started + seconds, latencies) for n in range(connections)))
    return LoadResult(len(latencies), 0, time.perf_counter() - started, np.array(latencies))


def bench_milter(
    port: int,
    messages: list[dict[str, object]],
    seconds: float,
    connections: int,
    per_connection: int,
    user: str | None = None,
) -> LoadResult:
    """Messages/s: each latency is one message's MAIL FROM to its final answer."""
    raws = [str(m["raw"]).encode("utf-8", "replace") for m in messages]
    encoded: dict[int, list[Frame]] = {}  # each message's frames, encoded once (the client's cost stays small)
    sent = [0]

    async def one(_: int, latencies: list[float]) -> None:
        client = await MilterClient.open("127.0.0.1", port)
        await client.connect("198.51.100.7", {"j": "relay.example.net"})
        await client.helo("client.example.net")
        for _ in range(per_connection):
            i = sent[0] % len(messages)
            sent[0] += 1
            if i not in encoded:
                message = messages[i]
                encoded[i] = client.transaction(
                    raws[i],
                    sender=str(message["envelope_from"]),
                    recipients=list(message["recipients"]),  # type: ignore[call-overload]
                    user=user or str(message["sasl_username"]),
                )
            started = time.perf_counter()
            stage, answer = await client.send_frames(encoded[i])
            if user is not None and stage != "mail":
                raise RuntimeError(f"the locked account got through to {stage}")
            if user is None and (stage != "eom" or answer is None):
                raise RuntimeError(f"milter answered at {stage}: {answer}")
            latencies.append(time.perf_counter() - started)
        await client.close()

    return asyncio.run(_workers(connections, seconds, one))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    command = "python -m bench.milter " + " ".join(sys.argv[1:])
    base = Settings()
    console.print(f"sampling {args.messages} corpus messages from {base.data_dir}")
    messages = sample_messages(base, args.messages)
    table = Table(title=f"Milter against the JSON API ({command.strip()}; {os.cpu_count()} cores)")
    for column in ("protocol", "what", "messages/s", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column in ("protocol", "what") else "right")

    def row(protocol: str, what: str, result: LoadResult) -> None:
        if result.errors:
            raise RuntimeError(f"{protocol}: {result.errors} non-200 answers")
        p50, p99 = result.percentile(50), result.percentile(99)
        table.add_row(protocol, what, f"{result.rate:,.0f}", f"{p50:.2f}", f"{p99:.2f}")

    with tempfile.TemporaryDirectory(prefix="outguard-bench-") as tmp, server(Path(tmp)) as (http, milter):
        json_api = [encode_post("127.0.0.1", http, "/v1/score", orjson.dumps(m)) for m in messages]
        load = run_load("127.0.0.1", http, json_api, args.connections, args.seconds)
        row("JSON API", "POST /v1/score, keep-alive", asyncio.run(load))
        one = bench_milter(milter, messages, args.seconds, args.connections, 1)
        row("milter", "one message per connection (a Postfix SMTP session)", one)
        ten = bench_milter(milter, messages, args.seconds, args.connections, 10)
        row("milter", "ten messages per connection", ten)
        lock = urllib.request.Request(
            f"http://127.0.0.1:{http}/v1/accounts/bench/{LOCKED}/lock",
            data=orjson.dumps({"actor": "bench", "reason": "bench", "force": True}),
            headers={"content-type": "application/json"},
        )
        urllib.request.urlopen(lock, timeout=10).close()
        refused = bench_milter(milter, messages, args.seconds, args.connections, 10, user=LOCKED)
        row("milter", "locked account refused at MAIL FROM (no content)", refused)
    console.print(table)


if __name__ == "__main__":
    main()
