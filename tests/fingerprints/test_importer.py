"""`outguard signatures import`: known spam from mbox files, Maildirs and folders becomes signatures."""

from __future__ import annotations

import email
import mailbox
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from service.app import create_app
from service.cli import app
from service.fingerprints.importer import messages_in
from service.settings import Settings
from tests.conftest import make_raw
from tests.fingerprints.test_fingerprint import MINUTES
from tests.fingerprints.test_signatures_api import copy_of_offer, flush, logged_feature, score

runner = CliRunner()

PHARMACY = (
    "Cheap pills without prescription delivered overnight to your door. We carry every brand your doctor "
    "would never tell you about, at prices no pharmacy in town can match. Reply today and receive a bonus "
    "bottle with your first order, shipped in plain packaging from our licensed partners overseas."
)


@pytest.fixture
def spam_files(tmp_path: Path) -> list[Path]:
    """An mbox holding two copies of one offer, a Maildir with a one-line message, a folder with another spam."""
    box = mailbox.mbox(tmp_path / "complaints.mbox")
    for seed in (1, 2):
        box.add(mailbox.mboxMessage(copy_of_offer(seed)))
    box.flush()
    maildir = mailbox.Maildir(tmp_path / "trap", create=True)
    maildir.add(mailbox.MaildirMessage(make_raw(body="hello there\n")))
    folder = tmp_path / "corpus" / "2026-11"
    folder.mkdir(parents=True)
    (folder / "1.eml").write_text(make_raw(subject="Pharmacy", body=PHARMACY))
    return [tmp_path / "complaints.mbox", tmp_path / "trap", tmp_path / "corpus"]


def use_settings(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    monkeypatch.setenv("OUTGUARD_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("OUTGUARD_STATE_DIR", str(settings.state_dir))


def output(result: Result) -> str:
    return " ".join(result.output.split())  # rich wraps lines at the terminal's width


def test_every_kind_of_mail_file_is_read(spam_files: list[Path]) -> None:
    subjects = [email.message_from_bytes(raw)["Subject"] for raw in messages_in(spam_files)]
    assert subjects == ["Designer watches 80% off"] * 2 + ["Lunch tomorrow?", "Pharmacy"]


def test_imported_spam_matches_its_copies_when_the_service_starts(
    spam_files: list[Path], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_settings(monkeypatch, settings)
    result = runner.invoke(app, ["signatures", "import", *map(str, spam_files), "--actor", "abuse-desk"])
    assert result.exit_code == 0, result.output
    assert "4 messages read: 2 signatures added, 1 already held (refreshed), 1 too short" in output(result)

    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/signatures").json()["signatures"] == 2
        score(client, "<copy@example.net>", copy_of_offer(3))
        score(client, "<minutes@example.net>", make_raw(body=MINUTES))
        flush(client)
    assert logged_feature(settings, "<copy@example.net>", "sig_similarity") >= 0.6
    assert logged_feature(settings, "<minutes@example.net>", "sig_similarity") == 0.0


def test_a_path_that_is_not_there_is_refused(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_settings(monkeypatch, settings)
    result = runner.invoke(app, ["signatures", "import", str(tmp_path / "missing.mbox")])
    assert result.exit_code == 2
    assert "missing.mbox: no such file or folder" in output(result)
