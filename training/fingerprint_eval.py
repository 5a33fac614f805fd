"""MinHash against TLSH: which fuzzy fingerprint tells copies of one message from unrelated mail.

For a sample of corpus messages (subject and visible text, as the service sees them),
each is paired with a mutated copy (`training.mutations`: greeting name, hash-busting
token, tracking links, numbers) as a near-duplicate, and with random other corpus
messages as unrelated pairs. For each method it reports the ROC AUC of its similarity,
the share of copies matched at a threshold that lets through 0.1% and 0.01% of
unrelated pairs, the share of messages it can fingerprint at all, and its cost.

    python -m training.fingerprint_eval --sample 3000 --pairs 200000
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import tlsh
import typer
from rich.console import Console
from rich.table import Table
from sklearn.metrics import roc_auc_score

from features.fingerprint import Fingerprinter, normalise
from training.mutations import mutate_text


@dataclass(slots=True)
class Method:
    name: str
    make: Callable[[str], Any]  # document -> fingerprint, or None when it cannot make one
    similarity: Callable[[Any, Any], float]  # higher is more alike


def _tlsh_hash(text: str) -> str | None:
    digest = tlsh.hash(text.encode("utf-8", "replace"))
    return None if digest in ("", "TNULL") else digest


def methods() -> list[Method]:
    out = []
    for width in (2, 3, 4):
        fingerprinter = Fingerprinter(width=width)
        out.append(
            Method(f"MinHash 64, {width}-word shingles", fingerprinter.fingerprint, lambda a, b: a.similarity(b))
        )
    out.append(Method("TLSH on the raw text", _tlsh_hash, lambda a, b: -float(tlsh.diff(a, b))))
    out.append(
        Method(
            "TLSH on the normalised text", lambda d: _tlsh_hash(" ".join(normalise(d))), lambda a, b: -tlsh.diff(a, b)
        )
    )
    return out


def _recall_at(pos: np.ndarray, neg: np.ndarray, false_match: float) -> tuple[float, float]:
    threshold = float(np.quantile(neg, 1 - false_match, method="higher"))
    return float(np.mean(pos > threshold)), threshold


def evaluate(documents: list[str], pairs: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    copies = [mutate_text(d, rng) for d in documents]
    left = rng.integers(0, len(documents), size=pairs)
    right = (left + rng.integers(1, len(documents), size=pairs)) % len(documents)
    rows = []
    for method in methods():
        started = time.perf_counter()
        prints = [method.make(d) for d in documents]
        per_print_us = (time.perf_counter() - started) / len(documents) * 1e6
        copy_prints = [method.make(c) for c in copies]
        pos = np.array(
            [
                method.similarity(a, b)
                for a, b in zip(prints, copy_prints, strict=True)
                if a is not None and b is not None
            ]
        )
        usable = [(i, j) for i, j in zip(left, right, strict=True) if prints[i] is not None and prints[j] is not None]
        started = time.perf_counter()
        neg = np.array([method.similarity(prints[i], prints[j]) for i, j in usable])
        per_compare_us = (time.perf_counter() - started) / max(len(usable), 1) * 1e6
        labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        recall_1e3, threshold_1e3 = _recall_at(pos, neg, 1e-3)
        recall_1e4, threshold_1e4 = _recall_at(pos, neg, 1e-4)
        rows.append(
            {
                "method": method.name,
                "coverage": sum(p is not None for p in prints) / len(prints),
                "roc_auc": float(roc_auc_score(labels, np.r_[pos, neg])),
                "recall_at_0.1%": recall_1e3,
                "threshold_at_0.1%": threshold_1e3,
                "recall_at_0.01%": recall_1e4,
                "threshold_at_0.01%": threshold_1e4,
                "median_copy_similarity": float(np.median(pos)),
                "us_per_fingerprint": per_print_us,
                "us_per_comparison": per_compare_us,
                "near_duplicates": len(pos),
                "unrelated_pairs": len(neg),
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]], command: str) -> None:
    table = Table(title=f"Fuzzy fingerprints on the corpora (`{command}`)")
    for column in ("method", "coverage", "ROC AUC", "copies matched at 0.1% / 0.01% false match", "µs/print", "µs/cmp"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["method"],
            f"{r['coverage']:.1%}",
            f"{r['roc_auc']:.4f}",
            f"{r['recall_at_0.1%']:.1%} / {r['recall_at_0.01%']:.1%}",
            f"{r['us_per_fingerprint']:.0f}",
            f"{r['us_per_comparison']:.2f}",
        )
    Console().print(table)


def main(
    sample: Annotated[int, typer.Option(help="Corpus messages to pair with mutated copies")] = 3_000,
    pairs: Annotated[int, typer.Option(help="Random unrelated pairs")] = 200_000,
    seed: int = 7,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures here")] = None,
) -> None:
    import orjson

    from service.settings import Settings
    from training.dataset import build_corpus_dataset

    settings = Settings()
    frame = build_corpus_dataset(settings.data_dir, settings.cache_dir)
    chosen = frame.sample(n=min(sample, len(frame)), random_state=seed)
    rows = evaluate(list(chosen["document"]), pairs, seed)
    print_table(rows, f"python -m training.fingerprint_eval --sample {sample} --pairs {pairs} --seed {seed}")
    if json_out is not None:
        json_out.write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    typer.run(main)
