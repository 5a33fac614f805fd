"""Delivery status notifications (RFC 3464) into feedback events, one per recipient.

A DSN is `multipart/report; report-type=delivery-status` with a human-readable part,
a `message/delivery-status` part (per-message fields, then one block per recipient:
Final-Recipient, Action, Status, Diagnostic-Code) and the original message or its
headers. The original is matched by its Message-ID, or by the queue id the relay put
in the per-message fields (`X-Postfix-Queue-ID`, `X-Queue-ID`).
"""

from __future__ import annotations

import time
from email.message import Message

from service.feedback.bounces import bounce_class, enhanced_status, invalid_recipient, reply_code
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

QUEUE_ID_FIELDS = ("X-Postfix-Queue-ID", "X-Queue-ID", "X-Exim-Queue-ID")
_ACTIONS = {
    "failed": FeedbackType.BOUNCE,
    "delayed": FeedbackType.DEFERRED,
    "delivered": FeedbackType.DELIVERED,
    "relayed": FeedbackType.DELIVERED,
    "expanded": FeedbackType.DELIVERED,
}


def dsn_events(body: bytes, hash_recipient: callable) -> list[FeedbackEvent]:  # type: ignore[valid-type]
    report = parse_report(body)
    status_part = part_of_type(report, "message/delivery-status", "message/global-delivery-status")
    if status_part is None:
        raise MalformedReport(
            f"not a delivery status notification: a {report.get_content_type()} without a "
            "message/delivery-status part (RFC 3464)"
        )
    blocks = [b for b in status_part.get_payload() if isinstance(b, Message)] if status_part.is_multipart() else []
    if len(blocks) < 2:
        raise MalformedReport("the delivery-status part has no per-recipient fields (Final-Recipient, Action)")
    per_message, recipients = blocks[0], blocks[1:]
    original = original_message(report)
    queue_id = next((per_message[f].strip() for f in QUEUE_ID_FIELDS if per_message.get(f)), None)
    if original.message_id is None and queue_id is None:
        raise MalformedReport(
            "cannot match the report to a sent message: no Message-ID in the returned message or headers, "
            "and no queue id in the per-message fields"
        )
    envelope_id = (per_message.get("Original-Envelope-Id") or "").strip() or None
    fallback_time = report_time(per_message.get("Arrival-Date"), report.get("Date")) or time.time()
    events = []
    for block in recipients:
        action = (block.get("Action") or "").strip().lower()
        kind = _ACTIONS.get(action)
        if kind is None:
            raise MalformedReport(f"unknown Action {action!r} for {block.get('Final-Recipient')!r} (RFC 3464 2.3.3)")
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
                timestamp=report_time(block.get("Last-Attempt-Date")) or fallback_time,
                message_id=original.message_id,
                queue_id=queue_id,
                recipient_hash=hash_recipient(recipient) if recipient else None,
                detail=detail,
            )
        )
    return events
