"""Report and dashboard queries against a real event log (`python -m bench.reports`).

Times the outbound report (JSON page and full CSV), the dashboard's overview series and
one account's timeline, each over the whole log, on a copy of a replayed log
(`outguard replay ... --keep-events`).

It also measures what the time indexes cost the event log's writes: 200,000 scored
events inserted in group commits of 500, with and without the `ts` index.

Usage: python -m bench.reports --events var/sim-train-big/events.db
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from service.dashboard.data import account_timeline, overview, period_ending_at_newest
from service.reports.outbound import GroupBy, OutboundQuery, iter_outbound, outbound_rows
from service.stores.database import Database

HOLD = 0.99


def timed(run: Callable[[], object], repeat: int = 3) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return best * 1000, result


def insert_rate(with_ts_index: bool, rows: int = 200_000) -> float:
    """Scored events per second into a fresh log, in group commits of 500 as the writer does under load."""
    with tempfile.TemporaryDirectory() as tmp:
        Database(Path(tmp) / "x.db", 10).close()
        connection = sqlite3.connect(Path(tmp) / "x.db")
        connection.execute("PRAGMA synchronous=NORMAL")
        if not with_ts_index:
            connection.execute("DROP INDEX scored_messages_ts")
        features = json.dumps([0.1] * 89).encode()
        sql = (
            "INSERT INTO scored_messages (ts, relay, account, identity_source, message_id, model_version, "
            "feature_spec_version, features, spam_probability, account_risk, action, lock_recommended, "
            "recipients_hashed, scored_at) VALUES (?, 'r1', ?, 'sasl', ?, 'v', '3', ?, 0.1, 0, 'accept', 0, '[]', 0)"
        )
        values = [(1.7e9 + i * 0.5, f"u{i % 2_000}", f"<m{i}@x>", features) for i in range(rows)]
        started = time.perf_counter()
        for start in range(0, rows, 500):
            connection.executemany(sql, values[start : start + 500])
            connection.commit()
        rate = rows / (time.perf_counter() - started)
        connection.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=Path, default=Path("var/sim-train-big/events.db"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "events.db"
        shutil.copy(args.events, copy)
        Database(copy, 10).close()  # bring an older log's schema (and indexes) up to date
        connection = sqlite3.connect(copy)
        messages, start, end = connection.execute(
            "SELECT count(*), min(ts), max(ts) + 1 FROM scored_messages"
        ).fetchone()
        table = Table(title=f"reports over {messages:,} scored messages ({(end - start) / 86_400:.1f} days)")
        for column in ("query", "rows", "ms (best of 3)"):
            table.add_column(column, justify="right")
        for group in GroupBy:
            query = OutboundQuery(start, end, group, limit=100, hold_threshold=HOLD)
            ms, rows = timed(lambda q=query: outbound_rows(connection, q))
            table.add_row(f"outbound, by {group.value}, first page of 100", f"{len(rows):,}", f"{ms:.0f}")

        day = OutboundQuery(end - 86_400, end, GroupBy.ACCOUNT, limit=100, hold_threshold=HOLD)
        ms, rows = timed(lambda: outbound_rows(connection, day))
        table.add_row("outbound, by account, last 24 h, first page", f"{len(rows):,}", f"{ms:.0f}")

        def full_csv() -> int:
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\r\n")
            count = 0
            for page in iter_outbound(connection, OutboundQuery(start, end, GroupBy.ACCOUNT, limit=None)):
                writer.writerows(page)
                count += len(page)
            return count

        ms, count = timed(full_csv)
        table.add_row("outbound CSV, every account", f"{count:,}", f"{ms:.0f}")
        period = period_ending_at_newest(connection, (end - start) / 86_400, time.time())
        ms, _ = timed(lambda: overview(connection, period, HOLD))
        table.add_row("dashboard overview series", f"{period.buckets} bars", f"{ms:.0f}")
        relay, account = connection.execute(
            "SELECT relay, account FROM scored_messages GROUP BY 1, 2 ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()
        ms, timeline = timed(lambda: account_timeline(connection, relay, account, period))
        table.add_row("dashboard account timeline (busiest account)", f"{timeline['messages']:,} messages", f"{ms:.0f}")
        connection.close()
    console = Console(width=120)
    console.print(table)
    writes = Table(title="event-log writes (200,000 scored events, group commits of 500, best of 2)")
    for column in ("ts index", "events/s"):
        writes.add_column(column, justify="right")
    for indexed in (False, True):
        writes.add_row("yes" if indexed else "no", f"{max(insert_rate(indexed) for _ in range(2)):,.0f}")
    console.print(writes)
    print(f"python -m bench.reports --events {args.events}")


if __name__ == "__main__":
    main()
