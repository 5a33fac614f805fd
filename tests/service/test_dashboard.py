"""The dashboard, served by the app: charts drawn, riskiest accounts, lock and unlock, login when tokens are on."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.service.test_reports_api import traffic  # noqa: F401 (the fixture)

SAME_ORIGIN = {"origin": "http://testserver", "sec-fetch-site": "same-origin"}


def test_the_overview_draws_its_charts_and_lists_the_riskiest_first(traffic: TestClient) -> None:  # noqa: F811
    page = traffic.get("/dashboard")
    assert page.status_code == 200
    assert page.text.count('<figure class="chart">') == 3
    assert len(re.findall(r'<rect class="bar" data-series="spam"', page.text)) >= 1
    first_row = page.text.split('<table id="riskiest">')[1].split("</tr>")[1]
    assert "r1/spammer" in first_row and "locked" in first_row
    assert traffic.get("/dashboard/static/dashboard.css").status_code == 200


def test_an_account_page_shows_its_timeline_and_the_lock_button_locks(traffic: TestClient) -> None:  # noqa: F811
    page = traffic.get("/dashboard/accounts/r1/owner")
    assert page.status_code == 200
    assert 'data-series="sent"' in page.text and 'class="dot"' in page.text
    assert "reply" in page.text and 'id="lock"' in page.text
    locked = traffic.post("/dashboard/accounts/r1/owner/lock", data={"reason": "seen in the FBL"}, headers=SAME_ORIGIN)
    assert locked.status_code == 200 and "Account locked." in locked.text  # followed the redirect
    assert traffic.get("/v1/accounts/r1/owner").json()["status"] == "locked"
    assert "seen in the FBL" in locked.text and 'id="unlock"' in locked.text
    unlocked = traffic.post("/dashboard/accounts/r1/owner/unlock", data={}, headers=SAME_ORIGIN)
    assert "Account unlocked." in unlocked.text
    assert traffic.get("/v1/accounts/r1/owner").json()["status"] == "active"


def test_odd_periods_fall_back_to_a_week(traffic: TestClient) -> None:  # noqa: F811
    for days in ("nan", "inf", "-3"):
        assert traffic.get("/dashboard", params={"days": days}).status_code == 200
        assert traffic.get("/dashboard/accounts/r1/owner", params={"days": days}).status_code == 200


def test_a_change_from_another_site_is_refused(traffic: TestClient) -> None:  # noqa: F811
    cross = traffic.post(
        "/dashboard/accounts/r1/owner/lock", headers={"origin": "https://evil.example", "sec-fetch-site": "cross-site"}
    )
    assert cross.status_code == 403
    assert traffic.get("/v1/accounts/r1/owner").json()["status"] == "active"


def test_the_incident_and_model_pages(traffic: TestClient) -> None:  # noqa: F811
    incident = traffic.get("/dashboard/accounts/r1/spammer/incident")
    assert incident.status_code == 200 and "Why it was locked" in incident.text
    model = traffic.get("/dashboard/model")
    assert "Model card" in model.text and "<table>" in model.text


def test_with_tokens_the_dashboard_asks_for_an_admin_token_once(settings: Settings) -> None:
    guarded = settings.model_copy(update={"tokens": {"ops-token": ["admin"], "relay-token": ["score"]}})
    with TestClient(create_app(guarded)) as client:
        first = client.get("/dashboard", follow_redirects=False)
        assert (first.status_code, first.headers["location"]) == (303, "/dashboard/login?next=/dashboard")
        assert client.get("/dashboard/login").status_code == 200
        refused = client.post(
            "/dashboard/login", data={"token": "relay-token"}, headers=SAME_ORIGIN, follow_redirects=False
        )
        assert "error=1" in refused.headers["location"]
        accepted = client.post("/dashboard/login", data={"token": "ops-token"}, headers=SAME_ORIGIN)
        assert accepted.status_code == 200 and "Riskiest accounts" in accepted.text
        cookie = accepted.history[0].headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
        assert client.get("/v1/accounts/default/x").status_code == 401  # the cookie is for the dashboard only


@pytest.mark.parametrize("path", ["/dashboard/accounts/r1/owner/delete"])
def test_unknown_actions_are_refused(traffic: TestClient, path: str) -> None:  # noqa: F811
    assert traffic.post(path, headers=SAME_ORIGIN).status_code == 403


def test_a_campaign_shows_on_the_overview(client: TestClient) -> None:
    from tests.fingerprints.test_signatures_api import copy_of_offer, score

    for n in range(7):
        stamp = f"2026-09-21T12:{n:02d}:00Z"
        score(client, f"<c{n}@example.net>", copy_of_offer(n), account=f"user{n}@example.net", timestamp=stamp)
    campaigns = client.get("/dashboard").text.split('<table id="campaigns">')[1].split("</table>")[0]
    assert "default/user0@example.net" in campaigns and "default/user6@example.net" in campaigns


def test_a_garbled_neighbour_cookie_does_not_lose_the_session(settings: Settings) -> None:
    guarded = settings.model_copy(update={"tokens": {"ops-token": ["admin"]}})
    with TestClient(create_app(guarded)) as client:
        cookie = 'a={"x":1}; outguard_session=ops-token'
        page = client.get("/dashboard", headers={"cookie": cookie}, follow_redirects=False)
        assert page.status_code == 200


def test_a_proxy_prefix_does_not_open_a_way_around_auth(settings: Settings) -> None:
    guarded = settings.model_copy(update={"tokens": {"ops-token": ["admin"]}})
    with TestClient(create_app(guarded), root_path="/outguard") as client:
        assert client.get("/outguard/v1/accounts/default/a").status_code == 401
        assert client.get("/outguard/dashboard", follow_redirects=False).status_code == 303
