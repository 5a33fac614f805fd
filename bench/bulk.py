"""Bulk actions on 10,000 accounts, on each storage backend: a dry run, a lock by filter, an unlock by name.

    python -m bench.bulk [--accounts 10000]

Each backend gets a fresh database (SQLite file, or a PostgreSQL schema) and, with
Redis, a fresh key prefix. The accounts are seeded as recently scored ones are: a
scored message each in the event log, and their hot state. Each operation is one
`POST /v1/accounts/{relay}/bulk` through the app's HTTP stack (in process), timed from
request to answer; the lock and the unlock are recorded (one transaction) and applied
before the answer. The target (issue 20): 10,000 accounts in under 10 s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from fastapi.testclient import TestClient
from rich.console import Console
from rich.table import Table

from bench.backends import POSTGRES_URL, REDIS_URL, fresh_prefix, fresh_schema
from service.api.bulk import each
from service.app import create_app
from service.settings import PROJECT_ROOT, Settings
from service.stores import AccountKey, AccountState, ScoredEvent

console = Console(width=160)
RELAY = "bench"
DOMAIN = "bulk.example"
TARGET_S = 10.0


@contextlib.contextmanager
def backend_settings(name: str, state: Path) -> Iterator[Settings]:
    base = {"state_dir": state, "cache_dir": PROJECT_ROOT / ".cache"}
    if name == "sqlite":
        yield Settings(database_url=f"sqlite:///{state / 'outguard.db'}", **base)  # type: ignore[arg-type]
        return
    with contextlib.ExitStack() as stack:
        chosen: dict[str, object] = {"database_url": stack.enter_context(fresh_schema())}
        if name.endswith("+redis"):
            chosen |= {"redis_url": REDIS_URL, "redis_prefix": stack.enter_context(fresh_prefix())}
        yield Settings(**base, **chosen)  # type: ignore[arg-type]


def seed(client: TestClient, accounts: list[str]) -> None:
    """A scored message each (the event log), and hot state as scoring leaves it."""
    container = client.app.state.container  # type: ignore[attr-defined]
    now = time.time()
    for i, account in enumerate(accounts):
        event = ScoredEvent(
            now - 60, RELAY, account, "sasl", f"<b{i}@bench>", "bench", "bench", None, 0.9, 0.6, "hold", False
        )
        client.portal.call(container.events.append, event)
    client.portal.call(container.events.flush)

    async def put(account: str) -> None:
        state = AccountState(evidence=1.0, messages_scored=1, last_scored=now - 60)
        await container.accounts.put(AccountKey(RELAY, account), state)

    client.portal.call(each, accounts, put)


def timed(client: TestClient, body: dict[str, object], expected: int) -> tuple[float, int]:
    started = time.perf_counter()
    response = client.post(f"/v1/accounts/{RELAY}/bulk", json={"reason": "bench", **body})
    elapsed = time.perf_counter() - started
    if response.status_code not in (200, 201) or response.json()["changed"] != expected:
        raise SystemExit(f"bulk {body.get('action')} answered {response.status_code}: {response.text[:300]}")
    return elapsed, response.json()["changed"]


def run_backend(name: str, count: int) -> list[tuple[str, str, int, float]]:
    accounts = [f"user{i:05d}@{DOMAIN}" for i in range(count)]
    rows = []
    by_domain = {"filter": {"domain": DOMAIN}}
    with contextlib.ExitStack() as stack:
        settings = stack.enter_context(backend_settings(name, Path(stack.enter_context(tempfile.TemporaryDirectory()))))
        client = stack.enter_context(TestClient(create_app(settings)))
        seed(client, accounts)
        for label, body in (
            ("dry run: lock by filter (domain)", {"action": "lock", "dry_run": True, **by_domain}),
            ("lock by filter (domain)", {"action": "lock", **by_domain}),
            ("unlock by name (accounts list)", {"action": "unlock", "accounts": accounts}),
        ):
            seconds, changed = timed(client, body, count)
            rows.append((name, label, changed, seconds))
    return rows


def reachable() -> list[str]:
    backends = ["sqlite"]
    try:
        from sqlalchemy import create_engine, text

        from service.stores.database import normalise_url

        engine = create_engine(normalise_url(POSTGRES_URL))
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
        backends.append("postgresql")
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
        backends.append("postgresql+redis")
    except Exception as error:  # a bench on this machine: run what is there, say what is not
        console.print(f"[yellow]skipping backends that are not reachable: {type(error).__name__}[/yellow]")
    return backends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=10_000)
    args = parser.parse_args()
    if args.accounts < 1:
        parser.error("--accounts must be at least 1")
    command = "python -m bench.bulk " + " ".join(sys.argv[1:])
    table = Table(title=f"bulk actions ({command.strip()}; {os.cpu_count()} cores; target {TARGET_S:.0f} s)")
    for column in ("backend", "operation", "accounts changed", "seconds", "accounts/s", "within target"):
        table.add_column(column, justify="left" if column in ("backend", "operation") else "right")
    for backend in reachable():
        for name, label, changed, seconds in run_backend(backend, args.accounts):
            ok = "yes" if seconds < TARGET_S else "NO"
            table.add_row(name, label, f"{changed:,}", f"{seconds:.2f}", f"{changed / seconds:,.0f}", ok)
    console.print(table)


if __name__ == "__main__":
    main()
