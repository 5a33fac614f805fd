"""The scoring pipeline: request -> identity -> features -> model -> decision -> actions.

A batch goes through in order: each message is parsed and counted in its account's
windows, then one model call scores every row, then decisions are taken in order so
that a message sees the evidence of the messages before it. A near-copy of known spam
is floored at the policy's `known_spam_probability`, and each message's evidence counts
by how its content stands in its account's own templates (`service.decision`), all in
the one read-change-write of the account's state the message takes anyway.

A lifecycle change (rate limit, lock, a lock's end) is held back in that same write and
takes effect only once the ledger has committed it (`Scorer._commit_pending`); while the
database refuses, the account's messages are answered `defer`, each retrying the record.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import hmac
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np
import orjson

from features.behaviour import BehaviourSnapshot, Observation, recipient_domain
from features.engagement import SENT, bad_outcomes, engagement_evidence
from features.fingerprint import Fingerprint
from features.message import Attachment, ParsedMessage, parse_raw, parse_structured
from features.spec import BY_NAME, FEATURE_INDEX
from features.vector import ContentVector, assemble, content_vector
from models.bundle import ModelBundle, Prediction
from service.adapters.replies import (
    AUTOMATIC_LOCK_VERDICT,
    LockInfo,
    SmtpReply,
    lock_info,
    smtp_reply,
    virus_reply,
)
from service.decision import (
    Action,
    Behaviour,
    Decision,
    DecisionPolicy,
    Standing,
    account_evidence,
    account_risk,
    content_evidence,
    corroboration,
    decide,
    is_established,
    locked_decision,
    malware_evidence,
    message_evidence,
    update_account,
)
from service.fingerprints.campaigns import Cluster
from service.fingerprints.service import NO_EFFECT, NO_LOOKUP, ContentLookup, FingerprintService
from service.fingerprints.signatures import SignatureMatch
from service.fingerprints.templates import TemplateMemory, compact_values
from service.identity import Identity, IdentityConflict, resolve_identity
from service.lifecycle import (
    SYSTEM_ACTOR,
    Transition,
    after_decision,
    expire_lock_held_back,
    hold_back,
    lifecycle_of,
    lock_has_expired,
    pending_locks,
    pending_target,
    take_pending,
    unrecorded_description,
)
from service.metrics import Metrics
from service.model_runtime import ModelHolder
from service.notify import TRANSITION_EVENTS, Cooldown, Cooldowns, Notifier
from service.notify import evidence as event_evidence
from service.scanning import MalwareScanner, Scan
from service.settings import RelayPolicy
from service.stores import (
    AccountKey,
    AccountState,
    AccountStateStore,
    AccountStatus,
    BehaviourStore,
    EngagementStore,
    EventLog,
    IdentityRuleStore,
    MessageIndex,
    MessageRef,
    ScoredEvent,
)
from service.stores.ledger import LedgerUnavailable, SqlAccountLedger

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(slots=True)
class MessageInput:
    """A message as the API hands it over: metadata plus raw or structured content."""

    message_id: str
    timestamp: float
    relay: str
    account: str | None = None
    sasl_username: str | None = None
    client_ip: str | None = None
    helo: str | None = None
    envelope_from: str | None = None
    queue_id: str | None = None
    recipients: Sequence[str] = ()
    raw: str | bytes | None = None
    headers: list[tuple[str, str]] | None = None
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] | None = None


@dataclass(frozen=True, slots=True)
class Reason:
    name: str
    value: float
    contribution: float
    description: str


@dataclass(slots=True)
class ScoreResult:
    message_id: str
    account: str
    identity_source: str
    spam_probability: float | None
    account_risk: float
    action: str
    lock_recommended: bool
    account_locked: bool
    reasons: list[Reason]
    model_version: str
    strip_headers: tuple[str, ...] = ()
    account_evidence: float = 0.0  # uncapped, in nats: for replays that sweep the lock threshold
    identity_conflict: IdentityConflict | None = None  # a header named another login than the SASL user
    relay: str = "default"
    rate_limited: bool = False  # deferred because the account is over its rate limit's allowance
    lock: LockInfo | None = None  # the account's lock, when its mail was refused for it
    smtp_reply: SmtpReply | None = None  # the relay's reply for the action (`service.adapters.replies`)
    malware: Scan | None = None  # clamd found malware in it: the signature (`service.scanning`, docs/clamav.md)


@dataclass(slots=True)
class _Pending:
    message: MessageInput
    key: AccountKey
    identity: Identity
    row: np.ndarray | None  # None: the account is locked, the model does not run
    recipients_hashed: list[str]
    engagement_evidence: float = 0.0
    subject: str | None = None
    content: ContentLookup = NO_LOOKUP
    fingerprint: bytes | None = None
    shadow: tuple[str, float] | None = None  # (shadow model version, its probability)
    template_values: np.ndarray | None = None  # the part of the fingerprint the account's templates keep
    known_spam: SignatureMatch | None = None  # a near-copy of known spam, not one of the account's known-good
    bad_outcomes: float = 0.0  # invalid recipients and complaints the engagement evidence rests on
    # The account's lifecycle change could not be recorded yet (the state it waits in): deferred, not judged.
    unrecorded: AccountState | None = None
    lock: LockInfo | None = None  # the account is locked: why (its answer's reason and SMTP reply)
    scan: Scan | None = None  # clamd's verdict, when the message had something to scan


class Scorer:
    def __init__(
        self,
        *,
        model: ModelHolder,
        behaviour: BehaviourStore,
        engagement: EngagementStore,
        accounts: AccountStateStore,
        index: MessageIndex,
        events: EventLog,
        metrics: Metrics,
        policy: DecisionPolicy,
        recipient_hash_key: bytes,
        reasons: int,
        rules: IdentityRuleStore,
        ledger: SqlAccountLedger,
        policies: Callable[[str], RelayPolicy],
        notifier: Notifier,
        store_subjects: bool = True,
        fingerprints: FingerprintService | None = None,
        scanner: MalwareScanner | None = None,
        cooldowns: Cooldowns | None = None,
    ) -> None:
        self.store_subjects = store_subjects
        self.fingerprints = fingerprints
        self.scanner = scanner
        self.model = model
        self.behaviour = behaviour
        self.engagement = engagement
        self.accounts = accounts
        self.index = index
        self.events = events
        self.metrics = metrics
        self.policy = policy
        self.recipient_hash_key = recipient_hash_key
        self.reasons = reasons
        self.rules = rules
        self.ledger = ledger
        self.policies = policies
        self.notifier = notifier
        self.cooldown = cooldowns if cooldowns is not None else Cooldown()
        self._committing: set[AccountKey] = set()  # accounts whose pending change is being recorded now
        self.cpu = CpuWork()

    def hash_recipient(self, address: str) -> str:
        digest = hmac.new(self.recipient_hash_key, address.strip().lower().encode(), hashlib.sha256)
        return digest.hexdigest()[:32]

    async def score(self, messages: Sequence[MessageInput]) -> list[ScoreResult]:
        started = time.perf_counter()
        bundle, shadow = self.model.current, self.model.shadow
        # Everything that can fail on a bad message happens before any account state
        # changes, so a refused batch (or a relay's retry) never counts twice.
        prepared, scans = await self._prepare(messages, bundle)
        pending = []
        for n, (message, (parsed, content)) in enumerate(zip(messages, prepared, strict=True)):
            await _let_others_run(n)
            pending.append(await self._observe(message, parsed, content))
        for item, scan in zip(pending, scans, strict=True):
            item.scan = scan
        rows = [p.row for p in pending if p.row is not None]
        matrix = np.vstack(rows) if rows else None
        prediction = await self.cpu.run(bundle.predict, matrix, inline=len(rows) <= 1) if matrix is not None else None
        shadowed = self._shadow_scores(shadow, matrix)
        results = []
        scored = 0
        for n, item in enumerate(pending):
            await _let_others_run(n)
            if item.row is None:
                results.append(await self._finish_locked(item, bundle))
                continue
            assert prediction is not None
            if shadowed is not None and shadow is not None:
                item.shadow = (shadow.version, float(shadowed[scored]))
            results.append(await self._finish(item, bundle, prediction, scored))
            scored += 1
        elapsed = time.perf_counter() - started
        for item in pending:
            self.metrics.score_latency.labels(self.metrics.relay(item.key.relay)).observe(elapsed)
        return results

    def _shadow_scores(self, shadow: ModelBundle | None, matrix: np.ndarray | None) -> np.ndarray | None:
        """The shadow's probabilities for the same rows: logged, never acted on, never allowed to fail a request.

        The rows carry the acting bundle's text score; a shadow trained from events shares
        that text model (`training.train_events`), a shadow with its own is compared on it.
        """
        if shadow is None or matrix is None:
            return None
        try:
            return shadow.predict(matrix).probabilities
        except Exception:  # a broken shadow costs its comparison, not the answer
            log.exception("shadow model %s failed", shadow.version)
            self.metrics.shadow_failures.inc()
            return None

    def _contents(
        self, messages: Sequence[MessageInput], bundle: ModelBundle
    ) -> list[tuple[ParsedMessage, ContentVector]]:
        prepared = []
        for message in messages:
            prepared.append(self._content(message, bundle))
            if len(messages) > 1:
                time.sleep(0)  # in the worker: hand the GIL to the event loop if it waits, not after 5 ms
        return prepared

    def _content(self, message: MessageInput, bundle: ModelBundle) -> tuple[ParsedMessage, ContentVector]:
        """The pure part: parse and content features, no state touched."""
        parsed = _parse(message)
        fingerprinter = self.fingerprints.fingerprinter if self.fingerprints is not None else None
        return parsed, content_vector(parsed, message.envelope_from, bundle.text_model, fingerprinter)

    async def _prepare(
        self, messages: Sequence[MessageInput], bundle: ModelBundle
    ) -> tuple[list[tuple[ParsedMessage, ContentVector]], list[Scan | None]]:
        """Each message's content features, and clamd's verdict on those that have something to scan.

        With nothing to scan (no clamd, or no message with an attachment) this is the
        content work alone, as before. Otherwise each scan is first handed to clamd
        (connect, write the message), then the features are computed on the event loop as
        always while clamd scans in its own process, then the verdicts are read: a scan
        costs its message only the time by which it outlasts the features, given a free
        core for clamd. (Not the features in a worker thread while the event loop streams
        the scans: the thread holds the GIL, so each step of a scan waits for it, up to
        the interpreter's 5 ms switch interval; docs/clamav.md has the measurements.)
        """
        scanner = self.scanner
        wanted = [scanner.wanted(message.raw) for message in messages] if scanner is not None else []
        if scanner is None or all(data is None for data in wanted):
            # Off the event loop, in the CPU worker thread, unless it is one small message (`CpuWork`).
            prepared = await self.cpu.run(self._contents, messages, bundle, inline=self.cpu.small(messages))
            return prepared, [None] * len(messages)
        tasks = await asyncio.gather(*(scanner.start(data) for data in wanted if data is not None))
        try:
            prepared = [self._content(message, bundle) for message in messages]
        except BaseException:  # a message that cannot be scored: stop the scans
            for task in tasks:
                task.cancel()
            raise
        verdicts = iter([await task for task in tasks])
        return prepared, [next(verdicts) if data is not None else None for data in wanted]

    async def _observe(self, message: MessageInput, parsed: ParsedMessage, content: ContentVector) -> _Pending:
        """Resolve the account, count the message in its windows, and build the feature row."""
        identity = resolve_identity(
            account=message.account,
            sasl_username=message.sasl_username,
            envelope_from=message.envelope_from,
            client_ip=message.client_ip,
            headers=parsed.all_headers,
            rules=self.rules.rules_for(message.relay),
        )
        key = AccountKey(message.relay, identity.account)
        recipients = list(message.recipients)
        observation = Observation(
            timestamp=message.timestamp,
            recipients=len(recipients),
            recipient_domains=tuple(d for d in map(recipient_domain, recipients) if d),
            client_ip=message.client_ip,
        )
        fingerprint = content.fingerprint
        # A locked account's attempts still count towards its content's campaign.
        snapshot, lookup = await self._count(key, observation, fingerprint)
        hashed = [self.hash_recipient(r) for r in recipients]
        state = await self.accounts.get(key)
        state, recorded = await self._settle_lifecycle(key, state, message.timestamp)
        subject = parsed.subject[:SUBJECT_CHARS] if self.store_subjects else None
        stored_fingerprint = fingerprint.to_bytes() if fingerprint is not None else None
        if state.locked or not recorded:
            return _Pending(
                message,
                key,
                identity,
                None,
                hashed,
                subject=subject,
                content=lookup,
                fingerprint=stored_fingerprint,
                unrecorded=None if recorded else state,
                lock=lock_info(key, state),
            )
        engagement = await self.engagement.snapshot(key)
        row = assemble(content.content.features, content.text_model_score, snapshot, engagement, lookup.features)
        values = compact_values(fingerprint) if fingerprint is not None else None
        return _Pending(
            message,
            key,
            identity,
            row,
            hashed,
            engagement_evidence(engagement),
            subject,
            lookup,
            stored_fingerprint,
            template_values=values,
            known_spam=self._known_spam(lookup, state, values),
            bad_outcomes=bad_outcomes(engagement),
        )

    async def _count(
        self, key: AccountKey, observation: Observation, fingerprint: Fingerprint | None
    ) -> tuple[BehaviourSnapshot, ContentLookup]:
        """Count the message in its account's windows and in its content's campaign, matching known spam.

        With Redis, in one round trip (`FingerprintService.count`).
        """
        if self.fingerprints is None:
            return await self.behaviour.observe(key, observation), NO_LOOKUP
        return await self.fingerprints.count(self.behaviour, key, observation, fingerprint)

    def _known_spam(
        self, lookup: ContentLookup, state: AccountState, values: np.ndarray | None
    ) -> SignatureMatch | None:
        """The signature this message is a near-copy of, unless it is a template the account has as known-good.

        Read from the state as the message found it: only an admin's verdict makes a
        template known-good, never a message of the same batch.
        """
        match = lookup.match
        if match is None or match.similarity < self.policy.known_spam_min_similarity:
            return None
        template = TemplateMemory.decode(state.templates).match(values)
        return None if template is not None and template.known_good else match

    async def _finish(self, item: _Pending, bundle: ModelBundle, prediction: Prediction, index: int) -> ScoreResult:
        probability = float(prediction.probabilities[index])
        assert item.row is not None
        reasons = self._reasons(bundle, item.row, prediction.contributions[index])
        if item.known_spam is not None:
            probability, reasons = self._floor_known_spam(item.known_spam, probability, reasons)
        evidence = message_evidence(probability, bundle.prior_log_odds, self.policy)
        effect = await self.fingerprints.campaign_effect(item.content, probability) if self.fingerprints else NO_EFFECT
        campaign, spam_campaign = effect.evidence, effect.spam_like
        at, relay_policy = item.message.timestamp, self.policies(item.key.relay)
        behaviour = _behaviour(item.row)
        malware = item.scan if item.scan is not None and item.scan.infected else None

        def account_step(state: AccountState) -> tuple[Decision, list[Transition], str] | None:
            if state.locked or state.pending_change:  # locked, or a change waits for its record
                return None
            established = is_established(behaviour.history_seconds, state.messages_scored, self.policy)
            corroborated_by = corroboration(
                behaviour,
                item.engagement_evidence,
                self.policy,
                known_spam=item.known_spam is not None,
                spam_campaign=spam_campaign,
                compromised_verdict=state.compromised_verdict,
                malware=malware is not None,
                bad_outcomes=item.bad_outcomes,
            ) + _conflict_corroboration(item.identity)
            counted, standing = content_evidence(
                state,
                item.template_values,
                evidence,
                at,
                established=established,
                corroborated=bool(corroborated_by),
                policy=self.policy,
            )
            if malware is not None and not state.allowlisted:  # one detection reaches the lock threshold
                counted = max(counted, 0.0) + malware_evidence(self.policy)
            update_account(state, counted + campaign, at)
            may_lock = established or bool(corroborated_by)
            decision = decide(
                probability,
                state,
                self.policy,
                item.engagement_evidence,
                may_lock=may_lock,
                malware=malware is not None,
            )
            why = _risk_reason(
                decision,
                probability,
                reasons,
                item.content if campaign > 0 else None,
                known_spam=item.known_spam,
                standing=standing,
                corroborated_by=None if established else corroborated_by,
                malware=malware,
            )
            before = lifecycle_of(state)
            detected = _malware_transition(state, item, malware, decision) if malware is not None else None
            action, transitions = after_decision(state, decision, why, at, relay_policy)
            if detected is not None:  # recorded (audit log) and announced with the lock, if any
                transitions = [detected, *transitions]
            hold_back(state, before, transitions)  # it takes effect once recorded, below
            return replace(decision, action=action), transitions, why

        state, step = await self.accounts.update(item.key, account_step)
        if step is None:
            item.unrecorded = state if state.pending_change and not state.locked else None
            item.lock = lock_info(item.key, state)
            return await self._finish_locked(item, bundle)
        decision, transitions, why = step
        state, recorded = await self._commit_pending(item.key, state)
        if not recorded:  # not applied: the account's mail waits for the record
            decision, transitions = replace(decision, action=Action.DEFER), []
            reasons = [self._unrecorded_reason(state), *reasons][: self.reasons]
        if malware is not None:  # refused whatever else holds; the detection leads the reasons
            decision = replace(decision, action=Action.REJECT)
            reasons = [self._malware_reason(malware, state), *reasons][: self.reasons]
            await self._learn_malware(item, malware)
        elif self._fails_closed(item.scan) and decision.action is Action.ACCEPT:
            decision = replace(decision, action=Action.DEFER)
            reasons = [self._scan_failed_reason(item.scan), *reasons][: self.reasons]
        await self._announce_signals(item, decision, probability, why)
        await self._learn_signature(item, probability, transitions)
        self.metrics.messages_scored.labels(self.metrics.relay(item.key.relay)).inc()
        self.metrics.spam_probability.observe(probability)
        rate_limited = decision.action is Action.DEFER and state.status is AccountStatus.RATE_LIMITED
        result = await self._record(
            item, bundle, decision, probability, reasons, locked=False, rate_limited=rate_limited
        )
        result.account_evidence = account_evidence(state, item.engagement_evidence, self.policy)
        return result

    def _floor_known_spam(
        self, match: SignatureMatch, probability: float, reasons: list[Reason]
    ) -> tuple[float, list[Reason]]:
        """Known spam counts on its own: the probability is raised to the policy's floor, and a reason says why."""
        floored = max(probability, self.policy.known_spam_probability)
        if self.reasons == 0:
            return floored, reasons
        reason = Reason(
            name="known_spam_signature",
            value=round(match.similarity, 4),
            contribution=_logit(floored) - _logit(probability),
            description=(
                f"Near-copy (similarity {match.similarity:.2f}) of known-spam signature {match.signature_id} "
                f"(source: {match.source}, added {match.age_seconds / 86_400:.1f} days ago, "
                f"matched {match.hits} times before)"
            ),
        )
        return floored, [reason, *reasons][: self.reasons]

    async def _finish_locked(self, item: _Pending, bundle: ModelBundle) -> ScoreResult:
        if (state := item.unrecorded) is not None:
            # A change waits for its record: deferred (the relay retries), not judged meanwhile.
            risk = account_risk(state.evidence, self.policy.lock_threshold)
            decision = Decision(Action.DEFER, risk, pending_locks(state))
            reasons = [self._unrecorded_reason(state)][: self.reasons]
            result = await self._record(item, bundle, decision, None, reasons, locked=True)
            result.account_locked = state.locked  # still locked while the end of its lock waits
            return result
        # Why it is locked, in the reasons: the lock's own reason, how long, by whom.
        reasons = [_lock_reason(item.lock)][: self.reasons] if item.lock is not None else []
        return await self._record(item, bundle, locked_decision(), None, reasons, locked=True)

    def _unrecorded_reason(self, state: AccountState) -> Reason:
        return Reason("lifecycle_not_recorded", 0.0, 0.0, unrecorded_description(state))

    def _malware_reason(self, scan: Scan, state: AccountState) -> Reason:
        added = 0.0 if state.allowlisted else malware_evidence(self.policy)
        scanned = f"{scan.scanned_bytes} bytes scanned" + (", the start of a longer message" if scan.truncated else "")
        effect = (
            "the account is allowlisted: no evidence added"
            if state.allowlisted
            else f"{added:.1f} nats of evidence against the account, enough to lock it on its own"
        )
        description = f"ClamAV (clamd) found {scan.signature} in the message ({scanned}): it is refused; {effect}"
        return Reason("malware", 1.0, added, description)

    def _fails_closed(self, scan: Scan | None) -> bool:
        return scan is not None and scan.failed and self.scanner is not None and not self.scanner.fail_open

    def _scan_failed_reason(self, scan: Scan | None) -> Reason:
        assert scan is not None
        return Reason(
            "malware_scan_failed",
            0.0,
            0.0,
            f"The message could not be scanned for malware ({scan.failure}: {scan.detail}); clamd fails closed "
            "here (OUTGUARD_CLAMD_FAIL_OPEN=false), so it is deferred until clamd answers",
        )

    async def _learn_malware(self, item: _Pending, scan: Scan) -> None:
        """A message carrying malware is known spam: its content is held from every other account too.

        Remembered with the account's lock signatures, so that an admin who vouches for
        the account (the detection was false) takes it down with them.
        """
        if self.fingerprints is None or item.fingerprint is None:
            return
        signature_id, created = await self.fingerprints.add(
            Fingerprint.from_bytes(item.fingerprint),
            source="malware",
            actor="clamd",
            at=item.message.timestamp,
            message_id=item.message.message_id,
            note=scan.signature,
        )
        if created:

            def remember(state: AccountState) -> None:
                state.lock_signatures = (*state.lock_signatures, signature_id)[-MAX_LOCK_SIGNATURES:]

            await self.accounts.update(item.key, remember)

    async def _record(
        self,
        item: _Pending,
        bundle: ModelBundle,
        decision: Decision,
        probability: float | None,
        reasons: list[Reason],
        locked: bool,
        rate_limited: bool = False,
    ) -> ScoreResult:
        relay = self.metrics.relay(item.key.relay)
        self.metrics.actions.labels(decision.action.value, relay).inc()
        if decision.lock_recommended:
            self.metrics.lock_recommendations.labels(relay).inc()
        message, conflict = item.message, item.identity.conflict
        if not locked:
            await self.index.remember(
                MessageRef(
                    message.message_id,
                    message.queue_id,
                    item.key.relay,
                    item.key.account,
                    message.timestamp,
                    item.fingerprint,
                    probability,
                )
            )
        if decision.action is Action.ACCEPT and item.recipients_hashed:
            # Only mail that leaves can bounce or be complained about.
            await self.engagement.add(item.key, {SENT: float(len(item.recipients_hashed))}, message.timestamp)
        await self.events.append(
            ScoredEvent(
                timestamp=item.message.timestamp,
                relay=item.key.relay,
                account=item.key.account,
                identity_source=item.identity.source,
                message_id=item.message.message_id,
                queue_id=item.message.queue_id,
                fingerprint=item.fingerprint,
                model_version=bundle.version,
                feature_spec_version=bundle.feature_spec_version,
                features=item.row.tolist() if item.row is not None else None,
                spam_probability=probability,
                account_risk=decision.account_risk,
                action=decision.action.value,
                lock_recommended=decision.lock_recommended,
                recipients_hashed=item.recipients_hashed,
                client_ip=item.message.client_ip,
                subject=item.subject,
                scored_at=time.time(),
                shadow_model_version=item.shadow[0] if item.shadow else None,
                shadow_probability=item.shadow[1] if item.shadow else None,
                identity_conflict=orjson.dumps(conflict.as_dict()).decode() if conflict else None,
            )
        )
        result = ScoreResult(
            message_id=item.message.message_id,
            account=item.key.account,
            identity_source=item.identity.source,
            spam_probability=probability,
            account_risk=decision.account_risk,
            action=decision.action.value,
            lock_recommended=decision.lock_recommended,
            account_locked=locked,
            reasons=reasons,
            model_version=bundle.version,
            strip_headers=item.identity.strip_headers,
            identity_conflict=conflict,
            relay=item.key.relay,
            rate_limited=rate_limited,
            lock=item.lock if locked else None,
            malware=item.scan if item.scan is not None and item.scan.infected else None,
        )
        result.smtp_reply = smtp_reply(result, self.policies(item.key.relay))
        if result.malware is not None and result.action == Action.REJECT.value:  # 550 5.7.1 Virus found: NAME
            signature = result.malware.signature or "unnamed"
            result.smtp_reply = virus_reply(signature, result.account, self.policies(item.key.relay))
        return result

    async def apply_transitions(self, key: AccountKey, state: AccountState, transitions: list[Transition]) -> None:
        """Record lifecycle changes durably, then announce them; the caller applies them only after this returns.

        `LedgerUnavailable` (a 503) when the database refused: nothing was recorded or announced.
        """
        if not transitions:
            return
        await self.ledger.record(key, state, transitions)
        await self.announce_transitions(key, state, transitions)

    async def _settle_lifecycle(self, key: AccountKey, state: AccountState, at: float) -> tuple[AccountState, bool]:
        """Before a message is judged: record the account's pending change, then a temporary lock that is due to end.

        The state after them, and whether nothing is left waiting for its record (False:
        the message is deferred). Only an account with something pending or a lock that
        is due goes through the read-change-write: every other message reads once (with
        Redis, one GET instead of a WATCH transaction).
        """
        state, recorded = await self._commit_pending(key, state)
        if recorded and lock_has_expired(state, at):
            state, _ = await self.accounts.update(key, lambda s: expire_lock_held_back(s, at))
            state, recorded = await self._commit_pending(key, state)
        return state, recorded

    async def _commit_pending(self, key: AccountKey, state: AccountState) -> tuple[AccountState, bool]:
        """Record the account's held-back lifecycle change; once committed, it takes effect and is announced.

        The state after, and whether nothing is left pending. When the database refuses,
        the change stays pending (not applied) for the account's next message to retry.
        """
        if not state.pending_change:
            return state, True
        if key in self._committing:  # another message of the account is recording it right now
            return state, False
        recorded = state.pending_change
        target, transitions = pending_target(state)
        self._committing.add(key)
        try:
            try:
                await self.ledger.record(key, target, transitions)
            except LedgerUnavailable as error:
                log.warning(
                    "a lifecycle change (%s) could not be recorded; not applied, the account's mail is deferred: %s",
                    ", ".join(t.action for t in transitions),
                    type(error.__cause__ or error).__name__,
                )
                return state, False
            state, taken = await self.accounts.update(key, lambda s: take_pending(s, recorded))
        finally:
            self._committing.discard(key)
        if taken:
            await self.announce_transitions(key, state, transitions)
        return state, not state.pending_change

    async def announce_transitions(self, key: AccountKey, state: AccountState, transitions: list[Transition]) -> None:
        """Count and announce lifecycle changes already recorded: one path for the scorer, admin and bulk."""
        for transition in transitions:
            self.metrics.transitions.labels(transition.action).inc()
            if (event_type := TRANSITION_EVENTS.get(transition.action)) is not None:
                await self.notifier.announce(event_type, key, transition_payload(key, state, transition))

    async def _announce_signals(self, item: _Pending, decision: Decision, probability: float, why: str) -> None:
        at = item.message.timestamp
        await self._announce_campaign(item, probability)
        spam = probability >= self.policy.hold_threshold
        if spam and await self.cooldown.ready(item.key, "account.spam_detected", at):
            payload = {
                "reason_codes": ["spam_content"],
                "spam_probability": probability,
                "evidence": event_evidence(why, spam_probability=probability, message_id=item.message.message_id),
                "message_id": item.message.message_id,
                "account_risk": decision.account_risk,
            }
            await self.notifier.announce("account.spam_detected", item.key, payload)
        assert item.row is not None
        per_hour, vs_baseline = (
            item.row[FEATURE_INDEX["acct_msgs_1h"]],
            item.row[FEATURE_INDEX["acct_rate_vs_baseline"]],
        )
        spike = per_hour >= VOLUME_SPIKE_MIN_PER_HOUR and vs_baseline >= VOLUME_SPIKE_LOG_RATIO
        if spike and await self.cooldown.ready(item.key, "account.volume_spike", at):
            payload = {
                "reason_codes": ["volume_spike"],
                "messages_last_hour": per_hour,
                "times_baseline": round(math.exp(vs_baseline), 1),
                "account_risk": decision.account_risk,
                "evidence": event_evidence(
                    f"{per_hour:.0f} messages in the last hour, {math.exp(vs_baseline):.1f} times its baseline",
                    messages_last_hour=per_hour,
                    times_baseline=round(math.exp(vs_baseline), 1),
                ),
            }
            await self.notifier.announce("account.volume_spike", item.key, payload)

    async def _learn_signature(self, item: _Pending, probability: float, transitions: list[Transition]) -> None:
        """The message that got its account locked is known spam, if it would have been held on its own.

        A lock is the model's and the account's evidence, not a person's word. A lock
        message that scored under the hold threshold was not confidently spam; learning
        it would floor every other account that sends the same content at the known-spam
        probability, so one shop's false lock on an open-source shop template would
        cascade to every shop that sends it. Complaints and admin verdicts, which are a
        person's word, teach at a lower bar (`complaint_min_probability`).

        The account remembers the signatures its locks taught, so that an admin who
        says the lock was false takes them down with it (`service.feedback.verdicts`).
        """
        if self.fingerprints is None or item.fingerprint is None:
            return
        if probability < max(self.policy.hold_threshold, self.fingerprints.policy.complaint_min_probability):
            return
        if any(t.action in ("locked_temporary", "locked") for t in transitions):
            signature_id, created = await self.fingerprints.add(
                Fingerprint.from_bytes(item.fingerprint),
                source="lock",
                actor="outguard",
                at=item.message.timestamp,
                message_id=item.message.message_id,
            )
            if created:  # content already held came from elsewhere: not this lock's to take back

                def remember(state: AccountState) -> None:
                    learned = (*state.lock_signatures, signature_id)
                    state.lock_signatures = learned[-MAX_LOCK_SIGNATURES:]

                await self.accounts.update(item.key, remember)

    async def _raise_campaign_senders(self, item: _Pending, cluster: Cluster | None) -> None:
        """A campaign just detected raises the risk of every account that sent it, not only the next one's."""
        if self.fingerprints is None:
            return
        senders, evidence = self.fingerprints.earlier_senders(cluster, item.message.timestamp, item.key)
        if evidence <= 0:
            return

        def raise_evidence(state: AccountState) -> None:
            if not state.locked:
                state.evidence += evidence

        for key in senders:
            await self.accounts.update(key, raise_evidence)

    async def _announce_campaign(self, item: _Pending, probability: float) -> None:
        campaign = item.content.campaign
        if campaign is None or not campaign.newly_detected or self.fingerprints is None:
            return
        cluster = await self.fingerprints.cluster(campaign.cluster_id)
        await self._raise_campaign_senders(item, cluster)
        senders = [f"{k.relay}/{k.account}" for k in cluster.senders][-MAX_CAMPAIGN_ACCOUNTS_LISTED:] if cluster else []
        self.metrics.campaigns_detected.inc()
        payload = {
            "reason_codes": ["campaign"],
            "campaign_id": campaign.cluster_id,
            "accounts_in_window": campaign.accounts_in_window,
            "new_accounts": campaign.new_accounts,
            "established_accounts": campaign.established_accounts,
            "mean_spam_probability": cluster.mean_probability if cluster else probability,
            "accounts": senders,
            "message_id": item.message.message_id,
        }
        payload["evidence"] = event_evidence(
            f"one content sent by {campaign.accounts_in_window} accounts ({campaign.new_accounts} of them new)",
            **{k: payload[k] for k in ("campaign_id", "accounts_in_window", "new_accounts", "mean_spam_probability")},
        )
        await self.notifier.announce("campaign.detected", item.key, payload)

    def _reasons(self, bundle: ModelBundle, row: np.ndarray, contributions: np.ndarray) -> list[Reason]:
        if self.reasons == 0:
            return []
        top = np.argsort(-np.abs(contributions))[: self.reasons]
        return [
            Reason(
                name=bundle.model_features[i],
                value=float(row[bundle.column_index[i]]),
                contribution=float(contributions[i]),
                description=BY_NAME[bundle.model_features[i]].description,
            )
            for i in top
            if contributions[i] != 0.0
        ]


SUBJECT_CHARS = 120
MAX_CAMPAIGN_ACCOUNTS_LISTED = 50
MAX_LOCK_SIGNATURES = 8  # per account: the signatures its most recent automatic locks taught
# A volume spike: at least this many messages in the last hour, and this many times
# (as a log) the account's own hourly baseline.
VOLUME_SPIKE_MIN_PER_HOUR = 20
VOLUME_SPIKE_LOG_RATIO = math.log(10)


def _conflict_corroboration(identity: Identity) -> tuple[str, ...]:
    """A header naming another login than the SASL user corroborates a new account's spam.

    It adds no evidence of its own: mail relayed from another server (a mailing list, a
    customer's own MTA behind this relay) carries that server's `Received` and
    `X-AuthUser` lines, so on ham it costs nothing. But a login that sends spam-scored
    mail while passing it off as someone else's is not a cold start to wait out: like a
    sprayed recipient list, it lets its own content evidence lock it.
    """
    if identity.conflict is None:
        return ()
    return (f"a {identity.conflict.header} header naming another account than its SASL login",)


def _risk_reason(
    decision: Decision,
    probability: float,
    reasons: list[Reason],
    campaign: ContentLookup | None = None,
    *,
    known_spam: SignatureMatch | None = None,
    standing: Standing | None = None,
    corroborated_by: tuple[str, ...] | None = None,
    malware: Scan | None = None,
) -> str:
    """Why the account is where it is, in words (lock reasons, webhooks, incident reports).

    `corroborated_by` is None for an established account, else what corroborates a new one.
    """
    top = ", ".join(r.name for r in reasons[:3] if r.contribution > 0) or "no single feature"
    verdict = AUTOMATIC_LOCK_VERDICT if decision.lock_recommended else "evidence of spam building up"
    found = f"; clamd found malware in the last message: {malware.signature}" if malware is not None else ""
    why = (
        f"{verdict} (account risk {decision.account_risk:.2f}){found}; the last message scored {probability:.3f} "
        f"spam probability, driven by {top}"
    )
    if known_spam is not None:
        why += (
            f"; it is a near-copy (similarity {known_spam.similarity:.2f}) of known-spam signature "
            f"{known_spam.signature_id} (source: {known_spam.source})"
        )
    if standing is not None:
        why += f"; {_STANDING_WORDS[standing]}"
    if campaign is not None and campaign.campaign is not None:
        why += (
            f"; its content is part of campaign {campaign.campaign.cluster_id}, sent by "
            f"{campaign.campaign.accounts_in_window} accounts in the last hour"
        )
    if corroborated_by is not None:
        corroborated = ", ".join(corroborated_by) if corroborated_by else "nothing yet (no lock on content alone)"
        why += f"; a new account, its content corroborated by {corroborated}"
    return why


def _malware_transition(state: AccountState, item: _Pending, scan: Scan, decision: Decision) -> Transition:
    """The detection as an audit-log entry (no change of status), recorded with the account's lifecycle change.

    Announced as `account.malware_detected` once recorded (`service.notify.TRANSITION_EVENTS`).
    """
    return Transition(
        "malware_detected",
        state.status,
        state.status,
        SYSTEM_ACTOR,
        f"clamd found {scan.signature} in message {item.message.message_id}",
        item.message.timestamp,
        {
            "signature": scan.signature,
            "message_id": item.message.message_id,
            "queue_id": item.message.queue_id,
            "scanned_bytes": scan.scanned_bytes,
            "truncated": scan.truncated,
            "lock_recommended": decision.lock_recommended,
            "allowlisted": state.allowlisted,
            "account_risk": decision.account_risk,
        },
    )


_STANDING_WORDS = {
    Standing.NEW_CONTENT: "content the account had not sent before",
    Standing.NORMAL: "a template the account has long sent (counted only as ham)",
    Standing.REPEAT: "a repeat of a template the account first sent within the last day (counted once)",
    Standing.NEW_TEMPLATE: "a template the account started sending within the last day",
}


def _lock_reason(lock: LockInfo) -> Reason:
    """A locked account's answer says why: the lock's reason, how long it lasts, who locked it."""
    return Reason("account_locked", 1.0, 0.0, lock.describe())


def _behaviour(row: np.ndarray) -> Behaviour:
    return Behaviour(
        history_seconds=math.expm1(float(row[FEATURE_INDEX["acct_history_hours"]])) * 3_600,
        recipients_1h=float(row[FEATURE_INDEX["acct_rcpts_1h"]]),
        recipient_domains_1h=float(row[FEATURE_INDEX["acct_rcpt_domains_1h"]]),
        client_ips_1h=float(row[FEATURE_INDEX["acct_client_ips_1h"]]),
    )


def _logit(probability: float) -> float:
    p = min(max(probability, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


def transition_payload(key: AccountKey, state: AccountState, transition: Transition) -> dict[str, Any]:
    return {
        "reason_codes": [transition.action],
        "reason": transition.reason,
        "actor": transition.actor,
        "status": state.status.value,
        "previous_status": transition.previous.value,
        "locked_until": state.locked_until,
        "automatic_locks": state.temporary_locks,
        "evidence": event_evidence(transition.reason, **transition.details),
    }


# The event loop gets a turn after this many messages of a batch are counted (or
# decided): the account steps of 1,000 messages would otherwise hold it for 100 ms.
YIELD_EVERY = 32
# One message up to this size is parsed and scored on the event loop: about 2 ms of CPU,
# less than a hand-off to the worker thread and back would add to it. Anything larger,
# and any batch, goes to the worker thread.
INLINE_MAX_BYTES = 64 * 1024


async def _let_others_run(n: int) -> None:
    if n and n % YIELD_EVERY == 0:
        await asyncio.sleep(0)


class CpuWork:
    """Where the CPU-bound part of scoring runs (parsing, content features, the model): one worker thread.

    The event loop only hands work over and awaits it, so `/healthz`, `/metrics` and
    other requests are answered while a batch of 1,000 or a 10 MB message is parsed.
    One thread, because the interpreter runs one at a time anyway (the GIL): more would
    only switch between batches, and each process scales by `--workers`, not threads.
    The loop still takes the GIL back at least every switch interval (5 ms) to serve
    what is ready. A single small message stays on the loop (`INLINE_MAX_BYTES`).
    """

    def __init__(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="outguard-cpu")
        self.ran_in: str | None = None  # the thread the last offloaded call ran in
        self.handed_over_from: str | None = None  # the thread (the event loop's) that handed it over
        self.offloaded = 0  # calls run in the worker thread
        self.inline = 0  # calls run on the event loop

    @staticmethod
    def small(messages: Sequence[MessageInput]) -> bool:
        """One message whose content is small enough to score on the loop."""
        if len(messages) != 1:
            return False
        message = messages[0]
        if message.raw is not None:
            return len(message.raw) <= INLINE_MAX_BYTES
        size = sum(len(part or "") for part in (message.subject, message.text, message.html))
        return size <= INLINE_MAX_BYTES and len(message.headers or ()) + len(message.attachments or ()) <= 100

    async def run(self, function: Callable[..., T], *args: Any, inline: bool = False) -> T:
        if inline:
            self.inline += 1
            return function(*args)
        self.offloaded += 1
        self.handed_over_from = threading.current_thread().name
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, function, args)

    def _call(self, function: Callable[..., T], args: tuple[Any, ...]) -> T:
        self.ran_in = threading.current_thread().name
        return function(*args)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _parse(message: MessageInput) -> ParsedMessage:
    if message.raw is not None:
        return parse_raw(message.raw)
    return parse_structured(message.headers, message.subject, message.text, message.html, message.attachments)
