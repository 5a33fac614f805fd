"""A user error on the command line is one line, `error: ...`, and exit 2: never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.cli import app
from tests.service.test_lock_notice import free_port

runner = CliRunner()
PROG = {"prog_name": "outguard"}


def one_line_error(args: list[str], *, expect: str, env: dict[str, str] | None = None) -> str:
    result = runner.invoke(app, args, env=env, **PROG)
    output = result.output.strip()
    assert result.exit_code == 2, (result.exit_code, output, result.exception)
    assert output.startswith("error: ") and "\n" not in output, output
    assert "Traceback" not in output and not isinstance(result.exception, (KeyError, AttributeError, TypeError))
    assert expect in output, output
    return output


def test_a_typo_in_a_path(tmp_path: Path) -> None:
    one_line_error(["replay", str(tmp_path / "sim-typo")], expect=f"no such file or folder: {tmp_path}/sim-typo")
    one_line_error(["evaluate", "--model-dir", str(tmp_path / "nope")], expect="no model bundle at")
    one_line_error(["signatures", "import", str(tmp_path / "spam.mbox")], expect="no such file or folder")


def test_an_unknown_option_value_command_or_option() -> None:
    one_line_error(["simulate", "--pool", "bogus"], expect="pool is eval or train")
    one_line_error(["serve", "--workers", "many"], expect="Invalid value for '--workers'")
    one_line_error(["report", "--since", "last tuesday"], expect="see `outguard report --help`")
    one_line_error(["retrain", "--engine", "spark"], expect="--engine is local or dask")
    one_line_error(["serve", "--colour"], expect="No such option")
    one_line_error(["servee"], expect="No such command 'servee'")


def test_a_database_that_does_not_answer_or_is_no_url(tmp_path: Path) -> None:
    closed = f"postgresql://outguard@127.0.0.1:{free_port()}/outguard"
    env = {"OUTGUARD_DATABASE_URL": closed, "OUTGUARD_STATE_DIR": str(tmp_path)}
    one_line_error(["db", "current"], env=env, expect="the database did not answer")
    one_line_error(["report", "--since", "2h"], env=env, expect="check OUTGUARD_DATABASE_URL")
    env["OUTGUARD_DATABASE_URL"] = "not a url"
    one_line_error(["db", "upgrade"], env=env, expect="OUTGUARD_DATABASE_URL is not a database URL")


def test_a_bad_setting_and_a_mail_server_that_refuses(tmp_path: Path) -> None:
    one_line_error(["report"], env={"OUTGUARD_HOLD_THRESHOLD": "high"}, expect="invalid setting: hold_threshold")
    one_line_error(["report"], env={"OUTGUARD_TOKENS": "{not json"}, expect="invalid setting")
    env = {
        "OUTGUARD_DATABASE_URL": f"sqlite:///{tmp_path / 'o.db'}",
        "OUTGUARD_STATE_DIR": str(tmp_path),
        "OUTGUARD_SMTP_HOST": "127.0.0.1",
        "OUTGUARD_SMTP_PORT": str(free_port()),  # nothing listens
        "OUTGUARD_SMTP_STARTTLS": "false",
    }
    one_line_error(["report", "--to", "noc@example.net"], env=env, expect="connection refused")


@pytest.mark.parametrize("args", [["--help"], ["db", "--help"]])
def test_help_is_not_an_error(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "Usage" in result.output
