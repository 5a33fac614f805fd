"""Real 8-bit and internationalised bounces and complaints over HTTP, stored on every backend.

These answered 500 (`'Header' object has no attribute 'strip'`), 422 (a blank line after
the last recipient block) or were never parsed (`message/global-delivery-status`); a
report from year 9999 was accepted, and NUL in a field made the row vanish on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_raw, run_sql
from tests.feedback import mta_reports
from tests.feedback.mta_reports import replace

pytestmark = pytest.mark.backends

RFC822 = {"content-type": "message/rfc822"}


def score(client: TestClient, message_id: str, account: str, recipient: str) -> None:
    body = {"message_id": message_id, "sasl_username": account, "recipients": [recipient], "raw": make_raw()}
    response = client.post("/v1/score", json=body)
    assert response.status_code == 200, response.text


def stored(client: TestClient) -> list[dict]:
    """The feedback rows as a fresh connection sees them: what was durably stored."""
    columns = "event_id, type, message_id, account, matched, recipient_hash, detail"
    rows = run_sql(
        client.app.state.container.settings.database_url, f"SELECT {columns} FROM feedback_events ORDER BY event_id"
    )
    return [dict(zip(columns.split(", "), row, strict=True)) for row in rows]


def detail(row: dict) -> dict:
    return row["detail"] if isinstance(row["detail"], dict) else orjson.loads(row["detail"])


REAL_DSNS: list[tuple[str, Callable[[str], bytes], str]] = [
    ("postfix-smtputf8", mta_reports.postfix_smtputf8, "jürgen@bücher.example"),
    ("exim-8bit-diagnostic", mta_reports.exim_utf8_diagnostic, "ivan@pochta.example"),
    ("exim-smtputf8", mta_reports.exim_smtputf8, "δοκιμή@παράδειγμα.example"),
    ("microsoft-365", mta_reports.microsoft_365, "grete.müller@kunde.example"),
    ("gmail", mta_reports.gmail, "hélène@exemple.example"),
]


@pytest.mark.parametrize(("builder", "recipient"), [r[1:] for r in REAL_DSNS], ids=[r[0] for r in REAL_DSNS])
def test_a_real_8bit_dsn_is_a_stored_hard_bounce_of_the_account(
    client: TestClient, builder: Callable[[str], bytes], recipient: str
) -> None:
    message_id = "<préavis-2026-11@example.net>"  # UTF-8 in the Message-ID too
    score(client, message_id, "carol", recipient)
    response = client.post("/v1/feedback/dsn", content=builder(message_id), headers=RFC822)
    assert response.status_code == 200, response.text
    [event] = response.json()["events"]
    assert (event["type"], event["status"], event["matched"], event["account"]) == ("bounce", "stored", True, "carol")
    [row] = stored(client)
    assert row["recipient_hash"] == client.app.state.container.scorer.hash_recipient(recipient)
    assert (row["message_id"], row["account"]) == (message_id, "carol")
    found = detail(row)
    assert (found["status"], found["bounce_class"], found["invalid_recipient"]) == ("5.1.1", "hard", True)


def test_a_global_dsn_over_a_7bit_path_is_matched_by_its_message_id(client: TestClient) -> None:
    score(client, "<見積もり-1@example.net>", "dave", "田中@例え.example")
    body = mta_reports.global_dsn_7bit("<見積もり-1@example.net>", "base64")
    [event] = client.post("/v1/feedback/dsn", content=body, headers=RFC822).json()["events"]
    assert (event["type"], event["account"]) == ("bounce", "dave")
    [row] = stored(client)
    assert row["recipient_hash"] == client.app.state.container.scorer.hash_recipient("田中@例え.example")
    assert (detail(row)["status"], detail(row)["bounce_class"]) == ("5.2.1", "hard")


def test_nul_inside_a_dsn_is_stripped_and_the_row_is_stored(client: TestClient) -> None:
    score(client, "<nul-1@example.net>", "erin", "ivan@pochta.example")
    body = mta_reports.exim_utf8_diagnostic("<nul-1@example.net>")
    body = replace(body, "Diagnostic-Code: smtp; 550 5.1.1", "Diagnostic-Code: smtp; 550\x00 5.1.1")
    body = replace(body, "Action: failed", "Action: fail\x00ed")
    body = replace(body, "Message-ID: <nul-1@example.net>", "Message-ID: <nul-1@\x00example.net>")
    response = client.post("/v1/feedback/dsn", content=body, headers=RFC822)
    assert response.status_code == 200, response.text
    [event] = response.json()["events"]
    assert (event["type"], event["matched"], event["account"]) == ("bounce", True, "erin")
    [row] = stored(client)  # on PostgreSQL the row used to vanish here
    assert row["message_id"] == "<nul-1@example.net>"
    assert (detail(row)["action"], detail(row)["status"]) == ("failed", "5.1.1")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            "/v1/feedback/dsn",
            replace(
                mta_reports.postfix_smtputf8("<y@example.net>"),
                "Arrival-Date: Mon, 23 Nov 2026 10:00:00 +0100 (CET)",
                "Arrival-Date: Fri, 31 Dec 9999 23:59:59 +0000",
            ),
            "Arrival-Date",
        ),
        (
            "/v1/feedback/arf",
            replace(
                mta_reports.arf_international("<y@example.net>"),
                "Arrival-Date: Mon, 23 Nov 2026 10:00:00 +0300",
                "Arrival-Date: Fri, 31 Dec 9999 23:59:59 +0000",
            ),
            "Arrival-Date",
        ),
    ],
    ids=["dsn", "arf"],
)
def test_a_report_from_year_9999_is_refused_with_a_422_and_nothing_is_stored(
    client: TestClient, path: str, body: bytes, field: str
) -> None:
    response = client.post(path, content=body, headers=RFC822)
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"
    assert response.json()["detail"].startswith(f"{field} 'Fri, 31 Dec 9999 23:59:59 +0000' is ")
    assert "allowed clock skew of 3600 s" in response.json()["detail"]
    assert stored(client) == []


def test_an_internationalised_arf_complaint_is_stored(client: TestClient) -> None:
    score(client, "<предложение-1@example.net>", "frank", "пётр@почта.example")
    body = mta_reports.arf_international("<предложение-1@example.net>")
    response = client.post("/v1/feedback/arf", content=body, headers=RFC822)
    assert response.status_code == 200, response.text
    [event] = response.json()["events"]
    assert (event["type"], event["matched"], event["account"]) == ("complaint", True, "frank")
    [row] = stored(client)
    assert row["recipient_hash"] == client.app.state.container.scorer.hash_recipient("пётр@почта.example")
    assert detail(row)["source"] == "Почта-FBL/1.0"
