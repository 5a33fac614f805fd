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

import json
import math
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

    def predict(self, rows: np.ndarray) -> Prediction:
        """Score full spec-order rows (n, len(FEATURES)); one booster call for the whole batch."""
        matrix = np.ascontiguousarray(rows[:, self.column_index])
        # One thread: OpenMP start-up costs more than it saves on request-sized batches,
        # and the service scales by worker processes.
        leaves = self.booster.predict(matrix, pred_leaf=True, num_threads=1)
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
