"""Announcements of what happened to accounts: the seam between decisions and webhooks.

The scoring path and the admin API announce events (`account.locked`...); the
webhook outbox implements `Notifier` and delivers them. Noisy signals (spam seen,
volume spikes, bounces, complaints) are announced at most once per account and type
per `cooldown_s`, timed by the message clock.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Protocol

from service.stores import AccountKey

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


class NullNotifier:
    async def announce(self, event_type: str, key: AccountKey, payload: dict[str, Any]) -> None:
        return None


class Cooldown:
    """At most one announcement per (account, type) per window; bounded memory."""

    def __init__(self, seconds: float, capacity: int = 100_000) -> None:
        self.seconds = seconds
        self.capacity = capacity
        self._last: OrderedDict[tuple[AccountKey, str], float] = OrderedDict()

    def ready(self, key: AccountKey, event_type: str, at: float) -> bool:
        last = self._last.get((key, event_type))
        if last is not None and abs(at - last) < self.seconds:
            return False
        self._last[(key, event_type)] = at
        self._last.move_to_end((key, event_type))
        while len(self._last) > self.capacity:
            self._last.popitem(last=False)
        return True
