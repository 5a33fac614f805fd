"""What the scorer and the feedback path ask of fingerprints, in one place.

`lookup` runs per scored message before the model: the nearest known-spam signature
and the message's campaign cluster, as model features. `campaign_effect` runs after
the model: a message of an active campaign adds evidence against its account in
proportion to how spam-like the campaign's copies score, so a campaign of legitimate
content (a shared template) adds little. `add`, `remove_matching` and `remove` change
the signature database, durably first. `lock_signatures_matching` finds which
signatures learned from an account's own lock are copies of its templates
(`service.fingerprints.templates`), for when an admin says the lock was false.

The signature index lives in each process; campaigns, signature hit counts and a
signature change counter live in the `ContentState` (`service.fingerprints.state`):
in the process, or in Redis for every replica. With Redis, a message that finds the
change counter moved first applies the signature feed (`refresh`), so every replica
matches what any of them added; `refresh` also runs every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace

from sqlalchemy.exc import SQLAlchemyError

from features.behaviour import BehaviourSnapshot, Observation
from features.fingerprint import NO_FINGERPRINT_FEATURES, Fingerprint, Fingerprinter, fingerprint_features
from service.fingerprints.campaigns import CampaignPolicy, CampaignTracker, CampaignView, Cluster
from service.fingerprints.index import Probe
from service.fingerprints.signatures import SAME_CONTENT, SignatureAdd, SignatureDb, SignatureMatch
from service.fingerprints.state import ContentState, LocalContentState, Windows
from service.fingerprints.sync import ChangeCursor
from service.fingerprints.templates import TemplateMemory, compact_from_index
from service.stores import AccountKey, BehaviourStore
from service.stores.database import DatabaseClosed
from service.stores.signatures import FEED_KEEP_S, SqlSignatureStore

log = logging.getLogger(__name__)

REFRESH_RETRY_S = 1.0  # after a failed read of the signature feed on the scoring path
RELOAD_AT = 5_000  # changes read at once past which the index is loaded afresh, off the event loop

# The cluster's mean spam probability at which a campaign adds its full evidence.
FULL_EVIDENCE_AT = 0.5


@dataclass(frozen=True, slots=True)
class FingerprintPolicy:
    signature_capacity: int = 250_000
    signature_ttl_seconds: float = 14 * 86_400.0
    min_similarity: float = 0.6
    campaign: CampaignPolicy = field(default_factory=CampaignPolicy)
    campaign_evidence: float = 2.0  # nats per message of an active, spam-like campaign
    complaint_min_probability: float = 0.5  # a complaint adds a signature only for spam-like content


@dataclass(frozen=True, slots=True)
class ContentLookup:
    features: dict[str, float]
    match: SignatureMatch | None = None
    campaign: CampaignView | None = None


NO_LOOKUP = ContentLookup(NO_FINGERPRINT_FEATURES)


@dataclass(frozen=True, slots=True)
class CampaignEffect:
    """What a scored message's campaign does to its account."""

    evidence: float = 0.0  # nats against the account
    spam_like: bool = False  # active, and its copies score spam-like on average (full campaign evidence)


NO_EFFECT = CampaignEffect()


class FingerprintService:
    def __init__(
        self, policy: FingerprintPolicy, store: SqlSignatureStore, content: ContentState | None = None
    ) -> None:
        self.policy = policy
        self.store = store
        self.fingerprinter = Fingerprinter()
        self.content = content if content is not None else LocalContentState(CampaignTracker(policy.campaign))
        now = time.time()
        # The feed position first: whatever changes during the load is read again after it.
        self.cursor = ChangeCursor(store.feed_position(now))
        self.signatures = self._signature_db()
        self.signatures.load_many(store.live(now, policy.signature_capacity))
        self._version: int | None = None  # the shared change counter as of the last read of the feed
        self._refreshing = asyncio.Lock()
        self._refresh_failed_at = float("-inf")

    def _signature_db(self) -> SignatureDb:
        policy = self.policy
        return SignatureDb(policy.signature_capacity, policy.signature_ttl_seconds, policy.min_similarity)

    async def count(
        self, behaviour: BehaviourStore, key: AccountKey, observation: Observation, fingerprint: Fingerprint | None
    ) -> tuple[BehaviourSnapshot, ContentLookup]:
        """Count the message in its account's windows and in its content's campaign, and match it against known spam.

        With Redis, the windows, the campaign, the signature version and the matched
        signature's hit count take one round trip together.
        """
        if fingerprint is None:
            return await behaviour.observe(key, observation), NO_LOOKUP
        windows = (behaviour, observation)
        lookup, snapshot = await self._lookup(Probe.of(fingerprint), key, observation.timestamp, windows)
        assert snapshot is not None
        return snapshot, lookup

    async def lookup(self, fingerprint: Fingerprint | None, key: AccountKey, at: float) -> ContentLookup:
        """The same without the account's windows."""
        if fingerprint is None:
            return NO_LOOKUP
        lookup, _ = await self._lookup(Probe.of(fingerprint), key, at, None)
        return lookup

    async def _lookup(
        self, probe: Probe, key: AccountKey, at: float, windows: Windows | None
    ) -> tuple[ContentLookup, BehaviourSnapshot | None]:
        shared = self.content.shared
        # The signature it matches as this process knows them: its hit is counted in the same round trip.
        expected = self.signatures.peek(probe, at) if shared else None
        observed = await self.content.observe(probe, key, at, hit=expected, windows=windows)
        if observed.signature_version is not None and observed.signature_version != self._version:
            await self._refresh_for(observed.signature_version)  # another replica changed signatures
        match = self.signatures.match(probe, at)
        if shared:
            # Matches counted in Redis, this one included; None if counted for another signature, or not at all.
            counted = observed.hits if match is not None and match.signature_id == expected else None
            if observed.hits is not None and counted is None:  # the feed changed the match: take it back
                await self.content.signature_hit(expected or 0, 0, undo=True)
            if match is not None:
                if counted is None:  # rare: the match changed, or Redis did not answer
                    hits = await self.content.signature_hit(match.signature_id, match.hits)
                else:
                    hits = counted - 1
                match = replace(match, hits=hits)
        campaign = observed.campaign
        others = max(campaign.accounts_in_window - 1, 0) if campaign is not None else 0
        if match is None:
            features = fingerprint_features(0.0, None, 0, others)
        else:
            features = fingerprint_features(match.similarity, match.age_seconds, match.hits, others)
        return ContentLookup(features, match, campaign), observed.snapshot

    async def campaign_effect(self, lookup: ContentLookup, probability: float) -> CampaignEffect:
        """Count the scored copy in its campaign; the evidence (nats) the campaign adds against its account."""
        campaign = lookup.campaign
        if campaign is None:
            return NO_EFFECT
        mean = await self.content.record_probability(campaign.cluster_id, probability)
        if not campaign.active:
            return NO_EFFECT
        if mean is None:  # the cluster was evicted meanwhile: this copy alone
            return CampaignEffect(self._scaled_evidence(probability), False)
        return CampaignEffect(self._scaled_evidence(mean), mean >= FULL_EVIDENCE_AT)

    def _scaled_evidence(self, mean_probability: float) -> float:
        return self.policy.campaign_evidence * min(1.0, mean_probability / FULL_EVIDENCE_AT)

    async def cluster(self, cluster_id: int) -> Cluster | None:
        return await self.content.cluster(cluster_id)

    async def active_campaigns(self, now: float) -> list[Cluster]:
        return await self.content.active(now)

    def earlier_senders(self, cluster: Cluster | None, at: float, sender: AccountKey) -> tuple[list[AccountKey], float]:
        """At a campaign's detection: the other accounts that sent it within the window, and the
        evidence each gets now (the same share of `campaign_evidence` as the message's own)."""
        if cluster is None:
            return [], 0.0
        since = at - self.policy.campaign.window_seconds
        senders = [key for key, (_, last) in cluster.senders.items() if last >= since and key != sender]
        return senders, self._scaled_evidence(cluster.mean_probability)

    async def refresh(self, version: int | None = None) -> int:
        """Apply the signature changes made since the last read (by any process); how many signatures were loaded.

        `version`: the shared change counter that prompted it, remembered once applied.
        """
        async with self._refreshing:
            if version is not None and version == self._version:
                return 0  # another message of this process read the feed meanwhile
            if self.cursor.idle_for() > FEED_KEEP_S / 2:
                loaded = await self._reload()
            else:
                changes = await self.store.changes(self.cursor.position)
                unseen = set(self.cursor.unseen([c.change_id for c in changes]))
                if len(unseen) > RELOAD_AT:  # an import: rebuilt in a worker thread, not on the event loop
                    loaded = await self._reload(keep_cursor=True)  # the load, after this read, holds them
                else:
                    loaded = self.signatures.apply_changes(
                        [(c.signature, c.removed) for c in changes if c.change_id in unseen]
                    )
                self.cursor.advance(sorted(unseen))
            if version is not None:
                self._version = version
            return loaded

    async def _refresh_for(self, version: int) -> None:
        """Read the feed before matching; with the database unreachable, match on what is held meanwhile.

        Tried again at most every `REFRESH_RETRY_S`, so that an outage does not cost every
        message a wait on the database; the periodic refresh catches up.
        """
        if time.monotonic() - self._refresh_failed_at < REFRESH_RETRY_S:
            return
        try:
            await self.refresh(version)
        except (SQLAlchemyError, DatabaseClosed) as error:
            self._refresh_failed_at = time.monotonic()
            log.warning("signature changes not read (matching on the signatures held): %s", type(error).__name__)

    async def _reload(self, keep_cursor: bool = False) -> int:
        """Load the live signatures afresh: after many changes, or when the feed no longer reaches back far enough.

        `keep_cursor`: the changes just read are in the load; else the feed is read on from now.
        """
        now = time.time()

        def load() -> tuple[ChangeCursor, SignatureDb]:
            cursor = self.cursor if keep_cursor else ChangeCursor(self.store.feed_position(now))
            signatures = self._signature_db()
            signatures.load_many(self.store.live(now, self.policy.signature_capacity))
            return cursor, signatures

        self.cursor, self.signatures = await asyncio.to_thread(load)
        log.info("signature index loaded afresh: %d live signatures", len(self.signatures))
        return len(self.signatures)

    async def _changed(self) -> None:
        """After a committed change: tell the other replicas; when nobody else changed anything, we are current."""
        version = await self.content.signatures_changed()
        if version is not None and self._version is not None and version == self._version + 1:
            self._version = version

    async def add(
        self,
        fingerprint: Fingerprint,
        *,
        source: str,
        actor: str,
        at: float,
        message_id: str | None = None,
        note: str | None = None,
    ) -> tuple[int, bool]:
        """(signature id, whether it is new). Content already present refreshes the entry instead."""
        [result] = await self.add_many([SignatureAdd(fingerprint, source, actor, at, message_id, note)])
        return result

    async def add_many(self, items: list[SignatureAdd]) -> list[tuple[int, bool]]:
        """(signature id, whether it is new) per item, with one durable write for all of them.

        Content already held, or already earlier in the batch, refreshes instead of adding.
        """
        new: list[tuple[SignatureAdd, float]] = []
        refreshed: dict[int, float] = {}
        # Per item: ("held", signature id) or ("new", its place in `new`).
        places: list[tuple[str, int]] = []
        for item in items:
            expires_at = item.at + self.policy.signature_ttl_seconds
            existing = self.signatures.same_content(item.fingerprint)
            if existing is not None:
                refreshed[existing] = max(refreshed.get(existing, 0.0), expires_at)
                places.append(("held", existing))
                continue
            twin = next(
                (
                    n
                    for n, (queued, _) in enumerate(new)
                    if item.fingerprint.similarity(queued.fingerprint) >= SAME_CONTENT
                ),
                None,
            )
            if twin is None:
                new.append((item, expires_at))
                places.append(("new", len(new) - 1))
            else:
                new[twin] = (new[twin][0], max(new[twin][1], expires_at))
                places.append(("twin", twin))
        stored = await self.store.write(new, refreshed) if new or refreshed else []
        for signature in stored:
            self.signatures.load(signature)
        for signature_id, expires_at in refreshed.items():
            self.signatures.refresh(signature_id, expires_at)
        if new or refreshed:
            await self._changed()
        results = []
        for kind, place in places:
            if kind == "held":
                results.append((place, False))
            else:
                results.append((stored[place].signature_id, kind == "new"))
        return results

    async def remove_matching(self, fingerprint: Fingerprint, actor: str, at: float) -> list[int]:
        ids = self.signatures.matching_ids(fingerprint)
        await self.store.remove(ids, actor, at)
        self.signatures.remove(ids)
        if ids:
            await self._changed()
        return ids

    async def remove(self, signature_ids: list[int], actor: str, at: float) -> list[int]:
        """Take these signatures down (durably first); the ids that were live."""
        live = [i for i in signature_ids if self.signatures.is_live(i)]
        await self.store.remove(live, actor, at)
        self.signatures.remove(live)
        if live:
            await self._changed()
        return live

    def lock_signatures_matching(self, signature_ids: tuple[int, ...] | list[int], templates: str) -> list[int]:
        """Of these (live) signatures, those that are copies of one of the account's templates."""
        memory = TemplateMemory.decode(templates)
        matching = []
        for signature_id in signature_ids:
            values = self.signatures.values_of(signature_id)
            if values is not None and memory.match(compact_from_index(values)) is not None:
                matching.append(signature_id)
        return matching

    async def stats(self, now: float) -> dict[str, object]:
        active = await self.content.active(now)
        return {
            "signatures": len(self.signatures),
            "capacity": self.policy.signature_capacity,
            "evicted": self.signatures.evicted,
            "memory_bytes": self.signatures.nbytes,
            "clusters": await self.content.clusters(),
            "active_campaigns": len(active),
        }
