"""Train the content model on the public corpora and write a bundle and its model card.

Text model out-of-fold on the training split -> LightGBM with early stopping on the
latest part of training -> Platt calibration on the calibration split -> metrics on
the time-split test part, which the model never touched.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from rich.console import Console
from sklearn.metrics import roc_auc_score

from features.spec import CONTENT_FEATURES, FEATURE_INDEX, FEATURE_SPEC_VERSION
from features.text_model import fit_text_model, out_of_fold_scores, vectorize
from models.bundle import ModelBundle, save_bundle
from training.evaluate import SIGNATURE_COLUMNS, corpus_rows, fit_platt, message_metrics, score_modern_mail
from training.model_card import write_model_card

LGB_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbose": -1,
    "seed": 7,
    "deterministic": True,
    "num_threads": 2,
}
# In 2002-2007 ham was mostly plain-text list mail, so "has HTML" and "how many
# headers" separate the corpora's classes; on today's outbound mail, where every
# client sends HTML, they would flag ham. The model does not read them.
ERA_CONFOUNDED = frozenset({"html_present", "header_count"})
MAX_ROUNDS = 2000
CALIBRATION_PRIOR = 0.5
EARLY_STOPPING_ROUNDS = 100
# The newest share of the training split used to pick the number of boosting rounds.
EARLY_STOPPING_SHARE = 0.15


@dataclass(slots=True)
class TrainConfig:
    thresholds: dict[str, float]
    max_rows: int | None = None  # subsample for quick runs and tests
    text_folds: int = 5
    seed: int = 7
    # Per-row weight of present-day ham: ~1,000 fills of 285 templates against ~10,000
    # corpus ham; without it the 2007 mailing lists still decide what ham looks like.
    modern_ham_weight: float = 4.0
    modern_spam_weight: float = 1.0
    evaluate_modern: bool = True  # score the small hand-written check set (training.modern_mail)
    drop_era_flips: bool = False  # leave out features whose evidence points opposite ways in 2007 and today
    exclude_features: frozenset[str] = frozenset()  # for ablations: measure what a feature is worth


# A feature whose evidence points one way in the 2007 corpora and the other way in
# present-day mail says more about how each corpus was made (or about the era) than
# about spam: the model must not learn either direction. Measured per training run
# by each feature's own ROC AUC on both; a flip counts when both sides are clear of 0.5.
ERA_FLIP_MARGIN = 0.05


def era_flipped_features(frame: pd.DataFrame, candidates: list[str]) -> list[str]:
    """Content features whose own AUC is above 0.5 + margin in one era and below 0.5 - margin in the other."""
    modern = frame["source"].eq("modern").to_numpy()
    train = frame["split"].eq("train").to_numpy()
    labels = frame["label"].to_numpy()
    if not modern.any():
        return []
    flipped = []
    for name in candidates:
        values = frame[name].to_numpy()
        aucs = []
        for era in (~modern & train, modern & train):
            y, x = labels[era], values[era]
            aucs.append(roc_auc_score(y, x) if np.unique(x).size > 1 and np.unique(y).size > 1 else 0.5)
        old, new = (a - 0.5 for a in aucs)
        if old * new < 0 and min(abs(old), abs(new)) > ERA_FLIP_MARGIN:
            flipped.append(name)
    return flipped


def row_weights(frame: pd.DataFrame, config: TrainConfig) -> np.ndarray:
    modern = frame["source"].eq("modern").to_numpy()
    spam = frame["label"].to_numpy() == 1
    weights = np.ones(len(frame))
    weights[modern & ~spam] = config.modern_ham_weight
    weights[modern & spam] = config.modern_spam_weight
    return weights


def row_groups(frame: pd.DataFrame) -> np.ndarray:
    """The unit a fold must not split: a template's fills for modern-train, a message otherwise."""
    own = (frame["source"] + "/" + frame["name"]).to_numpy()
    if "template" not in frame.columns:
        return own
    template = frame["template"].to_numpy()
    return np.where(frame["source"].eq("modern").to_numpy() & pd.notna(template), template, own)


def _subsample(frame: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    if not max_rows or len(frame) <= max_rows:
        return frame
    parts = [part.sample(frac=max_rows / len(frame), random_state=seed) for _, part in frame.groupby("split")]
    return pd.concat(parts).sort_values(["split", "source", "order"]).reset_index(drop=True)


def _early_stopping_mask(train: pd.DataFrame) -> np.ndarray:
    """The newest TREC training messages (by delivery order) pick the round count."""
    is_trec = train["source"].eq("trec").to_numpy()
    order = train["order"].to_numpy()
    cutoff = np.quantile(order[is_trec], 1 - EARLY_STOPPING_SHARE) if is_trec.any() else np.inf
    return is_trec & (order > cutoff)


def train_model(frame: pd.DataFrame, config: TrainConfig, console: Console | None = None) -> ModelBundle:
    console = console or Console()
    frame = _subsample(frame, config.max_rows, config.seed)
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    calibration = frame[frame["split"] == "calibration"].reset_index(drop=True)
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    console.log(f"rows: train {len(train)}, calibration {len(calibration)}, test {len(test)}")

    train_text = vectorize(train["document"].tolist(), train["subject"].tolist())
    y_train = train["label"].to_numpy()
    w_train = row_weights(train, config)
    console.log("text model: out-of-fold scores for training")
    oof = out_of_fold_scores(
        train_text, y_train, folds=config.text_folds, seed=config.seed, groups=row_groups(train), weights=w_train
    )
    text_model = fit_text_model(train_text, y_train, weights=w_train)

    # The corpora carry no account context, so this model reads content features only,
    # less those that mark the corpora's era rather than spam (see ERA_CONFOUNDED).
    # Signature matches are replayed in delivery order (`training.signature_features`).
    candidates = [name for name in CONTENT_FEATURES if name not in ERA_CONFOUNDED | config.exclude_features]
    flipped = (
        era_flipped_features(frame, [n for n in candidates if n != "text_model_score"]) if config.drop_era_flips else []
    )
    if flipped:
        console.log(f"left out, their evidence flips between 2007 and today: {', '.join(flipped)}")
    model_features = [name for name in candidates if name not in flipped] + list(SIGNATURE_COLUMNS)
    columns = [FEATURE_INDEX[name] for name in model_features]
    x_train = corpus_rows(train, oof).rows[:, columns]

    stop_mask = _early_stopping_mask(train)
    console.log("LightGBM: choosing the number of rounds")
    ham_weight, spam_weight = w_train[y_train == 0].sum(), w_train[y_train == 1].sum()
    params = {**LGB_PARAMS, "scale_pos_weight": float(ham_weight / max(1.0, spam_weight))}
    fit_set = lgb.Dataset(
        x_train[~stop_mask], y_train[~stop_mask], weight=w_train[~stop_mask], feature_name=model_features
    )
    stop_set = lgb.Dataset(x_train[stop_mask], y_train[stop_mask], weight=w_train[stop_mask], reference=fit_set)
    probe = lgb.train(
        params,
        fit_set,
        num_boost_round=MAX_ROUNDS,
        valid_sets=[stop_set],
        callbacks=[lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)],
    )
    rounds = max(50, int(probe.best_iteration * (1 + EARLY_STOPPING_SHARE)))
    console.log(f"LightGBM: best iteration {probe.best_iteration}; refitting on all training rows for {rounds}")
    booster = lgb.train(
        params, lgb.Dataset(x_train, y_train, weight=w_train, feature_name=model_features), num_boost_round=rounds
    )

    cal_scores = text_model.score_batch(calibration["document"].tolist(), calibration["subject"].tolist())
    cal_rows = corpus_rows(calibration, cal_scores)
    cal_margin = booster.predict(cal_rows.rows[:, columns], raw_score=True)
    # Calibrated at equal class priors: the probability is the message's own evidence, and
    # logit(p) its log-likelihood ratio, whatever the spam share of the corpora or the traffic.
    calibrator = fit_platt(cal_margin, cal_rows.labels)

    modern = frame["source"].eq("modern")
    data = {
        "corpora": "SpamAssassin public corpus (all releases) + TREC 2007 public corpus, development part"
        + (
            " + modern-train (present-day: ham rendered from the email templates of 20 open-source projects, "
            "re-sent in the shapes of real mailer libraries; real phishing from phishing_pot, CC BY-NC 4.0, "
            "and scam spam from E-mail-SPAM-Archive)"
            if modern.any()
            else ""
        ),
        "split": "SpamAssassin -> train; TREC by delivery order: first 70% train, next 10% calibration, last 20% test"
        + (
            "; modern-train: a stable 15% of ham templates and spam files -> calibration, the rest train"
            if modern.any()
            else ""
        ),
        "dedup": "exact duplicates of the normalised body removed before splitting; later copies dropped",
        "signatures": "sig_* features from a walk through the serving signature database in delivery order: "
        "each message matched against spam seen at least 100 messages before it (training.signature_features)",
        "weights": {"modern_ham": config.modern_ham_weight, "modern_spam": config.modern_spam_weight},
        "era_flipped_features": flipped,
        "rows": {s: int((frame["split"] == s).sum()) for s in ("train", "calibration", "test")},
        "spam_rows": {s: int(frame.loc[frame["split"] == s, "label"].sum()) for s in ("train", "calibration", "test")},
        "modern_rows": {
            "ham": int((modern & frame["label"].eq(0)).sum()),
            "spam": int((modern & frame["label"].eq(1)).sum()),
        },
        "subsampled_to": config.max_rows,
    }
    version_seed = json.dumps([data["rows"], rounds, FEATURE_SPEC_VERSION]).encode()
    version = f"corpus-{datetime.now(UTC):%Y%m%d}-{hashlib.sha1(version_seed).hexdigest()[:8]}"
    bundle = ModelBundle(
        version=version,
        feature_spec_version=FEATURE_SPEC_VERSION,
        model_features=model_features,
        booster=booster,
        text_model=text_model,
        calibration=calibrator,
        train_spam_prior=float(y_train.mean()),
        calibration_prior=CALIBRATION_PRIOR,
        data=data,
        params={
            **LGB_PARAMS,
            "num_boost_round": rounds,
            "text_model": "logreg C=4 on hashed words 1-2 + subject chars 3-5",
        },
    )
    test_scores = text_model.score_batch(test["document"].tolist(), test["subject"].tolist())
    test_rows = corpus_rows(test, test_scores)
    probabilities = bundle.predict(test_rows.rows).probabilities
    bundle.metrics = {"test": message_metrics(test_rows.labels, probabilities, config.thresholds)}
    if config.evaluate_modern:
        bundle.metrics["modern_mail"] = score_modern_mail(bundle)
    bundle.metrics["test"]["text_model_only_roc_auc"] = float(
        message_metrics(test_rows.labels, 1 / (1 + np.exp(-test_scores)), {})["roc_auc"]
    )
    return bundle


def train_and_save(
    frame: pd.DataFrame, config: TrainConfig, output: Path, console: Console | None = None
) -> ModelBundle:
    bundle = train_model(frame, config, console)
    save_bundle(bundle, output)
    write_model_card(bundle, output)
    return bundle
