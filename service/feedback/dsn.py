"""Delivery status notifications (RFC 3464, RFC 6533) into feedback events, one per recipient.

A DSN is `multipart/report; report-type=delivery-status` with a human-readable part,
a `message/delivery-status` part (per-message fields, then one block per recipient:
Final-Recipient, Action, Status, Diagnostic-Code) and the original message or its
headers. An internationalised DSN (RFC 6533) is the same with a UTF-8
`message/global-delivery-status` part, whose addresses may be of type `utf-8`, and the
original as `message/global` or `message/global-headers`. The original is matched by
its Message-ID (or Gmail's X-Original-Message-ID), or by the queue id the relay put in
the per-message fields (`X-Postfix-Queue-ID`, `X-Queue-ID`).

How fields are read (UTF-8, NUL stripped) and which dates are refused: see
`service.feedback.reports`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from service.feedback.bounces import bounce_class, enhanced_status, invalid_recipient, reply_code
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

STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")
QUEUE_ID_FIELDS = ("X-Postfix-Queue-ID", "X-Queue-ID", "X-Exim-Queue-ID")
_ACTIONS = {
    "failed": FeedbackType.BOUNCE,
    "delayed": FeedbackType.DEFERRED,
    "delivered": FeedbackType.DELIVERED,
    "relayed": FeedbackType.DELIVERED,
    "expanded": FeedbackType.DELIVERED,
}


def dsn_events(
    body: bytes,
    hash_recipient: Callable[[str], str],
    *,
    max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
    now: float | None = None,
) -> list[FeedbackEvent]:
    now = time.time() if now is None else now
    report = parse_report(body)
    status_part = part_of_type(report, *STATUS_TYPES)
    if status_part is None:
        raise MalformedReport(
            f"not a delivery status notification: a {report.get_content_type()} without a "
            "message/delivery-status part (RFC 3464) or message/global-delivery-status part (RFC 6533)"
        )
    blocks = field_blocks(status_part)
    if len(blocks) < 2:
        raise MalformedReport("the delivery-status part has no per-recipient fields (Final-Recipient, Action)")
    per_message, recipients = blocks[0], blocks[1:]
    original = original_message(report)
    message_id = original.message_id or (per_message.get("X-Original-Message-ID") or "").strip() or None
    queue_id = next((per_message[f].strip() for f in QUEUE_ID_FIELDS if per_message.get(f)), None)
    if message_id is None and not queue_id:
        raise MalformedReport(
            "cannot match the report to a sent message: no Message-ID in the returned message or headers, "
            "and no queue id in the per-message fields"
        )
    envelope_id = (per_message.get("Original-Envelope-Id") or "").strip() or None
    skew = {"max_clock_skew_s": max_clock_skew_s, "now": now}
    fallback_time = (
        report_time(("Arrival-Date", per_message.get("Arrival-Date")), ("Date", report.get("Date")), **skew) or now
    )
    events = []
    for number, block in enumerate(recipients, start=1):
        action = (block.get("Action") or "").strip().lower()
        kind = _ACTIONS.get(action)
        if kind is None:
            # The block's number, not its address: error details may be logged.
            raise MalformedReport(f"unknown Action {action[:32]!r} in recipient block {number} (RFC 3464 2.3.3)")
        recipient = address_field(block.get("Final-Recipient")) or address_field(block.get("Original-Recipient"))
        diagnostic = block.get("Diagnostic-Code")
        status = enhanced_status(block.get("Status"), diagnostic)
        code = reply_code(diagnostic)
        detail: dict[str, object] = {"action": action, "status": status, "smtp_code": code, "source": "dsn"}
        if kind is FeedbackType.BOUNCE:
            detail["bounce_class"] = bounce_class(status, code)
            detail["invalid_recipient"] = invalid_recipient(status)
        if envelope_id:
            detail["envelope_id"] = envelope_id
        events.append(
            FeedbackEvent(
                event_id=event_id("dsn", report, body, recipient, action, status),
                type=kind,
                timestamp=report_time(("Last-Attempt-Date", block.get("Last-Attempt-Date")), **skew) or fallback_time,
                message_id=message_id,
                queue_id=queue_id or None,
                recipient_hash=hash_recipient(recipient) if recipient else None,
                detail=detail,
            )
        )
    return events
