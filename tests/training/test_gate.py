"""The promotion gate: better on the configured metrics, no worse beyond tolerance, no more false locks."""

from __future__ import annotations

import pytest

from training.gate import GatePolicy, judge

CHAMPION = {"pr_auc": 0.95, "recall_at_fpr_1pct": 0.90}
POLICY = GatePolicy(metrics=("pr_auc", "recall_at_fpr_1pct"), tolerance=0.002)


def test_a_model_better_on_one_metric_and_even_on_the_other_passes() -> None:
    result = judge({"pr_auc": 0.96, "recall_at_fpr_1pct": 0.899}, CHAMPION, POLICY, 0, 0)
    assert result.passed
    assert "pr_auc 0.9600 beats the champion's 0.9500" in result.reasons


def test_a_model_worse_beyond_tolerance_on_any_metric_is_refused() -> None:
    result = judge({"pr_auc": 0.99, "recall_at_fpr_1pct": 0.89}, CHAMPION, POLICY)
    assert not result.passed
    assert "recall_at_fpr_1pct 0.8900 is below the champion's 0.9000" in result.reasons


def test_the_same_model_is_not_better() -> None:
    assert not judge(dict(CHAMPION), CHAMPION, POLICY, 0, 0).passed


def test_more_false_locks_refuse_even_a_better_model() -> None:
    result = judge({"pr_auc": 0.99, "recall_at_fpr_1pct": 0.99}, CHAMPION, POLICY, 2, 1)
    assert not result.passed
    assert "raises false locks in the held-out replay (1 -> 2)" in result.reasons


def test_an_unknown_gate_metric_is_named() -> None:
    with pytest.raises(KeyError, match="gate metric 'f1'"):
        judge(CHAMPION, CHAMPION, GatePolicy(metrics=("f1",)))
