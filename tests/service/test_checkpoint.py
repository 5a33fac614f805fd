"""The embedded default survives a restart: windows, engagement and evidence are checkpointed to SQLite.

A hijacked account halfway to its lock is still halfway after a restart, whether the
service was stopped (the checkpoint at shutdown) or killed (the periodic one); without
the checkpoint the same account, restarted, would start afresh and not be locked.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

from features.behaviour import Observation
from service.app import create_app
from service.settings import Settings
from service.stores import AccountKey, AccountState, AccountStatus
from service.stores.checkpoint import FILE_NAME, Checkpoint
from service.stores.memory import MemoryAccountStateStore, MemoryBehaviourStore, MemoryEngagementStore
from tests.conftest import make_raw, server_process

ACCOUNT = "alice"
SPAM = make_raw(
    subject="URGENT: Claim your $5,000,000 prize NOW!!!",
    body=(
        "Dear Winner,\n\nCONGRATULATIONS!!! You have WON $5,000,000 in our international lottery. "
        "To claim your prize send your bank details and a processing fee of $450 to our agent today. "
        "Click here http://192.0.2.44/claim?id=1 or http://bit.ly/claim-now to get your money. "
        "100% guaranteed, risk free, act now, limited time offer!!!\n\nMr. James Williams\nClaims Department\n"
    ),
    sender="Lottery Board <winner-notification@lotto-intl.example>",
)
START = time.time() - 3 * 86_400
SPAM_AT = START + 40 * 3_600
BEFORE_RESTART = 2  # spam messages before the restart: risk about 0.47, no lock
AFTER_RESTART = 3  # the lock comes with the fourth spam message, so only with the evidence of the first two


def message(n: int, raw: str, at: float, recipients: list[str]) -> dict[str, Any]:
    return {"message_id": f"<m{n}@x>", "sasl_username": ACCOUNT, "timestamp": at, "recipients": recipients, "raw": raw}


def ham(n: int) -> dict[str, Any]:
    """An established account's normal mail: a dozen messages over more than a day."""
    raw = make_raw(subject=f"Minutes {n}", body=f"Hi team,\n\nThe minutes of meeting {n} are attached.\n\nAlice\n")
    return message(n, raw, START + n * 2.5 * 3_600, [f"bob{n % 3}@example.org"])


def spam(n: int) -> dict[str, Any]:
    # Two recipients: too few to corroborate a new account's spam, so only an established account locks on it.
    return message(100 + n, SPAM, SPAM_AT + n * 60, [f"v{n}@domain{n}.example", "x@example.org"])


def before_restart() -> list[dict[str, Any]]:
    return [ham(n) for n in range(12)] + [spam(n) for n in range(BEFORE_RESTART)]


def after_restart() -> list[dict[str, Any]]:
    return [spam(n) for n in range(BEFORE_RESTART, BEFORE_RESTART + AFTER_RESTART)]


def status(client: TestClient | httpx.Client) -> str:
    answer = client.get(f"/v1/accounts/default/{ACCOUNT}")
    assert answer.status_code == 200, answer.text
    return answer.json()["status"]


def send(client: TestClient | httpx.Client, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    answers = []
    for item in messages:
        answer = client.post("/v1/score", json=item)
        assert answer.status_code == 200, answer.text
        answers.append(answer.json())
    return answers


@pytest.mark.parametrize("kept", [True, False], ids=["restored", "fresh start"])
def test_a_hijack_interrupted_by_a_restart_still_ends_in_a_lock(settings: Settings, kept: bool) -> None:
    with TestClient(create_app(settings)) as client:
        halfway = send(client, before_restart())[-1]
        assert halfway["action"] == "hold" and not halfway["lock_recommended"]
        assert status(client) == "rate_limited"  # in the ledger: that much a restart always kept
    checkpoint = settings.state_dir / FILE_NAME
    assert checkpoint.is_file()  # written at shutdown
    if not kept:
        checkpoint.unlink()  # what every restart did before: the windows and evidence gone
    with TestClient(create_app(settings)) as client:
        first = send(client, after_restart()[:1])[0]
        assert (first["account_risk"] > halfway["account_risk"]) is kept
        send(client, after_restart()[1:])
        assert status(client) == ("locked_temporary" if kept else "rate_limited")


def test_a_killed_service_keeps_what_its_periodic_checkpoint_wrote(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    env = {"OUTGUARD_CHECKPOINT_INTERVAL_S": "0.3"}
    with server_process(state, "{}", **env) as (url, process), httpx.Client(base_url=url) as client:
        send(client, before_restart())
        deadline = time.monotonic() + 20
        while not saved(state / FILE_NAME, 12 + BEFORE_RESTART) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert saved(state / FILE_NAME, 12 + BEFORE_RESTART), "no periodic checkpoint"
        os.kill(process.pid, signal.SIGKILL)  # no shutdown: only the periodic checkpoint is on disk
        process.wait(timeout=10)
    with server_process(state, "{}", **env) as (url, _), httpx.Client(base_url=url) as client:
        send(client, after_restart())
        assert status(client) == "locked_temporary"


def saved(path: Path, messages: int) -> bool:
    """The checkpoint holds the account with this many messages scored."""
    if not path.is_file():
        return False
    with sqlite3.connect(path) as connection:
        try:
            row = connection.execute("SELECT state FROM accounts WHERE account = ?", (ACCOUNT,)).fetchone()
        except sqlite3.OperationalError:  # not made yet
            return False
    return row is not None and f'"messages_scored":{messages},'.encode() in row[0]


Stores = tuple[MemoryBehaviourStore, MemoryEngagementStore, MemoryAccountStateStore]
KEYS = [AccountKey("default", f"a{n}") for n in range(6)]


def stores() -> Stores:
    return MemoryBehaviourStore(100), MemoryEngagementStore(100), MemoryAccountStateStore(100)


async def traffic(held: Stores, rng: random.Random, at: float, count: int) -> list[object]:
    """Messages and feedback for the accounts, and what the stores answered."""
    behaviour, engagement, _ = held
    answers: list[object] = []
    for n in range(count):
        key = KEYS[n % len(KEYS)]
        at += rng.random() * 600
        domains = tuple(f"d{rng.randrange(30)}.example" for _ in range(rng.randint(1, 4)))
        answers.append(await behaviour.observe(key, Observation(at, len(domains), domains, f"192.0.2.{n % 7}")))
        await engagement.add(key, {"recipients": float(len(domains)), "complaint": float(rng.random() < 0.1)}, at)
        answers.append(await engagement.snapshot(key))
    return answers


def test_windows_engagement_and_state_come_back_as_they_were(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    originals = stores()
    checkpoint = Checkpoint(path, "db-1", *originals)
    checkpoint.restore({}, {})
    asyncio.run(traffic(originals, random.Random(5), 1_750_000_000.0, 300))
    for n, key in enumerate(KEYS):
        asyncio.run(originals[2].update(key, lambda s, n=n: setattr(s, "evidence", 0.5 * n)))
    assert asyncio.run(checkpoint.save()) == len(KEYS)

    copies = stores()
    assert Checkpoint(path, "db-1", *copies).restore({}, {}) == len(KEYS)
    # From here on, the same traffic gets the same answers from the originals and the restored copies.
    continued = asyncio.run(traffic(originals, random.Random(11), 1_750_200_000.0, 120))
    restored = asyncio.run(traffic(copies, random.Random(11), 1_750_200_000.0, 120))
    assert restored == continued
    for n, key in enumerate(KEYS):
        assert asyncio.run(copies[2].get(key)).evidence == 0.5 * n


def test_only_the_accounts_changed_since_the_last_save_are_written(tmp_path: Path) -> None:
    held = stores()
    checkpoint = Checkpoint(tmp_path / FILE_NAME, "db-1", *held)
    checkpoint.restore({}, {})
    asyncio.run(traffic(held, random.Random(1), 1_750_000_000.0, 12))
    assert asyncio.run(checkpoint.save()) == len(KEYS)
    assert asyncio.run(checkpoint.save()) == 0
    asyncio.run(held[2].update(KEYS[0], lambda s: setattr(s, "evidence", 1.0)))
    assert asyncio.run(checkpoint.save()) == 1


def test_the_ledger_wins_for_an_account_it_recorded_after_the_checkpoint(tmp_path: Path) -> None:
    """An admin's reset after the last checkpoint, then a crash: the reset holds, the evidence is not back."""
    held = stores()
    checkpoint = Checkpoint(tmp_path / FILE_NAME, "db-1", *held)
    checkpoint.restore({}, {})
    reset, untouched = KEYS[0], KEYS[1]
    for key in (reset, untouched):
        asyncio.run(held[2].update(key, lambda s: setattr(s, "evidence", 2.5)))
    asyncio.run(checkpoint.save())
    saved_at = time.time()

    copies = stores()
    ledger = {
        reset: AccountState(),  # reset by an admin after the checkpoint
        untouched: AccountState(status=AccountStatus.RATE_LIMITED, lock_reason="old"),  # recorded before it
    }
    Checkpoint(tmp_path / FILE_NAME, "db-1", *copies).restore(ledger, {reset: saved_at + 10, untouched: 0.0})
    after_reset, kept = asyncio.run(copies[2].get(reset)), asyncio.run(copies[2].get(untouched))
    assert after_reset.evidence == 0.0
    assert kept.evidence == 2.5 and kept.status is AccountStatus.RATE_LIMITED  # the ledger's lifecycle over it


def test_a_checkpoint_of_another_database_is_not_restored(tmp_path: Path) -> None:
    held = stores()
    checkpoint = Checkpoint(tmp_path / FILE_NAME, "db-1", *held)
    checkpoint.restore({}, {})
    asyncio.run(traffic(held, random.Random(2), 1_750_000_000.0, 6))
    asyncio.run(checkpoint.save())
    copies = stores()
    assert Checkpoint(tmp_path / FILE_NAME, "db-2", *copies).restore({}, {}) == 0
    assert copies[1].peek(KEYS[0]) is None
