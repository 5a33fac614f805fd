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
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import orjson
from sqlalchemy import Connection, text

from service.notify import NOTICE_CHANNEL
from service.settings import Settings
from service.stores import AccountKey
from service.stores.database import Database, mappings
from service.webhooks.signing import HEADER, sign
from service.webhooks.targets import RefusedTarget, check_target

if TYPE_CHECKING:
    from service.reports.links import ReportLinks
    from service.reports.notice import LockNotices

log = logging.getLogger(__name__)

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
BATCH = 50
CONCURRENCY = 8
IDLE_POLL_S = 1.0
# How long a claimed delivery is this process's before another may retry it.
CLAIM_LEASE_S = 120.0


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
    def __init__(self, database: Database) -> None:
        self.database = database
        self._subscriptions = database.read_now(_active)

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._subscriptions.values())

    async def refresh(self) -> None:
        """Pick up subscriptions other replicas made or deleted."""
        self._subscriptions = await self.database.read(_active)

    async def create(self, url: str, events: list[str], description: str, secret: str | None) -> Subscription:
        secret = secret or secrets.token_urlsafe(32)
        row = {
            "url": url,
            "events": orjson.dumps(sorted(set(events))).decode(),
            "secret": secret,
            "description": description,
            "at": time.time(),
        }
        insert = text(
            "INSERT INTO webhooks (url, events, secret, description, active, created_at) "
            "VALUES (:url, :events, :secret, :description, 1, :at) RETURNING id"
        )
        webhook_id = await self.database.writer.submit(lambda c: int(c.execute(insert, row).scalar_one()))
        subscription = Subscription(webhook_id, url, frozenset(events), secret, description)
        self._subscriptions = self._subscriptions | {webhook_id: subscription}
        return subscription

    async def delete(self, webhook_id: int) -> bool:
        def deactivate(connection: Connection) -> bool:
            changed = connection.execute(
                text("UPDATE webhooks SET active = 0 WHERE id = :id AND active = 1 RETURNING id"), {"id": webhook_id}
            ).first()
            connection.execute(
                text(
                    "UPDATE webhook_outbox SET status = :failed, last_error = 'subscription deleted' "
                    "WHERE webhook_id = :id AND status = :pending"
                ),
                {"failed": FAILED, "pending": PENDING, "id": webhook_id},
            )
            return changed is not None

        found = await self.database.writer.submit(deactivate)
        self._subscriptions = {i: s for i, s in self._subscriptions.items() if i != webhook_id}
        return found

    async def enqueue(self, rows: list[tuple[int, str, str, bytes]]) -> None:
        now = time.time()
        values = [
            {
                "webhook_id": w,
                "event_id": event_id,
                "event_type": kind,
                "payload": payload,
                "status": PENDING,
                "at": now,
            }
            for w, event_id, kind, payload in rows
        ]
        insert = text(
            "INSERT INTO webhook_outbox (webhook_id, event_id, event_type, payload, status, attempts, "
            "next_attempt_at, created_at) VALUES (:webhook_id, :event_id, :event_type, :payload, :status, 0, :at, :at)"
        )
        await self.database.writer.submit(lambda c: c.execute(insert, values))

    async def claim(self, now: float, lease_s: float = CLAIM_LEASE_S) -> list[dict[str, Any]]:
        """Due deliveries, each leased to this process for `lease_s`: replicas sharing the outbox never send one twice.

        The lease moves `next_attempt_at` forward in the same transaction as the read
        (rows another replica is claiming are skipped, not waited for); a process that
        dies mid-delivery leaves rows that fall due again when the lease runs out.
        """
        lock = " FOR UPDATE SKIP LOCKED" if self.database.dialect == "postgresql" else ""
        select = text(
            "SELECT * FROM webhook_outbox WHERE status = :pending AND next_attempt_at <= :now "
            f"ORDER BY id LIMIT :batch{lock}"
        )
        lease = text("UPDATE webhook_outbox SET next_attempt_at = :until WHERE id = :id")

        def claim(connection: Connection) -> list[dict[str, Any]]:
            rows = [
                dict(r) for r in connection.execute(select, {"pending": PENDING, "now": now, "batch": BATCH}).mappings()
            ]
            if rows:
                connection.execute(lease, [{"until": now + lease_s, "id": r["id"]} for r in rows])
            return rows

        return await self.database.writer.submit(claim)

    async def record_attempt(
        self, row: dict[str, Any], status: str, next_at: float, code: int | None, error: str | None, ms: float
    ) -> None:
        now = time.time()
        attempt = {"outbox_id": row["id"], "ts": now, "code": code, "error": error, "ms": ms}
        outcome = {
            "status": status,
            "next_at": next_at,
            "error": error,
            "delivered_at": now if status == DELIVERED else None,
            "id": row["id"],
        }

        def update(connection: Connection) -> None:
            connection.execute(
                text(
                    "INSERT INTO webhook_attempts (outbox_id, ts, status_code, error, duration_ms) "
                    "VALUES (:outbox_id, :ts, :code, :error, :ms)"
                ),
                attempt,
            )
            connection.execute(
                text(
                    "UPDATE webhook_outbox SET status = :status, attempts = attempts + 1, next_attempt_at = :next_at, "
                    "last_error = :error, delivered_at = :delivered_at WHERE id = :id"
                ),
                outcome,
            )

        await self.database.writer.submit(update)

    async def deliveries(self, webhook_id: int, limit: int = 100) -> list[dict[str, Any]]:
        def query(connection: Connection) -> list[dict[str, Any]]:
            outbox = mappings(
                connection,
                "SELECT id, event_id, event_type, status, attempts, next_attempt_at, last_error, created_at, "
                "delivered_at FROM webhook_outbox WHERE webhook_id = :id ORDER BY id DESC LIMIT :limit",
                {"id": webhook_id, "limit": limit},
            )
            for item in outbox:
                item["attempts_log"] = mappings(
                    connection,
                    "SELECT ts, status_code, error, duration_ms FROM webhook_attempts "
                    "WHERE outbox_id = :id ORDER BY id",
                    {"id": item["id"]},
                )
            return outbox

        return await self.database.read(query)


def _active(connection: Connection) -> dict[int, Subscription]:
    rows = connection.execute(text("SELECT * FROM webhooks WHERE active = 1 ORDER BY id")).mappings()
    return {
        r["id"]: Subscription(r["id"], r["url"], frozenset(orjson.loads(r["events"])), r["secret"], r["description"])
        for r in rows
    }


class WebhookNotifier:
    """Implements `service.notify.Notifier`: announcements become outbox rows."""

    def __init__(self, store: WebhookStore, settings: Settings, links: ReportLinks | None = None) -> None:
        self.store = store
        self.settings = settings
        self.links = links
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
                # For a person: the report behind a signed, expiring link (no login), and the dashboard page.
                **(
                    {"incident_url": self.links.incident(key), "dashboard_url": self.links.dashboard(key)}
                    if self.links is not None
                    else {}
                ),
            },
            default=str,
        )
        await self.store.enqueue([(s.id, event_id, event_type, body) for s in subscribers])
        self.wake.set()


class Dispatcher:
    """Sends due outbox rows: webhooks over HTTP, and lock notices (`NOTICE_CHANNEL`) by mail through `notices`."""

    def __init__(
        self, store: WebhookStore, notifier: WebhookNotifier, settings: Settings, notices: LockNotices | None = None
    ) -> None:
        self.store = store
        self.notifier = notifier
        self.settings = settings
        self.notices = notices
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
        due = await self.store.claim(time.time())
        if not due:
            return 0
        notices = [row for row in due if row["webhook_id"] == NOTICE_CHANNEL]
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(row: dict[str, Any]) -> None:
            async with gate:
                await self._deliver(row)

        await asyncio.gather(
            *(one(row) for row in due if row["webhook_id"] != NOTICE_CHANNEL), self._send_notices(notices)
        )
        return len(due)

    async def _send_notices(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self.notices is None:
            for row in rows:
                await self.store.record_attempt(row, FAILED, time.time(), None, "lock notices are not configured", 0.0)
            return
        for sent in await self.notices.send(rows):
            for row in sent.rows:
                await self._settle(row, None, sent.error, sent.ms)

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
        await self._settle(row, code, error or f"HTTP {code}", ms)

    async def _settle(self, row: dict[str, Any], code: int | None, error: str | None, ms: float) -> None:
        """Delivered (no error), or retried later with backoff until the last attempt fails it."""
        if error is None:
            await self.store.record_attempt(row, DELIVERED, time.time(), code, None, ms)
            return
        attempts = row["attempts"] + 1
        if attempts >= self.settings.webhook_max_attempts:
            await self.store.record_attempt(row, FAILED, time.time(), code, error, ms)
        else:
            await self.store.record_attempt(row, PENDING, time.time() + self.backoff(attempts - 1), code, error, ms)
