"""Fuzzy content fingerprints: MinHash over word shingles of the normalised subject and body.

Two copies of one spam run differ in the recipient's name, a random token meant to
break hashes, tracking links and order numbers. Normalising folds those away (digits,
link paths, addresses, very long tokens) and shingling keeps the rest comparable, so
the Jaccard similarity of two copies stays high while unrelated mail shares little.
`training.fingerprint_eval` measured this choice against TLSH on the corpora; the
figures are in `docs/fingerprints.md`.

A fingerprint is `NUM_PERM` 32-bit minimum hashes; the LSH index
(`service.fingerprints.index`) cuts them into `BANDS` bands of `ROWS` values.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass

import numpy as np
from datasketch import MinHash

NUM_PERM = 64
BANDS = 16
ROWS = NUM_PERM // BANDS
SHINGLE_WORDS = 2
MAX_TOKENS = 1_500  # the first words decide; the cap bounds the cost of a huge body
MIN_TOKENS = 8  # below this a message has too little text to compare fuzzily
PERMUTATION_SEED = 20261123
SCHEME = "affine32"  # uint32 values; a bijection, so no collision bias on large sets

# Punctuation becomes space and every digit '0': order numbers and prices stop mattering.
_FOLD = str.maketrans({**{c: " " for c in string.punctuation + "«»“”‘’…–—•·©®™|"}, **{d: "0" for d in string.digits}})
_LONG_TOKEN = 24  # longer 'words' are encodings, hashes or random padding
# Fixed odd weights for token hashing (one per code point of a token), and multipliers
# that make a shingle's hash depend on word order (odd 32-bit constants).
_TOKEN_WEIGHTS = (
    np.random.default_rng(PERMUTATION_SEED).integers(0, 2**63, _LONG_TOKEN, dtype=np.uint64) << np.uint64(1)
) | np.uint64(1)
_ORDER = (np.uint32(0x9E3779B1), np.uint32(0x85EBCA77), np.uint32(0xC2B2AE3D), np.uint32(0x27D4EB2F))


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """A message's MinHash signature, as unsigned 32-bit values."""

    hashvalues: np.ndarray  # shape (NUM_PERM,), uint32

    def similarity(self, other: Fingerprint) -> float:
        """Estimated Jaccard similarity of the two shingle sets."""
        return float(np.count_nonzero(self.hashvalues == other.hashvalues)) / NUM_PERM

    def to_bytes(self) -> bytes:
        return self.hashvalues.astype("<u4").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Fingerprint:
        if len(data) != NUM_PERM * 4:
            raise ValueError(f"a fingerprint is {NUM_PERM * 4} bytes, got {len(data)}")
        return cls(np.frombuffer(data, dtype="<u4").astype(np.uint32))


def normalise(document: str) -> list[str]:
    """Tokens of a message that survive the edits spammers make between copies.

    A link becomes `link` and the last two labels of its host (tracking paths and
    subdomains vary, the site does not); an address becomes `address` and its domain.
    """
    text = document[: MAX_TOKENS * 12].lower()
    words = text.split()
    if "@" in text or "://" in text or "www." in text:
        words = [_special(w) if ("@" in w or "://" in w or "www." in w) else w for w in words]
    folded = " ".join(words).translate(_FOLD).split()
    return [w for w in folded if len(w) <= _LONG_TOKEN][:MAX_TOKENS]


def _special(word: str) -> str:
    if "://" in word or word.startswith("www."):
        host = word.split("://", 1)[-1].split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1].split(":", 1)[0]
        return "link " + " ".join(host.strip(".").split(".")[-2:])
    return "address " + word.rsplit("@", 1)[-1]


def token_hashes(tokens: list[str]) -> np.ndarray:
    """A 32-bit hash per token, vectorised: its UCS-4 code points dotted with fixed odd weights, then mixed."""
    codes = np.array(tokens, dtype=f"<U{_LONG_TOKEN}").view("<u4").reshape(len(tokens), _LONG_TOKEN)
    with np.errstate(over="ignore"):
        mixed = codes.astype(np.uint64) @ _TOKEN_WEIGHTS
        mixed ^= mixed >> np.uint64(31)
        mixed *= np.uint64(0x94D049BB133111EB)
        mixed ^= mixed >> np.uint64(29)
    return (mixed >> np.uint64(32)).astype(np.uint32)


def shingle_hashes(tokens: list[str], width: int = SHINGLE_WORDS) -> np.ndarray:
    """Distinct 32-bit hashes of the `width`-word shingles (the whole text when it is shorter)."""
    words = token_hashes(tokens)
    width = min(width, len(words))
    n = len(words) - width + 1
    with np.errstate(over="ignore"):
        combined = words[:n] * _ORDER[0]
        for k in range(1, width):
            combined ^= words[k : k + n] * _ORDER[k]
    return np.unique(combined)


def fmix32(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's finalizer: the pre-mix datasketch's affine32 scheme applies to every input hash."""
    values = values ^ (values >> np.uint32(16))
    values = values * np.uint32(0x85EBCA6B)
    values = values ^ (values >> np.uint32(13))
    values = values * np.uint32(0xC2B2AE35)
    return values ^ (values >> np.uint32(16))


class Fingerprinter:
    """Computes fingerprints with one fixed set of permutations: built once, shared.

    The permutations are datasketch's (`MinHash`, scheme affine32); applying them is
    done here in one vectorised step instead of through a `MinHash` object per
    message, which costs more than the arithmetic. `tests/fingerprints` checks that
    the two give identical signatures.
    """

    def __init__(self, num_perm: int = NUM_PERM, seed: int = PERMUTATION_SEED, width: int = SHINGLE_WORDS) -> None:
        self.num_perm = num_perm
        self.width = width
        self.seed = seed
        template = MinHash(num_perm=num_perm, seed=seed, hashfunc=_already_hashed, scheme=SCHEME)
        self.permutations = template.permutations
        self._a = self.permutations[0].astype(np.uint32)[np.newaxis, :]
        self._b = self.permutations[1].astype(np.uint32)[np.newaxis, :]

    def fingerprint(self, document: str) -> Fingerprint | None:
        """The document's fingerprint, or None when it has too little text to compare."""
        tokens = normalise(document)
        if len(tokens) < MIN_TOKENS:
            return None
        return Fingerprint(self.minhash(shingle_hashes(tokens, self.width)))

    def minhash(self, hashes: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            permuted = fmix32(hashes.astype(np.uint32))[:, np.newaxis] * self._a + self._b
        return permuted.min(axis=0)


def _already_hashed(value: int) -> int:
    return value


def fingerprint_features(
    similarity: float, age_seconds: float | None, hits: int, other_accounts: int
) -> dict[str, float]:
    """The model's view of the best signature match and of the content's other senders.

    `age_seconds` None means no signature matched (the spec's neutral values).
    """
    out = {"campaign_accounts_log": math.log1p(max(other_accounts, 0))}
    if age_seconds is None:
        out.update(sig_similarity=0.0, sig_age_days_log=-1.0, sig_hits_log=0.0)
    else:
        out.update(
            sig_similarity=similarity,
            sig_age_days_log=math.log1p(max(age_seconds, 0.0) / 86_400),
            sig_hits_log=math.log1p(max(hits, 0)),
        )
    return out


NO_FINGERPRINT_FEATURES = fingerprint_features(0.0, None, 0, 0)
