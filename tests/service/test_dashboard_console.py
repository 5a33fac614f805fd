"""The dashboard as a console: search, the live log, domains and customers, relays and client IPs, acting from
any list (after a confirmation), bulk actions with a dry run first, identity rules, the audit log, signed links.

Server-rendered pages and JSON endpoints through a real app on each storage backend; every change goes through
the API as the logged-in operator, so the checks read it back over the API.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Customer, Settings
from service.stores import AccountKey
from tests.conftest import make_raw
from tests.service.test_reports_api import stamp
from tests.training.test_events import SHOUTING

pytestmark = pytest.mark.backends

SAME_ORIGIN = {"origin": "http://testserver", "sec-fetch-site": "same-origin"}
NOW = time.time()
CUSTOMERS = {"Shop Ltd": Customer(domains=["shop.example", "*.shop.example"], contact="it@shop.example")}


def score(
    client: TestClient, n: int, relay: str, account: str, ip: str, spam: bool, headers: dict[str, str] | None = None
) -> None:
    raw = make_raw(subject="FREE VIAGRA!!! 80% OFF $$$", body=SHOUTING) if spam else make_raw()
    body = {
        "message_id": f"<c{n}@x>",
        "relay": relay,
        "account": account,
        "client_ip": ip,
        "recipients": ["someone@example.org"],
        "raw": raw,
        "timestamp": stamp(NOW - 3_600 + n),
    }
    answer = client.post("/v1/score", json=body, headers=headers)
    assert answer.status_code == 200, answer.text


@pytest.fixture
def console(settings: Settings) -> Iterator[TestClient]:
    """alice@shop.example (r1) sends spam from a shared address and is locked; bob@shop.example (r1) sends ham
    from the same address, carol@sub.shop.example and dave@other.example (r2) from another; feedback comes back."""
    with TestClient(create_app(settings.model_copy(update={"customers": CUSTOMERS}))) as client:
        score(client, 0, "r1", "alice@shop.example", "203.0.113.7", spam=True)
        score(client, 1, "r1", "alice@shop.example", "203.0.113.7", spam=True)
        score(client, 2, "r1", "bob@shop.example", "203.0.113.7", spam=False)
        score(client, 3, "r1", "bob@shop.example", "203.0.113.7", spam=False)
        score(client, 4, "r2", "carol@sub.shop.example", "198.51.100.9", spam=False)
        score(client, 5, "r2", "dave@other.example", "198.51.100.9", spam=False)
        for event_id, kind, n in (("k0", "complaint", 0), ("b2", "bounce", 2)):
            event = {"event_id": event_id, "type": kind, "message_id": f"<c{n}@x>", "recipient": "someone@example.org"}
            assert client.post("/v1/feedback", json={**event, "timestamp": stamp(NOW - 60)}).status_code in (200, 201)
        lock = client.post("/v1/accounts/r1/alice%40shop.example/lock", json={"actor": "ops", "reason": "spam run"})
        assert lock.status_code == 200, lock.text
        asyncio.run(client.app.state.container.events.flush())
        yield client


def listed(html: str, table: str) -> list[str]:
    """relay/account of each row of a list (its selection checkboxes)."""
    section = html.split(f'<table id="{table}">')[1].split("</table>")[0]
    return [f"{r}/{a}" for r, a in re.findall(r'class="pick"[^>]*data-relay="([^"]*)" data-account="([^"]*)"', section)]


def status(client: TestClient, relay: str, account: str) -> str:
    return client.get(f"/v1/accounts/{relay}/{quote(account, safe='')}").json()["status"]


def test_accounts_are_found_by_name_domain_customer_relay_address_and_status(console: TestClient) -> None:
    def found(**params: str) -> set[str]:
        page = console.get("/dashboard/accounts", params=params)
        assert page.status_code == 200, page.text
        return set(listed(page.text, "accounts"))

    assert found(q="ALI") == {"r1/alice@shop.example"}
    assert found(domain="shop.example") == {"r1/alice@shop.example", "r1/bob@shop.example"}
    assert found(customer="Shop Ltd") == {"r1/alice@shop.example", "r1/bob@shop.example", "r2/carol@sub.shop.example"}
    assert found(relay="r2") == {"r2/carol@sub.shop.example", "r2/dave@other.example"}
    assert found(ip="203.0.113.7") == {"r1/alice@shop.example", "r1/bob@shop.example"}
    assert found(status="locked") == {"r1/alice@shop.example"}
    assert found(q="100%_") == set()  # LIKE's wildcards are searched for as characters
    first = listed(console.get("/dashboard/accounts").text, "accounts")[0]
    assert first == "r1/alice@shop.example"  # most spam first
    assert console.get("/dashboard/accounts", params={"status": "bogus"}).status_code == 422


def test_the_live_log_shows_decisions_with_reasons_and_follows_new_ones(console: TestClient) -> None:
    page = console.get("/dashboard/log", params={"account": "alice@shop.example"})
    assert page.status_code == 200
    rows = page.text.split('<table id="decisions"')[1].split("</table>")[0]
    assert rows.count("<tr data-id=") == 2 and "bob@" not in rows
    assert 'class="why"' in rows  # the features that pushed it towards spam
    newest = int(re.search(r'data-newest="(\d+)"', console.get("/dashboard/log").text).group(1))
    assert console.get("/dashboard/api/decisions", params={"after": newest}).json()["rows"] == []
    score(console, 6, "r1", "bob@shop.example", "203.0.113.7", spam=True)
    polled = console.get("/dashboard/api/decisions", params={"after": 0, "relay": "r1", "action": "hold"}).json()
    assert polled["rows"], "the spam of bob should be held"
    assert {(d["relay"], d["action"]) for d in polled["rows"]} == {("r1", "hold")}
    fresh = console.get("/dashboard/api/decisions", params={"after": newest}).json()
    [decision] = [d for d in fresh["rows"] if d["message_id"] == "<c6@x>"]
    assert decision["account"] == "bob@shop.example" and decision["reasons"] and fresh["newest"] > newest
    assert decision["label_spam"].startswith("/dashboard/confirm?")
    only_r2 = console.get("/dashboard/api/decisions", params={"relay": "r2"}).json()["rows"]
    assert {d["relay"] for d in only_r2} == {"r2"} and len(only_r2) == 2


def test_per_domain_and_per_customer_views(console: TestClient) -> None:
    domains = console.get("/dashboard/domains").text
    row = domains.split(">shop.example</a>")[1].split("</tr>")[0]
    cells = re.findall(r"<td>([^<]*)</td>", row)
    assert cells[:3] == ["Shop Ltd", "2", "4"]  # customer, accounts, messages
    assert "1 locked" in row and "complained" in row  # alice's complaint, and her lock
    customers = console.get("/dashboard/customers").text
    shop = customers.split(">Shop Ltd</a>")[1].split("</tr>")[0]
    assert "shop.example" in shop and "sub.shop.example" in shop
    assert re.findall(r"<td>([^<]*)</td>", shop)[1:3] == ["3", "5"]  # accounts, messages
    assert ">other.example</a>" in customers  # a domain of no customer stands for itself


def test_the_big_picture_marks_the_shared_address_at_risk(console: TestClient) -> None:
    page = console.get("/dashboard/network")
    assert page.status_code == 200
    relays = page.text.split('<table id="relays">')[1].split("</table>")[0]
    r1 = relays.split(">r1</a>")[1].split("</tr>")[0]
    assert 'status=locked&amp;relay=r1">1</a>' in r1
    ips = page.text.split('<table id="client-ips">')[1].split("</table>")[0]
    shared, other = ips.split("203.0.113.7</a>")[1].split("</tr>")[0], ips.split("198.51.100.9</a>")[1]
    assert "50.0% spam" in shared and "1 locked" in shared and "complained" in shared
    assert ips.index("203.0.113.7") < ips.index("198.51.100.9")  # at risk first
    assert "spam" not in other.split("</tr>")[0].split("<td>")[-1]
    only_r2 = console.get("/dashboard/network", params={"relay": "r2"}).text.split('<table id="client-ips">')[1]
    assert "198.51.100.9" in only_r2 and "203.0.113.7" not in only_r2


def test_a_list_action_asks_first_then_acts_and_returns_to_the_list(console: TestClient) -> None:
    back = "/dashboard/accounts?domain=shop.example"
    confirm = console.get(
        "/dashboard/confirm", params={"relay": "r1", "account": "bob@shop.example", "action": "lock", "next": back}
    )
    assert confirm.status_code == 200 and 'id="unseen"' not in confirm.text
    assert status(console, "r1", "bob@shop.example") == "active"  # asking changes nothing
    target = re.search(r'<form method="post" action="([^"]+)"', confirm.text).group(1)
    done = console.post(target, data={"reason": "stolen password", "next": back}, headers=SAME_ORIGIN)
    assert done.status_code == 200 and "r1/bob@shop.example locked." in done.text  # back on the list
    assert urlsplit(str(done.url)).path == "/dashboard/accounts"
    assert status(console, "r1", "bob@shop.example") == "locked"
    clean = console.post(
        "/dashboard/accounts/r1/bob%40shop.example/clean", data={"reason": "customer confirmed"}, headers=SAME_ORIGIN
    )
    assert "Account labelled clean." in clean.text
    assert status(console, "r1", "bob@shop.example") == "active"  # a clean verdict unlocks
    listed_ = console.post(
        "/dashboard/accounts/r2/dave%40other.example/allowlist", data={"next": back}, headers=SAME_ORIGIN
    )
    assert "r2/dave@other.example allowlisted." in listed_.text
    assert console.get("/v1/accounts/r2/dave%40other.example").json()["allowlisted"] is True
    label = console.post(
        "/dashboard/messages/label",
        data={"relay": "r1", "account": "bob@shop.example", "message_id": "<c2@x>", "label": "ham"},
        headers=SAME_ORIGIN,
    )
    assert label.status_code == 200 and "&lt;c2@x&gt; labelled ham." in label.text
    cross = console.post(
        "/dashboard/accounts/r1/bob%40shop.example/lock",
        headers={"origin": "https://evil.example", "sec-fetch-site": "cross-site"},
    )
    assert cross.status_code == 403 and status(console, "r1", "bob@shop.example") == "active"


def test_locking_an_account_never_seen_asks_first(console: TestClient) -> None:
    typo = "/dashboard/accounts/r1/bbo%40shop.example/lock"
    asked = console.post(typo, data={"reason": "typo?"}, headers=SAME_ORIGIN)
    assert asked.status_code == 200 and 'id="unseen"' in asked.text
    assert 'name="force" value="1"' in asked.text and 'value="typo?"' in asked.text
    assert console.get("/v1/accounts/r1/bbo%40shop.example").json()["status"] == "active"
    assert console.get("/v1/accounts/r1/bbo%40shop.example/lock-history").json()["history"] == []
    confirm = console.get("/dashboard/confirm", params={"relay": "r1", "account": "bbo@shop.example", "action": "lock"})
    assert 'id="unseen"' in confirm.text
    forced = console.post(typo, data={"reason": "new account, known bad", "force": "1"}, headers=SAME_ORIGIN)
    assert forced.status_code == 200 and "Account locked." in forced.text
    assert status(console, "r1", "bbo@shop.example") == "locked"


def test_bulk_actions_preview_a_dry_run_then_act(console: TestClient) -> None:
    picked = [
        {"relay": "r1", "account": "bob@shop.example"},
        {"relay": "r1", "account": "alice@shop.example"},
        {"relay": "r2", "account": "carol@sub.shop.example"},
    ]
    body = {"action": "lock", "accounts": picked, "reason": "campaign 7"}
    dry = console.post("/dashboard/api/bulk", json=body | {"dry_run": True}, headers=SAME_ORIGIN)
    assert dry.status_code == 200, dry.text
    preview = dry.json()
    assert preview["ok"] and preview["dry_run"]
    by_relay = {r["relay"]: r for r in preview["relays"]}
    assert by_relay["r1"]["summary"].startswith("would change: 1; already so: 1")  # alice is locked already
    assert by_relay["r2"]["summary"].startswith("would change: 1")
    assert status(console, "r1", "bob@shop.example") == "active"  # a dry run changes nothing
    done = console.post("/dashboard/api/bulk", json=body | {"dry_run": False}, headers=SAME_ORIGIN).json()
    assert done["ok"] and all("operation" in r["summary"] for r in done["relays"])
    assert status(console, "r1", "bob@shop.example") == "locked"
    assert status(console, "r2", "carol@sub.shop.example") == "locked"
    undo = {"action": "unlock", "accounts": picked, "reason": "false alarm", "dry_run": False}
    assert console.post("/dashboard/api/bulk", json=undo, headers=SAME_ORIGIN).json()["ok"]
    assert {status(console, p["relay"], p["account"]) for p in picked} == {"active"}
    cross = console.post(
        "/dashboard/api/bulk",
        json=body | {"dry_run": False},
        headers={"origin": "https://evil.example", "sec-fetch-site": "cross-site"},
    )
    assert cross.status_code == 403
    bad = console.post("/dashboard/api/bulk", json=body | {"action": "delete"}, headers=SAME_ORIGIN)
    assert bad.status_code == 422


def test_identity_rules_are_tried_saved_and_reset_in_the_dashboard(console: TestClient) -> None:
    assert "the default rules" in console.get("/dashboard/rules", params={"relay": "r9"}).text
    rule = '{"name": "php", "header": "X-PHP-Originating-Script", "pattern": "^(\\\\d+:.+)$", "identifies": "script"}'
    rules = f"[{rule}]"
    sample = make_raw(extra_headers="X-PHP-Originating-Script: 33:wp-content/x.php\r\n")
    form = {"relay": "r9", "rules": rules, "raw": sample}
    tried = console.post("/dashboard/rules", data=form | {"do": "dry-run"}, headers=SAME_ORIGIN)
    assert tried.status_code == 200, tried.text
    result = tried.text.split('<div id="dry-run-result">')[1]
    assert "33:wp-content/x.php" in result and "rule:php" in result
    assert console.get("/v1/identity-rules/r9").json()["default"] is True  # a dry run saves nothing
    saved = console.post("/dashboard/rules", data=form | {"do": "save"}, headers=SAME_ORIGIN)
    assert saved.status_code == 200 and "The rules of r9 are saved." in saved.text
    assert [r["name"] for r in console.get("/v1/identity-rules/r9").json()["rules"]] == ["php"]
    broken = console.post("/dashboard/rules", data=form | {"do": "save", "rules": "[{"}, headers=SAME_ORIGIN)
    assert broken.status_code == 422 and "not valid JSON" in broken.text
    invalid = console.post(
        "/dashboard/rules", data=form | {"do": "save", "rules": '[{"name": "x"}]'}, headers=SAME_ORIGIN
    )
    assert invalid.status_code == 422 and "Not saved (422)" in invalid.text
    reset = console.post("/dashboard/rules", data={"relay": "r9", "do": "reset"}, headers=SAME_ORIGIN)
    assert "r9 uses the default rules again." in reset.text
    assert console.get("/v1/identity-rules/r9").json()["default"] is True


def test_the_audit_page_lists_who_did_what(console: TestClient) -> None:
    console.post("/dashboard/accounts/r1/bob%40shop.example/lock", data={"reason": "ticket 12"}, headers=SAME_ORIGIN)
    page = console.get("/dashboard/audit")
    assert page.status_code == 200
    table = page.text.split('<table id="audit">')[1]
    assert table.index("ticket 12") < table.index("spam run")  # newest first
    only = console.get("/dashboard/audit", params={"account": "alice@shop.example"}).text
    assert "spam run" in only and "ticket 12" not in only


def test_a_signed_link_opens_one_report_without_a_login_until_it_expires(settings: Settings) -> None:
    tokens = [{"name": "alice-ops", "token": "ops-secret", "scopes": ["admin"]}]
    with TestClient(create_app(settings.model_copy(update={"tokens": tokens}))) as client:
        links = client.app.state.container.links
        key = AccountKey("r1", "mallory@shop.example")
        opened = client.get(urlsplit(links.incident(key)).path)  # no token, no cookie
        assert opened.status_code == 200 and "Incident report" in opened.text and "mallory@shop.example" in opened.text
        assert opened.headers["referrer-policy"] == "no-referrer" and "no-store" in opened.headers["cache-control"]
        token = links.token(key)
        payload, signature = token.split(".")
        other = links.token(AccountKey("r1", "bob@shop.example")).split(".")[0]
        for forged in (f"{other}.{signature}", f"{payload}.{signature[:-2]}xx", "nonsense", f"{payload}."):
            refused = client.get(f"/incident/{forged}")
            assert refused.status_code == 403 and "does not open a report" in refused.text
        expired = links.token(key, now=time.time() - links.ttl_s - 60)
        assert "expired" in client.get(f"/incident/{expired}").text
        dashboard = client.get(urlsplit(links.dashboard(key)).path, follow_redirects=False)
        assert dashboard.status_code == 303 and dashboard.headers["location"].startswith("/dashboard/login")


def test_a_dashboard_action_is_recorded_under_the_token_name(settings: Settings) -> None:
    tokens = [{"name": "alice-ops", "token": "ops-secret", "scopes": ["admin"]}]
    with TestClient(create_app(settings.model_copy(update={"tokens": tokens}))) as client:
        auth = {"Authorization": "Bearer ops-secret"}
        score(client, 0, "r1", "erin@shop.example", "203.0.113.7", spam=False, headers=auth)
        login = client.post("/dashboard/login", data={"token": "ops-secret"}, headers=SAME_ORIGIN)
        assert login.status_code == 200
        locked = client.post("/dashboard/accounts/r1/erin%40shop.example/lock", data={}, headers=SAME_ORIGIN)
        assert "Account locked." in locked.text
        [entry] = client.get("/v1/audit", params={"account": "erin@shop.example"}, headers=auth).json()["entries"]
        assert entry["actor"] == "alice-ops" and entry["principal"] == "alice-ops"
        assert "alice-ops" in client.get("/dashboard/audit").text
