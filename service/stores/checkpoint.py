"""The embedded default's hot state on disk: account windows, engagement and evidence survive a restart.

Without Redis, each account's behaviour windows, engagement counts and decision state
(evidence, messages scored, templates, rate-limit tokens) live in the process
(`service.stores.memory`). This module checkpoints them to a SQLite file of their own
(`<state_dir>/hot-state.sqlite`), so that a restart, such as the one a policy change
needs, does not reset every account: a hijacked mailbox halfway to its lock is still
halfway after it.

- **What is written, and when:** only the accounts changed since the last checkpoint,
  every `OUTGUARD_CHECKPOINT_INTERVAL_S` (30 s) and once more at shutdown. A crash
  loses at most the last interval's changes to these counts; every lifecycle change
  (locks, rate limits, allowlisting) is in the database's ledger before it takes
  effect, as always, and wins over the checkpoint.
- **Off the event loop:** the changed accounts are encoded on the event loop in slices
  of `SLICE` accounts (a few milliseconds each, so requests interleave), and written
  in a worker thread, in one transaction.
- **At start:** the checkpoint is restored before the ledger's statuses. An account
  whose status the ledger recorded after its checkpoint (an admin's reset or unlock,
  say) takes the ledger's state; for the others the ledger's lifecycle fields are laid
  over the checkpoint's.
- **Which database:** the file records the database's instance id (`service_settings`);
  a checkpoint taken against another database, or in another format, is discarded.

The message index (for matching feedback) is not kept: feedback about a message
scored before the restart is matched from the scored-message log instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import text

from features.behaviour import DecayedRate
from features.engagement import DecayedCounts
from service.stores import AccountKey, AccountState, AccountStatus
from service.stores.database import Database
from service.stores.memory import (
    AccountWindows,
    BucketWindow,
    MemoryAccountStateStore,
    MemoryBehaviourStore,
    MemoryEngagementStore,
)

log = logging.getLogger(__name__)

FILE_NAME = "hot-state.sqlite"
FORMAT = "1"
SLICE = 500  # accounts encoded per turn of the event loop
_STATE_FIELDS = frozenset(f.name for f in fields(AccountState))
_LIFECYCLE = ("status", "locked_until", "temporary_locks", "allowlisted", "lock_reason")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS accounts (relay TEXT NOT NULL, account TEXT NOT NULL, seq INTEGER NOT NULL, "
    "saved_at REAL NOT NULL, windows BLOB, engagement BLOB, state BLOB, PRIMARY KEY (relay, account))",
)
# A save never overwrites a later one (a save cancelled at shutdown may finish in its thread after the last).
_UPSERT = (
    "INSERT INTO accounts (relay, account, seq, saved_at, windows, engagement, state) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (relay, account) DO UPDATE SET seq = excluded.seq, saved_at = excluded.saved_at, "
    "windows = excluded.windows, engagement = excluded.engagement, state = excluded.state "
    "WHERE excluded.seq >= accounts.seq"
)
_DELETE = "DELETE FROM accounts WHERE relay = ? AND account = ? AND seq <= ?"


# -- encoding: plain JSON of each structure's fields (bucket sizes included, so a change of them is noticed)


def _encode_bucket(window: BucketWindow) -> list[Any]:
    return [window.bucket_seconds, window.buckets, [[b, m, r] for b, (m, r) in window.counts.items()]]


def _decode_bucket(window: BucketWindow, data: list[Any]) -> None:
    bucket_seconds, buckets, counts = data
    if (bucket_seconds, buckets) == (window.bucket_seconds, window.buckets):
        window.counts = {int(b): [int(m), int(r)] for b, m, r in counts}


def encode_windows(windows: AccountWindows) -> bytes:
    return orjson.dumps(
        {
            "m": _encode_bucket(windows.minute),
            "h": _encode_bucket(windows.hour),
            "d": _encode_bucket(windows.day),
            "b": [windows.baseline.count, windows.baseline.last, windows.baseline.first],
            "rd": list(windows.recipient_domains.seen.items()),
            "ip": list(windows.client_ips.seen.items()),
            "kd": list(windows.known_domains),
        }
    )


def decode_windows(raw: bytes) -> AccountWindows:
    data = orjson.loads(raw)
    windows = AccountWindows()
    _decode_bucket(windows.minute, data["m"])
    _decode_bucket(windows.hour, data["h"])
    _decode_bucket(windows.day, data["d"])
    count, last, first = data["b"]
    windows.baseline = DecayedRate(count, last, first)
    for values, stored in ((windows.recipient_domains, data["rd"]), (windows.client_ips, data["ip"])):
        values.seen = OrderedDict((value, float(ts)) for value, ts in stored[-values.cap :])
    windows.known_domains = OrderedDict.fromkeys(data["kd"])
    return windows


def encode_engagement(counts: DecayedCounts) -> bytes:
    return orjson.dumps({"l": counts.last, "v": counts.values})


def decode_engagement(raw: bytes) -> DecayedCounts:
    data = orjson.loads(raw)
    return DecayedCounts(values={str(k): float(v) for k, v in data["v"].items()}, last=data["l"])


def encode_state(state: AccountState) -> bytes:
    return orjson.dumps(asdict(state))


def decode_state(raw: bytes) -> AccountState:
    data = orjson.loads(raw)
    state = AccountState(**{name: value for name, value in data.items() if name in _STATE_FIELDS})
    state.status = AccountStatus(state.status)
    state.lock_signatures = tuple(state.lock_signatures)
    return state


@dataclass(frozen=True, slots=True)
class _Row:
    key: AccountKey
    windows: bytes | None
    engagement: bytes | None
    state: bytes | None

    @property
    def held(self) -> bool:
        return self.windows is not None or self.engagement is not None or self.state is not None


def ledger_times(database: Database) -> dict[AccountKey, float]:
    """When the ledger last recorded each account's status (wall clock)."""
    rows = database.read_now(lambda c: c.execute(text("SELECT relay, account, updated_at FROM account_status")).all())
    return {AccountKey(relay, account): float(at) for relay, account, at in rows}


class Checkpoint:
    """Writes the in-process stores' changed accounts to a SQLite file, and restores them at start."""

    def __init__(
        self,
        path: Path,
        instance: str,
        behaviour: MemoryBehaviourStore,
        engagement: MemoryEngagementStore,
        accounts: MemoryAccountStateStore,
    ) -> None:
        self.path = path
        self.instance = instance
        self.behaviour = behaviour
        self.engagement = engagement
        self.accounts = accounts
        self._seq = 0
        self._retry: set[AccountKey] = set()  # accounts of a save that failed: written with the next one
        self._saving = asyncio.Lock()
        self.saved_accounts = 0  # in the last save, for the log and tests

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            for statement in _SCHEMA:
                connection.execute(statement)
            yield connection
        finally:
            connection.close()

    def _stores(self) -> tuple[MemoryBehaviourStore, MemoryEngagementStore, MemoryAccountStateStore]:
        return self.behaviour, self.engagement, self.accounts

    # -- start

    def restore(self, ledger: dict[AccountKey, AccountState], recorded_at: dict[AccountKey, float]) -> int:
        """Load the checkpoint, then the ledger's statuses over it; how many accounts came from the checkpoint.

        Synchronous: at start, before requests. Changes are tracked from here on.
        """
        started = time.perf_counter()
        restored: dict[AccountKey, float] = {}
        with self._connect() as connection:
            meta = dict(connection.execute("SELECT name, value FROM meta").fetchall())
            if meta and (meta.get("format"), meta.get("instance")) != (FORMAT, self.instance):
                log.warning("hot-state checkpoint at %s is of another database or format: not restored", self.path)
                connection.execute("DELETE FROM accounts")
            else:
                rows = connection.execute(
                    "SELECT relay, account, seq, saved_at, windows, engagement, state FROM accounts ORDER BY seq"
                )
                for relay, account, seq, saved_at, windows, engagement, state in rows:
                    key = AccountKey(relay, account)
                    if windows is not None:
                        self.behaviour.load(key, decode_windows(windows))
                    if engagement is not None:
                        self.engagement.load(key, decode_engagement(engagement))
                    if state is not None:
                        self.accounts.load(key, decode_state(state))
                    restored[key] = saved_at
                    self._seq = max(self._seq, seq)
            connection.execute("BEGIN")
            connection.execute("DELETE FROM meta")
            connection.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?)", [("format", FORMAT), ("instance", self.instance)]
            )
            connection.execute("COMMIT")
        for key, stored in ledger.items():
            checkpointed = self.accounts.peek(key) if key in restored else None
            if checkpointed is None or recorded_at.get(key, float("inf")) > restored[key]:
                self.accounts.restore(key, stored)  # recorded since the checkpoint: the ledger's word
            else:
                for name in _LIFECYCLE:
                    setattr(checkpointed, name, getattr(stored, name))
        for store in self._stores():
            store.track_changes()
        if restored:
            log.info(
                "restored %d accounts' windows and evidence from %s in %.1f s",
                len(restored),
                self.path,
                time.perf_counter() - started,
            )
        return len(restored)

    # -- running

    async def save(self) -> int:
        """Write the accounts changed since the last save; how many. Encoded in slices, written in a thread."""
        async with self._saving:
            changed = set(self._retry)
            for store in self._stores():
                changed |= store.track_changes()
            self._retry.clear()
            if not changed:
                self.saved_accounts = 0
                return 0
            self._seq += 1
            try:
                rows: list[_Row] = []
                pending = list(changed)
                for start in range(0, len(pending), SLICE):
                    if start:
                        await asyncio.sleep(0)  # let requests in between slices
                    rows.extend(self._encode(key) for key in pending[start : start + SLICE])
                await asyncio.to_thread(self._write, rows, self._seq, time.time())
            except BaseException:  # failed or cancelled: these accounts go with the next save
                self._retry |= changed
                raise
            self.saved_accounts = len(rows)
            return len(rows)

    def _encode(self, key: AccountKey) -> _Row:
        windows = self.behaviour.peek(key)
        engagement = self.engagement.peek(key)
        state = self.accounts.peek(key)
        return _Row(
            key,
            encode_windows(windows) if windows is not None else None,
            encode_engagement(engagement) if engagement is not None else None,
            encode_state(state) if state is not None else None,
        )

    def _write(self, rows: list[_Row], seq: int, saved_at: float) -> None:
        with self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.executemany(
                    _UPSERT,
                    [
                        (r.key.relay, r.key.account, seq, saved_at, r.windows, r.engagement, r.state)
                        for r in rows
                        if r.held
                    ],
                )
                connection.executemany(_DELETE, [(r.key.relay, r.key.account, seq) for r in rows if not r.held])
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    async def run(self, interval_s: float) -> None:
        """Save every `interval_s` until cancelled; a failed save is logged and retried with the next."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.save()
            except (sqlite3.Error, OSError) as error:
                log.warning("hot-state checkpoint failed, retried in %.0f s: %s", interval_s, error)
