"""A model trained on the service's own events: it loads, ranks spam first, and respects known directions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from features.spec import FEATURE_INDEX, FEATURE_SPEC_VERSION
from models.bundle import DEFAULT_BUNDLE_DIR, ModelBundle, load_bundle, save_bundle
from training.events import DatasetSummary, LabelPolicy, build_event_dataset, read_split
from training.train_events import EventTrainConfig, NotEnoughLabels, train_from_events

THRESHOLDS = {"hold": 0.99, "reject": 0.999}


@pytest.fixture(scope="module")
def base() -> ModelBundle:
    return load_bundle(DEFAULT_BUNDLE_DIR)


@pytest.fixture(scope="module")
def trained(event_dataset: DatasetSummary, base: ModelBundle) -> ModelBundle:
    return train_from_events(event_dataset.path, base, EventTrainConfig(thresholds=THRESHOLDS, max_rounds=200))


def test_the_model_reads_account_behaviour_and_carries_the_served_text_model(
    trained: ModelBundle, base: ModelBundle, tmp_path: Path
) -> None:
    save_bundle(trained, tmp_path)
    loaded = load_bundle(tmp_path)
    assert loaded.feature_spec_version == FEATURE_SPEC_VERSION
    assert {"acct_msgs_1h", "eng_complaint_rate", "sig_similarity"} <= set(loaded.model_features)
    assert loaded.text_model is not None and trained.params["text_model"] == f"from bundle {base.version}"
    assert 1 <= trained.params["num_boost_round"] <= 200


def test_it_ranks_the_newest_spam_above_the_newest_ham(trained: ModelBundle, event_dataset: DatasetSummary) -> None:
    test = read_split(event_dataset.path, "test")
    probabilities = trained.predict(test.rows).probabilities
    assert roc_auc_score(test.labels, probabilities) > 0.9
    assert trained.metrics["test"]["n"] == len(test.labels)


@pytest.mark.parametrize(("feature", "direction"), [("eng_complaint_rate", 1), ("eng_reply_rate", -1)])
def test_known_directions_hold_for_every_message(
    trained: ModelBundle, event_dataset: DatasetSummary, feature: str, direction: int
) -> None:
    rows = read_split(event_dataset.path, "test").rows[:300].astype(np.float64)
    before = trained.predict(rows).probabilities
    moved = rows.copy()
    moved[:, FEATURE_INDEX[feature]] += 0.3
    after = trained.predict(moved).probabilities
    assert np.all(direction * (after - before) >= -1e-12)


def test_too_few_labels_say_what_is_missing(event_log: Path, base: ModelBundle, tmp_path: Path) -> None:
    summary = build_event_dataset([event_log], tmp_path, LabelPolicy(label_delay_s=30 * 86_400))
    with pytest.raises(NotEnoughLabels, match="the train split has 0 spam and 0 ham rows"):
        train_from_events(summary.path, base, EventTrainConfig(thresholds=THRESHOLDS))


def test_the_dask_engine_learns_what_the_local_one_does(
    event_dataset: DatasetSummary, base: ModelBundle, trained: ModelBundle
) -> None:
    on_dask = train_from_events(
        event_dataset.path, base, EventTrainConfig(thresholds=THRESHOLDS, max_rounds=200, engine="dask")
    )
    assert on_dask.data["engine"] == "dask"
    test = read_split(event_dataset.path, "test")
    local_auc = roc_auc_score(test.labels, trained.predict(test.rows).probabilities)
    dask_auc = roc_auc_score(test.labels, on_dask.predict(test.rows).probabilities)
    assert dask_auc > local_auc - 0.03
