"""The Rspamd-compatible protocols against the JSON API, on the same corpus messages, and the policy gate.

    python -m bench.rspamd_compat [--messages 1000] [--seconds 8] [--connections 8]

One real `uvicorn` server process (one worker) serves all of them: `/v1/score` (JSON,
HTTP keep-alive), `/checkv2` (the raw message, HTTP keep-alive, as Haraka's plugin and
rspamc send it), RSPAMC/1.3 over TCP (as Exim sends it: one connection per message,
closed by the answer) and the Postfix policy gate (keep-alive, a RCPT check per request,
and END-OF-MESSAGE, which counts the message). The relay never locks or rate-limits, so
every message runs the model. Load comes from this process, `--connections` at a time,
for `--seconds` each after a one-second warm-up.
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
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

from bench.load import LoadResult, encode_post, run_load
from bench.run import BENCH_POLICY, UVICORN_FLAGS, free_port, sample_messages, wait_healthy
from service.settings import PROJECT_ROOT, Settings

console = Console(width=160)


@contextlib.contextmanager
def server(state: Path) -> Iterator[tuple[int, int, int]]:
    """(HTTP, RSPAMC, policy) ports of one outguard process."""
    http, rspamc, policy = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "OUTGUARD_DATABASE_URL": f"sqlite:///{state / 'compat.db'}",
        "OUTGUARD_STATE_DIR": str(state),
        "OUTGUARD_RELAY_POLICIES": BENCH_POLICY,
        "OUTGUARD_RSPAMC_LISTEN": f"127.0.0.1:{rspamc}",
        "OUTGUARD_RSPAMC_RELAY": "bench",
        "OUTGUARD_POLICY_LISTEN": f"127.0.0.1:{policy}",
        "OUTGUARD_POLICY_RELAY": "bench",
    }
    command = [sys.executable, "-m", "uvicorn", "service.app:app_from_environment", "--factory"]
    process = subprocess.Popen([*command, "--port", str(http), *UVICORN_FLAGS], env=env, cwd=PROJECT_ROOT)
    try:
        wait_healthy(http)
        yield http, rspamc, policy
    finally:
        process.terminate()
        process.wait(timeout=30)


def envelope(message: dict[str, object]) -> list[tuple[str, str]]:
    return [
        ("User", str(message["sasl_username"])),
        ("IP", str(message["client_ip"])),
        ("From", str(message["envelope_from"])),
        *(("Rcpt", str(r)) for r in message["recipients"]),  # type: ignore[attr-defined]
    ]


def raw_of(message: dict[str, object]) -> bytes:
    return str(message["raw"]).encode()


def checkv2_request(port: int, message: dict[str, object]) -> bytes:
    body = raw_of(message)
    headers = [("Host", f"127.0.0.1:{port}"), ("Content-Length", str(len(body))), ("MTA-Tag", "bench")]
    head = "POST /checkv2 HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers + envelope(message))
    return head.encode() + b"\r\n" + body


def rspamc_request(message: dict[str, object]) -> bytes:
    body = raw_of(message)
    head = f"CHECK RSPAMC/1.3\r\nContent-length: {len(body)}\r\nQueue-Id: bench\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in envelope(message))
    return head.encode() + b"\r\n" + body


def policy_request(message: dict[str, object], state: str) -> bytes:
    attributes = {
        "request": "smtpd_access_policy",
        "protocol_state": state,
        "sasl_username": message["sasl_username"],
        "sender": message["envelope_from"],
        "recipient": message["recipients"][0],  # type: ignore[index]
        "recipient_count": "1" if state == "END-OF-MESSAGE" else "0",
        "client_address": message["client_ip"],
        "policy_context": "bench",
    }
    return "".join(f"{k}={v}\n" for k, v in attributes.items()).encode() + b"\n"


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


def bench_rspamc(port: int, messages: list[dict[str, object]], seconds: float, connections: int) -> LoadResult:
    requests = [rspamc_request(m) for m in messages]
    sent = [0]

    async def one(_: int, latencies: list[float]) -> None:
        request = requests[sent[0] % len(requests)]
        sent[0] += 1
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)  # like Exim: no half-close, the answer ends the exchange
        answer = await reader.read()
        writer.close()
        if not answer.startswith(b"RSPAMD/1.3 0 EX_OK\r\n"):
            raise RuntimeError(f"RSPAMC answer: {answer[:80]!r}")
        latencies.append(time.perf_counter() - started)

    return asyncio.run(_workers(connections, seconds, one))


def bench_policy(
    port: int, messages: list[dict[str, object]], state: str, seconds: float, connections: int
) -> LoadResult:
    requests = [policy_request(m, state) for m in messages]

    async def run() -> LoadResult:
        streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(connections)]
        sent = [0] * connections

        async def one(n: int, latencies: list[float]) -> None:
            reader, writer = streams[n]
            started = time.perf_counter()
            writer.write(requests[(n * 7919 + sent[n]) % len(requests)])
            sent[n] += 1
            answer = await reader.readuntil(b"\n\n")
            if not answer.startswith(b"action="):
                raise RuntimeError(f"policy answer: {answer[:80]!r}")
            latencies.append(time.perf_counter() - started)

        try:
            return await _workers(connections, seconds, one)
        finally:
            for _, writer in streams:
                writer.close()

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    command = "python -m bench.rspamd_compat " + " ".join(sys.argv[1:])
    base = Settings()
    console.print(f"sampling {args.messages} corpus messages from {base.data_dir}")
    messages = sample_messages(base, args.messages)
    table = Table(title=f"Rspamd-compatible protocols and the policy gate ({command.strip()}; {os.cpu_count()} cores)")
    for column in ("protocol", "what", "per second", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column in ("protocol", "what") else "right")

    def row(protocol: str, what: str, result: LoadResult) -> None:
        if result.errors:
            raise RuntimeError(f"{protocol}: {result.errors} non-200 answers")
        p50, p99 = result.percentile(50), result.percentile(99)
        table.add_row(protocol, what, f"{result.rate:,.0f}", f"{p50:.2f}", f"{p99:.2f}")

    with tempfile.TemporaryDirectory(prefix="outguard-bench-") as tmp, server(Path(tmp)) as (http, rspamc, policy):
        json_api = [encode_post("127.0.0.1", http, "/v1/score", orjson.dumps(m)) for m in messages]
        row(
            "JSON API",
            "POST /v1/score, messages",
            asyncio.run(run_load("127.0.0.1", http, json_api, args.connections, args.seconds)),
        )
        checkv2 = [checkv2_request(http, m) for m in messages]
        row(
            "Rspamd HTTP",
            "POST /checkv2, messages",
            asyncio.run(run_load("127.0.0.1", http, checkv2, args.connections, args.seconds)),
        )
        row(
            "RSPAMC/1.3 (Exim)",
            "CHECK over TCP, messages",
            bench_rspamc(rspamc, messages, args.seconds, args.connections),
        )
        row("policy gate", "RCPT, answers", bench_policy(policy, messages, "RCPT", args.seconds, args.connections))
        row(
            "policy gate",
            "END-OF-MESSAGE (counted), answers",
            bench_policy(policy, messages, "END-OF-MESSAGE", args.seconds, args.connections),
        )
    console.print(table)


if __name__ == "__main__":
    main()
