"""The model bundle: everything needed to turn a feature vector into a calibrated score.

A bundle is a directory:

- ``bundle.json``: version, feature-spec version, the features the booster reads,
  the Platt calibration, the training spam prior, metrics and data description;
- ``booster.txt``: the LightGBM model in its text format;
- ``text_model.joblib``: the hashed n-gram text model's weights.

Training writes it (`save_bundle`); the service loads it once at start-up or on
reload (`load_bundle`), never per request. A bundle built for another feature spec
is refused with `FeatureSpecMismatch`.
"""

from __future__ import annotations

import ctypes
import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import lightgbm as lgb
import numpy as np

from features.spec import FEATURE_INDEX, FEATURE_SPEC_VERSION
from features.text_model import TextModel
from models.explain import PathExplainer

BUNDLE_FILE = "bundle.json"
BOOSTER_FILE = "booster.txt"
TEXT_MODEL_FILE = "text_model.joblib"
DEFAULT_BUNDLE_DIR = Path(__file__).resolve().parent / "default"


class BundleError(Exception):
    """A model bundle is missing, unreadable or inconsistent."""


class FeatureSpecMismatch(BundleError):
    """The bundle was trained on another feature spec than the one this code computes."""


@dataclass(frozen=True, slots=True)
class Calibration:
    """Platt scaling of the booster's raw margin: p = sigmoid(slope * margin + intercept)."""

    slope: float
    intercept: float

    def apply(self, margin: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.slope * margin + self.intercept)))


@dataclass(slots=True)
class Prediction:
    probabilities: np.ndarray  # calibrated spam probability per row
    margins: np.ndarray  # raw booster log-odds per row
    contributions: np.ndarray  # per row and model feature, log-odds (path attribution; bias left out)


_PREDICT_LEAF_INDEX = 2  # LightGBM's C_API_PREDICT_LEAF_INDEX
_DTYPE_FLOAT64 = 1  # C_API_DTYPE_FLOAT64


class LeafPredictor:
    """The leaf each tree puts a row in: `Booster.predict(pred_leaf=True)`, without its per-call overhead for one row.

    `Booster.predict` checks, converts and copies its input in Python on every call,
    which for one row costs more than walking the trees. One row goes through
    LightGBM's single-row fast path instead (`LGBM_BoosterPredictForMatSingleRowFast`,
    set up once per bundle); the same native trees, so the same leaves
    (`tests/models/test_leaf_predictor.py`). Several rows go through `Booster.predict`,
    whose overhead they share. The fast path's buffers are per configuration, so one
    row at a time goes through it (a lock: requests may score in worker threads).
    """

    def __init__(self, booster: lgb.Booster) -> None:
        self.booster = booster
        self.trees = booster.num_trees()
        self.features = booster.num_feature()
        self._lock = threading.Lock()
        self._config: ctypes.c_void_p | None = None
        self._out = np.empty(self.trees, dtype=np.float64)
        self._out_len = ctypes.c_int64()

    def _fast_config(self) -> ctypes.c_void_p:
        config = ctypes.c_void_p()
        _lgb_call(
            lgb.basic._LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                self.booster._handle,
                ctypes.c_int(_PREDICT_LEAF_INDEX),
                ctypes.c_int(0),  # start iteration
                ctypes.c_int(-1),  # every iteration
                ctypes.c_int(_DTYPE_FLOAT64),
                ctypes.c_int32(self.features),
                ctypes.c_char_p(b"num_threads=1"),
                ctypes.byref(config),
            )
        )
        return config

    def leaves(self, matrix: np.ndarray) -> np.ndarray:
        """(rows, trees) leaf indices of a C-contiguous float64 (rows, features) matrix."""
        if matrix.shape[0] != 1:
            return self.booster.predict(matrix, pred_leaf=True, num_threads=1)
        row = np.ascontiguousarray(matrix[0], dtype=np.float64)
        with self._lock:
            if self._config is None:
                self._config = self._fast_config()
            _lgb_call(
                lgb.basic._LIB.LGBM_BoosterPredictForMatSingleRowFast(
                    self._config,
                    row.ctypes.data_as(ctypes.c_void_p),
                    ctypes.byref(self._out_len),
                    self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
                )
            )
            return self._out[np.newaxis, :].copy()

    def __del__(self) -> None:
        if getattr(self, "_config", None) is not None:
            lgb.basic._LIB.LGBM_FastConfigFree(self._config)


def _lgb_call(status: int) -> None:
    if status != 0:
        raise lgb.basic.LightGBMError(lgb.basic._LIB.LGBM_GetLastError().decode())


@dataclass
class ModelBundle:
    version: str
    feature_spec_version: str
    model_features: list[str]
    booster: lgb.Booster
    text_model: TextModel
    calibration: Calibration
    train_spam_prior: float
    calibration_prior: float = 0.5  # the class prior the calibrated probabilities assume
    metrics: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [name for name in self.model_features if name not in FEATURE_INDEX]
        if missing:
            raise FeatureSpecMismatch(f"bundle {self.version} reads features the spec lacks: {missing}")
        self.column_index = np.array([FEATURE_INDEX[name] for name in self.model_features], dtype=np.intp)
        # logit(p) minus this is a message's log-likelihood ratio, spam against ham.
        self.prior_log_odds = math.log(self.calibration_prior / (1.0 - self.calibration_prior))
        self.explainer = PathExplainer.from_booster(self.booster)
        self.leaf_predictor = LeafPredictor(self.booster)

    def predict(self, rows: np.ndarray) -> Prediction:
        """Score full spec-order rows (n, len(FEATURES)); one booster call for the whole batch."""
        matrix = np.ascontiguousarray(rows[:, self.column_index])
        # One thread: OpenMP start-up costs more than it saves on request-sized batches,
        # and the service scales by worker processes.
        leaves = self.leaf_predictor.leaves(matrix)
        margins, contributions = self.explainer.explain(leaves)
        return Prediction(probabilities=self.calibration.apply(margins), margins=margins, contributions=contributions)


def save_bundle(bundle: ModelBundle, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    bundle.booster.save_model(str(directory / BOOSTER_FILE))
    joblib.dump(bundle.text_model, directory / TEXT_MODEL_FILE, compress=3)
    meta = {
        "version": bundle.version,
        "feature_spec_version": bundle.feature_spec_version,
        "model_features": bundle.model_features,
        "calibration": {
            "method": "platt",
            "slope": bundle.calibration.slope,
            "intercept": bundle.calibration.intercept,
        },
        "train_spam_prior": bundle.train_spam_prior,
        "calibration_prior": bundle.calibration_prior,
        "metrics": bundle.metrics,
        "data": bundle.data,
        "params": bundle.params,
    }
    (directory / BUNDLE_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def load_bundle(directory: Path, expected_spec: str = FEATURE_SPEC_VERSION) -> ModelBundle:
    meta_path = directory / BUNDLE_FILE
    if not meta_path.is_file():
        raise BundleError(f"no model bundle at {directory} (missing {BUNDLE_FILE}); run `outguard train`")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{meta_path} is not valid JSON: {exc}") from exc
    if meta.get("feature_spec_version") != expected_spec:
        raise FeatureSpecMismatch(
            f"bundle {meta.get('version')} at {directory} was trained on feature spec "
            f"{meta.get('feature_spec_version')!r}, this service computes spec {expected_spec!r}; "
            "retrain with `outguard train` or run the matching service version"
        )
    try:
        booster = lgb.Booster(model_file=str(directory / BOOSTER_FILE))
        text_model = joblib.load(directory / TEXT_MODEL_FILE)
    except (OSError, lgb.basic.LightGBMError, EOFError, ValueError) as exc:
        raise BundleError(f"bundle at {directory} is unreadable: {exc}") from exc
    calibration = meta["calibration"]
    return ModelBundle(
        version=meta["version"],
        feature_spec_version=meta["feature_spec_version"],
        model_features=list(meta["model_features"]),
        booster=booster,
        text_model=text_model,
        calibration=Calibration(slope=calibration["slope"], intercept=calibration["intercept"]),
        train_spam_prior=float(meta["train_spam_prior"]),
        calibration_prior=float(meta.get("calibration_prior", 0.5)),
        metrics=meta.get("metrics", {}),
        data=meta.get("data", {}),
        params=meta.get("params", {}),
    )
