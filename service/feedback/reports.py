"""What DSNs and ARF reports share: reading the report into text fields, finding the original, event ids.

Every field is read as a `str` through one email policy (`REPORT_POLICY`): RFC 2047
encoded words are decoded and 8-bit bytes are read as UTF-8 (RFC 6532; bytes that are
not UTF-8 become U+FFFD), so a localised Diagnostic-Code, an EAI address or a UTF-8
Message-ID is text like any other. No field is parsed as a structured header (the
stdlib's address and date classes raise or guess on the malformed values reports carry):
this module reads addresses and dates itself and skips a malformed one.

U+0000 (NUL) is stripped from every field as it is read. RFC 5322 forbids it in a
message, no MTA writes it, and PostgreSQL cannot store it: kept, it made a stored event
silently vanish; refused, one stray byte would lose a real bounce.

Report dates (Arrival-Date, Last-Attempt-Date, Received-Date, Date) are used as event
times. One more than `max_clock_skew_s` in the future is refused with a 422 naming the
field, as the JSON API refuses such a `timestamp`: an event from year 9999 would make
every later one look stale to its account's engagement. An unreadable date is skipped
for the next one, and receipt time is used when none is left.
"""

from __future__ import annotations

import binascii
import hashlib
import quopri
import re
import time
from dataclasses import dataclass
from datetime import UTC
from email.errors import MissingHeaderBodySeparatorDefect
from email.headerregistry import HeaderRegistry
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from email.policy import EmailPolicy
from email.utils import parseaddr, parsedate_to_datetime

from service.settings import Settings

# For callers without settings (the API passes its own).
DEFAULT_MAX_CLOCK_SKEW_S = float(Settings.model_fields["max_clock_skew_s"].default)
ORIGINAL_TYPES = ("message/rfc822", "message/global", "text/rfc822-headers", "message/global-headers")
_ENCODED = frozenset({"base64", "quoted-printable"})
_LINE_BREAK = re.compile(rb"\r\n|\n|\r")
# RFC 6533 3: EmbeddedUnicodeChar, `\x{E9}`, in utf-8-addr-xtext and utf-8-addr-unitext.
_EMBEDDED_CHAR = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")


class MalformedReport(ValueError):
    """A report that cannot be read as the format it claims; the message says what is missing."""


class _ReportPolicy(EmailPolicy):
    """RFC 6532 reading: every header value a plain, unfolded, decoded `str` without NUL."""

    def header_fetch_parse(self, name: str, value: str) -> str:  # type: ignore[override]
        return str(super().header_fetch_parse(name, value)).replace("\x00", "")


# Unstructured everywhere (use_default_map=False): see the module docstring.
REPORT_POLICY = _ReportPolicy(header_factory=HeaderRegistry(use_default_map=False), message_factory=Message)
_HEADERS = BytesHeaderParser(policy=REPORT_POLICY)


@dataclass(frozen=True, slots=True)
class Original:
    """What a report carries of the message it is about."""

    message_id: str | None
    recipient: str | None  # the To of the original, when the report names no recipient


def parse_report(body: bytes) -> Message:
    if not body.strip():
        raise MalformedReport("the request body is empty; send the whole report as message/rfc822")
    try:
        return BytesParser(policy=REPORT_POLICY).parsebytes(body)
    except (RecursionError, ValueError) as exc:
        raise MalformedReport(f"not a parseable RFC 5322 message: {exc}") from None


def part_of_type(message: Message, *content_types: str) -> Message | None:
    for part in message.walk():
        if part.get_content_type() in content_types:
            return part
    return None


def _source(message: Message) -> bytes:
    """An embedded message as it came, from what the parser split it into (headers, body)."""
    head = "".join(f"{name}: {value}\n" for name, value in message.raw_items()).encode("utf-8", "surrogateescape")
    # Where the parser found no blank line, the header block ended at a line that was not
    # a header (a quoted-printable soft break, base64): putting one back would split it.
    separated = not any(isinstance(d, MissingHeaderBodySeparatorDefect) for d in message.defects)
    # decode=True gives the body's bytes as they came (decode=False would re-read 8-bit as ASCII).
    body = message.get_payload(decode=True) if not message.is_multipart() else None
    return head + (b"\n" if separated else b"") + (body or b"")


def part_content(part: Message) -> bytes:
    """The decoded content of a MIME part.

    The parser reads every message/* part as an embedded message, also those RFC 6532 and
    RFC 6533 let a 7-bit path send in base64 or quoted-printable (message/global,
    message/global-headers, message/global-delivery-status), where that reading is
    nonsense: their source is put back together here and decoded.
    """
    payload = part.get_payload()
    if not isinstance(payload, list):
        return part.get_payload(decode=True) or b""
    source = b"\n".join(_source(m) for m in payload if isinstance(m, Message))
    encoding = (part.get("Content-Transfer-Encoding") or "").strip().lower()
    if encoding == "base64":
        try:
            return binascii.a2b_base64(source)
        except binascii.Error:
            raise MalformedReport(f"the {part.get_content_type()} part is not valid base64") from None
    if encoding == "quoted-printable":
        return quopri.decodestring(source)
    return source


def field_blocks(part: Message) -> list[Message]:
    """The blocks of fields in a report part (RFC 3464 2.1: separated by blank lines).

    Blank or empty blocks are dropped: Microsoft 365 and others end the part with an
    extra blank line, which is no recipient.
    """
    blocks: list[Message] = []
    lines: list[bytes] = []
    for line in [*_LINE_BREAK.split(part_content(part)), b""]:
        if line.strip():
            lines.append(line)
        elif lines:
            blocks.append(_HEADERS.parsebytes(b"\n".join(lines) + b"\n"))
            lines = []
    return [block for block in blocks if len(block)]


def _embedded(part: Message) -> Message | None:
    payload = part.get_payload()
    encoding = (part.get("Content-Transfer-Encoding") or "").strip().lower()
    if isinstance(payload, list) and encoding not in _ENCODED:
        return payload[0] if payload and isinstance(payload[0], Message) else None
    return _HEADERS.parsebytes(part_content(part))


def original_message(report: Message) -> Original:
    """The original's Message-ID and To, from the returned message or its headers (RFC 6522, RFC 6533)."""
    part = part_of_type(report, *ORIGINAL_TYPES)
    original = _embedded(part) if part is not None else None
    if original is None:
        return Original(None, None)
    message_id = (original.get("Message-ID") or "").strip() or None
    return Original(message_id, address_field(parseaddr(original.get("To") or "")[1]))


def _unitext(text: str) -> str:
    """utf-8-addr-xtext / utf-8-addr-unitext to the address (RFC 6533 3): `\\x{E9}` is é."""

    def char(match: re.Match[str]) -> str:
        point = int(match.group(1), 16)
        # Never NUL, a surrogate half or past Unicode: those would not survive storage.
        return match.group(0) if point == 0 or 0xD800 <= point <= 0xDFFF or point > 0x10FFFF else chr(point)

    return _EMBEDDED_CHAR.sub(char, text)


def address_field(value: str | None) -> str | None:
    """`rfc822; user@example.org` -> `user@example.org`, `utf-8; j\\x{FC}rgen@...` -> `jürgen@...`;
    None for a redacted or missing address."""
    if not value:
        return None
    kind, separator, address = value.partition(";")
    if not separator:
        kind, address = "", value
    address = address.strip().strip("<>").strip()
    if kind.strip().lower() == "utf-8":
        address = _unitext(address)
    return address if "@" in address else None


def report_time(
    *fields: tuple[str, str | None], max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S, now: float | None = None
) -> float | None:
    """The first readable date of (field name, value), in order; refuses one too far in the future."""
    now = time.time() if now is None else now
    for name, value in fields:
        if not value:
            continue
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            continue
        if moment.tzinfo is None:  # RFC 5322 3.3: "-0000" is UTC, with no local time known
            moment = moment.replace(tzinfo=UTC)
        try:
            stamp = moment.timestamp()
        except (OverflowError, ValueError):
            continue
        if (ahead := stamp - now) > max_clock_skew_s:
            raise MalformedReport(
                f"{name} {value[:64]!r} is {ahead:.0f} s in the future, more than the allowed clock skew of "
                f"{max_clock_skew_s:.0f} s"
            )
        return stamp
    return None


def event_id(kind: str, report: Message, body: bytes, *parts: str | None) -> str:
    """The same report posted twice gives the same ids: idempotent ingestion."""
    anchor = (report.get("Message-ID") or "").strip() or hashlib.sha256(body).hexdigest()
    digest = hashlib.sha256("|".join([kind, anchor, *(p or "" for p in parts)]).encode()).hexdigest()
    return f"{kind}:{digest[:32]}"
