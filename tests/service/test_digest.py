"""`outguard report`: the digest of suspicious and locked accounts, mailed to a real SMTP server or written as files."""

from __future__ import annotations

import email
import socket
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import default
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service.cli import app
from service.settings import Settings
from tests.service.test_reports_api import traffic  # noqa: F401 (the fixture)

runner = CliRunner()


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=default)  # type: ignore[attr-defined]
        self.messages.append((list(envelope.rcpt_tos), parsed))  # type: ignore[attr-defined]
        return "250 OK"


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def use(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTGUARD_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("OUTGUARD_STATE_DIR", str(settings.state_dir))


def test_the_digest_is_mailed_with_text_and_html(
    traffic: TestClient,  # noqa: F811
    settings: Settings,
    inbox: tuple[Inbox, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handler, port = inbox
    use(settings, monkeypatch)
    monkeypatch.setenv("OUTGUARD_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("OUTGUARD_SMTP_PORT", str(port))
    monkeypatch.setenv("OUTGUARD_SMTP_STARTTLS", "false")
    monkeypatch.setenv("OUTGUARD_SMTP_FROM", "outguard@relay.example.net")
    result = runner.invoke(app, ["report", "--since", "2h", "--to", "admin@example.com", "--to", "noc@example.com"])
    assert result.exit_code == 0, result.output
    [(recipients, message)] = handler.messages
    assert recipients == ["admin@example.com", "noc@example.com"]
    assert message["Subject"].startswith("outguard: 1 lock(s), 1 suspicious account(s)")
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert "r1/spammer  locked by ops: spam run" in text
    assert "6 messages from 3 accounts; 2 scored as spam" in text
    assert "<td>r1/spammer</td>" in html


def test_without_smtp_the_digest_is_written_to_files(
    traffic: TestClient,  # noqa: F811
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use(settings, monkeypatch)
    result = runner.invoke(app, ["report", "--since", "2h", "--to", "admin@example.com", "--out", str(tmp_path / "d")])
    assert result.exit_code == 1, result.output  # asked to mail and could not: cron sees it
    assert "OUTGUARD_SMTP_HOST is not set" in " ".join(result.output.split())
    text = next((tmp_path / "d").glob("digest-*.txt")).read_text()
    assert text.startswith("Subject: outguard: 1 lock(s)")
    assert "<td>r1/spammer</td>" in next((tmp_path / "d").glob("digest-*.html")).read_text()


def test_a_bad_period_is_refused(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    use(settings, monkeypatch)
    result = runner.invoke(app, ["report", "--since", "last tuesday"])
    assert result.exit_code == 2
