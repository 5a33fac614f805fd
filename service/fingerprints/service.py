"""What the scorer and the feedback path ask of fingerprints, in one place.

`lookup` runs per scored message before the model: the nearest known-spam signature
and the message's campaign cluster, as model features. `campaign_evidence` runs
after the model: a message of an active campaign adds evidence against its account
in proportion to how spam-like the campaign's copies score, so a campaign of
legitimate content (a shared template) adds little. `add`, `remove_matching` and
`remove` change the signature database, durably first. `lock_signatures_matching`
finds which signatures learned from an account's own lock are copies of its
templates (`service.fingerprints.templates`), for when an admin says the lock was false.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from features.fingerprint import NO_FINGERPRINT_FEATURES, Fingerprint, Fingerprinter, fingerprint_features
from service.fingerprints.campaigns import CampaignPolicy, CampaignTracker, CampaignView
from service.fingerprints.index import Probe
from service.fingerprints.signatures import SAME_CONTENT, SignatureAdd, SignatureDb, SignatureMatch
from service.fingerprints.templates import TemplateMemory, compact_from_index
from service.stores import AccountKey
from service.stores.signatures import SqlSignatureStore

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


class FingerprintService:
    def __init__(self, policy: FingerprintPolicy, store: SqlSignatureStore) -> None:
        self.policy = policy
        self.store = store
        self.fingerprinter = Fingerprinter()
        self.signatures = SignatureDb(policy.signature_capacity, policy.signature_ttl_seconds, policy.min_similarity)
        self.campaigns = CampaignTracker(policy.campaign)
        self.signatures.load_many(store.live(time.time(), policy.signature_capacity))

    def lookup(self, fingerprint: Fingerprint | None, key: AccountKey, at: float) -> ContentLookup:
        if fingerprint is None:
            return NO_LOOKUP
        probe = Probe.of(fingerprint)
        match = self.signatures.match(probe, at)
        campaign = self.campaigns.observe(probe, key, at)
        others = max(campaign.accounts_in_window - 1, 0)
        if match is None:
            features = fingerprint_features(0.0, None, 0, others)
        else:
            features = fingerprint_features(match.similarity, match.age_seconds, match.hits, others)
        return ContentLookup(features, match, campaign)

    def campaign_evidence(self, lookup: ContentLookup, probability: float) -> float:
        """Evidence (nats) the message's campaign adds against its account."""
        if lookup.campaign is None:
            return 0.0
        mean = self.campaigns.record_probability(lookup.campaign.cluster_id, probability)
        return self._scaled_evidence(mean) if lookup.campaign.active else 0.0

    def spam_like_campaign(self, lookup: ContentLookup) -> bool:
        """The message's campaign is active and its copies score spam-like on average (full campaign evidence)."""
        if lookup.campaign is None or not lookup.campaign.active:
            return False
        cluster = self.campaigns.cluster(lookup.campaign.cluster_id)
        return cluster is not None and cluster.mean_probability >= FULL_EVIDENCE_AT

    def _scaled_evidence(self, mean_probability: float) -> float:
        return self.policy.campaign_evidence * min(1.0, mean_probability / FULL_EVIDENCE_AT)

    def earlier_senders(self, lookup: ContentLookup, at: float, sender: AccountKey) -> tuple[list[AccountKey], float]:
        """At a campaign's detection: the other accounts that sent it within the window, and the
        evidence each gets now (the same share of `campaign_evidence` as the message's own)."""
        campaign = lookup.campaign
        if campaign is None or not campaign.newly_detected:
            return [], 0.0
        cluster = self.campaigns.cluster(campaign.cluster_id)
        if cluster is None:
            return [], 0.0
        since = at - self.policy.campaign.window_seconds
        senders = [key for key, (_, last) in cluster.senders.items() if last >= since and key != sender]
        return senders, self._scaled_evidence(cluster.mean_probability)

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
        return ids

    async def remove(self, signature_ids: list[int], actor: str, at: float) -> list[int]:
        """Take these signatures down (durably first); the ids that were live."""
        live = [i for i in signature_ids if self.signatures.is_live(i)]
        await self.store.remove(live, actor, at)
        self.signatures.remove(live)
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

    def stats(self, now: float) -> dict[str, object]:
        active = self.campaigns.active(now)
        return {
            "signatures": len(self.signatures),
            "capacity": self.policy.signature_capacity,
            "evicted": self.signatures.evicted,
            "memory_bytes": self.signatures.nbytes,
            "clusters": len(self.campaigns),
            "active_campaigns": len(active),
        }
