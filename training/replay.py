"""Replay a simulated provider through the service, and measure what matters per account.

In process: every message goes through the real `Scorer` and every feedback event
through the real `FeedbackIngestor`, in log order, with the service's settings. Feedback
about a message outguard did not let out (held, rejected, deferred) is dropped: it
would never have happened.

Metrics: message-level ROC and PR AUC; per compromised identity, the spam messages
accepted before it was locked (median, p90, max) and the time to lock; compromised
identities never caught; false locks per 1,000 legitimate account-days and the kinds of
account they hit. Fraudulent sign-ups (`fraud_signup`, modern content) are reported on
their own (`fraud_signups`), not in the compromised accounts' figures: they are not a
customer's account taken over but a spammer's own. `threshold_sweep` recomputes delay
and false locks for other lock thresholds from each account's evidence trajectory
(recorded with auto-lock off).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
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
from training.mutations import mutate_raw

DAY = 86_400.0
FRAUD_SIGNUP = "fraud_signup"


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


MODERN = "modern"  # refs "modern/<file of modern-train>" (see training.simulator)


def corpus_resolver(data_dir: Path, cache_dir: Path) -> Callable[..., bytes]:
    """`resolve(ref)` for corpus refs, `resolve(ref, salt)` for modern ones (modern-train, extracted on first use).

    A modern ref is the message as `modern_message` gives it: corpus artefacts undone,
    ham sent in the shape of the mailer library the sending identity (the salt) uses.
    """
    roots = {"spamassassin": data_dir / "spamassassin", "trec": cache_dir / TREC_DIR / "messages"}

    @lru_cache(maxsize=1)
    def modern_root() -> Path:
        from training.modern_corpus import ensure_modern_extracted

        return ensure_modern_extracted(data_dir, cache_dir)

    @lru_cache(maxsize=8_192)
    def resolve(ref: str, salt: str = "") -> bytes:
        source, _, name = ref.partition("/")
        if source == MODERN:
            from training.modern_corpus import modern_message

            return modern_message(modern_root(), name, int(name.startswith("spam/")), salt=salt)
        return (roots[source] / name).read_bytes()

    return resolve


def sending_identity(event: dict[str, Any]) -> str:
    """The identity outguard sees send the message: its PHP script, else its SASL user."""
    message = event["message"]
    return message.get("php_script") or message.get("sasl_username") or ""


def event_content(event: dict[str, Any], resolve: Callable[..., bytes]) -> bytes:
    """The message's corpus content; a campaign's copy gets the per-recipient edits a spam run makes.

    Modern content is salted with the sending identity, so one shop always sends through one mailer.
    """
    ref = event["content_ref"]
    content = resolve(ref, sending_identity(event)) if ref.startswith(MODERN + "/") else resolve(ref)
    if (seed := event.get("mutation")) is not None:
        content = mutate_raw(content, np.random.default_rng(seed))
    return content


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
    resolve: Callable[..., bytes],
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
                    status = detail.get("status", "")
                    hard = status.startswith("5")
                    detail = {
                        **detail,
                        "bounce_class": "hard" if hard else "soft",
                        "invalid_recipient": hard and status.startswith("5.1."),
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
            message = to_message(event, event_content(event, resolve))
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
    resolve: Callable[..., bytes],
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
    # Fraudulent sign-ups are counted apart (`fraud`), in the same three lists.
    spam_before_lock, time_to_lock, never_caught = [], [], []
    fraud: tuple[list[int], list[float], list[str]] = ([], [], [])
    by_kind: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    episodes = [(a["relay"], e) for a in truth for e in a["episodes"]]
    for relay, episode in episodes:
        stream = by_identity.get((relay, episode["identity"]), [])
        spam = [o for o in stream if o.spam and o.at >= episode["start"]]
        if not spam:
            continue
        locked_at = next((o.at for o in stream if o.locked and o.at >= episode["start"]), None)
        accepted = [o for o in spam if o.action == "accept" and (locked_at is None or o.at < locked_at)]
        if episode["kind"] == FRAUD_SIGNUP:
            fraud[0].append(len(accepted))
            if locked_at is None:
                fraud[2].append(episode["identity"])
            else:
                fraud[1].append(locked_at - episode["start"])
        else:
            spam_before_lock.append(len(accepted))
            if locked_at is None:
                never_caught.append(f"{episode['kind']}:{episode['identity']}")
            else:
                time_to_lock.append(locked_at - episode["start"])
        kind = by_kind[episode["kind"]]
        kind["accepted"].append(len(accepted))
        kind["sent"].append(len([o for o in spam if locked_at is None or o.at < locked_at]))
        if locked_at is not None:
            kind["minutes"].append((locked_at - episode["start"]) / 60)

    compromised = {(relay, e["identity"]) for relay, e in episodes}
    legitimate = [a for a in truth if (a["relay"], a["account"]) not in compromised]
    false_locks: dict[str, int] = defaultdict(int)
    falsely_locked = []
    for account in legitimate:
        stream = by_identity.get((account["relay"], account["account"]), [])
        if any(o.locked for o in stream):
            false_locks[account["kind"]] += 1
            falsely_locked.append(
                {
                    "account": account["account"],
                    "kind": account["kind"],
                    "surprises": account["surprises"],
                    **({"repo": account["repo"]} if "repo" in account else {}),
                }
            )
    first = min(x["active_from"] for x in truth)
    days_by_kind: dict[str, float] = defaultdict(float)
    for a in legitimate:
        days_by_kind[a["kind"]] += max(0.0, days - (a["active_from"] - first) / DAY)
    account_days = sum(days_by_kind.values())

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
        "by_episode": {kind: _episode_summary(values) for kind, values in sorted(by_kind.items())},
        "fraud_signups": _fraud_summary(*fraud),
        "legitimate_accounts": len(legitimate),
        "legitimate_account_days": round(account_days, 1),
        "false_locks": sum(false_locks.values()),
        "false_locks_per_1000_account_days": 1000 * sum(false_locks.values()) / account_days if account_days else 0,
        "false_locks_by_kind": dict(false_locks),
        "legitimate_account_days_by_kind": {kind: round(d, 1) for kind, d in sorted(days_by_kind.items())},
        "falsely_locked": falsely_locked[:50],
        "feedback_applied": result.feedback_applied,
        "feedback_dropped": result.feedback_dropped,
    }


def _fraud_summary(accepted: list[int], to_lock: list[float], never_caught: list[str]) -> dict[str, Any]:
    """Fraudulent sign-ups: spam accepted before the lock (from their first message), and whether caught."""
    return {
        "identities": len(accepted),
        "caught": len(to_lock),
        "spam_accepted_before_lock": {
            "median": _percentile(accepted, 50),
            "p90": _percentile(accepted, 90),
            "max": max(accepted) if accepted else None,
            "total": int(sum(accepted)),
        },
        "minutes_to_lock": {
            "median": (_percentile(to_lock, 50) or 0) / 60 if to_lock else None,
            "p90": (_percentile(to_lock, 90) or 0) / 60 if to_lock else None,
        },
        "never_caught": never_caught,
    }


def _episode_summary(values: dict[str, list[float]]) -> dict[str, Any]:
    """Per kind of compromise: spam messages scored (`sent`) and accepted before the lock, and time to it."""
    sent, minutes = values["sent"], values["minutes"]
    return {
        "identities": len(sent),
        "caught": len(minutes),
        "spam_scored_before_lock": {"median": _percentile(sent, 50), "total": int(sum(sent)), "max": max(sent)},
        "spam_accepted_before_lock_total": int(sum(values["accepted"])),
        "minutes_to_lock_median": _percentile(minutes, 50) if minutes else None,
    }


# -- the lock threshold as a dial


def threshold_sweep(
    result: ReplayResult, truth: list[dict[str, Any]], days: float, thresholds: Iterable[float]
) -> list[dict[str, Any]]:
    """Detection delay and false locks at other lock thresholds, from a replay with auto-lock off.

    With auto-lock off every account keeps its evidence trajectory; at threshold h an
    account would have been locked at its first message whose evidence reached h, and
    every spam message it got out before that counts as accepted. Fraudulent sign-ups
    have their own columns (`fraud_*`), as in `account_metrics`.
    """
    by_identity: dict[tuple[str, str], list[MessageOutcome]] = defaultdict(list)
    for outcome in result.outcomes:
        by_identity[(outcome.relay, outcome.account)].append(outcome)
    episodes = [(a["relay"], e) for a in truth for e in a["episodes"]]
    compromised = {(relay, e["identity"]) for relay, e in episodes}
    legitimate = [a for a in truth if (a["relay"], a["account"]) not in compromised]
    first = min(a["active_from"] for a in truth)
    account_days = sum(max(0.0, days - (a["active_from"] - first) / DAY) for a in legitimate)
    peak = {key: max((o.evidence for o in stream), default=0.0) for key, stream in by_identity.items()}
    rows = []
    for h in thresholds:
        delays, missed, fraud_delays, fraud_missed = [], 0, [], 0
        for relay, episode in episodes:
            stream = [o for o in by_identity.get((relay, episode["identity"]), []) if o.at >= episode["start"]]
            if not any(o.spam for o in stream):
                continue
            locked_at = next((o.at for o in stream if o.evidence >= h), None)
            delay = sum(
                1 for o in stream if o.spam and o.action == "accept" and (locked_at is None or o.at <= locked_at)
            )
            if episode["kind"] == FRAUD_SIGNUP:
                fraud_missed += locked_at is None
                fraud_delays.append(delay)
            else:
                missed += locked_at is None
                delays.append(delay)
        false_locks = sum(1 for a in legitimate if peak.get((a["relay"], a["account"]), 0.0) >= h)
        rows.append(
            {
                "threshold": round(float(h), 2),
                "false_locks_per_1000_account_days": 1000 * false_locks / account_days if account_days else 0.0,
                "median_spam_before_lock": _percentile(delays, 50),
                "p90_spam_before_lock": _percentile(delays, 90),
                "never_caught": missed,
                "fraud_p90_spam_before_lock": _percentile(fraud_delays, 90),
                "fraud_never_caught": fraud_missed,
            }
        )
    return rows


def plot_sweep(rows: list[dict[str, Any]], chosen: float, path: Path) -> None:
    """Two panels: both costs against the threshold, and the trade-off between them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = [r["threshold"] for r in rows]
    false_locks = [r["false_locks_per_1000_account_days"] for r in rows]
    median = [r["median_spam_before_lock"] or 0 for r in rows]
    p90 = [r["p90_spam_before_lock"] or 0 for r in rows]
    fig, (by_threshold, tradeoff) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    by_threshold.plot(h, median, marker="o", label="median spam accepted before lock")
    by_threshold.plot(h, p90, marker="s", label="p90 spam accepted before lock")
    by_threshold.set_xlabel("lock threshold h (nats)")
    by_threshold.set_ylabel("spam messages accepted before lock")
    by_threshold.axvline(chosen, color="grey", linestyle=":", label=f"default h = {chosen:.1f}")
    twin = by_threshold.twinx()
    twin.plot(h, false_locks, color="tab:red", marker="^", label="false locks / 1,000 account-days")
    twin.set_ylabel("false locks per 1,000 legitimate account-days", color="tab:red")
    twin.set_ylim(bottom=0, top=max(1.0, max(false_locks) * 1.2))
    lines = by_threshold.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    by_threshold.legend(lines, [line.get_label() for line in lines], fontsize=7, loc="upper center")
    by_threshold.set_title("Both costs as the threshold moves")
    tradeoff.plot(false_locks, p90, marker="s", color="tab:orange", label="p90")
    tradeoff.plot(false_locks, median, marker="o", color="tab:blue", label="median")
    for r, y in zip(rows, p90, strict=True):
        tradeoff.annotate(
            f"{r['threshold']:g}",
            (r["false_locks_per_1000_account_days"], y),
            fontsize=7,
            textcoords="offset points",
            xytext=(3, 3),
        )
    tradeoff.set_xlabel("false locks per 1,000 legitimate account-days")
    tradeoff.set_ylabel("spam messages accepted before lock")
    tradeoff.set_title("Detection delay against false locks (labels: h)")
    tradeoff.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- over HTTP, against a running server


def replay_http(
    events: Iterable[dict[str, Any]],
    url: str | Sequence[str],
    resolve: Callable[..., bytes],
    token: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReplayResult:
    """The same replay through a server's API: `/v1/score` per message, `/v1/feedback/batch` for feedback.

    The evidence is not in the API, so `MessageOutcome.evidence` holds the answer's
    account_risk (capped at 1): enough for the headline metrics, not for a sweep.
    Several URLs (replicas sharing storage) take the requests in turn, in the log's order.
    """
    import base64

    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    result = ReplayResult()
    sent: set[str] = set()
    pending: list[dict[str, Any]] = []
    urls = [url] if isinstance(url, str) else list(url)
    with contextlib.ExitStack() as stack:
        replicas = [stack.enter_context(httpx.Client(base_url=u, headers=headers, timeout=30)) for u in urls]
        turns = itertools.cycle(replicas)

        def flush_feedback() -> None:
            for start in range(0, len(pending), 1_000):
                batch = {"events": pending[start : start + 1_000]}
                response = next(turns).post("/v1/feedback/batch", json=batch)
                response.raise_for_status()
            result.feedback_applied += len(pending)
            pending.clear()

        for n, event in enumerate(events):
            if event["type"] == "feedback":
                if event["event"]["message_id"] in sent:
                    pending.append(event["event"])
                else:
                    result.feedback_dropped += 1
                continue
            flush_feedback()
            message = dict(event["message"])
            content = event_content(event, resolve)
            if script := message.pop("php_script", None):
                content = f"X-PHP-Originating-Script: {script}\r\n".encode() + content
            message["raw_base64"] = base64.b64encode(content).decode()
            response = next(turns).post("/v1/score", json=message)
            response.raise_for_status()
            answer = response.json()
            truth = event["truth"]
            result.outcomes.append(
                MessageOutcome(
                    at=_time(message["timestamp"]),
                    relay=message["relay"],
                    account=answer["account"],
                    truth_account=truth["account"],
                    spam=bool(truth["spam"]),
                    episode=truth["episode"],
                    kind=truth["kind"],
                    probability=answer["spam_probability"],
                    action=answer["action"],
                    locked=answer["account_locked"],
                    evidence=answer["account_risk"],
                )
            )
            if answer["action"] == "accept":
                sent.add(message["message_id"])
            if progress is not None:
                progress(n)
        flush_feedback()
    return result


def replay_folder(
    log: Path,
    settings: Settings,
    database: Path,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Replay a folder written by `outguard simulate` into the event log at `database`; its account metrics."""
    import orjson

    truth = orjson.loads((log / "truth.json").read_bytes())
    events = [orjson.loads(line) for line in (log / "events.jsonl").open("rb")]
    run_settings = settings.model_copy(update={"database_url": f"sqlite:///{database}", "state_dir": database.parent})
    result = replay_sync(events, run_settings, corpus_resolver(settings.data_dir, settings.cache_dir), progress)
    return account_metrics(result, truth["accounts"], truth["config"]["days"])
