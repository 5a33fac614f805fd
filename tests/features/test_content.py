"""Content features on real-shaped messages: links, HTML tricks, attachments, headers."""

from __future__ import annotations

from features.content import content_features
from features.message import Attachment, parse_structured
from features.urls import parse_link, registered_domain


def features_of(**kwargs: object) -> dict[str, float]:
    fields = {"headers": None, "subject": None, "text": None, "html": None, "attachments": None, **kwargs}
    return content_features(parse_structured(**fields)).features  # type: ignore[arg-type]


def test_links_count_domains_shorteners_and_ip_literals() -> None:
    text = (
        "See https://www.example.co.uk/a and http://sub.example.co.uk/b, "
        "then http://bit.ly/3xYz and http://192.168.10.5:8080/login or http://user@evil.example/"
    )
    f = features_of(text=text)
    assert f["url_count"] == 5
    assert f["url_distinct_domains"] == 4  # example.co.uk, bit.ly, the IP, evil.example
    assert f["url_shortener_count"] == 1
    assert f["url_ip_literal_count"] == 1
    assert f["url_nonstandard_port"] == 1
    assert f["url_at_sign"] == 1


def test_link_text_that_names_another_domain_is_a_mismatch() -> None:
    html = (
        '<p>Log in at <a href="http://login.phish.example/x">www.paypal.com</a> '
        'or read <a href="https://www.paypal.com/help">our help</a></p>'
    )
    f = features_of(html=html)
    assert f["url_text_mismatch_count"] == 1
    assert f["html_only"] == 1


def test_hidden_text_forms_and_image_only_html() -> None:
    html = (
        '<html><body><img src="http://img.example/a.png"><div style="display:none">lorem ipsum bayes poison</div>'
        '<form action="http://x.example"><input name="pw"></form></body></html>'
    )
    f = features_of(html=html)
    assert f["html_hidden_text"] == 1
    assert f["html_form"] == 1
    assert f["html_image_count"] == 1


def test_dangerous_attachments() -> None:
    f = features_of(
        text="see attached",
        attachments=[
            Attachment("invoice.pdf.exe", "application/octet-stream", 20_000),
            Attachment("report.docm", "application/vnd.ms-word.document.macroEnabled.12", 10_000),
            Attachment("photo.jpg", "application/x-msdownload", 5_000),
        ],
    )
    assert f["attachment_count"] == 3
    assert f["attachment_executable"] == 1
    assert f["attachment_double_extension"] == 1
    assert f["attachment_macro_office"] == 1
    assert f["attachment_type_mismatch"] == 1


def test_reply_to_mismatch_and_display_name_spoofing() -> None:
    f = features_of(
        headers=[
            ("From", '"service@paypal.com" <random123@mailer.example>'),
            ("Reply-To", "collect@elsewhere.example"),
            ("To", "a@x.org, b@y.org"),
        ],
        text="hello",
    )
    assert f["from_display_has_address"] == 1
    assert f["reply_to_domain_mismatch"] == 1
    assert f["to_count"] == 2


def test_subject_shape() -> None:
    f = features_of(headers=[("Subject", "RE: FREE MONEY!!!")], text="x")
    assert f["subject_is_reply"] == 1
    assert f["subject_exclamation_count"] == 3
    assert f["subject_uppercase_ratio"] == 1.0


def test_registered_domain_uses_the_public_suffix_list_offline() -> None:
    assert registered_domain("a.b.example.co.uk") == "example.co.uk"
    assert registered_domain("foo.github.io") == "foo.github.io"
    assert parse_link("http://3232235777/") is not None and parse_link("http://3232235777/").is_ip
    assert parse_link("mailto:someone@example.com") is None
