"""Signature features for corpus messages, as the service would have seen them at the time.

The service matches each message against the spam signatures known *before* it. To
give the model the same view, each corpus is walked in delivery order (TREC) or a
fixed shuffled order (SpamAssassin, whose files are grouped by class) through the
serving `SignatureDb`: a message is matched first, and a spam message enters the
database only `label_delay` messages later, as a complaint or a verdict would. The
pseudo-clock advances `seconds_per_message` per message (TREC's 30,000 messages
span about two months), which sets signature ages and expiry.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.fingerprint import Fingerprint, fingerprint_features
from service.fingerprints.signatures import SignatureDb, StoredSignature
from training.evaluate import SIGNATURE_COLUMNS


@dataclass(frozen=True, slots=True)
class SignatureWalk:
    label_delay: int = 100
    seconds_per_message: float = 170.0
    ttl_seconds: float = 14 * 86_400.0
    min_similarity: float = 0.6
    capacity: int = 200_000


def _walk_order(frame: pd.DataFrame) -> np.ndarray:
    """Row positions in the order each corpus was delivered (or a fixed shuffle for SpamAssassin)."""
    shuffled = frame["name"].map(lambda n: hashlib.sha1(n.encode()).hexdigest())
    key = np.where(frame["source"].eq("spamassassin"), shuffled, frame["order"].map("{:012d}".format))
    return np.lexsort((key, frame["source"].to_numpy()))


def signature_features(frame: pd.DataFrame, walk: SignatureWalk | None = None) -> pd.DataFrame:
    """SIGNATURE_COLUMNS for every row of `frame` (which needs `minhash`, `label`, `source`)."""
    walk = walk or SignatureWalk()
    out = np.zeros((len(frame), len(SIGNATURE_COLUMNS)))
    neutral = fingerprint_features(0.0, None, 0, 0)
    out[:] = [neutral[c] for c in SIGNATURE_COLUMNS]
    minhashes = frame["minhash"].to_numpy()
    labels = frame["label"].to_numpy()
    sources = frame["source"].to_numpy()
    order = _walk_order(frame)
    db: SignatureDb | None = None
    source = None
    waiting: list[tuple[int, Fingerprint]] = []
    step = next_id = 0
    for position in order.tolist():
        if sources[position] != source:  # each corpus is its own world
            source, step, waiting = sources[position], 0, []
            db = SignatureDb(walk.capacity, walk.ttl_seconds, walk.min_similarity)
        assert db is not None
        now = step * walk.seconds_per_message
        while waiting and waiting[0][0] <= step:
            _, known = waiting.pop(0)
            if db.same_content(known) is None:
                next_id += 1
                db.load(StoredSignature(next_id, known, "corpus", now, now + walk.ttl_seconds))
        raw = minhashes[position]
        if raw is not None and len(raw):
            fingerprint = Fingerprint.from_bytes(bytes(raw))
            match = db.match(fingerprint, now)
            if match is not None:
                values = fingerprint_features(match.similarity, match.age_seconds, match.hits, 0)
                out[position] = [values[c] for c in SIGNATURE_COLUMNS]
            if labels[position] == 1:
                waiting.append((step + walk.label_delay, fingerprint))
        step += 1
    return pd.DataFrame(out, columns=list(SIGNATURE_COLUMNS), index=frame.index)
