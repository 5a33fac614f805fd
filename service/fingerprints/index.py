"""A bounded LSH index of fingerprints with sub-millisecond nearest-match lookups.

Entries live in fixed-size numpy arrays, so memory is set by the capacity, not by
traffic: per entry 64 16-bit minimum hashes (b-bit MinHash: the low 16 bits estimate
Jaccard similarity with a 1/65,536 bias) plus metadata, and in the lookup table 16
band keys of 4 bytes with a 4-byte slot each. About 280 bytes an entry in all; `make
bench` measures it at a million.

The lookup table is a sorted array searched with `np.searchsorted`, plus a small dict
of recent inserts merged in batches. Slots are reused oldest first when the index is
full, and a band key left behind by an evicted entry is harmless: a candidate counts
only if its own band keys share one with the probe, and then by its similarity. So
what a lookup finds depends on the entries held, not on the slots they took: replicas
that loaded the same entries in another order find the same ones (ties between equally
similar entries go to the lowest id the caller ranks them by). When stale keys
outnumber live ones the table is rebuilt from the live entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.fingerprint import BANDS, NUM_PERM, ROWS, Fingerprint

assert ROWS * 16 == 64, "a band of 16-bit values must fill one 64-bit word"

_KEY_BITS = 28  # per band; the band number sits above them
_MERGE_EVERY = 4_096  # pending inserts before they are merged into the sorted table


@dataclass(frozen=True, slots=True)
class Match:
    slot: int
    similarity: float


def _compact(hashvalues: np.ndarray) -> np.ndarray:
    return (np.asarray(hashvalues, dtype=np.uint32) & np.uint32(0xFFFF)).astype(np.uint16)


_BAND_TAGS = np.arange(BANDS, dtype=np.uint64) << np.uint64(_KEY_BITS)
_MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: the top bits of x * 2^64/phi are well mixed


def _band_keys(values16: np.ndarray) -> np.ndarray:
    """(n, NUM_PERM) uint16 -> (n, BANDS) uint32 bucket keys, the band number in the top bits.

    A band is `ROWS` = 4 16-bit values, which is exactly one 64-bit word.
    """
    words = np.ascontiguousarray(values16).view(np.uint64).reshape(len(values16), BANDS)
    with np.errstate(over="ignore"):
        mixed = (words * _MIX) >> np.uint64(64 - _KEY_BITS)
    return (mixed | _BAND_TAGS).astype(np.uint32)


@dataclass(frozen=True, slots=True)
class Probe:
    """A fingerprint as the index reads it, computed once and used for every index it meets."""

    values: np.ndarray  # (NUM_PERM,) uint16
    keys: np.ndarray  # (BANDS,) uint32

    @classmethod
    def of(cls, fingerprint: Fingerprint | Probe) -> Probe:
        if isinstance(fingerprint, Probe):
            return fingerprint
        values = _compact(fingerprint.hashvalues)
        return cls(values, _band_keys(values[np.newaxis, :])[0])


class LshIndex:
    """Fingerprints in slots `0..capacity-1`; callers keep their own per-slot metadata."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.values = np.zeros((capacity, NUM_PERM), dtype=np.uint16)
        self.live = np.zeros(capacity, dtype=bool)
        self._next = 0  # the slot an insert into a full index takes: the oldest
        self._free: list[int] = []
        self._sorted_keys = np.empty(0, dtype=np.uint32)
        self._sorted_slots = np.empty(0, dtype=np.int32)
        self._pending: dict[int, list[int]] = {}
        self._pending_count = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        return (
            int(self.values.nbytes + self.live.nbytes + self._sorted_keys.nbytes + self._sorted_slots.nbytes)
            + 100 * self._pending_count * BANDS
        )

    def add(self, fingerprint: Fingerprint | Probe) -> tuple[int, int | None]:
        """Store a fingerprint; returns (its slot, the slot's evicted previous entry or None)."""
        probe = Probe.of(fingerprint)
        slot, evicted = self._allocate()
        self.values[slot] = probe.values
        self.live[slot] = True
        self.size += 1
        for key in probe.keys.tolist():
            self._pending.setdefault(key, []).append(slot)
        self._pending_count += 1
        if self._pending_count >= _MERGE_EVERY:
            self._merge()
        return slot, evicted

    def add_many(self, hashvalues: np.ndarray) -> list[tuple[int, int | None]]:
        """Store many (n, NUM_PERM) fingerprints at once, as at start: one table rebuild, not n inserts."""
        placed = []
        for _ in range(len(hashvalues)):
            slot, evicted = self._allocate()
            self.live[slot] = True
            self.size += 1
            placed.append((slot, evicted))
        slots = np.fromiter((slot for slot, _ in placed), dtype=np.int64, count=len(placed))
        # A slot reused within this batch keeps the later fingerprint (numpy assigns in order).
        self.values[slots] = _compact(hashvalues)
        self.rebuild()
        return placed

    def remove(self, slot: int) -> None:
        if self.live[slot]:
            self.live[slot] = False
            self.size -= 1
            self._free.append(slot)

    def nearest(
        self, fingerprint: Fingerprint | Probe, min_similarity: float, rank: np.ndarray | None = None
    ) -> Match | None:
        """The most similar live entry at or above `min_similarity`, if any.

        Of equally similar entries, the one of lowest `rank[slot]` (the callers' ids, so
        the oldest: the same choice whichever slots a process gave them), else of lowest slot.
        """
        probe = Probe.of(fingerprint)
        candidates = self.candidates(probe)
        if len(candidates) == 0:
            return None
        similarity = self.similarities(candidates, probe)
        best = int(np.argmax(similarity))
        if similarity[best] < min_similarity:
            return None
        if rank is not None:
            tied = candidates[similarity == similarity[best]]
            if len(tied) > 1:
                return Match(int(tied[np.argmin(rank[tied])]), float(similarity[best]))
        return Match(int(candidates[best]), float(similarity[best]))

    def similarities(self, slots: np.ndarray, fingerprint: Fingerprint | Probe) -> np.ndarray:
        return np.count_nonzero(self.values[slots] == Probe.of(fingerprint).values, axis=1) / NUM_PERM

    def candidates(self, fingerprint: Fingerprint | Probe) -> np.ndarray:
        keys = Probe.of(fingerprint).keys
        found: list[np.ndarray] = []
        if len(self._sorted_keys):
            lo = np.searchsorted(self._sorted_keys, keys, side="left")
            hi = np.searchsorted(self._sorted_keys, keys, side="right")
            found.extend(self._sorted_slots[a:b] for a, b in zip(lo.tolist(), hi.tolist(), strict=True) if b > a)
        if self._pending:
            for key in keys.tolist():
                if (slots := self._pending.get(key)) is not None:
                    found.append(np.asarray(slots, dtype=np.int32))
        if not found:
            return np.empty(0, dtype=np.int32)
        slots = np.unique(np.concatenate(found))
        slots = slots[self.live[slots]]
        # A key left behind by a slot's earlier entry finds its new one only if it shares a key too: what
        # is found depends on the entries held, not on which slots they took (so replicas agree).
        return slots[(_band_keys(self.values[slots]) == keys[np.newaxis, :]).any(axis=1)]

    def _allocate(self) -> tuple[int, int | None]:
        while self._free:
            slot = self._free.pop()
            if not self.live[slot]:
                return slot, None
        if self.size < self.capacity and not self.live[self._next]:
            slot = self._next
            self._next = (self._next + 1) % self.capacity
            return slot, None
        # Full: the ring pointer walks slots in insertion order, so it holds the oldest.
        while not self.live[self._next]:
            self._next = (self._next + 1) % self.capacity
        slot = self._next
        self._next = (self._next + 1) % self.capacity
        self.live[slot] = False
        self.size -= 1
        return slot, slot

    def _merge(self) -> None:
        if not self._pending:
            return
        keys = np.fromiter((k for k, slots in self._pending.items() for _ in slots), dtype=np.uint32)
        slots = np.fromiter((s for v in self._pending.values() for s in v), dtype=np.int32)
        self._pending.clear()
        self._pending_count = 0
        if len(self._sorted_keys) + len(keys) > 2 * BANDS * max(self.size, 1) + BANDS * _MERGE_EVERY:
            self.rebuild()
            return
        order = np.argsort(keys, kind="stable")
        keys, slots = keys[order], slots[order]
        at = np.searchsorted(self._sorted_keys, keys)
        self._sorted_keys = np.insert(self._sorted_keys, at, keys)
        self._sorted_slots = np.insert(self._sorted_slots, at, slots)

    def rebuild(self) -> None:
        """Recompute the lookup table from the live entries only (drops stale keys)."""
        self._pending.clear()
        self._pending_count = 0
        live = np.flatnonzero(self.live).astype(np.uint64)
        # One in-place sort of (key << 32 | slot) instead of an argsort and two gathers: half the peak memory.
        packed = _band_keys(self.values[live.astype(np.int64)]).astype(np.uint64) << np.uint64(32)
        packed |= live[:, np.newaxis]
        packed = packed.ravel()
        packed.sort()
        self._sorted_keys = (packed >> np.uint64(32)).astype(np.uint32)
        self._sorted_slots = (packed & np.uint64(0xFFFFFFFF)).astype(np.int32)
