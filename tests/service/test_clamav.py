"""Malware scanning against a real clamd (Debian's clamav-daemon), with a signature database made here.

No official signature database is downloaded: the private clamd (`service.scanning.private`)
loads an `.hdb` line for the EICAR test file (its MD5 and size) and an `.ndb` hex pattern
standing in for a trojan. Outside CI the clamd tests skip when clamd is not installed; in
CI (`CI` set) its absence is a failure.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import time
import zipfile
from collections.abc import Iterator, Sequence
from email.message import EmailMessage
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.scanning import has_attachment, safe_signature
from service.scanning.clamd import ClamdAddress, ClamdClient, ClamdFailure
from service.scanning.private import (
    EICAR,
    EICAR_SIGNATURE,
    TROJAN_MARKER,
    TROJAN_SIGNATURE,
    PrivateClamd,
    clamd_binary,
    private_clamd,
)
from service.settings import Settings
from tests.conftest import make_raw, run_sql
from tests.service.test_webhooks import Receiver, subscribe, wait_for

# clamd names signatures from databases it did not get from ClamAV with this suffix.
EICAR_FOUND = f"{EICAR_SIGNATURE}.UNOFFICIAL"
TROJAN_FOUND = f"{TROJAN_SIGNATURE}.UNOFFICIAL"
INVOICE = (
    "Hi Bob,\n\nAs promised on the phone, here is the invoice for the work on the garden last month. "
    "Let me know if anything is unclear.\n\nBest regards,\nAlice\n"
)


def require_clamd() -> None:
    if clamd_binary() is not None:
        return
    if os.environ.get("CI"):
        pytest.fail("clamd is not installed (CI must have it: .ci/run installs clamav-daemon)")
    pytest.skip("clamd not installed (apt-get install clamav-daemon)")


@pytest.fixture(scope="module")
def clamd() -> Iterator[PrivateClamd]:
    require_clamd()
    with private_clamd() as running:
        yield running


@pytest.fixture
def own_clamd() -> Iterator[PrivateClamd]:
    """A clamd of the test's own, to stop."""
    require_clamd()
    with private_clamd() as running:
        yield running


def mail(body: str = INVOICE, attachments: Sequence[tuple[bytes, str]] = (), subject: str = "Invoice") -> str:
    message = EmailMessage()
    message["From"] = "Alice Example <alice@example.net>"
    message["To"] = "bob@example.org"
    message["Subject"] = subject
    message["Date"] = "Mon, 23 Nov 2026 10:00:00 +0000"
    message["Message-ID"] = "<inv-1@example.net>"
    message.set_content(body)
    for data, filename in attachments:
        message.add_attachment(data, maintype="application", subtype="octet-stream", filename=filename)
    return message.as_string()


def zipped(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def score(client: TestClient, account: str, raw: str, message_id: str = "<m1@example.net>") -> dict:
    body = {"message_id": message_id, "sasl_username": account, "recipients": ["bob@example.org"], "raw": raw}
    response = client.post("/v1/score", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def metric(client: TestClient, name: str) -> float:
    """The value of one Prometheus sample (`name{labels}`), 0 when absent."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def with_clamd(settings: Settings, spec: str, **extra: object) -> Settings:
    return settings.model_copy(update={"clamd": spec, **extra})


def account_url(account: str, suffix: str = "") -> str:
    return f"/v1/accounts/default/{quote(account, safe='')}{suffix}"


# -- through the API, with a real clamd


def test_an_infected_attachment_is_refused_naming_the_virus_and_the_account_is_locked(
    clamd: PrivateClamd, settings: Settings
) -> None:
    receiver = Receiver()
    hooked = with_clamd(settings, clamd.spec, webhook_allow_private=True, webhook_backoff_s=0.05)
    try:
        with TestClient(create_app(hooked)) as client:
            webhook = subscribe(client, receiver.url, ["account.malware_detected", "account.locked"])
            answer = score(client, "alice@example.net", mail(attachments=[(EICAR, "invoice.com")]))

            assert answer["action"] == "reject"
            assert answer["smtp_reply"] == f"550 5.7.1 Virus found: {EICAR_FOUND}"
            assert answer["lock_recommended"] is True
            first = answer["reasons"][0]
            assert first["name"] == "malware" and EICAR_FOUND in first["description"]
            assert first["contribution"] == pytest.approx(settings.lock_threshold + settings.engagement_credit)

            account = client.get(account_url("alice@example.net")).json()
            assert account["locked"] is True  # a new account, locked by one detection
            assert EICAR_FOUND in account["lock_reason"]
            assert [h["action"] for h in account["lock_history"]] == ["locked_temporary", "malware_detected"]

            deliveries = wait_for(client, webhook, "delivered")
            assert sorted(d["event_type"] for d in deliveries) == ["account.locked", "account.malware_detected"]
            events = {event["type"]: event for event in (json.loads(body) for _, body in receiver.received)}
            detected = events["account.malware_detected"]
            assert detected["account"] == "alice@example.net"
            assert detected["evidence"]["details"]["signature"] == EICAR_FOUND
            assert detected["evidence"]["details"]["message_id"] == "<m1@example.net>"

            report = client.get(account_url("alice@example.net", "/incident")).json()
            assert report["what_was_seen"]["malware"]["signatures"] == [{"signature": EICAR_FOUND, "messages": 1}]
            assert report["evidence_strength"] == "strong"
            assert "malware" in report["what_to_do_next"][0]
            markdown = client.get(account_url("alice@example.net", "/incident"), params={"format": "markdown"}).text
            assert "**Malware**: clamd found it in 1 message(s)" in markdown and EICAR_FOUND in markdown

            assert metric(client, 'outguard_malware_scans_total{result="infected"}') == 1
            outbound = client.get("/v1/reports/outbound", params={"since": 0, "until": time.time() + 60}).json()
            [row] = [r for r in outbound["rows"] if r["account"] == "alice@example.net"]
            assert (row["malware_detections"], row["locks"]) == (1, 1)

            # Its content is known spam now: another account sending the same text is held.
            copy = score(client, "carol@example.net", mail(), message_id="<m2@example.net>")
            assert copy["action"] == "hold"
            assert copy["reasons"][0]["name"] == "known_spam_signature"
            assert "source: malware" in copy["reasons"][0]["description"]
            [(source, actor, note)] = run_sql(settings.database_url, "SELECT source, actor, note FROM signatures")
            assert (source, actor, note) == ("malware", "clamd", EICAR_FOUND)

            # A false detection: the admin's unlock with a reason takes the signature down with the lock.
            vouched = {"actor": "ops", "reason": "a false positive of that signature"}
            unlocked = client.post(account_url("alice@example.net", "/unlock"), json=vouched).json()
            assert unlocked["lock_history"][0]["details"]["signatures_removed"]
            again = score(client, "carol@example.net", mail(), message_id="<m3@example.net>")
            assert again["action"] == "accept"
    finally:
        receiver.close()


def test_a_trojan_inside_a_zip_is_found_and_clean_mail_is_unaffected(clamd: PrivateClamd, settings: Settings) -> None:
    clean_pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    plain = make_raw()
    with_pdf = mail(attachments=[(clean_pdf, "invoice.pdf")])
    structured = {"subject": "Invoice", "text": INVOICE, "attachments": [{"filename": "invoice.pdf", "size": 80}]}
    inputs = [("dave@example.net", plain), ("erin@example.net", with_pdf)]

    with TestClient(create_app(settings)) as client:  # no clamd: the reference answers
        expected = [score(client, account, raw) for account, raw in inputs]
    scanning = with_clamd(settings, clamd.spec, database_url=f"sqlite:///{settings.state_dir / 'scan.db'}")
    with TestClient(create_app(scanning)) as client:
        found = [score(client, account, raw) for account, raw in inputs]
        for before, after in zip(expected, found, strict=True):
            assert after["action"] == before["action"] == "accept"
            assert after["spam_probability"] == pytest.approx(before["spam_probability"], abs=1e-12)
            assert after["reasons"] == before["reasons"]
        response = client.post("/v1/score", json={"message_id": "<s@x>", "account": "frank", **structured})
        assert response.json()["action"] == "accept"  # structured content carries no bytes: nothing to scan
        # Only the message with an attachment went to clamd.
        assert metric(client, 'outguard_malware_scans_total{result="clean"}') == 1

        trojan = mail(attachments=[(zipped("setup.exe", b"MZ" + b"\0" * 64 + TROJAN_MARKER), "update.zip")])
        batch = [
            {"message_id": f"<b{i}@x>", "sasl_username": f"batch{i}@example.net", "raw": raw}
            for i, raw in enumerate([plain, trojan, with_pdf])
        ]
        results = client.post("/v1/score/batch", json={"messages": batch}).json()["results"]
        assert [r["action"] for r in results] == ["accept", "reject", "accept"]
        assert results[1]["smtp_reply"] == f"550 5.7.1 Virus found: {TROJAN_FOUND}"
        assert results[1]["lock_recommended"] is True


def test_an_allowlisted_account_is_refused_the_message_but_not_locked(clamd: PrivateClamd, settings: Settings) -> None:
    with TestClient(create_app(with_clamd(settings, clamd.spec))) as client:
        admin = {"actor": "ops", "reason": "our mailing list server", "allowlisted": True}
        assert client.post(account_url("lists@example.net", "/allowlist"), json=admin).status_code == 200
        answer = score(client, "lists@example.net", mail(attachments=[(EICAR, "eicar.com")]))
        assert answer["action"] == "reject"
        assert answer["smtp_reply"] == f"550 5.7.1 Virus found: {EICAR_FOUND}"
        assert answer["lock_recommended"] is False
        assert answer["reasons"][0]["contribution"] == 0.0
        account = client.get(account_url("lists@example.net")).json()
        assert account["locked"] is False
        assert account["lock_history"][0]["action"] == "malware_detected"


def test_clamd_stopped_fails_open_counted_and_shown_in_readyz(own_clamd: PrivateClamd, settings: Settings) -> None:
    attached = mail(attachments=[(EICAR, "eicar.com")])
    with TestClient(create_app(with_clamd(settings, own_clamd.spec))) as client:
        assert client.get("/readyz").json()["malware_scanner"]["reachable"] is True
        own_clamd.stop()
        answer = score(client, "grace@example.net", attached)
        assert answer["action"] != "reject" and answer["smtp_reply"] != f"550 5.7.1 Virus found: {EICAR_FOUND}"
        assert all(r["name"] != "malware" for r in answer["reasons"])
        assert metric(client, 'outguard_malware_scan_failures_total{policy="open",reason="unavailable"}') == 1
        ready = client.get("/readyz")
        assert ready.status_code == 200  # scoring goes on: clamd is detail, not a readiness check
        scanner = ready.json()["malware_scanner"]
        assert scanner["reachable"] is False and scanner["last_failure"].startswith("unavailable")
        assert scanner["on_failure"] == "accept unscanned (fail open)"

        # Back: the breaker's probe finds it again and scans resume.
        own_clamd.start()
        deadline = time.monotonic() + 10
        while client.get("/readyz").json()["malware_scanner"]["breaker"] != "closed":
            assert time.monotonic() < deadline, "the breaker did not close after clamd came back"
            time.sleep(0.1)
        again = score(client, "heidi@example.net", attached, message_id="<m3@example.net>")
        assert again["smtp_reply"] == f"550 5.7.1 Virus found: {EICAR_FOUND}"


def test_clamd_stopped_fails_closed_with_a_deferral(own_clamd: PrivateClamd, settings: Settings) -> None:
    closed = with_clamd(settings, own_clamd.spec, clamd_fail_open=False)
    own_clamd.stop()
    with TestClient(create_app(closed)) as client:
        answer = score(client, "ivan@example.net", mail(attachments=[(b"just a text file\n", "notes.txt")]))
        assert answer["action"] == "defer"
        assert answer["smtp_reply"].startswith("451 4.7.1 ")
        assert answer["reasons"][0]["name"] == "malware_scan_failed"
        plain = score(client, "judy@example.net", make_raw(), "<p@x>")
        assert plain["action"] == "accept"  # nothing to scan: not deferred
        assert metric(client, 'outguard_malware_scan_failures_total{policy="closed",reason="unavailable"}') == 1
        assert client.get("/readyz").json()["malware_scanner"]["on_failure"] == "defer (fail closed)"


def test_a_hung_clamd_times_out_once_then_the_breaker_skips_it(own_clamd: PrivateClamd, settings: Settings) -> None:
    assert own_clamd.process is not None
    fast = with_clamd(settings, own_clamd.spec, clamd_timeout_s=0.3)
    with TestClient(create_app(fast)) as client:
        attached = mail(attachments=[(b"PK\x03\x04 not much of a zip", "files.zip")])
        os.kill(own_clamd.process.pid, signal.SIGSTOP)  # hung: the kernel still accepts, nobody answers
        try:
            started = time.monotonic()
            score(client, "kim@example.net", attached)
            assert time.monotonic() - started >= 0.3
            assert metric(client, 'outguard_malware_scan_failures_total{policy="open",reason="timeout"}') == 1
            started = time.monotonic()
            answer = score(client, "kim@example.net", attached, message_id="<m4@example.net>")
            assert time.monotonic() - started < 0.3  # the open breaker answers at once
            assert answer["smtp_reply"] is None or not answer["smtp_reply"].startswith("550 5.7.1 Virus")
            assert metric(client, 'outguard_malware_scan_failures_total{policy="open",reason="skipped"}') == 1
        finally:
            os.kill(own_clamd.process.pid, signal.SIGCONT)


# -- the client on its own, against the real clamd


def test_a_message_over_the_cap_is_scanned_up_to_it(clamd: PrivateClamd) -> None:
    async def run() -> None:
        client = ClamdClient(ClamdAddress.parse(clamd.spec), max_bytes=4_096)
        verdict = await client.instream(b"x" * 100 + TROJAN_MARKER + b"y" * 100_000)
        assert (verdict.signature, verdict.scanned_bytes, verdict.truncated) == (TROJAN_FOUND, 4_096, True)
        beyond = await client.instream(b"y" * 100_000 + TROJAN_MARKER)
        assert (beyond.signature, beyond.truncated) == (None, True)  # past the cap: not seen (documented)
        assert (await client.instream(EICAR)).signature == EICAR_FOUND
        assert await client.command("PING") == "PONG"

    asyncio.run(run())


def test_a_cap_over_clamds_stream_limit_is_an_error_saying_so() -> None:
    require_clamd()
    with private_clamd(stream_max_bytes=64 * 1024) as small:

        async def run() -> None:
            client = ClamdClient(ClamdAddress.parse(small.spec), max_bytes=1024 * 1024)
            with pytest.raises(ClamdFailure) as failure:
                await client.instream(b"z" * 500_000)
            assert failure.value.reason == "error"
            assert "OUTGUARD_CLAMD_MAX_BYTES" in failure.value.detail

        asyncio.run(run())


# -- pure parts


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (mail(), False),
        (mail(attachments=[(b"data", "a.bin")]), True),
        (b"Content-Type: text/plain\r\nContent-Disposition: attachment\r\n\r\nhi\r\n", True),
        (b"Content-Type: text/plain;\r\n\tname*0*=utf-8''r%C3%A9sum%C3%A9.txt\r\n\r\nhi\r\n", True),
        (b"Content-Type: application/pdf\r\n\r\n%PDF", True),
        (b"Subject: x\r\n\r\nbegin 644 setup.exe\r\nM35H``\r\nend\r\n", True),
        (b"Subject: x\r\n\r\nsee http://example.com/?name=foo and begin the day\r\n", False),
        (b"Content-Type: text/html; charset=utf-8\r\n\r\n<a href='x?a=1;name=2'>x</a>\r\n", False),
    ],
)
def test_what_counts_as_something_to_scan(raw: str | bytes, expected: bool) -> None:
    data = raw.encode() if isinstance(raw, str) else raw
    assert has_attachment(data) is expected


def test_addresses_and_signature_names() -> None:
    assert str(ClamdAddress.parse("unix:/run/clamav/clamd.ctl")) == "unix:/run/clamav/clamd.ctl"
    assert ClamdAddress.parse("tcp:[::1]:3310") == ClamdAddress(host="::1", port=3310)
    assert str(ClamdAddress.parse("tcp:clamd.internal:3310")) == "tcp:clamd.internal:3310"
    for bad in ("clamd:3310", "unix:relative/path", "tcp:host", "tcp:host:0"):
        with pytest.raises(ValueError, match=r"give (unix|tcp)|absolute path"):
            ClamdAddress.parse(bad)
    with pytest.raises(ValueError, match=r"give unix:/path/to/clamd\.ctl or tcp:HOST:PORT"):
        Settings(clamd="localhost:3310")
    assert safe_signature("Win.Trojan.X-1 FOUND\r\n550 injected") == "Win.Trojan.X-1_FOUND__550_injected"


def test_the_benchmark_attaches_a_file_the_scanner_sees() -> None:
    from bench.clamav import attachment, with_attachment
    from features.message import parse_raw

    raw = with_attachment(make_raw(extra_headers="X-Folded: a\r\n b\r\n"), attachment())
    parsed = parse_raw(raw)
    assert [a.filename for a in parsed.attachments] == ["invoice.zip"]
    assert "still on for lunch" in parsed.text
    assert has_attachment(raw.encode()) and not has_attachment(make_raw().encode())
