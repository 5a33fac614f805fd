"""Fingerprints: copies of one message stay alike, unrelated messages do not."""

from __future__ import annotations

import numpy as np
import pytest

from features.fingerprint import NUM_PERM, Fingerprint, Fingerprinter, fingerprint_features, normalise
from training.mutations import mutate_text

OFFER = (
    "Limited time offer on genuine designer watches. Our warehouse clearance sale ends this Friday and every "
    "watch is sold at 80% off the retail price. Free shipping worldwide, discreet packaging, and a full two "
    "year warranty on every order. Visit http://www.replica-deals.example/shop?ref=1234 to browse the "
    "collection before the stock runs out. Order number 558812 is reserved for you until midnight."
)
MINUTES = (
    "Minutes of the board meeting held on Tuesday. Present: the chair, the treasurer and four members. "
    "The treasurer presented the quarterly accounts, which were approved without changes. The board agreed "
    "to repaint the community hall in spring and asked for three quotes from local decorators. The next "
    "meeting will be held in the library, since the hall is being repaired."
)


@pytest.fixture(scope="module")
def fingerprinter() -> Fingerprinter:
    return Fingerprinter()


def test_copies_of_a_spam_run_stay_alike(fingerprinter: Fingerprinter) -> None:
    rng = np.random.default_rng(1)
    original = fingerprinter.fingerprint(OFFER)
    assert original is not None
    for _ in range(20):
        copy = fingerprinter.fingerprint(mutate_text(OFFER, rng))
        assert copy is not None
        assert original.similarity(copy) >= 0.7


def test_unrelated_messages_share_little(fingerprinter: Fingerprinter) -> None:
    offer, minutes = fingerprinter.fingerprint(OFFER), fingerprinter.fingerprint(MINUTES)
    assert offer is not None and minutes is not None
    assert offer.similarity(minutes) < 0.15
    assert offer.similarity(offer) == 1.0


def test_links_keep_their_site_and_numbers_fold() -> None:
    tokens = normalise("Go to https://x7f.track.shop.example/a/b?id=99 now, order 12345 or mail sales@shop.example")
    assert tokens[:5] == ["go", "to", "link", "shop", "example"]
    assert "00000" in tokens
    assert tokens[-3:] == ["address", "shop", "example"]


def test_too_little_text_has_no_fingerprint(fingerprinter: Fingerprinter) -> None:
    assert fingerprinter.fingerprint("Lunch at one?") is None
    assert fingerprinter.fingerprint("") is None


def test_a_fingerprint_survives_bytes_and_refuses_the_wrong_length(fingerprinter: Fingerprinter) -> None:
    original = fingerprinter.fingerprint(OFFER)
    assert original is not None
    again = Fingerprint.from_bytes(original.to_bytes())
    assert np.array_equal(again.hashvalues, original.hashvalues)
    assert len(original.to_bytes()) == NUM_PERM * 4
    with pytest.raises(ValueError, match="bytes"):
        Fingerprint.from_bytes(b"\x00" * 10)


def test_features_are_neutral_without_a_match() -> None:
    assert fingerprint_features(0.0, None, 0, 0) == {
        "campaign_accounts_log": 0.0,
        "sig_similarity": 0.0,
        "sig_age_days_log": -1.0,
        "sig_hits_log": 0.0,
    }
    matched = fingerprint_features(0.9, 86_400.0, 3, 4)
    assert matched["sig_similarity"] == 0.9
    assert matched["sig_age_days_log"] == pytest.approx(np.log(2))
    assert matched["sig_hits_log"] == pytest.approx(np.log(4))
    assert matched["campaign_accounts_log"] == pytest.approx(np.log(5))


def test_the_vectorised_minhash_is_datasketchs(fingerprinter: Fingerprinter) -> None:
    from datasketch import MinHash

    from features.fingerprint import SCHEME

    hashes = np.random.default_rng(2).integers(0, 2**32, 500, dtype=np.uint32)
    reference = MinHash(
        num_perm=NUM_PERM,
        seed=fingerprinter.seed,
        hashfunc=int,
        permutations=fingerprinter.permutations,
        scheme=SCHEME,
    )
    reference.update_batch(hashes.tolist())
    assert np.array_equal(fingerprinter.minhash(hashes), reference.hashvalues)
