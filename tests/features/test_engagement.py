"""Engagement: decayed counts, smoothed rates that respect sample size, and the evidence they carry."""

from __future__ import annotations

import pytest

from features.engagement import (
    ENGAGEMENT_HALF_LIFE_S,
    DecayedCounts,
    EngagementSnapshot,
    engagement_evidence,
    engagement_features,
)
from features.spec import BY_NAME


def snapshot(recipients: float, **outcomes: float) -> EngagementSnapshot:
    return EngagementSnapshot(recipients=recipients, outcomes=outcomes, feedback=sum(outcomes.values()))


def test_counts_halve_every_half_life_and_late_events_are_weighed_as_of_then() -> None:
    counts = DecayedCounts()
    counts.add("complaint", 1.0, 0.0)
    counts.add("reply", 1.0, ENGAGEMENT_HALF_LIFE_S)
    assert counts.get("complaint") == pytest.approx(0.5)
    counts.add("complaint", 1.0, 0.0)  # arrives late, happened at t=0
    assert counts.get("complaint") == pytest.approx(1.0)


def test_two_recipients_are_not_judged_like_two_thousand() -> None:
    small = engagement_features(snapshot(2, hard_bounce=1))
    large = engagement_features(snapshot(2000, hard_bounce=1000))
    assert small["eng_hard_bounce_rate"] < 0.1 < 0.45 < large["eng_hard_bounce_rate"]
    assert small["eng_recipients_log"] < large["eng_recipients_log"]


def test_no_engagement_is_the_prior() -> None:
    values = engagement_features(None)
    assert values["eng_complaint_rate"] == BY_NAME["eng_complaint_rate"].neutral
    assert engagement_features(snapshot(0)) == {**values, "eng_recipients_log": 0.0, "eng_feedback_log": 0.0}


def test_a_newsletter_with_a_stale_list_is_evidence_of_legitimacy() -> None:
    assert engagement_evidence(snapshot(10_000, invalid_recipient=100, complaint=2)) < -100


def test_a_spam_run_into_a_bought_list_is_evidence_of_spam() -> None:
    assert engagement_evidence(snapshot(200, invalid_recipient=40, complaint=3)) > 9.2


def test_replies_only_ever_argue_for_legitimacy() -> None:
    assert engagement_evidence(snapshot(500, reply=0)) == pytest.approx(engagement_evidence(snapshot(500)))
    assert engagement_evidence(snapshot(500, reply=10)) < engagement_evidence(snapshot(500))
