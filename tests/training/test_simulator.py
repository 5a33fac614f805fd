"""The simulator: deterministic, realistic in shape, content pools kept apart; and a small replay through it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from service.settings import PROJECT_ROOT, Settings
from training.dataset import build_corpus_dataset
from training.replay import account_metrics, corpus_resolver, replay_sync
from training.simulator import EPISODES, KINDS, SimulationConfig, content_pools, fingerprint, simulate


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    from tests.conftest import DATA_DIR, require_corpus

    require_corpus()
    return build_corpus_dataset(DATA_DIR, PROJECT_ROOT / ".cache")


def test_the_same_seed_gives_the_same_log(frame: pd.DataFrame) -> None:
    pools = content_pools(frame, "eval")
    config = SimulationConfig(accounts=80, days=2, seed=5)
    first, _ = simulate(config, pools)
    again, _ = simulate(config, pools)
    other, _ = simulate(SimulationConfig(accounts=80, days=2, seed=6), pools)
    assert fingerprint(first) == fingerprint(again) != fingerprint(other)


def test_training_and_evaluation_content_never_meet(frame: pd.DataFrame) -> None:
    evaluation, training = content_pools(frame, "eval"), content_pools(frame, "train")
    assert not set(evaluation.ham + evaluation.spam) & set(training.ham + training.spam)
    test_refs = set(frame.loc[frame["split"] == "test", "source"] + "/" + frame.loc[frame["split"] == "test", "name"])
    assert set(evaluation.ham + evaluation.spam) <= test_refs  # the model never trained on them


def test_a_provider_has_every_kind_of_sender_compromise_and_surprise(frame: pd.DataFrame) -> None:
    events, truth = simulate(SimulationConfig(accounts=400, days=7, seed=2), content_pools(frame, "eval"))
    assert {a["kind"] for a in truth} == set(KINDS)
    assert {e["kind"] for a in truth for e in a["episodes"]} == set(EPISODES)
    surprises = Counter(s for a in truth for s in a["surprises"])
    assert len(surprises) >= 3
    times = [e["message"]["timestamp"] if e["type"] == "message" else e["event"]["timestamp"] for e in events]
    assert times == sorted(times)
    sent_at = {e["message"]["message_id"]: e["message"]["timestamp"] for e in events if e["type"] == "message"}
    assert all(e["event"]["timestamp"] >= sent_at[e["event"]["message_id"]] for e in events if e["type"] == "feedback")
    spam = [e for e in events if e["type"] == "message" and e["truth"]["spam"]]
    assert all(e["truth"]["episode"] for e in spam)
    bounces = Counter(e["event"]["type"] for e in events if e["type"] == "feedback")
    assert {"delivered", "bounce", "complaint", "reply", "open", "click", "unsubscribe"} <= set(bounces)
    statuses = {
        e["event"]["detail"]["status"] for e in events if e["type"] == "feedback" and e["event"]["type"] == "bounce"
    }
    assert {"5.1.1", "4.2.2"} <= statuses  # hard and soft
    assert all(e["end"] >= e["start"] for a in truth for e in a["episodes"])


def test_a_replay_catches_the_compromised_and_spares_the_rest(frame: pd.DataFrame, tmp_path: Path) -> None:
    from tests.conftest import DATA_DIR

    events, truth = simulate(
        SimulationConfig(accounts=120, days=2, seed=11, compromised_share=0.08), content_pools(frame, "eval")
    )
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'r.db'}", state_dir=tmp_path, data_dir=DATA_DIR)
    result = replay_sync(events, settings, corpus_resolver(DATA_DIR, PROJECT_ROOT / ".cache"))
    metrics = account_metrics(result, truth, days=2)
    assert metrics["compromised_identities"] >= 5
    assert len(metrics["never_caught"]) <= metrics["compromised_identities"] // 5
    assert metrics["spam_accepted_before_lock"]["median"] <= 3
    assert metrics["false_locks"] <= 1
    assert metrics["message_level"]["roc_auc"] > 0.97
    assert metrics["feedback_dropped"] > 0  # feedback about mail that never left is not applied


def test_a_replay_over_http_against_a_running_server(frame: pd.DataFrame, tmp_path: Path) -> None:
    from tests.conftest import DATA_DIR, server_process
    from training.replay import replay_http

    events, truth = simulate(
        SimulationConfig(accounts=30, days=1, seed=4, compromised_share=0.1), content_pools(frame, "eval")
    )
    with server_process(tmp_path, '{"replayer": ["score", "feedback"]}') as (url, _):
        result = replay_http(events, url, corpus_resolver(DATA_DIR, PROJECT_ROOT / ".cache"), token="replayer")
    messages = sum(1 for e in events if e["type"] == "message")
    assert len(result.outcomes) == messages
    assert result.feedback_applied > 0
    metrics = account_metrics(result, truth, days=1)
    assert metrics["message_level"]["roc_auc"] > 0.97


def test_the_threshold_sweep_trades_delay_for_false_locks(frame: pd.DataFrame, tmp_path: Path) -> None:
    from tests.conftest import DATA_DIR
    from training.replay import plot_sweep, threshold_sweep

    config = SimulationConfig(accounts=60, days=2, seed=8, compromised_share=0.1)
    events, truth = simulate(config, content_pools(frame, "eval"))
    settings = Settings(database_url=f"sqlite:///{tmp_path / 's.db'}", state_dir=tmp_path, data_dir=DATA_DIR)
    unlocked = settings.model_copy(
        update={"relay_policy": settings.relay_policy.model_copy(update={"auto_lock": False})}
    )
    result = replay_sync(events, unlocked, corpus_resolver(DATA_DIR, PROJECT_ROOT / ".cache"))
    rows = threshold_sweep(result, truth, 2, [2.0, 6.0, 10.6, 30.0])
    false_locks = [r["false_locks_per_1000_account_days"] for r in rows]
    p90 = [r["p90_spam_before_lock"] for r in rows]
    missed = [r["never_caught"] for r in rows]
    assert false_locks == sorted(false_locks, reverse=True)
    assert p90 == sorted(p90)
    assert missed == sorted(missed)
    plot_sweep(rows, 10.6, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_campaigns_copies_differ_but_fingerprint_alike(frame: pd.DataFrame) -> None:
    from features.content import content_features
    from features.fingerprint import Fingerprinter
    from features.message import parse_raw
    from tests.conftest import DATA_DIR
    from training.replay import event_content

    events, _ = simulate(SimulationConfig(accounts=200, days=3, seed=8), content_pools(frame, "eval"))
    copies = [e for e in events if e["type"] == "message" and (e["truth"]["episode"] or "").startswith("campaign:")]
    assert len({e["content_ref"] for e in copies}) == 1
    assert len({e["mutation"] for e in copies}) == len(copies)
    resolve = corpus_resolver(DATA_DIR, PROJECT_ROOT / ".cache")
    contents = [event_content(e, resolve) for e in copies[:10]]
    assert len(set(contents)) == 10  # no two copies byte-identical
    fingerprinter = Fingerprinter()
    prints = [fingerprinter.fingerprint(content_features(parse_raw(c)).document) for c in contents]
    assert all(p is not None and prints[0].similarity(p) >= 0.6 for p in prints)
