"""Parsing: raw and structured content land in the same ParsedMessage; receiving-side headers never count."""

from __future__ import annotations

from email.message import EmailMessage

from features.content import content_features
from features.message import Attachment, parse_raw, parse_structured
from tests.conftest import make_raw


def multipart_message() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Shop <news@shop.example>"
    msg["To"] = "carol@example.org"
    msg["Subject"] = "=?utf-8?b?w5xiZXJyYXNjaHVuZw==?="  # "Überraschung"
    msg.set_content("Plain part with a link http://shop.example/deal")
    msg.add_alternative("<p>HTML part <a href='http://shop.example/deal'>deal</a></p>", subtype="html")
    msg.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf", filename="invoice.pdf")
    return msg.as_bytes()


def test_raw_multipart_is_split_into_text_html_and_attachments() -> None:
    parsed = parse_raw(multipart_message())
    assert parsed.subject == "Überraschung"
    assert parsed.subject_encoded
    assert "Plain part" in parsed.text
    assert "<a href" in parsed.html
    assert [(a.filename, a.content_type) for a in parsed.attachments] == [("invoice.pdf", "application/pdf")]
    assert parsed.attachments[0].size == len(b"%PDF-1.4 fake")
    assert parsed.part_count == 3
    assert parsed.depth == 2  # mixed > alternative > leaves


def test_structured_content_gives_the_same_content_features_as_raw() -> None:
    raw = parse_raw(multipart_message())
    structured = parse_structured(
        headers=[("From", "Shop <news@shop.example>"), ("To", "carol@example.org")],
        subject="Überraschung",
        text=raw.text,
        html=raw.html,
        attachments=[Attachment("invoice.pdf", "application/pdf", 13)],
    )
    a, b = content_features(raw).features, content_features(structured).features
    # A relay that splits the message hands over decoded text and fewer headers; the
    # header inventory and RFC 2047 encoding are the only things it cannot convey.
    not_conveyed = {"subject_encoded", "header_count", "message_id_missing", "date_missing", "mime_parse_defects"}
    differing = {name for name in a if a[name] != b[name]}
    assert differing <= not_conveyed


def test_receiving_side_headers_never_change_the_features() -> None:
    clean = content_features(parse_raw(make_raw())).features
    leaky = make_raw(
        extra_headers="X-Spam-Status: Yes, score=25.0\r\nX-Spam-Flag: YES\r\nList-Id: <r-help.r-project.org>\r\n"
        "Received: from evil (evil [10.0.0.1]) by mx\r\nReturn-Path: <bounce@spam.example>\r\n"
        "Delivered-To: victim@example.org\r\nX-Mailman-Version: 2.1\r\n"
    )
    assert content_features(parse_raw(leaky)).features == clean


def test_broken_mime_is_still_parsed() -> None:
    broken = (
        "From: x@example.com\r\nSubject: broken\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="never-closed"\r\n\r\n'
        "--never-closed\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        "bm90IHZhbGlk!!!base64\r\n"
    )
    parsed = parse_raw(broken)
    assert parsed.defects >= 1
    assert parsed.part_count == 1
    features = content_features(parsed).features
    assert features["mime_parse_defects"] >= 1


def test_undecodable_8bit_headers_are_flagged_not_fatal() -> None:
    raw = b"From: x@example.com\r\nSubject: caf\xe9 gratuit\r\n\r\nbody\r\n"
    parsed = parse_raw(raw)
    assert parsed.header_non_ascii
    assert parsed.subject.startswith("caf")


def test_structured_content_without_headers_keeps_absence_features_neutral() -> None:
    parsed = parse_structured(headers=None, subject="Hello", text="Just text", html=None, attachments=None)
    features = content_features(parsed).features
    assert features["message_id_missing"] == 0.0
    assert features["date_missing"] == 0.0
    assert features["to_missing"] == 0.0
