"""Exim 4.96 from Debian against outguard: spamd `variant=rspamd` (RSPAMC/1.3) and the policy gate via readsocket.

A real Exim daemon (`exim4-daemon-heavy`, extracted from its .deb by `.ci/run`: the
`-light` daemon has no `spam` condition) on loopback, with real SMTP AUTH, relaying to
a small SMTP sink; outguard's RSPAMC and policy listeners on real sockets. The ACLs are
the ones docs/relay-integration.md shows, read from it.

Outside CI the tests skip when the Exim binary is not there (or not as root); in CI a
missing Exim is a failure.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import PROJECT_ROOT, Settings
from tests.conftest import make_raw
from tests.service.test_score_api import SPAM, SPRAYED

DOCS = PROJECT_ROOT / "docs" / "relay-integration.md"
EXIM_USER = "Debian-exim"  # compiled into Debian's binary
CANDIDATES = (
    os.environ.get("OUTGUARD_EXIM", ""),
    str(PROJECT_ROOT / ".cache" / "exim" / "usr" / "sbin" / "exim4"),
    "/usr/sbin/exim4",
)


def exim_binary() -> Path:
    """The Exim to run; skip (fail in CI) without one that has content scanning, or without root."""
    problem = None
    found = next((Path(c) for c in CANDIDATES if c and Path(c).is_file()), None)
    if found is None:
        problem = "no Exim binary (.ci/run extracts exim4-daemon-heavy into .cache/exim)"
    elif os.geteuid() != 0:
        problem = "Exim's daemon needs root"
    else:
        try:
            pwd.getpwnam(EXIM_USER)
        except KeyError:
            problem = f"no {EXIM_USER} user (.ci/run creates it)"
    if problem is None:
        assert found is not None
        version = subprocess.run(
            [str(found), "-bV", "-C", "/dev/null"], capture_output=True, text=True, timeout=30, check=False
        )
        if "Content_Scanning" not in version.stdout:
            problem = f"{found} has no content scanning (use exim4-daemon-heavy): {version.stdout[-300:]}"
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"Exim is required in CI: {problem}")
        pytest.skip(problem)
    assert found is not None
    return found


def documented(marker: str) -> str:
    """The fenced block after `<!-- test: MARKER -->` in docs/relay-integration.md."""
    text = DOCS.read_text()
    match = re.search(rf"<!-- test: {re.escape(marker)} -->\s*```exim\n(.*?)```", text, re.S)
    assert match, f"docs/relay-integration.md has no {marker} block"
    return match.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- a small SMTP sink: what Exim delivers


class Sink:
    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(connection,), daemon=True).start()

    def _session(self, connection: socket.socket) -> None:
        with connection, connection.makefile("rwb") as stream:
            stream.write(b"220 sink ESMTP\r\n")
            stream.flush()
            while line := stream.readline():
                verb = line[:4].upper()
                if verb == b"DATA":
                    stream.write(b"354 go ahead\r\n")
                    stream.flush()
                    body = []
                    while (data := stream.readline()) not in (b".\r\n", b".\n", b""):
                        body.append(data[1:] if data.startswith(b"..") else data)
                    self.messages.append(b"".join(body))
                    stream.write(b"250 2.0.0 stored\r\n")
                elif verb == b"QUIT":
                    stream.write(b"221 bye\r\n")
                    stream.flush()
                    return
                else:
                    stream.write(b"250 sink\r\n")
                stream.flush()

    def wait_for(self, count: int, timeout: float = 20) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.messages

    def close(self) -> None:
        self.server.close()


# -- Exim


MAIN = """\
primary_hostname = relay.outguard.test
exim_path = {exim}
spool_directory = {home}/spool
log_file_path = {home}/log/%slog
pid_file_path = {home}/exim.pid
local_interfaces = 127.0.0.1
keep_environment =
host_lookup =
tls_advertise_hosts =
auth_advertise_hosts = *
acl_smtp_rcpt = acl_check_rcpt
acl_smtp_data = acl_check_data
spamd_address = 127.0.0.1 {rspamc_port} variant=rspamd tmo=30s

begin acl
{rcpt_acl}
{data_acl}
begin routers
to_sink:
  driver = manualroute
  route_list = * 127.0.0.1
  transport = to_sink
  self = send

begin transports
to_sink:
  driver = smtp
  port = {sink_port}
  allow_localhost
  hosts_try_chunking =
  hosts_try_prdr =

begin retry
*   *   F,1h,1m

begin authenticators
plain:
  driver = plaintext
  public_name = PLAIN
  server_prompts = :
  server_condition = ${{if eq{{$auth3}}{{secret}}}}
  server_set_id = $auth2
"""

PLAIN_RCPT_ACL = """\
acl_check_rcpt:
  accept  authenticated = *
  deny    message = 550 5.7.1 Authentication required
"""


class Exim:
    """An Exim daemon (`-bdf`, our child) in a directory of its own that the exim user can reach."""

    def __init__(self, binary: Path, rspamc_port: int, sink_port: int, rcpt_acl: str = PLAIN_RCPT_ACL) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="outguard-exim-"))
        os.chmod(self.home, 0o755)
        for name in ("spool", "log"):
            (self.home / name).mkdir()
        self.exim = self.home / "exim4"  # a copy the exim user can execute wherever the checkout lives
        shutil.copy2(binary, self.exim)
        self.port = free_port()
        self.config = self.home / "exim.conf"
        self.config.write_text(
            MAIN.format(
                exim=self.exim,
                home=self.home,
                rspamc_port=rspamc_port,
                sink_port=sink_port,
                rcpt_acl=rcpt_acl,
                data_acl=documented("exim-data-acl"),
            )
        )
        user = pwd.getpwnam(EXIM_USER)
        for path in (self.home / "spool", self.home / "log"):
            os.chown(path, user.pw_uid, user.pw_gid)
        self.process = subprocess.Popen(
            [str(self.exim), "-C", str(self.config), "-bdf", "-oX", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"Exim did not start: {self.log()}")

    def send(self, user: str, raw: str, recipients: list[str], sender: str | None = None) -> None:
        """One SMTP session with AUTH PLAIN; smtplib raises on a refusal."""
        with smtplib.SMTP("127.0.0.1", self.port, timeout=60) as client:
            client.ehlo("client.example.net")
            client.login(user, "secret")
            client.sendmail(sender or user, recipients, raw.encode())

    def queue(self) -> str:
        listing = subprocess.run(
            [str(self.exim), "-C", str(self.config), "-bp"], capture_output=True, text=True, timeout=30, check=False
        )
        return listing.stdout

    def log(self) -> str:
        return "".join(path.read_text(errors="replace") for path in sorted((self.home / "log").glob("*log")))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.home, ignore_errors=True)


# -- fixtures


@pytest.fixture(scope="module")
def binary() -> Path:
    return exim_binary()


@pytest.fixture
def outguard(binary: Path, settings: Settings) -> Iterator[tuple[TestClient, int, int]]:
    """The app with its RSPAMC and policy listeners on free ports: (client, rspamc port, policy port)."""
    settings = settings.model_copy(update={"rspamc_listen": "127.0.0.1:0", "policy_listen": "127.0.0.1:0"})
    with TestClient(create_app(settings)) as client:
        rspamc, policy = client.app.state.listeners
        yield client, rspamc.port, policy.port


@pytest.fixture
def sink() -> Iterator[Sink]:
    server = Sink()
    yield server
    server.close()


@contextlib.contextmanager
def running_exim(binary: Path, rspamc_port: int, sink: Sink, rcpt_acl: str = PLAIN_RCPT_ACL) -> Iterator[Exim]:
    exim = Exim(binary, rspamc_port, sink.port, rcpt_acl)
    try:
        yield exim
    finally:
        exim.stop()


def reply_text(raw: bytes) -> str:
    """A refusal's text as one line: Exim wraps a long reply, repeating the enhanced code on each line."""
    lines = raw.decode().split("\n")
    return " ".join([lines[0], *(re.sub(r"^[245]\.\d+\.\d+ ", "", line) for line in lines[1:])])


def lock(client: TestClient, account: str, reason: str) -> None:
    response = client.post(
        f"/v1/accounts/default/{quote(account, safe='')}/lock",
        json={"actor": "ops@example.net", "reason": reason, "force": True},
    )
    assert response.status_code == 200, response.text


HAM = make_raw(sender="Alice Example <alice@example.net>", to="bob@example.org")


# -- the tests


def test_ham_is_delivered(binary: Path, outguard, sink: Sink) -> None:
    client, rspamc_port, _ = outguard
    with running_exim(binary, rspamc_port, sink) as exim:
        exim.send("alice@example.net", HAM, ["bob@example.org"])
        [delivered] = sink.wait_for(1)
        assert b"Subject: Lunch tomorrow?" in delivered
        assert "frozen" not in exim.queue()
    metrics = client.get("/metrics").text
    assert 'outguard_adapter_answers_total{action="accept",protocol="rspamc"} 1.0' in metrics


def test_a_locked_account_is_refused_with_its_reason(binary: Path, outguard, sink: Sink) -> None:
    client, rspamc_port, _ = outguard
    lock(client, "alice@example.net", "password phished, ticket 4711")
    with running_exim(binary, rspamc_port, sink) as exim:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            exim.send("alice@example.net", HAM, ["bob@example.org"])
        code, text = refused.value.smtp_code, reply_text(refused.value.smtp_error)
        assert code == 550
        assert text.startswith("5.7.1 Account alice@example.net is locked:")
        assert "locked by an administrator" in text
        assert "ticket 4711" not in text  # the admin's note is for the relay, not the sender
        assert "rejected after DATA" in exim.log()
    assert sink.messages == []


def test_the_policy_gate_refuses_a_locked_account_at_rcpt_through_readsocket(
    binary: Path, outguard, sink: Sink
) -> None:
    client, rspamc_port, policy_port = outguard
    rcpt_acl = documented("exim-rcpt-acl").replace("inet:127.0.0.1:10040", f"inet:127.0.0.1:{policy_port}")
    lock(client, "alice@example.net", "password phished")
    with running_exim(binary, rspamc_port, sink, rcpt_acl) as exim:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            exim.send("alice@example.net", HAM, ["bob@example.org"])
        [(code, text)] = refused.value.recipients.values()
        assert code == 550
        assert reply_text(text).startswith("5.7.1 Account alice@example.net is locked:")
        exim.send("carol@example.net", HAM, ["bob@example.org"])  # the gate says DUNNO for everyone else
        assert len(sink.wait_for(1)) == 1
    metrics = client.get("/metrics").text
    assert 'outguard_adapter_answers_total{action="reject",protocol="policy"} 1.0' in metrics


def test_a_spam_run_is_frozen_then_refused(binary: Path, outguard, sink: Sink) -> None:
    client, rspamc_port, _ = outguard
    outcomes = []
    with running_exim(binary, rspamc_port, sink) as exim:
        for _ in range(6):
            try:
                exim.send("hijacked@example.net", SPAM, SPRAYED)
                outcomes.append("accepted")
            except smtplib.SMTPDataError as error:
                outcomes.append(f"{error.smtp_code} {reply_text(error.smtp_error)}")
        queue = exim.queue()
        frozen = queue.count("*** frozen ***")
        assert "outguard: held for review, frozen" in exim.log()
    assert outcomes[0] == "accepted"  # held: accepted and frozen, never delivered
    assert frozen == outcomes.count("accepted") >= 1
    assert outcomes[-1].startswith("550 5.7.1 Account hijacked@example.net is locked: suspected compromise")
    assert sink.messages == []  # nothing of the run left
    state = client.get(f"/v1/accounts/default/{quote('hijacked@example.net', safe='')}").json()
    assert state["locked"] is True


def test_a_header_an_identity_rule_marks_strip_is_removed(binary: Path, outguard, sink: Sink) -> None:
    client, rspamc_port, _ = outguard
    rule = {"name": "relay-login", "header": "X-Relay-Login", "strip": True, "trusted": True}
    assert client.put("/v1/identity-rules/default", json={"rules": [rule], "actor": "ops"}).status_code == 200
    raw = make_raw(extra_headers="X-Relay-Login: shop-42\r\nX-Mailer: Shop 1.0\r\n")
    with running_exim(binary, rspamc_port, sink) as exim:
        exim.send("alice@example.net", raw, ["bob@example.org"])
        [delivered] = sink.wait_for(1)
    assert b"X-Relay-Login" not in delivered
    assert b"X-Mailer: Shop 1.0" in delivered
    account = client.get("/v1/accounts/default/shop-42").json()
    assert account["messages_scored"] == 1  # the header named the account before it went


def test_with_outguard_down_mail_still_flows(binary: Path, sink: Sink) -> None:
    closed = free_port()  # nothing listens: the spam condition defers, /defer_ok lets the mail through
    rcpt_acl = documented("exim-rcpt-acl").replace("inet:127.0.0.1:10040", f"inet:127.0.0.1:{free_port()}")
    with running_exim(binary, closed, sink, rcpt_acl) as exim:
        exim.send("alice@example.net", HAM, ["bob@example.org"])
        [delivered] = sink.wait_for(1)
        assert b"Subject: Lunch tomorrow?" in delivered
        assert "spamd" in exim.log()  # Exim says why it did not scan


# -- the RSPAMC/1.3 protocol itself (no Exim needed)

SPAM_C = re.compile(
    rb"^RSPAMD/(\S{1,7}) 0 EX_OK\r\nMetric: default; (\S{1,7}) (-?[\d.]+) / (-?[\d.]+) / (-?[\d.]+)\r\n"
)


@pytest.fixture
def rspamc_port(settings: Settings) -> Iterator[int]:
    tuned = settings.model_copy(update={"rspamc_listen": "127.0.0.1:0", "max_raw_bytes": 2_048})
    with TestClient(create_app(tuned)) as client:
        [listener] = client.app.state.listeners
        yield listener.port


def rspamc_exchange(port: int, request: bytes) -> bytes:
    """Send without closing our side (as Exim does), read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(request)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    return received


def rspamc_request(raw: bytes, **headers: str) -> bytes:
    fields = "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in headers.items())
    head = f"CHECK RSPAMC/1.3\r\nContent-length: {len(raw)}\r\n{fields}"
    return head.encode() + b"\r\n" + raw


def test_the_rspamc_answer_is_what_spam_c_parses(rspamc_port: int) -> None:
    raw = make_raw().encode()
    answer = rspamc_exchange(rspamc_port, rspamc_request(raw, User="alice@example.net", Queue_Id="1xAbC"))
    match = SPAM_C.match(answer)
    assert match, answer
    assert match.group(2) in (b"True;", b"False;")
    rest = answer[match.end() :].decode()
    assert rest.startswith("Action: no action\r\n")
    assert "Symbol: OUTGUARD_ACCEPT(0.00)\r\n" in rest
    assert rest.endswith("Message-ID: abc123@example.net\r\n")


def test_an_oversized_rspamc_message_is_read_whole_and_answered(rspamc_port: int) -> None:
    raw = make_raw(body="lorem ipsum " * 2_000).encode()  # 24 KB against a 2 KB limit
    answer = rspamc_exchange(rspamc_port, rspamc_request(raw, User="big@example.net"))
    assert SPAM_C.match(answer), answer


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CHECK RSPAMC/1.3\r\nUser: x\r\n\r\n",
        b"CHECK RSPAMC/1.3\r\nbroken\r\n\r\n",
    ],
    ids=["http", "no-content-length", "no-colon"],
)
def test_what_is_not_rspamc_is_closed_without_an_answer(rspamc_port: int, request_bytes: bytes) -> None:
    assert rspamc_exchange(rspamc_port, request_bytes) == b""  # Exim: cannot parse -> defer (/defer_ok: accept)
