"""The live database of known-spam signatures: fingerprints with their source, age and hits.

Like Rspamd's fuzzy storage: adding content that is already there (a near-identical
copy) refreshes the existing entry and counts a report instead of storing another;
removing deletes every entry the content matches. Entries expire after `ttl_seconds`
and the oldest are evicted past `capacity`. What is acknowledged is written to the
SQLite `signatures` table first and loaded back at start.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.fingerprint import Fingerprint
from service.fingerprints.index import LshIndex, Probe

SOURCES = ("admin", "complaint", "verdict", "lock", "corpus", "bench", "malware")  # malware: clamd found it (scoring)

# Two entries this alike are the same content: an add refreshes instead of storing another.
SAME_CONTENT = 0.9


@dataclass(frozen=True, slots=True)
class SignatureMatch:
    signature_id: int
    similarity: float
    age_seconds: float
    hits: int
    source: str


@dataclass(frozen=True, slots=True)
class StoredSignature:
    signature_id: int
    fingerprint: Fingerprint
    source: str
    added_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class SignatureAdd:
    """Content to add as known spam, and who says so."""

    fingerprint: Fingerprint
    source: str
    actor: str
    at: float
    message_id: str | None = None
    note: str | None = None


class SignatureDb:
    def __init__(self, capacity: int, ttl_seconds: float, min_similarity: float) -> None:
        self.index = LshIndex(capacity)
        self.ttl_seconds = ttl_seconds
        self.min_similarity = min_similarity
        self.ids = np.zeros(capacity, dtype=np.int64)
        self.added_at = np.zeros(capacity, dtype=np.float64)
        self.expires_at = np.zeros(capacity, dtype=np.float64)
        self.hits = np.zeros(capacity, dtype=np.int64)
        self.source_codes = np.zeros(capacity, dtype=np.uint8)
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.index)

    @property
    def nbytes(self) -> int:
        meta = self.ids.nbytes + self.added_at.nbytes + self.expires_at.nbytes + self.hits.nbytes
        return self.index.nbytes + meta + self.source_codes.nbytes

    def match(self, fingerprint: Fingerprint | Probe, now: float) -> SignatureMatch | None:
        """The best live match at or above the similarity threshold; counts a hit on it."""
        found = self.index.nearest(fingerprint, self.min_similarity)
        if found is None:
            return None
        slot = found.slot
        if self.expires_at[slot] <= now:
            self._drop(slot)
            return self.match(fingerprint, now)
        self.hits[slot] += 1
        return SignatureMatch(
            signature_id=int(self.ids[slot]),
            similarity=found.similarity,
            age_seconds=max(0.0, now - float(self.added_at[slot])),
            hits=int(self.hits[slot]) - 1,  # matches before this one
            source=SOURCES[self.source_codes[slot]],
        )

    def same_content(self, fingerprint: Fingerprint) -> int | None:
        """The id of an entry holding this content already, if any."""
        found = self.index.nearest(fingerprint, SAME_CONTENT)
        return None if found is None else int(self.ids[found.slot])

    def load(self, signature: StoredSignature) -> None:
        """Put a stored signature in the index (at start, or after it was written)."""
        slot, evicted = self.index.add(signature.fingerprint)
        self._place(slot, evicted, signature)

    def _place(self, slot: int, evicted: int | None, signature: StoredSignature) -> None:
        if evicted is not None:
            self.evicted += 1
        self.ids[slot] = signature.signature_id
        self.added_at[slot] = signature.added_at
        self.expires_at[slot] = signature.expires_at
        self.hits[slot] = 0
        self.source_codes[slot] = SOURCES.index(signature.source)

    def load_many(self, signatures: list[StoredSignature]) -> None:
        """Load many at once (at start): the same result as `load` one by one, far faster."""
        if not signatures:
            return
        values = np.stack([s.fingerprint.hashvalues for s in signatures])
        for signature, (slot, evicted) in zip(signatures, self.index.add_many(values), strict=True):
            self._place(slot, evicted, signature)

    def _slot_of(self, signature_id: int) -> int | None:
        """The live slot holding this signature (a scan: only admin and feedback changes ask)."""
        found = np.flatnonzero((self.ids == signature_id) & self.index.live)
        return int(found[0]) if len(found) else None

    def is_live(self, signature_id: int) -> bool:
        return self._slot_of(signature_id) is not None

    def values_of(self, signature_id: int) -> np.ndarray | None:
        """The signature's index values (64 16-bit minimum hashes), or None if it is not live."""
        slot = self._slot_of(signature_id)
        return None if slot is None else self.index.values[slot]

    def refresh(self, signature_id: int, expires_at: float) -> None:
        if (slot := self._slot_of(signature_id)) is not None:
            self.expires_at[slot] = max(self.expires_at[slot], expires_at)

    def matching_ids(self, fingerprint: Fingerprint) -> list[int]:
        """Every live entry this content matches (what a removal deletes)."""
        candidates = self.index.candidates(fingerprint)
        if len(candidates) == 0:
            return []
        similar = self.index.similarities(candidates, fingerprint) >= self.min_similarity
        return [int(self.ids[slot]) for slot in candidates[similar]]

    def remove(self, signature_ids: list[int]) -> None:
        for signature_id in signature_ids:
            if (slot := self._slot_of(signature_id)) is not None:
                self._drop(slot)

    def expire(self, now: float) -> int:
        stale = np.flatnonzero(self.index.live & (self.expires_at <= now))
        for slot in stale.tolist():
            self._drop(slot)
        return len(stale)

    def _drop(self, slot: int) -> None:
        self.index.remove(slot)
