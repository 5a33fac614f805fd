"""The webhook outbox: subscriptions, durable pending deliveries, and the dispatcher that sends them.

`WebhookNotifier.announce` writes one outbox row per matching subscription, committed
before it returns: an event announced is an event that will be delivered, even across
a restart. The `Dispatcher` (a background task) sends due rows, signed, and records
every attempt; a failure is retried with exponential backoff and jitter up to
`webhook_max_attempts`, then marked failed. A row is marked delivered only after a 2xx,
so delivery is at least once; each payload carries its `id` for receivers to drop a
rare duplicate (a crash between a 2xx and its commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import sqlite3
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from service.settings import Settings
from service.stores import AccountKey
from service.stores.sqlite import SqliteDatabase, rows_as_dicts
from service.webhooks.signing import HEADER, sign
from service.webhooks.targets import RefusedTarget, check_target

log = logging.getLogger(__name__)

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
BATCH = 50
CONCURRENCY = 8
IDLE_POLL_S = 1.0


@dataclass(frozen=True, slots=True)
class Subscription:
    id: int
    url: str
    events: frozenset[str]
    secret: str
    description: str

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "url": self.url, "events": sorted(self.events), "description": self.description}


class WebhookStore:
    def __init__(self, database: SqliteDatabase) -> None:
        self.database = database
        rows = database.read_now(lambda c: c.execute("SELECT * FROM webhooks WHERE active = 1").fetchall())
        self._subscriptions = {r["id"]: _subscription(r) for r in rows}

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._subscriptions.values())

    async def create(self, url: str, events: list[str], description: str, secret: str | None) -> Subscription:
        secret = secret or secrets.token_urlsafe(32)
        row = (url, orjson.dumps(sorted(set(events))).decode(), secret, description, time.time())

        def insert(connection: sqlite3.Connection) -> int:
            sql = (
                "INSERT INTO webhooks (url, events, secret, description, active, created_at) VALUES (?, ?, ?, ?, 1, ?)"
            )
            return connection.execute(sql, row).lastrowid or 0

        webhook_id = await self.database.writer.submit(insert)
        subscription = Subscription(webhook_id, url, frozenset(events), secret, description)
        self._subscriptions[webhook_id] = subscription
        return subscription

    async def delete(self, webhook_id: int) -> bool:
        def deactivate(connection: sqlite3.Connection) -> bool:
            changed = connection.execute("UPDATE webhooks SET active = 0 WHERE id = ? AND active = 1", (webhook_id,))
            connection.execute(
                "UPDATE webhook_outbox SET status = ?, last_error = ? WHERE webhook_id = ? AND status = ?",
                (FAILED, "subscription deleted", webhook_id, PENDING),
            )
            return changed.rowcount == 1

        found = await self.database.writer.submit(deactivate)
        self._subscriptions.pop(webhook_id, None)
        return found

    async def enqueue(self, rows: list[tuple[int, str, str, bytes]]) -> None:
        now = time.time()
        values = [(w, event_id, kind, payload, PENDING, 0, now, now) for w, event_id, kind, payload in rows]

        def insert(connection: sqlite3.Connection) -> None:
            connection.executemany(
                "INSERT INTO webhook_outbox (webhook_id, event_id, event_type, payload, status, attempts, "
                "next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )

        await self.database.writer.submit(insert)

    async def due(self, now: float) -> list[dict[str, Any]]:
        def query(connection: sqlite3.Connection) -> list[dict[str, Any]]:
            cursor = connection.execute(
                "SELECT * FROM webhook_outbox WHERE status = ? AND next_attempt_at <= ? ORDER BY id LIMIT ?",
                (PENDING, now, BATCH),
            )
            return rows_as_dicts(cursor)

        return await self.database.read(query)

    async def record_attempt(
        self, row: dict[str, Any], status: str, next_at: float, code: int | None, error: str | None, ms: float
    ) -> None:
        now = time.time()

        def update(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT INTO webhook_attempts (outbox_id, ts, status_code, error, duration_ms) VALUES (?, ?, ?, ?, ?)",
                (row["id"], now, code, error, ms),
            )
            connection.execute(
                "UPDATE webhook_outbox SET status = ?, attempts = attempts + 1, next_attempt_at = ?, last_error = ?, "
                "delivered_at = ? WHERE id = ?",
                (status, next_at, error, now if status == DELIVERED else None, row["id"]),
            )

        await self.database.writer.submit(update)

    async def deliveries(self, webhook_id: int, limit: int = 100) -> list[dict[str, Any]]:
        def query(connection: sqlite3.Connection) -> list[dict[str, Any]]:
            outbox = rows_as_dicts(
                connection.execute(
                    "SELECT id, event_id, event_type, status, attempts, next_attempt_at, last_error, created_at, "
                    "delivered_at FROM webhook_outbox WHERE webhook_id = ? ORDER BY id DESC LIMIT ?",
                    (webhook_id, limit),
                )
            )
            for item in outbox:
                item["attempts_log"] = rows_as_dicts(
                    connection.execute(
                        "SELECT ts, status_code, error, duration_ms FROM webhook_attempts WHERE outbox_id = ? "
                        "ORDER BY id",
                        (item["id"],),
                    )
                )
            return outbox

        return await self.database.read(query)


def _subscription(row: sqlite3.Row) -> Subscription:
    return Subscription(
        row["id"], row["url"], frozenset(orjson.loads(row["events"])), row["secret"], row["description"]
    )


class WebhookNotifier:
    """Implements `service.notify.Notifier`: announcements become outbox rows."""

    def __init__(self, store: WebhookStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.wake = asyncio.Event()

    async def announce(self, event_type: str, key: AccountKey, payload: dict[str, Any]) -> None:
        subscribers = [s for s in self.store.subscriptions if event_type in s.events]
        if not subscribers:
            return
        event_id = f"evt_{uuid.uuid4().hex}"
        body = orjson.dumps(
            {
                "id": event_id,
                "type": event_type,
                "created": datetime.now(UTC).isoformat(),
                "relay": key.relay,
                "account": key.account,
                **payload,
                "incident_report": f"{self.settings.public_url}/v1/accounts/{quote(key.relay, safe='')}/"
                f"{quote(key.account, safe='')}/incident",
            },
            default=str,
        )
        await self.store.enqueue([(s.id, event_id, event_type, body) for s in subscribers])
        self.wake.set()


class Dispatcher:
    def __init__(self, store: WebhookStore, notifier: WebhookNotifier, settings: Settings) -> None:
        self.store = store
        self.notifier = notifier
        self.settings = settings
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self.settings.webhook_timeout_s, follow_redirects=False)
        self._task = asyncio.create_task(self._run(), name="webhook-dispatcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.aclose()

    async def _run(self) -> None:
        while True:
            try:
                sent = await self.run_once()
            except Exception:  # the dispatcher must outlive any one bad round
                log.exception("webhook dispatcher round failed")
                sent = 0
            if not sent:
                self.notifier.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.notifier.wake.wait(), IDLE_POLL_S)

    async def run_once(self) -> int:
        due = await self.store.due(time.time())
        if not due:
            return 0
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(row: dict[str, Any]) -> None:
            async with gate:
                await self._deliver(row)

        await asyncio.gather(*(one(row) for row in due))
        return len(due)

    def backoff(self, attempts: int) -> float:
        delay = min(self.settings.webhook_backoff_max_s, self.settings.webhook_backoff_s * 2**attempts)
        return delay * random.uniform(0.8, 1.2)  # jitter: retries of one outage do not arrive together

    async def _deliver(self, row: dict[str, Any]) -> None:
        subscription = next((s for s in self.store.subscriptions if s.id == row["webhook_id"]), None)
        if subscription is None:
            await self.store.record_attempt(row, FAILED, time.time(), None, "subscription deleted", 0.0)
            return
        started = time.perf_counter()
        code, error = None, None
        try:
            await check_target(subscription.url, self.settings.webhook_allow_private)
            body = bytes(row["payload"])
            headers = {
                "Content-Type": "application/json",
                HEADER: sign(subscription.secret, body, int(time.time())),
                "Outguard-Event": row["event_type"],
                "Outguard-Delivery": row["event_id"],
                "User-Agent": "outguard-webhooks/1",
            }
            assert self._client is not None
            response = await self._client.post(subscription.url, content=body, headers=headers)
            code = response.status_code
        except RefusedTarget as exc:
            ms = (time.perf_counter() - started) * 1000
            await self.store.record_attempt(row, FAILED, time.time(), None, str(exc), ms)
            return
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        ms = (time.perf_counter() - started) * 1000
        if code is not None and 200 <= code < 300:
            await self.store.record_attempt(row, DELIVERED, time.time(), code, None, ms)
            return
        error = error or f"HTTP {code}"
        attempts = row["attempts"] + 1
        if attempts >= self.settings.webhook_max_attempts:
            await self.store.record_attempt(row, FAILED, time.time(), code, error, ms)
        else:
            await self.store.record_attempt(row, PENDING, time.time() + self.backoff(attempts - 1), code, error, ms)
