"""The `outguard` command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.cli import app

runner = CliRunner()


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "train", "evaluate", "retrain", "promote", "rollback", "signatures"):
        assert command in result.output


def test_serve_refuses_a_public_bind_without_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OUTGUARD_TOKENS", raising=False)
    result = runner.invoke(app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "Refusing to bind 0.0.0.0" in result.output
    assert "OUTGUARD_TOKENS" in result.output


def test_retrain_says_what_is_wrong_with_its_options(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["retrain", "--from-events", str(tmp_path / "nope.db")])
    assert missing.exit_code == 2
    assert "no event log at" in " ".join(missing.output.split())
    database = tmp_path / "events.db"
    database.touch()
    for option, value, says in (
        ("--label-delay", "soon", "is not a duration such as 90s, 30m, 12h or 2d"),
        ("--split", "0.5,0.5", "three positive shares that add up to 1"),
        ("--engine", "spark", "--engine is local or dask"),
    ):
        result = runner.invoke(app, ["retrain", "--from-events", str(database), option, value])
        assert result.exit_code == 2, result.output
        assert says in " ".join(result.output.split())


def test_promote_and_rollback_say_what_the_registry_lacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTGUARD_STATE_DIR", str(tmp_path))
    rollback = runner.invoke(app, ["rollback"])
    assert rollback.exit_code == 2
    assert "no previous champion to roll back to" in " ".join(rollback.output.split())
    promote = runner.invoke(app, ["promote", "9"])
    assert promote.exit_code == 2
    assert "no version 9 of registered model 'outguard'" in " ".join(promote.output.split())
