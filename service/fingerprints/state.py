"""The fingerprint state every replica must agree on, behind one interface: in the process, or in Redis.

`FingerprintService` keeps the signature index itself in each process (a numpy LSH
index, loaded from the database and kept current by `service.fingerprints.sync`).
What scoring must count in one place is here:

- campaigns: which content cluster a message joins, and how many accounts sent it;
- how often each signature matched (a model feature, `sig_hits_log`);
- a counter of signature changes: each message reads it in the same round trip as its
  campaign count, and a process that sees it move re-reads the signature feed before
  matching, so a signature added through one replica counts on the next message
  through any other.

`observe` counts a message. Given the account's windows store it counts the message
there too: with Redis, the windows' script and the campaign's script go in one
pipeline, so counting a message's content adds no round trip to it. (Recording its
spam probability after the model, `record_probability`, is one.)

`LocalContentState` is the embedded default (one process). `RedisContentState`
(`service.fingerprints.redis_content`) is the shared one, selected with the rest of
the hot state (`service.container`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from features.behaviour import BehaviourSnapshot, Observation
from service.fingerprints.campaigns import CampaignTracker, CampaignView, Cluster
from service.fingerprints.index import Probe
from service.stores import AccountKey, BehaviourStore

Windows = tuple[BehaviourStore, Observation]  # the account's windows, and the message to count in them


@dataclass(frozen=True, slots=True)
class Observed:
    """What counting one message told."""

    campaign: CampaignView | None  # None: not counted (the shared state is unreachable)
    signature_version: int | None = None  # the shared signature change counter; None when not shared
    hits: int | None = None  # the matches of the signature asked about, this one included; None when not counted
    snapshot: BehaviourSnapshot | None = None  # the account's windows, when asked to count it there too


class ContentState(Protocol):
    shared: bool  # several processes count in it: a changed signature version means re-read the feed

    async def observe(
        self, probe: Probe, key: AccountKey, at: float, *, hit: int | None = None, windows: Windows | None = None
    ) -> Observed:
        """Count the message in its content's cluster (made if it has none) and read the signature version.

        `hit`: a signature the message matches, whose shared match count to count up (when
        shared). `windows`: count the message in the account's windows too.
        """

    async def record_probability(self, cluster_id: int, probability: float) -> float | None:
        """Add a scored copy's spam probability; the cluster's mean so far (None: the cluster is gone)."""

    async def signature_hit(self, signature_id: int, local_hits: int, *, undo: bool = False) -> int:
        """Count a match of this signature (`undo`: take one back); the matches before it.

        `local_hits`: this process's count, what a state that is not shared answers.
        """

    async def signatures_changed(self) -> int | None:
        """Tell every replica that signatures changed (after the change is committed); the new version."""

    async def cluster(self, cluster_id: int) -> Cluster | None:
        """A cluster with its senders (least recently seen first), for a campaign's announcement."""

    async def active(self, now: float) -> list[Cluster]:
        """The clusters that are campaigns at `now`."""

    async def clusters(self) -> int:
        """How many clusters are tracked."""


class LocalContentState:
    """`ContentState` in the process: the campaign tracker, and the signature index's own hit counts."""

    shared = False

    def __init__(self, tracker: CampaignTracker) -> None:
        self.tracker = tracker

    async def observe(
        self, probe: Probe, key: AccountKey, at: float, *, hit: int | None = None, windows: Windows | None = None
    ) -> Observed:
        snapshot = await windows[0].observe(key, windows[1]) if windows is not None else None
        return Observed(self.tracker.observe(probe, key, at), snapshot=snapshot)

    async def record_probability(self, cluster_id: int, probability: float) -> float | None:
        return self.tracker.record_probability(cluster_id, probability)

    async def signature_hit(self, signature_id: int, local_hits: int, *, undo: bool = False) -> int:
        return local_hits

    async def signatures_changed(self) -> int | None:
        return None

    async def cluster(self, cluster_id: int) -> Cluster | None:
        return self.tracker.cluster(cluster_id)

    async def active(self, now: float) -> list[Cluster]:
        return self.tracker.active(now)

    async def clusters(self) -> int:
        return len(self.tracker)
