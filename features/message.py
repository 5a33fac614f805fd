"""Parse a message, raw RFC 5322 or structured fields, into one `ParsedMessage`.

Both request shapes end up here, and so does every corpus message in training,
so the features downstream never care where the content came from.

Only headers the *sender* controls are kept for features (`SENDER_HEADERS`):
headers added on the receiving side (Received, X-Spam-*, List-*...) would leak
the label in the public corpora and never exist on outbound mail anyway. The
full header list is kept apart for identity rules.
"""

from __future__ import annotations

import email
import email.header
import email.parser
import email.policy
import re
from dataclasses import dataclass, field
from email.message import Message

# Sender-controlled headers: what a submission client writes before the relay.
SENDER_HEADERS = frozenset(
    {
        "from",
        "sender",
        "to",
        "cc",
        "reply-to",
        "subject",
        "date",
        "message-id",
        "in-reply-to",
        "references",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "x-mailer",
        "user-agent",
        "x-priority",
        "importance",
        "organization",
    }
)

# Bodies beyond this are cut before feature extraction: it bounds the cost of a
# message on the hot path, and the first few hundred KB decide anyway. The caps hold
# per message, over all its parts.
MAX_BODY_CHARS = 200_000
MAX_SUBJECT_CHARS = 2_000
MAX_ATTACHMENTS = 1_000


@dataclass(slots=True)
class Attachment:
    filename: str
    content_type: str
    size: int


@dataclass(slots=True)
class ParsedMessage:
    """What the content features read. Header names are lower case."""

    headers: list[tuple[str, str]] = field(default_factory=list)  # sender-controlled, decoded
    all_headers: list[tuple[str, str]] = field(default_factory=list)  # everything, raw, for identity rules
    subject: str = ""
    subject_encoded: bool = False
    text: str = ""
    html: str = ""
    attachments: list[Attachment] = field(default_factory=list)
    part_count: int = 0
    depth: int = 0
    defects: int = 0
    header_non_ascii: bool = False
    # False when a relay sent structured content without headers: absence features stay neutral.
    headers_known: bool = True

    def header(self, name: str) -> str | None:
        """First sender-controlled header with this (lower-case) name."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


def _fix_surrogates(value: str) -> str:
    # compat32 keeps undecodable 8-bit header bytes as surrogate escapes.
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


_FOLD = re.compile(r"\r?\n(?=[ \t])")


def decode_header_value(value: str) -> str:
    """Unfolded, RFC 2047 encoded words to text; never raises on broken encodings."""
    value = _FOLD.sub("", _fix_surrogates(str(value)))
    if "=?" not in value:
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (email.errors.HeaderParseError, LookupError, UnicodeError, ValueError):
        return value


def _has_raw_8bit(value: str) -> bool:
    """Any character outside ASCII: raw 8-bit bytes (kept as surrogates by compat32) or text."""
    return not value.isascii()


def _decode_payload(part: Message) -> bytes:
    try:
        payload = part.get_payload(decode=True)
    except (ValueError, TypeError, AssertionError):  # broken base64/uu is common in spam
        payload = None
    if isinstance(payload, bytes):
        return payload
    raw = part.get_payload()
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""


def _part_text(part: Message, payload: bytes) -> str:
    charset = part.get_content_charset() or "utf-8"
    head = payload[: MAX_BODY_CHARS * 2]
    try:
        text = head.decode(charset, "replace")
    except (LookupError, UnicodeError):  # an unknown charset, or one like idna that raises anyway
        text = head.decode("latin-1", "replace")
    return text[:MAX_BODY_CHARS]


def _walk(msg: Message, parsed: ParsedMessage, depth: int, texts: list[str], htmls: list[str]) -> None:
    parsed.defects += len(msg.defects)
    if msg.is_multipart():
        parsed.depth = max(parsed.depth, depth + 1)
        payload = msg.get_payload()
        if isinstance(payload, list):
            for sub in payload:
                if isinstance(sub, Message):
                    _walk(sub, parsed, depth + 1, texts, htmls)
        return
    parsed.part_count += 1
    content_type = msg.get_content_type()
    filename = msg.get_filename()
    disposition = (msg.get("content-disposition") or "").lower()
    is_attachment = bool(filename) or disposition.startswith("attachment")
    if not is_attachment and content_type in ("text/plain", "text/html"):
        bucket = htmls if content_type == "text/html" else texts
        if sum(map(len, bucket)) < MAX_BODY_CHARS:
            bucket.append(_part_text(msg, _decode_payload(msg)))
        return
    if len(parsed.attachments) >= MAX_ATTACHMENTS:
        return
    payload = _decode_payload(msg)
    name = decode_header_value(filename) if filename else ""
    parsed.attachments.append(Attachment(filename=name, content_type=content_type, size=len(payload)))


def parse_raw(raw: bytes | str) -> ParsedMessage:
    """Parse a whole RFC 5322 message. Broken MIME is parsed as far as it goes.

    MIME nested deeper than the interpreter's recursion allows is read for its
    headers only, with a defect counted.
    """
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    try:
        return _parse_full(raw)
    except RecursionError:
        parsed = _parse_headers(email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw, True))
        parsed.defects += 1
        return parsed


def _parse_full(raw: bytes) -> ParsedMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    parsed = _parse_headers(msg)
    texts: list[str] = []
    htmls: list[str] = []
    _walk(msg, parsed, 0, texts, htmls)
    parsed.text = "\n".join(texts)[:MAX_BODY_CHARS]
    parsed.html = "\n".join(htmls)[:MAX_BODY_CHARS]
    return parsed


def _parse_headers(msg: Message) -> ParsedMessage:
    parsed = ParsedMessage()
    for name, value in msg.items():
        key = name.lower()
        parsed.all_headers.append((name, _fix_surrogates(str(value))))
        if key in SENDER_HEADERS:
            raw_value = str(value)
            if _has_raw_8bit(raw_value):
                parsed.header_non_ascii = True
            if key == "subject" and "=?" in raw_value:
                parsed.subject_encoded = True
            parsed.headers.append((key, decode_header_value(raw_value)))
    parsed.subject = (parsed.header("subject") or "")[:MAX_SUBJECT_CHARS]
    return parsed


def parse_structured(
    headers: list[tuple[str, str]] | None,
    subject: str | None,
    text: str | None,
    html: str | None,
    attachments: list[Attachment] | None,
) -> ParsedMessage:
    """Build the same `ParsedMessage` from fields a relay sent already split."""
    parsed = ParsedMessage(headers_known=bool(headers))
    for name, value in headers or ():
        key = name.lower()
        parsed.all_headers.append((name, value))
        if key in SENDER_HEADERS:
            if key == "subject" and "=?" in value:
                parsed.subject_encoded = True
            if _has_raw_8bit(value):
                parsed.header_non_ascii = True
            parsed.headers.append((key, decode_header_value(value)))
    if subject is not None:
        parsed.headers = [(k, v) for k, v in parsed.headers if k != "subject"]
        parsed.headers.append(("subject", subject))
    if parsed.headers_known and parsed.header("mime-version") is None:
        # The relay split the MIME tree itself: it was MIME, whatever headers it forwarded.
        parsed.headers.append(("mime-version", "1.0"))
    parsed.subject = (parsed.header("subject") or "")[:MAX_SUBJECT_CHARS]
    parsed.text = (text or "")[:MAX_BODY_CHARS]
    parsed.html = (html or "")[:MAX_BODY_CHARS]
    parsed.attachments = list(attachments or ())[:MAX_ATTACHMENTS]
    parsed.part_count = int(bool(parsed.text)) + int(bool(parsed.html)) + len(parsed.attachments)
    # The MIME tree a client would have built: alternative for text+html, mixed around attachments.
    parsed.depth = int(bool(parsed.text) and bool(parsed.html)) + int(bool(parsed.attachments))
    return parsed
