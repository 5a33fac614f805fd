"""`make bench`: what malware scanning costs, with and without clamd, on mail with and without attachments.

The same corpus sample (SpamAssassin and TREC) scored in process (`Scorer.score`), one
message per call and 100 per call, four ways: without clamd and with it (a private clamd
on a unix socket, `service.scanning.private`), each on the messages as they are (text
only: not sent to clamd) and on the same messages with a ZIP attachment added (about
60 KB: a 150 KB document inside; clamd unpacks it). A last row times clamd alone on the
attachment messages (`ClamdClient.instream`, one at a time), to set against what the
attachment rows add: the scan runs while the features are computed, so a message pays
only for the part of the scan that outlasts its features.

The private clamd loads two test signatures, not ClamAV's official database (about six
million, which this machine cannot download): with the real database each scan costs
more, and so does clamd's memory (about 1 GB).

Usage: python -m bench.clamav [--messages 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import random
import re
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.run import BATCH, BENCH_POLICY, _inputs, sample_messages
from service.container import build_container
from service.scanning import has_attachment
from service.scanning.clamd import ClamdAddress, ClamdClient
from service.scanning.private import clamd_binary, private_clamd
from service.scoring import MessageInput
from service.settings import Settings

console = Console(width=160)
_CONTENT_HEADERS = re.compile(r"^(content-type|content-transfer-encoding|mime-version):", re.IGNORECASE)


@dataclass(slots=True)
class Row:
    clamd: str
    messages: str
    unit: str
    messages_per_s: float
    p50_ms: float
    p99_ms: float


def attachment(seed: int = 11) -> bytes:
    """A ZIP archive of about 60 KB holding a 150 KB document of words (what an invoice or a CV weighs)."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(4000)]
    text = " ".join(rng.choice(words) for _ in range(25_000)).encode()[:150_000]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("invoice-2026-11.txt", text)
    return buffer.getvalue()


def with_attachment(raw: str, data: bytes, filename: str = "invoice.zip") -> str:
    """The same message as multipart/mixed: its own body as the first part, `data` attached after it."""
    head, separator, body = raw.replace("\r\n", "\n").partition("\n\n")
    fields = re.split(r"\n(?![ \t])", head)  # one entry per header field, its folded lines with it
    part_headers = [f for f in fields if _CONTENT_HEADERS.match(f) and not f.lower().startswith("mime-version:")]
    boundary = "=_outguard_bench_boundary"
    lines = [
        *(f for f in fields if not _CONTENT_HEADERS.match(f)),
        "MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
        "",
        f"--{boundary}",
        *(part_headers or ["Content-Type: text/plain; charset=us-ascii"]),
        "",
        body if separator else "",
        f"--{boundary}",
        f'Content-Type: application/zip; name="{filename}"',
        f'Content-Disposition: attachment; filename="{filename}"',
        "Content-Transfer-Encoding: base64",
        "",
        base64.encodebytes(data).decode().rstrip("\n"),
        f"--{boundary}--",
        "",
    ]
    return "\n".join(lines).replace("\n", "\r\n")


def split_sample(messages: list[dict[str, object]]) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """(the messages with nothing to scan, the same messages with the ZIP attached)."""
    plain = [m for m in messages if not has_attachment(str(m["raw"]).encode("utf-8", "surrogateescape"))]
    data = attachment()
    attached = [
        {**m, "message_id": f"<att-{m['message_id']}>", "raw": with_attachment(str(m["raw"]), data)} for m in plain
    ]
    return plain, attached


def timed_scoring(settings: Settings, inputs: list[MessageInput], size: int) -> tuple[float, np.ndarray]:
    container = build_container(settings)

    async def run() -> tuple[float, np.ndarray]:
        for i in range(0, min(len(inputs), 50)):  # warm caches, the first clamd connections
            await container.scorer.score([inputs[i]])
        latencies = []
        started = time.perf_counter()
        for i in range(0, len(inputs), size):
            t0 = time.perf_counter()
            await container.scorer.score(inputs[i : i + size])
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
        if container.scanner is not None:
            await container.scanner.close()
        return elapsed, np.array(latencies) * 1000

    try:
        return asyncio.run(run())
    finally:
        container.close()


def clamd_alone(spec: str, raws: list[bytes]) -> tuple[float, np.ndarray]:
    """clamd's own time on the attachment messages, one INSTREAM at a time."""
    client = ClamdClient(ClamdAddress.parse(spec))

    async def run() -> tuple[float, np.ndarray]:
        for raw in raws[:20]:
            await client.instream(raw)
        latencies = []
        started = time.perf_counter()
        for raw in raws:
            t0 = time.perf_counter()
            verdict = await client.instream(raw)
            latencies.append(time.perf_counter() - t0)
            assert verdict.signature is None
        return time.perf_counter() - started, np.array(latencies) * 1000

    return asyncio.run(run())


def bench(messages: list[dict[str, object]], state: Path, rounds: int) -> tuple[list[Row], int]:
    """The rows, and how many messages each set has.

    The conditions take turns, `rounds` times over, and each row pools its rounds: on a
    shared machine, whatever else runs weighs on every condition alike.
    """
    plain, attached = split_sample(messages)
    sets = {"text only": _inputs(plain), "with attachment": _inputs(attached)}
    raws = [str(m["raw"]).encode("utf-8", "surrogateescape") for m in attached]
    conditions = [
        (label, kind, unit, size)
        for label in ("off", "on")
        for kind in sets
        for unit, size in (("single", 1), (f"batch of {BATCH}", BATCH))
    ]
    totals: dict[tuple[str, str, str], list[float]] = {}
    latencies: dict[tuple[str, str, str], list[np.ndarray]] = {}
    with private_clamd() as clamd:
        for turn in range(rounds):
            for label, kind, unit, size in conditions:
                settings = Settings().model_copy(
                    update={
                        "database_url": f"sqlite:///{state / f'clamav-{turn}-{label}-{kind[:4]}-{size}.db'}",
                        "state_dir": state,
                        "relay_policies": json.loads(BENCH_POLICY),
                        "clamd": clamd.spec if label == "on" else None,
                    }
                )
                elapsed, lat = timed_scoring(settings, sets[kind], size)
                totals.setdefault((label, kind, unit), []).append(elapsed)
                latencies.setdefault((label, kind, unit), []).append(lat)
            elapsed, lat = clamd_alone(clamd.spec, raws)
            totals.setdefault(("clamd alone", "with attachment", "INSTREAM"), []).append(elapsed)
            latencies.setdefault(("clamd alone", "with attachment", "INSTREAM"), []).append(lat)
    rows = []
    for key, elapsed_s in totals.items():
        pooled = np.concatenate(latencies[key])
        count = len(attached) * len(elapsed_s)
        rows.append(Row(*key, count / sum(elapsed_s), *np.percentile(pooled, [50, 99])))
    return rows, len(plain)


def print_table(rows: list[Row], command: str, count: int, rounds: int) -> None:
    table = Table(title=f"malware scanning with clamd, in process ({command})")
    for column in ("clamd", "messages", "unit", "messages/s", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column in ("clamd", "messages", "unit") else "right", no_wrap=True)
    for r in rows:
        table.add_row(r.clamd, r.messages, r.unit, f"{r.messages_per_s:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}")
    console.print(table)
    console.print(
        f"{count} corpus messages without attachments, and the same with a {len(attachment()) // 1024} KB ZIP "
        f"attached, {rounds} rounds in turns; p50/p99 per call. clamd: a private one, two test signatures "
        f"(not ClamAV's database), MaxThreads 4; {os.cpu_count()} cores, Python {platform.python_version()}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3, help="times each condition runs, in turns")
    args = parser.parse_args()
    if clamd_binary() is None:
        console.print("bench.clamav: clamd is not installed (apt-get install clamav-daemon): skipped")
        return
    messages = sample_messages(Settings(), args.messages)
    with tempfile.TemporaryDirectory(prefix="outguard-bench-clamav-") as tmp:
        rows, count = bench(messages, Path(tmp), args.rounds)
    command = "python -m bench.clamav " + " ".join(sys.argv[1:]) if sys.argv[1:] else "make bench"
    print_table(rows, command, count, args.rounds)


if __name__ == "__main__":
    main()
