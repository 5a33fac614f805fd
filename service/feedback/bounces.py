"""Reading SMTP results: enhanced status codes (RFC 3463) and reply codes out of DSN fields."""

from __future__ import annotations

import re

_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY_CODE = re.compile(r"(?:^|[;\s])([245]\d\d)(?=[\s\-]|$)")


def enhanced_status(*texts: str | None) -> str | None:
    """The first RFC 3463 status (5.1.1) found in the fields, in order.

    A generic one (X.0.0) gives way to a more specific one of the same class later on:
    Exim writes `Status: 5.0.0` for every failure and leaves the remote's `5.1.1` to the
    Diagnostic-Code, which is what tells a bad address from any other refusal.
    """
    found = [".".join(match.groups()) for text in texts if text and (match := _STATUS.search(text))]
    if not found:
        return None
    first = found[0]
    if first.endswith(".0.0"):
        return next((status for status in found[1:] if status[0] == first[0]), first)
    return first


def reply_code(*texts: str | None) -> int | None:
    """The first SMTP reply code (550) found in the fields, in order."""
    for text in texts:
        if text and (match := _REPLY_CODE.search(text)):
            return int(match.group(1))
    return None


def bounce_class(status: str | None, smtp_code: int | None) -> str:
    """`hard` for a permanent failure (5.x.x / 5xx), else `soft`."""
    if status:
        return "hard" if status.startswith("5") else "soft"
    return "hard" if smtp_code is not None and smtp_code >= 500 else "soft"


def invalid_recipient(status: str | None) -> bool:
    """5.1.x: the address itself is bad (no such user, bad domain, bad syntax); what spam lists hit."""
    return bool(status) and status.startswith("5.1.")  # type: ignore[union-attr]
