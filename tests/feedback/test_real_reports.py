"""Real bounces and complaints, 8-bit and internationalised (RFC 6532, RFC 6533), parse into the right events."""

from __future__ import annotations

from collections.abc import Callable
from email.utils import parsedate_to_datetime

import pytest

from service.feedback.arf import arf_events
from service.feedback.dsn import dsn_events
from service.feedback.reports import MalformedReport, address_field
from service.stores import FeedbackEvent, FeedbackType
from tests.feedback import mta_reports, reports
from tests.feedback.mta_reports import replace

NOW = parsedate_to_datetime("Tue, 24 Nov 2026 06:00:00 +0000").timestamp()  # after every report below was written


def hashed(address: str) -> str:
    return f"h({address.lower()})"


def dsn(body: bytes, **kwargs: object) -> list[FeedbackEvent]:
    return dsn_events(body, hashed, now=NOW, **kwargs)  # type: ignore[arg-type]


REAL_DSNS: list[tuple[str, Callable[[str], bytes], str, dict[str, object]]] = [
    (
        "postfix-smtputf8",
        mta_reports.postfix_smtputf8,
        "jürgen@bücher.example",
        {"status": "5.1.1", "smtp_code": 550, "bounce_class": "hard", "invalid_recipient": True},
    ),
    (
        "exim-8bit-diagnostic",
        mta_reports.exim_utf8_diagnostic,
        "ivan@pochta.example",
        {"status": "5.1.1", "smtp_code": 550, "bounce_class": "hard", "invalid_recipient": True},
    ),
    (
        "exim-smtputf8",
        mta_reports.exim_smtputf8,
        "δοκιμή@παράδειγμα.example",
        {"status": "5.1.1", "smtp_code": 550, "bounce_class": "hard", "invalid_recipient": True},
    ),
    (
        "microsoft-365",
        mta_reports.microsoft_365,
        "grete.müller@kunde.example",
        {"status": "5.1.1", "smtp_code": 550, "bounce_class": "hard", "invalid_recipient": True},
    ),
    (
        "gmail",
        mta_reports.gmail,
        "hélène@exemple.example",
        {"status": "5.1.1", "smtp_code": 550, "bounce_class": "hard", "invalid_recipient": True},
    ),
    (
        "global-dsn-base64",
        lambda mid: mta_reports.global_dsn_7bit(mid, "base64"),
        "田中@例え.example",
        {"status": "5.2.1", "smtp_code": 550, "bounce_class": "hard", "invalid_recipient": False},
    ),
    (
        "global-dsn-quoted-printable",
        lambda mid: mta_reports.global_dsn_7bit(mid, "quoted-printable"),
        "田中@例え.example",
        {"status": "5.2.1", "smtp_code": 550, "bounce_class": "hard", "invalid_recipient": False},
    ),
]


@pytest.mark.parametrize(
    ("builder", "recipient", "expected"), [r[1:] for r in REAL_DSNS], ids=[r[0] for r in REAL_DSNS]
)
def test_real_8bit_and_global_dsns_become_bounces(
    builder: Callable[[str], bytes], recipient: str, expected: dict[str, object]
) -> None:
    [event] = dsn(builder("<préavis-2026-11@example.net>"))
    assert event.type is FeedbackType.BOUNCE
    assert event.message_id == "<préavis-2026-11@example.net>"  # a UTF-8 Message-ID, from the returned original
    assert event.recipient_hash == hashed(recipient)
    assert {key: event.detail[key] for key in expected} == expected
    assert event.detail["action"] == "failed"


def test_postfix_global_dsn_keeps_its_queue_id_and_arrival_date() -> None:
    [event] = dsn(mta_reports.postfix_smtputf8("<p@example.net>"))
    assert event.queue_id == "4XyzQ1Hq2Kz9sT"
    assert event.timestamp == pytest.approx(1795424400.0)  # Arrival-Date 10:00 +0100


def test_gmail_last_attempt_date_and_its_original_message_id_field() -> None:
    body = mta_reports.gmail("<g-1@example.net>")
    [event] = dsn(body)
    assert event.timestamp == pytest.approx(1795428304.0)  # Last-Attempt-Date 02:05:04 PST
    # Gmail names the original in the per-message fields too: enough when the original is not returned.
    headers_only = body.split(b"--00000000000032ff9a063a99824d\nContent-Type: message/rfc822")[0] + (
        b"--00000000000032ff9a063a99824d--\n"
    )
    [without_original] = dsn(headers_only)
    assert without_original.message_id == "<g-1@example.net>"


def test_exim_delay_warning_with_a_german_451_is_deferred() -> None:
    [event] = dsn(mta_reports.exim_delayed("<d-1@example.net>"))
    assert event.type is FeedbackType.DEFERRED
    assert event.recipient_hash == hashed("grete@kunde.example")
    assert (event.detail["status"], event.detail["smtp_code"]) == ("4.2.2", 451)  # Exim's generic 4.0.0 refined
    assert "bounce_class" not in event.detail


@pytest.mark.parametrize(
    ("field", "address"),
    [
        ("utf-8; j\\x{FC}rgen@b\\x{FC}cher.example", "jürgen@bücher.example"),  # utf-8-addr-xtext
        ("utf-8; jürgen@bücher.example", "jürgen@bücher.example"),  # utf-8-address
        ("UTF-8;j\\x{fc}rgen\\x{2B}news@bücher.example", "jürgen+news@bücher.example"),  # unitext, lower-case hex
        ("rfc822; <Bob@Example.org>", "Bob@Example.org"),
        ("utf-8; bad\\x{D800}half@example.org", "bad\\x{D800}half@example.org"),  # a surrogate half is not decoded
        ("utf-8; nul\\x{0}@example.org", "nul\\x{0}@example.org"),  # nor is NUL
        ("rfc822; redacted", None),
    ],
)
def test_address_types_of_rfc_3464_and_rfc_6533(field: str, address: str | None) -> None:
    assert address_field(field) == address


def test_a_global_dsn_with_utf8_address_types_in_both_recipient_fields() -> None:
    body = mta_reports.postfix_smtputf8("<u@example.net>", recipient="zoë@kunde.example")
    # Final-Recipient redacted: the utf-8 xtext Original-Recipient names the recipient.
    redacted = replace(body, "Final-Recipient: rfc822; zoë@kunde.example", "Final-Recipient: rfc822; redacted")
    [event] = dsn(redacted)
    assert event.recipient_hash == hashed("zoë@kunde.example")


@pytest.mark.parametrize("tail", ["\n", "\n\n", "\n \n\t\n", "\r\n\r\n"], ids=["one", "two", "whitespace", "crlf"])
def test_blank_lines_after_the_last_recipient_block_are_no_recipient(tail: str) -> None:
    body = mta_reports.exim_utf8_diagnostic("<b@example.net>")
    padded = replace(body, "mailbox unavailable\n\n--1795425309", f"mailbox unavailable\n{tail}\n--1795425309")
    [event] = dsn(padded)
    assert event.recipient_hash == hashed("ivan@pochta.example")


def test_microsoft_365_ndr_ends_with_a_blank_block_and_still_parses() -> None:
    body = mta_reports.microsoft_365("<m@example.net>")
    assert b"X-Display-Name: Grete M\xc3\xbcller\r\n\r\n\r\n--a0e0" in body  # the shape that made it a 422
    [event] = dsn(body)
    assert event.recipient_hash == hashed("grete.müller@kunde.example")


def test_blank_blocks_between_recipients_are_skipped_too() -> None:
    body = reports.mixed_outcomes("<mix@example.net>").replace(
        b"\nFinal-Recipient: rfc822; full", b"\n\nFinal-Recipient: rfc822; full"
    )
    assert [e.type for e in dsn(body)] == [FeedbackType.DELIVERED, FeedbackType.BOUNCE, FeedbackType.DEFERRED]


def test_only_blank_blocks_is_still_no_recipient() -> None:
    body = replace(
        mta_reports.exim_utf8_diagnostic("<b@example.net>"),
        "Action: failed\nFinal-Recipient: rfc822;ivan@pochta.example\nStatus: 5.0.0\n"
        "Remote-MTA: dns; mx.pochta.example\n"
        "Diagnostic-Code: smtp; 550 5.1.1 Пользователь не найден / mailbox unavailable\n",
        "\n \n",
    )
    with pytest.raises(MalformedReport, match="no per-recipient fields"):
        dsn(body)


FAR_FUTURE = "Fri, 31 Dec 9999 23:59:59 +0000"


@pytest.mark.parametrize(
    ("field", "mutate"),
    [
        (
            "Arrival-Date",
            lambda b: replace(b, "Arrival-Date: Mon, 23 Nov 2026 10:00:00 +0100 (CET)", f"Arrival-Date: {FAR_FUTURE}"),
        ),
        ("Date", lambda b: replace(b, "Date: Mon, 23 Nov 2026 10:05:00 +0100 (CET)", f"Date: {FAR_FUTURE}")),
    ],
)
def test_a_dsn_from_year_9999_is_refused_naming_the_field(field: str, mutate: Callable[[bytes], bytes]) -> None:
    body = mutate(mta_reports.postfix_smtputf8("<f@example.net>"))
    if field == "Date":  # the report's Date is read only without an Arrival-Date
        body = replace(body, "Arrival-Date: Mon, 23 Nov 2026 10:00:00 +0100 (CET)\n", "")
    with pytest.raises(MalformedReport, match=f"^{field} 'Fri, 31 Dec 9999.* in the future, more than the allowed"):
        dsn(body)


def test_a_last_attempt_date_from_year_9999_is_refused() -> None:
    body = replace(
        mta_reports.gmail("<g@example.net>"),
        "Last-Attempt-Date: Mon, 23 Nov 2026 02:05:04 -0800 (PST)",
        f"Last-Attempt-Date: {FAR_FUTURE}",
    )
    with pytest.raises(MalformedReport, match=r"^Last-Attempt-Date .* clock skew of 3600 s"):
        dsn(body)


def test_dates_within_the_clock_skew_are_kept_and_the_skew_is_the_setting() -> None:
    body = replace(
        mta_reports.postfix_smtputf8("<s@example.net>"),
        "Arrival-Date: Mon, 23 Nov 2026 10:00:00 +0100 (CET)",
        "Arrival-Date: Tue, 24 Nov 2026 06:30:00 +0000",  # 30 minutes after NOW
    )
    [event] = dsn(body)
    assert event.timestamp == pytest.approx(NOW + 1_800)
    with pytest.raises(MalformedReport, match="clock skew of 600 s"):
        dsn(body, max_clock_skew_s=600)


def test_an_unreadable_date_falls_back_to_the_next_one() -> None:
    body = replace(
        mta_reports.postfix_smtputf8("<r@example.net>"),
        "Arrival-Date: Mon, 23 Nov 2026 10:00:00 +0100 (CET)",
        "Arrival-Date: 32 Smarch 99999 25:61",
    )
    [event] = dsn(body)
    assert event.timestamp == pytest.approx(1795424700.0)  # the report's Date, 10:05 +0100


def test_an_arf_from_year_9999_is_refused() -> None:
    body = replace(
        mta_reports.arf_international("<a@example.net>"),
        "Arrival-Date: Mon, 23 Nov 2026 10:00:00 +0300",
        f"Arrival-Date: {FAR_FUTURE}",
    )
    with pytest.raises(MalformedReport, match=r"^Arrival-Date 'Fri, 31 Dec 9999"):
        arf_events(body, hashed, now=NOW)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("Diagnostic-Code: smtp; 550 5.1.1", "Diagnostic-Code: smtp; 550\x00 5.1.1"),
        ("Final-Recipient: rfc822;ivan@", "Final-Recipient: rfc822;iv\x00an@"),
        ("Action: failed", "Action: fai\x00led"),
        ("Message-ID: <nul@example.net>", "Message-ID: <nul@\x00example.net>"),
        ("Reporting-MTA: dns; relay.example.net", "Reporting-MTA: dns; relay.example.net\x00"),
    ],
    ids=["diagnostic", "recipient", "action", "message-id", "reporting-mta"],
)
def test_nul_in_any_dsn_field_is_stripped(old: str, new: str) -> None:
    body = replace(mta_reports.exim_utf8_diagnostic("<nul@example.net>"), old, new)
    [event] = dsn(body)
    assert event.type is FeedbackType.BOUNCE
    assert event.message_id == "<nul@example.net>"
    assert event.recipient_hash == hashed("ivan@pochta.example")
    assert (event.detail["action"], event.detail["status"], event.detail["smtp_code"]) == ("failed", "5.1.1", 550)
    assert "\x00" not in repr(event)


def test_nul_in_an_rfc_2047_encoded_word_is_stripped_too() -> None:
    body = replace(
        reports.postfix_user_unknown("<w@example.net>"),
        "Message-ID: <w@example.net>",
        "Message-ID: =?utf-8?q?<w@=00example.net>?=",
    )
    [event] = dsn(body)
    assert event.message_id == "<w@example.net>"


def test_an_internationalised_arf_complaint() -> None:
    [event] = arf_events(mta_reports.arf_international("<предложение-1@example.net>"), hashed, now=NOW)
    assert event.type is FeedbackType.COMPLAINT
    assert event.message_id == "<предложение-1@example.net>"  # from the message/global original
    assert event.recipient_hash == hashed("пётр@почта.example")
    assert event.detail == {"feedback_type": "abuse", "source": "Почта-FBL/1.0", "source_ip": "203.0.113.7"}
    assert event.timestamp == pytest.approx(1795417200.0)  # Arrival-Date 10:00 +0300


def test_an_arf_with_nul_in_its_fields() -> None:
    body = replace(mta_reports.arf_international("<n@example.net>"), "Feedback-Type: abuse", "Feedback-Type: ab\x00use")
    body = replace(body, "Source-IP: 203.0.113.7", "Source-IP: 203.0.\x00113.7")
    [event] = arf_events(body, hashed, now=NOW)
    assert (event.type, event.detail["source_ip"]) == (FeedbackType.COMPLAINT, "203.0.113.7")


def test_a_global_part_that_is_not_base64_says_so() -> None:
    body = mta_reports.global_dsn_7bit("<x@example.net>", "base64")
    start = body.index(b"Content-Type: message/global-delivery-status")
    broken = body[:start] + body[start:].replace(b"UmVwb3J0aW5n", b"UmVwb3J0aW5", 1)
    with pytest.raises(MalformedReport, match="message/global-delivery-status part is not valid base64"):
        dsn(broken)


def test_unknown_actions_name_the_block_not_the_address() -> None:
    body = replace(mta_reports.exim_utf8_diagnostic("<u@example.net>"), "Action: failed", "Action: exploded")
    with pytest.raises(MalformedReport, match="unknown Action 'exploded' in recipient block 1") as caught:
        dsn(body)
    assert "ivan" not in str(caught.value)
