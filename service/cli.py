"""The `outguard` command line: serve, train, evaluate, simulate, replay, signatures (models: `cli_models`)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from service import cli_models
from service.settings import Settings

app = typer.Typer(help="outguard: outbound-spam scoring for relays.", no_args_is_help=True, add_completion=False)
console = Console()
cli_models.register(app, console)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: OUTGUARD_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: OUTGUARD_PORT)")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes")] = 1,
) -> None:
    """Serve the HTTP API."""
    import uvicorn

    settings = Settings()
    if workers > 1 and not settings.redis_url:
        # Windows and account evidence live in each process's memory: N workers would
        # each see a 1/N share of an account's traffic.
        console.print(
            "[red]--workers > 1 needs shared account state (the Redis backend); with in-process state "
            "run one worker per instance.[/red]"
        )
        raise typer.Exit(2)
    host = host or settings.host
    port = port or settings.port
    if not settings.auth_enabled and not _is_loopback(host):
        console.print(
            f"[red]Refusing to bind {host}: no tokens are configured, so anyone who can reach it could "
            "use the API. Set OUTGUARD_TOKENS (see README) or bind 127.0.0.1.[/red]"
        )
        raise typer.Exit(2)
    if not settings.auth_enabled:
        console.print(f"[yellow]No OUTGUARD_TOKENS set: auth is off, serving on loopback {host} only.[/yellow]")
    uvicorn.run(
        "service.app:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        access_log=False,
    )


def _settings_with(model_dir: Path | None, data_dir: Path | None) -> Settings:
    settings = Settings()
    updates = {k: v for k, v in {"model_dir": model_dir, "data_dir": data_dir}.items() if v is not None}
    return settings.model_copy(update=updates)


@app.command()
def train(
    output: Annotated[Path | None, typer.Option(help="Bundle directory (default: OUTGUARD_MODEL_DIR)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Corpora folder (default: OUTGUARD_DATA_DIR)")] = None,
    max_rows: Annotated[int | None, typer.Option(help="Subsample to this many messages (quick runs)")] = None,
    no_cache: Annotated[bool, typer.Option(help="Re-extract features instead of using the cache")] = False,
    modern: Annotated[bool, typer.Option(help="Train on modern-train too (present-day mail)")] = True,
    held_out_projects: Annotated[
        bool, typer.Option(help="Measure present-day mail with whole source projects held out (5 extra trainings)")
    ] = True,
    from_events: cli_models.EventsOption = None,
    label_delay: cli_models.LabelDelayOption = "2d",
    engine: cli_models.EngineOption = "local",
    scheduler: cli_models.SchedulerOption = None,
    holdout: cli_models.HoldoutOption = None,
    work_dir: cli_models.WorkDirOption = None,
    max_rounds: cli_models.RoundsOption = 1000,
    split: cli_models.SplitOption = "0.7,0.15,0.15",
    implicit_ham_weight: cli_models.ImplicitHamOption = 1.0,
) -> None:
    """Train the content model on the public corpora and write a bundle with its model card.

    With --from-events: train on the service's own events instead, log the run to MLflow
    and register the model as `challenger` (`outguard retrain` also promotes it).
    """
    if from_events:
        options = cli_models.PipelineOptions(
            from_events, label_delay, engine, scheduler, holdout, work_dir, max_rounds, split, implicit_ham_weight
        )
        cli_models.run_pipeline(console, options, promote=False)
        return
    from training.dataset import build_corpus_dataset
    from training.modern_dataset import build_modern_dataset, shipped_training_rows
    from training.train import TrainConfig, train_and_save

    settings = _settings_with(output, data_dir)
    corpus = build_corpus_dataset(settings.data_dir, settings.cache_dir, use_cache=not no_cache)
    modern_rows = (
        build_modern_dataset(settings.data_dir, settings.cache_dir, use_cache=not no_cache) if modern else None
    )
    frame = shipped_training_rows(corpus, modern_rows) if modern_rows is not None else corpus
    config = TrainConfig(thresholds=_thresholds(settings), max_rows=max_rows)
    bundle = train_and_save(frame, config, settings.model_dir, console)
    if modern_rows is not None and held_out_projects:
        from models.bundle import save_bundle
        from training.model_card import write_model_card
        from training.modern_eval import grouped_evaluation

        console.log("present-day mail: scoring each source project with a model that never saw it")
        bundle.metrics["modern_heldout"] = grouped_evaluation(corpus, modern_rows, config, console)
        save_bundle(bundle, settings.model_dir)
        write_model_card(bundle, settings.model_dir)
    console.print(f"wrote bundle [bold]{bundle.version}[/bold] to {settings.model_dir}")
    _print_metrics(bundle.metrics["test"], "held-out test (as trained)")


@app.command()
def evaluate(
    model_dir: Annotated[Path | None, typer.Option(help="Bundle directory (default: OUTGUARD_MODEL_DIR)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Corpora folder (default: OUTGUARD_DATA_DIR)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """Re-measure a bundle's model-card figures on the held-out test split."""
    from models.bundle import load_bundle
    from training.dataset import build_corpus_dataset
    from training.evaluate import evaluate_bundle

    settings = _settings_with(model_dir, data_dir)
    bundle = load_bundle(settings.model_dir)
    frame = build_corpus_dataset(settings.data_dir, settings.cache_dir)
    metrics = evaluate_bundle(bundle, frame, _thresholds(settings))
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    _print_metrics(metrics, f"{bundle.version}: held-out test (re-measured)", bundle.metrics.get("test"))


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Folder for events.jsonl and truth.json")] = Path("var/sim"),
    accounts: Annotated[int, typer.Option(help="Accounts")] = 2_000,
    days: Annotated[int, typer.Option(help="Days")] = 7,
    relays: Annotated[int, typer.Option(help="Relays")] = 3,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same log")] = 1,
    pool: Annotated[str, typer.Option(help="Content pool: eval (held out from training) or train")] = "eval",
    content: Annotated[
        str, typer.Option(help="corpus (the 2007 corpora) or modern (present-day mail: shops, SaaS, phishing)")
    ] = "corpus",
) -> None:
    """Simulate a hosting provider's outbound traffic, compromises and feedback as a replayable log."""
    import time

    from training.simulator import CONTENTS, SimulationConfig, load_pools, simulate, write_log

    if pool not in ("eval", "train"):
        raise typer.BadParameter("pool is eval or train")
    if content not in CONTENTS:
        raise typer.BadParameter(f"content is one of {', '.join(CONTENTS)}")
    settings = Settings()
    config = SimulationConfig(accounts=accounts, days=days, relays=relays, seed=seed, pool=pool, content=content)
    pools = load_pools(config, settings.data_dir, settings.cache_dir)
    started = time.perf_counter()
    events, truth = simulate(config, pools)
    write_log(out, events, truth, config)
    messages = sum(1 for e in events if e["type"] == "message")
    console.print(
        f"{len(events):,} events ({messages:,} messages) for {accounts:,} accounts over {days} days "
        f"in {time.perf_counter() - started:.1f}s -> {out}"
    )


@app.command()
def replay(
    log: Annotated[Path, typer.Argument(help="A folder written by `outguard simulate`")] = Path("var/sim"),
    auto_lock: Annotated[bool, typer.Option(help="Lock accounts once recommended")] = True,
    url: Annotated[str | None, typer.Option(help="Replay over HTTP against this running server")] = None,
    token: Annotated[str | None, typer.Option(help="Bearer token for --url (scopes score and feedback)")] = None,
    sweep: Annotated[
        Path | None, typer.Option(help="Also sweep the lock threshold (auto-lock off) and plot it to this PNG")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
    keep_events: Annotated[
        Path | None,
        typer.Option(help="Keep the replay's event log (SQLite) here, for `outguard train --from-events`"),
    ] = None,
) -> None:
    """Replay a simulated log through the service; report per-account metrics."""
    import tempfile

    import numpy as np
    import orjson
    from rich.progress import Progress

    from training.replay import (
        account_metrics,
        corpus_resolver,
        plot_sweep,
        replay_http,
        replay_sync,
        threshold_sweep,
    )

    truth = json.loads((log / "truth.json").read_text())
    days = truth["config"]["days"]
    events = [orjson.loads(line) for line in (log / "events.jsonl").open("rb")]
    base = Settings()
    resolve = corpus_resolver(base.data_dir, base.cache_dir)

    def run(lock: bool, label: str, keep: Path | None = None):
        with (
            tempfile.TemporaryDirectory(prefix="outguard-replay-") as tmp,
            Progress(console=console, transient=True) as bar,
        ):
            task = bar.add_task(label, total=len(events))
            advance = lambda n: bar.update(task, completed=n + 1)  # noqa: E731
            if url is not None:
                return replay_http(events, url, resolve, token, advance)
            policy = base.relay_policy.model_copy(update={"auto_lock": lock})
            database = keep or Path(tmp) / "replay.db"
            if database.exists():
                raise typer.BadParameter(f"{database} exists; --keep-events writes a new event log")
            database.parent.mkdir(parents=True, exist_ok=True)
            settings = base.model_copy(
                update={"database_url": f"sqlite:///{database}", "state_dir": Path(tmp), "relay_policy": policy}
            )
            return replay_sync(events, settings, resolve, advance)

    metrics = account_metrics(run(auto_lock, "replaying", keep_events), truth["accounts"], days)
    if sweep is not None:
        if url is not None:
            raise typer.BadParameter("--sweep needs the in-process replay (the evidence is not in the API)")
        unlocked = run(False, "replaying with auto-lock off, for the sweep")
        thresholds = np.round(np.linspace(4.0, 22.0, 13), 1)
        rows = threshold_sweep(unlocked, truth["accounts"], days, thresholds)
        plot_sweep(rows, base.lock_threshold, sweep)
        metrics["threshold_sweep"] = rows
        if not as_json:
            console.print(f"sweep plotted to {sweep}")
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    table = Table(title=f"replay of {log} (auto-lock {'on' if auto_lock else 'off'})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if key != "falsely_locked":
            table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    console.print(table)


@app.command()
def report(
    since: Annotated[str, typer.Option(help="Start: a duration back from --until (24h, 7d) or a time")] = "24h",
    until: Annotated[str | None, typer.Option(help="End: unix seconds or RFC 3339 (default: now)")] = None,
    to: Annotated[list[str] | None, typer.Option(help="Mail the digest to this address (repeatable)")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for the files (default: STATE_DIR/reports)")] = None,
) -> None:
    """A digest of suspicious and locked accounts: mailed over SMTP, or written as text and HTML."""
    import re
    import time

    from service.api.reports import parse_time
    from service.container import open_database
    from service.errors import InvalidInput
    from service.reports.digest import (
        SmtpTarget,
        build_digest,
        digest_message,
        render_digest,
        send_digest,
        write_digest,
    )

    settings = Settings()
    try:
        end = parse_time(until, "until", time.time())
        relative = re.fullmatch(r"\d+(\.\d+)?[smhd]", since.strip().lower()) is not None
        start = end - cli_models.parse_duration(since) if relative else parse_time(since, "since", 0.0)
    except InvalidInput as error:
        raise typer.BadParameter(error.detail) from None
    if start >= end:
        raise typer.BadParameter(f"--since ({since}) must be before --until")
    database = open_database(settings)
    try:
        digest = database.read_now(lambda c: build_digest(c, start, end, settings.hold_threshold))
    finally:
        database.close()
    subject, text, html = render_digest(digest)
    if to and settings.smtp_host:
        target = SmtpTarget(
            host=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
            starttls=settings.smtp_starttls,
            sender=settings.smtp_from,
        )
        send_digest(digest_message(subject, text, html, settings.smtp_from, to), target)
        console.print(f'sent "{subject}" to {", ".join(to)} through {settings.smtp_host}:{settings.smtp_port}')
        return
    if to:
        console.print("[yellow]OUTGUARD_SMTP_HOST is not set: writing the digest to files instead.[/yellow]")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(end))
    for path in write_digest(out or settings.state_dir / "reports", subject, text, html, stamp):
        console.print(f"wrote {path}")


db_app = typer.Typer(help="The database: schema migrations and retention.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database of OUTGUARD_DATABASE_URL to this release's schema (run before starting replicas)."""
    from sqlalchemy import create_engine

    from service.stores.database import normalise_url
    from service.stores.schema import current_revision, head_revision, upgrade

    settings = Settings()
    engine = create_engine(normalise_url(settings.database_url))
    try:
        with engine.connect() as connection:
            before = current_revision(connection)
        upgrade(engine)
    finally:
        engine.dispose()
    console.print(f"schema {before or 'none'} -> {head_revision()}")


@db_app.command("current")
def db_current() -> None:
    """The schema revision of the database, and the one this release needs."""
    from sqlalchemy import create_engine

    from service.stores.database import normalise_url
    from service.stores.schema import current_revision, head_revision

    engine = create_engine(normalise_url(Settings().database_url))
    try:
        with engine.connect() as connection:
            current = current_revision(connection)
    finally:
        engine.dispose()
    console.print(f"database at {current or 'none'}, this release needs {head_revision()}")
    if current != head_revision():
        raise typer.Exit(1)


@db_app.command("maintain")
def db_maintain() -> None:
    """Make the coming days' partitions; delete what is past OUTGUARD_EVENT_RETENTION_DAYS (done hourly by serve)."""
    import asyncio

    from service.container import open_database
    from service.stores.retention import run_maintenance

    settings = Settings()
    database = open_database(settings)
    try:
        result = asyncio.run(run_maintenance(database, settings.event_retention_days))
    finally:
        database.close()
    console.print(
        f"{len(result.created)} partitions made, {len(result.dropped)} dropped, {result.deleted_messages:,} messages "
        f"and {result.deleted_feedback:,} feedback events past {settings.event_retention_days:g} days deleted"
    )


signatures_app = typer.Typer(help="The known-spam signature database.", no_args_is_help=True)
app.add_typer(signatures_app, name="signatures")


@signatures_app.command("import")
def import_signatures(
    paths: Annotated[list[Path], typer.Argument(help="mbox files, Maildirs, folders of messages, or messages")],
    actor: Annotated[str, typer.Option(help="Who imports them (kept with each signature)")] = "import",
    note: Annotated[str | None, typer.Option(help="A note kept with each signature")] = None,
) -> None:
    """Add known spam from mail files to the signature database (source `corpus`).

    Writes to the database of OUTGUARD_DATABASE_URL; a running service loads the new
    signatures at its next start (POST /v1/signatures adds to a running one).
    """
    import asyncio
    import time

    from rich.progress import Progress

    from service.container import open_database
    from service.fingerprints.importer import NotMail, import_messages, messages_in
    from service.fingerprints.service import FingerprintService
    from service.stores.signatures import SqlSignatureStore

    settings = Settings()
    if not settings.fingerprints:
        console.print("[red]Content fingerprints are switched off (OUTGUARD_FINGERPRINTS=false).[/red]")
        raise typer.Exit(2)
    database = open_database(settings)
    try:
        service = FingerprintService(settings.fingerprint_policy, SqlSignatureStore(database))
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("importing", total=None)
            result = asyncio.run(
                import_messages(
                    service,
                    messages_in(paths),
                    actor=actor,
                    at=time.time(),
                    note=note,
                    on_message=lambda r: bar.update(task, completed=r.read),
                )
            )
    except NotMail as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from error
    finally:
        database.close()
    console.print(
        f"{result.read:,} messages read: {result.added:,} signatures added, {result.refreshed:,} already held "
        f"(refreshed), {result.too_short:,} too short to fingerprint; "
        f"{len(service.signatures):,} live signatures of {settings.signature_capacity:,}."
    )


def _thresholds(settings: Settings) -> dict[str, float]:
    return {"hold": settings.hold_threshold, "reject": settings.reject_threshold}


def _print_metrics(metrics: dict[str, float], title: str, card: dict[str, float] | None = None) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    if card is not None:
        table.add_column("model card", justify="right")
    for key, value in metrics.items():
        cells = [key, f"{value:.4f}" if isinstance(value, float) else str(value)]
        if card is not None:
            known = card.get(key)
            cells.append(f"{known:.4f}" if isinstance(known, float) else str(known if known is not None else ""))
        table.add_row(*cells)
    console.print(table)


if __name__ == "__main__":
    app()
