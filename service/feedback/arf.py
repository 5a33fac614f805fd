"""Abuse reports from feedback loops (ARF, RFC 5965) into complaint events.

An ARF report is `multipart/report; report-type=feedback-report` with a human-readable
part, a `message/feedback-report` part (Feedback-Type, User-Agent, Version,
Original-Rcpt-To, Arrival-Date, Source-IP...) and the original message or its headers.
Mailbox providers redact differently: some drop the recipient, some the Message-ID of
the original; the event keeps what there is.
"""

from __future__ import annotations

import time
from email.message import Message
from email.utils import parseaddr

from service.feedback.reports import (
    MalformedReport,
    address_field,
    event_id,
    original_message,
    parse_report,
    part_of_type,
    report_time,
)
from service.stores import FeedbackEvent, FeedbackType

COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus", "other", "auth-failure"})


def _fields(part: Message) -> Message:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    raise MalformedReport("the message/feedback-report part holds no report fields")


def arf_events(body: bytes, hash_recipient: callable) -> list[FeedbackEvent]:  # type: ignore[valid-type]
    report = parse_report(body)
    part = part_of_type(report, "message/feedback-report")
    if part is None:
        raise MalformedReport(
            f"not an ARF report: a {report.get_content_type()} without a message/feedback-report part (RFC 5965)"
        )
    fields = _fields(part)
    feedback_type = (fields.get("Feedback-Type") or "").strip().lower()
    if not feedback_type:
        raise MalformedReport("the feedback report has no Feedback-Type field (RFC 5965 3.1)")
    if feedback_type == "not-spam":
        kind = FeedbackType.NOT_SPAM
    elif feedback_type in COMPLAINT_TYPES:
        kind = FeedbackType.COMPLAINT
    else:
        raise MalformedReport(f"unknown Feedback-Type {feedback_type!r}")
    original = original_message(report)
    if original.message_id is None:
        raise MalformedReport("cannot match the report to a sent message: the original's Message-ID is missing")
    recipient = address_field(fields.get("Original-Rcpt-To")) or original.recipient
    reporter = parseaddr(report.get("From") or "")[1]
    source = (fields.get("User-Agent") or "").strip() or (reporter.rsplit("@", 1)[-1] if reporter else "unknown")
    return [
        FeedbackEvent(
            event_id=event_id("arf", report, body, recipient, feedback_type),
            type=kind,
            timestamp=report_time(fields.get("Arrival-Date"), fields.get("Received-Date"), report.get("Date"))
            or time.time(),
            message_id=original.message_id,
            recipient_hash=hash_recipient(recipient) if recipient else None,
            detail={"feedback_type": feedback_type, "source": source, "source_ip": fields.get("Source-IP")},
        )
    ]
