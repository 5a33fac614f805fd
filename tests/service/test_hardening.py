"""Odd and hostile input gets a clear 4xx, never a 500; limits hold for every form of content;
webhooks reach public addresses only; database errors are logged once and without content (issue 16)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from service.app import create_app
from service.settings import Settings
from service.stores.database import Database
from service.webhooks.targets import RefusedTarget, check_target, not_public
from tests.conftest import make_raw, run_sql

ADMIN = {"actor": "ops", "reason": "ticket 16"}
TOO_BIG_ID = 2**64 + 1  # 18446744073709551617


def fields(response) -> set[str]:
    return {problem["field"] for problem in response.json()["detail"]}


def post_escaped(client: TestClient, path: str, body: dict):
    """As a relay's JSON encoder sends it: every non-ASCII character escaped, lone surrogates too."""
    return client.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


# -- 5. no 500 on odd input


@pytest.mark.parametrize("webhook_id", [TOO_BIG_ID, 2**63, -1, 0])
def test_webhook_ids_outside_64_bits_are_a_422(client: TestClient, webhook_id: int) -> None:
    for response in (
        client.get(f"/v1/webhooks/{webhook_id}/deliveries"),
        client.delete(f"/v1/webhooks/{webhook_id}"),
    ):
        assert response.status_code == 422, response.text
        assert fields(response) == {"path.webhook_id"}


def test_the_largest_webhook_id_is_a_plain_answer(client: TestClient) -> None:
    largest = 2**63 - 1
    assert client.get(f"/v1/webhooks/{largest}/deliveries").json() == {"id": largest, "deliveries": []}
    missing = client.delete(f"/v1/webhooks/{largest}")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"


@pytest.mark.parametrize("field", ["message_id", "account", "sasl_username", "envelope_from", "queue_id", "helo"])
@pytest.mark.parametrize(("junk", "says"), [("\x00", "U+0000"), ("\ud800", "lone surrogate (U+D800)")])
def test_nul_and_lone_surrogates_in_names_are_refused_naming_the_field(
    client: TestClient, field: str, junk: str, says: str
) -> None:
    # The names are stored and looked up as given, so they must be storable.
    response = post_escaped(client, "/v1/score", {"message_id": "m", "text": "hello"} | {field: f"a{junk}b"})
    assert response.status_code == 422, response.text
    [problem] = response.json()["detail"]
    assert problem["field"] == field
    assert says in problem["problem"]


def test_nul_in_a_recipient_is_refused_naming_it(client: TestClient) -> None:
    body = b'{"message_id": "m", "text": "hi", "recipients": ["ok@example.org", "bad\\u0000@example.org"]}'
    response = client.post("/v1/score", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert fields(response) == {"recipients.1"}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/accounts/default/alice/lock", {"actor": "o\x00ps", "reason": "r"}, "actor"),
        ("/v1/accounts/default/alice/unlock", {"actor": "ops", "reason": "r\x00"}, "reason"),
        ("/v1/accounts/default/al%00ice/lock", ADMIN, "path.account"),
        ("/v1/signatures", {"message_id": "<a\x00@b>", "actor": "ops"}, "message_id"),
        ("/v1/signatures", {"message_id": "<a@b>", "actor": "o\x00"}, "actor"),
        ("/v1/webhooks", {"url": "https://example.com/\x00", "events": ["account.locked"]}, "url"),
        ("/v1/webhooks", {"url": "https://example.com/", "events": ["account.locked\x00"]}, "events.0"),
    ],
)
def test_nul_in_admin_fields_is_refused_naming_the_field(client: TestClient, path: str, body: dict, field: str) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert fields(response) == {field}
    assert "U+0000" in str(response.json()["detail"])


def test_nul_in_query_parameters_is_refused(client: TestClient) -> None:
    response = client.get("/v1/reports/outbound", params={"relay": "a\x00"})
    assert response.status_code == 422
    assert fields(response) == {"query.relay"}


def test_a_lone_surrogate_in_a_webhook_description_is_refused(client: TestClient) -> None:
    body = b'{"url": "https://example.com/h", "events": ["account.locked"], "description": "x\\udfff"}'
    response = client.post("/v1/webhooks", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert fields(response) == {"description"}
    assert "lone surrogate (U+DFFF)" in response.json()["detail"][0]["problem"]


def test_a_lock_too_long_to_end_is_refused_and_a_long_one_reports(client: TestClient) -> None:
    forever = client.post("/v1/accounts/default/alice/lock", json=ADMIN | {"duration_s": 10**14, "force": True})
    assert forever.status_code == 422
    assert fields(forever) == {"duration_s"}
    decade = client.post(
        "/v1/accounts/default/alice/lock", json=ADMIN | {"duration_s": 10 * 365 * 86_400, "force": True}
    )
    assert decade.status_code == 200, decade.text
    for format in ("json", "markdown", "html"):
        assert client.get(f"/v1/accounts/default/alice/incident?format={format}").status_code == 200


@pytest.mark.parametrize("parameter", [("/v1/admin/models/shadow", "since"), ("/v1/campaigns", "at")])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_times_that_are_no_number_are_refused(client: TestClient, parameter: tuple[str, str], value: str) -> None:
    path, name = parameter
    response = client.get(path, params={name: value})
    assert response.status_code == 422
    assert fields(response) == {f"query.{name}"}


@pytest.mark.parametrize("timestamp", ["0001-01-01T00:00:00+14:00", "1969-12-31T23:59:59Z"])
def test_timestamps_before_the_epoch_are_refused(client: TestClient, timestamp: str) -> None:
    # An account's incident report could not print a date before year 1 (it answered 500).
    for path, body in [
        ("/v1/score", {"message_id": "old", "account": "old", "text": "hi"}),
        ("/v1/feedback", {"event_id": "old", "type": "bounce", "account": "old"}),
        ("/v1/labels", {"target": "account", "label": "compromised", "account": "old", "actor": "ops"}),
    ]:
        response = client.post(path, json=body | {"timestamp": timestamp})
        assert response.status_code == 422, (path, response.text)
        assert "before 1970-01-01T00:00:00Z" in response.json()["detail"]
    assert (
        client.post("/v1/score", json={"message_id": "epoch", "timestamp": "1970-01-01T00:00:00Z"}).status_code == 200
    )
    assert client.get("/v1/accounts/default/old/incident?format=html").status_code == 200


def test_a_report_offset_past_64_bits_is_refused(client: TestClient) -> None:
    response = client.get("/v1/reports/outbound", params={"offset": 2**64})
    assert response.status_code == 422
    assert fields(response) == {"query.offset"}


@pytest.mark.backends
def test_nul_in_message_content_is_scored_and_logged(client: TestClient, backend: str) -> None:
    """A NUL inside the content is scored; its subject still reaches the scored log (PostgreSQL refuses U+0000)."""
    raw = make_raw(subject="caf\x00e \ud800 menu", body="Menu\x00 for today\r\n")
    body = {"message_id": "<nul-1@example.net>", "account": "nul-account", "raw": raw}
    response = post_escaped(client, "/v1/score", body)
    assert response.status_code == 200, response.text
    view = client.get("/v1/accounts/default/nul-account").json()  # flushes the log first
    assert [s["message_id"] for s in view["recent_scores"]] == ["<nul-1@example.net>"]
    structured = {"message_id": "<nul-2@example.net>", "account": "nul-account", "subject": "a\x00b", "text": "c"}
    assert client.post("/v1/score", json=structured).status_code == 200
    view = client.get("/v1/accounts/default/nul-account").json()
    assert [s["message_id"] for s in view["recent_scores"]] == ["<nul-2@example.net>", "<nul-1@example.net>"]


@pytest.mark.backends
def test_nul_in_text_reaching_the_database_is_stored_not_dropped(settings: Settings) -> None:
    """Whatever text reaches the database (a DSN's fields, a subject) is stored on every backend."""
    database = Database(settings.database_url)
    try:
        row = {"ts": 1.0, "relay": "r", "account": "a\x00b", "action": "lock", "actor": "dsn\x00", "reason": "x\udcff"}
        row |= {"from_status": "active", "to_status": "locked", "details": "{}"}

        insert = text(
            "INSERT INTO audit_log (ts, relay, account, action, actor, reason, from_status, to_status, details) "
            "VALUES (:ts, :relay, :account, :action, :actor, :reason, :from_status, :to_status, :details)"
        )

        async def write() -> None:
            await database.writer.submit(lambda c: c.execute(insert, row))

        asyncio.run(write())
        stored = database.read_now(
            lambda c: c.exec_driver_sql("SELECT account, actor, reason FROM audit_log WHERE relay = 'r'").all()
        )
    finally:
        database.close()
    assert len(stored) == 1
    account, actor, reason = stored[0]
    assert account.replace("\ufffd", "\x00") == "a\x00b"  # PostgreSQL keeps U+FFFD where the NUL was
    assert actor.replace("\ufffd", "\x00") == "dsn\x00"
    assert reason == "x\ufffd"  # a lone surrogate (a DSN decoded with surrogateescape) on either database


# -- 6. limits apply to every form of content


def test_twelve_megabytes_of_structured_text_is_413(client: TestClient) -> None:
    body = {"message_id": "big-text", "subject": "hello", "text": "spam " * (12 * 1024 * 1024 // 5)}
    response = client.post("/v1/score", json=body)
    assert response.status_code == 413
    detail = response.json()["detail"]
    assert "subject, text, html, headers and attachment names are" in detail
    assert "over the limit of 10485760 bytes" in detail


@pytest.mark.parametrize(
    "content",
    [
        {"html": "<p>" + "x" * 3000 + "</p>"},
        {"headers": [["X-Filler", "y" * 1000]] * 3},
        {"subject": "s" * 1000, "text": "t" * 1000, "attachments": [{"filename": "f" * 100}]},
        {"text": "é" * 1100},  # 2 bytes each as UTF-8
    ],
)
def test_every_structured_field_counts_towards_the_byte_limit(settings: Settings, content: dict) -> None:
    with TestClient(create_app(settings.model_copy(update={"max_raw_bytes": 2048}))) as client:
        response = client.post("/v1/score", json={"message_id": "m"} | content)
        batch = client.post(
            "/v1/score/batch", json={"messages": [{"message_id": "ok", "text": "hi"}, content | {"message_id": "m"}]}
        )
    assert response.status_code == 413, response.text
    assert "over the limit of 2048 bytes" in response.json()["detail"]
    assert batch.status_code == 413
    assert batch.json()["detail"].startswith("messages.1.")


def test_too_many_attachments_or_headers_is_413(client: TestClient) -> None:
    attachments = client.post(
        "/v1/score", json={"message_id": "a", "text": "hi", "attachments": [{"filename": "a.pdf"}] * 1001}
    )
    assert attachments.status_code == 413
    assert attachments.json()["detail"] == "attachments has 1001 entries, over the limit of 1000"
    headers = client.post("/v1/score", json={"message_id": "h", "headers": [["X-A", "b"]] * 1001})
    assert headers.status_code == 413
    assert headers.json()["detail"] == "headers has 1001 entries, over the limit of 1000"
    assert client.post("/v1/score", json={"message_id": "ok", "attachments": [{}] * 1000}).status_code == 200


def test_half_a_million_attachments_are_refused_before_they_are_validated(client: TestClient) -> None:
    body = {"message_id": "flood", "text": "hi", "attachments": [{}] * 500_000}
    started = time.perf_counter()
    response = client.post("/v1/score", json=body)
    elapsed = time.perf_counter() - started
    assert response.status_code == 422
    assert fields(response) == {"attachments"}
    assert "at most 10000 items" in response.json()["detail"][0]["problem"]
    assert elapsed < 1.5, f"took {elapsed:.2f} s"  # was 3.3 s of a stalled event loop


def test_a_batch_cannot_carry_the_flood_in_many_messages(client: TestClient) -> None:
    messages = [{"message_id": f"m{i}", "text": "hi", "attachments": [{}] * 6_000} for i in range(20)]
    started = time.perf_counter()
    response = client.post("/v1/score/batch", json={"messages": messages})
    elapsed = time.perf_counter() - started
    assert response.status_code == 422
    assert "120000 headers and attachments together, more than the 100000" in response.json()["detail"][0]["problem"]
    assert elapsed < 1.5, f"took {elapsed:.2f} s"


def test_the_limits_are_settings(settings: Settings) -> None:
    tight = settings.model_copy(update={"max_attachments": 2, "max_headers": 3})
    with TestClient(create_app(tight)) as client:
        assert client.post("/v1/score", json={"message_id": "a", "attachments": [{}] * 3}).status_code == 413
        assert client.post("/v1/score", json={"message_id": "h", "headers": [["A", "b"]] * 4}).status_code == 413
        assert client.post("/v1/score", json={"message_id": "k", "headers": [["A", "b"]] * 3}).status_code == 200


# -- 7. webhook targets are public addresses only


@pytest.mark.parametrize(
    "address",
    [
        "100.64.0.1",  # shared address space (carrier-grade NAT)
        "100.127.255.254",
        "2002:a00:1::",  # 6to4 of 10.0.0.1
        "2002:6440:1::",  # 6to4 of 100.64.0.1
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "::ffff:100.64.0.1",  # IPv4-mapped
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254, the cloud metadata service
        "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo
        "127.0.0.1",
        "10.1.2.3",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "fc00::1",
        "198.18.0.1",
    ],
)
def test_non_public_targets_are_refused(address: str) -> None:
    assert not_public(ipaddress.ip_address(address)) is not None
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(RefusedTarget, match="not a public one"):
        asyncio.run(check_target(f"https://{host}/hook", allow_private=False))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2002:808:808::", "::ffff:8.8.8.8"])
def test_public_targets_pass(address: str) -> None:
    assert not_public(ipaddress.ip_address(address)) is None
    host = f"[{address}]" if ":" in address else address
    asyncio.run(check_target(f"https://{host}/hook", allow_private=False))


def test_the_api_refuses_a_cgnat_or_6to4_webhook_and_takes_a_public_one(client: TestClient) -> None:
    for url in ("http://100.64.0.1/hook", "http://[2002:a00:1::]/hook"):
        response = client.post("/v1/webhooks", json={"url": url, "events": ["account.locked"]})
        assert response.status_code == 422, response.text
        assert "not a public one" in response.json()["detail"]
    public = client.post("/v1/webhooks", json={"url": "https://8.8.8.8/hook", "events": ["account.locked"]})
    assert public.status_code == 201, public.text


@pytest.mark.parametrize("url", ["http://[::1/hook", "http://" + "a" * 70 + ".example/hook", "http://exa mple.com/"])
def test_unusable_webhook_urls_are_a_422(client: TestClient, url: str) -> None:
    response = client.post("/v1/webhooks", json={"url": url, "events": ["account.locked"]})
    assert response.status_code == 422, response.text


# -- 8. logs keep no content


SECRET_SUBJECT = "Quarterly-invoice-7c1e"
SECRET_ACCOUNT = "payroll-7c1e@example.net"
SECRET_REASON = "ticket-7c1e"


@pytest.mark.backends
def test_database_errors_are_logged_once_without_their_parameters(
    settings: Settings, caplog: pytest.LogCaptureFixture, backend: str
) -> None:
    refuse = {
        "sqlite": [
            "CREATE TRIGGER refuse_{t} BEFORE INSERT ON {t} BEGIN SELECT RAISE(ABORT, 'writes refused'); END",
        ],
        "postgresql": [
            "CREATE OR REPLACE FUNCTION refuse_writes() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'writes refused'; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER refuse_{t} BEFORE INSERT ON {t} FOR EACH ROW EXECUTE FUNCTION refuse_writes()",
        ],
    }[backend.split("+")[0]]
    with TestClient(create_app(settings)) as client:
        for table in ("scored_messages", "account_status", "audit_log"):
            for statement in refuse:
                run_sql(settings.database_url, statement.format(t=table))
        caplog.clear()
        with caplog.at_level(logging.INFO):
            raw = make_raw(subject=SECRET_SUBJECT, sender=f"<{SECRET_ACCOUNT}>")
            scored = client.post("/v1/score", json={"message_id": "<7c1e@x>", "account": SECRET_ACCOUNT, "raw": raw})
            assert scored.status_code == 200
            assert client.get(f"/v1/accounts/default/{quote(SECRET_ACCOUNT)}").status_code == 200  # flushes the log
            locked = client.post(
                f"/v1/accounts/default/{quote(SECRET_ACCOUNT)}/lock", json={"actor": "ops", "reason": SECRET_REASON}
            )
            assert locked.status_code == 503, locked.text
    service = [r for r in caplog.records if not r.name.startswith("httpx")]  # not the test's own client
    logged = "\n".join(
        record.getMessage() + (logging.Formatter().formatException(record.exc_info) if record.exc_info else "")
        for record in service
    )
    for secret in (SECRET_SUBJECT, "7c1e"):
        assert secret not in logged
    failures = [r for r in service if "writes refused" in r.getMessage() or "writes refused" in str(r.exc_info)]
    by_kind = {
        "scored": [r for r in failures if "scored_messages" in r.getMessage()],
        "lock": [r for r in failures if "scored_messages" not in r.getMessage()],
    }
    assert len(by_kind["scored"]) == 1, [r.getMessage() for r in failures]
    assert len(by_kind["lock"]) == 1, [r.getMessage() for r in failures]


def test_the_identity_rule_dry_run_has_the_scoring_limits(client: TestClient) -> None:
    body = {"message": {"message_id": "big", "subject": "hello", "text": "spam " * (12 * 1024 * 1024 // 5)}}
    response = client.post("/v1/identity-rules/default/dry-run", json=body)
    assert response.status_code == 413, response.text
    assert "over the limit of 10485760 bytes" in response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/feedback", {"event_id": "e\x001", "type": "bounce", "message_id": "<m@x>"}, "event_id"),
        ("/v1/labels", {"target": "account", "label": "spam", "account": "a", "actor": "o\x00ps"}, "actor"),
        (
            "/v1/labels",
            {"target": "account", "label": "spam", "account": "a", "actor": "ops", "reason": "\x00"},
            "reason",
        ),
        ("/v1/identity-rules/default", {"rules": [], "actor": "o\x00ps"}, "actor"),
    ],
)
def test_nul_in_feedback_labels_and_rule_actors_is_refused(
    client: TestClient, path: str, body: dict, field: str
) -> None:
    response = client.put(path, json=body) if path.startswith("/v1/identity-rules") else client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert field in fields(response), response.text
