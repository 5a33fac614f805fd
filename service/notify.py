"""Announcements of what happened to accounts: the seam between decisions and webhooks.

The scoring path and the admin API announce events (`account.locked`...); the
webhook outbox implements `Notifier` and delivers them. Noisy signals (spam seen,
volume spikes, bounces, complaints) are announced at most once per account and type
per hour, timed by the message clock: `Cooldown` in the process, `RedisCooldown` for
every replica at once (selected with the rest of the hot state, `service.container`).
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis

from service.errors import SharedStateUnavailable
from service.stores import AccountKey
from service.stores.degraded import SharedStateHealth, _guarded
from service.stores.redis_state import account_tag

COOLDOWN_S = 3_600.0

EVENT_TYPES = (
    "account.rate_limited",
    "account.locked",
    "account.unlocked",
    "account.lock_expired",
    "account.spam_detected",
    "account.invalid_recipients",
    "account.complaints",
    "account.volume_spike",
    "account.malware_detected",
    "campaign.detected",
)

TRANSITION_EVENTS = {
    "rate_limited": "account.rate_limited",
    "locked_temporary": "account.locked",
    "locked": "account.locked",
    "unlocked": "account.unlocked",
    "reset": "account.unlocked",
    "lock_expired": "account.lock_expired",
    "malware_detected": "account.malware_detected",  # an audit entry, not a change of status (service.scoring)
}


class Notifier(Protocol):
    async def announce(self, event_type: str, key: AccountKey, payload: dict[str, Any]) -> None:
        """Queue the event durably for its subscribers."""


def evidence(summary: str, **details: Any) -> dict[str, Any]:
    """Every event's `evidence`, in one shape: a sentence for a person, and the figures behind it."""
    return {"summary": summary, "details": details}


class NullNotifier:
    async def announce(self, event_type: str, key: AccountKey, payload: dict[str, Any]) -> None:
        return None


# -- the lock notice (service.reports.notice): an email to a person, queued beside the webhooks

# The outbox's pseudo-subscription for lock notices: webhook ids start at 1, so 0 is never a webhook's.
NOTICE_CHANNEL = 0
NOTICE_EVENTS = frozenset({"account.locked"})


class NoticeQueue(Protocol):
    async def enqueue(self, rows: list[tuple[int, str, str, bytes]]) -> None:
        """Store outbox rows (channel, event id, event type, payload) durably."""


class LockNoticeHook:
    """A `Notifier` that also queues a lock notice for a person: in the outbox, so it is durable and retried.

    Announcements pass through to `inner` (the webhooks) unchanged; an `account.locked`
    whose account `wants` a notice also becomes a row of the `NOTICE_CHANNEL`, committed
    before `announce` returns, and `wake` tells the dispatcher to send it at once.
    """

    def __init__(
        self,
        inner: Notifier,
        queue: NoticeQueue,
        wants: Callable[[AccountKey], bool],
        wake: Callable[[], None],
    ) -> None:
        self.inner = inner
        self.queue = queue
        self.wants = wants
        self.wake = wake

    async def announce(self, event_type: str, key: AccountKey, payload: dict[str, Any]) -> None:
        await self.inner.announce(event_type, key, payload)
        if event_type not in NOTICE_EVENTS or not self.wants(key):
            return
        event_id = f"ntc_{uuid.uuid4().hex}"
        body = {"id": event_id, "type": event_type, "relay": key.relay, "account": key.account, **payload}
        await self.queue.enqueue([(NOTICE_CHANNEL, event_id, event_type, orjson.dumps(body, default=str))])
        self.wake()


class Cooldowns(Protocol):
    async def ready(self, key: AccountKey, event_type: str, at: float) -> bool:
        """Whether to announce now: true at most once per (account, type) per window; a true answer starts it."""


class Cooldown:
    """`Cooldowns` in the process: at most one announcement per (account, type) per window; bounded memory."""

    def __init__(self, seconds: float = COOLDOWN_S, capacity: int = 100_000) -> None:
        self.seconds = seconds
        self.capacity = capacity
        self._last: OrderedDict[tuple[AccountKey, str], float] = OrderedDict()

    async def ready(self, key: AccountKey, event_type: str, at: float) -> bool:
        return self.ready_now(key, event_type, at)

    def ready_now(self, key: AccountKey, event_type: str, at: float) -> bool:
        if self.cooling(key, event_type, at):
            return False
        self.note(key, event_type, at)
        return True

    def cooling(self, key: AccountKey, event_type: str, at: float) -> bool:
        """An announcement known here is within the window of `at`."""
        last = self._last.get((key, event_type))
        return last is not None and abs(at - last) < self.seconds

    def note(self, key: AccountKey, event_type: str, at: float) -> None:
        """An announcement was made at `at` (here, or by another replica)."""
        self._last[(key, event_type)] = at
        self._last.move_to_end((key, event_type))
        while len(self._last) > self.capacity:
            self._last.popitem(last=False)


# Cooldown.ready_now on one key, which holds the message time of the last announcement; that time comes back.
_COOLDOWN_LUA = """
local at, seconds = tonumber(ARGV[1]), tonumber(ARGV[2])
local last = redis.call('GET', KEYS[1])
if last and math.abs(at - tonumber(last)) < seconds then return {0, last} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return {1, ARGV[1]}
"""


class RedisCooldown:
    """`Cooldowns` in Redis, so that "once an hour" holds across replicas: one script call per announcement.

    Key `{prefix}:cd:{<account tag>}:<event type>`, expiring with the window. The
    announcement times it learns are kept in this process's own `Cooldown` too: while
    that one already knows of an announcement within the window, Redis is not asked
    (an account held for spam message after message costs one call an hour). Redis
    unreachable: that `Cooldown` decides alone meanwhile (an announcement too many
    rather than none).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        health: SharedStateHealth | None = None,
        seconds: float = COOLDOWN_S,
    ) -> None:
        self.prefix = prefix
        self.health = health
        self.seconds = seconds
        self.local = Cooldown(seconds)
        self._script = client.register_script(_COOLDOWN_LUA)

    async def ready(self, key: AccountKey, event_type: str, at: float) -> bool:
        name = f"{self.prefix}:cd:{account_tag(key)}:{event_type}"
        args = [repr(float(at)), repr(float(self.seconds)), int(self.seconds * 1000)]

        if self.local.cooling(key, event_type, at):
            return False

        async def call() -> bool:
            ready, last = await self._script(keys=[name], args=args)
            self.local.note(key, event_type, float(last))
            return bool(ready)

        async def alone() -> bool:
            return self.local.ready_now(key, event_type, at)

        if self.health is None:
            return await call()
        try:
            return await _guarded(self.health, call, alone)
        except SharedStateUnavailable:  # failing closed is for scoring, not for an announcement
            return await alone()
