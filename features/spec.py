"""The versioned feature spec: every feature the model may see, in vector order.

Serving and training build the same vector from the same code (`features.vector`);
this module is the contract between them. A model bundle records the spec version
it was trained on and is refused by a service running another one.

Bump ``FEATURE_SPEC_VERSION`` whenever a feature is added, removed, reordered or
changes meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

FEATURE_SPEC_VERSION = "3"


class Group(StrEnum):
    TEXT = "text"
    SUBJECT = "subject"
    HEADERS = "headers"
    URLS = "urls"
    HTML = "html"
    MIME = "mime"
    BEHAVIOUR = "behaviour"
    ENGAGEMENT = "engagement"
    FINGERPRINT = "fingerprint"


class Kind(StrEnum):
    FLOAT = "float"
    COUNT = "count"
    BOOL = "bool"
    RATIO = "ratio"


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    kind: Kind
    group: Group
    description: str
    neutral: float = 0.0  # the value used when the signal is unknown


_F, _C, _B, _R = Kind.FLOAT, Kind.COUNT, Kind.BOOL, Kind.RATIO

FEATURES: tuple[Feature, ...] = (
    # -- text: the hashed n-gram text model and plain statistics of the visible text
    Feature("text_model_score", _F, Group.TEXT, "Spam log-odds from the hashed word and character n-gram text model"),
    Feature("text_length_log", _F, Group.TEXT, "log1p of the number of characters of visible body text"),
    Feature("text_words_log", _F, Group.TEXT, "log1p of the number of words in the body"),
    Feature("text_uppercase_ratio", _R, Group.TEXT, "Share of letters in the body that are upper case"),
    Feature("text_digit_ratio", _R, Group.TEXT, "Share of body characters that are digits"),
    Feature("text_non_ascii_ratio", _R, Group.TEXT, "Share of body characters outside ASCII"),
    Feature("text_exclamation_count", _C, Group.TEXT, "Number of '!' in the body"),
    Feature("text_currency_count", _C, Group.TEXT, "Number of currency symbols ($, EUR, GBP...) in the body"),
    Feature("text_unique_word_ratio", _R, Group.TEXT, "Distinct words over all words in the body"),
    Feature("text_longest_word", _C, Group.TEXT, "Length of the longest whitespace-separated token in the body"),
    Feature("text_empty", _B, Group.TEXT, "The message has no visible body text"),
    # -- subject
    Feature("subject_length", _C, Group.SUBJECT, "Characters in the Subject"),
    Feature("subject_uppercase_ratio", _R, Group.SUBJECT, "Share of Subject letters that are upper case"),
    Feature("subject_exclamation_count", _C, Group.SUBJECT, "Number of '!' in the Subject"),
    Feature("subject_digit_ratio", _R, Group.SUBJECT, "Share of Subject characters that are digits"),
    Feature("subject_non_ascii_ratio", _R, Group.SUBJECT, "Share of Subject characters outside ASCII"),
    Feature("subject_is_reply", _B, Group.SUBJECT, "Subject starts with Re:/Fw:/Fwd:/AW:/SV:"),
    Feature("subject_encoded", _B, Group.SUBJECT, "Subject uses RFC 2047 encoded words"),
    Feature("subject_missing", _B, Group.SUBJECT, "No Subject header, or an empty one"),
    # -- headers the sender controls (never the receiving side's: see features.message)
    Feature("from_missing", _B, Group.HEADERS, "No parseable From address"),
    Feature(
        "from_display_has_address", _B, Group.HEADERS, "From display name contains an address other than the sender's"
    ),
    Feature("reply_to_present", _B, Group.HEADERS, "A Reply-To header is present"),
    Feature("reply_to_domain_mismatch", _B, Group.HEADERS, "Reply-To domain differs from the From domain"),
    Feature(
        "envelope_from_mismatch",
        _B,
        Group.HEADERS,
        "Envelope sender domain differs from the From domain (neutral when unknown)",
    ),
    Feature("to_count", _C, Group.HEADERS, "Addresses in To"),
    Feature("cc_count", _C, Group.HEADERS, "Addresses in Cc"),
    Feature("to_missing", _B, Group.HEADERS, "No To header (undisclosed recipients or Bcc-only)"),
    Feature("message_id_missing", _B, Group.HEADERS, "No Message-ID header"),
    Feature("message_id_domain_mismatch", _B, Group.HEADERS, "Message-ID domain differs from the From domain"),
    Feature(
        "message_id_random_ratio", _R, Group.HEADERS, "Share of digits and upper case in the Message-ID local part"
    ),
    Feature("date_missing", _B, Group.HEADERS, "No Date header"),
    Feature("date_invalid", _B, Group.HEADERS, "Date header present but not RFC 5322 parseable"),
    Feature("mailer_present", _B, Group.HEADERS, "X-Mailer or User-Agent header present"),
    Feature("mime_version_missing", _B, Group.HEADERS, "MIME content without a MIME-Version header"),
    Feature("header_count", _C, Group.HEADERS, "Sender-controlled header fields present"),
    Feature("header_non_ascii", _B, Group.HEADERS, "Raw 8-bit bytes in a header value (not RFC 2047 encoded)"),
    # -- urls in text and html
    Feature("url_count", _C, Group.URLS, "Links in the body (text and html)"),
    Feature("url_distinct_domains", _C, Group.URLS, "Distinct registered domains linked"),
    Feature("url_shortener_count", _C, Group.URLS, "Links through a URL shortener"),
    Feature("url_ip_literal_count", _C, Group.URLS, "Links whose host is an IP address"),
    Feature(
        "url_text_mismatch_count", _C, Group.URLS, "HTML links whose visible text names another domain than the target"
    ),
    Feature("url_from_domain_share", _R, Group.URLS, "Share of links pointing at the From domain"),
    Feature("url_max_length", _C, Group.URLS, "Length of the longest link"),
    Feature("url_nonstandard_port", _B, Group.URLS, "A link carries an explicit non-standard port"),
    Feature("url_at_sign", _B, Group.URLS, "A link hides its host behind user-info ('@')"),
    Feature("url_punycode", _B, Group.URLS, "A link host is punycode (xn--)"),
    # -- html shape
    Feature("html_present", _B, Group.HTML, "The message has an HTML part"),
    Feature("html_only", _B, Group.HTML, "HTML without a text/plain alternative"),
    Feature("html_to_text_ratio", _F, Group.HTML, "log1p of HTML markup characters per visible character"),
    Feature("html_image_count", _C, Group.HTML, "<img> tags"),
    Feature("html_form", _B, Group.HTML, "The HTML contains a form"),
    Feature("html_script", _B, Group.HTML, "The HTML contains script"),
    Feature("html_hidden_text", _B, Group.HTML, "Text hidden with display:none, visibility:hidden or tiny fonts"),
    Feature("html_text_ratio_low", _B, Group.HTML, "HTML with almost no visible text (image-only mail)"),
    # -- mime structure and attachments
    Feature("mime_part_count", _C, Group.MIME, "Leaf MIME parts"),
    Feature("mime_depth", _C, Group.MIME, "Nesting depth of multipart containers"),
    Feature("mime_parse_defects", _C, Group.MIME, "Defects the MIME parser recovered from"),
    Feature("attachment_count", _C, Group.MIME, "Attachments"),
    Feature("attachment_size_log", _F, Group.MIME, "log1p of the total attachment size in bytes"),
    Feature("attachment_executable", _B, Group.MIME, "An attachment is executable or script (.exe, .js, .scr, ...)"),
    Feature("attachment_archive", _B, Group.MIME, "An attachment is an archive (.zip, .rar, .7z, ...)"),
    Feature("attachment_macro_office", _B, Group.MIME, "An attachment is a macro-enabled Office document"),
    Feature(
        "attachment_double_extension", _B, Group.MIME, "An attachment name has a double extension (invoice.pdf.exe)"
    ),
    Feature("attachment_type_mismatch", _B, Group.MIME, "An attachment's declared type disagrees with its extension"),
    # -- per-account behaviour over rolling windows (the current message included)
    Feature("acct_msgs_1m", _C, Group.BEHAVIOUR, "Messages from the account in the last minute"),
    Feature("acct_msgs_1h", _C, Group.BEHAVIOUR, "Messages from the account in the last hour"),
    Feature("acct_msgs_24h", _C, Group.BEHAVIOUR, "Messages from the account in the last 24 hours"),
    Feature("acct_rcpts_1m", _C, Group.BEHAVIOUR, "Recipients addressed by the account in the last minute"),
    Feature("acct_rcpts_1h", _C, Group.BEHAVIOUR, "Recipients addressed by the account in the last hour"),
    Feature("acct_rcpts_24h", _C, Group.BEHAVIOUR, "Recipients addressed by the account in the last 24 hours"),
    Feature(
        "acct_rate_vs_baseline",
        _F,
        Group.BEHAVIOUR,
        "log of the last hour's message rate over the account's own long-run hourly rate",
        neutral=0.0,
    ),
    Feature("acct_history_hours", _F, Group.BEHAVIOUR, "log1p of the hours since the account was first seen"),
    Feature("acct_rcpt_domains_1h", _C, Group.BEHAVIOUR, "Distinct recipient domains in the last hour"),
    Feature("acct_client_ips_1h", _C, Group.BEHAVIOUR, "Distinct client IPs in the last hour"),
    Feature("acct_client_ips_24h", _C, Group.BEHAVIOUR, "Distinct client IPs in the last 24 hours"),
    Feature(
        "acct_new_rcpt_domain_share",
        _R,
        Group.BEHAVIOUR,
        "Share of this message's recipient domains the account never sent to before",
    ),
    Feature("msg_recipient_count", _C, Group.BEHAVIOUR, "Envelope recipients of this message"),
    # -- recipient engagement, decayed over days; rates are smoothed towards a prior so
    # that an account with 2 recipients is not judged like one with 2,000 (the
    # `eng_*_log` counts say how much is behind them). Neutral = the prior.
    Feature("eng_hard_bounce_rate", _R, Group.ENGAGEMENT, "Smoothed share of recipients that hard-bounced", 0.01),
    Feature(
        "eng_invalid_recipient_rate",
        _R,
        Group.ENGAGEMENT,
        "Smoothed share of recipients that do not exist (5.1.x)",
        0.005,
    ),
    Feature("eng_complaint_rate", _R, Group.ENGAGEMENT, "Smoothed share of recipients that complained", 0.0005),
    Feature("eng_reply_rate", _R, Group.ENGAGEMENT, "Smoothed share of recipients that replied", 0.02),
    Feature("eng_open_rate", _R, Group.ENGAGEMENT, "Smoothed share of recipients that opened", 0.2),
    Feature("eng_click_rate", _R, Group.ENGAGEMENT, "Smoothed share of recipients that clicked", 0.02),
    Feature("eng_recipients_log", _F, Group.ENGAGEMENT, "log1p of the decayed recipients behind the rates"),
    Feature("eng_feedback_log", _F, Group.ENGAGEMENT, "log1p of the decayed feedback events received"),
    # -- content fingerprints: the nearest known-spam signature, and the same content
    # leaving other accounts (`features.fingerprint`, `service.fingerprints`)
    Feature("sig_similarity", _R, Group.FINGERPRINT, "Similarity to the nearest known-spam signature (0: no match)"),
    Feature(
        "sig_age_days_log",
        _F,
        Group.FINGERPRINT,
        "log1p of the days since the matched signature was added (-1: no match)",
        neutral=-1.0,
    ),
    Feature("sig_hits_log", _F, Group.FINGERPRINT, "log1p of the times the matched signature matched mail before"),
    Feature(
        "campaign_accounts_log",
        _F,
        Group.FINGERPRINT,
        "log1p of the other accounts that sent this content in the last hour",
    ),
)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
FEATURE_INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURE_NAMES)}
BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}

CONTENT_GROUPS = frozenset({Group.TEXT, Group.SUBJECT, Group.HEADERS, Group.URLS, Group.HTML, Group.MIME})
CONTENT_FEATURES: tuple[str, ...] = tuple(f.name for f in FEATURES if f.group in CONTENT_GROUPS)

assert len(FEATURE_INDEX) == len(FEATURES), "duplicate feature names in the spec"


def spec_as_dicts() -> list[dict[str, str | float]]:
    """The spec in a form for JSON, the model card and the docs."""
    return [
        {
            "name": f.name,
            "kind": f.kind.value,
            "group": f.group.value,
            "description": f.description,
            "neutral": f.neutral,
        }
        for f in FEATURES
    ]
