"""`make bench`: scoring throughput and latency, in process and over HTTP, against the framework floor.

Scores real corpus messages (SpamAssassin and TREC, a fixed random sample) three ways:

- in process: `Scorer.score` called directly, one message per call and 100 per call;
- over HTTP: a real `uvicorn` server process (one worker) driven by a load generator
  in this process (`bench.load`), `/v1/score` and `/v1/score/batch` (100 per request);
- the floor: the same load against a bare FastAPI app that only validates the same
  request bodies (`bench.bare_app`), so the cost of outguard's own work is visible.

Usage: python -m bench.run [--messages 2000] [--seconds 10] [--connections 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

from bench.load import LoadResult, encode_post, run_load
from service.container import build_container
from service.scoring import MessageInput
from service.settings import PROJECT_ROOT, Settings
from training.corpora import spamassassin_messages, trec_messages

BATCH = 100
# The benchmark measures the full scoring path: its relay never locks or rate-limits,
# or the spam half of the sample would soon be refused without running the model.
BENCH_POLICY = '{"bench": {"auto_lock": false, "rate_limit_risk": 1.0}}'
UVICORN_FLAGS = ("--log-level", "warning", "--no-access-log")
console = Console(width=160)


@dataclass(slots=True)
class Row:
    mode: str
    target: str
    unit: str
    messages_per_s: float
    p50_ms: float
    p99_ms: float


def sample_messages(settings: Settings, count: int, seed: int = 7) -> list[dict[str, object]]:
    corpus = spamassassin_messages(settings.data_dir) + trec_messages(settings.data_dir, settings.cache_dir)
    chosen = random.Random(seed).sample(corpus, count)
    messages = []
    for i, item in enumerate(chosen):
        raw = item.path.read_bytes().decode("utf-8", "surrogateescape")
        messages.append(
            {
                "message_id": f"<bench-{i}@outguard>",
                "timestamp": f"2026-01-15T10:{(i // 60) % 60:02d}:{i % 60:02d}Z",
                "relay": "bench",
                "sasl_username": f"user{i % 200}@example.net",
                "client_ip": f"198.51.100.{i % 250}",
                "envelope_from": f"user{i % 200}@example.net",
                "recipients": [f"rcpt{i % 37}@example.org"],
                # Valid JSON text: undecodable bytes become U+FFFD, as a relay's JSON encoder would do.
                "raw": raw.encode("utf-8", "replace").decode("utf-8"),
            }
        )
    return messages


def _inputs(messages: list[dict[str, object]]) -> list[MessageInput]:
    from service.api.routes import to_input
    from service.api.schemas import MessageIn

    limits = Settings()
    return [to_input(MessageIn.model_validate(m), limits) for m in messages]


def bench_in_process(settings: Settings, messages: list[dict[str, object]]) -> list[Row]:
    container = build_container(settings)
    inputs = _inputs(messages)

    async def timed(size: int) -> tuple[float, np.ndarray]:
        latencies = []
        started = time.perf_counter()
        for i in range(0, len(inputs), size):
            t0 = time.perf_counter()
            await container.scorer.score(inputs[i : i + size])
            latencies.append(time.perf_counter() - t0)
        return time.perf_counter() - started, np.array(latencies) * 1000

    rows = []
    try:
        for label, size in (("single", 1), (f"batch of {BATCH}", BATCH)):
            elapsed, lat = asyncio.run(timed(size))
            rows.append(
                Row(
                    "in process",
                    "outguard",
                    label,
                    len(inputs) / elapsed,
                    np.percentile(lat, 50),
                    np.percentile(lat, 99),
                )
            )
    finally:
        container.close()
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                if b"200" in s.recv(64):
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server on port {port} did not become healthy in {timeout}s")


@contextlib.contextmanager
def running_server(factory: str, state: Path, database: str) -> Iterator[int]:
    """A real uvicorn process (one worker) on a free port; yields the port once it is healthy."""
    port = free_port()
    env = {
        **os.environ,
        "OUTGUARD_DATABASE_URL": f"sqlite:///{state / database}",
        "OUTGUARD_STATE_DIR": str(state),
        "OUTGUARD_RELAY_POLICIES": BENCH_POLICY,
    }
    command = [sys.executable, "-m", "uvicorn", factory, "--factory", "--port", str(port), *UVICORN_FLAGS]
    server = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT)
    try:
        wait_healthy(port)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


def bench_http(
    target: str, factory: str, messages: list[dict[str, object]], seconds: float, connections: int, state: Path
) -> list[Row]:
    rows = []
    with running_server(factory, state, "bench.db") as port:
        single = [encode_post("127.0.0.1", port, "/v1/score", orjson.dumps(m)) for m in messages]
        batches = [
            encode_post("127.0.0.1", port, "/v1/score/batch", orjson.dumps({"messages": messages[i : i + BATCH]}))
            for i in range(0, len(messages), BATCH)
        ]
        for label, requests, per_request, conns in (
            ("single", single, 1, connections),
            (f"batch of {BATCH}", batches, BATCH, max(1, connections // 4)),
        ):
            result = asyncio.run(run_load("127.0.0.1", port, requests, conns, seconds))
            if result.errors:
                raise RuntimeError(f"{target} {label}: {result.errors} non-200 answers")
            rows.append(
                Row(
                    "HTTP",
                    target,
                    label,
                    result.rate * per_request,
                    result.percentile(50),
                    result.percentile(99),
                )
            )
    return rows


@dataclass(slots=True)
class FeedbackRow:
    load: str
    scoring_per_s: float
    scoring_p99_ms: float
    feedback_events_per_s: float


def feedback_batches(messages: list[dict[str, object]], count: int, per_request: int = 100) -> list[bytes]:
    """Unique events (every one a real insert) about the scored messages, in batches."""
    kinds = ("delivered", "delivered", "delivered", "open", "click", "bounce", "complaint", "reply")
    bodies = []
    for b in range(count):
        events = []
        for k in range(per_request):
            n = b * per_request + k
            event: dict[str, object] = {
                "event_id": f"bench-{n}",
                "type": kinds[n % len(kinds)],
                "message_id": messages[n % len(messages)]["message_id"],
                "recipient": f"rcpt{n % 37}@example.org",
                "timestamp": "2026-01-15T12:00:00Z",
            }
            if event["type"] == "bounce":
                event["detail"] = {"status": "5.1.1"}
            events.append(event)
        bodies.append(orjson.dumps({"events": events}))
    return bodies


def bench_feedback(
    messages: list[dict[str, object]], seconds: float, connections: int, state: Path
) -> list[FeedbackRow]:
    """Scoring alone, then scoring while feedback is ingested, on one server."""
    with running_server("service.app:app_from_environment", state, "fb.db") as port:
        batches = [
            encode_post("127.0.0.1", port, "/v1/score/batch", orjson.dumps({"messages": messages[i : i + BATCH]}))
            for i in range(0, len(messages), BATCH)
        ]
        asyncio.run(run_load("127.0.0.1", port, batches, 1, 0.0, warmup=0.0, max_requests=len(batches)))
        scoring = [encode_post("127.0.0.1", port, "/v1/score", orjson.dumps(m)) for m in messages]
        feedback = [
            encode_post("127.0.0.1", port, "/v1/feedback/batch", body) for body in feedback_batches(messages, 3000)
        ]

        async def together() -> tuple[LoadResult, LoadResult]:
            return await asyncio.gather(
                run_load("127.0.0.1", port, scoring, connections, seconds),
                run_load("127.0.0.1", port, feedback, 2, seconds, warmup=0.0),
            )

        alone = asyncio.run(run_load("127.0.0.1", port, scoring, connections, seconds))
        with_feedback, ingest = asyncio.run(together())
        for result in (alone, with_feedback, ingest):
            if result.errors:
                raise RuntimeError(f"{result.errors} non-200 answers in the feedback benchmark")
        return [
            FeedbackRow("scoring alone", alone.rate, alone.percentile(99), 0.0),
            FeedbackRow(
                "scoring + feedback (batches of 100)",
                with_feedback.rate,
                with_feedback.percentile(99),
                ingest.rate * 100,
            ),
        ]


def markdown_table(rows: list[Row], floor: dict[str, float]) -> str:
    lines = [
        "| mode | target | unit | messages/s | p50 ms | p99 ms | x floor |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ratio = floor.get(r.unit, 0) / r.messages_per_s if r.mode == "HTTP" and r.target == "outguard" else None
        lines.append(
            f"| {r.mode} | {r.target} | {r.unit} | {r.messages_per_s:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
            f"{f'{ratio:.1f}' if ratio else ''} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()

    base = Settings()
    console.print(f"sampling {args.messages} corpus messages from {base.data_dir}")
    messages = sample_messages(base, args.messages)
    with tempfile.TemporaryDirectory(prefix="outguard-bench-") as tmp:
        state = Path(tmp)
        settings = base.model_copy(
            update={
                "database_url": f"sqlite:///{state / 'inproc.db'}",
                "state_dir": state,
                "relay_policies": json.loads(BENCH_POLICY),
            }
        )
        rows = bench_in_process(settings, messages)
        rows += bench_http(
            "outguard", "service.app:app_from_environment", messages, args.seconds, args.connections, state
        )
        rows += bench_http(
            "bare FastAPI", "bench.bare_app:create_bare_app", messages, args.seconds, args.connections, state
        )
        feedback_rows = bench_feedback(messages, args.seconds, args.connections, state)

    floor = {r.unit: r.messages_per_s for r in rows if r.target == "bare FastAPI"}
    command = "python -m bench.run " + " ".join(sys.argv[1:]) if sys.argv[1:] else "make bench"
    table = Table(title=f"outguard scoring benchmark ({command})")
    for column in ("mode", "target", "unit", "messages/s", "p50 ms", "p99 ms", "x floor"):
        table.add_column(column, justify="left" if column in ("mode", "target", "unit") else "right", no_wrap=True)
    for r in rows:
        ratio = floor.get(r.unit, 0) / r.messages_per_s if r.mode == "HTTP" and r.target == "outguard" else None
        table.add_row(
            r.mode,
            r.target,
            r.unit,
            f"{r.messages_per_s:,.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{ratio:.1f}" if ratio else "",
        )
    console.print(table)
    console.print(
        f"{args.messages} corpus messages, HTTP: one uvicorn worker, {args.connections} connections "
        f"({max(1, args.connections // 4)} for batches), {args.seconds:.0f}s per row; "
        f"{os.cpu_count()} cores, Python {platform.python_version()}. "
        "'x floor' = bare FastAPI messages/s over outguard messages/s."
    )
    feedback_table = Table(title="feedback ingestion while scoring (one uvicorn worker, one SQLite writer)")
    for column in ("load", "scoring messages/s", "scoring p99 ms", "feedback events/s"):
        feedback_table.add_column(column, justify="left" if column == "load" else "right", no_wrap=True)
    for f in feedback_rows:
        feedback_table.add_row(
            f.load, f"{f.scoring_per_s:,.0f}", f"{f.scoring_p99_ms:.2f}", f"{f.feedback_events_per_s:,.0f}"
        )
    console.print(feedback_table)
    console.print("\nMarkdown, for the README:\n")
    print(markdown_table(rows, floor))
    print("\n| load | scoring messages/s | scoring p99 ms | feedback events/s |\n| --- | ---: | ---: | ---: |")
    for f in feedback_rows:
        print(f"| {f.load} | {f.scoring_per_s:,.0f} | {f.scoring_p99_ms:.2f} | {f.feedback_events_per_s:,.0f} |")
    out = PROJECT_ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    results = {"scoring": [asdict(r) for r in rows], "feedback": [asdict(f) for f in feedback_rows]}
    (out / "latest.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
