"""The `outguard` command line: serve, train, evaluate, simulate, replay, signatures (models: `cli_models`)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from service import cli_models
from service.cli_errors import CliGroup
from service.settings import Settings

if TYPE_CHECKING:
    from pydantic import BaseModel
    from pydantic.fields import FieldInfo
    from pydantic_settings import BaseSettings

# A user error (a typo in a path, a bad option value, an unreachable database) is one line, never a
# traceback: `service.cli_errors.CliGroup`.
app = typer.Typer(
    help="outguard: outbound-spam scoring for relays.", no_args_is_help=True, add_completion=False, cls=CliGroup
)
console = Console()
cli_models.register(app, console)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"outguard {version('outguard')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            print("outguard (not installed: run `make install`)")
        raise typer.Exit()


@app.callback()
def main(
    show_version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit", callback=_print_version, is_eager=True),
    ] = False,
) -> None:
    """outguard: outbound-spam scoring for relays."""


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
    port: Annotated[int | None, typer.Option(help="Port (default: OUTGUARD_PORT)", min=1, max=65_535)] = None,
    workers: Annotated[int, typer.Option(help="Worker processes", min=1)] = 1,
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


@contextmanager
def _steps() -> Iterator[Callable[[str], None]]:
    """A progress line for a command made of a few long steps: `step("training")` starts the next one."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("starting", total=None)

        def step(description: str) -> None:
            bar.update(task, description=description)
            console.log(description)

        yield step


def _settings_with(model_dir: Path | None, data_dir: Path | None) -> Settings:
    settings = Settings()
    updates = {k: v for k, v in {"model_dir": model_dir, "data_dir": data_dir}.items() if v is not None}
    return settings.model_copy(update=updates)


@app.command()
def train(
    output: Annotated[Path | None, typer.Option(help="Bundle directory (default: OUTGUARD_MODEL_DIR)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Corpora folder (default: OUTGUARD_DATA_DIR)")] = None,
    max_rows: Annotated[int | None, typer.Option(help="Subsample to this many messages (quick runs)", min=1)] = None,
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
    with _steps() as step:
        step("reading the corpora")
        corpus = build_corpus_dataset(settings.data_dir, settings.cache_dir, use_cache=not no_cache)
        modern_rows = None
        if modern:
            step("reading present-day mail")
            modern_rows = build_modern_dataset(settings.data_dir, settings.cache_dir, use_cache=not no_cache)
        frame = shipped_training_rows(corpus, modern_rows) if modern_rows is not None else corpus
        config = TrainConfig(thresholds=_thresholds(settings), max_rows=max_rows)
        step("training")
        bundle = train_and_save(frame, config, settings.model_dir, console)
        if modern_rows is not None and held_out_projects:
            from models.bundle import save_bundle
            from training.model_card import write_model_card
            from training.modern_eval import grouped_evaluation

            step("present-day mail, each source project held out")
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
    accounts: Annotated[int, typer.Option(help="Accounts", min=1)] = 2_000,
    days: Annotated[int, typer.Option(help="Days", min=1)] = 7,
    relays: Annotated[int, typer.Option(help="Relays", min=1)] = 3,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same log", min=0)] = 1,
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
    started = time.perf_counter()
    with _steps() as step:
        step("loading the content pools")
        pools = load_pools(config, settings.data_dir, settings.cache_dir)
        step(f"simulating {accounts:,} accounts over {days} days")
        events, truth = simulate(config, pools)
        step(f"writing {len(events):,} events to {out}")
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
    from service.container import open_database, report_links
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
        links = report_links(settings, database)  # the service's key: links that open in a browser
    finally:
        database.close()
    subject, text, html = render_digest(digest, links)
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
    if to:  # asked to mail and could not: cron must see it (a refused or failing server is exit 2, cli_errors)
        console.print(f"[red]not mailed to {', '.join(to)}: set OUTGUARD_SMTP_HOST (docs/configuration.md)[/red]")
        raise typer.Exit(1)


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
    from service.fingerprints.importer import import_messages, messages_in
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
    finally:  # a path that is no mail is NotMail: one line (service.cli_errors)
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


# -- the configuration reference (docs/configuration.md), generated from the settings' descriptions

CONFIGURATION_DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


@app.command("config-docs")
def config_docs(
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 if the file differs from what the settings give")
    ] = False,
    output: Annotated[Path, typer.Option(help="The file to write or check")] = CONFIGURATION_DOCS,
) -> None:
    """Write docs/configuration.md from the descriptions of the settings (service/settings.py)."""
    text = configuration_reference()
    if check:
        current = output.read_text(encoding="utf-8") if output.is_file() else None
        if current != text:
            state = "missing" if current is None else "stale"
            typer.echo(f"{output} is {state}: run `outguard config-docs` and commit the result", err=True)
            raise typer.Exit(1)
        typer.echo(f"{output} is current")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {output}")


_CONFIG_INTRO = """\
<!-- Generated by `outguard config-docs` from the field descriptions in service/settings.py: edit those and
run the command again. The suite (tests/test_docs.py) fails when this file is not current. -->
# Configuration

Every setting is an environment variable, read once at start into `service.settings.Settings`.
Numbers and words are written as they are, switches as `true` or `false`, lists and objects as
JSON (`OUTGUARD_TOKENS='{"relay-secret": ["score"]}'`). A variable that is not set takes the
default; "unset" means the feature is off or the value is derived, as the description says.
`<source>` in a default is the folder outguard is installed from (the source tree for a
checkout). How the settings fit together: [deploy.md](deploy.md) for a deployment,
[decision.md](decision.md) for the decision, [backends.md](backends.md) for storage.
"""


def configuration_reference() -> str:
    """docs/configuration.md: every setting with its variable, default, type and description, by section."""
    nested: list[tuple[str, type[BaseModel]]] = []
    sections = _config_sections(Settings, nested)
    keys: list[tuple[str, type[BaseModel]]] = []
    for heading, model in nested:  # and the models inside those models, once each
        if all(model is not seen for _, seen in keys):
            keys.append((heading, model))
            nested += [(f"{heading}: `{name}`", sub) for name, f in model.model_fields.items() for sub in _models_in(f)]
    headings = [title for title, _ in sections] + [heading for heading, _ in keys]
    lines = [_CONFIG_INTRO.rstrip("\n"), "", "Sections: " + ", ".join(f"[{h}](#{_anchor(h)})" for h in headings) + "."]
    for title, rows in sections:
        lines += ["", f"## {title}", "", "| variable | default | type | description |", "| --- | --- | --- | --- |"]
        lines += rows
    for heading, model in keys:
        doc = " ".join((model.__doc__ or "").split())
        lines += ["", f"## {heading}", ""]
        if doc:
            lines += [_cell(doc), ""]
        lines += ["| key | default | type | description |", "| --- | --- | --- | --- |"]
        for name, field in model.model_fields.items():
            lines.append(_config_row(f"`{name}`", field))
    return "\n".join(lines) + "\n"


def _config_sections(
    settings_cls: type[BaseSettings], nested: list[tuple[str, type[BaseModel]]], first_title: str = "General"
) -> list[tuple[str, list[str]]]:
    """The settings' rows, grouped by their `# -- title` comments; a nested model opens a section of its own."""
    from pydantic_settings import BaseSettings, EnvSettingsSource

    source = EnvSettingsSource(settings_cls)
    titles = _comment_titles(settings_cls)
    sections: list[tuple[str, list[str]]] = []
    comment: str | None = None
    for name, field in settings_cls.model_fields.items():
        model = _model_type(field.annotation)
        if model is not None and issubclass(model, BaseSettings):
            sections += _config_sections(model, nested, name.replace("_", " ").capitalize())  # reads its own
            continue
        title = sections[-1][0] if sections else first_title
        if titles.get(name, "") != comment:  # a `# -- title` comment opens a section
            comment = titles.get(name, "")
            title = comment[:1].upper() + comment[1:] or first_title
        if model is not None:  # so does a nested model, for it and the fields after it
            title = name.replace("_", " ").capitalize()
        if not sections or title != sections[-1][0]:
            sections.append((title, []))
        try:
            names = list(dict.fromkeys(env.upper() for _, env, _ in source._extract_field_info(field, name)))
        except AttributeError:  # a pydantic-settings without this helper: the plain rule
            names = [f"{settings_cls.model_config.get('env_prefix', '')}{name}".upper()]
        variable = f"`{names[0]}`" + (
            " (also " + ", ".join(f"`{n}`" for n in names[1:]) + ")" if len(names) > 1 else ""
        )
        sections[-1][1].append(_config_row(variable, field))
        for inner in _models_in(field):  # its keys get a table of their own
            nested.append((f"The keys of `{names[0]}`" + ("" if inner is model else " entries"), inner))
        delimiter = settings_cls.model_config.get("env_nested_delimiter")
        if model is not None and delimiter:
            for key, sub in model.model_fields.items():
                sections[-1][1].append(_config_row(f"`{names[0]}{delimiter}{key.upper()}`", sub))
    return [(title, rows) for title, rows in sections if rows]


def _comment_titles(cls: type) -> dict[str, str]:
    """Field name -> the `# -- title` comment it follows in the class's source ("" for a field before any)."""
    import inspect
    import re

    try:
        source = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    titles: dict[str, str] = {}
    title = ""
    for line in source:
        if match := re.match(r"    # -- (.+?)\.?$", line):
            title = re.sub(r"\s*\([^()]*(service\.|docs/|`)[^()]*\)", "", match.group(1).strip())  # no "(where)"
        elif match := re.match(r"    (\w+)\s*:", line):
            titles[match.group(1)] = title
    return titles


def _anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped, spaces as hyphens."""
    import re

    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def _models_in(field: FieldInfo) -> list[type[BaseModel]]:
    """The models a setting's value holds: itself, or its items (a list of them, a dict of them)."""
    import typing

    from pydantic import BaseModel

    found: list[type[BaseModel]] = []
    pending = [field.annotation]
    while pending:
        annotation = pending.pop(0)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.append(annotation)
        else:
            pending += typing.get_args(annotation)
    return found


def _model_type(annotation: object) -> type[BaseModel] | None:
    from pydantic import BaseModel

    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _config_row(variable: str, field: FieldInfo) -> str:
    description = field.description or ""
    return f"| {variable} | {_config_default(field)} | {_config_type(field)} | {_cell(description)} |"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _config_default(field: FieldInfo) -> str:
    from pydantic import BaseModel, SecretStr
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return "the keys' defaults (below)"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    elif isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, default=str)
    elif isinstance(value, StrEnum):
        text = value.value
    else:
        text = str(value)
    root = Path(__file__).resolve().parent.parent
    if str(root) in text:
        text = text.replace(str(root), "<source>")
    elif str(root.parent) in text:
        text = text.replace(str(root.parent), "<source>/..")
    return f"`{_cell(text)}`" if text else '`""`'


def _config_type(field: FieldInfo) -> str:
    import types
    import typing

    from annotated_types import Ge, Gt, Le, Lt, MaxLen

    annotation = field.annotation
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        annotation = next(a for a in args if a is not type(None))
    arms = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    kind = " or ".join(_config_type_name(arm) for arm in arms) if arms else _config_type_name(annotation)
    limits = []
    for item in field.metadata:
        for cls, sign, attribute in ((Ge, ">=", "ge"), (Gt, ">", "gt"), (Le, "<=", "le"), (Lt, "<", "lt")):
            if isinstance(item, cls):
                bound = getattr(item, attribute)
                limits.append(f"{sign} {int(bound) if isinstance(bound, float) and bound.is_integer() else bound}")
        if isinstance(item, MaxLen):
            limits.append(f"at most {item.max_length} characters")
    return ", ".join([kind, *limits])


def _config_type_name(annotation: object) -> str:
    import typing

    from pydantic import BaseModel, SecretStr

    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin in (list, tuple, set):
        return "JSON list"
    if origin is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return "JSON object"
    if isinstance(annotation, type):
        if issubclass(annotation, bool):
            return "true/false"
        if issubclass(annotation, StrEnum):
            return "one of " + ", ".join(f"`{member.value}`" for member in annotation)
        names = {int: "integer", float: "number", str: "text", Path: "path", SecretStr: "secret text"}
        for cls, name in names.items():
            if issubclass(annotation, cls):
                return name
    return str(annotation).replace("typing.", "")


if __name__ == "__main__":
    app()
