"""The Redis stores against a real Redis: same numbers as the in-process stores, atomic, bounded."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import os
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, fields
from typing import TypeVar

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from features.behaviour import BehaviourSnapshot, Observation
from features.engagement import EngagementSnapshot
from service.stores import AccountKey, AccountState, AccountStatus, MessageRef, memory
from service.stores.memory import (
    MAX_KNOWN_DOMAINS,
    MAX_RECENT_VALUES,
    AccountWindows,
    MemoryBehaviourStore,
    MemoryEngagementStore,
    MemoryMessageIndex,
    RecentValues,
)
from service.stores.redis_state import (
    RedisAccountStateStore,
    RedisBehaviourStore,
    RedisEngagementStore,
    RedisMessageIndex,
    redis_ping,
)

# Read at import: the conftest's autouse fixture clears OUTGUARD_* variables before each test.
REDIS_URL = os.environ.get("OUTGUARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

T = TypeVar("T")


@dataclass(frozen=True)
class RedisTarget:
    url: str
    prefix: str  # unique per test, so tests never see each other's keys


@pytest.fixture
def target() -> Iterator[RedisTarget]:
    admin = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        admin.ping()
    except (RedisError, OSError) as exc:
        admin.close()
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {REDIS_URL} is unreachable (CI must have it): {exc}")
        pytest.skip(f"Redis at {REDIS_URL} is unreachable: {exc}")
    prefix = f"ogtest-{uuid.uuid4().hex}"
    try:
        yield RedisTarget(REDIS_URL, prefix)
    finally:
        keys = list(admin.scan_iter(match=f"{prefix}:*", count=1_000))
        for start in range(0, len(keys), 500):
            admin.delete(*keys[start : start + 500])
        admin.close()


@contextlib.asynccontextmanager
async def connect(target: RedisTarget, **options: object) -> AsyncIterator[aioredis.Redis]:
    """A client with its own connection pool, as one replica would have."""
    client = aioredis.Redis.from_url(target.url, **options)
    try:
        yield client
    finally:
        await client.aclose()


async def settle(value: T | Awaitable[T]) -> T:
    """The value, awaited if need be: MemoryMessageIndex is becoming async."""
    return await value if inspect.isawaitable(value) else value  # type: ignore[return-value]


def assert_same(expected: object, got: object) -> None:
    """Dataclasses equal field by field: ints exactly, floats to 1e-9, None as None."""
    assert type(expected) is type(got)
    for f in fields(expected):  # type: ignore[arg-type]
        want, have = getattr(expected, f.name), getattr(got, f.name)
        if isinstance(want, dict):
            assert want.keys() == have.keys(), f.name
            for name in want:
                assert math.isclose(want[name], have[name], rel_tol=1e-9, abs_tol=1e-12), (f.name, name)
        elif isinstance(want, float):
            assert isinstance(have, float), f.name
            assert math.isclose(want, have, rel_tol=1e-9, abs_tol=1e-12), (f.name, want, have)
        else:
            assert want == have, (f.name, want, have)


def observations(rng: random.Random, count: int, domain_pool: int, ip_pool: int, flood: bool) -> list[Observation]:
    """One account's traffic: steady mail, bursts, gaps of hours and days, late messages."""
    now = 1_750_000_000.0 + rng.random() * 1_000
    pool = [f"d{i}.example" for i in range(domain_pool)]
    out = []
    for n in range(count):
        roll = rng.random()
        if roll < 0.04:
            now += rng.choice([2 * 3_600, 25 * 3_600, 3 * 86_400, 9 * 86_400]) + rng.random()  # a gap
        elif roll < 0.25:
            now += 0.0 if rng.random() < 0.5 else rng.random() * 0.5  # a burst
        else:
            now += rng.random() * 90
        ts = now
        late = rng.random()
        if late < 0.08:
            ts = now - rng.random() * 120  # a little late
        elif late < 0.12:
            ts = now - rng.random() * 3 * 86_400  # very late: possibly older than every window
        if rng.random() < 0.07:
            domains: tuple[str, ...] = ()  # no recipients (or none with a domain)
        elif flood:
            domains = tuple(f"n{n}-{i}.spam" for i in range(rng.randint(10, 40))) + tuple(rng.sample(pool, 2))
        else:
            domains = tuple(rng.choice(pool) for _ in range(rng.randint(1, 6)))
            if rng.random() < 0.1:
                domains += (f"new{n}.example",)
        recipients = len(domains) + rng.randint(0, 3) if domains else rng.choice([0, 0, 2])
        ip = None if rng.random() < 0.1 else f"192.0.2.{rng.randrange(ip_pool)}"
        out.append(Observation(ts, recipients, domains, ip))
    return out


def interleave(
    rng: random.Random, streams: dict[AccountKey, list[Observation]]
) -> list[tuple[AccountKey, Observation]]:
    queues = {key: list(reversed(obs)) for key, obs in streams.items()}
    merged = []
    while queues:
        key = rng.choice(sorted(queues, key=lambda k: (k.relay, k.account)))
        merged.append((key, queues[key].pop()))
        if not queues[key]:
            del queues[key]
    return merged


ODD_KEY = AccountKey("relay:{1}", "a:b}{c")  # names Redis Cluster would otherwise hash on


def test_behaviour_matches_memory_store(target: RedisTarget) -> None:
    rng = random.Random(20240611)
    streams = {
        AccountKey("r1", "alice"): observations(rng, 700, domain_pool=25, ip_pool=3, flood=False),
        AccountKey("r1", "bob"): observations(rng, 600, domain_pool=60, ip_pool=8, flood=False),
        ODD_KEY: observations(rng, 200, domain_pool=10, ip_pool=2, flood=False),
        # ~12,500 distinct domains: past both MAX_KNOWN_DOMAINS and MAX_RECENT_VALUES.
        AccountKey("r2", "spammer"): observations(rng, 500, domain_pool=30, ip_pool=40, flood=True),
    }
    sequence = interleave(rng, streams)

    async def main() -> None:
        reference = MemoryBehaviourStore(max_accounts=100)
        async with connect(target) as client:
            store = RedisBehaviourStore(client, prefix=target.prefix)
            for key, obs in sequence:
                assert_same(await reference.observe(key, obs), await store.observe(key, obs))
            spammer = store.keys(AccountKey("r2", "spammer"))
            assert await client.zcard(spammer[8]) == MAX_KNOWN_DOMAINS  # the caps were reached
            assert await client.zcard(spammer[4]) == await client.zcard(spammer[5]) == MAX_RECENT_VALUES

    asyncio.run(main())


def test_behaviour_matches_memory_at_small_caps(target: RedisTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny caps, so eviction order (least recently updated, late messages too) is exercised often."""
    monkeypatch.setattr(memory, "MAX_KNOWN_DOMAINS", 7)
    rng = random.Random(7)
    sequence = observations(rng, 800, domain_pool=15, ip_pool=9, flood=False)
    key = AccountKey("r", "small")

    async def main() -> None:
        reference = AccountWindows(recipient_domains=RecentValues(4), client_ips=RecentValues(4))
        async with connect(target) as client:
            store = RedisBehaviourStore(client, prefix=target.prefix, max_known_domains=7, max_recent_values=4)
            for obs in sequence:
                assert_same(reference.observe(obs), await store.observe(key, obs))

    asyncio.run(main())


def test_engagement_matches_memory_store(target: RedisTarget) -> None:
    rng = random.Random(99)
    names = ["recipients", "delivered", "hard_bounce", "soft_bounce", "invalid_recipient", "complaint", "reply"]
    names += ["open", "click", "feedback", "last", "v:odd"]  # names that look like the script's own fields
    keys = [AccountKey("r1", "alice"), AccountKey("r1", "bob"), ODD_KEY]
    clock = {key: 1_750_000_000.0 for key in keys}

    async def main() -> None:
        reference = MemoryEngagementStore(max_accounts=100)
        async with connect(target) as client:
            store = RedisEngagementStore(client, prefix=target.prefix)
            assert await store.snapshot(AccountKey("r1", "nobody")) is None
            for _ in range(600):
                key = rng.choice(keys)
                clock[key] += rng.choice([0.0, rng.random() * 60, rng.random() * 86_400])
                ts = clock[key] - (rng.random() * 5 * 86_400 if rng.random() < 0.15 else 0.0)
                picked = rng.sample(names, rng.randint(0, 4))
                counts = {name: rng.choice([1, 1.0, rng.random() * 5, float(rng.randint(1, 50))]) for name in picked}
                await reference.add(key, counts, ts)
                await store.add(key, counts, ts)
                expected = await reference.snapshot(key)
                got = await store.snapshot(key)
                assert isinstance(got, EngagementSnapshot)
                assert_same(expected, got)

    asyncio.run(main())


def test_concurrent_updates_from_two_replicas_are_never_lost(target: RedisTarget) -> None:
    key = AccountKey("r1", "busy")

    def bump(state: AccountState) -> int:
        state.evidence += 1
        state.messages_scored += 1
        return state.messages_scored

    async def replica(client: aioredis.Redis) -> list[int]:
        store = RedisAccountStateStore(client, prefix=target.prefix)
        return [(await store.update(key, bump))[1] for _ in range(200)]

    async def main() -> None:
        async with connect(target) as one, connect(target) as two:
            first, second = await asyncio.gather(replica(one), replica(two))
            state = await RedisAccountStateStore(one, prefix=target.prefix).get(key)
        assert state.evidence == 400
        assert state.messages_scored == 400
        assert sorted(first + second) == list(range(1, 401))  # every update saw its own count

    asyncio.run(main())


def test_concurrent_observes_from_two_replicas_count_every_message(target: RedisTarget) -> None:
    key = AccountKey("r1", "burst")
    obs = Observation(1_750_000_000.5, 2, ("a.example", "b.example"), "192.0.2.1")

    async def replica(client: aioredis.Redis) -> list[BehaviourSnapshot]:
        store = RedisBehaviourStore(client, prefix=target.prefix)
        return [await store.observe(key, obs) for _ in range(150)]

    async def main() -> None:
        async with connect(target) as one, connect(target) as two:
            first, second = await asyncio.gather(replica(one), replica(two))
        snapshots = first + second
        assert sorted(s.msgs_24h for s in snapshots) == list(range(1, 301))
        assert sorted(s.rcpts_1m for s in snapshots) == list(range(2, 601, 2))

    asyncio.run(main())


def test_update_uses_default_only_when_absent(target: RedisTarget) -> None:
    key = AccountKey("r1", "ledger")
    calls = 0

    async def from_ledger() -> AccountState:
        nonlocal calls
        calls += 1
        return AccountState(evidence=2.5, temporary_locks=1)

    def add_one(state: AccountState) -> float:
        state.evidence += 1
        return state.evidence

    async def main() -> None:
        async with connect(target) as client:
            store = RedisAccountStateStore(client, prefix=target.prefix)
            assert await store.load(key) is None
            assert await store.get(key) == AccountState()
            state, result = await store.update(key, add_one, default=from_ledger)
            assert (state.evidence, state.temporary_locks, result) == (3.5, 1, 3.5)
            state, result = await store.update(key, add_one, default=from_ledger)
            assert (state.evidence, result, calls) == (4.5, 4.5, 1)
            assert await store.load(key) == state
            _, result = await store.update(AccountKey("r1", "fresh"), add_one)
            assert result == 1.0

    asyncio.run(main())


def test_account_state_round_trip_and_ttl_follow_status(target: RedisTarget) -> None:
    key = AccountKey("r1", "carol")
    full = AccountState(
        evidence=1.25,
        messages_scored=7,
        last_scored=1_750_000_000.125,
        status=AccountStatus.LOCKED_TEMPORARY,
        locked_until=1_750_003_600.5,
        temporary_locks=2,
        allowlisted=False,
        lock_reason="burst of new domains",
        tokens=3.5,
        tokens_at=1_750_000_001.0,
    )

    def set_status(status: AccountStatus, allowlisted: bool = False) -> Callable[[AccountState], None]:
        def mutate(state: AccountState) -> None:
            state.status, state.allowlisted = status, allowlisted

        return mutate

    async def main() -> None:
        async with connect(target) as client:
            store = RedisAccountStateStore(client, prefix=target.prefix, ttl_seconds=600)
            name = store.key(key)
            await store.put(key, full)
            loaded = await store.load(key)
            assert loaded == full and loaded is not full
            assert loaded.status is AccountStatus.LOCKED_TEMPORARY
            assert await client.ttl(name) == -1  # a lock never expires
            await store.update(key, set_status(AccountStatus.ACTIVE))
            assert 0 < await client.ttl(name) <= 600
            for status, allowlisted in [
                (AccountStatus.LOCKED, False),
                (AccountStatus.RATE_LIMITED, False),
                (AccountStatus.ACTIVE, True),
            ]:
                await store.update(key, set_status(status, allowlisted))
                assert await client.ttl(name) == -1, status
            await store.put(key, AccountState())
            assert 0 < await client.ttl(name) <= 600

            # restore sets only what Redis does not have, with the same TTL rule.
            assert not await store.restore(key, full)
            assert (await store.get(key)) == AccountState()
            other = AccountKey("r1", "dave")
            assert await store.restore(other, full)
            assert await store.get(other) == full
            assert await client.ttl(store.key(other)) == -1
            # Names with separators and braces are distinct accounts.
            await store.put(AccountKey("a", "b:c"), AccountState(evidence=1.0))
            assert await store.load(AccountKey("a:b", "c")) is None

    asyncio.run(main())


def test_behaviour_and_engagement_keys_expire(target: RedisTarget) -> None:
    key = AccountKey("r1", "erin")

    async def main() -> None:
        async with connect(target) as client:
            behaviour = RedisBehaviourStore(client, prefix=target.prefix, ttl_seconds=900)
            engagement = RedisEngagementStore(client, prefix=target.prefix, ttl_seconds=900)
            await behaviour.observe(key, Observation(1_750_000_000.0, 1, ("x.example",), "192.0.2.9"))
            await engagement.add(key, {"recipients": 1.0}, 1_750_000_000.0)
            names = [*behaviour.keys(key), engagement.key(key)]
            assert await client.exists(*names) == len(names)
            for name in names:
                assert 0 < await client.pttl(name) <= 900_000, name
            assert sorted(k.decode() for k in await client.keys(f"{target.prefix}:*")) == sorted(names)

    asyncio.run(main())


def test_message_index_matches_memory(target: RedisTarget) -> None:
    refs = [
        MessageRef(
            "<m1@example.net>",
            f"Q{i}" if i != 3 else None,
            f"relay{i}",
            "alice",
            1_750_000_000.0 + i / 7,
            fingerprint=bytes([i, 0, 255, 10]) * 8 if i % 2 else None,
            spam_probability=i / 10 if i != 4 else None,
        )
        for i in range(6)
    ]
    refs.append(MessageRef("<m2@example.net>", "Q9", "relay0", "bob", 1_750_000_100.0, b"\x00" * 64, 0.5))

    async def main() -> None:
        reference = MemoryMessageIndex(capacity=100)
        async with connect(target) as client:
            index = RedisMessageIndex(client, prefix=target.prefix, ttl_seconds=120)
            for ref in refs:
                await settle(reference.remember(ref))
                await index.remember(ref)
            kept = await index.find("<m1@example.net>", None)
            assert kept == refs[2:6]  # the last four, oldest first
            assert kept[1].fingerprint == refs[3].fingerprint
            assert (await index.find("<m1@example.net>", "Q0"))[-1] == refs[0]  # evicted by id, found by queue id
            for message_id, queue_id in [
                ("<m1@example.net>", "Q0"),
                ("<m1@example.net>", "Q5"),
                (None, "Q1"),
                ("<m2@example.net>", "Q2"),
                ("<nope@example.net>", "nope"),
                (None, None),
                ("", ""),
            ]:
                assert await index.find(message_id, queue_id) == await settle(reference.find(message_id, queue_id))
            async for name in client.scan_iter(match=f"{target.prefix}:*"):
                assert 0 < await client.pttl(name) <= 120_000

    asyncio.run(main())


def test_decoded_responses_client_works_too(target: RedisTarget) -> None:
    key = AccountKey("r1", "frank")

    async def main() -> None:
        async with connect(target, decode_responses=True) as client:
            await RedisEngagementStore(client, prefix=target.prefix).add(key, {"reply": 2.0}, 1_750_000_000.0)
            snapshot = await RedisEngagementStore(client, prefix=target.prefix).snapshot(key)
            assert snapshot is not None and snapshot.outcomes["reply"] == 2.0
            behaviour = RedisBehaviourStore(client, prefix=target.prefix)
            assert (await behaviour.observe(key, Observation(1_750_000_000.0, 1, ("a.example",), None))).msgs_1h == 1
            accounts = RedisAccountStateStore(client, prefix=target.prefix)
            await accounts.put(key, AccountState(evidence=1.5))
            assert (await accounts.get(key)).evidence == 1.5
            index = RedisMessageIndex(client, prefix=target.prefix)
            ref = MessageRef("<x@example.net>", "Q1", "r1", "frank", 1.5, b"\x01\x02")
            await index.remember(ref)
            assert await index.find("<x@example.net>", "Q1") == [ref]

    asyncio.run(main())


def test_ping(target: RedisTarget) -> None:
    async def main() -> None:
        async with connect(target) as client:
            assert await redis_ping(client)
        dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
        try:
            assert not await redis_ping(dead)
        finally:
            await dead.aclose()

    asyncio.run(main())


def test_prefix_with_braces_is_refused() -> None:
    with pytest.raises(ValueError, match="braces"):
        RedisMessageIndex(aioredis.Redis(), prefix="og{x}")
