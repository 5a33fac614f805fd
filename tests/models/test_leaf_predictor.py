"""One row through LightGBM's single-row fast path lands in the same leaves as `Booster.predict`."""

from __future__ import annotations

import numpy as np

from features.spec import FEATURE_NAMES
from models.bundle import DEFAULT_BUNDLE_DIR, load_bundle


def test_one_row_and_many_rows_give_booster_predicts_leaves() -> None:
    bundle = load_bundle(DEFAULT_BUNDLE_DIR)
    rng = np.random.default_rng(19)
    rows = rng.normal(scale=3.0, size=(64, len(FEATURE_NAMES)))
    rows[::4] = 0.0  # the all-neutral row of a message with nothing in it
    matrix = np.ascontiguousarray(rows[:, bundle.column_index])
    expected = bundle.booster.predict(matrix, pred_leaf=True, num_threads=1)
    one_by_one = np.vstack([bundle.leaf_predictor.leaves(matrix[i : i + 1]) for i in range(len(matrix))])
    np.testing.assert_array_equal(one_by_one, expected)
    np.testing.assert_array_equal(bundle.leaf_predictor.leaves(matrix), expected)
    single = [bundle.predict(rows[i : i + 1]) for i in range(len(rows))]
    batch = bundle.predict(rows)
    np.testing.assert_allclose([p.probabilities[0] for p in single], batch.probabilities, rtol=1e-12)
    np.testing.assert_allclose(np.vstack([p.contributions for p in single]), batch.contributions, rtol=1e-12)
