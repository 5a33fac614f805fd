"""Rspamd-compatible HTTP (`POST /checkv2`, `GET /ping`) against a real `outguard serve`: rspamc, Haraka, HTTP.

rspamc comes from Debian's `rspamd` package (`.ci/run` installs it without starting
its service); Haraka and its `rspamd` plugin from npm (`.ci/run` installs them into
.cache/haraka). Outside CI their tests skip when they are missing; the HTTP checks
that need neither always run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx2 as httpx
import pytest

from service.settings import PROJECT_ROOT
from tests.adapters.test_exim import Sink, free_port
from tests.conftest import make_raw, server_process
from tests.service.test_score_api import SPAM, SPRAYED

pytestmark = pytest.mark.slow

SCORE, OPS, FEEDBACK = "relay-secret", "ops-secret", "feedback-secret"
TOKENS = json.dumps({SCORE: ["score"], OPS: ["admin"], FEEDBACK: ["feedback"]})
MAX_RAW = 4_096


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    state = tmp_path_factory.mktemp("rspamd-http")
    with server_process(state, TOKENS, OUTGUARD_MAX_RAW_BYTES=str(MAX_RAW)) as (url, _):
        yield url


@pytest.fixture(scope="module")
def rspamc() -> str:
    found = shutil.which("rspamc")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("rspamc is required in CI (.ci/run installs Debian's rspamd package)")
        pytest.skip("rspamc not installed (apt-get install rspamd, with its service kept from starting)")
    return found


def run_rspamc(
    rspamc: str, url: str, raw: str, *options: str, token: str | None = SCORE
) -> subprocess.CompletedProcess:
    auth = ("--header", f"Authorization=Bearer {token}") if token else ()
    command = [rspamc, "-h", url.removeprefix("http://"), *auth, *options]
    return subprocess.run(command, input=raw.encode(), capture_output=True, timeout=60, check=False)


def rspamc_json(rspamc: str, url: str, raw: str, *options: str) -> dict:
    done = run_rspamc(rspamc, url, raw, "-j", *options, "symbols")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def check(url: str, raw: bytes | str, token: str | None = SCORE, **headers: str) -> httpx.Response:
    sent = {"Authorization": f"Bearer {token}"} if token else {}
    sent |= {name.replace("_", "-"): value for name, value in headers.items()}
    return httpx.post(f"{url}/checkv2", content=raw, headers=sent, timeout=30)


def lock(url: str, account: str, relay: str = "default") -> None:
    response = httpx.post(
        f"{url}/v1/accounts/{relay}/{quote(account, safe='')}/lock",
        json={"actor": "ops@example.net", "reason": "password phished", "force": True},
        headers={"Authorization": f"Bearer {OPS}"},
    )
    assert response.status_code == 200, response.text


def account(url: str, name: str, relay: str = "default") -> dict:
    response = httpx.get(
        f"{url}/v1/accounts/{relay}/{quote(name, safe='')}", headers={"Authorization": f"Bearer {OPS}"}
    )
    assert response.status_code == 200, response.text
    return response.json()


# -- with rspamc


def test_rspamc_scans_a_message_and_prints_the_verdict(rspamc: str, server: str) -> None:
    done = run_rspamc(
        rspamc, server, make_raw(), "-u", "alice@example.net", "-i", "203.0.113.7", "-r", "bob@example.org", "symbols"
    )
    assert done.returncode == 0, done.stderr
    output = done.stdout.decode()
    assert "Action: no action" in output
    assert "Spam: false" in output
    assert "Score: " in output and " / 4.60" in output
    assert "Symbol: OUTGUARD_ACCEPT" in output
    assert "Symbol: TEXT_MODEL_SCORE" in output
    assert "Message-ID: abc123@example.net" in output


def test_the_answer_has_rspamds_shape(rspamc: str, server: str) -> None:
    answer = rspamc_json(rspamc, server, make_raw(), "-u", "bob@example.net", "-r", "carol@example.org")
    assert answer["action"] == "no action"
    assert answer["is_skipped"] is False
    assert answer["required_score"] == 4.6
    assert isinstance(answer["score"], float)
    assert answer["message-id"] == "abc123@example.net"
    for name, symbol in answer["symbols"].items():
        assert symbol["name"] == name
        assert {"score", "metric_score", "description"} <= set(symbol)
    assert answer["messages"] == {}  # accepted: no reply
    assert answer["outguard"]["account"] == "bob@example.net"
    assert answer["outguard"]["identity_source"] == "sasl"


def test_a_locked_accounts_mail_is_rejected_with_its_reply(rspamc: str, server: str) -> None:
    lock(server, "locked@example.net")
    answer = rspamc_json(rspamc, server, make_raw(), "-u", "locked@example.net", "-r", "bob@example.org")
    assert answer["action"] == "reject"
    assert answer["score"] >= answer["required_score"]
    smtp_message = answer["messages"]["smtp_message"]
    assert smtp_message.startswith("Account locked@example.net is locked: locked by an administrator (incident ")
    assert answer["outguard"]["smtp_reply"] == f"550 5.7.1 {smtp_message}"
    assert "password phished" not in smtp_message  # the admin's words are for the relay
    assert "ACCOUNT_LOCKED" in answer["symbols"]


def test_a_hijacked_accounts_spam_run_is_held_then_rejected(rspamc: str, server: str) -> None:
    recipients = [option for address in SPRAYED for option in ("-r", address)]
    answers = [rspamc_json(rspamc, server, SPAM, "-u", "hijacked@example.net", *recipients) for _ in range(6)]
    held = answers[0]
    assert held["action"] == "soft reject"  # a hold: nobody on this protocol can quarantine
    assert "OUTGUARD_HOLD" in held["symbols"]
    assert held["messages"]["smtp_message"] == "Message held for review, try again later."
    assert held["outguard"]["action"] == "hold"
    assert held["score"] >= held["required_score"]
    last = answers[-1]
    assert last["action"] == "reject"
    assert last["messages"]["smtp_message"].startswith("Account hijacked@example.net is locked: suspected compromise")
    assert account(server, "hijacked@example.net")["counters"]["rcpts_1h"] >= len(SPRAYED)


def test_a_header_marked_strip_is_in_milter_remove_headers(rspamc: str, server: str) -> None:
    rule = {"name": "relay-login", "header": "X-Relay-Login", "strip": True, "trusted": True}
    saved = httpx.put(
        f"{server}/v1/identity-rules/stripping",
        json={"rules": [rule], "actor": "ops"},
        headers={"Authorization": f"Bearer {OPS}"},
    )
    assert saved.status_code == 200, saved.text
    raw = make_raw(extra_headers="X-Relay-Login: shop-42\r\n")
    answer = rspamc_json(rspamc, server, raw, "-u", "x@example.net", "--header", "MTA-Tag=stripping")
    assert answer["milter"] == {"remove_headers": {"X-Relay-Login": 0}}
    assert (answer["outguard"]["account"], answer["outguard"]["relay"]) == ("shop-42", "stripping")


def test_rspamc_without_a_token_is_refused(rspamc: str, server: str) -> None:
    done = run_rspamc(rspamc, server, make_raw(), "symbols", token=None)
    assert b"401" in done.stdout + done.stderr


# -- plain HTTP


def test_the_envelope_headers_reach_the_scorer(server: str) -> None:
    raw = make_raw()
    answer = check(
        server,
        raw,
        User="envelope@example.net",
        IP="[2001:db8::7]",
        Helo="laptop.example.net",
        From="<envelope@example.net>",
        Queue_Id="4AbC9",
        MTA_Tag="haraka-out-1",
    )
    assert answer.status_code == 200, answer.text
    # Rcpt, repeated: httpx sends one header line per value.
    many = httpx.post(
        f"{server}/checkv2",
        content=raw,
        headers=[("Authorization", f"Bearer {SCORE}"), ("User", "rcpts@example.net")]
        + [("Rcpt", f"<r{n}@d{n}.example>") for n in range(3)],
        timeout=30,
    )
    assert many.status_code == 200, many.text
    view = account(server, "envelope@example.net", relay="haraka-out-1")
    assert view["messages_scored"] == 1
    assert view["recent_scores"][0]["client_ip"] == "2001:db8::7"
    counted = account(server, "rcpts@example.net")["counters"]
    assert (counted["rcpts_1h"], counted["rcpt_domains_1h"]) == (3, 3)


def test_a_message_without_message_id_and_sender_still_scores(server: str) -> None:
    raw = "From: someone@example.net\r\nSubject: hi\r\n\r\nbody\r\n"
    answer = check(server, raw, From="<>", IP="198.51.100.20")  # a bounce: the null sender names nobody
    assert answer.status_code == 200, answer.text
    assert answer.json()["message-id"] == "undef"
    assert (answer.json()["outguard"]["account"], answer.json()["outguard"]["identity_source"]) == (
        "198.51.100.20",
        "client_ip",
    )


def test_an_oversized_message_is_scored_on_its_start_and_its_account_checked(server: str) -> None:
    big = make_raw(body="word " * (3 * MAX_RAW))
    assert len(big) > MAX_RAW
    fine = check(server, big, User="big@example.net")
    assert fine.status_code == 200, fine.text
    lock(server, "big@example.net")
    refused = check(server, big, User="big@example.net")
    assert refused.json()["action"] == "reject"


def test_auth_scopes_and_bad_requests(server: str) -> None:
    assert check(server, make_raw(), token=None).status_code == 401
    assert check(server, make_raw(), token=FEEDBACK).status_code == 403
    assert check(server, make_raw(), token=OPS).status_code == 200  # admin may do everything
    bad_tag = check(server, make_raw(), MTA_Tag="no spaces allowed")
    assert bad_tag.status_code == 422 and "MTA-Tag" in bad_tag.json()["detail"]
    assert check(server, make_raw(), Settings="{" + "x" * 2_000 + "}").status_code == 200  # not read, not refused
    compressed = check(server, b"(\xb5/\xfd", Compression="zstd")
    assert compressed.status_code == 415
    ping = httpx.get(f"{server}/ping")
    assert (ping.status_code, ping.text) == (200, "pong\r\n")
    metrics = httpx.get(f"{server}/metrics").text
    assert 'outguard_adapter_requests_total{protocol="rspamd",stage="check"}' in metrics
    assert 'outguard_http_requests_total{method="POST",route="/checkv2",status="200"}' in metrics


def test_ping_needs_no_token(server: str) -> None:
    assert httpx.get(f"{server}/ping").status_code == 200


# -- Haraka and its rspamd plugin, unchanged, in front of outguard

HARAKA = Path(
    os.environ.get("OUTGUARD_HARAKA", PROJECT_ROOT / ".cache" / "haraka" / "node_modules" / ".bin" / "haraka")
)
RSPAMD_INI = """\
host = 127.0.0.1
port = {port}

[check]
authenticated = true
relay = true
private_ip = true
local_ip = true

[reject]
authenticated = true

[auth]
header = Authorization
value = Bearer {token}

[request_headers]
MTA-Tag = haraka-out
"""


@contextlib.contextmanager
def haraka(outguard_port: int, sink_port: int, home: Path) -> Iterator[int]:
    """A Haraka instance (auth/flat_file, rspamd, queue/smtp_forward to the sink) on a free port."""
    if not HARAKA.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"Haraka is required in CI (.ci/run installs it into .cache/haraka): no {HARAKA}")
        pytest.skip(f"Haraka not installed at {HARAKA} (npm install Haraka haraka-plugin-rspamd)")
    subprocess.run([str(HARAKA), "-i", str(home)], check=True, capture_output=True, timeout=60)
    port = free_port()
    config = home / "config"
    (config / "plugins").write_text("auth/flat_file\nrspamd\nqueue/smtp_forward\n")
    (config / "smtp.ini").write_text(f"listen=127.0.0.1:{port}\nnodes=0\ndaemonize=false\n")
    users = "".join(f"{user}=secret\n" for user in ("alice@example.net", "hijacked@example.net", "carol@example.net"))
    (config / "auth_flat_file.ini").write_text(f"[core]\nmethods=PLAIN,LOGIN\n\n[users]\n{users}")
    (config / "smtp_forward.ini").write_text(f"host=127.0.0.1\nport={sink_port}\nenable_outbound=true\n")
    (config / "rspamd.ini").write_text(RSPAMD_INI.format(port=outguard_port, token=SCORE))
    (config / "loglevel").write_text("LOGINFO\n")
    log = (home / "haraka.log").open("wb")
    process = subprocess.Popen([str(HARAKA), "-c", str(home)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"Haraka did not start: {(home / 'haraka.log').read_text()[-2000:]}")
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def submit(port: int, user: str, raw: str, recipients: list[str]) -> str:
    """One authenticated SMTP session; "accepted" or the refusal as `CODE text`."""
    client = smtplib.SMTP("127.0.0.1", port, timeout=60)
    try:
        client.ehlo("client.example.net")
        client.login(user, "secret")
        client.sendmail(user, recipients, raw.replace("\r\n", "\n").replace("\n", "\r\n").encode())
        return "accepted"
    except smtplib.SMTPDataError as error:
        return f"{error.smtp_code} {error.smtp_error.decode()}"
    finally:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            client.quit()


def test_haraka_relays_through_outguard(server: str, tmp_path: Path) -> None:
    sink = Sink()
    rule = {"name": "relay-login", "header": "X-Relay-Login", "strip": True, "trusted": True}
    saved = httpx.put(
        f"{server}/v1/identity-rules/haraka-out",
        json={"rules": [rule], "actor": "ops"},
        headers={"Authorization": f"Bearer {OPS}"},
    )
    assert saved.status_code == 200, saved.text
    lock(server, "alice@example.net", relay="haraka-out")
    try:
        with haraka(int(server.rsplit(":", 1)[1]), sink.port, tmp_path / "haraka") as port:
            # ham is delivered, without the header the identity rule strips
            ham = make_raw(extra_headers="X-Relay-Login: carol-shop\r\n")
            assert submit(port, "carol@example.net", ham, ["bob@example.org"]) == "accepted"
            [delivered] = sink.wait_for(1)
            assert b"Subject: Lunch tomorrow?" in delivered
            assert b"X-Relay-Login" not in delivered
            # a locked account is refused with its reason
            refused = submit(port, "alice@example.net", make_raw(), ["bob@example.org"])
            assert refused.startswith("550 Account alice@example.net is locked: locked by an administrator")
            # a hijacked account's spam run: held (deferred, as Haraka cannot quarantine), then refused
            run = [submit(port, "hijacked@example.net", SPAM, SPRAYED) for _ in range(6)]
            assert run[0] == "451 4.7.1 Message held for review, try again later."
            assert run[-1].startswith("550 Account hijacked@example.net is locked: suspected compromise")
            assert "accepted" not in run
        assert len(sink.messages) == 1
    finally:
        sink.close()


def test_haraka_with_outguard_down_still_relays(tmp_path: Path) -> None:
    sink = Sink()
    try:
        with haraka(free_port(), sink.port, tmp_path / "haraka") as port:  # nothing listens there
            assert submit(port, "alice@example.net", make_raw(), ["bob@example.org"]) == "accepted"
            assert len(sink.wait_for(1)) == 1
    finally:
        sink.close()
