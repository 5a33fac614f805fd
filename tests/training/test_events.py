"""Training data from the event log: each logged vector gets the label its feedback, verdicts and locks gave it."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from features.spec import FEATURE_INDEX
from service.settings import Settings
from tests.conftest import make_raw
from tests.fingerprints.test_fingerprint import MINUTES, OFFER
from training.events import LabelPolicy, build_event_dataset, read_split

NOW = time.time()
HOUR = 3_600.0


def stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


SHOUTING = OFFER.upper() + " CLICK NOW!!! $$$ FREE VIAGRA http://bit.ly/x"


def send(client: TestClient, message_id: str, account: str, spammy: bool, at: float, **extra: object) -> dict:
    body = make_raw(subject="Watches 80% off" if spammy else "Board minutes", body=OFFER if spammy else MINUTES)
    if extra.pop("shouting", False):
        body = make_raw(subject="FREE VIAGRA!!! 80% OFF $$$", body=SHOUTING)
    message = {"message_id": message_id, "account": account, "recipients": ["x@example.org"], "raw": body}
    answer = client.post("/v1/score", json={**message, "timestamp": stamp(at), **extra})
    assert answer.status_code == 200, answer.text
    return answer.json()


def verdict(client: TestClient, **body: object) -> None:
    assert client.post("/v1/labels", json={"actor": "ops", **body}).status_code == 201


@pytest.fixture
def event_log(client: TestClient, settings: Settings) -> Path:
    """A log in which every labelling rule has something to act on."""
    at = NOW - 6 * HOUR
    # alice: ordinary mail; one message is replied to.
    for n in range(3):
        send(client, f"<a{n}@x>", "alice", spammy=False, at=at + n)
    # bob: one spam complained about, one an admin called spam, one an admin called ham.
    for n in range(3):
        send(client, f"<b{n}@x>", "bob", spammy=True, at=at + 10 + n)
    # carol: spam and ham, then a person locks the account: it was compromised.
    send(client, "<c0@x>", "carol", spammy=True, at=at + 20)
    send(client, "<c1@x>", "carol", spammy=False, at=at + 21)
    # erin: locked automatically, then an admin called her clean: a false lock.
    send(client, "<e0@x>", "erin", spammy=True, at=at + 30)
    # dave: one message so spam-like it was held: nobody received it, so nobody objected.
    assert send(client, "<d0@x>", "dave", spammy=True, at=at + 40, shouting=True)["action"] == "hold"
    # frank: a complaint labels the message it is about, not the account's other mail.
    send(client, "<f0@x>", "frank", spammy=True, at=at + 50)
    send(client, "<f1@x>", "frank", spammy=False, at=at + 51)
    # gina: locked automatically, called clean only days later: a clean-up or a mistake.
    send(client, "<g0@x>", "gina", spammy=True, at=at + 60)
    # hank: a complaint that names only the relay's queue id.
    send(client, "<h0@x>", "hank", spammy=True, at=at + 70, queue_id="4F1A2B3C")
    asyncio.run(client.app.state.container.events.flush())

    feedback = [
        {"event_id": "r1", "type": "reply", "message_id": "<a0@x>", "recipient": "x@example.org"},
        {"event_id": "c1", "type": "complaint", "message_id": "<b0@x>", "recipient": "x@example.org"},
        {"event_id": "c2", "type": "complaint", "message_id": "<f0@x>", "recipient": "x@example.org"},
        {"event_id": "c3", "type": "complaint", "queue_id": "4F1A2B3C", "recipient": "x@example.org"},
    ]
    for event in feedback:
        assert client.post("/v1/feedback", json={**event, "timestamp": stamp(at + 100)}).status_code in (200, 201)
    verdict(client, target="message", label="spam", message_id="<b1@x>")
    verdict(client, target="message", label="ham", message_id="<b2@x>")
    lock = {"actor": "ops", "reason": "leaked", "force": True}
    assert client.post("/v1/accounts/default/carol/lock", json=lock).status_code == 200
    with sqlite3.connect(settings.sqlite_path) as db:
        db.execute(
            "INSERT INTO audit_log (ts, relay, account, action, actor, reason, from_status, to_status, details) "
            "VALUES (?, 'default', 'erin', 'locked_temporary', 'outguard', 'risk', 'active', 'locked_temporary', '{}')",
            (at + 31,),
        )
    verdict(client, target="account", label="clean", relay="default", account="erin", timestamp=stamp(at + 2 * HOUR))
    with sqlite3.connect(settings.sqlite_path) as db:
        db.execute(
            "INSERT INTO audit_log (ts, relay, account, action, actor, reason, from_status, to_status, details) "
            "VALUES (?, 'default', 'gina', 'locked_temporary', 'outguard', 'risk', 'active', 'locked_temporary', '{}')",
            (at + 61,),
        )
        db.execute(
            "INSERT INTO labels (target, relay, account, label, actor, reason, ts, created_at) "
            "VALUES ('account', 'default', 'gina', 'clean', 'ops', 'cleaned up', ?, ?)",
            (at + 61 + 2.5 * 86_400, time.time()),
        )
    return settings.sqlite_path


def labels_by_account(path: Path) -> dict[str, list[tuple[int, str]]]:
    table = pq.read_table(path).to_pandas().sort_values("id")
    out: dict[str, list[tuple[int, str]]] = {}
    for row in table.itertuples():
        out.setdefault(row.account, []).append((int(row.label), row.label_source))
    return out


def test_every_message_gets_the_label_its_history_gave_it(event_log: Path, tmp_path: Path) -> None:
    summary = build_event_dataset([event_log], tmp_path, LabelPolicy(), as_of=NOW + 3 * 86_400)
    labels = labels_by_account(summary.path)
    assert labels["alice"] == [(0, "reply"), (0, "implicit"), (0, "implicit")]
    assert labels["bob"] == [(1, "complaint"), (1, "verdict"), (0, "verdict")]
    assert labels["carol"] == [(1, "compromised")]  # her ham-like message is left unlabelled
    assert labels["erin"] == [(0, "cleared")]
    assert labels["frank"] == [(1, "complaint"), (0, "implicit")]
    assert labels["hank"] == [(1, "complaint")]
    assert "dave" not in labels and "gina" not in labels
    assert summary.unlabelled == 3  # carol's ham, dave's held spam, gina's
    weights = pq.read_table(summary.path).to_pandas().set_index("label_source")["weight"]
    assert weights["implicit"].max() == pytest.approx(LabelPolicy().implicit_ham_weight)


def test_what_happened_after_as_of_is_not_known(event_log: Path, tmp_path: Path) -> None:
    # As of just after bob's messages: no complaint or verdict yet, they were accepted, nobody objected.
    summary = build_event_dataset([event_log], tmp_path, LabelPolicy(label_delay_s=0), as_of=NOW - 6 * HOUR + 15)
    labels = labels_by_account(summary.path)
    assert labels["bob"] == [(0, "implicit")] * 3


def test_nothing_is_labelled_before_its_feedback_window_closes(event_log: Path, tmp_path: Path) -> None:
    summary = build_event_dataset([event_log], tmp_path, LabelPolicy(label_delay_s=86_400), as_of=NOW)
    assert sum(summary.rows.values()) == 0


def test_rows_keep_the_vector_that_was_scored_and_split_by_time(
    event_log: Path, tmp_path: Path, settings: Settings
) -> None:
    summary = build_event_dataset([event_log], tmp_path, as_of=NOW + 3 * 86_400)
    with sqlite3.connect(settings.sqlite_path) as db:
        logged = db.execute("SELECT features FROM scored_messages WHERE message_id = '<b0@x>'").fetchone()[0]
    frame = pq.read_table(summary.path).to_pandas()
    assert list(frame["ts"]) == sorted(frame["ts"])
    train = read_split(summary.path, "train")
    assert train.rows.shape[1] == len(FEATURE_INDEX)
    first_bob = frame[frame["account"] == "bob"].iloc[0]
    assert np.isclose(first_bob["text_model_score"], orjson.loads(logged)[FEATURE_INDEX["text_model_score"]], atol=1e-5)
    order = ["train", "validation", "test"]
    assert [order.index(s) for s in frame["split"]] == sorted(order.index(s) for s in frame["split"])


def test_vectors_of_another_feature_spec_are_left_out(event_log: Path, tmp_path: Path) -> None:
    with sqlite3.connect(event_log) as db:
        db.execute("UPDATE scored_messages SET feature_spec_version = '2' WHERE account = 'alice'")
    summary = build_event_dataset([event_log], tmp_path, as_of=NOW + 3 * 86_400)
    assert summary.skipped_other_spec == 3
    assert "alice" not in labels_by_account(summary.path)
