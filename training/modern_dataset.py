"""modern-train as a training table, through the same feature code as the service.

Each message is first made fit to learn from (`training.modern_corpus.modern_parsed`:
ham re-sent in a real mailer's shape, corpus artefacts undone), then featurised like
any corpus message. Rows carry `source_repo`, `template` and `category` for grouped
evaluation. Cached as Parquet beside the corpus table, keyed by the code that made it.

Splits, for the shipped model: the `eval` pool (a quarter of each project's templates and
of the spam, `training.modern_corpus.template_pools`) is never trained on: the simulator's
evaluation seed and the suite's template-sender tests send it. Of the rest, a stable 15%
of templates and spam files go to calibration, the others to training. The held-out
figures for present-day mail come from whole source projects left out
(`training.modern_eval`), not from these splits.
"""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import pandas as pd
from joblib import Parallel, delayed
from rich.progress import track

from features.content import content_features
from features.spec import FEATURE_SPEC_VERSION
from training.corpora import body_fingerprint
from training.dataset import _fingerprinter, code_fingerprint
from training.modern_corpus import ensure_modern_extracted, load_manifest, modern_parsed, template_pools

CALIBRATION_SHARE = 0.15
SOURCE = "modern"


def modern_split(template: str) -> str:
    return "calibration" if zlib.crc32(template.encode()) % 1000 < CALIBRATION_SHARE * 1000 else "train"


def _extract(root: Path, row: dict[str, object], order: int) -> dict[str, object]:
    parsed = modern_parsed(root, str(row["file"]), int(row["label"]))  # type: ignore[arg-type]
    content = content_features(parsed)
    fingerprint = _fingerprinter().fingerprint(content.document)
    visible = content.document.split("\n", 1)[1] if "\n" in content.document else ""
    return {
        "source": SOURCE,
        "name": row["file"],
        "order": order,
        "label": row["label"],
        "split": modern_split(str(row["template"])),
        "fingerprint": body_fingerprint(parsed.subject, visible),
        "document": content.document,
        "subject": parsed.subject,
        "minhash": fingerprint.to_bytes() if fingerprint is not None else None,
        "source_repo": row["source_repo"],
        "template": row["template"],
        "category": row["category"],
        "pool": row["pool"],
        **content.features,
    }


def _modern_code_fingerprint() -> str:
    here = Path(__file__).resolve().parent
    digest = hashlib.sha1(code_fingerprint().encode())
    for name in ("modern_dataset.py", "modern_corpus.py", "mailers.py"):
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:12]


def build_modern_dataset(data_dir: Path, cache_dir: Path, jobs: int = -1, use_cache: bool = True) -> pd.DataFrame:
    cache_file = cache_dir / f"modern-features-spec{FEATURE_SPEC_VERSION}-{_modern_code_fingerprint()}.parquet"
    if use_cache and cache_file.is_file():
        return pd.read_parquet(cache_file)
    root = ensure_modern_extracted(data_dir, cache_dir)
    table = load_manifest(root)
    table["pool"] = table["template"].map(template_pools(table))
    manifest = table.to_dict("records")
    rows = Parallel(n_jobs=jobs, batch_size=64, return_as="generator")(
        delayed(_extract)(root, row, i) for i, row in enumerate(manifest)
    )
    frame = pd.DataFrame(list(track(rows, total=len(manifest), description="Extracting modern-train")))
    # Spam: exact copies of one body are one message (the honeypots caught some runs many times).
    spam = frame["label"] == 1
    frame = pd.concat([frame[~spam], frame[spam].drop_duplicates("fingerprint", keep="first")])
    frame = frame.assign(sig_similarity=0.0, sig_age_days_log=-1.0, sig_hits_log=0.0).reset_index(drop=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(cache_file, index=False)
    return frame


def shipped_training_rows(corpus: pd.DataFrame, modern: pd.DataFrame) -> pd.DataFrame:
    """The corpora plus modern-train less its `eval` pool: what the shipped model learns from."""
    return pd.concat([corpus, modern[modern["pool"] != "eval"]], ignore_index=True)
