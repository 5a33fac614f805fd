"""The dashboard in a real browser: headless Chromium (Debian's) driven by Playwright, against a real server
filled by a simulator replay. Charts must render and the lock button must lock. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from service.settings import PROJECT_ROOT
from tests.conftest import DATA_DIR, server_process

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
TOKEN = "browser-test-admin"
# Without the background-networking flags Chromium keeps dialling out, and this machine refuses it.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium() -> None:
    if Path(CHROMIUM).is_file():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"Chromium is missing at {CHROMIUM} (.ci/run installs Debian's chromium package)")
    pytest.skip("Chromium not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def filled_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real server with a small simulated provider replayed into it over HTTP."""
    require_chromium()
    from tests.conftest import require_corpus
    from training.dataset import build_corpus_dataset
    from training.replay import corpus_resolver, replay_http
    from training.simulator import SimulationConfig, content_pools, simulate

    require_corpus()
    frame = build_corpus_dataset(DATA_DIR, PROJECT_ROOT / ".cache")
    events, _ = simulate(SimulationConfig(accounts=40, days=1, seed=4), content_pools(frame, "eval"))
    state = tmp_path_factory.mktemp("browser-server")
    with server_process(state, f'{{"{TOKEN}": ["admin"]}}') as (url, _):
        replay_http(events, url, corpus_resolver(DATA_DIR, PROJECT_ROOT / ".cache"), TOKEN)
        yield url


def test_an_admin_logs_in_sees_the_charts_and_locks_an_account(filled_server: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{filled_server}/dashboard")
        expect(page).to_have_url(f"{filled_server}/dashboard/login?next=/dashboard")
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")

        expect(page.locator("h1")).to_have_text("Overview")
        assert page.locator("figure.chart svg").count() == 3
        assert page.locator("figure.chart svg rect.bar").count() > 0  # drawn, not just the frame
        box = page.locator("figure.chart svg").first.bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 50
        page.screenshot(path=str(ARTIFACTS / "dashboard-overview.png"), full_page=True)

        active = page.locator("#riskiest tr", has=page.locator(".status.active")).first
        account = active.locator("a").inner_text()
        active.locator("a").click()
        expect(page.locator("#status")).to_have_text("active")
        assert page.locator("figure.chart polyline.line").count() == 2
        page.fill("input[name=reason]", "checked by the browser test")
        page.click("#lock")
        expect(page.locator("#status")).to_have_text("locked")
        expect(page.locator(".notice")).to_have_text("Account locked.")
        page.screenshot(path=str(ARTIFACTS / "dashboard-account-locked.png"), full_page=True)
        browser.close()

    relay, _, name = account.partition("/")
    answer = httpx.get(
        # quote, not httpx.URL: a script identity ("site6:/home/...") would parse as a URL scheme.
        f"{filled_server}/v1/accounts/{relay}/{quote(name, safe='@/')}",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert answer.json()["status"] == "locked"
    assert answer.json()["lock_history"][0]["reason"] == "checked by the browser test"
