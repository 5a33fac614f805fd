"""The incident report: what was seen, why it was locked, what to do next; JSON, Markdown and HTML."""

from __future__ import annotations

from urllib.parse import quote

from fastapi.testclient import TestClient

from service.reports.incident import known_mailer
from tests.conftest import make_raw
from tests.service.test_score_api import SPAM, SPRAYED


def spam_run(
    client: TestClient, account: str | None, *, header: str = "", n: int = 6, recipients: list[str] | None = None
) -> None:
    """`account` is the SASL user; None for a script's mail, which comes without a login (local sendmail)."""
    for i in range(n):
        raw = SPAM if not header else SPAM.replace("MIME-Version", header + "\r\nMIME-Version", 1)
        body = {
            "message_id": f"<{i}@run>",
            "sasl_username": account,
            "client_ip": f"198.51.100.{i}",
            "recipients": recipients or [f"r{i}@list.example", f"s{i}@list.example"],
            "raw": raw,
            "timestamp": f"2026-01-10T10:{i:02d}:00Z",
        }
        client.post("/v1/score", json=body)


def incident(client: TestClient, account: str, form: str = "json"):
    return client.get(f"/v1/accounts/default/{quote(account, safe='')}/incident", params={"format": form})


def test_a_locked_mailbox_reports_what_was_seen_and_why(client: TestClient) -> None:
    spam_run(client, "alice@example.net", recipients=SPRAYED)  # many domains: corroboration for a new account
    report = incident(client, "alice@example.net").json()
    seen = report["what_was_seen"]
    assert report["status"] == "locked_temporary"
    assert report["why_locked"]["by"] == "outguard"
    assert "enough evidence of spam to lock" in report["why_locked"]["reason"]
    assert seen["messages"] == 6
    assert seen["recipients"] == 6 * len(SPRAYED)
    assert seen["spam_scored"] >= 2
    assert seen["rejected_while_locked"] >= 1
    assert seen["client_ips"] == 6
    assert seen["sample_subjects"] == ["URGENT: Claim your $5,000,000 prize NOW!!!"]
    assert seen["top_reasons"][0]["feature"] == "text_model_score"
    assert any("password" in step for step in report["what_to_do_next"])
    assert any("6 different addresses" in step for step in report["what_to_do_next"])


def test_a_php_script_gets_script_advice(client: TestClient) -> None:
    spam_run(client, None, header="X-PHP-Originating-Script: 33:wp-content/plugins/x/mailer.php(7) : eval()'d code")
    report = incident(client, "33:wp-content/plugins/x/mailer.php").json()
    assert report["identified_by"] == "rule:php-script"
    assert any("wp-content/plugins/x/mailer.php" in step and "remove" in step for step in report["what_to_do_next"])


def test_an_unknown_script_is_inspected_before_it_is_removed(client: TestClient) -> None:
    spam_run(client, None, header="X-PHP-Originating-Script: 33:wp-content/uploads/2026/01/x.php")
    report = incident(client, "33:wp-content/uploads/2026/01/x.php").json()
    assert (report["script"]["path"], report["script"]["uid"], report["script"]["part_of"]) == (
        "wp-content/uploads/2026/01/x.php",
        "33",
        None,
    )
    first = next(step for step in report["what_to_do_next"] if "x.php" in step)
    assert first.startswith("Inspect the script `wp-content/uploads/2026/01/x.php`")
    assert "If it is not part of the customer's own site, remove it" in first
    # Nothing was seen from it before its first spam: a script that just appeared.
    assert report["how_its_mail_changed"]["before"]["messages"] == 0
    assert "first appeared less than a day before" in report["evidence_strength_reason"]


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


WOOCOMMERCE = "X-PHP-Originating-Script: 1234:class-wc-emails.php"
# Low-scoring shop mail for the script's history (the test model is harsh on most order mail).
ORDER_CONFIRMATION = make_raw(
    subject="Order received",
    body="Hi Bob,\n\nThanks for your order, the mug ships tomorrow.\n\nCheers,\nAlice\n",
    sender="Example Shop <shop@example.net>",
)


def order_confirmations(client: TestClient, days: tuple[int, ...]) -> None:
    for day in days:
        for hour in (14, 16):
            raw = ORDER_CONFIRMATION.replace("MIME-Version", WOOCOMMERCE + "\r\nMIME-Version", 1)
            body = {
                "message_id": f"<order-{day}-{hour}@shop>",
                "client_ip": "203.0.113.5",
                "recipients": [f"customer{day}{hour}@example.org"],
                "raw": raw,
                "timestamp": f"2026-01-{day:02d}T{hour}:00:00Z",
            }
            assert client.post("/v1/score", json=body).json()["action"] == "accept"


def test_a_woocommerce_script_is_described_and_never_named_for_deletion(client: TestClient) -> None:
    order_confirmations(client, days=(6, 7, 8, 9))
    spam_run(client, None, header=WOOCOMMERCE)
    report = incident(client, "1234:class-wc-emails.php").json()
    assert report["identified_by"] == "rule:php-script"
    script = report["script"]
    assert (script["path"], script["uid"], script["part_of"]) == ("class-wc-emails.php", "1234", "WooCommerce")
    assert script["first_seen"] == "2026-01-06 14:00:00 UTC"
    change = report["how_its_mail_changed"]
    assert change["from"] == "2026-01-10 10:00:00 UTC"  # the first spam-scored message
    assert change["before"]["messages"] == 8
    assert change["before"]["messages_in_the_24_hours_before"] == 2
    assert change["before"]["earlier_messages_per_day"] == 2.1  # 6 messages over the 2.8 days before that
    assert change["before"]["spam_scored_share"] == 0.0
    assert change["since"]["messages"] == 6
    assert change["since"]["spam_scored_share"] > 0.5
    assert change["since"]["new_client_ips"] == 6
    assert change["since"]["recipients_per_message"] == 2.0
    assert change["before"]["recipients_per_message"] == 1.0
    steps = report["what_to_do_next"]
    assert not any("remove" in step.lower() or "delete" in step.lower() for step in steps)
    assert steps[0].startswith("Keep `class-wc-emails.php` (run as system user 1234): it is part of WooCommerce")
    for advice in ("injected code", "Update the CMS", "CAPTCHA", "NEW script"):
        assert any(advice in step for step in steps), advice
    # A web server is one address: many client IPs are no botnet for a script.
    assert not any("botnet" in step for step in steps)
    markdown = incident(client, "1234:class-wc-emails.php", "markdown").text
    assert "## The script" in markdown and "Part of WooCommerce" in markdown
    assert "before that it averaged 2.1 a day" in markdown
    html = incident(client, "1234:class-wc-emails.php", "html").text
    assert "<h2>How its mail changed" in html and "WooCommerce" in html


def test_an_admin_lock_of_clean_mail_is_thin_evidence(client: TestClient) -> None:
    for i in range(4):
        body = {
            "message_id": f"<{i}@dave>",
            "sasl_username": "dave@example.net",
            "client_ip": "192.0.2.10",
            "recipients": ["bob@example.org"],
            "raw": make_raw(),
            "timestamp": f"2026-01-10T09:{i:02d}:00Z",
        }
        client.post("/v1/score", json=body)
    locked = client.post(
        "/v1/accounts/default/dave%40example.net/lock",
        json={"actor": "jo", "reason": "customer called about spam", "force": True},
    )
    assert locked.status_code == 200
    report = incident(client, "dave@example.net").json()
    assert report["why_locked"]["by"] == "jo"
    assert report["what_was_seen"]["spam_scored"] == 0
    assert report["evidence_strength"] == "thin"
    reason = report["evidence_strength_reason"]
    assert "None of its 4 scored message(s)" in reason and "no bounces, complaints" in reason
    assert "The lock rests on jo's judgement: customer called about spam." in reason
    assert report["what_to_do_next"][0].startswith("The evidence is thin")
    assert "**Evidence: thin.** None of its 4" in incident(client, "dave@example.net", "markdown").text
    assert "<strong>Evidence: thin.</strong> None of its 4" in incident(client, "dave@example.net", "html").text


def test_a_mailbox_spam_run_from_many_addresses_is_strong_evidence(client: TestClient) -> None:
    spam_run(client, "erin@example.net")
    report = incident(client, "erin@example.net").json()
    assert report["script"] is None
    assert report["evidence_strength"] == "strong"
    assert "it was sent from 6 client addresses" in report["evidence_strength_reason"]


def test_well_known_mailers_are_matched_on_the_path_case_insensitively() -> None:
    known = {
        "class-wc-emails.php": "WooCommerce",
        "Class-WC-Email-New-Order.php": "WooCommerce",
        "/home/shop/public_html/wp-content/plugins/woocommerce/includes/emails/x.php": "WooCommerce",
        "/var/www/wp-includes/PHPMailer/PHPMailer.php": "WordPress",
        "wp-includes/pluggable.php": "WordPress",
        "/srv/site/vendor/symfony/mailer/Transport.php": "a PHP framework's mailer",
        "C:\\inetpub\\joomla\\libraries\\src\\Mail\\Mail.php": "Joomla",
        "/var/www/phpbb/includes/functions_messenger.php": "phpBB",
        "shop/classes/Mail.php": "PrestaShop",
    }
    for path, software in known.items():
        mailer = known_mailer(path)
        assert mailer is not None and mailer.software.startswith(software), path
    for path in ("mailer.php", "wp-content/plugins/woocommerce-helper/x.php", "wp-content/uploads/mail.php"):
        assert known_mailer(path) is None, path
