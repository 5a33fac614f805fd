"""Ingest feedback: attribute each event to a scored message, store it durably, update engagement.

Order matters: events are attributed first (the recent-message index, then the
scored-message log), stored in one committed transaction (idempotent by event id), and
only new events update the account's engagement. The relay's answer comes after the
commit, so anything acknowledged survives a crash; a duplicate is acknowledged again
but never counted twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from features.engagement import engagement_features
from features.fingerprint import Fingerprint
from service.fingerprints.service import FingerprintService
from service.fingerprints.signatures import SignatureAdd
from service.metrics import Metrics
from service.notify import Cooldown, Cooldowns, Notifier
from service.notify import evidence as event_evidence
from service.stores import (
    AccountKey,
    EngagementStore,
    FeedbackEvent,
    FeedbackLog,
    FeedbackType,
    MessageIndex,
    MessageRef,
)
from service.stores.events import SqlEventLog

DEFAULT_RELAY = "default"

# When feedback is worth telling subscribers about: (outcome, event type, least count, least smoothed rate).
ALERTS = (
    ("invalid_recipient", "account.invalid_recipients", 5.0, 0.05, "eng_invalid_recipient_rate"),
    ("complaint", "account.complaints", 2.0, 0.002, "eng_complaint_rate"),
)


@dataclass(frozen=True, slots=True)
class IngestResult:
    event_id: str
    status: str  # stored | duplicate
    matched: bool  # attributed to a scored message
    relay: str | None
    account: str | None


def engagement_counts(event: FeedbackEvent) -> dict[str, float]:
    """What one event adds to its account's decayed engagement counts."""
    counts = {"feedback": 1.0}
    if event.type is FeedbackType.BOUNCE:
        hard = event.detail.get("bounce_class") == "hard"
        counts["hard_bounce" if hard else "soft_bounce"] = 1.0
        if hard and event.detail.get("invalid_recipient"):
            counts["invalid_recipient"] = 1.0
    elif event.type is not FeedbackType.DEFERRED:
        counts[event.type.value] = 1.0
    return counts


class FeedbackIngestor:
    def __init__(
        self,
        *,
        scored: SqlEventLog,
        index: MessageIndex,
        feedback: FeedbackLog,
        engagement: EngagementStore,
        metrics: Metrics,
        notifier: Notifier,
        fingerprints: FingerprintService | None = None,
        cooldowns: Cooldowns | None = None,
    ) -> None:
        self.fingerprints = fingerprints
        self.notifier = notifier
        self.cooldown = cooldowns if cooldowns is not None else Cooldown()
        self.scored = scored
        self.index = index
        self.feedback = feedback
        self.engagement = engagement
        self.metrics = metrics

    async def ingest(self, events: Sequence[FeedbackEvent]) -> list[IngestResult]:
        events = list(events)
        refs = await self._attribute(events)
        new = await self.feedback.add(events)
        results = []
        signatures = [
            signature
            for event, is_new, ref in zip(events, new, refs, strict=True)
            if is_new and event.type is FeedbackType.COMPLAINT and ref is not None
            if (signature := self._signature_from_complaint(event, ref)) is not None
        ]
        if signatures and self.fingerprints is not None:
            await self.fingerprints.add_many(signatures)
        for event, is_new in zip(events, new, strict=True):
            if is_new and event.account is not None and event.relay is not None:
                key = AccountKey(event.relay, event.account)
                counts = engagement_counts(event)
                await self.engagement.add(key, counts, event.timestamp)
                await self._alert(key, counts, event.timestamp)
            status = "stored" if is_new else "duplicate"
            self.metrics.feedback_events.labels(event.type.value, status).inc()
            results.append(IngestResult(event.event_id, status, event.matched, event.relay, event.account))
        return results

    async def _alert(self, key: AccountKey, counts: dict[str, float], at: float) -> None:
        if not any(outcome in counts for outcome, *_ in ALERTS):
            return
        snapshot = await self.engagement.snapshot(key)
        if snapshot is None:
            return
        rates = engagement_features(snapshot)
        for outcome, event_type, least, least_rate, rate_name in ALERTS:
            seen = snapshot.outcomes.get(outcome, 0.0)
            crossed = outcome in counts and seen >= least and rates[rate_name] >= least_rate
            if crossed and await self.cooldown.ready(key, event_type, at):
                payload = {
                    "reason_codes": [outcome],
                    "evidence": event_evidence(
                        f"{seen:.0f} {outcome.replace('_', ' ')}s of {snapshot.recipients:.0f} recipients "
                        f"({rates[rate_name]:.1%})",
                        count=round(seen, 1),
                        rate=round(rates[rate_name], 4),
                        recipients=round(snapshot.recipients, 1),
                    ),
                }
                await self.notifier.announce(event_type, key, payload)

    async def find(self, message_id: str | None, queue_id: str | None, relay: str | None) -> MessageRef | None:
        [ref] = await self._lookup([(message_id, queue_id, relay)])
        return ref

    def _signature_from_complaint(self, event: FeedbackEvent, ref: MessageRef) -> SignatureAdd | None:
        """A complaint about spam-like content makes it a signature (one about a newsletter does not)."""
        if self.fingerprints is None or ref.fingerprint is None or ref.spam_probability is None:
            return None
        if ref.spam_probability < self.fingerprints.policy.complaint_min_probability:
            return None
        return SignatureAdd(
            Fingerprint.from_bytes(ref.fingerprint), "complaint", "feedback", event.timestamp, ref.message_id
        )

    async def _attribute(self, events: list[FeedbackEvent]) -> list[MessageRef | None]:
        refs = await self._lookup([(e.message_id, e.queue_id, e.relay) for e in events])
        for event, ref in zip(events, refs, strict=True):
            if ref is not None:
                event.relay, event.account, event.matched = ref.relay, ref.account, True
                # Matched by queue id alone: name the message, so labels can join on it.
                event.message_id = event.message_id or ref.message_id
            elif event.account is not None:
                # Never scored here (or not yet): the caller named the account.
                event.relay = event.relay or DEFAULT_RELAY
        return refs

    async def _lookup(self, wanted: list[tuple[str | None, str | None, str | None]]) -> list[MessageRef | None]:
        """For each (message id, queue id, relay hint): the scored message, preferring the hinted relay."""
        candidates: dict[int, list[MessageRef]] = {}
        missing_ids, missing_queue = set(), set()
        for i, (message_id, queue_id, _) in enumerate(wanted):
            found = await self.index.find(message_id, queue_id)
            if found:
                candidates[i] = found
            else:
                missing_ids.update([message_id] if message_id else [])
                missing_queue.update([queue_id] if queue_id else [])
        if missing_ids or missing_queue:
            from_log = await self.scored.find_messages(missing_ids, missing_queue)
            for i, (message_id, queue_id, _) in enumerate(wanted):
                if i not in candidates:
                    candidates[i] = [
                        r
                        for r in from_log
                        if (message_id and r.message_id == message_id) or (queue_id and r.queue_id == queue_id)
                    ]
        out: list[MessageRef | None] = []
        for i, (_, _, relay) in enumerate(wanted):
            refs = candidates.get(i, [])
            # A report may reach any relay; the message may have been scored on another one.
            preferred = [r for r in refs if r.relay == relay] or refs
            out.append(max(preferred, key=lambda r: r.timestamp) if preferred else None)
        return out
