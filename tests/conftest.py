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


# Storage backends. A test module marked `pytestmark = pytest.mark.backends` runs once on each;
# every other test uses the embedded default.
BACKENDS = ("sqlite", "postgresql", "postgresql+redis")
POSTGRES_URL = os.environ.get("OUTGUARD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("OUTGUARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("backends"):
        metafunc.parametrize("backend", BACKENDS, indirect=True)


def require_service(name: str, reachable: bool, where: str) -> None:
    """Skip without a backing service, except in CI, where its absence is a failure."""
    if reachable:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} is not reachable at {where} (CI must have it)")
    pytest.skip(f"{name} not reachable at {where}")


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A database URL whose tables live in a fresh schema of the test PostgreSQL, migrated to head; dropped after."""
    from sqlalchemy.exc import OperationalError

    from service.stores.schema import scratch_schema

    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(scratch_schema(POSTGRES_URL, "t"))
        except OperationalError as error:
            require_service("PostgreSQL", False, f"{POSTGRES_URL} ({error.orig})")
        yield url


@contextlib.contextmanager
def redis_namespace() -> Iterator[str]:
    """A Redis key prefix of its own on the test Redis; its keys are deleted after."""
    import uuid

    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as error:
        require_service("Redis", False, f"{REDIS_URL} ({error})")
    prefix = f"t{uuid.uuid4().hex[:12]}"
    try:
        yield prefix
    finally:
        for key in client.scan_iter(match=f"{prefix}:*", count=1_000):
            client.delete(key)
        client.close()


def run_sql(url: str, sql: str, params: dict[str, object] | None = None) -> list[tuple]:
    """Run one statement on a fresh connection (what is durable, not what a process holds) and commit."""
    from sqlalchemy import create_engine, text

    from service.stores.database import normalise_url

    engine = create_engine(normalise_url(url))
    try:
        with engine.begin() as connection:
            result = connection.execute(text(sql), params or {})
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "sqlite")


@pytest.fixture
def storage(backend: str, tmp_path: Path) -> Iterator[dict[str, object]]:
    """The settings that pick the backend under test."""
    if backend == "sqlite":
        yield {"database_url": f"sqlite:///{tmp_path / 'outguard.db'}"}
        return
    with contextlib.ExitStack() as stack:
        chosen: dict[str, object] = {"database_url": stack.enter_context(postgres_schema())}
        if backend.endswith("+redis"):
            chosen |= {"redis_url": REDIS_URL, "redis_prefix": stack.enter_context(redis_namespace())}
        yield chosen


@pytest.fixture
def settings(tmp_path: Path, storage: dict[str, object]) -> Settings:
    return Settings(
        state_dir=tmp_path / "state",
        cache_dir=PROJECT_ROOT / ".cache",
        data_dir=DATA_DIR,
        **storage,  # type: ignore[arg-type]
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
