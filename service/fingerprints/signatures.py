"""The live database of known-spam signatures: fingerprints with their source, age and hits.

Like Rspamd's fuzzy storage: adding content that is already there (a near-identical
copy) refreshes the existing entry and counts a report instead of storing another;
removing deletes every entry the content matches. Entries expire after `ttl_seconds`
and the oldest are evicted past `capacity`. What is acknowledged is written to the
database's `signatures` table first and loaded back at start; what other replicas
wrote since is applied by `apply_changes` (`service.fingerprints.sync`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.fingerprint import Fingerprint
from service.fingerprints.index import LshIndex, Probe

SOURCES = ("admin", "complaint", "verdict", "lock", "corpus", "bench", "malware")  # malware: clamd found it (scoring)

# Two entries this alike are the same content: an add refreshes instead of storing another.
SAME_CONTENT = 0.9
# More new signatures than this at once are loaded with one rebuild of the lookup table.
_BULK_LOAD = 1_000


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
        found = self.index.nearest(fingerprint, self.min_similarity, self.ids)
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

    def peek(self, fingerprint: Fingerprint | Probe, now: float) -> int | None:
        """The signature `match` would find now, without counting a hit (None: none, or it has expired)."""
        found = self.index.nearest(fingerprint, self.min_similarity, self.ids)
        if found is None or self.expires_at[found.slot] <= now:
            return None
        return int(self.ids[found.slot])

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
        """The live slot holding this signature (a scan: only admin, feedback and other replicas' changes ask)."""
        found = np.flatnonzero((self.ids == signature_id) & self.index.live)
        return int(found[0]) if len(found) else None

    def _live_slots(self, signature_ids: list[int]) -> dict[int, int]:
        """The live slots of those of these signatures that are live: one pass, for many at once."""
        live = np.flatnonzero(self.index.live)
        held = np.isin(self.ids[live], np.asarray(signature_ids, dtype=np.int64))
        return {int(self.ids[slot]): int(slot) for slot in live[held]}

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

    def apply_changes(self, changed: list[tuple[StoredSignature, bool]]) -> int:
        """Bring these signatures to their stored state (another replica added, refreshed or removed them).

        Idempotent: a change applied twice, or one this process made itself, changes
        nothing more. `changed` holds (signature as stored now, whether it was removed);
        the number of signatures loaded comes back.
        """
        latest = {signature.signature_id: (signature, removed) for signature, removed in changed}
        slots = self._live_slots(list(latest))
        new = []
        for signature_id, (signature, removed) in latest.items():
            slot = slots.get(signature_id)
            if slot is None:
                if not removed:
                    new.append(signature)
            elif removed:
                self._drop(slot)
            else:
                self.expires_at[slot] = max(self.expires_at[slot], signature.expires_at)
        if len(new) > _BULK_LOAD:
            self.load_many(new)
        else:
            for signature in new:
                self.load(signature)
        return len(new)

    def _drop(self, slot: int) -> None:
        self.index.remove(slot)
