"""Train a bundle from the service's own events (`outguard train --from-events`).

The dataset (`training.events`) holds each message's feature vector as it was logged,
so the model learns from exactly what serving computes, account behaviour, engagement
and fingerprints included. LightGBM stops early on the validation split, with
monotone constraints where the direction is known (more complaints or invalid
recipients never lower the score; more replies never raise it), and is Platt-calibrated
on the validation split at equal class priors, like the corpus model. The text model is
the base bundle's: the logged `text_model_score` came from it.

Engines: `local` (one process) or `dask` (LightGBM's Dask interface on a cluster; the
training split is read from Parquet by the workers, never gathered on the client).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import lightgbm as lgb
import numpy as np

from features.spec import FEATURE_INDEX, FEATURE_NAMES, FEATURE_SPEC_VERSION
from models.bundle import ModelBundle
from training.evaluate import fit_platt, message_metrics
from training.events import EventSplit, read_labels, read_split
from training.train import CALIBRATION_PRIOR, ERA_CONFOUNDED, LGB_PARAMS

# The sign of each feature's effect where it is known; LightGBM enforces it.
MONOTONE: dict[str, int] = {
    "text_model_score": 1,
    "sig_similarity": 1,
    "eng_hard_bounce_rate": 1,
    "eng_invalid_recipient_rate": 1,
    "eng_complaint_rate": 1,
    "eng_reply_rate": -1,
}
EVENT_FEATURES: tuple[str, ...] = tuple(name for name in FEATURE_NAMES if name not in ERA_CONFOUNDED)

Engine = Literal["local", "dask"]


class NotEnoughLabels(ValueError):
    """A split lacks the spam or ham rows that training or calibration needs."""


@dataclass(slots=True)
class EventTrainConfig:
    thresholds: dict[str, float]
    max_rounds: int = 1000
    early_stopping_rounds: int = 50
    params: dict[str, Any] = field(default_factory=lambda: dict(LGB_PARAMS))
    engine: Engine = "local"
    scheduler: str | None = None  # a Dask scheduler address; None starts a LocalCluster
    min_spam: int = 5  # per split


def _columns(features: tuple[str, ...]) -> np.ndarray:
    return np.array([FEATURE_INDEX[name] for name in features], dtype=np.intp)


def _check(labels: np.ndarray, name: str, minimum: int) -> None:
    spam = int(labels.sum())
    if spam < minimum or len(labels) - spam < minimum:
        raise NotEnoughLabels(
            f"the {name} split has {spam} spam and {len(labels) - spam} ham rows; at least {minimum} of "
            "each are needed (more traffic, a shorter --label-delay, or admin verdicts)"
        )


def _params(config: EventTrainConfig, labels: np.ndarray, weights: np.ndarray) -> dict[str, Any]:
    spam_weight = float(weights[labels == 1].sum())
    ham_weight = float(weights[labels == 0].sum())
    return {
        **config.params,
        "scale_pos_weight": ham_weight / max(spam_weight, 1e-9),
        "monotone_constraints": [MONOTONE.get(name, 0) for name in EVENT_FEATURES],
        "monotone_constraints_method": "advanced",
    }


def _fit_local(
    params: dict[str, Any], train: EventSplit, validation: EventSplit, config: EventTrainConfig
) -> tuple[lgb.Booster, int]:
    columns = _columns(EVENT_FEATURES)
    fit_set = lgb.Dataset(train.rows[:, columns], train.labels, weight=train.weights, feature_name=list(EVENT_FEATURES))
    valid_set = lgb.Dataset(
        validation.rows[:, columns], validation.labels, weight=validation.weights, reference=fit_set
    )
    booster = lgb.train(
        params,
        fit_set,
        num_boost_round=config.max_rounds,
        valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(config.early_stopping_rounds, verbose=False)],
    )
    best = booster.best_iteration or config.max_rounds
    return booster, best


def _fit_dask(
    params: dict[str, Any], dataset: Path, validation: EventSplit, config: EventTrainConfig
) -> tuple[lgb.Booster, int]:
    from training.dask_engine import fit_on_dask

    return fit_on_dask(params, dataset, validation, config, EVENT_FEATURES)


def train_from_events(dataset: Path, base: ModelBundle, config: EventTrainConfig) -> ModelBundle:
    """A calibrated bundle trained on `dataset` (an `events.parquet`), carrying `base`'s text model."""
    # On Dask the training rows stay with the workers: here only their labels and weights.
    train_labels, train_weights = read_labels(dataset, "train")
    validation, test = read_split(dataset, "validation"), read_split(dataset, "test")
    for labels, name in ((train_labels, "train"), (validation.labels, "validation"), (test.labels, "test")):
        _check(labels, name, config.min_spam)
    params = _params(config, train_labels, train_weights)
    if config.engine == "dask":
        booster, best = _fit_dask(params, dataset, validation, config)
    else:
        booster, best = _fit_local(params, read_split(dataset, "train"), validation, config)
    # Keep only the rounds up to the best one: the saved model and the reasons read every tree.
    booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))

    columns = _columns(EVENT_FEATURES)
    margins = booster.predict(validation.rows[:, columns], raw_score=True)
    calibration = fit_platt(margins, validation.labels)
    data = {
        "kind": "events",
        "source": "the service's event log: logged feature vectors with labels from feedback, verdicts and locks",
        "dataset": str(dataset),
        "rows": {"train": len(train_labels), "calibration": len(validation.labels), "test": len(test.labels)},
        "spam_rows": {
            "train": int(train_labels.sum()),
            "calibration": int(validation.labels.sum()),
            "test": int(test.labels.sum()),
        },
        "split": "by scoring time: oldest train, next validation (early stopping, calibration), newest test",
        "engine": config.engine,
    }
    version_seed = json.dumps([data["rows"], best, FEATURE_SPEC_VERSION, base.version]).encode()
    bundle = ModelBundle(
        version=f"events-{datetime.now(UTC):%Y%m%d%H%M}-{hashlib.sha1(version_seed).hexdigest()[:8]}",
        feature_spec_version=FEATURE_SPEC_VERSION,
        model_features=list(EVENT_FEATURES),
        booster=booster,
        text_model=base.text_model,
        calibration=calibration,
        train_spam_prior=float(train_labels.mean()),
        calibration_prior=CALIBRATION_PRIOR,
        data=data,
        params={
            **{k: v for k, v in params.items() if k != "monotone_constraints"},
            "monotone": MONOTONE,
            "num_boost_round": best,
            "text_model": f"from bundle {base.version}",
        },
    )
    bundle.metrics = {"test": evaluate_on(bundle, test, config.thresholds)}
    return bundle


def evaluate_on(bundle: ModelBundle, split: EventSplit, thresholds: dict[str, float]) -> dict[str, float]:
    """Message-level metrics of `bundle` on one split (the gate compares two bundles on the same one)."""
    probabilities = bundle.predict(split.rows).probabilities
    return message_metrics(split.labels, probabilities, thresholds)
