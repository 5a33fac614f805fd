"""Campaigns: one content suddenly leaving many accounts.

Every fingerprinted message joins a cluster: the nearest recent cluster
representative at or above the similarity threshold, or a new cluster of its own.
Per cluster the tracker keeps which accounts sent it and when they first and last did.
A cluster is a campaign while the accounts that started sending it within the last
`window_seconds` number at least `min_accounts` and at least `uptick_ratio` times
(one more than) the accounts that were already sending it before: a template that
hundreds of shops have sent for weeks is not an uptick, a spam run through a dozen
hijacked mailboxes in half an hour is.

Bounded: at most `capacity` clusters (oldest evicted) and `max_accounts_per_cluster`
accounts per cluster (least recently seen evicted).

This tracker counts in the process (the embedded default). With Redis, every replica
counts in one set of clusters instead: `service.fingerprints.redis_content` does the
same in a Lua script, so one content sent through several replicas is one campaign.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from features.fingerprint import Fingerprint
from service.fingerprints.index import LshIndex, Probe
from service.stores import AccountKey

RECOUNT_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class CampaignPolicy:
    window_seconds: float = 3_600.0
    horizon_seconds: float = 86_400.0  # how long a sender counts as already sending it
    min_accounts: int = 5
    uptick_ratio: float = 3.0
    min_similarity: float = 0.6
    capacity: int = 200_000
    max_accounts_per_cluster: int = 2_000


@dataclass(slots=True)
class Cluster:
    cluster_id: int
    first_seen: float
    senders: OrderedDict[AccountKey, tuple[float, float]] = field(default_factory=OrderedDict)  # first, last
    active_until: float = 0.0
    probability_sum: float = 0.0
    probability_count: int = 0
    detections: int = 0
    counted_at: float = float("-inf")
    counts: tuple[int, int, int] = (0, 0, 0)  # senders in the window, new in it, established before it

    @property
    def mean_probability(self) -> float:
        return self.probability_sum / self.probability_count if self.probability_count else 0.0


@dataclass(frozen=True, slots=True)
class CampaignView:
    """What one message's cluster looks like when the message arrives."""

    cluster_id: int
    accounts_in_window: int  # distinct accounts that sent this content within the window
    new_accounts: int  # of those, how many started within the window
    established_accounts: int
    active: bool
    newly_detected: bool  # this message turned the cluster into a campaign


class CampaignTracker:
    def __init__(self, policy: CampaignPolicy) -> None:
        self.policy = policy
        self.index = LshIndex(policy.capacity)
        self._clusters: dict[int, Cluster] = {}  # by index slot
        self._ids: dict[int, Cluster] = {}  # by cluster id
        self._slot_ids = np.zeros(policy.capacity, dtype=np.int64)  # cluster id by slot: ties go to the oldest
        self._next_id = 1

    def __len__(self) -> int:
        return len(self._clusters)

    def observe(self, fingerprint: Fingerprint | Probe, key: AccountKey, at: float) -> CampaignView:
        cluster = self._cluster_for(fingerprint, at)
        senders = cluster.senders
        known = key in senders
        first, _ = senders.pop(key, (at, at))
        senders[key] = (min(first, at), at)
        while len(senders) > self.policy.max_accounts_per_cluster:
            senders.popitem(last=False)
        # Counting walks every sender: do it when a sender joins, else at most every RECOUNT_SECONDS.
        if not known or abs(at - cluster.counted_at) >= RECOUNT_SECONDS:
            cluster.counts = self._count(senders, at)
            cluster.counted_at = at
        recent, new, established = cluster.counts
        uptick = new >= self.policy.min_accounts and new >= self.policy.uptick_ratio * (established + 1)
        was_active = cluster.active_until > at
        if uptick:
            cluster.active_until = at + self.policy.window_seconds
        newly = uptick and not was_active
        if newly:
            cluster.detections += 1
        return CampaignView(
            cluster_id=cluster.cluster_id,
            accounts_in_window=recent,
            new_accounts=new,
            established_accounts=established,
            active=cluster.active_until > at,
            newly_detected=newly,
        )

    def _count(self, senders: OrderedDict[AccountKey, tuple[float, float]], at: float) -> tuple[int, int, int]:
        window_start = at - self.policy.window_seconds
        horizon_start = at - self.policy.horizon_seconds
        new = established = recent = 0
        for started, last in senders.values():
            if last >= window_start:
                recent += 1
            if started >= window_start:
                new += 1
            elif last >= horizon_start:
                established += 1
        return recent, new, established

    def record_probability(self, cluster_id: int, probability: float) -> float | None:
        """Add a scored copy's spam probability; returns the cluster's mean so far (None: evicted meanwhile)."""
        cluster = self._ids.get(cluster_id)
        if cluster is None:
            return None
        cluster.probability_sum += probability
        cluster.probability_count += 1
        return cluster.mean_probability

    def cluster(self, cluster_id: int) -> Cluster | None:
        return self._ids.get(cluster_id)

    def active(self, now: float) -> list[Cluster]:
        return [c for c in self._clusters.values() if c.active_until > now]

    def _cluster_for(self, fingerprint: Fingerprint | Probe, at: float) -> Cluster:
        found = self.index.nearest(fingerprint, self.policy.min_similarity, self._slot_ids)
        if found is not None:
            return self._clusters[found.slot]
        slot, evicted = self.index.add(fingerprint)
        if evicted is not None:
            old = self._clusters.pop(evicted, None)
            if old is not None:
                self._ids.pop(old.cluster_id, None)
        cluster = Cluster(cluster_id=self._next_id, first_seen=at)
        self._slot_ids[slot] = cluster.cluster_id
        self._next_id += 1
        self._clusters[slot] = cluster
        self._ids[cluster.cluster_id] = cluster
        return cluster
