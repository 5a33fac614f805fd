"""Training time against rows, for both engines (`python -m bench.training`).

The rows are real: the labelled messages of a replayed event log (`outguard replay
... --keep-events`), resampled with replacement to 100k, 1M and 5M training rows (the
validation and test splits stay as they are). Each (engine, size) trains in its own
process, a fixed 100 rounds (no early stop, so every run does the same work), and
reports wall time and that process's peak resident memory. The Dask engine runs on a
LocalCluster of 2 single-threaded workers on the same machine: it shows the overhead
of the distributed path, not a speed-up, which needs more machines.

Usage: python -m bench.training --events var/sim-train-big/events.db [--sizes 100000 1000000 5000000]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from features.spec import FEATURE_SPEC_VERSION
from models.bundle import DEFAULT_BUNDLE_DIR, load_bundle
from training.events import LabelPolicy, build_event_dataset
from training.train_events import EventTrainConfig, train_from_events

ROUNDS = 100
WRITE_CHUNK = 500_000


def resampled(source: Path, rows: int, out: Path, seed: int = 3) -> Path:
    """`source` with its train split resampled to `rows` rows (validation and test unchanged)."""
    if out.exists():
        return out
    table = pq.read_table(source)
    train = table.filter(pc.equal(table["split"], "train"))
    rest = table.filter(pc.not_equal(table["split"], "train"))
    rng = np.random.default_rng(seed)
    with pq.ParquetWriter(out, table.schema, compression="zstd") as writer:
        for start in range(0, rows, WRITE_CHUNK):
            picks = rng.integers(0, train.num_rows, size=min(WRITE_CHUNK, rows - start))
            writer.write_table(train.take(pa.array(picks)))
        writer.write_table(rest)
    return out


def train_once(engine: str, dataset: Path) -> dict[str, float]:
    base = load_bundle(DEFAULT_BUNDLE_DIR)
    config = EventTrainConfig(
        thresholds={"hold": 0.99, "reject": 0.999},
        engine=engine,  # type: ignore[arg-type]
        max_rounds=ROUNDS,
        early_stopping_rounds=ROUNDS,
    )
    started = time.perf_counter()
    bundle = train_from_events(dataset, base, config)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_rss_mb": peak_mb, "test_roc_auc": bundle.metrics["test"]["roc_auc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=Path, default=Path("var/sim-train-big/events.db"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 5_000_000])
    parser.add_argument("--engines", nargs="+", default=["local", "dask"])
    parser.add_argument("--work", type=Path, default=Path("var/bench-training"))
    parser.add_argument("--one", nargs=2, metavar=("ENGINE", "DATASET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(train_once(args.one[0], Path(args.one[1]))))
        return

    console = Console(width=160)
    args.work.mkdir(parents=True, exist_ok=True)
    summary = build_event_dataset([args.events], args.work / "source", LabelPolicy())
    console.log(f"source: {summary.rows} labelled rows from {args.events}")
    table = Table(title=f"training time against rows ({ROUNDS} rounds, feature spec {FEATURE_SPEC_VERSION})")
    for column in ("engine", "training rows", "seconds", "peak RSS MB", "test ROC AUC"):
        table.add_column(column, justify="right")
    for size in args.sizes:
        dataset = resampled(summary.path, size, args.work / f"train-{size}.parquet")
        for engine in args.engines:
            console.log(f"{engine}: {size:,} rows")
            done = subprocess.run(
                [sys.executable, "-m", "bench.training", "--one", engine, str(dataset)],
                check=True,
                capture_output=True,
                text=True,
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            table.add_row(
                engine,
                f"{size:,}",
                f"{result['seconds']:.1f}",
                f"{result['peak_rss_mb']:,.0f}",
                f"{result['test_roc_auc']:.4f}",
            )
    console.print(table)
    console.print(
        f"`python -m bench.training --events {args.events} --sizes {' '.join(map(str, args.sizes))}` "
        f"on {platform.node()} ({platform.processor() or platform.machine()}, Python {platform.python_version()})"
    )


if __name__ == "__main__":
    main()
