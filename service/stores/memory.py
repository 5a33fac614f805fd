"""In-process behaviour windows and account state: the zero-setup default.

Bounded: at most `max_accounts` accounts (least recently seen evicted), and per
account a capped number of remembered domains and client IPs.

Each store can note which accounts changed since it was last asked (`track_changes`),
so that `service.stores.checkpoint` writes only those to disk; a restart then restores
the windows, engagement and evidence instead of starting every account afresh.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

from features.behaviour import BehaviourSnapshot, DecayedRate, Observation
from features.engagement import DecayedCounts, EngagementSnapshot
from service.stores import AccountKey, AccountState, MessageRef

MAX_KNOWN_DOMAINS = 10_000
MAX_RECENT_VALUES = 2_000


class BucketWindow:
    """Message and recipient counts over a sliding window, in fixed time buckets.

    The window is the current bucket plus the `buckets - 1` before it, so a 1-hour
    window of 1-minute buckets covers between 59 and 60 minutes.
    """

    __slots__ = ("bucket_seconds", "buckets", "counts")

    def __init__(self, window_seconds: int, bucket_seconds: int) -> None:
        self.bucket_seconds = bucket_seconds
        self.buckets = window_seconds // bucket_seconds
        self.counts: dict[int, list[int]] = {}

    def add(self, timestamp: float, recipients: int) -> tuple[int, int]:
        current = int(timestamp // self.bucket_seconds)
        oldest = current - self.buckets + 1
        if self.counts and current < max(self.counts) - self.buckets + 1:
            return 1, recipients  # older than the window of the newest message: it counts only itself
        counts = self.counts.setdefault(current, [0, 0])
        counts[0] += 1
        counts[1] += recipients
        # Drop only what is older than the newest bucket's window, so that a late
        # (out-of-order) message cannot erase history a newer one still needs.
        expired = max(self.counts) - self.buckets + 1
        messages = total_recipients = 0
        stale = []
        for bucket, (m, r) in self.counts.items():
            if bucket < expired:
                stale.append(bucket)
            elif oldest <= bucket <= current:
                messages += m
                total_recipients += r
        for bucket in stale:
            del self.counts[bucket]
        return messages, total_recipients


class RecentValues:
    """Distinct values (domains, IPs) with the time each was last seen, newest last."""

    __slots__ = ("cap", "seen")

    def __init__(self, cap: int = MAX_RECENT_VALUES) -> None:
        self.cap = cap
        self.seen: OrderedDict[str, float] = OrderedDict()

    def add(self, value: str, timestamp: float) -> None:
        if timestamp >= self.seen.get(value, float("-inf")):
            self.seen[value] = timestamp
            self.seen.move_to_end(value)
        while len(self.seen) > self.cap:
            self.seen.popitem(last=False)

    def distinct_since(self, since: float, until: float) -> int:
        return sum(1 for ts in reversed(self.seen.values()) if since < ts <= until)


@dataclass(slots=True)
class AccountWindows:
    minute: BucketWindow = field(default_factory=lambda: BucketWindow(60, 5))
    hour: BucketWindow = field(default_factory=lambda: BucketWindow(3_600, 60))
    day: BucketWindow = field(default_factory=lambda: BucketWindow(86_400, 900))
    baseline: DecayedRate = field(default_factory=DecayedRate)
    recipient_domains: RecentValues = field(default_factory=RecentValues)
    client_ips: RecentValues = field(default_factory=RecentValues)
    known_domains: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def observe(self, obs: Observation) -> BehaviourSnapshot:
        ts = obs.timestamp
        msgs_1m, rcpts_1m = self.minute.add(ts, obs.recipients)
        msgs_1h, rcpts_1h = self.hour.add(ts, obs.recipients)
        msgs_24h, rcpts_24h = self.day.add(ts, obs.recipients)
        # The baseline before this hour: the other messages of the hour are left out.
        baseline_per_hour = self.baseline.rate_per_hour(ts, recent_count=msgs_1h - 1, recent_seconds=3_600)
        history = ts - self.baseline.first if self.baseline.first is not None else 0.0
        self.baseline.add(ts)

        domains = set(obs.recipient_domains)
        new_domains = sum(1 for d in domains if d not in self.known_domains)
        for domain in domains:
            self.recipient_domains.add(domain, ts)
            self.known_domains[domain] = None
            self.known_domains.move_to_end(domain)
        while len(self.known_domains) > MAX_KNOWN_DOMAINS:
            self.known_domains.popitem(last=False)
        if obs.client_ip:
            self.client_ips.add(obs.client_ip, ts)

        return BehaviourSnapshot(
            msgs_1m=msgs_1m,
            msgs_1h=msgs_1h,
            msgs_24h=msgs_24h,
            rcpts_1m=rcpts_1m,
            rcpts_1h=rcpts_1h,
            rcpts_24h=rcpts_24h,
            baseline_per_hour=baseline_per_hour,
            history_seconds=max(0.0, history),
            rcpt_domains_1h=self.recipient_domains.distinct_since(ts - 3_600, ts),
            client_ips_1h=self.client_ips.distinct_since(ts - 3_600, ts),
            client_ips_24h=self.client_ips.distinct_since(ts - 86_400, ts),
            new_rcpt_domain_share=new_domains / len(domains) if domains else 0.0,
            recipients=obs.recipients,
        )


V = TypeVar("V")
T = TypeVar("T")


class _Lru(Generic[V]):
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.items: OrderedDict[AccountKey, V] = OrderedDict()
        self.changed: set[AccountKey] | None = None  # accounts changed or evicted, while tracked

    def get(self, key: AccountKey) -> V | None:
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: AccountKey, value: V) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        self.touch(key)
        while len(self.items) > self.cap:
            evicted, _ = self.items.popitem(last=False)
            self.touch(evicted)

    def touch(self, key: AccountKey) -> None:
        if self.changed is not None:
            self.changed.add(key)

    def take_changed(self) -> set[AccountKey]:
        """The accounts changed (or evicted) since the last call, from now on tracked."""
        changed, self.changed = self.changed or set(), set()
        return changed


class _Tracked(Generic[V]):
    """What the checkpoint asks of a store: its accounts, and which of them changed."""

    _accounts: _Lru[V]

    def track_changes(self) -> set[AccountKey]:
        """The accounts changed or evicted since the last call; changes are noted from the first call on."""
        return self._accounts.take_changed()

    def peek(self, key: AccountKey) -> V | None:
        """The account's entry as held (no copy, no change to its recency)."""
        return self._accounts.items.get(key)

    def keys(self) -> list[AccountKey]:
        """Every account held, least recently used first."""
        return list(self._accounts.items)

    def load(self, key: AccountKey, value: V) -> None:
        """Put a restored entry, as the most recently used (restore in least-recent-first order)."""
        self._accounts.items[key] = value
        self._accounts.items.move_to_end(key)
        while len(self._accounts.items) > self._accounts.cap:
            self._accounts.items.popitem(last=False)


class MemoryBehaviourStore(_Tracked[AccountWindows]):
    def __init__(self, max_accounts: int) -> None:
        self._accounts: _Lru[AccountWindows] = _Lru(max_accounts)

    async def observe(self, key: AccountKey, observation: Observation) -> BehaviourSnapshot:
        windows = self._accounts.get(key)
        if windows is None:
            windows = AccountWindows()
            self._accounts.put(key, windows)
        else:
            self._accounts.touch(key)
        return windows.observe(observation)


class MemoryAccountStateStore(_Tracked[AccountState]):
    def __init__(self, max_accounts: int) -> None:
        self._accounts: _Lru[AccountState] = _Lru(max_accounts)

    async def get(self, key: AccountKey) -> AccountState:
        state = self._accounts.get(key)
        return replace(state) if state is not None else AccountState()

    async def put(self, key: AccountKey, state: AccountState) -> None:
        self._accounts.put(key, replace(state))

    async def update(self, key: AccountKey, mutate: Callable[[AccountState], T]) -> tuple[AccountState, T]:
        # One event loop, no await between read and write: nothing else can come between.
        state = await self.get(key)
        result = mutate(state)
        self._accounts.put(key, replace(state))
        return state, result

    def restore(self, key: AccountKey, state: AccountState) -> None:
        """Load a stored lifecycle status at start-up."""
        self._accounts.put(key, replace(state))


class MemoryEngagementStore(_Tracked[DecayedCounts]):
    def __init__(self, max_accounts: int) -> None:
        self._accounts: _Lru[DecayedCounts] = _Lru(max_accounts)

    async def add(self, key: AccountKey, counts: dict[str, float], timestamp: float) -> None:
        decayed = self._accounts.get(key)
        if decayed is None:
            decayed = DecayedCounts()
            self._accounts.put(key, decayed)
        else:
            self._accounts.touch(key)
        for name, amount in counts.items():
            decayed.add(name, amount, timestamp)

    async def snapshot(self, key: AccountKey) -> EngagementSnapshot | None:
        decayed = self._accounts.get(key)
        return EngagementSnapshot.from_counts(decayed) if decayed is not None else None


class MemoryMessageIndex:
    """Recently scored messages by Message-ID and queue id: feedback finds its account without a disk read."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._by_message_id: OrderedDict[str, list[MessageRef]] = OrderedDict()
        self._by_queue_id: OrderedDict[str, MessageRef] = OrderedDict()

    async def remember(self, ref: MessageRef) -> None:
        refs = self._by_message_id.setdefault(ref.message_id, [])
        refs.append(ref)
        del refs[:-4]  # the same Message-ID through a few relays at most
        self._by_message_id.move_to_end(ref.message_id)
        if ref.queue_id:
            self._by_queue_id[ref.queue_id] = ref
            self._by_queue_id.move_to_end(ref.queue_id)
        for index in (self._by_message_id, self._by_queue_id):
            while len(index) > self.capacity:
                index.popitem(last=False)

    async def find(self, message_id: str | None, queue_id: str | None) -> list[MessageRef]:
        found = list(self._by_message_id.get(message_id, ())) if message_id else []
        if queue_id and (ref := self._by_queue_id.get(queue_id)) is not None and ref not in found:
            found.append(ref)
        return found
