"""The bundle format: round trip, refusal of another feature spec, fast reasons that add up."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from features.spec import FEATURE_NAMES, FEATURE_SPEC_VERSION
from models.bundle import DEFAULT_BUNDLE_DIR, BundleError, FeatureSpecMismatch, load_bundle, save_bundle
from models.explain import exact_contributions


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(DEFAULT_BUNDLE_DIR)


def rows_near_real(bundle, n: int = 300) -> np.ndarray:
    """Rows spread over the values the model splits on, in spec order."""
    rng = np.random.default_rng(3)
    rows = np.zeros((n, len(FEATURE_NAMES)))
    splits = bundle.booster.trees_to_dataframe().dropna(subset=["threshold"])
    for model_column, spec_column in enumerate(bundle.column_index):
        thresholds = splits.loc[splits["split_feature"] == bundle.model_features[model_column], "threshold"]
        if len(thresholds):
            # Either side of a threshold the model really uses.
            picked = rng.choice(thresholds.to_numpy(), size=n)
            rows[:, spec_column] = picked + rng.choice([-1e-6, 1e-6], size=n) * np.maximum(1, np.abs(picked))
    return rows


def test_the_shipped_bundle_loads_and_names_its_spec(bundle) -> None:
    assert bundle.feature_spec_version == FEATURE_SPEC_VERSION
    assert bundle.version.startswith("corpus-")
    assert (DEFAULT_BUNDLE_DIR / "MODEL_CARD.md").is_file()


def test_save_and_load_round_trip(bundle, tmp_path: Path) -> None:
    save_bundle(bundle, tmp_path / "copy")
    again = load_bundle(tmp_path / "copy")
    rows = rows_near_real(bundle, 20)
    np.testing.assert_allclose(again.predict(rows).probabilities, bundle.predict(rows).probabilities)


def test_a_bundle_for_another_feature_spec_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "old"
    shutil.copytree(DEFAULT_BUNDLE_DIR, target)
    meta = json.loads((target / "bundle.json").read_text())
    meta["feature_spec_version"] = "0"
    (target / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(FeatureSpecMismatch, match="trained on feature spec '0'"):
        load_bundle(target)


def test_a_missing_bundle_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="outguard train"):
        load_bundle(tmp_path)


def test_path_contributions_add_up_to_lightgbms_own_margin(bundle) -> None:
    rows = rows_near_real(bundle)
    prediction = bundle.predict(rows)
    lightgbm_margin = bundle.booster.predict(rows[:, bundle.column_index], raw_score=True)
    np.testing.assert_allclose(prediction.margins, lightgbm_margin, atol=1e-9)
    np.testing.assert_allclose(bundle.explainer.bias + prediction.contributions.sum(axis=1), prediction.margins)


def test_path_contributions_name_the_same_top_feature_as_treeshap_mostly(bundle) -> None:
    rows = rows_near_real(bundle)
    fast = bundle.predict(rows).contributions
    exact = exact_contributions(bundle.booster, rows[:, bundle.column_index])
    agree = np.mean(np.argmax(np.abs(fast), axis=1) == np.argmax(np.abs(exact), axis=1))
    assert agree >= 0.8
