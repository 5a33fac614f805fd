"""Per-feature contributions to a LightGBM score, fast enough for every request.

Path attribution (Saabas; XGBoost's ``approx_contribs``): walking from a tree's root
to the leaf a row lands in, each split moves the expected output from the parent's
value to the child's, and that change is credited to the split's feature. Summed over
trees, the contributions plus the bias equal the raw margin exactly.

Everything that depends only on the model is done once at load: for every leaf, the
features and value changes along its path. Per request LightGBM returns the leaf
index in each tree (``pred_leaf``), and a row's contributions are a gather and a sum:
tens of microseconds, where LightGBM's exact TreeSHAP (``pred_contrib``) takes over a
millisecond per row for the shipped model. `exact_contributions` keeps TreeSHAP for
offline use and for the tests that compare the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np


@dataclass(slots=True)
class PathExplainer:
    n_features: int
    bias: float  # sum over trees of the root's expected output
    leaf_values: np.ndarray  # (trees, max_leaves)
    path_features: np.ndarray  # (trees, max_leaves, max_depth), n_features where padded
    path_deltas: np.ndarray  # (trees, max_leaves, max_depth)

    @classmethod
    def from_booster(cls, booster: lgb.Booster) -> PathExplainer:
        dump = booster.dump_model()
        trees = dump["tree_info"]
        n_features = int(dump["max_feature_idx"]) + 1
        paths: list[dict[int, tuple[list[int], list[float], float]]] = []
        bias = 0.0
        for tree in trees:
            root = tree["tree_structure"]
            leaves: dict[int, tuple[list[int], list[float], float]] = {}
            if "leaf_value" in root and "split_feature" not in root:  # a single-leaf tree
                bias += float(root["leaf_value"])
                leaves[0] = ([], [], 0.0)
            else:
                bias += float(root["internal_value"])
                _walk(root, [], [], leaves)
            paths.append(leaves)
        max_leaves = max(len(p) for p in paths)
        max_depth = max((len(f) for p in paths for f, _, _ in p.values()), default=0) or 1
        leaf_values = np.zeros((len(trees), max_leaves))
        path_features = np.full((len(trees), max_leaves, max_depth), n_features, dtype=np.intp)
        path_deltas = np.zeros((len(trees), max_leaves, max_depth))
        for t, leaves in enumerate(paths):
            for leaf, (features, deltas, value) in leaves.items():
                leaf_values[t, leaf] = value
                path_features[t, leaf, : len(features)] = features
                path_deltas[t, leaf, : len(deltas)] = deltas
        # Single-leaf trees hold their whole output in the bias.
        return cls(n_features, bias, leaf_values, path_features, path_deltas)

    def explain(self, leaves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(margins, contributions) for leaf indices of shape (rows, trees)."""
        leaves = np.asarray(leaves, dtype=np.intp).reshape(-1, self.leaf_values.shape[0])
        trees = np.arange(self.leaf_values.shape[0])
        features = self.path_features[trees, leaves]  # (rows, trees, depth)
        deltas = self.path_deltas[trees, leaves]
        rows = leaves.shape[0]
        offsets = (np.arange(rows) * (self.n_features + 1))[:, None, None]
        flat = np.bincount((features + offsets).ravel(), weights=deltas.ravel(), minlength=rows * (self.n_features + 1))
        contributions = flat.reshape(rows, self.n_features + 1)[:, : self.n_features]
        margins = self.bias + contributions.sum(axis=1)
        return margins, contributions


def _walk(
    node: dict[str, Any], features: list[int], deltas: list[float], out: dict[int, tuple[list[int], list[float], float]]
) -> None:
    if "leaf_index" in node:
        out[int(node["leaf_index"])] = (features, deltas, float(node["leaf_value"]))
        return
    parent = float(node["internal_value"])
    feature = int(node["split_feature"])
    for side in ("left_child", "right_child"):
        child = node[side]
        value = float(child["leaf_value"] if "leaf_index" in child else child["internal_value"])
        _walk(child, [*features, feature], [*deltas, value - parent], out)


def exact_contributions(booster: lgb.Booster, matrix: np.ndarray) -> np.ndarray:
    """LightGBM's TreeSHAP contributions (rows, features); slow, for offline use."""
    return np.asarray(booster.predict(matrix, pred_contrib=True))[:, :-1]
