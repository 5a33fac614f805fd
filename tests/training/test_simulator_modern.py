"""The simulator with present-day content: who sends what, the held-out templates, and a replay of it."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd
import pytest

from service.settings import PROJECT_ROOT, Settings
from training.modern_corpus import load_manifest
from training.replay import account_metrics, corpus_resolver, event_content, replay_sync
from training.simulator import (
    APP_REPOS,
    KINDS,
    MODERN_KINDS,
    MODERN_PREFIX,
    ModernPools,
    SimulationConfig,
    fingerprint,
    modern_pool_of,
    modern_pools,
    simulate,
)

pytestmark = pytest.mark.corpus

CONFIG = SimulationConfig(accounts=60, days=1, seed=6, content="modern")


@pytest.fixture(scope="module")
def modern_root() -> Path:
    from tests.conftest import DATA_DIR
    from training.corpora import CorpusMissing
    from training.modern_corpus import ensure_modern_extracted

    try:
        return ensure_modern_extracted(DATA_DIR, PROJECT_ROOT / ".cache")
    except CorpusMissing:
        if os.environ.get("CI") == "true":
            pytest.fail("modern-train is missing (CI must have it)")
        pytest.skip("modern-train not found")


@pytest.fixture(scope="module")
def manifest(modern_root: Path) -> pd.DataFrame:
    return load_manifest(modern_root)


@pytest.fixture(scope="module")
def pools(corpus_frame: pd.DataFrame, modern_root: Path) -> ModernPools:
    return modern_pools(corpus_frame, modern_root, "eval")


@pytest.fixture(scope="module")
def simulation(pools: ModernPools) -> tuple[list[dict], list[dict]]:
    return simulate(CONFIG, pools)


def test_a_modern_provider_is_deterministic_and_has_every_sender_and_fraud(
    pools: ModernPools, simulation: tuple[list[dict], list[dict]]
) -> None:
    events, truth = simulation
    again, _ = simulate(CONFIG, pools)
    other, _ = simulate(SimulationConfig(accounts=60, days=1, seed=7, content="modern"), pools)
    assert fingerprint(events) == fingerprint(again) != fingerprint(other)
    assert {a["kind"] for a in truth} == set(MODERN_KINDS)
    episodes = Counter(e["kind"] for a in truth for e in a["episodes"])
    assert episodes["fraud_signup"] >= 1
    messages = [e for e in events if e["type"] == "message"]
    assert all(e["truth"]["episode"] for e in messages if e["truth"]["spam"])
    sources = defaultdict(set)
    for e in messages:
        sources[(e["truth"]["kind"], e["truth"]["spam"])].add(e["content_ref"].startswith(MODERN_PREFIX))
    assert sources[("personal", 0)] == {False}  # no present-day personal ham: the corpus's
    assert all(sources[(kind, 0)] == {True} for kind in ("shop", "saas", "newsletter", "wordpress", "forum"))
    assert all(modern == {True} for (_, spam), modern in sources.items() if spam)  # present-day spam only
    # A fraudulent sign-up is new, and spams from its first message.
    for account in truth:
        for episode in account["episodes"]:
            if episode["kind"] == "fraud_signup":
                own = [e for e in messages if e["truth"]["account"] == account["account"]]
                assert own and all(e["truth"]["spam"] for e in own)
                assert account["kind"] == "new_account" and episode["start"] >= account["active_from"]


def test_a_shop_sends_only_its_own_few_templates(
    manifest: pd.DataFrame, simulation: tuple[list[dict], list[dict]]
) -> None:
    events, truth = simulation
    template = dict(zip(MODERN_PREFIX + manifest["file"], manifest["template"], strict=True))
    repo = dict(zip(MODERN_PREFIX + manifest["file"], manifest["source_repo"], strict=True))
    sent: dict[str, set[str]] = defaultdict(set)
    for e in events:
        if e["type"] == "message" and not e["truth"]["spam"] and e["content_ref"].startswith(MODERN_PREFIX):
            sent[e["truth"]["account"]].add(e["content_ref"])
    senders = [a for a in truth if a["kind"] in ("shop", "saas", "wordpress")]
    assert senders
    for account in senders:
        refs = sent[account["account"]]
        assert refs, account
        assert {repo[r] for r in refs} == {account["repo"]}
        assert account["repo"] in APP_REPOS[account["kind"]]
        assert 1 <= len({template[r] for r in refs}) <= 5
    assert any(len({template[r] for r in sent[a["account"]]}) >= 2 for a in senders)
    wordpress = [a for a in truth if a["kind"] == "wordpress"]
    assert all(a["account"].endswith("wp-content/plugins/woocommerce/includes/class-wc-emails.php") for a in wordpress)


def test_evaluation_and_training_templates_never_meet(
    corpus_frame: pd.DataFrame, modern_root: Path, manifest: pd.DataFrame, pools: ModernPools
) -> None:
    from training.modern_corpus import template_pools

    training = modern_pools(corpus_frame, modern_root, "train")
    evaluation_templates = {t for repo in pools.templates.values() for t in repo}
    training_templates = {t for repo in training.templates.values() for t in repo}
    assert not evaluation_templates & training_templates
    assert not set(pools.spam) & set(training.spam)
    assert set(pools.templates) == set(training.templates) == set(manifest.loc[manifest["label"] == 0, "source_repo"])
    # The same split the shipped model holds out.
    held = template_pools(manifest)
    assert all(held[t] == "eval" for t in evaluation_templates)
    assert (modern_pool_of(manifest) == manifest["template"].map(held)).all()
    # Every project some kind of sender runs; each spam source in both pools.
    assert set(pools.templates) <= {r for repos in APP_REPOS.values() for r in repos}
    source = dict(zip(MODERN_PREFIX + manifest["file"], manifest["source_repo"], strict=True))
    assert {source[r] for r in pools.spam} == {source[r] for r in training.spam}


def test_the_default_content_is_the_corpora(corpus_frame: pd.DataFrame) -> None:
    from training.simulator import content_pools

    events, truth = simulate(SimulationConfig(accounts=30, days=1, seed=3), content_pools(corpus_frame, "eval"))
    assert {a["kind"] for a in truth} <= set(KINDS)
    assert not any(e["content_ref"].startswith(MODERN_PREFIX) for e in events if e["type"] == "message")
    with pytest.raises(TypeError):
        simulate(SimulationConfig(accounts=30, days=1, content="modern"), content_pools(corpus_frame, "eval"))


def test_a_tiny_modern_log_replays_through_the_service(
    simulation: tuple[list[dict], list[dict]], tmp_path: Path
) -> None:
    from tests.conftest import DATA_DIR

    events, truth = simulation
    # A few senders' first messages: a shop, a WordPress script, a mailbox and a fraudulent sign-up.
    fraud = next(a for a in truth if any(e["kind"] == "fraud_signup" for e in a["episodes"]))
    kept = [fraud, *(next(a for a in truth if a["kind"] == k) for k in ("shop", "wordpress", "personal"))]
    names = {a["account"] for a in kept}
    budget: Counter[str] = Counter()
    tiny, ids = [], set()
    for e in events:
        if e["type"] == "message" and e["truth"]["account"] in names and budget[e["truth"]["account"]] < 20:
            budget[e["truth"]["account"]] += 1
            ids.add(e["message"]["message_id"])
            tiny.append(e)
        elif e["type"] == "feedback" and e["event"]["message_id"] in ids:
            tiny.append(e)
    resolve = corpus_resolver(DATA_DIR, PROJECT_ROOT / ".cache")
    shop = next(e for e in tiny if e["type"] == "message" and e["truth"]["kind"] == "shop")
    assert event_content(shop, resolve) == event_content(shop, resolve)  # one shop, one mailer
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'r.db'}", state_dir=tmp_path, data_dir=DATA_DIR)
    result = replay_sync(tiny, settings, resolve)
    assert len(result.outcomes) == len(ids)
    metrics = account_metrics(result, kept, days=1)
    assert metrics["fraud_signups"]["identities"] == 1
    assert "fraud_signup" in metrics["by_episode"]
    assert metrics["compromised_identities"] == 0  # a fraudulent sign-up is not a hijacked account
    assert metrics["legitimate_accounts"] == 3
