"""Per-account behaviour: what one scored message adds to its account's rolling windows.

`Observation` is what a message contributes, `BehaviourSnapshot` what the account's
windows say once it is counted, and `behaviour_features` turns a snapshot into
feature values. Stores (in-process now, Redis later) keep the windows and answer
`observe(key, observation) -> snapshot`; this module owns the arithmetic they share.

Windows are keyed by the message's own timestamp, never the wall clock, so a replay
of the same log gives the same features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from features.spec import FEATURES, Group

# Long-run baseline: an exponentially decayed message count, half-life one week.
BASELINE_HALF_LIFE_S = 7 * 86_400
BASELINE_TAU_S = BASELINE_HALF_LIFE_S / math.log(2)
# Below an hour of history there is no baseline to compare against.
MIN_BASELINE_HISTORY_S = 3_600


@dataclass(frozen=True, slots=True)
class Observation:
    timestamp: float  # seconds since the epoch, from the message
    recipients: int
    recipient_domains: tuple[str, ...]
    client_ip: str | None


@dataclass(frozen=True, slots=True)
class BehaviourSnapshot:
    msgs_1m: int
    msgs_1h: int
    msgs_24h: int
    rcpts_1m: int
    rcpts_1h: int
    rcpts_24h: int
    baseline_per_hour: float | None  # the long-run hourly rate before this message; None while too new
    history_seconds: float
    rcpt_domains_1h: int
    client_ips_1h: int
    client_ips_24h: int
    new_rcpt_domain_share: float
    recipients: int


@dataclass(slots=True)
class DecayedRate:
    """A message count decayed with `BASELINE_TAU_S`, and the time it covers."""

    count: float = 0.0
    last: float | None = None
    first: float | None = None

    def rate_per_hour(self, now: float, recent_count: int = 0, recent_seconds: float = 0.0) -> float | None:
        """The hourly rate before the last `recent_seconds`, leaving out the `recent_count` messages in them.

        Comparing the last hour against a baseline that already holds it would let a
        burst raise its own yardstick.
        """
        if self.first is None or self.last is None or now - self.first < MIN_BASELINE_HISTORY_S + recent_seconds:
            return None
        decayed = self.count * math.exp(-max(0.0, now - self.last) / BASELINE_TAU_S) - recent_count
        covered = BASELINE_TAU_S * (1.0 - math.exp(-(now - self.first) / BASELINE_TAU_S)) - recent_seconds
        return max(0.0, decayed) / (covered / 3_600)

    def add(self, now: float) -> None:
        if self.last is None or self.first is None:
            self.count, self.last, self.first = 1.0, now, now
            return
        if now >= self.last:
            self.count = self.count * math.exp(-(now - self.last) / BASELINE_TAU_S) + 1.0
            self.last = now
        else:  # out of order: weigh it as of `last`
            self.count += math.exp(-(self.last - now) / BASELINE_TAU_S)
        self.first = min(self.first, now)


def recipient_domain(address: str) -> str:
    return address.rsplit("@", 1)[-1].strip(" <>").lower() if "@" in address else ""


def behaviour_features(snapshot: BehaviourSnapshot | None) -> dict[str, float]:
    """Feature values for a snapshot; neutral values when there is none (training on corpora)."""
    if snapshot is None:
        return {f.name: f.neutral for f in FEATURES if f.group == Group.BEHAVIOUR}
    if snapshot.baseline_per_hour is None:
        rate_vs_baseline = 0.0
    else:
        rate_vs_baseline = math.log((snapshot.msgs_1h + 1.0) / (snapshot.baseline_per_hour + 1.0))
    return {
        "acct_msgs_1m": float(snapshot.msgs_1m),
        "acct_msgs_1h": float(snapshot.msgs_1h),
        "acct_msgs_24h": float(snapshot.msgs_24h),
        "acct_rcpts_1m": float(snapshot.rcpts_1m),
        "acct_rcpts_1h": float(snapshot.rcpts_1h),
        "acct_rcpts_24h": float(snapshot.rcpts_24h),
        "acct_rate_vs_baseline": rate_vs_baseline,
        "acct_history_hours": math.log1p(snapshot.history_seconds / 3_600),
        "acct_rcpt_domains_1h": float(snapshot.rcpt_domains_1h),
        "acct_client_ips_1h": float(snapshot.client_ips_1h),
        "acct_client_ips_24h": float(snapshot.client_ips_24h),
        "acct_new_rcpt_domain_share": snapshot.new_rcpt_domain_share,
        "msg_recipient_count": float(snapshot.recipients),
    }
