"""How the content model meets present-day mail it has never seen: whole source projects held out.

Fills of one template are near-copies, so a random split would score the model on
templates it trained on. Here the ham of modern-train is cut into folds by
`source_repo` (every template of a project on one side), the spam by file; each fold
is scored by a model trained on the 2007 corpora plus the other folds, exactly as
`training.train` trains the shipped one. Every present-day message thus gets one
out-of-fold probability, and the figures below are taken over those:

- per ham category and per source project: the share held (p >= the hold threshold),
  the median and the highest probability;
- phishing and scam recall at the threshold that flags 1% of held-out ham, and at the
  hold threshold;
- ROC AUC over all present-day messages.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from sklearn.metrics import roc_auc_score

from training.evaluate import corpus_rows
from training.train import TrainConfig, train_model

FOLDS = 5


def assign_folds(modern: pd.DataFrame, folds: int = FOLDS) -> np.ndarray:
    """Ham: whole source projects, largest first, each to the lightest fold. Spam: by file."""
    fold = np.zeros(len(modern), dtype=int)
    ham = modern["label"].to_numpy() == 0
    sizes = modern[ham].groupby("source_repo").size().sort_values(ascending=False)
    load = np.zeros(folds)
    repo_fold: dict[str, int] = {}
    for repo, size in sizes.items():
        k = int(np.argmin(load))
        repo_fold[str(repo)] = k
        load[k] += size
    fold[ham] = modern.loc[ham, "source_repo"].map(repo_fold).to_numpy()
    fold[~ham] = [zlib.crc32(str(name).encode()) % folds for name in modern.loc[~ham, "name"]]
    return fold


def out_of_fold_probabilities(
    corpus: pd.DataFrame, modern: pd.DataFrame, config: TrainConfig, console: Console | None = None
) -> np.ndarray:
    console = console or Console()
    fold = assign_folds(modern)
    probabilities = np.full(len(modern), np.nan)
    quiet = replace(config, evaluate_modern=False)
    for k in range(FOLDS):
        held = fold == k
        console.log(f"fold {k + 1}/{FOLDS}: {sorted(modern.loc[held & modern['label'].eq(0), 'source_repo'].unique())}")
        bundle = train_model(pd.concat([corpus, modern[~held]], ignore_index=True), quiet, Console(quiet=True))
        part = modern[held]
        rows = corpus_rows(part, bundle.text_model.score_batch(part["document"].tolist(), part["subject"].tolist()))
        probabilities[held] = bundle.predict(rows.rows).probabilities
    return probabilities


def _ham_table(ham: pd.DataFrame, by: str, hold: float) -> list[dict[str, Any]]:
    rows = []
    for value, part in ham.groupby(by):
        p = part["p"].to_numpy()
        rows.append(
            {
                by: str(value),
                "messages": len(p),
                "held": int((p >= hold).sum()),
                "held_share": float((p >= hold).mean()),
                "median": float(np.median(p)),
                "max": float(p.max()),
            }
        )
    return sorted(rows, key=lambda r: (-r["held_share"], -r["max"]))


def summarise(modern: pd.DataFrame, probabilities: np.ndarray, hold: float) -> dict[str, Any]:
    frame = modern.assign(p=probabilities)
    ham, spam = frame[frame["label"] == 0], frame[frame["label"] == 1]
    at_1pct = float(np.quantile(ham["p"], 0.99))
    recall = {
        category: {
            "messages": len(part),
            "recall_at_1pct_fp": float((part["p"] > at_1pct).mean()),
            "recall_at_hold": float((part["p"] >= hold).mean()),
        }
        for category, part in spam.groupby("category")
    }
    return {
        "folds": FOLDS,
        "ham": len(ham),
        "spam": len(spam),
        "roc_auc": float(roc_auc_score(frame["label"], frame["p"])),
        "hold_threshold": hold,
        "ham_held_share": float((ham["p"] >= hold).mean()),
        "ham_median": float(ham["p"].median()),
        "threshold_at_1pct_fp": at_1pct,
        "spam_recall": recall,
        "by_category": _ham_table(ham, "category", hold),
        "by_source": _ham_table(ham, "source_repo", hold),
    }


def grouped_evaluation(
    corpus: pd.DataFrame, modern: pd.DataFrame, config: TrainConfig, console: Console | None = None
) -> dict[str, Any]:
    started = time.perf_counter()
    probabilities = out_of_fold_probabilities(corpus, modern, config, console)
    return summarise(modern, probabilities, config.thresholds["hold"]) | {"seconds": time.perf_counter() - started}
