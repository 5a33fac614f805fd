"""The incident report of one account: what was seen, why it was locked, what to do next.

Written for a hosting support person who has never heard of LightGBM: plain words, the
numbers behind them, and next steps chosen by how the account was identified (a
mailbox password, a PHP script) and what it did (many client IPs, invalid recipients).
The model's reasons are recomputed from the logged feature vectors, so the report
shows why the messages scored as they did without storing more per message.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import Connection, text

from features.engagement import engagement_features
from features.spec import BY_NAME, FEATURE_INDEX
from service.decision import account_risk
from service.stores import AccountKey
from service.stores.database import mappings

WINDOW_S = 86_400
MAX_MESSAGES = 2_000
TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True, slots=True)
class IncidentSources:
    """What the report reads; the API passes the container's stores."""

    database: Any
    accounts: Any
    engagement: Any
    ledger: Any
    model: Any
    hold_threshold: float
    lock_threshold: float


def _when(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else None


def _messages(connection: Connection, key: AccountKey) -> list[dict[str, Any]]:
    account = {"relay": key.relay, "account": key.account}
    newest = connection.execute(
        text("SELECT max(ts) FROM scored_messages WHERE relay = :relay AND account = :account"), account
    ).scalar()
    if newest is None:
        return []
    return mappings(
        connection,
        "SELECT ts, message_id, identity_source, spam_probability, action, client_ip, subject, features, "
        "recipients_hashed FROM scored_messages WHERE relay = :relay AND account = :account AND ts >= :since "
        "ORDER BY ts DESC LIMIT :limit",
        account | {"since": newest - WINDOW_S, "limit": MAX_MESSAGES},
    )


def _top_reasons(model: Any, rows: list[list[float]]) -> list[dict[str, Any]]:
    if not rows:
        return []
    bundle = model.current
    contributions = bundle.predict(np.asarray(rows, dtype=np.float64)).contributions
    pushing = np.clip(contributions, 0, None).mean(axis=0)
    top = np.argsort(-pushing)[:5]
    return [
        {
            "feature": bundle.model_features[i],
            "meaning": BY_NAME[bundle.model_features[i]].description,
            "mean_push_towards_spam": round(float(pushing[i]), 3),
        }
        for i in top
        if pushing[i] > 0
    ]


def _next_steps(identity_source: str, account: str, seen: dict[str, Any]) -> list[str]:
    steps = []
    if identity_source.startswith("rule:php") or ".php" in account:
        script = account.split(":", 1)[-1]
        steps += [
            f"Find the script `{script}` on the customer's site and remove it: it sends mail on its own.",
            "Look for other recently changed or uploaded PHP files in the same site (web shells come in pairs), "
            "and update the CMS and its plugins.",
        ]
    else:
        steps += [
            "Reset the mailbox password and end its open sessions; the password is most likely stolen.",
            "Tell the customer to check their computer for malware and to turn on two-factor sign-in.",
        ]
    if seen["client_ips"] >= 5:
        steps.append(
            f"The account sent from {seen['client_ips']} different addresses: a password used by a botnet. "
            "Check the login log for those addresses."
        )
    if seen["invalid_recipient_rate"] >= 0.05:
        steps.append(
            f"{100 * seen['invalid_recipient_rate']:.0f}% of recipients do not exist: a bought or harvested list, "
            "not the customer's contacts."
        )
    steps.append("When it is cleaned up, unlock the account (`POST .../unlock` with your name and what you did).")
    return steps


async def build_incident(sources: IncidentSources, key: AccountKey) -> dict[str, Any]:
    messages = await sources.database.read(lambda c: _messages(c, key))
    state = await sources.accounts.get(key)
    engagement = await sources.engagement.snapshot(key)
    history = await sources.ledger.history(key, limit=20)
    rates = engagement_features(engagement)
    scored = [m for m in messages if m["spam_probability"] is not None]
    probabilities = [m["spam_probability"] for m in scored]
    vectors = [orjson.loads(m["features"]) for m in scored if m["features"]]
    latest = vectors[0] if vectors else None
    ips = Counter(m["client_ip"] for m in messages if m["client_ip"])
    recipients = sum(len(orjson.loads(m["recipients_hashed"])) for m in messages)
    subjects = [s for s, _ in Counter(m["subject"] for m in messages if m["subject"]).most_common(5)]
    per_hour = latest[FEATURE_INDEX["acct_msgs_1h"]] if latest else 0.0
    has_baseline = bool(latest) and latest[FEATURE_INDEX["acct_history_hours"]] >= math.log1p(2)
    vs_baseline = latest[FEATURE_INDEX["acct_rate_vs_baseline"]] if latest else 0.0
    seen = {
        "window": "the last 24 hours of this account's mail",
        "messages": len(messages),
        "recipients": recipients,
        "rejected_while_locked": sum(1 for m in messages if m["spam_probability"] is None),
        "spam_scored": sum(1 for p in probabilities if p >= sources.hold_threshold),
        "mean_spam_probability": round(float(np.mean(probabilities)), 3) if probabilities else None,
        "max_spam_probability": round(float(max(probabilities)), 3) if probabilities else None,
        "messages_last_hour": int(per_hour),
        # An account younger than two hours has no usual volume to compare with.
        "times_usual_hourly_volume": round(math.exp(vs_baseline), 1) if latest and has_baseline else None,
        "client_ips": len(ips),
        "top_client_ips": [{"ip": ip, "messages": n} for ip, n in ips.most_common(5)],
        "hard_bounce_rate": round(rates["eng_hard_bounce_rate"], 4),
        "invalid_recipient_rate": round(rates["eng_invalid_recipient_rate"], 4),
        "complaint_rate": round(rates["eng_complaint_rate"], 4),
        "reply_rate": round(rates["eng_reply_rate"], 4),
        "feedback_recipients": round(engagement.recipients, 1) if engagement else 0.0,
        "sample_subjects": subjects,
        # Content fingerprints: known spam it sent, and how many others sent the same content.
        "matched_known_spam": sum(1 for v in vectors if v[FEATURE_INDEX["sig_similarity"]] > 0),
        "most_accounts_sending_its_content": 1
        + max((round(math.expm1(v[FEATURE_INDEX["campaign_accounts_log"]])) for v in vectors), default=0),
        "top_reasons": _top_reasons(sources.model, vectors[:500]),
    }
    lock = next((h for h in history if h["action"] in ("locked", "locked_temporary")), None)
    identity_source = messages[0]["identity_source"] if messages else "unknown"
    return {
        "relay": key.relay,
        "account": key.account,
        "identified_by": identity_source,
        "generated_at": _when(time.time()),
        "status": state.status.value,
        "account_risk": round(account_risk(state.evidence, sources.lock_threshold), 3),
        "automatic_locks": state.temporary_locks,
        "allowlisted": state.allowlisted,
        "locked_until": _when(state.locked_until),
        "why_locked": {
            "when": _when(lock["ts"]),
            "by": lock["actor"],
            "reason": lock["reason"],
            "evidence": lock["details"],
        }
        if lock
        else None,
        "what_was_seen": seen,
        "what_to_do_next": _next_steps(identity_source, key.account, seen),
        "history": [
            {"when": _when(h["ts"]), "action": h["action"], "by": h["actor"], "reason": h["reason"]} for h in history
        ],
    }


# Subjects, account names and reasons come from senders: everything in HTML is escaped.
_environment = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(report: dict[str, Any], form: str) -> str:
    """`markdown` or `html`."""
    return _environment.get_template(f"incident.{'md' if form == 'markdown' else 'html'}.j2").render(r=report)
