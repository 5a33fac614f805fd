"""Recipient engagement per account: what happened to the mail after it left.

Each account keeps decayed counts (half-life `ENGAGEMENT_HALF_LIFE_S`) of the
recipients it sent to and of each kind of outcome (hard bounce, invalid recipient,
complaint, reply, open, click). From them:

- `engagement_features`: smoothed rates, (count + m * prior) / (recipients + m), so a
  new account sits at the prior and moves away as evidence accrues, plus the counts;
- `engagement_evidence`: the log-likelihood ratio, spam-sending against legitimate,
  of the counts under binomial models of each outcome (an SPRT statistic). Bounces and
  complaints count both ways (a delivery that did not bounce is evidence too); replies
  only towards legitimate, since much legitimate mail (receipts, alerts) gets none.

The arithmetic lives here so that every store (in-process now, Redis later) computes
the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from features.spec import BY_NAME, FEATURES, Group

ENGAGEMENT_HALF_LIFE_S = 3 * 86_400
ENGAGEMENT_TAU_S = ENGAGEMENT_HALF_LIFE_S / math.log(2)
SMOOTHING_RECIPIENTS = 20.0

OUTCOMES = ("hard_bounce", "invalid_recipient", "complaint", "reply", "open", "click")
FEEDBACK = "feedback"
SENT = "recipients"


@dataclass(frozen=True, slots=True)
class OutcomeModel:
    """Per-recipient probability of an outcome from a legitimate and from a spamming account."""

    legitimate: float
    spamming: float
    two_sided: bool  # whether the absence of the outcome is evidence too


# Rates seen in outbound mail (hosting providers' and ESPs' published thresholds:
# complaint rates above 0.1-0.3% and bounce rates above 2-5% mark a sender as abusive).
EVIDENCE_MODELS: dict[str, OutcomeModel] = {
    "invalid_recipient": OutcomeModel(legitimate=0.01, spamming=0.15, two_sided=True),
    "complaint": OutcomeModel(legitimate=0.0005, spamming=0.01, two_sided=True),
    "reply": OutcomeModel(legitimate=0.03, spamming=0.001, two_sided=False),
}


@dataclass(slots=True)
class DecayedCounts:
    """Named counts decayed to the newest timestamp seen; late additions are weighed as of then."""

    values: dict[str, float] = field(default_factory=dict)
    last: float | None = None

    def add(self, name: str, amount: float, timestamp: float) -> None:
        if self.last is None:
            self.last = timestamp
        if timestamp > self.last:
            factor = math.exp(-(timestamp - self.last) / ENGAGEMENT_TAU_S)
            for key in self.values:
                self.values[key] *= factor
            self.last = timestamp
        else:
            amount *= math.exp(-(self.last - timestamp) / ENGAGEMENT_TAU_S)
        self.values[name] = self.values.get(name, 0.0) + amount

    def get(self, name: str) -> float:
        return self.values.get(name, 0.0)


@dataclass(frozen=True, slots=True)
class EngagementSnapshot:
    recipients: float  # decayed recipients sent (or delivery outcomes, if more)
    outcomes: dict[str, float]  # decayed count per outcome
    feedback: float  # decayed feedback events

    @classmethod
    def from_counts(cls, counts: DecayedCounts) -> EngagementSnapshot:
        outcomes = {name: counts.get(name) for name in OUTCOMES}
        delivered = counts.get("delivered") + counts.get("hard_bounce") + counts.get("soft_bounce")
        return cls(recipients=max(counts.get(SENT), delivered), outcomes=outcomes, feedback=counts.get(FEEDBACK))


def _rate(snapshot: EngagementSnapshot, outcome: str, prior: float) -> float:
    count = min(snapshot.outcomes.get(outcome, 0.0), snapshot.recipients)
    return (count + SMOOTHING_RECIPIENTS * prior) / (snapshot.recipients + SMOOTHING_RECIPIENTS)


_RATE_FEATURES = {
    "eng_hard_bounce_rate": "hard_bounce",
    "eng_invalid_recipient_rate": "invalid_recipient",
    "eng_complaint_rate": "complaint",
    "eng_reply_rate": "reply",
    "eng_open_rate": "open",
    "eng_click_rate": "click",
}


def engagement_features(snapshot: EngagementSnapshot | None) -> dict[str, float]:
    if snapshot is None:
        return {f.name: f.neutral for f in FEATURES if f.group == Group.ENGAGEMENT}
    values = {name: _rate(snapshot, outcome, BY_NAME[name].neutral) for name, outcome in _RATE_FEATURES.items()}
    values["eng_recipients_log"] = math.log1p(snapshot.recipients)
    values["eng_feedback_log"] = math.log1p(snapshot.feedback)
    return values


BAD_OUTCOMES = ("invalid_recipient", "complaint")


def bad_outcomes(snapshot: EngagementSnapshot | None) -> float:
    """Decayed count of invalid recipients and complaints: how many bad outcomes the evidence rests on."""
    if snapshot is None:
        return 0.0
    return sum(snapshot.outcomes.get(outcome, 0.0) for outcome in BAD_OUTCOMES)


def engagement_evidence(snapshot: EngagementSnapshot | None) -> float:
    """Log-likelihood ratio (nats), spamming against legitimate, of the account's outcomes."""
    if snapshot is None or snapshot.recipients <= 0:
        return 0.0
    total = 0.0
    for outcome, model in EVIDENCE_MODELS.items():
        seen = min(snapshot.outcomes.get(outcome, 0.0), snapshot.recipients)
        total += seen * math.log(model.spamming / model.legitimate)
        if model.two_sided:
            total += (snapshot.recipients - seen) * math.log((1 - model.spamming) / (1 - model.legitimate))
    return total
