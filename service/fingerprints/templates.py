"""An account's own templates: a small memory of the contents it sent, to tell a repeat from something new.

A shop that sends its order confirmation to forty customers sends one content forty
times; the account decision (`service.decision`) counts that as one piece of evidence,
not forty, and treats the templates an account has sent for a day as its normal. This
module keeps what that needs, per account, inside `AccountState.templates`, so it
costs no extra round trip on the scoring path.

A template is remembered as a 31-byte record: the low 8 bits of the first
`TEMPLATE_VALUES` (24) of the message fingerprint's 64 MinHash values (b-bit MinHash:
two different values agree by chance with probability 1/256), when it was first seen
(unix seconds), the highest evidence one of its copies carried (millinats, rounded up)
and whether an admin vouched for it (known-good). At most `MAX_TEMPLATES` (16) are
kept, least recently seen evicted first (known-good ones last); all of them encode to
at most 664 base64 characters.

A message is a copy of a template when at least `MIN_AGREEING_VALUES` (8) of the 24
values agree (estimated Jaccard similarity >= 1/3). Measured on `.cache/modern-train`
(`python -m training.template_eval`, about a minute):

- fills of one template by one sender in one language (names, order numbers, items,
  links differ) match in 87.8% of the corpus's 246 such pairs (86.2% with the full
  64-value fingerprints); the rest are mostly newsletter issues with other stories.
  Rendered with the corpus's builder, 40 copies of each of its 285 templates for one
  shop match in 95.9% of pairs, and the memory needs 1.31 templates for them on
  average (exactly one for 87.7%; at most 7, for notifications quoting user text);
- other templates of the same sender match in 1.8% of pairs, of other senders 0.4%;
- spam against ham: 6 of 8.5 million pairs (7e-7), so spam hardly ever passes for
  one of an account's templates. 7 agreeing values would match 91.1% of fills but 8
  spam pairs, 6 values 92.7% and 49.
"""

from __future__ import annotations

import base64
import math
import struct
from dataclasses import dataclass

import numpy as np

from features.fingerprint import Fingerprint

TEMPLATE_VALUES = 24
VALUE_MASK = 0xFF
MIN_AGREEING_VALUES = 8  # of TEMPLATE_VALUES: estimated similarity >= 1/3
MAX_TEMPLATES = 16
KNOWN_GOOD = 0x01
_MILLINATS = 1000.0
_PEAK_MAX = 0xFFFF

# One record: the compact values, then first seen, peak and flags (little-endian).
_TAIL = struct.Struct("<IHB")
_RECORD_BYTES = TEMPLATE_VALUES + _TAIL.size
_RECORD = np.dtype([("values", "u1", (TEMPLATE_VALUES,)), ("first_seen", "<u4"), ("peak", "<u2"), ("flags", "u1")])
assert _RECORD.itemsize == _RECORD_BYTES == 31
_FLAGS_AT = _RECORD_BYTES - 1


def compact_values(fingerprint: Fingerprint) -> np.ndarray:
    """The part of a fingerprint a template keeps: low 8 bits of its first 24 MinHash values."""
    return (np.asarray(fingerprint.hashvalues[:TEMPLATE_VALUES]) & VALUE_MASK).astype(np.uint8)


def compact_from_index(values16: np.ndarray) -> np.ndarray:
    """The same compact values from a signature index row (64 16-bit values, `service.fingerprints.index`)."""
    return (np.asarray(values16[:TEMPLATE_VALUES]) & VALUE_MASK).astype(np.uint8)


@dataclass(frozen=True, slots=True)
class TemplateMatch:
    """The remembered template a message is a copy of."""

    position: int
    similarity: float  # estimated from the compact values
    first_seen: float
    peak: float  # nats: the most evidence one of its copies carried so far (never below 0)
    known_good: bool


class TemplateMemory:
    """The decoded memory: fixed-size records back to back, least recently seen first.

    Kept as bytes, read through a numpy view: a message's match and update cost about
    20 µs together, on the scoring path.
    """

    __slots__ = ("raw",)

    def __init__(self, raw: bytes = b"") -> None:
        self.raw = raw

    @classmethod
    def decode(cls, text: str) -> TemplateMemory:
        return cls(base64.b64decode(text)) if text else cls()

    def encode(self) -> str:
        return base64.b64encode(self.raw).decode()

    def __len__(self) -> int:
        return len(self.raw) // _RECORD_BYTES

    @property
    def known_good(self) -> int:
        return sum(1 for flags in self.raw[_FLAGS_AT::_RECORD_BYTES] if flags & KNOWN_GOOD)

    def match(self, values: np.ndarray | None) -> TemplateMatch | None:
        """The remembered template these compact values are a copy of (the most similar), if any."""
        if values is None or not self.raw:
            return None
        records = np.frombuffer(self.raw, dtype=_RECORD)
        agreeing = np.count_nonzero(records["values"] == values[np.newaxis, :], axis=1)
        best = int(np.argmax(agreeing))
        if agreeing[best] < MIN_AGREEING_VALUES:
            return None
        first_seen, peak, flags = self._tail(best)
        return TemplateMatch(
            position=best,
            similarity=float(agreeing[best]) / TEMPLATE_VALUES,
            first_seen=float(first_seen),
            peak=peak / _MILLINATS,
            known_good=bool(flags & KNOWN_GOOD),
        )

    def observe(self, values: np.ndarray, match: TemplateMatch | None, at: float, evidence: float) -> None:
        """Count a copy of `match` (or remember new content) with the evidence the message carried."""
        peak = _peak(evidence)
        if match is None:
            first_seen = int(max(0.0, min(at, 2**32 - 1)))
            kept = self._without(self._victim()) if len(self) >= MAX_TEMPLATES else self.raw
            self.raw = kept + values.astype(np.uint8).tobytes() + _TAIL.pack(first_seen, peak, 0)
            return
        position = match.position
        first_seen, old_peak, flags = self._tail(position)
        values_part = self.raw[position * _RECORD_BYTES : position * _RECORD_BYTES + TEMPLATE_VALUES]
        # Most recently seen last: eviction takes from the front.
        self.raw = self._without(position) + values_part + _TAIL.pack(first_seen, max(old_peak, peak), flags)

    def trust_all(self) -> int:
        """Mark every remembered template known-good (an admin vouched for the account's mail); how many."""
        marked = bytearray(self.raw)
        for flags_at in range(_FLAGS_AT, len(marked), _RECORD_BYTES):
            marked[flags_at] |= KNOWN_GOOD
        self.raw = bytes(marked)
        return len(self)

    def _tail(self, position: int) -> tuple[int, int, int]:
        return _TAIL.unpack_from(self.raw, position * _RECORD_BYTES + TEMPLATE_VALUES)

    def _without(self, position: int) -> bytes:
        return self.raw[: position * _RECORD_BYTES] + self.raw[(position + 1) * _RECORD_BYTES :]

    def _victim(self) -> int:
        """The least recently seen template that is not known-good (or else the least recently seen).

        Known-good templates go last, so a vouched-for template is not forgotten while the
        account sends a run of one-off mail.
        """
        flags = self.raw[_FLAGS_AT::_RECORD_BYTES]
        return next((position for position, flag in enumerate(flags) if not flag & KNOWN_GOOD), 0)


def _peak(evidence: float) -> int:
    # Rounded up, so an identical copy never counts a rounding error again.
    return min(_PEAK_MAX, max(0, math.ceil(max(0.0, evidence) * _MILLINATS - 1e-9)))


def remembered_templates(text: str) -> dict[str, int]:
    """How many templates the account has remembered, and how many of them are known-good (account views)."""
    memory = TemplateMemory.decode(text)
    return {"remembered": len(memory), "known_good": memory.known_good}
