"""A lock reaches a person: the incident report by mail to a real SMTP server (aiosmtpd), sent at once from the
outbox, retried while the mail server is down, with links that open in a browser without an API token."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from email.message import EmailMessage
from urllib.parse import urlsplit

import orjson
import pytest
from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Customer, Settings
from tests.conftest import make_raw, run_sql
from tests.service.test_digest import Inbox
from tests.service.test_webhooks import Receiver
from tests.training.test_events import SHOUTING

ADMIN = {"Authorization": "Bearer ops-secret"}
TOKENS = [{"name": "alice-ops", "token": "ops-secret", "scopes": ["admin"]}]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    handler, port = Inbox(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def notice_settings(settings: Settings, port: int, **more: object) -> Settings:
    return settings.model_copy(
        update={
            "tokens": TOKENS,
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "smtp_starttls": False,
            "smtp_from": "outguard@provider.example",
            "notice_to": {"*": ["abuse@provider.example"], "r2": ["noc@r2.example"]},
            "public_url": "http://testserver",
            **more,
        }
    )


def send_spam(client: TestClient, account: str, relay: str = "r1", n: int = 2) -> None:
    for i in range(n):
        body = {
            "message_id": f"<{account}-{i}@x>",
            "relay": relay,
            "account": account,
            "client_ip": "203.0.113.7",
            "recipients": ["someone@example.org"],
            "raw": make_raw(subject="FREE VIAGRA!!! 80% OFF $$$", body=SHOUTING),
        }
        assert client.post("/v1/score", json=body, headers=ADMIN).status_code == 200


def lock(client: TestClient, account: str, relay: str = "r1", reason: str = "spam run, ticket 7") -> None:
    answer = client.post(
        f"/v1/accounts/{relay}/{account.replace('@', '%40')}/lock", json={"reason": reason}, headers=ADMIN
    )
    assert answer.status_code == 200, answer.text


def wait_for_mail(inbox: Inbox, count: int, timeout: float = 15.0) -> list[tuple[list[str], EmailMessage]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(inbox.messages) < count:
        time.sleep(0.05)
    assert len(inbox.messages) >= count, f"{len(inbox.messages)} of {count} notices arrived"
    return inbox.messages


def notice_rows(settings: Settings) -> list[tuple]:
    return run_sql(
        settings.database_url, "SELECT status, attempts, last_error FROM webhook_outbox WHERE webhook_id = 0"
    )


def test_a_lock_mails_the_incident_report_with_links_that_open_in_a_browser(
    settings: Settings, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    configured = notice_settings(settings, port)
    with TestClient(create_app(configured)) as client:
        send_spam(client, "mallory@shop.example")
        lock(client, "mallory@shop.example")
        [(recipients, message)] = wait_for_mail(inbox, 1)
        assert recipients == ["abuse@provider.example"]
        assert message["Subject"].startswith("outguard: r1/mallory@shop.example was locked")
        assert message["Auto-Submitted"] == "auto-generated"
        text = message.get_body(("plain",)).get_content()
        html = message.get_body(("html",)).get_content()
        for part in ("was locked", "by alice-ops: spam run, ticket 7", "What was seen", "What to do next", "Evidence:"):
            assert part in text, part
        assert "FREE VIAGRA" in text  # the traffic we think is suspicious: its subjects
        assert "Why it was locked" in html and "mallory@shop.example" in html
        report = next(line.strip() for line in text.splitlines() if line.strip().startswith("http://testserver/inc"))
        dashboard = next(line.strip() for line in text.splitlines() if "/dashboard/accounts/" in line)
        assert f'href="{report}"' in html
        # A browser without a token: the report opens, the dashboard asks for its login (no 401 anywhere).
        opened = client.get(urlsplit(report).path)
        assert opened.status_code == 200 and "Why it was locked" in opened.text
        assert "mallory@shop.example" in opened.text
        login = client.get(urlsplit(dashboard).path, follow_redirects=False)
        assert login.status_code == 303 and login.headers["location"].startswith("/dashboard/login?next=")
        assert client.get(urlsplit(dashboard).path).status_code == 200  # the login page
        assert [(s, e) for s, _, e in notice_rows(configured)] == [("delivered", None)]


def test_a_notice_is_retried_while_the_mail_server_is_down(settings: Settings) -> None:
    port = free_port()  # nothing listens yet
    configured = notice_settings(settings, port, webhook_backoff_s=0.2, webhook_backoff_max_s=0.5)
    with TestClient(create_app(configured)) as client:
        send_spam(client, "trudy@shop.example")
        lock(client, "trudy@shop.example")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(a for _, a, _ in notice_rows(configured)):
            time.sleep(0.05)
        [(state, attempts, error)] = notice_rows(configured)
        assert state == "pending" and attempts >= 1 and "ConnectionRefusedError" in error
        assert "@" not in error  # no address in what is stored
        inbox = Inbox()
        controller = Controller(inbox, hostname="127.0.0.1", port=port)
        controller.start()
        try:
            [(recipients, message)] = wait_for_mail(inbox, 1)
        finally:
            controller.stop()
        assert recipients == ["abuse@provider.example"] and "trudy@shop.example" in message["Subject"]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and notice_rows(configured)[0][0] != "delivered":
            time.sleep(0.05)
        assert notice_rows(configured)[0][0] == "delivered"


def test_relay_addresses_customer_contacts_and_relays_nobody_watches(
    settings: Settings, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    configured = notice_settings(
        settings,
        port,
        notice_to={"r2": ["noc@r2.example"]},
        notice_customer=True,
        customers={"Shop": Customer(domains=["shop.example"], contact="it@shop.example")},
    )
    with TestClient(create_app(configured)) as client:
        for account, relay in (("peggy@shop.example", "r2"), ("victor@elsewhere.example", "r3")):
            send_spam(client, account, relay)
            lock(client, account, relay)
        [(recipients, message)] = wait_for_mail(inbox, 1)
        assert recipients == ["noc@r2.example", "it@shop.example"]
        assert "peggy@shop.example" in message["Subject"]
        time.sleep(0.5)
        assert len(inbox.messages) == 1  # r3 has nobody to tell: nothing queued
        assert len(notice_rows(configured)) == 1


def test_locks_due_together_go_out_as_one_message_and_webhooks_carry_the_links(
    settings: Settings, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    configured = notice_settings(settings, port, webhook_allow_private=True)
    receiver = Receiver()
    try:
        with TestClient(create_app(configured)) as client:
            body = {"url": receiver.url, "events": ["account.locked"], "secret": "whsec-test-0123456789abcdef"}
            assert client.post("/v1/webhooks", json=body, headers=ADMIN).status_code == 201
            accounts = [f"bot{n}@shop.example" for n in range(3)]
            for account in accounts:
                send_spam(client, account, n=1)
            bulk = {"action": "lock", "accounts": accounts, "reason": "campaign 7"}
            assert client.post("/v1/accounts/r1/bulk", json=bulk, headers=ADMIN).status_code in (200, 201)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and [s for s, _, _ in notice_rows(configured)] != ["delivered"] * 3:
                time.sleep(0.05)
            mentioned = {a for _, m in inbox.messages for a in accounts if a in m.get_body(("plain",)).get_content()}
            assert mentioned == set(accounts)
            assert len(inbox.messages) <= 3
            while time.monotonic() < deadline and len(receiver.received) < 3:
                time.sleep(0.05)
            payloads = [orjson.loads(body) for _, body in receiver.received]
            assert {p["account"] for p in payloads} == set(accounts)
            for payload in payloads:
                assert urlsplit(payload["dashboard_url"]).path.startswith("/dashboard/accounts/r1/bot")
                opened = client.get(urlsplit(payload["incident_url"]).path)
                assert opened.status_code == 200 and payload["account"] in opened.text
    finally:
        receiver.close()
