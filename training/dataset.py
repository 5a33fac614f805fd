"""Turn the corpora into a training table through the serving feature code.

Each message goes through `features.message.parse_raw` and
`features.content.content_features`, the functions the service calls, so the model
trains on exactly what it will see. Extraction runs in parallel and is cached as
Parquet under the cache folder, keyed by the feature-spec version. Signature
features come from a walk through the serving signature database in delivery
order (`training.signature_features`).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import pandas as pd
from joblib import Parallel, delayed
from rich.progress import track

from features.content import content_features
from features.fingerprint import Fingerprinter
from features.message import parse_raw
from features.spec import FEATURE_SPEC_VERSION
from training.corpora import CorpusMessage, body_fingerprint, iter_corpus, undo_list_server
from training.signature_features import signature_features

FEATURE_SOURCES = Path(__file__).resolve().parent.parent / "features"
SPLIT_ORDER = {"train": 0, "calibration": 1, "test": 2}


@lru_cache(maxsize=1)
def _fingerprinter() -> Fingerprinter:
    return Fingerprinter()


def extract_one(message: CorpusMessage, split: str) -> dict[str, object]:
    parsed = undo_list_server(parse_raw(message.path.read_bytes()))
    content = content_features(parsed)
    fingerprint = _fingerprinter().fingerprint(content.document)
    visible = content.document.split("\n", 1)[1] if "\n" in content.document else ""
    return {
        "source": message.source,
        "name": message.name,
        "order": message.order,
        "label": message.label,
        "split": split,
        "fingerprint": body_fingerprint(parsed.subject, visible),
        "document": content.document,
        "subject": parsed.subject,
        "minhash": fingerprint.to_bytes() if fingerprint is not None else None,
        **content.features,
    }


def deduplicate(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep the first copy of each body, in split order then delivery order.

    A body first seen in training and again in test is dropped from test: the test
    set must be mail the model has not seen.
    """
    ranked = frame.assign(_split_rank=frame["split"].map(SPLIT_ORDER), _source_rank=frame["source"].ne("spamassassin"))
    ranked = ranked.sort_values(["_split_rank", "_source_rank", "order"], kind="stable")
    kept = ranked.drop_duplicates("fingerprint", keep="first")
    return kept.drop(columns=["_split_rank", "_source_rank"]).reset_index(drop=True)


def code_fingerprint() -> str:
    """A hash of the code that turns a message into features: a change means re-extracting."""
    digest = hashlib.sha1()
    for path in sorted([*FEATURE_SOURCES.glob("*.py"), Path(__file__), Path(__file__).with_name("corpora.py")]):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def build_corpus_dataset(data_dir: Path, cache_dir: Path, jobs: int = -1, use_cache: bool = True) -> pd.DataFrame:
    cache_file = cache_dir / f"corpus-features-spec{FEATURE_SPEC_VERSION}-{code_fingerprint()}.parquet"
    if use_cache and cache_file.is_file():
        return pd.read_parquet(cache_file)
    items = list(iter_corpus(data_dir, cache_dir))
    rows = Parallel(n_jobs=jobs, batch_size=256, return_as="generator")(
        delayed(extract_one)(message, split) for message, split in items
    )
    frame = pd.DataFrame(list(track(rows, total=len(items), description="Extracting features")))
    frame = deduplicate(frame)
    frame = frame.join(signature_features(frame))
    cache_dir.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(cache_file, index=False)
    return frame
