"""The incident report: what was seen, why it was locked, what to do next; JSON, Markdown and HTML."""

from __future__ import annotations

from urllib.parse import quote

from fastapi.testclient import TestClient

from tests.conftest import make_raw
from tests.service.test_score_api import SPAM


def spam_run(client: TestClient, account: str, *, header: str = "", n: int = 6) -> None:
    for i in range(n):
        raw = SPAM if not header else SPAM.replace("MIME-Version", header + "\r\nMIME-Version", 1)
        body = {
            "message_id": f"<{i}@run>",
            "sasl_username": account,
            "client_ip": f"198.51.100.{i}",
            "recipients": [f"r{i}@list.example", f"s{i}@list.example"],
            "raw": raw,
            "timestamp": f"2026-01-10T10:{i:02d}:00Z",
        }
        client.post("/v1/score", json=body)


def incident(client: TestClient, account: str, form: str = "json"):
    return client.get(f"/v1/accounts/default/{quote(account, safe='')}/incident", params={"format": form})


def test_a_locked_mailbox_reports_what_was_seen_and_why(client: TestClient) -> None:
    spam_run(client, "alice@example.net")
    report = incident(client, "alice@example.net").json()
    seen = report["what_was_seen"]
    assert report["status"] == "locked_temporary"
    assert report["why_locked"]["by"] == "outguard"
    assert "enough evidence of spam to lock" in report["why_locked"]["reason"]
    assert seen["messages"] == 6
    assert seen["recipients"] == 12
    assert seen["spam_scored"] >= 2
    assert seen["rejected_while_locked"] >= 1
    assert seen["client_ips"] == 6
    assert seen["sample_subjects"] == ["URGENT: Claim your $5,000,000 prize NOW!!!"]
    assert seen["top_reasons"][0]["feature"] == "text_model_score"
    assert any("password" in step for step in report["what_to_do_next"])
    assert any("6 different addresses" in step for step in report["what_to_do_next"])


def test_a_php_script_gets_script_advice(client: TestClient) -> None:
    spam_run(
        client, "ignored", header="X-PHP-Originating-Script: 33:wp-content/plugins/x/mailer.php(7) : eval()'d code"
    )
    report = incident(client, "33:wp-content/plugins/x/mailer.php").json()
    assert report["identified_by"] == "rule:php-script"
    assert any("wp-content/plugins/x/mailer.php" in step and "remove" in step for step in report["what_to_do_next"])


def test_markdown_and_html_read_for_a_person(client: TestClient) -> None:
    spam_run(client, "bob@example.net")
    markdown = incident(client, "bob@example.net", "markdown")
    assert markdown.headers["content-type"].startswith("text/markdown")
    assert markdown.text.startswith("# Incident report: `bob@example.net`")
    assert "## What to do next" in markdown.text
    html = incident(client, "bob@example.net", "html")
    assert html.headers["content-type"].startswith("text/html")
    assert "<h2>Why it was locked</h2>" in html.text


def test_html_escapes_what_senders_wrote(client: TestClient) -> None:
    raw = make_raw(subject="<script>alert(1)</script> invoice")
    client.post("/v1/score", json={"message_id": "<x@y>", "sasl_username": "carol", "raw": raw})
    html = incident(client, "carol", "html").text
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; invoice" in html


def test_an_account_with_no_mail_gets_an_empty_report_not_an_error(client: TestClient) -> None:
    report = incident(client, "nobody").json()
    assert (report["what_was_seen"]["messages"], report["why_locked"], report["status"]) == (0, None, "active")


def test_an_unknown_format_is_refused(client: TestClient) -> None:
    assert incident(client, "x", "pdf").status_code == 422
