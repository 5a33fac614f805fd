"""A small provider, simulated and replayed through the real service once per session: an event log to learn from."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from service.settings import PROJECT_ROOT, Settings
from training.events import DatasetSummary, LabelPolicy, build_event_dataset
from training.replay import corpus_resolver, replay_sync
from training.simulator import SimulationConfig, content_pools, simulate, write_log

# 120 accounts over 3 days: about 5,000 messages, enough spam in every time split.
SIMULATION = SimulationConfig(accounts=120, days=3, seed=8)
LABELS = LabelPolicy(label_delay_s=2 * 3_600, split_shares=(0.6, 0.2, 0.2))


def _settings(tmp: Path, database: Path) -> Settings:
    from tests.conftest import DATA_DIR

    return Settings(
        database_url=f"sqlite:///{database}",
        state_dir=tmp / "state",
        cache_dir=PROJECT_ROOT / ".cache",
        data_dir=DATA_DIR,
    )


@pytest.fixture(scope="session")
def corpus_frame() -> pd.DataFrame:
    from tests.conftest import DATA_DIR, require_corpus
    from training.dataset import build_corpus_dataset

    require_corpus()
    return build_corpus_dataset(DATA_DIR, PROJECT_ROOT / ".cache")


@pytest.fixture(scope="session")
def event_log(corpus_frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("event-log")
    events, _ = simulate(SIMULATION, content_pools(corpus_frame, "train"))
    database = tmp / "events.db"
    settings = _settings(tmp, database)
    replay_sync(events, settings, corpus_resolver(settings.data_dir, settings.cache_dir))
    return database


@pytest.fixture(scope="session")
def event_dataset(event_log: Path, tmp_path_factory: pytest.TempPathFactory) -> DatasetSummary:
    return build_event_dataset([event_log], tmp_path_factory.mktemp("dataset"), LABELS)


@pytest.fixture(scope="session")
def holdout_log(corpus_frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny held-out provider from the evaluation pool, for the gate's replay."""
    config = SimulationConfig(accounts=40, days=1, seed=21, pool="eval")
    events, truth = simulate(config, content_pools(corpus_frame, config.pool))
    return write_log(tmp_path_factory.mktemp("holdout"), events, truth, config)
