"""Abuse reports from feedback loops (ARF, RFC 5965) into complaint events.

An ARF report is `multipart/report; report-type=feedback-report` with a human-readable
part, a `message/feedback-report` part (Feedback-Type, User-Agent, Version,
Original-Rcpt-To, Arrival-Date, Source-IP...) and the original message or its headers
(`message/global` or `message/global-headers` when it was internationalised).
Mailbox providers redact differently: some drop the recipient, some the Message-ID of
the original; the event keeps what there is.

How fields are read (UTF-8, NUL stripped) and which dates are refused: see
`service.feedback.reports`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from email.utils import parseaddr

from service.feedback.reports import (
    DEFAULT_MAX_CLOCK_SKEW_S,
    MalformedReport,
    address_field,
    event_id,
    field_blocks,
    original_message,
    parse_report,
    part_of_type,
    report_time,
)
from service.stores import FeedbackEvent, FeedbackType

COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus", "other", "auth-failure"})


def arf_events(
    body: bytes,
    hash_recipient: Callable[[str], str],
    *,
    max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
    now: float | None = None,
) -> list[FeedbackEvent]:
    now = time.time() if now is None else now
    report = parse_report(body)
    part = part_of_type(report, "message/feedback-report")
    if part is None:
        raise MalformedReport(
            f"not an ARF report: a {report.get_content_type()} without a message/feedback-report part (RFC 5965)"
        )
    blocks = field_blocks(part)
    if not blocks:
        raise MalformedReport("the message/feedback-report part holds no report fields")
    fields = blocks[0]
    feedback_type = (fields.get("Feedback-Type") or "").strip().lower()
    if not feedback_type:
        raise MalformedReport("the feedback report has no Feedback-Type field (RFC 5965 3.1)")
    if feedback_type == "not-spam":
        kind = FeedbackType.NOT_SPAM
    elif feedback_type in COMPLAINT_TYPES:
        kind = FeedbackType.COMPLAINT
    else:
        raise MalformedReport(f"unknown Feedback-Type {feedback_type[:32]!r}")
    original = original_message(report)
    if original.message_id is None:
        raise MalformedReport("cannot match the report to a sent message: the original's Message-ID is missing")
    recipient = address_field(fields.get("Original-Rcpt-To")) or original.recipient
    reporter = parseaddr(report.get("From") or "")[1]
    source = (fields.get("User-Agent") or "").strip() or (reporter.rsplit("@", 1)[-1] if reporter else "unknown")
    dates = (
        ("Arrival-Date", fields.get("Arrival-Date")),
        ("Received-Date", fields.get("Received-Date")),
        ("Date", report.get("Date")),
    )
    return [
        FeedbackEvent(
            event_id=event_id("arf", report, body, recipient, feedback_type),
            type=kind,
            timestamp=report_time(*dates, max_clock_skew_s=max_clock_skew_s, now=now) or now,
            message_id=original.message_id,
            recipient_hash=hash_recipient(recipient) if recipient else None,
            detail={"feedback_type": feedback_type, "source": source, "source_ip": fields.get("Source-IP")},
        )
    ]
