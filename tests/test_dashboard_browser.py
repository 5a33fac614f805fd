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
        account = active.locator("a.account").inner_text()
        active.locator("a.account").click()
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


def test_an_admin_selects_rows_locks_them_in_bulk_and_follows_the_live_log(filled_server: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    from tests.conftest import make_raw

    auth = {"Authorization": f"Bearer {TOKEN}"}
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{filled_server}/dashboard/login?next=/dashboard/accounts%3Fstatus%3Dactive")
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        expect(page.locator("h1")).to_have_text("Accounts")

        # Rows shown active now (an expired temporary lock of the replayed past is "active" to the filter).
        boxes = page.locator("#accounts tr", has=page.locator("span.status.active")).locator("input.pick")
        picked = []
        for n in range(2):
            boxes.nth(n).check()
            picked.append((boxes.nth(n).get_attribute("data-relay"), boxes.nth(n).get_attribute("data-account")))
        expect(page.locator("form.bulk .picked")).to_have_text("2")
        page.select_option("form.bulk select[name=action]", "lock")
        page.fill("form.bulk input[name=reason]", "bulk lock from the browser test")
        page.click("form.bulk .bulk-preview")
        expect(page.locator(".bulk-summary")).to_have_text("Dry run of lock on 2 account(s).")
        expect(page.locator(".bulk-result")).to_contain_text("would change: ")
        for relay, name in picked:  # a dry run changes nothing
            answer = httpx.get(f"{filled_server}/v1/accounts/{relay}/{quote(name, safe='@/')}", headers=auth)
            assert answer.json()["status"] == "active"
        page.click("form.bulk .bulk-confirm")
        expect(page.locator(".bulk-summary")).to_have_text("Done: lock on 2 account(s).")
        page.screenshot(path=str(ARTIFACTS / "dashboard-bulk-lock.png"), full_page=True)

        page.goto(f"{filled_server}/dashboard/log")
        expect(page.locator("#decisions tbody tr").first).to_be_visible()
        message = {
            "message_id": "<browser-live@example.net>",
            "relay": picked[0][0],
            "account": "live-log@example.net",
            "recipients": ["someone@example.org"],
            "raw": make_raw(),
        }
        assert httpx.post(f"{filled_server}/v1/score", json=message, headers=auth).status_code == 200
        arrived = page.locator("#decisions tbody tr.new", has_text="live-log@example.net")
        expect(arrived).to_have_count(1, timeout=10_000)  # polled in, without a reload
        browser.close()

    for relay, name in picked:
        answer = httpx.get(f"{filled_server}/v1/accounts/{relay}/{quote(name, safe='@/')}", headers=auth)
        assert answer.json()["status"] == "locked"
        assert answer.json()["lock_history"][0]["reason"] == "bulk lock from the browser test"
