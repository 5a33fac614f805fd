"""Message-level metrics, and the evaluation of a bundle on the held-out corpus split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score, roc_curve

from features.spec import CONTENT_FEATURES, FEATURE_NAMES
from features.vector import assemble
from models.bundle import Calibration, ModelBundle


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Sample weights that give both classes equal total weight."""
    spam_share = float(labels.mean())
    return np.where(labels == 1, 0.5 / spam_share, 0.5 / (1.0 - spam_share))


def fit_platt(margins: np.ndarray, labels: np.ndarray) -> Calibration:
    """Platt scaling of raw margins at equal class priors: logit(p) becomes a log-likelihood ratio."""
    platt = LogisticRegression(C=1e6, max_iter=1000).fit(
        margins.reshape(-1, 1), labels, sample_weight=balanced_weights(labels)
    )
    return Calibration(slope=float(platt.coef_[0][0]), intercept=float(platt.intercept_[0]))


def recall_at_fpr(labels: np.ndarray, scores: np.ndarray, max_fpr: float) -> float:
    """The largest share of spam caught while at most `max_fpr` of ham is flagged."""
    fpr, tpr, _ = roc_curve(labels, scores)
    allowed = fpr <= max_fpr
    return float(tpr[allowed].max()) if allowed.any() else 0.0


def expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray | None = None, bins: int = 10
) -> float:
    weights = np.ones_like(probabilities) if weights is None else weights
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(probabilities, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            w = weights[mask]
            gap = np.average(labels[mask], weights=w) - np.average(probabilities[mask], weights=w)
            error += w.sum() / weights.sum() * abs(gap)
    return float(error)


def message_metrics(labels: np.ndarray, probabilities: np.ndarray, thresholds: dict[str, float]) -> dict[str, float]:
    """Ranking metrics, and calibration at equal class priors (the test split reweighted to 50/50)."""
    labels = labels.astype(int)
    weights = balanced_weights(labels)
    metrics = {
        "n": int(labels.size),
        "n_spam": int(labels.sum()),
        "roc_auc": float(roc_auc_score(labels, probabilities)),
        "pr_auc": float(average_precision_score(labels, probabilities)),
        "recall_at_fpr_0.1pct": recall_at_fpr(labels, probabilities, 0.001),
        "recall_at_fpr_1pct": recall_at_fpr(labels, probabilities, 0.01),
        "brier": float(brier_score_loss(labels, probabilities, sample_weight=weights)),
        "log_loss": float(log_loss(labels, np.clip(probabilities, 1e-7, 1 - 1e-7), sample_weight=weights)),
        "ece": expected_calibration_error(labels, probabilities, weights),
    }
    ham, spam = labels == 0, labels == 1
    for name, threshold in thresholds.items():
        flagged = probabilities >= threshold
        metrics[f"{name}_threshold"] = threshold
        metrics[f"{name}_recall"] = float(flagged[spam].mean()) if spam.any() else 0.0
        metrics[f"{name}_fpr"] = float(flagged[ham].mean()) if ham.any() else 0.0
    return metrics


@dataclass(slots=True)
class SplitRows:
    rows: np.ndarray  # (n, len(FEATURE_NAMES)), spec order
    labels: np.ndarray


SIGNATURE_COLUMNS = ("sig_similarity", "sig_age_days_log", "sig_hits_log")


def corpus_rows(frame: pd.DataFrame, text_scores: np.ndarray) -> SplitRows:
    """Spec-order rows for corpus messages: content features, a text score, no account context."""
    content = frame[list(c for c in CONTENT_FEATURES if c != "text_model_score")].to_dict("records")
    signatures = (
        frame[list(SIGNATURE_COLUMNS)].assign(campaign_accounts_log=0.0).to_dict("records")
        if set(SIGNATURE_COLUMNS) <= set(frame.columns)
        else [None] * len(frame)
    )
    rows = np.vstack(
        [assemble(c, float(s), None, None, f) for c, s, f in zip(content, text_scores, signatures, strict=True)]
    )
    assert rows.shape[1] == len(FEATURE_NAMES)
    return SplitRows(rows=rows, labels=frame["label"].to_numpy())


def score_modern_mail(bundle: ModelBundle) -> dict[str, dict[str, float | int]]:
    """The bundle's probability for each message of the check set beyond the corpora."""
    from features.message import parse_raw
    from features.vector import content_vector
    from training.modern_mail import ham_messages, spam_messages

    results: dict[str, dict[str, float | int]] = {}
    for label, messages in ((0, ham_messages()), (1, spam_messages())):
        for name, message in messages.items():
            parsed = parse_raw(message.as_bytes())
            content = content_vector(parsed, None, bundle.text_model)
            row = assemble(content.content.features, content.text_model_score, None, None)
            results[name] = {"label": label, "spam_probability": float(bundle.predict(row[None, :]).probabilities[0])}
    return results


def evaluate_bundle(bundle: ModelBundle, frame: pd.DataFrame, thresholds: dict[str, float]) -> dict[str, float]:
    """Re-measure a bundle on the held-out test split, through the batch scoring path."""
    test = frame[frame["split"] == "test"]
    text_scores = bundle.text_model.score_batch(test["document"].tolist(), test["subject"].tolist())
    split = corpus_rows(test, text_scores)
    return message_metrics(split.labels, bundle.predict(split.rows).probabilities, thresholds)
