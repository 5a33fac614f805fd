"""The model on real mail: training works end to end, and the shipped bundle meets its card.

These read ../shared/data (skipped without it, failing in CI). Feature extraction for
the ~36,000 corpus messages is cached under .cache after the first run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.bundle import DEFAULT_BUNDLE_DIR, load_bundle
from service.settings import PROJECT_ROOT, Settings
from training.dataset import build_corpus_dataset
from training.evaluate import evaluate_bundle, score_modern_mail
from training.train import TrainConfig, train_and_save

THRESHOLDS = {"hold": Settings().hold_threshold, "reject": Settings().reject_threshold}


@pytest.fixture(scope="module")
def corpus_frame() -> pd.DataFrame:
    from tests.conftest import DATA_DIR, require_corpus

    require_corpus()
    return build_corpus_dataset(DATA_DIR, PROJECT_ROOT / ".cache")


def test_the_dataset_is_deduplicated_and_time_split(corpus_frame: pd.DataFrame) -> None:
    assert corpus_frame["fingerprint"].is_unique
    trec = corpus_frame[corpus_frame["source"] == "trec"]
    assert trec.loc[trec["split"] == "train", "order"].max() < trec.loc[trec["split"] == "test", "order"].min()
    assert set(corpus_frame.loc[corpus_frame["source"] == "spamassassin", "split"]) == {"train"}


def test_the_shipped_model_meets_its_card_on_the_time_split_test(corpus_frame: pd.DataFrame) -> None:
    bundle = load_bundle(DEFAULT_BUNDLE_DIR)
    metrics = evaluate_bundle(bundle, corpus_frame, THRESHOLDS)
    assert metrics["roc_auc"] >= 0.99
    card = bundle.metrics["test"]
    for key in ("roc_auc", "pr_auc", "recall_at_fpr_0.1pct", "recall_at_fpr_1pct", "brier"):
        assert metrics[key] == pytest.approx(card[key], abs=1e-6), key


def test_the_shipped_model_separates_present_day_mail() -> None:
    bundle = load_bundle(DEFAULT_BUNDLE_DIR)
    scores = score_modern_mail(bundle)
    for name, stored in bundle.metrics["modern_mail"].items():
        assert scores[name]["spam_probability"] == pytest.approx(stored["spam_probability"], abs=1e-9), name
    conversation = [scores[name]["spam_probability"] for name in ("thread_reply", "meeting_reschedule_html")]
    transactional = [scores[name]["spam_probability"] for name in ("order_shipped", "password_reset")]
    assert max(conversation + transactional) < 0.1
    spam = sorted(v["spam_probability"] for v in scores.values() if v["label"] == 1)
    assert spam[len(spam) // 2] > 0.99


def test_the_card_reports_present_day_mail_with_whole_projects_held_out() -> None:
    heldout = load_bundle(DEFAULT_BUNDLE_DIR).metrics["modern_heldout"]
    assert heldout["folds"] == 5
    assert len(heldout["by_source"]) == 20  # every source project was held out once
    assert heldout["roc_auc"] > 0.98
    assert heldout["spam_recall"]["phishing"]["recall_at_hold"] > 0.9


def test_a_small_training_run_writes_a_bundle_that_evaluate_reproduces(
    corpus_frame: pd.DataFrame, tmp_path: Path
) -> None:
    bundle = train_and_save(corpus_frame, TrainConfig(thresholds=THRESHOLDS, max_rows=4000, text_folds=3), tmp_path)
    assert (tmp_path / "MODEL_CARD.md").read_text().startswith(f"# Model card: `{bundle.version}`")
    again = evaluate_bundle(load_bundle(tmp_path), corpus_frame.sample(frac=1.0, random_state=0), THRESHOLDS)
    test_rows = corpus_frame[corpus_frame["split"] == "test"]
    assert again["n"] == len(test_rows)
    assert again["roc_auc"] > 0.98
    assert bundle.params["num_boost_round"] >= 50
    assert np.isfinite(again["brier"])
