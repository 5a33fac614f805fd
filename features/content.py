"""Content features of one parsed message: text, subject, headers, links, HTML, MIME.

Everything here is a pure function of the message (and the envelope sender), so the
same numbers come out in serving and in training. The text model's score is added
by `features.vector`, which owns the fitted text model.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from email.utils import getaddresses, parseaddr, parsedate_tz

from features.html import analyse_html
from features.message import ParsedMessage
from features.urls import SHORTENERS, domain_named_in, email_domain, links_in_text, parse_link, registered_domain

_REPLY_PREFIX = re.compile(r"^\s*(?:re|fw|fwd|aw|sv|vs|antw|wg|tr)\s*(?:\[\d+\])?\s*:", re.IGNORECASE)
_ADDRESS_IN_TEXT = re.compile(r"[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,8}")
_CURRENCY = re.compile(r"[$€£¥₹]|\b(?:usd|eur|gbp)\b", re.IGNORECASE)

EXECUTABLE_EXT = frozenset(
    [
        "exe",
        "scr",
        "com",
        "pif",
        "bat",
        "cmd",
        "vbs",
        "vbe",
        "js",
        "jse",
        "wsf",
        "wsh",
        "hta",
        "msi",
        "jar",
        "ps1",
        "cpl",
        "lnk",
        "reg",
        "dll",
        "iso",
        "img",
    ]
)
ARCHIVE_EXT = frozenset(["zip", "rar", "7z", "gz", "tgz", "bz2", "xz", "ace", "arj", "cab", "tar", "z"])
MACRO_OFFICE_EXT = frozenset(["docm", "xlsm", "pptm", "dotm", "xltm", "xlam", "ppam", "ppsm", "sldm"])
DOCUMENT_EXT = frozenset(
    ["pdf", "doc", "docx", "xls", "xlsx", "ppt", "pptx", "rtf", "odt", "txt", "csv", "html", "htm"]
)
# Extension -> declared content-type families that are plausible for it.
_TYPE_FAMILIES = {
    "pdf": ("application/pdf", "application/octet-stream"),
    "jpg": ("image/",),
    "jpeg": ("image/",),
    "png": ("image/",),
    "gif": ("image/",),
    "zip": ("application/zip", "application/x-zip", "application/octet-stream", "application/x-compressed"),
    "txt": ("text/",),
    "html": ("text/html",),
}

# Visible text handed to the text model: the first chars decide, the cap bounds cost.
TEXT_MODEL_CHARS = 4_000
# Address headers longer than this are cut before parsing (RFC 5322 lines stop at 998).
MAX_ADDRESS_HEADER = 16_000


@dataclass(slots=True)
class ContentResult:
    features: dict[str, float]
    document: str  # subject + visible text, for the text model


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


_ASCII_UPPER = bytes(range(65, 91))
_ASCII_LOWER = bytes(range(97, 123))
_ASCII_DIGITS = b"0123456789"


def _char_stats(text: str) -> tuple[float, float, float]:
    """(upper-case share of ASCII letters, digit share, non-ASCII share), counted in C."""
    if not text:
        return 0.0, 0.0, 0.0
    ascii_bytes = text.encode("ascii", "ignore")
    n_ascii = len(ascii_bytes)
    upper = n_ascii - len(ascii_bytes.translate(None, _ASCII_UPPER))
    lower = n_ascii - len(ascii_bytes.translate(None, _ASCII_LOWER))
    digits = n_ascii - len(ascii_bytes.translate(None, _ASCII_DIGITS))
    n = len(text)
    return _ratio(upper, upper + lower), digits / n, (n - n_ascii) / n


def _extension(filename: str) -> tuple[str, str]:
    """(last extension, the one before it), lower case."""
    parts = filename.lower().rsplit(".", 2)
    last = parts[-1] if len(parts) > 1 else ""
    before = parts[-2] if len(parts) > 2 else ""
    return last, before


def _text_features(text: str, out: dict[str, float]) -> None:
    sample = text[:20_000]
    words = sample.split()
    upper, digits, non_ascii = _char_stats(sample)
    out["text_length_log"] = math.log1p(len(text))
    out["text_words_log"] = math.log1p(len(words))
    out["text_uppercase_ratio"] = upper
    out["text_digit_ratio"] = digits
    out["text_non_ascii_ratio"] = non_ascii
    out["text_exclamation_count"] = float(sample.count("!"))
    out["text_currency_count"] = float(len(_CURRENCY.findall(sample)))
    out["text_unique_word_ratio"] = _ratio(len(set(words)), len(words))
    out["text_longest_word"] = float(min(max(map(len, words), default=0), 1000))
    out["text_empty"] = float(not words)


def _subject_features(parsed: ParsedMessage, out: dict[str, float]) -> None:
    subject = parsed.subject
    upper, digits, non_ascii = _char_stats(subject)
    out["subject_length"] = float(len(subject))
    out["subject_uppercase_ratio"] = upper
    out["subject_exclamation_count"] = float(subject.count("!"))
    out["subject_digit_ratio"] = digits
    out["subject_non_ascii_ratio"] = non_ascii
    out["subject_is_reply"] = float(bool(_REPLY_PREFIX.match(subject)))
    out["subject_encoded"] = float(parsed.subject_encoded)
    out["subject_missing"] = float(parsed.headers_known and not subject.strip())


def _header_features(parsed: ParsedMessage, envelope_from: str | None, out: dict[str, float]) -> str:
    """Fill header features; return the From registered domain."""
    known = parsed.headers_known
    display, from_addr = parseaddr((parsed.header("from") or "")[:MAX_ADDRESS_HEADER])
    from_domain = email_domain(from_addr)
    out["from_missing"] = float(known and not from_domain)
    other_addresses = [a for a in _ADDRESS_IN_TEXT.findall(display) if a.lower() != from_addr.lower()]
    out["from_display_has_address"] = float(bool(other_addresses))

    reply_to = parsed.header("reply-to")
    out["reply_to_present"] = float(reply_to is not None)
    reply_domain = email_domain(parseaddr((reply_to or "")[:MAX_ADDRESS_HEADER])[1])
    out["reply_to_domain_mismatch"] = float(bool(reply_domain and from_domain and reply_domain != from_domain))
    env_domain = email_domain(envelope_from)
    out["envelope_from_mismatch"] = float(bool(env_domain and from_domain and env_domain != from_domain))

    to_values = [v[:MAX_ADDRESS_HEADER] for v in parsed.header_values("to")]
    out["to_count"] = float(len([a for _, a in getaddresses(to_values) if a]))
    out["cc_count"] = float(
        len([a for _, a in getaddresses([v[:MAX_ADDRESS_HEADER] for v in parsed.header_values("cc")]) if a])
    )
    out["to_missing"] = float(known and not to_values)

    message_id = parsed.header("message-id")
    out["message_id_missing"] = float(known and not message_id)
    local, _, mid_domain = (message_id or "").strip().strip("<>").rpartition("@")
    mid_reg = registered_domain(mid_domain) if mid_domain else ""
    out["message_id_domain_mismatch"] = float(bool(mid_reg and from_domain and mid_reg != from_domain))
    out["message_id_random_ratio"] = _ratio(sum(c.isdigit() or c.isupper() for c in local), len(local))

    date = parsed.header("date")
    out["date_missing"] = float(known and date is None)
    out["date_invalid"] = float(date is not None and parsedate_tz(date) is None)
    out["mailer_present"] = float(parsed.header("x-mailer") is not None or parsed.header("user-agent") is not None)
    is_mime = parsed.part_count > 1 or bool(parsed.html) or bool(parsed.attachments)
    out["mime_version_missing"] = float(known and is_mime and parsed.header("mime-version") is None)
    out["header_count"] = float(len(parsed.headers))
    out["header_non_ascii"] = float(parsed.header_non_ascii)
    return from_domain


def _link_features(
    text_links: list[str], anchors: list[tuple[str, str]], from_domain: str, out: dict[str, float]
) -> None:
    anchor_links = [parse_link(href) for href, _ in anchors]
    valid = [link for link in [*map(parse_link, text_links), *anchor_links] if link is not None]
    mismatches = 0
    for (_, visible), target in zip(anchors, anchor_links, strict=True):
        claimed = domain_named_in(visible) if visible and target is not None else None
        if target is not None and claimed and claimed != target.domain:
            mismatches += 1
    out["url_count"] = float(len(valid))
    out["url_distinct_domains"] = float(len({link.domain for link in valid}))
    out["url_shortener_count"] = float(sum(link.host in SHORTENERS for link in valid))
    out["url_ip_literal_count"] = float(sum(link.is_ip for link in valid))
    out["url_text_mismatch_count"] = float(mismatches)
    out["url_from_domain_share"] = _ratio(sum(link.domain == from_domain for link in valid), len(valid))
    out["url_max_length"] = float(max((len(link.url) for link in valid), default=0))
    out["url_nonstandard_port"] = float(any(link.port not in (None, 80, 443) for link in valid))
    out["url_at_sign"] = float(any(link.has_userinfo for link in valid))
    out["url_punycode"] = float(any("xn--" in link.host for link in valid))


def _mime_features(parsed: ParsedMessage, out: dict[str, float]) -> None:
    out["mime_part_count"] = float(parsed.part_count)
    out["mime_depth"] = float(parsed.depth)
    out["mime_parse_defects"] = float(parsed.defects)
    out["attachment_count"] = float(len(parsed.attachments))
    out["attachment_size_log"] = math.log1p(sum(a.size for a in parsed.attachments))
    executable = archive = macro = double = mismatch = False
    disguise = DOCUMENT_EXT | {"jpg", "png", "gif"}
    for attachment in parsed.attachments:
        last, before = _extension(attachment.filename)
        executable |= last in EXECUTABLE_EXT
        archive |= last in ARCHIVE_EXT
        macro |= last in MACRO_OFFICE_EXT
        double |= bool(before) and before in disguise and last in EXECUTABLE_EXT
        families = _TYPE_FAMILIES.get(last)
        if families and not attachment.content_type.startswith(families):
            mismatch = True
    out["attachment_executable"] = float(executable)
    out["attachment_archive"] = float(archive)
    out["attachment_macro_office"] = float(macro)
    out["attachment_double_extension"] = float(double)
    out["attachment_type_mismatch"] = float(mismatch)


def content_features(parsed: ParsedMessage, envelope_from: str | None = None) -> ContentResult:
    """All content features except the text model score, and the text model's input."""
    out: dict[str, float] = {}
    html = analyse_html(parsed.html)
    visible = parsed.text if parsed.text.strip() else html.text
    _text_features(visible, out)
    _subject_features(parsed, out)
    from_domain = _header_features(parsed, envelope_from, out)
    _link_features(links_in_text(parsed.text), html.anchors, from_domain, out)

    out["html_present"] = float(bool(parsed.html.strip()))
    out["html_only"] = float(bool(parsed.html.strip()) and not parsed.text.strip())
    out["html_to_text_ratio"] = math.log1p(len(parsed.html) / (len(html.text) + 1)) if parsed.html else 0.0
    out["html_image_count"] = float(html.image_count)
    out["html_form"] = float(html.has_form)
    out["html_script"] = float(html.has_script)
    out["html_hidden_text"] = float(html.has_hidden_text)
    out["html_text_ratio_low"] = float(bool(parsed.html.strip()) and len(html.text) < 40)
    _mime_features(parsed, out)

    document = f"{parsed.subject}\n{visible[:TEXT_MODEL_CHARS]}"
    return ContentResult(features=out, document=document)
