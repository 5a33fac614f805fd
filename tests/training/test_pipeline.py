"""Retraining end to end against a real MLflow store: runs, registered versions, the gate, promote and rollback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from models.registry import CHALLENGER, CHAMPION, PREVIOUS, ModelRegistry
from service.cli import app
from service.settings import PROJECT_ROOT, Settings
from tests.training.conftest import LABELS
from training.gate import GatePolicy
from training.pipeline import RetrainOutcome, RetrainPlan, retrain
from training.train_events import EventTrainConfig

THRESHOLDS = {"hold": 0.99, "reject": 0.999}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    from tests.conftest import DATA_DIR

    return Settings(state_dir=tmp_path_factory.mktemp("state"), cache_dir=PROJECT_ROOT / ".cache", data_dir=DATA_DIR)


@pytest.fixture(scope="module")
def registry(settings: Settings) -> ModelRegistry:
    return settings.model_registry()


@pytest.fixture(scope="module")
def outcome(event_log: Path, holdout_log: Path, settings: Settings, registry: ModelRegistry) -> RetrainOutcome:
    plan = RetrainPlan(
        events=[event_log],
        work_dir=settings.state_dir / "training",
        train=EventTrainConfig(thresholds=THRESHOLDS, max_rounds=200),
        label_policy=LABELS,
        gate=GatePolicy(),
        holdout=holdout_log,
    )
    return retrain(plan, settings, registry, log=lambda _: None)


def test_the_served_model_becomes_the_first_champion_and_the_candidate_is_judged(
    outcome: RetrainOutcome, registry: ModelRegistry
) -> None:
    versions = {v.version: v for v in registry.versions()}
    assert sorted(versions) == ["1", "2"]
    assert versions["1"].bundle_version.startswith("corpus-")
    assert versions["2"].bundle_version == outcome.bundle.version
    expected = CHAMPION if outcome.gate.passed else CHALLENGER
    assert expected in versions["2"].aliases
    assert (CHAMPION in versions["1"].aliases) is not outcome.gate.passed
    replay_reason = next(r for r in outcome.gate.reasons if "false locks" in r)
    assert "held-out replay" in replay_reason


def test_the_run_holds_metrics_card_plot_and_bundle(outcome: RetrainOutcome, registry: ModelRegistry) -> None:
    run = registry.client.get_run(outcome.run_id)
    for name in ("test_roc_auc", "champion_test_roc_auc", "holdout_false_locks", "champion_holdout_false_locks"):
        assert name in run.data.metrics, name
    assert run.data.metrics["gate_passed"] == float(outcome.gate.passed)
    assert run.data.params["engine"] == "local"
    top = {a.path for a in registry.client.list_artifacts(outcome.run_id)}
    assert {"MODEL_CARD.md", "feature_importance.png", "bundle"} <= top
    bundle_files = {Path(a.path).name for a in registry.client.list_artifacts(outcome.run_id, "bundle")}
    assert {"bundle.json", "booster.txt", "text_model.joblib", "MODEL_CARD.md"} <= bundle_files


def test_promote_and_rollback_move_the_champion(outcome: RetrainOutcome, registry: ModelRegistry) -> None:
    registry.promote("2")
    assert registry.by_alias(CHAMPION).version == "2"
    assert registry.by_alias(PREVIOUS).version == "1"
    registry.rollback()
    assert registry.by_alias(CHAMPION).version == "1"
    assert registry.by_alias(PREVIOUS).version == "2"


def test_retrain_exits_1_when_the_gate_refuses(
    outcome: RetrainOutcome, event_log: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With version 2 champion, a candidate trained again on the same data is its twin: not better.
    Settings.model_registry(settings).promote("2")
    monkeypatch.setenv("OUTGUARD_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("OUTGUARD_DATA_DIR", str(settings.data_dir))
    args = ["retrain", "--from-events", str(event_log), "--label-delay", "2h", "--max-rounds", "200"]
    args += ["--split", "0.6,0.2,0.2", "--work-dir", str(settings.state_dir / "again")]
    result = CliRunner().invoke(app, args, env={**os.environ, "COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    assert "gate refused" in result.output
    assert Settings.model_registry(settings).by_alias(CHAMPION).version == "2"
