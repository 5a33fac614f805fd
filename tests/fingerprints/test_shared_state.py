"""Fingerprint state shared by replicas: campaigns and signature hits in Redis, the signature feed, cooldowns.

Against a real Redis (and SQLite or PostgreSQL), nothing mocked. Two clients with
their own connection pools stand for two replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest
import redis.asyncio as aioredis

from features.fingerprint import NUM_PERM, Fingerprint
from service.container import open_database
from service.fingerprints import service as service_module
from service.fingerprints.campaigns import CampaignPolicy, CampaignTracker
from service.fingerprints.index import Probe
from service.fingerprints.redis_content import RedisContentState
from service.fingerprints.service import FingerprintPolicy, FingerprintService
from service.fingerprints.signatures import SignatureAdd
from service.fingerprints.state import LocalContentState
from service.fingerprints.sync import GAP_WAIT_S, ChangeCursor
from service.notify import Cooldown, RedisCooldown
from service.settings import Settings
from service.stores import AccountKey
from service.stores.signatures import SqlSignatureStore
from tests.conftest import REDIS_URL


def random_fingerprint(rng: np.random.Generator) -> Fingerprint:
    return Fingerprint(rng.integers(0, 2**32, NUM_PERM, dtype=np.uint32))


def near_copy(fingerprint: Fingerprint, rng: np.random.Generator, changed: int) -> Fingerprint:
    """`changed` of the 64 minimum hashes different (in the low 16 bits the index keeps)."""
    values = fingerprint.hashvalues.copy()
    positions = rng.choice(NUM_PERM, size=changed, replace=False)
    values[positions] = values[positions] ^ np.uint32(0xFFFF)
    return Fingerprint(values)


@pytest.fixture
def redis_prefix(storage: dict[str, object]) -> str:
    """The backend's Redis namespace; tests that need Redis skip on the others."""
    prefix = storage.get("redis_prefix")
    if prefix is None:
        pytest.skip("needs Redis")
    return str(prefix)


@contextlib.asynccontextmanager
async def replicas(count: int) -> AsyncIterator[list[aioredis.Redis]]:
    """Clients with their own connection pools, as separate replicas have."""
    clients = [aioredis.Redis.from_url(REDIS_URL) for _ in range(count)]
    try:
        yield clients
    finally:
        for client in clients:
            await client.aclose()


@pytest.mark.parametrize("backend", ["postgresql+redis"], indirect=True)
def test_campaigns_counted_in_redis_by_two_replicas_are_those_one_process_counts(redis_prefix: str) -> None:
    """Cluster by cluster and message by message: the same views, means, campaigns and evictions."""
    rng = np.random.default_rng(17)
    picks = random.Random(17)
    # Small caps and a short window, so eviction, the sender cap, recounts and the horizon all happen.
    policy = CampaignPolicy(
        window_seconds=600.0, horizon_seconds=3_600.0, min_accounts=4, capacity=12, max_accounts_per_cluster=6
    )
    families = [random_fingerprint(rng) for _ in range(10)]
    accounts = [AccountKey(f"r{n % 2}", f"user{n}") for n in range(14)]
    at = 1_750_000_000.0
    sequence = []
    for _ in range(700):
        at += picks.choice([0.5, 3.0, 20.0, 45.0, 200.0]) if picks.random() < 0.97 else 5_000.0
        if picks.random() < 0.15:
            fingerprint = random_fingerprint(rng)  # one-off content: a cluster of its own
        else:
            fingerprint = near_copy(families[picks.randrange(len(families))], rng, picks.choice([0, 4, 10, 18]))
        sequence.append((Probe.of(fingerprint), picks.choice(accounts), at, picks.random()))

    async def main() -> None:
        reference = LocalContentState(CampaignTracker(policy))
        async with replicas(2) as clients:
            shared = [RedisContentState(client, redis_prefix, policy, 86_400.0) for client in clients]
            ids: dict[int, int] = {}
            for n, (probe, key, at, probability) in enumerate(sequence):
                replica = shared[n % 2]
                want, got = await reference.observe(probe, key, at), await replica.observe(probe, key, at)
                assert want.campaign is not None and got.campaign is not None
                assert ids.setdefault(want.campaign.cluster_id, got.campaign.cluster_id) == got.campaign.cluster_id
                assert (want.campaign.accounts_in_window, want.campaign.new_accounts) == (
                    got.campaign.accounts_in_window,
                    got.campaign.new_accounts,
                ), n
                assert want.campaign.established_accounts == got.campaign.established_accounts, n
                assert (want.campaign.active, want.campaign.newly_detected) == (
                    got.campaign.active,
                    got.campaign.newly_detected,
                ), n
                cluster_id = want.campaign.cluster_id
                assert await reference.record_probability(cluster_id, probability) == await replica.record_probability(
                    got.campaign.cluster_id, probability
                )
            assert len(set(ids.values())) == len(ids)  # one Redis cluster per process cluster
            assert await reference.clusters() == await shared[0].clusters() == policy.capacity
            for now in (at - 300, at + 1):
                expected = {ids[c.cluster_id]: c for c in await reference.active(now)}
                found = {c.cluster_id: c for c in await shared[1].active(now)}
                assert found.keys() == expected.keys()
            for process_id, redis_id in ids.items():
                want_cluster, got_cluster = await reference.cluster(process_id), await shared[1].cluster(redis_id)
                if want_cluster is None:  # evicted from both
                    assert got_cluster is None
                    continue
                assert got_cluster is not None
                assert dict(got_cluster.senders) == dict(want_cluster.senders)
                assert got_cluster.probability_count == want_cluster.probability_count
                assert got_cluster.mean_probability == want_cluster.mean_probability
                assert got_cluster.active_until == want_cluster.active_until

    asyncio.run(main())


@pytest.mark.parametrize("backend", ["postgresql+redis"], indirect=True)
def test_a_signature_match_and_an_announcement_count_once_across_replicas(redis_prefix: str) -> None:
    key = AccountKey("default", "shop")

    async def main() -> None:
        async with replicas(2) as (one, two):
            policy = CampaignPolicy()
            first, second = (RedisContentState(c, redis_prefix, policy, 86_400.0) for c in (one, two))
            hits = [await first.signature_hit(7, 0), await second.signature_hit(7, 0), await first.signature_hit(7, 0)]
            assert hits == [0, 1, 2]  # the matches before each
            assert await second.signature_hit(7, 99) == 3  # Redis counts, not the process
            assert await first.signatures_changed() == 1
            assert await second.signatures_changed() == 2

            cooldowns = [RedisCooldown(c, redis_prefix, seconds=3_600.0) for c in (one, two)]
            at = 1_750_000_000.0
            assert await cooldowns[0].ready(key, "account.spam_detected", at)
            assert not await cooldowns[1].ready(key, "account.spam_detected", at + 60)
            assert await cooldowns[1].ready(key, "account.volume_spike", at + 60)  # another type
            assert await cooldowns[1].ready(AccountKey("default", "other"), "account.spam_detected", at + 60)
            assert await cooldowns[1].ready(key, "account.spam_detected", at + 3_600)  # timed by the message clock

    asyncio.run(main())


def test_the_in_process_cooldown_is_the_same_rule() -> None:
    key = AccountKey("default", "shop")
    cooldown = Cooldown(3_600.0)
    answers = [
        asyncio.run(cooldown.ready(key, "account.spam_detected", at))
        for at in (1_000.0, 1_060.0, 4_599.0, 4_600.0, 4_700.0)
    ]
    assert answers == [True, False, False, True, False]


def test_the_change_cursor_applies_late_ids_and_moves_past_ids_that_never_appear() -> None:
    now = [0.0]
    cursor = ChangeCursor(10, monotonic=lambda: now[0])
    cursor.advance([11, 12, 14, 15])  # 13 is not committed yet
    assert cursor.position == 12
    assert cursor.unseen([14, 15, 16]) == [16]
    now[0] = GAP_WAIT_S / 2
    cursor.advance([13, 16])  # committed late: applied, and the position moves on
    assert (cursor.position, cursor.applied) == (16, set())
    cursor.advance([18])  # 17 was rolled back: it never appears
    assert cursor.position == 16
    now[0] += GAP_WAIT_S
    cursor.advance([])
    assert (cursor.position, cursor.applied) == (18, set())


OFFER = (
    "Dear customer, our warehouse clearance ends on Friday. Every garden chair, parasol and barbecue in the "
    "catalogue is half price while stocks last, delivery is free for orders over fifty pounds, and the code "
    "CLEAR50 takes another ten percent off at checkout. Visit http://shop.example/clearance to see the range."
)


def fingerprint_of(service: FingerprintService, text: str) -> Fingerprint:
    found = service.fingerprinter.fingerprint(text)
    assert found is not None
    return found


@pytest.mark.backends
def test_a_signature_added_or_removed_through_one_process_reaches_the_other(settings: Settings) -> None:
    """Without Redis, the next read of the feed brings it; with Redis, the next lookup (the counter moved)."""
    databases = [open_database(settings), open_database(settings)]

    async def main() -> None:
        clients = [aioredis.Redis.from_url(REDIS_URL) for _ in databases] if settings.redis_url else []
        try:
            policy = FingerprintPolicy()
            states = [
                RedisContentState(c, settings.redis_prefix, policy.campaign, policy.signature_ttl_seconds)
                for c in clients
            ] or [None, None]
            one, two = (
                FingerprintService(policy, SqlSignatureStore(d), state)
                for d, state in zip(databases, states, strict=True)
            )
            key, at = AccountKey("default", "shop"), time.time()
            copy = fingerprint_of(two, OFFER.replace("Friday", "Saturday"))
            assert (await two.lookup(copy, key, at)).match is None
            signature_id, created = await one.add(fingerprint_of(one, OFFER), source="admin", actor="t", at=at)
            assert created
            if not settings.redis_url:
                assert await two.refresh() == 1
            match = (await two.lookup(copy, key, at + 1)).match
            assert match is not None and match.signature_id == signature_id
            assert await two.refresh() == 0  # applied once, whatever is read again
            assert await one.remove([signature_id], "t", at + 2) == [signature_id]
            if not settings.redis_url:
                await two.refresh()
            assert (await two.lookup(copy, key, at + 3)).match is None
            assert not two.signatures.is_live(signature_id)
        finally:
            for client in clients:
                await client.aclose()

    try:
        asyncio.run(main())
    finally:
        for database in databases:
            database.close()


def test_a_process_started_later_loads_the_live_signatures_and_reads_on_from_there(settings: Settings) -> None:
    database = open_database(settings)
    try:
        policy = FingerprintPolicy()
        one = FingerprintService(policy, SqlSignatureStore(database))
        at = time.time()
        asyncio.run(one.add(fingerprint_of(one, OFFER), source="admin", actor="t", at=at))
        later = FingerprintService(policy, SqlSignatureStore(database))
        assert len(later.signatures) == 1
        assert asyncio.run(later.refresh()) == 0  # the feed's overlap with the load changes nothing
    finally:
        database.close()


def test_many_changes_at_once_are_loaded_afresh_off_the_event_loop(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An import into the shared database: the other process rebuilds its index in a thread instead."""
    monkeypatch.setattr(service_module, "RELOAD_AT", 10)
    rng = np.random.default_rng(4)
    databases = [open_database(settings), open_database(settings)]
    try:
        policy = FingerprintPolicy()
        importer, running = (FingerprintService(policy, SqlSignatureStore(d)) for d in databases)
        at = time.time()
        items = [SignatureAdd(random_fingerprint(rng), "corpus", "import", at) for _ in range(25)]
        stored = asyncio.run(importer.store.write([(item, at + 86_400) for item in items], {}))
        assert asyncio.run(running.refresh()) == 25
        assert all(running.signatures.is_live(s.signature_id) for s in stored)
        assert asyncio.run(running.refresh()) == 0
    finally:
        for database in databases:
            database.close()
