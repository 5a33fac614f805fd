"""Two service processes sharing PostgreSQL and Redis act as one service.

- A small simulated provider is replayed once into the embedded default (SQLite and
  in-process state, one process) and once split message by message across two
  replicas on different ports, content fingerprints on: the same decisions, and a lock
  made through one replica is enforced by the other.
- A signature added through one replica lifts a near-copy scored by the other by at
  least 0.2 within 15 s (at once: the other reads the signature feed when the shared
  change counter moves).
- One content sent from 12 accounts, alternating between the replicas, is one campaign
  of 12 on both.
- Both hash recipients with one key, which neither was given: it is kept in the database.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx2 as httpx
import pytest
from pydantic import SecretStr

from service.container import open_database, recipient_hash_key
from service.settings import PROJECT_ROOT, Settings
from tests.conftest import (
    DATA_DIR,
    REDIS_URL,
    postgres_schema,
    redis_namespace,
    require_corpus,
    run_sql,
    server_process,
)
from training.replay import ReplayResult, corpus_resolver, replay_http

pytestmark = pytest.mark.slow

TOKEN = "replica-test-token"
TOKENS = f'{{"{TOKEN}": ["admin"]}}'
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def provider_log() -> list[dict]:
    from training.dataset import build_corpus_dataset
    from training.simulator import SimulationConfig, content_pools, simulate

    require_corpus()
    frame = build_corpus_dataset(DATA_DIR, PROJECT_ROOT / ".cache")
    events, _ = simulate(SimulationConfig(accounts=30, days=1, seed=11), content_pools(frame, "eval"))
    return events


@dataclass(frozen=True)
class Deployment:
    urls: list[str]
    database_url: str


@contextlib.contextmanager
def replicas(tmp: Path, count: int) -> Iterator[Deployment]:
    """`count` servers sharing one fresh PostgreSQL schema and one Redis namespace, as docs/backends.md says.

    No recipient hashing key is given: they take the one kept in the database.
    """
    with contextlib.ExitStack() as stack:
        database_url = stack.enter_context(postgres_schema())
        shared = {
            "OUTGUARD_DATABASE_URL": database_url,
            "OUTGUARD_REDIS_URL": REDIS_URL,
            "OUTGUARD_REDIS_PREFIX": stack.enter_context(redis_namespace()),
        }
        urls = []
        for n in range(count):
            state = tmp / f"replica-{n}"
            state.mkdir()
            url, _ = stack.enter_context(server_process(state, TOKENS, **shared))
            urls.append(url)
        yield Deployment(urls, database_url)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with replicas(tmp_path_factory.mktemp("pair"), 2) as deployment:
        yield deployment


def decisions(result: ReplayResult) -> list[tuple[str, str, bool]]:
    return [(o.account, o.action, o.locked) for o in result.outcomes]


def test_two_replicas_decide_as_one_process_and_enforce_each_others_locks(
    provider_log: list[dict], tmp_path: Path
) -> None:
    resolve = corpus_resolver(DATA_DIR, PROJECT_ROOT / ".cache")
    single_state = tmp_path / "single"
    single_state.mkdir()
    with server_process(single_state, TOKENS) as (url, _):
        single = replay_http(provider_log, url, resolve, TOKEN)
    with replicas(tmp_path, 2) as deployment:
        first, second = deployment.urls
        split = replay_http(provider_log, [first, second], resolve, TOKEN)

        assert len(split.outcomes) == len(single.outcomes) > 300
        assert decisions(split) == decisions(single)
        for one, two in zip(single.outcomes, split.outcomes, strict=True):
            assert (one.probability is None) == (two.probability is None)
            if one.probability is not None:
                assert math.isclose(one.probability, two.probability, rel_tol=1e-6, abs_tol=1e-9)
        locked = {o.account for o in single.outcomes if o.locked}
        assert locked, "the simulated provider should have at least one account locked"
        # Locks taught signatures, through either replica: both hold all of them (by the next refresh at the latest).
        deadline = time.monotonic() + 15
        while True:
            held = [httpx.get(f"{url}/v1/signatures", headers=HEADERS).json()["signatures"] for url in (first, second)]
            if held[0] == held[1] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert held[0] == held[1] > 0, held

        # A lock made through one replica holds on the other's next request.
        headers = HEADERS
        victim = next(o for o in split.outcomes if not o.locked and o.account not in locked)
        lock = httpx.post(
            f"{first}/v1/accounts/{quote(victim.relay, safe='')}/{quote(victim.account, safe='')}/lock",
            json={"actor": "ops", "reason": "replica test", "force": True},
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


# A shop's offer, and a phishing run: each message a copy with its own greeting and tracking link.
OFFER = (
    "Hello {name},\n\nOur spring collection is here: save 40% on garden furniture, barbecues and outdoor "
    "lighting this week only. Browse the catalogue at http://shop.example/spring?u={n} and use code SPRING40 "
    "at checkout. Free delivery on orders over fifty pounds, and returns are free for thirty days.\n\n"
    "Kind regards,\nThe Garden Shop team\n"
)
PHISH = (
    "Dear {name},\n\nWe noticed an unusual sign-in to your mailbox and have suspended outgoing mail until you "
    "confirm your identity. Please verify your account within 24 hours at http://mail-verify.example/{n} or "
    "your mailbox will be permanently closed and all stored messages deleted.\n\nIT Helpdesk\n"
)


def copy_of(template: str, n: int, name: str) -> str:
    return (
        f"From: The Garden Shop <news@shop.example>\r\nTo: {name}@example.org\r\nSubject: Spring sale {n}\r\n"
        f"Message-ID: <c{n}@shop.example>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + template.format(name=name, n=n)
    )


def score(url: str, account: str, raw: str, n: int, at: float) -> dict:
    message = {
        "message_id": f"<{account}-{n}@example.net>",
        "account": account,
        "timestamp": at,
        "recipients": ["someone@example.org"],
        "raw": raw,
    }
    answer = httpx.post(f"{url}/v1/score", json=message, headers=HEADERS, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_signature_added_through_one_replica_lifts_a_near_copy_on_the_other_within_15_s(pair: Deployment) -> None:
    first, second = pair.urls
    before = score(second, "shop-0", copy_of(OFFER, 0, "ann"), 0, time.time())["spam_probability"]
    assert before < 0.75
    added = httpx.post(
        f"{first}/v1/signatures", json={"raw": copy_of(OFFER, 1, "bob"), "actor": "abuse-desk"}, headers=HEADERS
    )
    assert added.status_code == 201, added.text
    added_at = time.monotonic()
    n, after = 2, before
    while after - before < 0.2 and time.monotonic() - added_at < 15:
        after = score(second, f"shop-{n}", copy_of(OFFER, n, f"carol{n}"), n, time.time())["spam_probability"]
        n += 1
    assert after - before >= 0.2, (before, after)
    assert time.monotonic() - added_at < 15


def test_one_content_from_12_accounts_through_both_replicas_is_one_campaign_of_12_on_both(pair: Deployment) -> None:
    start = time.time()
    accounts = [f"mailbox-{n}" for n in range(12)]
    for n, account in enumerate(accounts):
        score(pair.urls[n % 2], account, copy_of(PHISH, 100 + n, f"user{n}"), 100 + n, start + n)
    seen = []
    for url in pair.urls:
        answer = httpx.get(f"{url}/v1/campaigns", params={"at": start + 12}, headers=HEADERS)
        assert answer.status_code == 200, answer.text
        [campaign] = [c for c in answer.json()["campaigns"] if c["accounts"][0]["account"].startswith("mailbox-")]
        assert sorted(a["account"] for a in campaign["accounts"]) == sorted(accounts)
        seen.append(campaign["campaign_id"])
    assert seen[0] == seen[1]


def test_both_replicas_hash_recipients_with_the_key_kept_in_the_database(pair: Deployment) -> None:
    at = time.time()
    for n, url in enumerate(pair.urls):
        score(url, f"hasher-{n}", copy_of(OFFER, 200 + n, f"dan{n}"), 200 + n, at + n)
    query = "SELECT recipients_hashed FROM scored_messages WHERE account IN ('hasher-0', 'hasher-1')"
    deadline = time.monotonic() + 10
    while len(hashed := run_sql(pair.database_url, query)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)  # the log is written after the answer
    assert len(hashed) == 2 and hashed[0] == hashed[1]  # one recipient, one hash, whichever replica
    [(key,)] = run_sql(pair.database_url, "SELECT value FROM service_settings WHERE name = 'recipient_hash_key'")
    assert len(key) == 64


def test_the_recipient_hashing_key_is_kept_in_the_database_and_taken_over_from_an_old_key_file(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old_file = settings.state_dir / "recipient-hash.key"  # where an older release generated it
    old_file.parent.mkdir(parents=True)
    old_file.write_text("ab" * 32)
    database = open_database(settings)
    try:
        key = recipient_hash_key(settings, database)
        assert key == b"ab" * 32  # hashes stored before stay comparable
        elsewhere = settings.model_copy(update={"state_dir": tmp_path / "another-replica"})
        assert recipient_hash_key(elsewhere, database) == key  # no file there: the database's key
        configured = settings.model_copy(update={"recipient_hash_key": SecretStr("another key")})
        with caplog.at_level(logging.ERROR, logger="service.container"):
            assert recipient_hash_key(configured, database) == b"another key"  # a configured key wins
        assert "is not the key this database's recipients were hashed with" in caplog.text
        assert "another key" not in caplog.text
    finally:
        database.close()
