"""Fingerprint rows for `make bench`: signature lookups/s and memory by size, and the cost per scored message.

- The signature database filled to 100k and 1M entries (random fingerprints, loaded
  as at start), then queried with near copies of stored entries (hits) and with
  unrelated fingerprints (misses): lookups/s, microseconds per lookup, the bytes
  its arrays hold and the process's resident memory growth.
- The scoring path in process, one message per call, with fingerprints on and off
  over the same corpus sample: what fingerprinting, the signature lookup and the
  campaign tracker add per message.

Usage: python -m bench.fingerprints [--sizes 100000 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from features.fingerprint import NUM_PERM, Fingerprint
from service.fingerprints.signatures import SignatureDb, StoredSignature

console = Console(width=160)


@dataclass(slots=True)
class LookupRow:
    signatures: int
    lookups_per_s: float
    hit_us: float
    miss_us: float
    array_mb: float
    rss_mb: float
    load_s: float


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * 4096 / 1e6


def bench_lookups(size: int, queries: int = 20_000, seed: int = 5) -> LookupRow:
    rng = np.random.default_rng(seed)
    gc.collect()
    before = _rss_mb()
    values = rng.integers(0, 2**32, size=(size, NUM_PERM), dtype=np.uint32)
    signatures = [StoredSignature(i + 1, Fingerprint(values[i]), "bench", 0.0, 1e12) for i in range(size)]
    started = time.perf_counter()
    db = SignatureDb(capacity=size, ttl_seconds=1e12, min_similarity=0.6)
    db.load_many(signatures)
    load_s = time.perf_counter() - started
    del signatures
    gc.collect()
    rss = _rss_mb() - before - values.nbytes / 1e6  # the source array is the benchmark's, not the database's

    picks = rng.integers(0, size, size=queries)
    hits = []
    for k in picks:
        copy = values[k].copy()
        changed = rng.choice(NUM_PERM, size=12, replace=False)
        copy[changed] ^= np.uint32(0xFFFF)
        hits.append(Fingerprint(copy))
    misses = [Fingerprint(v) for v in rng.integers(0, 2**32, size=(queries, NUM_PERM), dtype=np.uint32)]

    def timed(batch: list[Fingerprint]) -> tuple[float, int]:
        found = 0
        t0 = time.perf_counter()
        for fingerprint in batch:
            found += db.match(fingerprint, now=1.0) is not None
        return time.perf_counter() - t0, found

    hit_s, hit_found = timed(hits)
    miss_s, miss_found = timed(misses)
    assert hit_found >= 0.95 * queries, f"only {hit_found} of {queries} near copies found"
    assert miss_found == 0
    return LookupRow(
        signatures=size,
        lookups_per_s=2 * queries / (hit_s + miss_s),
        hit_us=hit_s / queries * 1e6,
        miss_us=miss_s / queries * 1e6,
        array_mb=db.nbytes / 1e6,
        rss_mb=rss,
        load_s=load_s,
    )


@dataclass(slots=True)
class CostRow:
    fingerprints: str
    messages_per_s: float
    us_per_message: float


def bench_scoring_cost(messages: list[dict[str, object]], state: Path) -> list[CostRow]:
    from bench.run import BENCH_POLICY, _inputs
    from service.container import Container, build_container
    from service.settings import Settings

    rows = []
    inputs = _inputs(messages)
    for enabled in (False, True):
        settings = Settings().model_copy(
            update={
                "database_url": f"sqlite:///{state / f'cost-{enabled}.db'}",
                "state_dir": state,
                "relay_policies": json.loads(BENCH_POLICY),
                "fingerprints": enabled,
            }
        )
        container = build_container(settings)

        async def run(container: Container) -> float:
            for message in inputs[:50]:  # warm caches and the first merge
                await container.scorer.score([message])
            started = time.perf_counter()
            for message in inputs:
                await container.scorer.score([message])
            return time.perf_counter() - started

        try:
            elapsed = asyncio.run(run(container))
        finally:
            container.close()
        rows.append(CostRow("on" if enabled else "off", len(inputs) / elapsed, elapsed / len(inputs) * 1e6))
    return rows


def print_tables(lookups: list[LookupRow], costs: list[CostRow], command: str) -> None:
    table = Table(title=f"signature database lookups ({command})")
    for column in ("signatures", "lookups/s", "µs hit", "µs miss", "arrays MB", "RSS growth MB", "load s"):
        table.add_column(column, justify="right")
    for r in lookups:
        table.add_row(
            f"{r.signatures:,}",
            f"{r.lookups_per_s:,.0f}",
            f"{r.hit_us:.1f}",
            f"{r.miss_us:.1f}",
            f"{r.array_mb:.0f}",
            f"{r.rss_mb:.0f}",
            f"{r.load_s:.1f}",
        )
    console.print(table)
    if costs:
        cost = Table(title="scoring in process, one message per call, fingerprints off and on")
        for column in ("fingerprints", "messages/s", "µs per message"):
            cost.add_column(column, justify="right")
        for c in costs:
            cost.add_row(c.fingerprints, f"{c.messages_per_s:,.0f}", f"{c.us_per_message:,.0f}")
        console.print(cost)
        off, on = costs[0].us_per_message, costs[-1].us_per_message
        console.print(f"fingerprints add {on - off:,.0f} µs per scored message")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--messages", type=int, default=2_000)
    args = parser.parse_args()
    import tempfile

    from bench.run import sample_messages
    from service.settings import Settings

    lookups = [bench_lookups(size) for size in args.sizes]
    with tempfile.TemporaryDirectory(prefix="outguard-bench-fp-") as tmp:
        costs = bench_scoring_cost(sample_messages(Settings(), args.messages), Path(tmp))
    command = "python -m bench.fingerprints " + " ".join(sys.argv[1:]) if sys.argv[1:] else "make bench"
    print_tables(lookups, costs, command)


if __name__ == "__main__":
    main()
