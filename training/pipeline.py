"""Retraining end to end: dataset, training, evaluation, MLflow run, registration, gate.

`retrain` is what `outguard retrain` (cron) and `outguard train --from-events` run:

1. stream the labelled event log to Parquet (`training.events`);
2. train a candidate on it (`training.train_events`), carrying the champion's text model;
3. score the candidate and the champion on the same newest rows and, given a held-out
   simulator log, replay it with each to count spam before lock and false locks;
4. log the run to MLflow (parameters, metrics, importance plot, model card, bundle) and
   register the bundle as a new version;
5. judge it (`training.gate`): when it passes and promotion is asked for, it becomes
   `champion`; otherwise it is `challenger`.

With no champion yet, the bundle being served (`OUTGUARD_MODEL_DIR`) is registered first
as the baseline champion, so there is always something to compare with and roll back to.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.bundle import ModelBundle, load_bundle, save_bundle
from models.registry import CHALLENGER, CHAMPION, ModelRegistry, RegisteredBundle
from service.settings import Settings
from training.events import DatasetSummary, LabelPolicy, build_event_dataset, read_split
from training.gate import GatePolicy, GateResult, judge
from training.model_card import CARD_FILE, write_model_card
from training.train_events import EventTrainConfig, evaluate_on, train_from_events

IMPORTANCE_PLOT = "feature_importance.png"


@dataclass(slots=True)
class RetrainPlan:
    events: list[Path]
    work_dir: Path
    train: EventTrainConfig
    label_policy: LabelPolicy = field(default_factory=LabelPolicy)
    gate: GatePolicy = field(default_factory=GatePolicy)
    holdout: Path | None = None  # a folder written by `outguard simulate`, never trained on
    as_of: float | None = None
    promote: bool = True


@dataclass(slots=True)
class RetrainOutcome:
    bundle: ModelBundle
    bundle_dir: Path
    dataset: DatasetSummary
    gate: GateResult
    run_id: str
    registered: RegisteredBundle
    champion: RegisteredBundle
    promoted: bool


def _flat(prefix: str, metrics: dict[str, Any]) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and np.isfinite(v)}


def account_figures(replay: dict[str, Any]) -> dict[str, float]:
    """The replay's account-level figures as flat metrics."""
    delay = replay["spam_accepted_before_lock"]
    minutes = replay.get("minutes_to_lock") or {}
    figures = {
        "false_locks": replay["false_locks"],
        "false_locks_per_1000_account_days": replay["false_locks_per_1000_account_days"],
        "spam_accepted_before_lock_median": delay["median"],
        "spam_accepted_before_lock_p90": delay["p90"],
        "spam_accepted_before_lock_max": delay["max"],
        "never_caught": len(replay.get("never_caught", [])),
        "minutes_to_lock_median": minutes.get("median"),
    }
    return {k: float(v) for k, v in figures.items() if v is not None}


def plot_importance(bundle: ModelBundle, path: Path, top: int = 20) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gains = bundle.booster.feature_importance(importance_type="gain")
    order = np.argsort(gains)[::-1][:top][::-1]
    figure, axes = plt.subplots(figsize=(8, 0.3 * len(order) + 1.2))
    axes.barh([bundle.model_features[i] for i in order], gains[order] / max(gains.sum(), 1e-12))
    axes.set_xlabel("share of total gain")
    axes.set_title(f"{bundle.version}: what drives the model")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def current_champion(registry: ModelRegistry, settings: Settings, work_dir: Path) -> tuple[RegisteredBundle, Path]:
    """The champion's registry entry and a local copy of its bundle (registering the served one if none)."""
    entry = registry.by_alias(CHAMPION)
    if entry is None:
        served = load_bundle(settings.model_dir)
        artifacts = [p for p in (settings.model_dir / CARD_FILE,) if p.is_file()]
        run_id = registry.log_run(
            run_name=f"baseline {served.version}",
            bundle_dir=settings.model_dir,
            params={"source": str(settings.model_dir), **served.params},
            metrics=_flat("test_", served.metrics.get("test", {})),
            artifacts=artifacts,
            tags={"outguard.role": "baseline"},
        )
        entry = registry.promote(registry.register(run_id, served.version).version)
    return entry, registry.download(entry, work_dir / f"champion-v{entry.version}")


def _replay(holdout: Path, settings: Settings, bundle_dir: Path, database: Path) -> dict[str, Any]:
    from training.replay import replay_folder

    for stale in database.parent.glob(database.name + "*"):
        stale.unlink()
    # Exactly this bundle: not the registry's champion, no shadow, no polling.
    only = {"model_dir": bundle_dir, "model_source": "dir", "shadow_model": None, "model_poll_s": 0.0}
    return replay_folder(holdout, settings.model_copy(update=only), database)


def retrain(
    plan: RetrainPlan,
    settings: Settings,
    registry: ModelRegistry,
    log: Callable[[str], None] = print,
) -> RetrainOutcome:
    plan.work_dir.mkdir(parents=True, exist_ok=True)
    log(f"dataset: labelling {', '.join(map(str, plan.events))}")
    dataset = build_event_dataset(plan.events, plan.work_dir / "dataset", plan.label_policy, plan.as_of)
    log(f"dataset: {dataset.rows} rows, {dataset.spam} spam, by label source {dataset.by_source}")

    champion_entry, champion_dir = current_champion(registry, settings, plan.work_dir)
    champion = load_bundle(champion_dir)
    log(f"champion: registry version {champion_entry.version} ({champion.version})")

    log(f"training on the {plan.train.engine} engine")
    candidate = train_from_events(dataset.path, champion, plan.train)
    test = read_split(dataset.path, "test")
    candidate.metrics["champion_test"] = evaluate_on(champion, test, plan.train.thresholds)
    candidate.metrics["champion_version"] = champion.version

    candidate_locks = champion_locks = None
    bundle_dir = plan.work_dir / candidate.version
    if bundle_dir.exists():
        shutil.rmtree(bundle_dir)
    save_bundle(candidate, bundle_dir)
    if plan.holdout is not None:
        log(f"held-out replay of {plan.holdout} with the candidate, then the champion")
        replay_db = plan.work_dir / "replays"
        replay_db.mkdir(exist_ok=True)
        candidate_replay = _replay(plan.holdout, settings, bundle_dir, replay_db / "candidate.db")
        champion_replay = _replay(plan.holdout, settings, champion_dir, replay_db / "champion.db")
        candidate_replay["command"] = f"outguard retrain --holdout {plan.holdout}"
        candidate.metrics["account_replay"] = candidate_replay
        candidate.metrics["champion_account_replay"] = account_figures(champion_replay)
        candidate_locks, champion_locks = candidate_replay["false_locks"], champion_replay["false_locks"]

    gate = judge(
        candidate.metrics["test"], candidate.metrics["champion_test"], plan.gate, candidate_locks, champion_locks
    )
    candidate.metrics["gate"] = gate.to_dict()
    save_bundle(candidate, bundle_dir)  # again: its metrics now hold the replays and the gate's verdict
    card = write_model_card(candidate, bundle_dir)
    plot = plot_importance(candidate, plan.work_dir / IMPORTANCE_PLOT)

    metrics = {
        **_flat("test_", candidate.metrics["test"]),
        **_flat("champion_test_", candidate.metrics["champion_test"]),
        "gate_passed": float(gate.passed),
        **{f"dataset_rows_{k}": float(v) for k, v in dataset.rows.items()},
        **{f"dataset_spam_{k}": float(v) for k, v in dataset.spam.items()},
    }
    if "account_replay" in candidate.metrics:
        metrics.update(_flat("holdout_", account_figures(candidate.metrics["account_replay"])))
        metrics.update(_flat("champion_holdout_", candidate.metrics["champion_account_replay"]))
    params = {
        **{k: v for k, v in candidate.params.items() if k != "monotone"},
        "monotone": candidate.params.get("monotone"),
        "engine": plan.train.engine,
        "label_delay_s": plan.label_policy.label_delay_s,
        "lookback_s": plan.label_policy.lookback_s,
        "implicit_ham_weight": plan.label_policy.implicit_ham_weight,
        "gate_metrics": ",".join(plan.gate.metrics),
        "gate_tolerance": plan.gate.tolerance,
        "events": ",".join(map(str, plan.events)),
        "holdout": str(plan.holdout) if plan.holdout else "",
        "champion": champion.version,
    }
    run_id = registry.log_run(
        run_name=candidate.version,
        bundle_dir=bundle_dir,
        params=params,
        metrics=metrics,
        artifacts=[card, plot],
        tags={"outguard.role": "candidate", "outguard.gate": "passed" if gate.passed else "refused"},
    )
    registered = registry.register(run_id, candidate.version)
    promoted = gate.passed and plan.promote
    if promoted:
        registry.promote(registered.version)
    else:
        registry.set_alias(CHALLENGER, registered.version)
    log(f"registered version {registered.version}; gate {'passed' if gate.passed else 'refused'}: {gate.reasons}")
    return RetrainOutcome(
        bundle=candidate,
        bundle_dir=bundle_dir,
        dataset=dataset,
        gate=gate,
        run_id=run_id,
        registered=registry.get(registered.version),
        champion=registry.by_alias(CHAMPION) or champion_entry,
        promoted=promoted,
    )
