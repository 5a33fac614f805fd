"""The command line behaves: a version, arguments checked before any work, and an exit code cron can trust."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.cli import app
from tests.service.test_cli_errors import one_line_error

runner = CliRunner()


def test_version_is_the_installed_package() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"outguard {version('outguard')}"


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["simulate", "--accounts", "0"], "--accounts"),
        (["simulate", "--accounts", "-5"], "--accounts"),
        (["simulate", "--days", "0"], "--days"),
        (["simulate", "--relays", "0"], "--relays"),
        (["simulate", "--seed", "-1"], "--seed"),
        (["train", "--max-rows", "0"], "--max-rows"),
        (["retrain", "--max-rounds", "0"], "--max-rounds"),
        (["retrain", "--implicit-ham-weight", "-0.5"], "--implicit-ham-weight"),
        (["serve", "--workers", "0"], "--workers"),
        (["serve", "--port", "70000"], "--port"),
    ],
)
def test_out_of_range_numbers_are_refused_in_one_line(args: list[str], option: str, tmp_path: Path) -> None:
    out = tmp_path / "sim"
    extra = ["--out", str(out)] if args[0] == "simulate" else []
    message = one_line_error([*args, *extra], expect=f"Invalid value for '{option}'")
    assert "greater than or equal to" in message or "less than or equal to" in message
    assert not out.exists()  # refused before any work


def test_report_to_without_a_mail_server_exits_non_zero(tmp_path: Path) -> None:
    env = {
        "OUTGUARD_DATABASE_URL": f"sqlite:///{tmp_path / 'o.db'}",
        "OUTGUARD_STATE_DIR": str(tmp_path),
        "OUTGUARD_SMTP_HOST": "",
    }
    result = runner.invoke(app, ["report", "--to", "noc@example.net", "--out", str(tmp_path / "d")], env=env)
    output = " ".join(result.output.split())
    assert result.exit_code == 1, output
    assert "not mailed to noc@example.net" in output
    assert list((tmp_path / "d").glob("digest-*.txt"))  # the digest is still kept as files
    written = runner.invoke(app, ["report", "--out", str(tmp_path / "e")], env=env)
    assert written.exit_code == 0, written.output  # not asked to mail: files are the answer


def test_the_long_commands_show_progress() -> None:
    """replay, simulate, train and signatures import each draw a progress bar (rich), transient."""
    import inspect

    from service import cli

    for command in (cli.replay, cli.simulate, cli.train, cli.import_signatures):
        source = inspect.getsource(command)
        assert "Progress(" in source or "_steps()" in source, command.__name__


SERVE_WITHOUT_TRAINING_EXTRA = """
import sys
for name in ("mlflow", "dask", "distributed"):
    sys.modules[name] = None  # as in the serving image: `import mlflow` raises ImportError

from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

settings = Settings(state_dir=sys.argv[1], database_url="sqlite:///" + sys.argv[1] + "/o.db")
with TestClient(create_app(settings)) as client:
    answer = client.post(
        "/v1/score",
        json={
            "message_id": "<m1@example.net>",
            "sasl_username": "alice@example.net",
            "recipients": ["bob@example.org"],
            "raw": "From: alice@example.net\\r\\nTo: bob@example.org\\r\\nSubject: lunch\\r\\n\\r\\nAt one?\\r\\n",
        },
    )
    assert answer.status_code == 200, answer.text
    assert client.get("/metrics").status_code in (200, 401)
print("served", answer.json()["action"])
"""


def test_the_service_starts_and_scores_without_mlflow_or_dask(tmp_path: Path) -> None:
    """The serving image installs no `training` extra: nothing on the serving path may need MLflow or Dask."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", SERVE_WITHOUT_TRAINING_EXTRA, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("served ")


def test_the_dask_engine_without_dask_says_which_extra(tmp_path: Path) -> None:
    """`retrain --engine dask` in the serving image: one line naming the extra, not an ImportError."""
    import subprocess
    import sys

    database = tmp_path / "events.db"
    database.touch()
    script = (
        "import sys; sys.modules['distributed'] = None; sys.modules['dask'] = None\n"
        "from service.cli import app\n"
        "app(['retrain', '--engine', 'dask', '--from-events', sys.argv[1]], prog_name='outguard')\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(database)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "--engine dask needs the training extra: pip install 'outguard[training]'" in done.stderr
    assert "Traceback" not in done.stderr and "\n" not in done.stderr.strip()
