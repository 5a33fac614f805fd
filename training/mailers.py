"""Re-send a message in the shape a real mailer library gives it.

modern-train's ham was wrapped by one Python program: one boundary style, one
Message-ID pattern, one header order, always text and HTML. A model that sees that
shape learns "built by Python", not "legitimate". `reshape` takes the message's
content (subject, addresses, text, HTML, date, the headers a sender writes) and
builds it again as one of the libraries that send such mail really do:

| mailer | sends for | shape taken from the library |
| --- | --- | --- |
| phpmailer | WooCommerce, phpBB, OpenCart, WordPress | `b1_` boundaries, `<random@host>` Message-ID, 8bit |
| symfony | Sylius, Kimai | short base64 boundaries, 32-hex Message-ID on the From domain, quoted-printable |
| rails | Redmine, Solidus | `--==_mimepart_` boundaries, `<hex.mail@host>`, 7bit/QP, charset on the container |
| django | Saleor, allauth | Python's `===...==` boundaries, `<epoch.pid.random@host>` |
| mimekit | Bitwarden | `=-base64==` boundaries, `<random@host>`, base64 HTML, header order of MimeKit |
| go | listmonk, Kratos, Authelia | 60-hex boundaries from `mime/multipart`, headers sorted as Go's maps leave them |
| nodemailer | Vendure | `--_NmP-hex-Part_1`, `<uuid@domain>`, HTML-only when no text is given |

Some ham gets a Reply-To (the shop owner, the support queue; now and then at a mailbox
provider) and, where the library sends HTML alone when the application gives no text
(PHPMailer for WooCommerce, Go, Nodemailer), an HTML-only body: the corpus build did
neither, so without this "Reply-To" and "HTML only" would mean spam.

Header fields a receiver or a transport adds (X-Mailer included, since the corpus's
spam had every X- header removed) are not written: both classes must look alike in
what a corpus build stripped. The shapes come from each library's source; they need not
be byte-exact, only as varied as the real ones, so that no single shape means ham.
"""

from __future__ import annotations

import base64
import quopri
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from email.header import Header
from email.utils import formataddr, parseaddr

import numpy as np

from features.message import ParsedMessage

MAILERS = ("phpmailer", "symfony", "rails", "django", "mimekit", "go", "nodemailer")

# Kept from the original: what the sender's software writes.
_KEPT = ("from", "to", "cc", "reply-to", "subject", "date", "in-reply-to", "references", "content-language")
_LIST = ("list-unsubscribe", "list-unsubscribe-post", "list-id")

_HOSTS = (
    "web{n}.shared-hosting.net",
    "srv{n}.cpanel-host.com",
    "ip-10-0-{n}-17.ec2.internal",
    "localhost.localdomain",
    "vps{n}.hostingcloud.eu",
    "mail{n}.{domain}",
    "{domain}",
)


def _alnum(rng: np.random.Generator, n: int, alphabet: str = "abcdefghijklmnopqrstuvwxyz0123456789") -> str:
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), n))


def _hex(rng: np.random.Generator, n: int) -> str:
    return _alnum(rng, n, "0123456789abcdef")


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


@dataclass(slots=True)
class _Content:
    headers: dict[str, str]  # lower-case name -> value, as the sender wrote it
    from_domain: str
    text: str
    html: str


def _content(parsed: ParsedMessage) -> _Content:
    headers: dict[str, str] = {}
    for name, value in parsed.all_headers:
        key = name.lower()
        if (key in _KEPT or key in _LIST) and key not in headers:
            headers[key] = value
    domain = parseaddr(headers.get("from", ""))[1].rpartition("@")[2].lower() or "example.com"
    return _Content(headers, domain, parsed.text, parsed.html)


def _host(rng: np.random.Generator, domain: str) -> str:
    pattern = _HOSTS[int(rng.integers(0, len(_HOSTS)))]
    return pattern.format(n=int(rng.integers(1, 250)), domain=domain)


def _encode_header(value: str) -> str:
    """A header value as a mailer writes it: RFC 2047 only when it is not ASCII."""
    if value.isascii():
        return value
    return Header(value, "utf-8").encode()


def _encode_address(value: str) -> str:
    name, address = parseaddr(value)
    if not address:
        return _encode_header(value)
    return formataddr((name, address)) if name.isascii() else formataddr((str(Header(name, "utf-8").encode()), address))


def _body(text: str, encoding: str) -> tuple[str, str]:
    """(Content-Transfer-Encoding, encoded body)."""
    data = text.replace("\r\n", "\n").encode("utf-8")
    if encoding == "8bit" and data.isascii():
        encoding = "7bit"
    if encoding in ("7bit", "8bit"):
        return encoding, data.decode("utf-8").replace("\n", "\r\n")
    if encoding == "base64":
        encoded = base64.encodebytes(data).decode("ascii")
        return "base64", encoded.replace("\n", "\r\n")
    return "quoted-printable", quopri.encodestring(data).decode("ascii").replace("\n", "\r\n")


@dataclass(frozen=True, slots=True)
class _Shape:
    order: tuple[str, ...]  # header names in the order the library writes them
    message_id: Callable[[np.random.Generator, str, str], str]  # (rng, from domain, host)
    boundary: Callable[[np.random.Generator], str]
    text_encoding: str
    html_encoding: str
    preamble: str = ""
    html_only_share: float = 0.0  # libraries that send HTML alone when the app gives no text


_SHAPES: dict[str, _Shape] = {
    "phpmailer": _Shape(
        ("date", "to", "from", "reply-to", "subject", "message-id", "mime-version", "content-type"),
        lambda rng, domain, host: f"<{_alnum(rng, 43, _B64)}@{host}>",
        lambda rng: f"b1_{_alnum(rng, 43, _B64)}",
        "8bit",
        "8bit",
        "This is a multi-part message in MIME format.\r\n",
        html_only_share=0.6,
    ),
    "symfony": _Shape(
        ("from", "reply-to", "to", "subject", "message-id", "mime-version", "date", "content-type"),
        lambda rng, domain, host: f"<{_hex(rng, 32)}@{domain}>",
        lambda rng: _alnum(rng, 8, _B64 + "-_"),
        "quoted-printable",
        "quoted-printable",
        html_only_share=0.3,
    ),
    "rails": _Shape(
        ("date", "from", "reply-to", "to", "message-id", "subject", "mime-version", "content-type"),
        lambda rng, domain, host: f"<{_hex(rng, 13)}_{int(rng.integers(1000, 99999))}{_hex(rng, 6)}@{host}.mail>",
        lambda rng: f"--==_mimepart_{_hex(rng, 13)}_{int(rng.integers(1, 99))}{_hex(rng, 4)}",
        "7bit",
        "quoted-printable",
    ),
    "django": _Shape(
        ("content-type", "mime-version", "subject", "from", "to", "reply-to", "date", "message-id"),
        lambda rng, domain, host: (
            f"<{int(rng.integers(170_000_000_000, 179_000_000_000))}.{int(rng.integers(100, 65000))}."
            f"{int(rng.integers(10**17, 10**18))}@{host}>"
        ),
        lambda rng: f"==============={int(rng.integers(10**18, 9 * 10**18))}==",
        "quoted-printable",
        "quoted-printable",
        html_only_share=0.2,
    ),
    "mimekit": _Shape(
        ("date", "from", "reply-to", "subject", "message-id", "to", "mime-version", "content-type"),
        lambda rng, domain, host: f"<{_alnum(rng, 12, _B64.upper()[:36])}.{_alnum(rng, 14, _B64.upper()[:36])}@{host}>",
        lambda rng: f"=-{_alnum(rng, 22, _B64)}==",
        "quoted-printable",
        "base64",
        html_only_share=0.2,
    ),
    "go": _Shape(
        ("content-type", "date", "from", "message-id", "mime-version", "reply-to", "subject", "to"),
        lambda rng, domain, host: f"<{_hex(rng, 16)}.{int(rng.integers(10**9, 2 * 10**9))}@{domain}>",
        lambda rng: _hex(rng, 60),
        "quoted-printable",
        "quoted-printable",
        html_only_share=0.3,
    ),
    "nodemailer": _Shape(
        ("content-type", "from", "to", "reply-to", "subject", "message-id", "date", "mime-version"),
        lambda rng, domain, host: f"<{uuid.UUID(bytes=bytes(rng.integers(0, 256, 16, dtype=np.uint8)))}@{domain}>",
        lambda rng: f"--_NmP-{_hex(rng, 16)}-Part_1",
        "quoted-printable",
        "quoted-printable",
        html_only_share=0.5,
    ),
}


def reshape(parsed: ParsedMessage, mailer: str, rng: np.random.Generator) -> bytes:
    """The same message as `mailer` would have built it."""
    shape = _SHAPES[mailer]
    content = _content(parsed)
    host = _host(rng, content.from_domain)
    headers = {k: v for k, v in content.headers.items() if k in _KEPT or k in _LIST}
    headers["message-id"] = shape.message_id(rng, content.from_domain, host)
    headers["mime-version"] = "1.0"
    for name in ("from", "to", "cc", "reply-to"):
        if name in headers:
            headers[name] = ", ".join(_encode_address(a.strip()) for a in headers[name].split(",") if a.strip())
    if "subject" in headers:
        headers["subject"] = _encode_header(headers["subject"])

    _reply_to(headers, content.from_domain, rng)
    text, html = content.text, content.html
    if html and text and rng.random() < shape.html_only_share:
        text = ""
    parts: list[tuple[str, str, str]] = []  # (content type, transfer encoding, body)
    if text:
        parts.append(("text/plain; charset=utf-8", *_body(text, shape.text_encoding)))
    if html:
        parts.append(("text/html; charset=utf-8", *_body(html, shape.html_encoding)))
    if not parts:
        parts.append(("text/plain; charset=utf-8", *_body("", shape.text_encoding)))

    lines: list[str] = []
    body: list[str] = []
    if len(parts) == 1:
        content_type, encoding, payload = parts[0]
        headers["content-type"] = content_type
        headers["content-transfer-encoding"] = encoding
        body.append(payload)
    else:
        boundary = shape.boundary(rng)
        headers["content-type"] = f'multipart/alternative; boundary="{boundary}"'
        body.append(shape.preamble)
        for content_type, encoding, payload in parts:
            body.append(f"--{boundary}\r\nContent-Type: {content_type}\r\nContent-Transfer-Encoding: {encoding}\r\n")
            body.append(payload.rstrip("\r\n") + "\r\n")
        body.append(f"--{boundary}--\r\n")
    written = set()
    for name in (*shape.order, *headers):
        if name in headers and name not in written:
            lines.append(f"{_canonical(name)}: {headers[name]}")
            written.add(name)
    return ("\r\n".join(lines) + "\r\n\r\n" + "\r\n".join(body)).encode("utf-8", "surrogateescape")


# Shops and help desks set Reply-To (the store owner, the support queue), now and then at
# a mailbox provider; the corpus build never did, which would make Reply-To mean spam.
REPLY_TO_SHARE = 0.3
REPLY_TO_ELSEWHERE_SHARE = 0.15
CC_SHARE = 0.02


def _reply_to(headers: dict[str, str], domain: str, rng: np.random.Generator) -> None:
    if "reply-to" not in headers and rng.random() < REPLY_TO_SHARE:
        elsewhere = rng.random() < REPLY_TO_ELSEWHERE_SHARE
        mailbox = ("gmail.com", "outlook.com", "yahoo.com")[int(rng.integers(0, 3))] if elsewhere else domain
        local = ("support", "info", "hello", "orders", "owner", "team")[int(rng.integers(0, 6))]
        headers["reply-to"] = f"{local}{int(rng.integers(1, 99)) if elsewhere else ''}@{mailbox}"
    if "cc" not in headers and rng.random() < CC_SHARE:
        headers["cc"] = f"archive@{domain}"


def _canonical(name: str) -> str:
    special = {"message-id": "Message-ID", "mime-version": "MIME-Version"}
    return special.get(name, "-".join(word.capitalize() for word in name.split("-")))
