"""What scoring does when the shared hot state (Redis) is unreachable: fail open, or refuse with a 503.

Each wrapper implements the same protocol as the store it wraps. When a call fails,
`SharedStateHealth` notes the outage (readiness turns red, a metric counts it) and:

- fail open (the default): scoring goes on with what it can still know. Windows and
  engagement read as empty, so the answer rests on content; the account's lifecycle
  comes from the durable ledger in the database, so every lock is still enforced;
  evidence gathered meanwhile is not kept. Feedback, labels and locks are written to
  the database before they are acknowledged, as always, so nothing acknowledged is lost.
- fail closed (`OUTGUARD_REDIS_FAIL_OPEN=false`): `SharedStateUnavailable`, a 503 the
  relay retries.

When Redis answers again, the lifecycle changes the ledger recorded since the outage
began are written back over Redis's copy, so a lock made during the outage holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

from redis.exceptions import RedisError

from features.behaviour import BehaviourSnapshot, Observation
from features.engagement import EngagementSnapshot
from service.errors import SharedStateUnavailable
from service.stores import AccountKey, AccountState, MessageRef
from service.stores.ledger import SqlAccountLedger
from service.stores.redis_state import (
    RedisAccountStateStore,
    RedisBehaviourStore,
    RedisEngagementStore,
    RedisMessageIndex,
    redis_ping,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
FAILURES = (RedisError, OSError, TimeoutError)
PROBE_INTERVAL_S = 1.0
# Lifecycle changes written back after an outage start this long before it was noticed.
RESYNC_MARGIN_S = 60.0


class SharedStateHealth:
    def __init__(self, client: object, ledger: SqlAccountLedger, accounts: RedisAccountStateStore, fail_open: bool):
        self.client = client
        self.ledger = ledger
        self.accounts = accounts
        self.fail_open = fail_open
        self.down_since: float | None = None
        self.on_failure: Callable[[], None] = lambda: None
        self._probe: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self.down_since is None

    def failed(self, error: BaseException) -> None:
        """A call failed: note the outage, start probing, and fail closed when so configured."""
        self.on_failure()
        if self.down_since is None:
            self.down_since = time.time()
            log.error(
                "shared state (Redis) unreachable, %s: %s", "scoring degraded" if self.fail_open else "503", error
            )
            with contextlib.suppress(RuntimeError):  # no running loop: the next call notices recovery
                self._probe = asyncio.get_running_loop().create_task(self._recover(), name="redis-probe")
        if not self.fail_open:
            raise SharedStateUnavailable("shared account state (Redis) is unreachable; retry later") from error

    async def ping(self) -> bool:
        return await redis_ping(self.client)  # type: ignore[arg-type]

    async def _recover(self) -> None:
        while not await self.ping():  # noqa: ASYNC110 - polling a remote server, no local event to wait on
            await asyncio.sleep(PROBE_INTERVAL_S)
        since = (self.down_since or time.time()) - RESYNC_MARGIN_S
        try:
            changed = await self.ledger.changed_since(since)
            for key, status in changed.items():
                await self.accounts.update(key, lambda state, s=status: _take_lifecycle(state, s))
        except Exception as error:  # still flapping: try again from the top
            log.warning("shared state back but resync failed: %s", error)
            await asyncio.sleep(PROBE_INTERVAL_S)
            self._probe = asyncio.get_running_loop().create_task(self._recover(), name="redis-probe")
            return
        log.warning("shared state (Redis) reachable again; %d account statuses written back", len(changed))
        self.down_since = None

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe


def _take_lifecycle(state: AccountState, stored: AccountState) -> None:
    state.status = stored.status
    state.locked_until = stored.locked_until
    state.temporary_locks = stored.temporary_locks
    state.allowlisted = stored.allowlisted
    state.lock_reason = stored.lock_reason


async def _guarded(health: SharedStateHealth, call: Awaitable[T], fallback: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call
    except FAILURES as error:
        health.failed(error)
        return await fallback()


class DegradableBehaviour:
    def __init__(self, inner: RedisBehaviourStore, health: SharedStateHealth) -> None:
        self.inner, self.health = inner, health

    async def observe(self, key: AccountKey, observation: Observation) -> BehaviourSnapshot:
        async def alone() -> BehaviourSnapshot:  # the message by itself: no history to compare with
            domains = len(set(observation.recipient_domains))
            return BehaviourSnapshot(
                msgs_1m=1,
                msgs_1h=1,
                msgs_24h=1,
                rcpts_1m=observation.recipients,
                rcpts_1h=observation.recipients,
                rcpts_24h=observation.recipients,
                baseline_per_hour=None,
                history_seconds=0.0,
                rcpt_domains_1h=domains,
                client_ips_1h=int(observation.client_ip is not None),
                client_ips_24h=int(observation.client_ip is not None),
                new_rcpt_domain_share=1.0 if domains else 0.0,
                recipients=observation.recipients,
            )

        return await _guarded(self.health, self.inner.observe(key, observation), alone)


class DegradableEngagement:
    def __init__(self, inner: RedisEngagementStore, health: SharedStateHealth) -> None:
        self.inner, self.health = inner, health

    async def add(self, key: AccountKey, counts: dict[str, float], timestamp: float) -> None:
        async def dropped() -> None:  # the feedback itself is in the database; only the live count misses it
            return None

        await _guarded(self.health, self.inner.add(key, counts, timestamp), dropped)

    async def snapshot(self, key: AccountKey) -> EngagementSnapshot | None:
        async def unknown() -> EngagementSnapshot | None:
            return None

        return await _guarded(self.health, self.inner.snapshot(key), unknown)


class DegradableAccounts:
    """Account state in Redis, falling back to the durable ledger for lifecycle (locks) on a miss or an outage."""

    def __init__(self, inner: RedisAccountStateStore, ledger: SqlAccountLedger, health: SharedStateHealth) -> None:
        self.inner, self.ledger, self.health = inner, ledger, health

    async def _from_ledger(self, key: AccountKey) -> AccountState:
        stored = await self.ledger.status(key)
        return replace(stored) if stored is not None else AccountState()

    async def get(self, key: AccountKey) -> AccountState:
        async def read() -> AccountState:
            state = await self.inner.load(key)
            return state if state is not None else await self._from_ledger(key)

        return await _guarded(self.health, read(), lambda: self._from_ledger(key))

    async def put(self, key: AccountKey, state: AccountState) -> None:
        async def dropped() -> None:
            return None

        await _guarded(self.health, self.inner.put(key, state), dropped)

    async def update(self, key: AccountKey, mutate: Callable[[AccountState], T]) -> tuple[AccountState, T]:
        async def unshared() -> tuple[AccountState, T]:  # decided on the ledger's state; the evidence is not kept
            state = await self._from_ledger(key)
            return state, mutate(state)

        call = self.inner.update(key, mutate, default=lambda: self._from_ledger(key))
        return await _guarded(self.health, call, unshared)

    async def restore(self, key: AccountKey, state: AccountState) -> None:
        await self.inner.restore(key, state)


class DegradableIndex:
    def __init__(self, inner: RedisMessageIndex, health: SharedStateHealth) -> None:
        self.inner, self.health = inner, health

    async def remember(self, ref: MessageRef) -> None:
        async def dropped() -> None:  # feedback about it is matched from the event log instead
            return None

        await _guarded(self.health, self.inner.remember(ref), dropped)

    async def find(self, message_id: str | None, queue_id: str | None) -> list[MessageRef]:
        async def none() -> list[MessageRef]:
            return []

        return await _guarded(self.health, self.inner.find(message_id, queue_id), none)
