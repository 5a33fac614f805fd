"""A real Postfix (Debian's package) relays through outguard's milter, on loopback.

A private Postfix instance with its own configuration and queue directories runs an smtpd
on a free 127.0.0.1 port with `smtpd_milters = inet:127.0.0.1:PORT` of an outguard app
started here, `milter_default_action = accept`, and relays to an SMTP sink (aiosmtpd) in
the test. The user comes from XCLIENT LOGIN, and once from a real SASL AUTH (Cyrus SASL
with a sasldb: no Dovecot, no saslauthd). The configuration is the one
docs/relay-integration.md gives.

Postfix must be installed (`.ci/run` does it); outside CI the tests skip without it.
`postfix start` needs root.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient
from sqlalchemy import Connection

from service.adapters.milter import MilterServer
from service.app import create_app
from service.settings import PROJECT_ROOT, Settings
from service.stores.database import mappings
from tests.conftest import DATA_DIR, make_raw
from tests.service.test_score_api import SPAM, SPRAYED

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTQUEUE = shutil.which("postqueue") or "/usr/sbin/postqueue"
SASLPASSWD = shutil.which("saslpasswd2") or "/usr/sbin/saslpasswd2"
SASL_USER, SASL_PASSWORD = "carol@example.net", "correct horse battery"


def require(what: str, present: bool) -> None:
    """Skip without it, except in CI, where its absence is a failure."""
    if present:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing (CI installs it: .ci/run)")
    pytest.skip(f"{what} is not available")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], object], timeout: float = 15.0, what: str = "it") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Sink:
    """What Postfix relays: every envelope, in order."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        with self.lock:
            self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))  # type: ignore[attr-defined]
        return "250 2.0.0 Ok: delivered to the sink"

    def message_with(self, marker: bytes) -> bytes | None:
        with self.lock:
            return next((content for _, _, content in self.received if marker in content), None)


@dataclass
class Outguard:
    client: TestClient
    milter: MilterServer
    listen: str

    def lock(self, account: str, reason: str, relay: str = "default") -> None:
        url = f"/v1/accounts/{relay}/{quote(account, safe='')}/lock"
        response = self.client.post(url, json={"actor": "ops@example.net", "reason": reason, "force": True})
        assert response.status_code == 200, response.text

    def scored(self, message_id: str) -> dict[str, object] | None:
        """The scored message's stored row, once the event log has written it."""
        container = self.client.app.state.container  # type: ignore[attr-defined]
        self.client.portal.call(container.events.flush)  # type: ignore[union-attr]

        def query(connection: Connection) -> list[dict[str, object]]:
            sql = (
                "SELECT relay, account, identity_source, queue_id, client_ip, action FROM scored_messages "
                "WHERE message_id = :message_id"
            )
            return mappings(connection, sql, {"message_id": message_id})

        rows = self.client.portal.call(container.database.read, query)  # type: ignore[union-attr]
        return rows[0] if rows else None


@dataclass
class Postfix:
    config: Path
    port: int  # smtpd, relay `default` ({daemon_name} left unset)
    hosting_port: int  # smtpd with milter_macro_daemon_name = webhosting

    def hold_queue(self) -> set[str]:
        listing = subprocess.run([POSTQUEUE, "-c", str(self.config), "-j"], capture_output=True, text=True, check=True)
        entries = [json.loads(line) for line in listing.stdout.splitlines() if line.strip()]
        return {e["queue_id"] for e in entries if e.get("queue_name") == "hold"}

    def log(self) -> str:
        path = self.config.parent / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture(scope="module")
def sink() -> Iterator[tuple[Sink, int]]:
    handler, port = Sink(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


@pytest.fixture(scope="module")
def outguard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outguard]:
    state = tmp_path_factory.mktemp("outguard")
    listen = f"127.0.0.1:{free_port()}"
    settings = Settings(
        state_dir=state / "state",
        database_url=f"sqlite:///{state / 'outguard.db'}",
        cache_dir=PROJECT_ROOT / ".cache",
        data_dir=DATA_DIR,
        milter_listen=listen,
    )
    with TestClient(create_app(settings)) as client:
        [milter] = [s for s in client.app.state.listeners if isinstance(s, MilterServer)]  # type: ignore[attr-defined]
        yield Outguard(client, milter, listen)


MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
127.0.0.1:{hosting_port} inet n - n - - smtpd -o milter_macro_daemon_name=webhosting
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


@pytest.fixture(scope="module")
def postfix(sink: tuple[Sink, int], outguard: Outguard) -> Iterator[Postfix]:
    require("Postfix (apt-get install postfix)", Path(POSTFIX).exists())
    require("root (postfix start runs as root)", os.geteuid() == 0)
    top = Path(tempfile.mkdtemp(prefix="outguard-postfix-"))
    top.chmod(0o755)  # the postfix user must reach its queue
    config, queue, data = top / "conf", top / "queue", top / "data"
    for path in (config, queue, data):
        path.mkdir()
    shutil.chown(data, "postfix")
    port, hosting_port = free_port(), free_port()
    main = {
        "compatibility_level": "3.6",
        "queue_directory": queue,
        "data_directory": data,
        "maillog_file": top / "maillog",
        "maillog_file_prefixes": top,
        "myhostname": "relay.outguard-test.example",
        "mydestination": "",
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8 192.0.2.0/24",
        "relayhost": f"[127.0.0.1]:{sink[1]}",
        "smtp_dns_support_level": "disabled",
        "smtpd_authorized_xclient_hosts": "127.0.0.1",
        "smtpd_relay_restrictions": "permit_mynetworks permit_sasl_authenticated reject_unauth_destination",
        # What docs/relay-integration.md says: outguard's milter, failing open.
        "smtpd_milters": f"inet:{outguard.listen}",
        "non_smtpd_milters": "",
        "milter_protocol": "6",
        "milter_default_action": "accept",
        "milter_connect_timeout": "5s",
        "milter_command_timeout": "10s",
        "milter_content_timeout": "30s",
        # Real SASL: Cyrus with a sasldb (Debian's Postfix reads $config_directory/sasl/smtpd.conf).
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_sasl_type": "cyrus",
        "smtpd_sasl_path": "smtpd",
        "cyrus_sasl_config_path": config / "sasl",
    }
    (config / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
    (config / "master.cf").write_text(MASTER_CF.format(port=port, hosting_port=hosting_port))
    (config / "sasl").mkdir()
    sasldb = config / "sasl" / "sasldb2"
    (config / "sasl" / "smtpd.conf").write_text(
        f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: {sasldb}\n"
    )
    if Path(SASLPASSWD).exists():
        user, realm = SASL_USER.split("@")
        subprocess.run(
            [SASLPASSWD, "-p", "-c", "-f", str(sasldb), "-u", realm, user],
            input=SASL_PASSWORD.encode(),
            check=True,
        )
        shutil.chown(sasldb, "postfix")
    started = subprocess.run([POSTFIX, "-c", str(config), "start"], capture_output=True, text=True)
    instance = Postfix(config, port, hosting_port)
    if started.returncode != 0:
        pytest.fail(f"postfix did not start: {started.stdout}{started.stderr}\n{instance.log()}")
    wait_until(lambda: _listening(port) and _listening(hosting_port), what="postfix smtpd")
    try:
        yield instance
    finally:
        subprocess.run([POSTFIX, "-c", str(config), "stop"], capture_output=True)
        shutil.rmtree(top, ignore_errors=True)


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


@dataclass
class Submission:
    refused_at: str | None  # "mail", "rcpt", "data", or None when Postfix queued it
    code: int
    text: str
    queue_id: str | None = None


def submit(
    port: int,
    raw: str,
    *,
    sender: str,
    recipients: list[str],
    login: str | None = None,
    client_ip: str = "192.0.2.10",
    sasl: tuple[str, str] | None = None,
) -> Submission:
    """One SMTP transaction the way a customer's mail client (behind the relay's front end) makes it."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.example.net")
        if login is not None:  # a front end telling Postfix who the client is
            code, _ = smtp.docmd("XCLIENT", f"LOGIN={login} ADDR={client_ip} NAME=client.example.net")
            assert code == 220, code
            smtp.ehlo("client.example.net")
        if sasl is not None:
            smtp.login(*sasl)
        code, text = smtp.mail(sender)
        if code != 250:
            return Submission("mail", code, text.decode())
        accepted = [r for r in recipients if smtp.rcpt(r)[0] == 250]
        if not accepted:
            code, text = smtp.rcpt(recipients[0])
            return Submission("rcpt", code, text.decode())
        code, text = smtp.data(raw.encode())
        if code != 250:
            return Submission("data", code, text.decode())
        queue_id = text.decode().rsplit(" ", 1)[-1]
        return Submission(None, code, text.decode(), queue_id)


def ham(marker: str) -> str:
    return make_raw(extra_headers=f"X-Test-Marker: {marker}\r\n").replace(
        "Message-ID: <abc123@example.net>", f"Message-ID: <{marker}@example.net>"
    )


def test_ham_from_a_user_is_delivered_and_scored_as_that_user(
    postfix: Postfix, sink: tuple[Sink, int], outguard: Outguard
) -> None:
    sent = submit(
        postfix.port,
        ham("ham-1"),
        sender="alice@example.net",
        recipients=["bob@example.org"],
        login="alice@example.net",
    )
    assert sent.refused_at is None, sent
    delivered = wait_until(lambda: sink[0].message_with(b"ham-1"), what="the ham at the sink")
    assert b"Subject: Lunch tomorrow?" in delivered  # type: ignore[operator]
    scored = outguard.scored("<ham-1@example.net>")
    assert scored == {
        "relay": "default",
        "account": "alice@example.net",
        "identity_source": "sasl",
        "queue_id": sent.queue_id,  # Postfix's queue id: bounces match by it
        "client_ip": "192.0.2.10",
        "action": "accept",
    }


def test_a_locked_account_is_refused_at_mail_from_with_its_reason(
    postfix: Postfix, sink: tuple[Sink, int], outguard: Outguard
) -> None:
    outguard.lock("dave@example.net", "password phished, ticket 991")
    sent = submit(
        postfix.port,
        ham("locked-1"),
        sender="dave@example.net",
        recipients=["bob@example.org"],
        login="dave@example.net",
    )
    assert (sent.refused_at, sent.code) == ("mail", 550)
    assert sent.text.startswith("5.7.1 Account dave@example.net is locked: locked by an administrator (incident ")
    assert "991" not in sent.text
    assert outguard.scored("<locked-1@example.net>") is None  # refused before any content was sent
    assert sink[0].message_with(b"locked-1") is None


def test_a_hijacked_accounts_spam_run_is_held_then_refused(
    postfix: Postfix, sink: tuple[Sink, int], outguard: Outguard
) -> None:
    results = []
    for n in range(8):
        raw = SPAM.replace("Message-ID: <abc123@example.net>", f"Message-ID: <run-{n}@example.net>")
        sent = submit(postfix.port, raw, sender="erin@example.net", recipients=SPRAYED, login="erin@example.net")
        results.append(sent)
        if sent.refused_at == "mail":
            break
    held = [s.queue_id for s in results if s.refused_at is None]
    assert held, results  # the first ones Postfix took, onto its hold queue
    assert wait_until(lambda: set(held) <= postfix.hold_queue(), what="the spam in the hold queue")
    refused = results[-1]
    assert (refused.refused_at, refused.code) == ("mail", 550), results
    assert refused.text.startswith("5.7.1 Account erin@example.net is locked: suspected compromise (incident ")
    assert len(results) <= 5  # stopped within a handful of messages
    with sink[0].lock:
        assert not any(b"run-" in content for _, _, content in sink[0].received)


def test_a_header_the_relays_identity_rule_reads_is_stripped(
    postfix: Postfix, sink: tuple[Sink, int], outguard: Outguard
) -> None:
    rules = [{"name": "customer", "header": "X-Customer-ID", "trusted": True, "strip": True}]
    response = outguard.client.put("/v1/identity-rules/webhosting", json={"rules": rules, "actor": "ops@example.net"})
    assert response.status_code == 200, response.text
    raw = ham("strip-1").replace("MIME-Version", "X-Customer-ID: cust-4711\r\nX-Customer-ID: cust-4711\r\nMIME-Version")
    sent = submit(
        postfix.hosting_port, raw, sender="shop@example.net", recipients=["bob@example.org"], login="web01@example.net"
    )
    assert sent.refused_at is None, sent
    delivered = wait_until(lambda: sink[0].message_with(b"strip-1"), what="the message at the sink")
    assert b"X-Customer-ID" not in delivered  # type: ignore[operator]
    assert b"X-Test-Marker: strip-1" in delivered  # type: ignore[operator]
    scored = outguard.scored("<strip-1@example.net>")
    assert scored is not None and (scored["relay"], scored["account"]) == ("webhosting", "cust-4711")


def test_a_real_sasl_login_is_the_account(postfix: Postfix, sink: tuple[Sink, int], outguard: Outguard) -> None:
    require("saslpasswd2 (apt-get install sasl2-bin)", Path(SASLPASSWD).exists())
    sent = submit(
        postfix.port, ham("sasl-1"), sender=SASL_USER, recipients=["bob@example.org"], sasl=(SASL_USER, SASL_PASSWORD)
    )
    assert sent.refused_at is None, sent
    wait_until(lambda: sink[0].message_with(b"sasl-1"), what="the message at the sink")
    scored = outguard.scored("<sasl-1@example.net>")
    assert scored is not None and (scored["account"], scored["identity_source"]) == (SASL_USER, "sasl")
    # And locked, the same login is refused at MAIL FROM.
    outguard.lock(SASL_USER, "reported by the customer")
    refused = submit(
        postfix.port, ham("sasl-2"), sender=SASL_USER, recipients=["bob@example.org"], sasl=(SASL_USER, SASL_PASSWORD)
    )
    assert (refused.refused_at, refused.code) == ("mail", 550)
    assert f"Account {SASL_USER} is locked" in refused.text


def test_with_outguard_down_mail_still_flows(postfix: Postfix, sink: tuple[Sink, int], outguard: Outguard) -> None:
    outguard.client.portal.call(outguard.milter.close)  # type: ignore[union-attr]
    try:
        sent = submit(
            postfix.port,
            ham("down-1"),
            sender="alice@example.net",
            recipients=["bob@example.org"],
            login="alice@example.net",
        )
        assert sent.refused_at is None, sent
        wait_until(lambda: sink[0].message_with(b"down-1"), what="the message at the sink")
        assert "connect to Milter service inet:" in postfix.log()
    finally:
        outguard.client.portal.call(outguard.milter.start, outguard.listen)  # type: ignore[union-attr]
    assert outguard.scored("<down-1@example.net>") is None  # nobody scored it: Postfix's default action
    after = submit(
        postfix.port, ham("up-1"), sender="alice@example.net", recipients=["bob@example.org"], login="alice@example.net"
    )
    assert after.refused_at is None
    wait_until(lambda: outguard.scored("<up-1@example.net>"), what="scoring again once outguard is back")
