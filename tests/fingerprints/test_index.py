"""The LSH index, the signature database and the campaign tracker, on their own."""

from __future__ import annotations

import numpy as np
import pytest

from features.fingerprint import NUM_PERM, Fingerprint
from service.fingerprints.campaigns import CampaignPolicy, CampaignTracker
from service.fingerprints.index import _MERGE_EVERY, LshIndex
from service.fingerprints.signatures import SignatureDb, StoredSignature
from service.stores import AccountKey


def random_fingerprint(rng: np.random.Generator) -> Fingerprint:
    return Fingerprint(rng.integers(0, 2**32, NUM_PERM, dtype=np.uint32))


def near_copy(fingerprint: Fingerprint, rng: np.random.Generator, changed: int) -> Fingerprint:
    """A fingerprint with `changed` of its minimum hashes different: similarity 1 - changed / NUM_PERM."""
    values = fingerprint.hashvalues.copy()
    positions = rng.choice(NUM_PERM, size=changed, replace=False)
    values[positions] = values[positions] ^ np.uint32(0xFFFF)  # the low 16 bits, the ones the index keeps
    return Fingerprint(values)


def test_the_nearest_copy_is_found_among_many_and_noise_is_not() -> None:
    rng = np.random.default_rng(1)
    index = LshIndex(capacity=20_000)
    originals = [random_fingerprint(rng) for _ in range(10_000)]
    slots = [index.add(f)[0] for f in originals]  # more than one merge into the sorted table
    for k in (0, 4_999, 9_999):
        match = index.nearest(near_copy(originals[k], rng, changed=16), min_similarity=0.6)
        assert match is not None and match.slot == slots[k]
        assert match.similarity == pytest.approx(48 / 64)
    assert index.nearest(random_fingerprint(rng), min_similarity=0.6) is None


def test_a_full_index_evicts_its_oldest_and_stays_the_same_size() -> None:
    rng = np.random.default_rng(2)
    index = LshIndex(capacity=1_000)
    first = random_fingerprint(rng)
    index.add(first)
    for _ in range(999):
        index.add(random_fingerprint(rng))
    size_when_full = index.nbytes
    last = random_fingerprint(rng)
    _, evicted = index.add(last)
    assert evicted is not None
    assert len(index) == 1_000
    assert index.nearest(first, 0.6) is None
    assert index.nearest(last, 0.6) is not None
    for _ in range(3 * _MERGE_EVERY):  # churn: stale keys are compacted away
        index.add(random_fingerprint(rng))
    assert len(index) == 1_000
    assert index.nbytes <= size_when_full + 100 * _MERGE_EVERY * 16 + 2 * 16 * 8 * (1_000 + _MERGE_EVERY)


def test_a_removed_entry_is_not_found() -> None:
    rng = np.random.default_rng(3)
    index = LshIndex(capacity=100)
    fingerprint = random_fingerprint(rng)
    slot, _ = index.add(fingerprint)
    index.remove(slot)
    assert index.nearest(fingerprint, 0.5) is None
    assert len(index) == 0


def test_signatures_count_hits_age_and_expire() -> None:
    rng = np.random.default_rng(4)
    db = SignatureDb(capacity=100, ttl_seconds=3_600, min_similarity=0.6)
    spam = random_fingerprint(rng)
    db.load(StoredSignature(7, spam, "complaint", added_at=1_000.0, expires_at=4_600.0))
    first = db.match(near_copy(spam, rng, 8), now=1_600.0)
    assert first is not None
    assert (first.signature_id, first.hits, first.age_seconds, first.source) == (7, 0, 600.0, "complaint")
    second = db.match(spam, now=1_700.0)
    assert second is not None and second.hits == 1
    assert db.same_content(near_copy(spam, rng, 2)) == 7
    assert db.match(spam, now=5_000.0) is None  # expired
    assert len(db) == 0


def test_removal_takes_every_signature_the_content_matches() -> None:
    rng = np.random.default_rng(5)
    db = SignatureDb(capacity=100, ttl_seconds=3_600, min_similarity=0.6)
    spam, other = random_fingerprint(rng), random_fingerprint(rng)
    db.load(StoredSignature(1, spam, "admin", 0.0, 3_600.0))
    db.load(StoredSignature(2, near_copy(spam, rng, 10), "admin", 0.0, 3_600.0))
    db.load(StoredSignature(3, other, "admin", 0.0, 3_600.0))
    assert sorted(db.matching_ids(spam)) == [1, 2]
    db.remove([1, 2])
    assert db.match(spam, now=10.0) is None
    assert db.match(other, now=10.0) is not None


def key(n: int) -> AccountKey:
    return AccountKey("relay-a", f"user{n}@example.net")


def test_one_content_from_many_new_accounts_is_a_campaign_once() -> None:
    rng = np.random.default_rng(6)
    tracker = CampaignTracker(CampaignPolicy(min_accounts=5, uptick_ratio=3.0))
    spam = random_fingerprint(rng)
    views = [tracker.observe(near_copy(spam, rng, 6), key(n), at=10_000.0 + 60 * n) for n in range(8)]
    assert [v.active for v in views] == [False] * 4 + [True] * 4
    assert [v.newly_detected for v in views] == [False] * 4 + [True] + [False] * 3
    assert len({v.cluster_id for v in views}) == 1
    assert views[-1].accounts_in_window == 8
    # The same accounts sending again an hour later are no longer new: the uptick is over.
    later = tracker.observe(spam, key(0), at=10_000.0 + 3 * 3_600)
    assert not later.active and later.new_accounts == 0


def test_a_template_many_accounts_have_long_sent_is_not_an_uptick() -> None:
    rng = np.random.default_rng(7)
    tracker = CampaignTracker(CampaignPolicy(min_accounts=5, uptick_ratio=3.0))
    template = random_fingerprint(rng)
    for n in range(30):  # 30 shops, every few hours, for a day
        for hour in range(0, 24, 4):
            tracker.observe(template, key(n), at=hour * 3_600.0 + n)
    views = [tracker.observe(template, key(100 + n), at=25 * 3_600.0 + n) for n in range(6)]
    assert not any(v.active for v in views)
    assert views[-1].established_accounts == 30


def test_a_cluster_remembers_a_bounded_number_of_accounts() -> None:
    rng = np.random.default_rng(8)
    tracker = CampaignTracker(CampaignPolicy(max_accounts_per_cluster=50))
    content = random_fingerprint(rng)
    for n in range(200):
        view = tracker.observe(content, key(n), at=float(n))
    cluster = tracker.cluster(view.cluster_id)
    assert cluster is not None and len(cluster.senders) == 50


def test_loading_many_at_once_finds_what_loading_one_by_one_finds() -> None:
    rng = np.random.default_rng(9)
    signatures = [StoredSignature(i, random_fingerprint(rng), "corpus", 0.0, 100.0) for i in range(1, 301)]
    one_by_one, at_once = SignatureDb(200, 100.0, 0.6), SignatureDb(200, 100.0, 0.6)
    for signature in signatures:
        one_by_one.load(signature)
    at_once.load_many(signatures)
    assert len(one_by_one) == len(at_once) == 200
    assert one_by_one.evicted == at_once.evicted == 100
    for signature in signatures[::7]:
        query = near_copy(signature.fingerprint, rng, 8)
        first, second = one_by_one.match(query, 1.0), at_once.match(query, 1.0)
        assert (first and first.signature_id) == (second and second.signature_id)
