"""Replay a simulated provider through the service, and measure what matters per account.

In process: every message goes through the real `Scorer` and every feedback event
through the real `FeedbackIngestor`, in log order, with the service's settings. Feedback
about a message outguard did not let out (held, rejected, deferred) is dropped: it
would never have happened.

Metrics: message-level ROC and PR AUC; per compromised identity, the spam messages
accepted before it was locked (median, p90, max) and the time to lock; compromised
identities never caught; false locks per 1,000 legitimate account-days and the kinds of
account they hit. `threshold_sweep` recomputes delay and false locks for other lock
thresholds from each account's evidence trajectory (recorded with auto-lock off).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from service.container import build_container
from service.scoring import MessageInput
from service.settings import Settings
from service.stores import FeedbackEvent, FeedbackType
from training.corpora import TREC_DIR

DAY = 86_400.0


@dataclass(slots=True)
class MessageOutcome:
    at: float
    relay: str
    account: str  # as outguard identified it
    truth_account: str
    spam: bool
    episode: str | None
    kind: str
    probability: float | None
    action: str
    locked: bool
    evidence: float


@dataclass(slots=True)
class ReplayResult:
    outcomes: list[MessageOutcome] = field(default_factory=list)
    feedback_applied: int = 0
    feedback_dropped: int = 0


def corpus_resolver(data_dir: Path, cache_dir: Path) -> Callable[[str], bytes]:
    roots = {"spamassassin": data_dir / "spamassassin", "trec": cache_dir / TREC_DIR / "messages"}

    @lru_cache(maxsize=8_192)
    def resolve(ref: str) -> bytes:
        source, _, name = ref.partition("/")
        return (roots[source] / name).read_bytes()

    return resolve


def _time(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def to_message(event: dict[str, Any], content: bytes) -> MessageInput:
    m = event["message"]
    script = m.get("php_script")
    if script:  # a PHP mailer's identity travels in the header shared hosts add
        content = f"X-PHP-Originating-Script: {script}\r\n".encode() + content
    return MessageInput(
        message_id=m["message_id"],
        timestamp=_time(m["timestamp"]),
        relay=m["relay"],
        sasl_username=m.get("sasl_username"),
        client_ip=m.get("client_ip"),
        envelope_from=m.get("envelope_from"),
        recipients=m["recipients"],
        raw=content,
    )


async def replay(
    events: Iterable[dict[str, Any]],
    settings: Settings,
    resolve: Callable[[str], bytes],
    progress: Callable[[int], None] | None = None,
) -> ReplayResult:
    container = build_container(settings)
    scorer, ingestor = container.scorer, container.ingestor
    result = ReplayResult()
    sent: set[str] = set()
    pending: list[FeedbackEvent] = []

    async def flush_feedback() -> None:
        if pending:
            await ingestor.ingest(pending)
            result.feedback_applied += len(pending)
            pending.clear()

    try:
        for n, event in enumerate(events):
            if event["type"] == "feedback":
                f = event["event"]
                if f["message_id"] not in sent:
                    result.feedback_dropped += 1
                    continue
                detail = f.get("detail", {})
                if f["type"] == "bounce":
                    detail = {
                        **detail,
                        "bounce_class": "hard",
                        "invalid_recipient": detail.get("status", "").startswith("5.1."),
                    }
                pending.append(
                    FeedbackEvent(
                        event_id=f["event_id"],
                        type=FeedbackType(f["type"]),
                        timestamp=_time(f["timestamp"]),
                        message_id=f["message_id"],
                        recipient_hash=scorer.hash_recipient(f["recipient"]),
                        detail=detail,
                    )
                )
                continue
            await flush_feedback()
            message = to_message(event, resolve(event["content_ref"]))
            [scored] = await scorer.score([message])
            truth = event["truth"]
            result.outcomes.append(
                MessageOutcome(
                    at=message.timestamp,
                    relay=message.relay,
                    account=scored.account,
                    truth_account=truth["account"],
                    spam=bool(truth["spam"]),
                    episode=truth["episode"],
                    kind=truth["kind"],
                    probability=scored.spam_probability,
                    action=scored.action,
                    locked=scored.account_locked,
                    evidence=scored.account_evidence,
                )
            )
            if scored.action == "accept":
                sent.add(message.message_id)
            if progress is not None:
                progress(n)
        await flush_feedback()
    finally:
        container.close()
    return result


def replay_sync(
    events: list[dict[str, Any]],
    settings: Settings,
    resolve: Callable[[str], bytes],
    progress: Callable[[int], None] | None = None,
) -> ReplayResult:
    return asyncio.run(replay(events, settings, resolve, progress))


# -- metrics


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def account_metrics(result: ReplayResult, truth: list[dict[str, Any]], days: float) -> dict[str, Any]:
    by_identity: dict[tuple[str, str], list[MessageOutcome]] = defaultdict(list)
    for outcome in result.outcomes:
        by_identity[(outcome.relay, outcome.account)].append(outcome)

    # Compromised identities: the episodes' identities (a PHP mailer is its own identity).
    spam_before_lock, time_to_lock, never_caught = [], [], []
    episodes = [(a["relay"], e) for a in truth for e in a["episodes"]]
    for relay, episode in episodes:
        stream = by_identity.get((relay, episode["identity"]), [])
        spam = [o for o in stream if o.spam and o.at >= episode["start"]]
        if not spam:
            continue
        locked_at = next((o.at for o in stream if o.locked and o.at >= episode["start"]), None)
        accepted = [o for o in spam if o.action == "accept" and (locked_at is None or o.at < locked_at)]
        spam_before_lock.append(len(accepted))
        if locked_at is None:
            never_caught.append(f"{episode['kind']}:{episode['identity']}")
        else:
            time_to_lock.append(locked_at - episode["start"])

    compromised = {(relay, e["identity"]) for relay, e in episodes}
    legitimate = [a for a in truth if (a["relay"], a["account"]) not in compromised]
    false_locks: dict[str, int] = defaultdict(int)
    falsely_locked = []
    for account in legitimate:
        stream = by_identity.get((account["relay"], account["account"]), [])
        if any(o.locked for o in stream):
            false_locks[account["kind"]] += 1
            falsely_locked.append(
                {"account": account["account"], "kind": account["kind"], "surprises": account["surprises"]}
            )
    account_days = sum(
        max(0.0, days - (a["active_from"] - min(x["active_from"] for x in truth)) / DAY) for a in legitimate
    )

    scored = [o for o in result.outcomes if o.probability is not None]
    labels = np.array([o.spam for o in scored], dtype=int)
    probabilities = np.array([o.probability for o in scored])
    message_level = {}
    if labels.size and 0 < labels.sum() < labels.size:
        message_level = {
            "roc_auc": float(roc_auc_score(labels, probabilities)),
            "pr_auc": float(average_precision_score(labels, probabilities)),
        }

    return {
        "messages": len(result.outcomes),
        "spam_messages": int(sum(o.spam for o in result.outcomes)),
        "message_level": message_level,
        "compromised_identities": len(spam_before_lock),
        "spam_accepted_before_lock": {
            "median": _percentile(spam_before_lock, 50),
            "p90": _percentile(spam_before_lock, 90),
            "max": max(spam_before_lock) if spam_before_lock else None,
        },
        "minutes_to_lock": {
            "median": (_percentile(time_to_lock, 50) or 0) / 60 if time_to_lock else None,
            "p90": (_percentile(time_to_lock, 90) or 0) / 60 if time_to_lock else None,
        },
        "never_caught": never_caught,
        "legitimate_accounts": len(legitimate),
        "legitimate_account_days": round(account_days, 1),
        "false_locks": sum(false_locks.values()),
        "false_locks_per_1000_account_days": 1000 * sum(false_locks.values()) / account_days if account_days else 0,
        "false_locks_by_kind": dict(false_locks),
        "falsely_locked": falsely_locked[:50],
        "feedback_applied": result.feedback_applied,
        "feedback_dropped": result.feedback_dropped,
    }
