"""What DSNs and ARF reports share: parsing the report, finding the original message, stable event ids."""

from __future__ import annotations

import email
import email.policy
import hashlib
from dataclasses import dataclass
from email.message import Message
from email.utils import parseaddr, parsedate_to_datetime


class MalformedReport(ValueError):
    """A report that cannot be read as the format it claims; the message says what is missing."""


@dataclass(frozen=True, slots=True)
class Original:
    """What a report carries of the message it is about."""

    message_id: str | None
    recipient: str | None  # the To of the original, when the report names no recipient


def parse_report(body: bytes) -> Message:
    if not body.strip():
        raise MalformedReport("the request body is empty; send the whole report as message/rfc822")
    try:
        return email.message_from_bytes(body, policy=email.policy.compat32)
    except (RecursionError, ValueError) as exc:
        raise MalformedReport(f"not a parseable RFC 5322 message: {exc}") from None


def part_of_type(message: Message, *content_types: str) -> Message | None:
    for part in message.walk():
        if part.get_content_type() in content_types:
            return part
    return None


def original_message(report: Message) -> Original:
    """The original's Message-ID and To, from a message/rfc822 or text/rfc822-headers part."""
    part = part_of_type(report, "message/rfc822", "text/rfc822-headers")
    if part is None:
        return Original(None, None)
    if part.get_content_type() == "message/rfc822":
        payload = part.get_payload()
        original = payload[0] if isinstance(payload, list) and payload else None
    else:
        text = part.get_payload(decode=True) or b""
        original = email.message_from_bytes(text, policy=email.policy.compat32)
    if original is None:
        return Original(None, None)
    message_id = (original.get("Message-ID") or "").strip() or None
    return Original(message_id, address_field(parseaddr(original.get("To") or "")[1]))


def address_field(value: str | None) -> str | None:
    """`rfc822; user@example.org` -> `user@example.org`; None for a redacted or missing address."""
    if not value:
        return None
    _, _, address = value.partition(";") if ";" in value else ("", "", value)
    address = address.strip().strip("<>").strip()
    return address if "@" in address else None


def report_time(*values: str | None) -> float | None:
    for value in values:
        if not value:
            continue
        try:
            return parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError):
            continue
    return None


def event_id(kind: str, report: Message, body: bytes, *parts: str | None) -> str:
    """The same report posted twice gives the same ids: idempotent ingestion."""
    anchor = (report.get("Message-ID") or "").strip() or hashlib.sha256(body).hexdigest()
    digest = hashlib.sha256("|".join([kind, anchor, *(p or "" for p in parts)]).encode()).hexdigest()
    return f"{kind}:{digest[:32]}"
