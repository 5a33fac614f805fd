"""DSN (RFC 3464) and ARF (RFC 5965) parsing on real-shaped reports."""

from __future__ import annotations

import pytest

from service.feedback.arf import arf_events
from service.feedback.dsn import dsn_events
from service.feedback.reports import MalformedReport
from service.stores import FeedbackType
from tests.feedback import reports


def hashed(address: str) -> str:
    return f"h({address.lower()})"


def test_postfix_user_unknown_is_a_hard_invalid_recipient_bounce() -> None:
    [event] = dsn_events(reports.postfix_user_unknown("<orig-1@example.net>", queue_id="4Xyz123"), hashed)
    assert event.type is FeedbackType.BOUNCE
    assert event.message_id == "<orig-1@example.net>"
    assert event.queue_id == "4Xyz123"
    assert event.recipient_hash == "h(nobody@example.org)"
    assert event.detail["bounce_class"] == "hard"
    assert event.detail["invalid_recipient"] is True
    assert (event.detail["status"], event.detail["smtp_code"]) == ("5.1.1", 550)


def test_gmail_and_microsoft_bounces_with_the_whole_original() -> None:
    [gmail] = dsn_events(reports.gmail_no_such_user("<g-1@example.net>"), hashed)
    [microsoft] = dsn_events(reports.microsoft_not_found("<m-1@example.net>"), hashed)
    assert gmail.message_id == "<g-1@example.net>"
    assert gmail.detail["smtp_code"] == 550  # from "550-5.1.1", a multi-line reply
    assert gmail.timestamp == pytest.approx(1795428304.0)  # Last-Attempt-Date, 02:05:04 PST
    assert microsoft.detail["status"] == "5.1.10"
    assert microsoft.detail["invalid_recipient"] is True


def test_one_report_many_recipients_many_outcomes() -> None:
    events = dsn_events(reports.mixed_outcomes("<mix@example.net>"), hashed)
    assert [e.type for e in events] == [FeedbackType.DELIVERED, FeedbackType.BOUNCE, FeedbackType.DEFERRED]
    assert events[1].detail["bounce_class"] == "soft"
    assert events[1].detail["invalid_recipient"] is False
    assert len({e.event_id for e in events}) == 3


def test_the_same_report_twice_gives_the_same_event_ids() -> None:
    body = reports.postfix_user_unknown("<orig-1@example.net>")
    assert [e.event_id for e in dsn_events(body, hashed)] == [e.event_id for e in dsn_events(body, hashed)]


def test_a_dsn_matched_only_by_queue_id() -> None:
    [event] = dsn_events(reports.postfix_user_unknown(None, queue_id="ABCDEF123"), hashed)
    assert (event.message_id, event.queue_id) == (None, "ABCDEF123")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"", "empty"),
        (b"From: a@b\r\nSubject: bounce\r\n\r\nYour mail failed, sorry.\r\n", "message/delivery-status"),
        (reports.postfix_user_unknown(None), "cannot match"),
        (reports.dsn("<x@y>", []), "no per-recipient fields"),
        (reports.dsn("<x@y>", [{"Final-Recipient": "rfc822; a@b", "Action": "exploded"}]), "unknown Action"),
    ],
)
def test_malformed_dsns_say_what_is_wrong(body: bytes, says: str) -> None:
    with pytest.raises(MalformedReport, match=says):
        dsn_events(body, hashed)


def test_yahoo_arf_is_a_complaint_with_its_source() -> None:
    [event] = arf_events(reports.arf("<orig-2@example.net>"), hashed)
    assert event.type is FeedbackType.COMPLAINT
    assert event.message_id == "<orig-2@example.net>"
    assert event.recipient_hash == "h(victim@yahoo.example)"
    assert event.detail["source"] == "Yahoo!-Mail-Feedback/2.0"
    assert event.detail["feedback_type"] == "abuse"


def test_a_redacted_arf_keeps_what_there_is() -> None:
    body = reports.arf("<orig-3@example.net>", rcpt_to=None, to_header="redacted", user_agent="AOL SComp")
    [event] = arf_events(body, hashed)
    assert event.recipient_hash is None  # "redacted" is no address
    assert event.detail["source"] == "AOL SComp"


def test_not_spam_reports_are_their_own_type() -> None:
    [event] = arf_events(reports.arf("<o@x>", feedback_type="not-spam"), hashed)
    assert event.type is FeedbackType.NOT_SPAM


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (reports.postfix_user_unknown("<o@x>"), "message/feedback-report"),
        (reports.arf(None), "Message-ID is missing"),
        (reports.arf("<o@x>", feedback_type="nonsense"), "unknown Feedback-Type"),
    ],
)
def test_malformed_arf_says_what_is_wrong(body: bytes, says: str) -> None:
    with pytest.raises(MalformedReport, match=says):
        arf_events(body, hashed)
