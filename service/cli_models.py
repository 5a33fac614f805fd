"""The model lifecycle commands: `train --from-events`, `retrain`, `promote`, `rollback`, `models`.

They share one pipeline (`training.pipeline.retrain`); `retrain` promotes when the gate
passes and exits 1 when it refuses, so cron can alert on it.
"""

from __future__ import annotations

import importlib.util
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from service.settings import Settings

if TYPE_CHECKING:
    from models.registry import ModelRegistry, RegisteredBundle

DURATION_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}


def parse_duration(text: str) -> float:
    """`90s`, `30m`, `12h`, `2d`, or plain seconds."""
    text = text.strip().lower()
    try:
        unit = DURATION_UNITS.get(text[-1:], 1)
        seconds = float(text[:-1] if text[-1:] in DURATION_UNITS else text) * unit
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise typer.BadParameter(f"{text!r} is not a duration such as 90s, 30m, 12h or 2d")
    return seconds


EventsOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--from-events", help="Event logs (SQLite) to learn from; repeat for several (default: the service's)"
    ),
]
LabelDelayOption = Annotated[str, typer.Option(help="Label a message once this has passed since it was scored")]
EngineOption = Annotated[str, typer.Option(help="local, or dask (LightGBM's Dask interface)")]
SchedulerOption = Annotated[
    str | None, typer.Option(help="Dask scheduler address (default with --engine dask: a LocalCluster)")
]
HoldoutOption = Annotated[
    Path | None,
    typer.Option(help="A folder written by `outguard simulate`, replayed with both models for account figures"),
]
WorkDirOption = Annotated[Path | None, typer.Option(help="Where datasets and bundles go (default: STATE_DIR/training)")]
RoundsOption = Annotated[int, typer.Option(help="Most boosting rounds (early stopping picks fewer)", min=1)]
ImplicitHamOption = Annotated[
    float,
    typer.Option(help="Weight of mail nobody objected to (labelled ham) against 1 for every other label", min=0.0),
]
SplitOption = Annotated[str, typer.Option(help="Shares of train, validation and test, oldest first")]


def parse_split(text: str) -> tuple[float, float, float]:
    try:
        shares = tuple(float(part) for part in text.split(","))
    except ValueError:
        shares = ()
    if len(shares) != 3 or any(s <= 0 for s in shares) or abs(sum(shares) - 1.0) > 1e-6:
        raise typer.BadParameter(
            f"--split takes three positive shares that add up to 1, such as 0.7,0.15,0.15 (got {text!r})"
        )
    return shares  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class PipelineOptions:
    """What `retrain` and `train --from-events` were asked for on the command line."""

    events: list[Path] | None
    label_delay: str
    engine: str
    scheduler: str | None
    holdout: Path | None
    work_dir: Path | None
    max_rounds: int
    split: str
    implicit_ham_weight: float


def run_pipeline(console: Console, options: PipelineOptions, promote: bool) -> bool:
    """Run `training.pipeline.retrain` and print the comparison; whether the gate passed."""
    from training.events import LabelPolicy
    from training.gate import GatePolicy
    from training.pipeline import RetrainPlan, retrain
    from training.train_events import EventTrainConfig

    settings = Settings()
    if options.engine not in ("local", "dask"):
        raise typer.BadParameter(f"--engine is local or dask, not {options.engine!r}")
    if options.engine == "dask" and importlib.util.find_spec("distributed") is None:
        raise typer.BadParameter("--engine dask needs the training extra: pip install 'outguard[training]'")
    sources = options.events or [settings.sqlite_path]
    for source in sources:
        if not source.is_file():
            raise typer.BadParameter(f"no event log at {source}")
    plan = RetrainPlan(
        events=sources,
        work_dir=options.work_dir or settings.state_dir / "training" / time.strftime("%Y%m%d-%H%M%S"),
        train=EventTrainConfig(
            thresholds={"hold": settings.hold_threshold, "reject": settings.reject_threshold},
            engine=options.engine,  # type: ignore[arg-type]
            scheduler=options.scheduler,
            max_rounds=options.max_rounds,
        ),
        label_policy=LabelPolicy(
            label_delay_s=parse_duration(options.label_delay),
            split_shares=parse_split(options.split),
            implicit_ham_weight=options.implicit_ham_weight,
        ),
        gate=GatePolicy(metrics=tuple(settings.gate_metrics), tolerance=settings.gate_tolerance),
        holdout=options.holdout,
        promote=promote,
    )
    outcome = retrain(plan, settings, settings.model_registry(), log=console.log)  # NotEnoughLabels: one line
    table = Table(title=f"{outcome.bundle.version} against champion {outcome.bundle.metrics['champion_version']}")
    table.add_column("held-out test")
    table.add_column("candidate", justify="right")
    table.add_column("champion", justify="right")
    for key in ("n", "n_spam", "roc_auc", "pr_auc", "recall_at_fpr_0.1pct", "recall_at_fpr_1pct", "ece"):
        new, old = outcome.bundle.metrics["test"].get(key), outcome.bundle.metrics["champion_test"].get(key)
        table.add_row(key, *(f"{v:.4f}" if isinstance(v, float) else str(v) for v in (new, old)))
    console.print(table)
    verdict = "[green]passed[/green]" if outcome.gate.passed else "[red]refused[/red]"
    console.print(f"gate {verdict}: " + "; ".join(outcome.gate.reasons))
    role = "champion" if outcome.promoted else "challenger"
    console.print(
        f"bundle in {outcome.bundle_dir}; MLflow run {outcome.run_id}; registered as version "
        f"{outcome.registered.version} ({role})"
    )
    return outcome.gate.passed


def register(app: typer.Typer, console: Console) -> None:
    @app.command()
    def retrain(
        events: EventsOption = None,
        label_delay: LabelDelayOption = "2d",
        engine: EngineOption = "local",
        scheduler: SchedulerOption = None,
        holdout: HoldoutOption = None,
        work_dir: WorkDirOption = None,
        max_rounds: RoundsOption = 1000,
        split: SplitOption = "0.7,0.15,0.15",
        implicit_ham_weight: ImplicitHamOption = 1.0,
    ) -> None:
        """Build, train, evaluate, gate and register; promote when the gate passes (exit 1 when it refuses)."""
        options = PipelineOptions(
            events, label_delay, engine, scheduler, holdout, work_dir, max_rounds, split, implicit_ham_weight
        )
        passed = run_pipeline(console, options, promote=True)
        if not passed:
            raise typer.Exit(1)

    def change_champion(change: Callable[[ModelRegistry], RegisteredBundle], done: str) -> None:
        entry = change(Settings().model_registry())  # a RegistryError is one line (service.cli_errors)
        console.print(f"{done}: version {entry.version} ({entry.bundle_version}) is champion")

    @app.command()
    def promote(version: Annotated[str, typer.Argument(help="Registry version to make champion")]) -> None:
        """Make a registered version champion by hand (the old one becomes previous-champion)."""
        change_champion(lambda registry: registry.promote(version), "promoted")

    @app.command()
    def rollback() -> None:
        """Make the previous champion champion again."""
        change_champion(lambda registry: registry.rollback(), "rolled back")

    @app.command()
    def models() -> None:
        """The registered versions, newest first, with their aliases."""
        registry = Settings().model_registry()
        table = Table(title=f"registered model {registry.model_name} ({registry.tracking_uri})")
        for column in ("version", "bundle", "aliases", "run"):
            table.add_column(column)
        for entry in registry.versions():
            table.add_row(entry.version, entry.bundle_version, ", ".join(entry.aliases), entry.run_id or "")
        console.print(table)
