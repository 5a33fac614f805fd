"""The `outguard` command line."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from service.cli import app

runner = CliRunner()


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "train", "evaluate"):
        assert command in result.output


def test_serve_refuses_a_public_bind_without_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OUTGUARD_TOKENS", raising=False)
    result = runner.invoke(app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "Refusing to bind 0.0.0.0" in result.output
    assert "OUTGUARD_TOKENS" in result.output
