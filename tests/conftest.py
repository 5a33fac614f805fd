"""Shared fixtures: settings on temporary paths, a live app, the shared corpora."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import PROJECT_ROOT, Settings

DATA_DIR = Path(os.environ.get("OUTGUARD_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data"))


def corpus_available() -> bool:
    return (DATA_DIR / "spamassassin").is_dir() and (DATA_DIR / "trec07p-dev.tar.xz").is_file()


def require_corpus() -> None:
    """Skip without the corpora, except in CI, where their absence is a failure."""
    if corpus_available():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"the shared corpora are missing at {DATA_DIR} (CI must have them)")
    pytest.skip(f"shared corpora not found at {DATA_DIR}")


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests build their own settings: an exported OUTGUARD_* variable must not leak in."""
    for name in list(os.environ):
        if name.startswith("OUTGUARD_") and name != "OUTGUARD_DATA_DIR":
            monkeypatch.delenv(name)


@pytest.fixture
def corpus_dir() -> Path:
    require_corpus()
    return DATA_DIR


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'outguard.db'}",
        state_dir=tmp_path / "state",
        cache_dir=PROJECT_ROOT / ".cache",
        data_dir=DATA_DIR,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def make_raw(
    subject: str = "Lunch tomorrow?",
    body: str = "Hi Bob,\n\nAre we still on for lunch tomorrow at one?\n\nCheers,\nAlice\n",
    sender: str = "Alice Example <alice@example.net>",
    to: str = "bob@example.org",
    extra_headers: str = "",
) -> str:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
        f"Message-ID: <abc123@example.net>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"{extra_headers}\r\n{body}"
    )


@contextlib.contextmanager
def server_process(state: Path, tokens: str, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real `outguard serve` on a free port, with its own database; yields (url, process) once ready."""
    import httpx2 as httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    environment = {
        **os.environ,
        "OUTGUARD_DATABASE_URL": f"sqlite:///{state / 'events.db'}",
        "OUTGUARD_STATE_DIR": str(state),
        "OUTGUARD_TOKENS": tokens,
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
        env=environment,
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail(f"server did not start: {process.stdout.read().decode() if process.stdout else ''}")
    try:
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
