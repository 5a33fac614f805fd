"""Recipient engagement per account: bounce, complaint and reply rates.

Feedback ingestion fills `EngagementSnapshot`; until an account has feedback, or
when training on corpora that have none, the features take their neutral values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from features.spec import FEATURES, Group


@dataclass(frozen=True, slots=True)
class EngagementSnapshot:
    bounce_rate: float
    complaint_rate: float
    reply_rate: float
    feedback_count: float  # decayed number of feedback events behind the rates


def engagement_features(snapshot: EngagementSnapshot | None) -> dict[str, float]:
    if snapshot is None:
        return {f.name: f.neutral for f in FEATURES if f.group == Group.ENGAGEMENT}
    return {
        "eng_bounce_rate": snapshot.bounce_rate,
        "eng_complaint_rate": snapshot.complaint_rate,
        "eng_reply_rate": snapshot.reply_rate,
        "eng_feedback_count_log": math.log1p(snapshot.feedback_count),
    }
