"""`make bench`: scoring throughput and latency, in process and over HTTP, against the framework floor.

Scores real corpus messages (SpamAssassin and TREC, a fixed random sample) three ways:

- in process: `Scorer.score` called directly, one message per call and 100 per call;
- over HTTP: a real `uvicorn` server process (one worker) driven by a load generator
  in this process (`bench.load`), `/v1/score` and `/v1/score/batch` (100 per request);
- the floor: the same load against a bare FastAPI app that only validates the same
  request bodies (`bench.bare_app`), so the cost of outguard's own work is visible.

Usage: python -m bench.run [--messages 2000] [--seconds 10] [--connections 8]

`python -m bench.run --profile [--accounts 20000] [--pyinstrument out.html]` prints
where the time per message goes instead: CPU time of each stage of the hot path
(fingerprints on, every message from another of `--accounts` accounts), in process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import importlib
import inspect
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


# The stages `--profile` times: (module, attribute path, label). Wrapped for the run only.
PROFILE_STAGES = (
    ("service.scoring", "_parse", "MIME parse"),
    ("features.vector", "content_features", "content features (headers, links, text, HTML)"),
    ("features.content", "analyse_html", "  of which HTML"),
    ("features.text_model", "TextModel.score_one", "text model"),
    ("features.fingerprint", "Fingerprinter.fingerprint", "fingerprint: MinHash"),
    ("service.fingerprints.service", "FingerprintService.lookup", "fingerprint: signatures + campaign"),
    ("service.scoring", "Scorer._observe", "account windows, state, row (incl. lookup)"),
    ("models.bundle", "ModelBundle.predict", "model: trees + reasons"),
    ("service.scoring", "Scorer._finish", "decision, account update, record"),
)


@contextlib.contextmanager
def timed_stages(totals: dict[str, float]) -> Iterator[None]:
    """Add each stage's thread CPU time to `totals` while inside; the originals are put back after."""
    undo = []
    for module_name, path, label in PROFILE_STAGES:
        owner: object = importlib.import_module(module_name)
        *parents, name = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        original = getattr(owner, name)

        def wrapper(original=original, label=label):
            if inspect.iscoroutinefunction(original):

                @functools.wraps(original)
                async def timed_async(*args, **kwargs):
                    started = time.thread_time()
                    try:
                        return await original(*args, **kwargs)
                    finally:
                        totals[label] = totals.get(label, 0.0) + time.thread_time() - started

                return timed_async

            @functools.wraps(original)
            def timed(*args, **kwargs):
                started = time.thread_time()
                try:
                    return original(*args, **kwargs)
                finally:
                    totals[label] = totals.get(label, 0.0) + time.thread_time() - started

            return timed

        setattr(owner, name, wrapper())
        undo.append((owner, name, original))
    try:
        yield
    finally:
        for owner, name, original in reversed(undo):
            setattr(owner, name, original)


def profile_in_process(
    settings: Settings, messages: list[dict[str, object]], accounts: int, passes: int, pyinstrument: str | None
) -> None:
    """Per-message CPU time by stage, scoring one message per call, each from another of `accounts` accounts.

    A first pass warms up (and fills the fingerprint index and campaign clusters);
    the next `passes` are measured. `await` of the async stores is inside the stages
    that call them; a stage's figure is the CPU of the thread that ran it.
    """
    container = build_container(settings)
    inputs = _inputs(messages)

    async def run(first: int, last: int) -> int:
        scored = 0
        for p in range(first, last):
            for i, message in enumerate(inputs):
                account = f"user{(p * len(inputs) + i) % accounts}@example.net"
                one = dataclasses.replace(
                    message, sasl_username=account, envelope_from=account, timestamp=message.timestamp + p * 60
                )
                await container.scorer.score([one])
                scored += 1
        await container.events.flush()
        return scored

    totals: dict[str, float] = {}
    try:
        asyncio.run(run(0, 1))
        profiler = None
        if pyinstrument:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005)
            profiler.start()
        wall, cpu, main = time.perf_counter(), time.process_time(), time.thread_time()
        with timed_stages(totals):
            scored = asyncio.run(run(1, 1 + passes))
        wall, cpu, main = time.perf_counter() - wall, time.process_time() - cpu, time.thread_time() - main
        if profiler is not None:
            profiler.stop()
            Path(pyinstrument).write_text(profiler.output_html())
    finally:
        container.close()
    table = Table(title=f"where the time per message goes (in process, {scored} messages, {accounts:,} accounts)")
    table.add_column("stage")
    table.add_column("µs CPU per message", justify="right")
    for _, _, label in PROFILE_STAGES:
        if label in totals:
            table.add_row(label, f"{totals[label] / scored * 1e6:,.0f}")
    table.add_row("scoring thread CPU, all stages", f"{main / scored * 1e6:,.0f}")
    table.add_row("other threads (event-log writer, worker pool)", f"{(cpu - main) / scored * 1e6:,.0f}")
    table.add_row("process CPU, all threads", f"{cpu / scored * 1e6:,.0f}")
    table.add_row("wall clock", f"{wall / scored * 1e6:,.0f}")
    console.print(table)


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


@dataclass(slots=True)
class LoopRow:
    load: str
    request_s: float
    healthz_probes: int
    healthz_max_ms: float
    healthz_p99_ms: float


def big_message(size: int = 10 * 1024 * 1024 - 64 * 1024) -> str:
    """A raw message just under 10 MB (`max_raw_bytes`): a short text part and a base64 attachment."""
    head = (
        "From: Big Sender <big@example.net>\r\nTo: someone@example.org\r\nSubject: the quarterly figures\r\n"
        "Date: Thu, 15 Jan 2026 10:00:00 +0000\r\nMessage-ID: <big@example.net>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n'
        "Here are the figures.\r\n--b1\r\nContent-Type: application/octet-stream\r\n"
        'Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename="figures.bin"\r\n\r\n'
    )
    line = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n"
    return head + line * ((size - len(head)) // len(line)) + "--b1--\r\n"


async def _probe_healthz(port: int, stop: asyncio.Event, out: list[float]) -> None:
    """GET /healthz back to back (one connection, 2 ms apart) until `stop`; each answer's latency."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"
    try:
        while not stop.is_set():
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            fields = dict(line.partition(b":")[::2] for line in head.lower().split(b"\r\n")[1:] if line)
            await reader.readexactly(int(fields[b"content-length"]))
            out.append(time.perf_counter() - started)
            await asyncio.sleep(0.002)
    finally:
        writer.close()


def bench_loop_free(messages: list[dict[str, object]], state: Path) -> list[LoopRow]:
    """The longest `/healthz` waits while one batch of 1,000 messages, or one 10 MB message, is scored."""
    batch = [dict(m, message_id=f"<loop-{i}@outguard>") for i, m in enumerate((messages * 2)[:1000])]
    big = {**messages[0], "message_id": "<loop-big@outguard>", "raw": big_message()}
    rows = []
    with running_server("service.app:app_from_environment", state, "loop.db") as port:
        for label, path, body in (
            ("batch of 1,000", "/v1/score/batch", orjson.dumps({"messages": batch})),
            ("one 10 MB message", "/v1/score", orjson.dumps(big)),
        ):
            request = encode_post("127.0.0.1", port, path, body)

            async def one(request: bytes = request, label: str = label) -> tuple[float, list[float]]:
                stop, latencies = asyncio.Event(), []
                probe = asyncio.create_task(_probe_healthz(port, stop, latencies))
                await asyncio.sleep(0.2)
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                if head[9:12] != b"200":
                    raise RuntimeError(f"{label}: {head[:12]!r}")
                elapsed = time.perf_counter() - started
                writer.close()
                await asyncio.sleep(0.05)
                stop.set()
                await probe
                return elapsed, latencies

            asyncio.run(one())  # warm-up: the first batch loads what is loaded lazily
            elapsed, latencies = asyncio.run(one())
            lat = np.array(latencies) * 1000
            rows.append(LoopRow(label, elapsed, len(lat), float(lat.max()), float(np.percentile(lat, 99))))
    return rows


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
    parser.add_argument("--profile", action="store_true", help="per-stage CPU time per message, in process")
    parser.add_argument("--accounts", type=int, default=20_000, help="with --profile: accounts the messages come from")
    parser.add_argument("--passes", type=int, default=2, help="with --profile: measured passes over the messages")
    parser.add_argument("--pyinstrument", help="with --profile: also write a pyinstrument HTML profile here")
    parser.add_argument("--loop-only", action="store_true", help="only the /healthz-during-a-big-request rows")
    args = parser.parse_args()

    base = Settings()
    console.print(f"sampling {args.messages} corpus messages from {base.data_dir}")
    messages = sample_messages(base, args.messages)
    if args.profile:
        with tempfile.TemporaryDirectory(prefix="outguard-profile-") as tmp:
            settings = base.model_copy(
                update={
                    "database_url": f"sqlite:///{Path(tmp) / 'profile.db'}",
                    "state_dir": Path(tmp),
                    "relay_policies": json.loads(BENCH_POLICY),
                }
            )
            profile_in_process(settings, messages, args.accounts, args.passes, args.pyinstrument)
        return
    if args.loop_only:
        with tempfile.TemporaryDirectory(prefix="outguard-bench-") as tmp:
            for r in bench_loop_free(messages, Path(tmp)):
                console.print(
                    f"{r.load}: {r.request_s:.2f} s; /healthz max {r.healthz_max_ms:.1f} ms, "
                    f"p99 {r.healthz_p99_ms:.1f} ms over {r.healthz_probes} probes"
                )
        return
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
        loop_rows = bench_loop_free(messages, state)

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
    loop_table = Table(title="the event loop while a big request is scored: /healthz probed every 2 ms")
    for column in ("request", "request s", "/healthz probes", "max ms", "p99 ms"):
        loop_table.add_column(column, justify="left" if column == "request" else "right", no_wrap=True)
    for r in loop_rows:
        loop_table.add_row(
            r.load, f"{r.request_s:.2f}", str(r.healthz_probes), f"{r.healthz_max_ms:.1f}", f"{r.healthz_p99_ms:.1f}"
        )
    console.print(loop_table)
    console.print("\nMarkdown, for the README:\n")
    print(markdown_table(rows, floor))
    print("\n| load | scoring messages/s | scoring p99 ms | feedback events/s |\n| --- | ---: | ---: | ---: |")
    for f in feedback_rows:
        print(f"| {f.load} | {f.scoring_per_s:,.0f} | {f.scoring_p99_ms:.2f} | {f.feedback_events_per_s:,.0f} |")
    out = PROJECT_ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "scoring": [asdict(r) for r in rows],
        "feedback": [asdict(f) for f in feedback_rows],
        "loop": [asdict(r) for r in loop_rows],
    }
    (out / "latest.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
