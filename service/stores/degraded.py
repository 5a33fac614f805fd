"""What scoring does when the shared hot state (Redis) is unreachable: fail open, or refuse with a 503.

Each wrapper implements the same protocol as the store it wraps, and every Redis call
the service makes goes through `_guarded`. There, `SharedStateHealth` and its circuit
breaker (`service.stores.breaker`) decide:

- Redis healthy (breaker closed): the call is made. If it fails (a timeout, a refused
  connection, an error reply), the failure is counted, the breaker opens, and the call
  takes its fallback.
- Breaker open: the call is not made at all; it is counted as skipped and takes its
  fallback at once. A hung Redis therefore costs one timeout per process, not one per
  call. One background probe (PING, with the client's usual timeout) checks every
  `OUTGUARD_REDIS_PROBE_INTERVAL_S`; requests never wait for it.

The fallback:

- fail open (the default): scoring goes on with what it can still know. Windows and
  engagement read as empty, so the answer rests on content; the account's lifecycle
  comes from the durable ledger in the database, so every lock is still enforced;
  evidence gathered meanwhile is not kept. Feedback, labels and locks are written to
  the database before they are acknowledged, as always, so nothing acknowledged is lost.
- fail closed (`OUTGUARD_REDIS_FAIL_OPEN=false`): `SharedStateUnavailable`, a 503 the
  relay retries.

When the probe finds Redis again, the lifecycle changes the ledger recorded since the
outage began are written back over Redis's copy before the breaker closes, so a lock
made during the outage holds.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

from redis.exceptions import RedisError

from features.behaviour import BehaviourSnapshot, Observation
from features.engagement import EngagementSnapshot
from service.errors import SharedStateUnavailable
from service.metrics import Metrics
from service.stores import AccountKey, AccountState, MessageRef
from service.stores.breaker import CircuitBreaker
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
    """Whether Redis may be called now (its breaker), what a failed or skipped call does, and recovery."""

    def __init__(
        self,
        client: object,
        ledger: SqlAccountLedger,
        accounts: RedisAccountStateStore,
        fail_open: bool,
        *,
        probe_interval_s: float = PROBE_INTERVAL_S,
        metrics: Metrics | None = None,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.accounts = accounts
        self.fail_open = fail_open
        self.metrics = metrics
        self.breaker = CircuitBreaker(
            self.ping,
            interval_s=probe_interval_s,
            recover=self._resync,
            on_change=self._breaker_changed,
            on_probe=self._probed,
            name="redis",
        )

    @property
    def up(self) -> bool:
        return self.breaker.closed

    @property
    def down_since(self) -> float | None:
        return self.breaker.opened_at

    def allow(self) -> bool:
        """Whether to call Redis now; when not, the skipped call is counted (and refused when failing closed)."""
        if self.breaker.allow():
            return True
        if self.metrics is not None:
            self.metrics.shared_state_skipped.inc()
        if not self.fail_open:
            raise SharedStateUnavailable("shared account state (Redis) is unreachable; retry later")
        return False

    def failed(self, error: BaseException) -> None:
        """A call failed: count it, open the breaker, and fail closed when so configured."""
        self._note_failure(error)
        if not self.fail_open:
            raise SharedStateUnavailable("shared account state (Redis) is unreachable; retry later") from error

    def _note_failure(self, error: BaseException) -> None:
        if self.metrics is not None:
            self.metrics.shared_state_failures.inc()
        if self.breaker.trip(error):
            log.error(
                "shared state (Redis) unreachable, %s until a probe finds it (every %.1f s): %s",
                "scoring degraded" if self.fail_open else "503",
                self.breaker.interval_s,
                error,
            )

    async def ping(self) -> bool:
        return await redis_ping(self.client)  # type: ignore[arg-type]

    async def check(self) -> bool:
        """For readiness: False at once while the breaker is open; otherwise a PING, whose failure opens it."""
        if not self.breaker.closed:
            return False
        try:
            return bool(await self.client.ping())  # type: ignore[attr-defined]
        except FAILURES as error:
            self._note_failure(error)
            return False

    def describe(self) -> dict[str, object]:
        return {**self.breaker.describe(), "fail_open": self.fail_open}

    async def _resync(self) -> None:
        """Redis answers again: write back what the ledger recorded meanwhile, before calls resume."""
        since = (self.breaker.opened_at or 0.0) - RESYNC_MARGIN_S
        changed = await self.ledger.changed_since(since)
        for key, status in changed.items():
            await self.accounts.update(key, lambda state, s=status: _take_lifecycle(state, s))
        log.warning("shared state (Redis) reachable again; %d account statuses written back", len(changed))

    def _breaker_changed(self, is_open: bool) -> None:
        if self.metrics is not None:
            self.metrics.shared_state_breaker_open.set(1 if is_open else 0)

    def _probed(self, ok: bool) -> None:
        if self.metrics is not None:
            self.metrics.shared_state_probes.labels("ok" if ok else "failed").inc()

    async def close(self) -> None:
        await self.breaker.close()


def _take_lifecycle(state: AccountState, stored: AccountState) -> None:
    state.status = stored.status
    state.locked_until = stored.locked_until
    state.temporary_locks = stored.temporary_locks
    state.allowlisted = stored.allowlisted
    state.lock_reason = stored.lock_reason


async def _guarded(
    health: SharedStateHealth, call: Callable[[], Awaitable[T]], fallback: Callable[[], Awaitable[T]]
) -> T:
    """The one place every Redis call passes through: made if the breaker allows, else the fallback at once."""
    if not health.allow():
        return await fallback()
    try:
        return await call()
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

        return await _guarded(self.health, lambda: self.inner.observe(key, observation), alone)


class DegradableEngagement:
    def __init__(self, inner: RedisEngagementStore, health: SharedStateHealth) -> None:
        self.inner, self.health = inner, health

    async def add(self, key: AccountKey, counts: dict[str, float], timestamp: float) -> None:
        async def dropped() -> None:  # the feedback itself is in the database; only the live count misses it
            return None

        await _guarded(self.health, lambda: self.inner.add(key, counts, timestamp), dropped)

    async def snapshot(self, key: AccountKey) -> EngagementSnapshot | None:
        async def unknown() -> EngagementSnapshot | None:
            return None

        return await _guarded(self.health, lambda: self.inner.snapshot(key), unknown)


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

        return await _guarded(self.health, read, lambda: self._from_ledger(key))

    async def put(self, key: AccountKey, state: AccountState) -> None:
        async def dropped() -> None:
            return None

        await _guarded(self.health, lambda: self.inner.put(key, state), dropped)

    async def update(self, key: AccountKey, mutate: Callable[[AccountState], T]) -> tuple[AccountState, T]:
        async def unshared() -> tuple[AccountState, T]:  # decided on the ledger's state; the evidence is not kept
            state = await self._from_ledger(key)
            return state, mutate(state)

        def call() -> Awaitable[tuple[AccountState, T]]:
            return self.inner.update(key, mutate, default=lambda: self._from_ledger(key))

        return await _guarded(self.health, call, unshared)

    async def restore(self, key: AccountKey, state: AccountState) -> None:
        async def dropped() -> bool:  # a miss reads the ledger anyway
            return False

        await _guarded(self.health, lambda: self.inner.restore(key, state), dropped)


class DegradableIndex:
    def __init__(self, inner: RedisMessageIndex, health: SharedStateHealth) -> None:
        self.inner, self.health = inner, health

    async def remember(self, ref: MessageRef) -> None:
        async def dropped() -> None:  # feedback about it is matched from the event log instead
            return None

        await _guarded(self.health, lambda: self.inner.remember(ref), dropped)

    async def find(self, message_id: str | None, queue_id: str | None) -> list[MessageRef]:
        async def none() -> list[MessageRef]:
            return []

        return await _guarded(self.health, lambda: self.inner.find(message_id, queue_id), none)
