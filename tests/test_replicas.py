"""Two service processes sharing PostgreSQL and Redis decide as one process does, and enforce each other's locks.

A small simulated provider is replayed once into the embedded default (SQLite and
in-process state, one process) and once split message by message across two
replicas on different ports. Content fingerprints are off in both: the signature
index and campaign tracker are still per process (see docs/backends.md).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx2 as httpx
import pytest

from service.settings import PROJECT_ROOT
from tests.conftest import DATA_DIR, REDIS_URL, postgres_schema, redis_namespace, require_corpus, server_process
from training.replay import ReplayResult, corpus_resolver, replay_http

pytestmark = pytest.mark.slow

TOKEN = "replica-test-token"
TOKENS = f'{{"{TOKEN}": ["admin"]}}'
NO_FINGERPRINTS = {"OUTGUARD_FINGERPRINTS": "false"}


@pytest.fixture(scope="module")
def provider_log() -> list[dict]:
    from training.dataset import build_corpus_dataset
    from training.simulator import SimulationConfig, content_pools, simulate

    require_corpus()
    frame = build_corpus_dataset(DATA_DIR, PROJECT_ROOT / ".cache")
    events, _ = simulate(SimulationConfig(accounts=30, days=1, seed=11), content_pools(frame, "eval"))
    return events


@contextlib.contextmanager
def replicas(tmp: Path, count: int) -> Iterator[list[str]]:
    """`count` servers sharing one fresh PostgreSQL schema and one Redis namespace."""
    with contextlib.ExitStack() as stack:
        shared = {
            "OUTGUARD_DATABASE_URL": stack.enter_context(postgres_schema()),
            "OUTGUARD_REDIS_URL": REDIS_URL,
            "OUTGUARD_REDIS_PREFIX": stack.enter_context(redis_namespace()),
            # One hashing key for all, as replicas of one deployment share their secrets.
            "OUTGUARD_RECIPIENT_HASH_KEY": "replica-test-key",
            **NO_FINGERPRINTS,
        }
        urls = []
        for n in range(count):
            state = tmp / f"replica-{n}"
            state.mkdir()
            url, _ = stack.enter_context(server_process(state, TOKENS, **shared))
            urls.append(url)
        yield urls


def decisions(result: ReplayResult) -> list[tuple[str, str, bool]]:
    return [(o.account, o.action, o.locked) for o in result.outcomes]


def test_two_replicas_decide_as_one_process_and_enforce_each_others_locks(
    provider_log: list[dict], tmp_path: Path
) -> None:
    resolve = corpus_resolver(DATA_DIR, PROJECT_ROOT / ".cache")
    single_state = tmp_path / "single"
    single_state.mkdir()
    with server_process(single_state, TOKENS, OUTGUARD_RECIPIENT_HASH_KEY="replica-test-key", **NO_FINGERPRINTS) as (
        url,
        _,
    ):
        single = replay_http(provider_log, url, resolve, TOKEN)
    with replicas(tmp_path, 2) as (first, second):
        split = replay_http(provider_log, [first, second], resolve, TOKEN)

        assert len(split.outcomes) == len(single.outcomes) > 300
        assert decisions(split) == decisions(single)
        for one, two in zip(single.outcomes, split.outcomes, strict=True):
            assert (one.probability is None) == (two.probability is None)
            if one.probability is not None:
                assert math.isclose(one.probability, two.probability, rel_tol=1e-6, abs_tol=1e-9)
        locked = {o.account for o in single.outcomes if o.locked}
        assert locked, "the simulated provider should have at least one account locked"

        # A lock made through one replica holds on the other's next request.
        headers = {"Authorization": f"Bearer {TOKEN}"}
        victim = next(o for o in split.outcomes if not o.locked and o.account not in locked)
        lock = httpx.post(
            f"{first}/v1/accounts/{quote(victim.relay, safe='')}/{quote(victim.account, safe='')}/lock",
            json={"actor": "ops", "reason": "replica test"},
            headers=headers,
        )
        assert lock.status_code == 200, lock.text
        message = {
            "message_id": "<after-lock@example.net>",
            "relay": victim.relay,
            "account": victim.account,
            "text": "hello again",
            "recipients": ["someone@example.org"],
        }
        answer = httpx.post(f"{second}/v1/score", json=message, headers=headers).json()
        assert answer["account_locked"] is True and answer["action"] == "reject"
