"""From a message's spam probability to an action, and the account's running evidence.

Per message: the calibrated probability and the model's training prior give the
message's log-likelihood ratio (spam vs ham), the evidence it carries. Per account:
a CUSUM of those ratios, S = max(0, S + llr), which ham pulls back down and a run of
spam drives up; an account is recommended for locking when S crosses
`lock_threshold` (Wald's bound: ln(1/alpha) nats for a false-alarm rate alpha).
Feedback adds the engagement log-likelihood ratio (`features.engagement`): bounces to
invalid recipients and complaints raise it, deliveries and replies lower it.
`account_risk` is the total as a share of the lock threshold.

Actions, mildest first: accept; defer (temporary failure, the relay retries) when the
account is recommended for locking but this message is not spam-like; hold (quarantine)
for a message over `hold_threshold`; reject for a message over `reject_threshold` from
an account recommended for locking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from service.stores import AccountState


class Action(StrEnum):
    ACCEPT = "accept"
    DEFER = "defer"
    HOLD = "hold"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class DecisionPolicy:
    hold_threshold: float
    reject_threshold: float
    lock_threshold: float
    evidence_clip: float
    engagement_credit: float = 4.0


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    account_risk: float
    lock_recommended: bool


def message_evidence(probability: float, prior_log_odds: float, clip: float) -> float:
    """Log-likelihood ratio of one message, clipped so no single message decides alone."""
    p = min(max(probability, 1e-6), 1 - 1e-6)
    llr = math.log(p / (1 - p)) - prior_log_odds
    return max(-clip, min(clip, llr))


def update_account(state: AccountState, evidence: float, timestamp: float) -> None:
    state.evidence = max(0.0, state.evidence + evidence)
    state.messages_scored += 1
    state.last_scored = timestamp if state.last_scored is None else max(state.last_scored, timestamp)


def account_evidence(state: AccountState, engagement: float, policy: DecisionPolicy) -> float:
    """Content CUSUM plus engagement evidence. Bounces and complaints push without limit;
    good engagement offsets at most `engagement_credit`, because recipients whose
    bounces have not arrived yet look like deliveries."""
    return max(0.0, state.evidence + max(engagement, -policy.engagement_credit))


def decide(probability: float, state: AccountState, policy: DecisionPolicy, engagement: float = 0.0) -> Decision:
    evidence = account_evidence(state, engagement, policy)
    risk = min(1.0, evidence / policy.lock_threshold)
    lock_recommended = evidence >= policy.lock_threshold
    # Graduated: one extreme message from an account with no other evidence is held for a
    # person to look at; only an account already recommended for locking gets bounces.
    if probability >= policy.reject_threshold and lock_recommended:
        action = Action.REJECT
    elif probability >= policy.hold_threshold:
        action = Action.HOLD
    elif lock_recommended:
        # Not spam-like on its own, but the account is: keep it queued until a person looks.
        action = Action.DEFER
    else:
        action = Action.ACCEPT
    return Decision(action=action, account_risk=risk, lock_recommended=lock_recommended)


def locked_decision() -> Decision:
    return Decision(action=Action.REJECT, account_risk=1.0, lock_recommended=True)
