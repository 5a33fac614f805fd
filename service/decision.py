"""From a message's spam probability to an action, and the account's running evidence.

Per message: the calibrated probability gives the likelihood ratio LR of spam against
ham (the probabilities are calibrated at equal priors, so LR is the odds). The
account-level question is not "is this message spam" but "is this account
compromised": a compromised account sends spam with share `compromised_spam_share`
(pi) among its owner's mail, a clean one spam-looking mail with share
`clean_spam_share` (eps). The message's evidence is the log-likelihood ratio of those
two mixtures, log((pi LR + 1 - pi) / (eps LR + 1 - eps)): at most log(pi/eps) for the
clearest spam, and only log((1-pi)/(1-eps)) for clear ham, so the owner's own mail
cannot hide a slow drip of spam. Per account: a CUSUM of that evidence,
S = max(0, S + llr), recommended for locking when S reaches `lock_threshold`. CUSUM's
average run length to a false alarm is about e^h messages, so the threshold follows from
a target false-lock rate: h = ln(messages per account-day * 1000 / target per 1,000
account-days).
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
    compromised_spam_share: float = 0.3
    clean_spam_share: float = 0.01
    engagement_credit: float = 4.0

    @property
    def message_evidence_max(self) -> float:
        """The most one message can add: log(pi / eps)."""
        return math.log(self.compromised_spam_share / self.clean_spam_share)


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    account_risk: float
    lock_recommended: bool


def message_evidence(probability: float, prior_log_odds: float, policy: DecisionPolicy) -> float:
    """Log-likelihood ratio, compromised against clean, of one message with this spam probability."""
    p = min(max(probability, 1e-9), 1 - 1e-9)
    likelihood_ratio = math.exp(math.log(p / (1 - p)) - prior_log_odds)
    pi, eps = policy.compromised_spam_share, policy.clean_spam_share
    return math.log((pi * likelihood_ratio + 1 - pi) / (eps * likelihood_ratio + 1 - eps))


def lock_threshold_for(target_per_1000_account_days: float, messages_per_account_day: float) -> float:
    """CUSUM level whose mean run to a false alarm is 1000 / target account-days of mail."""
    return math.log(messages_per_account_day * 1000.0 / target_per_1000_account_days)


def update_account(state: AccountState, evidence: float, timestamp: float) -> None:
    state.evidence = max(0.0, state.evidence + evidence)
    state.messages_scored += 1
    state.last_scored = timestamp if state.last_scored is None else max(state.last_scored, timestamp)


def account_evidence(state: AccountState, engagement: float, policy: DecisionPolicy) -> float:
    """Content CUSUM plus engagement evidence. Bounces and complaints push without limit;
    good engagement offsets at most `engagement_credit`, because recipients whose
    bounces have not arrived yet look like deliveries."""
    return max(0.0, state.evidence + max(engagement, -policy.engagement_credit))


def account_risk(evidence: float, lock_threshold: float) -> float:
    """Evidence as a share of what locks, capped at 1."""
    return min(1.0, evidence / lock_threshold)


def decide(probability: float, state: AccountState, policy: DecisionPolicy, engagement: float = 0.0) -> Decision:
    evidence = account_evidence(state, engagement, policy)
    risk = account_risk(evidence, policy.lock_threshold)
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
