"""outguard against Rspamd on the same raw messages, per core, in one run (issue 19).

    python -m bench.vs_rspamd [--messages 2000] [--seconds 8] [--rounds 3] [--connections 8] [--core 0]

Three servers, each pinned with `taskset` to the same core (`--core`), the load
generator (`bench.load`, this process) pinned to another:

- Rspamd from Debian (`apt-get install rspamd`; its service need not run): our own
  instance on a loopback port, with the stock configuration and a local override
  directory written here (`rspamd_config`): one normal worker (no controller, proxy or
  fuzzy storage), network checks off (no DNS lists, SPF, DKIM, DMARC, fuzzy hashes,
  URL redirects, updates, Redis), so what it runs is its regexp rules, MIME, HTML and
  URL parsing, chartable and the other local modules. Messages go to `/checkv2` as
  raw bodies.
- outguard: one uvicorn worker on the embedded default (SQLite and in-process state),
  fingerprints on, auto-lock and rate limits off (so every message takes the full
  path), the same messages to `/v1/score` as JSON.
- the bare FastAPI floor (`bench.bare_app`): the same JSON bodies validated and answered.

Rounds of `--seconds` per server are interleaved (outguard, Rspamd, floor, then again),
so that other load on the machine falls on all three alike; the table gives each
round's messages/s and the ratio outguard/Rspamd from the medians. Without `rspamd`
on the PATH the Rspamd rows are skipped with a message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

from bench.load import LoadResult, encode_post, run_load
from bench.run import BENCH_POLICY, UVICORN_FLAGS, free_port, sample_messages, wait_healthy
from service.settings import PROJECT_ROOT, Settings

console = Console(width=160)

# Modules that reach the network (DNS, HTTP, Redis) or need a store Rspamd has not got here.
NETWORK_MODULES = (
    "antivirus",
    "arc",
    "asn",
    "aws_s3",
    "bimi",
    "clickhouse",
    "dcc",
    "dkim",
    "dkim_signing",
    "dmarc",
    "elastic",
    "emails",
    "external_services",
    "fuzzy_check",
    "greylist",
    "hfilter",  # HELO and sender host checks: DNS A and MX lookups
    "history_redis",
    "metadata_exporter",
    "metric_exporter",
    "mx_check",
    "neural",
    "p0f",
    "phishing",
    "ratelimit",
    "rbl",
    "replies",
    "reputation",
    "rspamd_update",
    "spamtrap",
    "spf",
    "surbl",
    "url_redirector",
)


def rspamd_config(folder: Path, port: int) -> dict[str, str]:
    """Write the local override directory; return the `--var` definitions that point Rspamd at it."""
    local, override = folder / "local.d", folder / "override.d"
    local.mkdir(parents=True, exist_ok=True)
    override.mkdir(parents=True, exist_ok=True)
    for module in NETWORK_MODULES:
        (local / f"{module}.conf").write_text("enabled = false;\n")
    # No nameserver that answers: a module left on by mistake cannot reach the network.
    (local / "options.inc").write_text('dns { nameserver = ["127.0.0.1:1"]; timeout = 0.1s; retransmits = 0; }\n')
    (override / "options.inc").write_text('filters = "chartable,regexp";\n')
    (override / "logging.inc").write_text(f'type = "file";\nfilename = "{folder / "rspamd.log"}";\nlevel = "error";\n')
    (override / "worker-normal.inc").write_text(f'bind_socket = "127.0.0.1:{port}";\ncount = 1;\n')
    for worker in ("controller", "proxy", "fuzzy"):
        (override / f"worker-{worker}.inc").write_text("enabled = false;\n")
    return {"LOCAL_CONFDIR": str(folder), "DBDIR": str(folder), "RUNDIR": str(folder), "LOGDIR": str(folder)}


def wait_rspamd(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            if b"200" in s.recv(64):
                return
        time.sleep(0.2)
    raise RuntimeError(f"rspamd on port {port} did not answer /ping in {timeout}s")


@contextlib.contextmanager
def running_rspamd(folder: Path, core: int) -> Iterator[int]:
    port = free_port()
    variables = rspamd_config(folder, port)
    command = ["taskset", "-c", str(core), "rspamd", "-f", "-i", "-u", "root", "-g", "root"]
    command += ["-c", "/etc/rspamd/rspamd.conf"]
    for name, value in variables.items():
        command += ["--var", f"{name}={value}"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_rspamd(port)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


@contextlib.contextmanager
def running_uvicorn(factory: str, state: Path, core: int) -> Iterator[int]:
    port = free_port()
    env = {
        **os.environ,
        "OUTGUARD_DATABASE_URL": f"sqlite:///{state / 'vs.db'}",
        "OUTGUARD_STATE_DIR": str(state),
        "OUTGUARD_RELAY_POLICIES": BENCH_POLICY,
    }
    command = ["taskset", "-c", str(core), sys.executable, "-m", "uvicorn", factory, "--factory"]
    command += ["--port", str(port), *UVICORN_FLAGS]
    server = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT)
    try:
        wait_healthy(port)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


async def _one_per_connection(
    port: int, requests: list[bytes], stop_at: float, out: list[float], errors: list[int], offset: int
) -> None:
    i = offset
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(requests[i % len(requests)])
        answer = await reader.read()  # `Connection: close`: the answer ends with the connection
        writer.close()
        out.append(time.perf_counter() - started)
        if answer[9:12] != b"200":
            errors.append(int(answer[9:12] or 0))
        i += 1


async def run_load_closing(
    port: int, requests: list[bytes], connections: int, seconds: float, warmup: float = 1.0
) -> LoadResult:
    """`bench.load.run_load` for a server that closes every connection after its answer (Rspamd 3.4's workers).

    Each request opens its own connection, which costs the client and the server a
    loopback connect and accept (tens of µs): Rspamd is measured as relays use it.
    """
    await asyncio.gather(
        *(_one_per_connection(port, requests, time.perf_counter() + warmup, [], [], c) for c in range(connections))
    )
    latencies: list[float] = []
    errors: list[int] = []
    started = time.perf_counter()
    await asyncio.gather(
        *(
            _one_per_connection(port, requests, started + seconds, latencies, errors, c * 7919)
            for c in range(connections)
        )
    )
    return LoadResult(len(latencies), len(errors), time.perf_counter() - started, np.array(latencies))


def rspamd_request(port: int, message: dict[str, object], raw: bytes) -> bytes:
    """`/checkv2` with what outguard gets in its JSON: login, client IP, envelope, as a relay passes them.

    `Hostname` is the client's name as the relay resolved it; without it Rspamd looks the
    IP up itself (a DNS query that would time out here).
    """
    rcpts = "".join(f"Rcpt: {r}\r\n" for r in message["recipients"])  # type: ignore[attr-defined]
    head = (
        f"POST /checkv2 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser: {message['sasl_username']}\r\n"
        f"IP: {message['client_ip']}\r\nHostname: client.example.net\r\nHelo: client.example.net\r\n"
        f"From: {message['envelope_from']}\r\n{rcpts}Content-Length: {len(raw)}\r\n\r\n"
    )
    return head.encode() + raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--core", type=int, default=0, help="the core every server is pinned to")
    args = parser.parse_args()
    cores = os.sched_getaffinity(0)
    load_core = next((c for c in sorted(cores) if c != args.core), args.core)
    os.sched_setaffinity(0, {load_core})  # the load generator stays off the servers' core
    have_rspamd = shutil.which("rspamd") is not None and Path("/etc/rspamd/rspamd.conf").is_file()
    if not have_rspamd:
        console.print("[yellow]rspamd is not installed (apt-get install rspamd): its rows are skipped[/yellow]")

    messages = sample_messages(Settings(), args.messages)
    # The same bytes to both: the JSON's `raw` is what Rspamd gets as the body.
    raws = [str(m["raw"]).encode("utf-8") for m in messages]
    results: dict[str, list[LoadResult]] = {"outguard": [], "Rspamd": [], "bare FastAPI": []}
    with contextlib.ExitStack() as stack:
        state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="outguard-vs-")))
        ports = {
            "outguard": stack.enter_context(running_uvicorn("service.app:app_from_environment", state, args.core)),
            "bare FastAPI": stack.enter_context(running_uvicorn("bench.bare_app:create_bare_app", state, args.core)),
        }
        if have_rspamd:
            ports["Rspamd"] = stack.enter_context(running_rspamd(state / "rspamd", args.core))
        requests = {
            name: [
                rspamd_request(port, message, raw)
                if name == "Rspamd"
                else encode_post("127.0.0.1", port, "/v1/score", orjson.dumps(message))
                for message, raw in zip(messages, raws, strict=True)
            ]
            for name, port in ports.items()
        }
        for round_number in range(args.rounds):
            for name, port in ports.items():
                if name == "Rspamd":
                    result = asyncio.run(run_load_closing(port, requests[name], args.connections, args.seconds))
                else:
                    result = asyncio.run(run_load("127.0.0.1", port, requests[name], args.connections, args.seconds))
                if result.errors:
                    raise RuntimeError(f"{name}: {result.errors} non-200 answers")
                results[name].append(result)
                console.print(f"round {round_number + 1} {name}: {result.rate:,.0f} messages/s")

    command = "python -m bench.vs_rspamd " + " ".join(sys.argv[1:])
    median = {name: statistics.median(r.rate for r in rs) for name, rs in results.items() if rs}
    table = Table(title=f"per core, the same {args.messages} raw messages ({command.strip()})")
    for column in ("server", "messages/s per round", "median", "p50 ms", "p99 ms", "x Rspamd"):
        table.add_column(column, justify="left" if column == "server" else "right")
    lines = [
        "| server | messages/s per round | median | p50 ms | p99 ms | x Rspamd |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, rs in results.items():
        if not rs:
            continue
        rounds = ", ".join(f"{r.rate:,.0f}" for r in rs)
        p50 = statistics.median(r.percentile(50) for r in rs)
        p99 = statistics.median(r.percentile(99) for r in rs)
        ratio = f"{median[name] / median['Rspamd']:.2f}" if "Rspamd" in median else ""
        table.add_row(name, rounds, f"{median[name]:,.0f}", f"{p50:.1f}", f"{p99:.1f}", ratio)
        lines.append(f"| {name} | {rounds} | {median[name]:,.0f} | {p50:.1f} | {p99:.1f} | {ratio} |")
    console.print(table)
    console.print(
        f"servers pinned to core {args.core}, load generator on core {load_core}; {args.connections} connections; "
        f"{args.rounds} interleaved rounds of {args.seconds:.0f}s; {os.cpu_count()} cores, "
        f"Python {platform.python_version()}."
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
