"""Request and response bodies at the HTTP edge (pydantic). Inside, plain dataclasses."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from ipaddress import ip_address
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator


def _no_lone_surrogates(value: str) -> str:
    """JSON may carry lone UTF-16 surrogates (\\ud800); they cannot be encoded, so they become U+FFFD."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def storable(value: str) -> str:
    """A name, id or note the service stores and looks up as given: U+0000 and lone surrogates are refused.

    PostgreSQL text cannot hold U+0000, and a lone surrogate (JSON's `\\ud800`) is no
    character at all: neither can be stored, encoded as UTF-8 or answered as JSON.
    Refused here, with the field named, rather than stored under another name.
    """
    if "\x00" in value:
        raise ValueError("contains U+0000 (NUL), which cannot be stored; remove it")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"contains a lone surrogate (U+{ord(value[exc.start]):04X}), which is not a character; "
                "send the text as valid Unicode"
            ) from None
    return value


# Content (the message's text): scored as given, lone surrogates replaced so it can be encoded.
Text = Annotated[str, AfterValidator(_no_lone_surrogates)]
# Names, ids and notes: stored and looked up as given, so what cannot be stored is refused (422).
Name = Annotated[str, AfterValidator(storable)]
ShortText = Annotated[Name, StringConstraints(max_length=998)]
Relay = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$")]
# The most headers or attachments a message may list whatever the settings say (their
# OUTGUARD_MAX_HEADERS and OUTGUARD_MAX_ATTACHMENTS go up to it): checked before the items
# are validated, so a body of half a million attachments costs nothing. A batch may list
# MAX_BATCH_LIST of them in all its messages together, or one request of a thousand
# messages at the limit would stall the event loop for half a minute of validation.
MAX_LIST = 10_000
MAX_BATCH_LIST = 100_000


def _valid_base64(value: str) -> str:
    try:
        base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not valid base64: {exc}") from None
    return value


Base64Text = Annotated[str, AfterValidator(_valid_base64)]


class AttachmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: Annotated[Text, StringConstraints(max_length=1024)] = ""
    content_type: Annotated[Text, StringConstraints(max_length=255)] = "application/octet-stream"
    size: int = Field(default=0, ge=0, description="Bytes")


class MessageIn(BaseModel):
    """One outgoing message: metadata, and content as `raw` or as structured fields (not both)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "message_id": "<20261123.1234@mail.example.net>",
                "timestamp": "2026-11-23T10:15:00Z",
                "relay": "smtp-out-1",
                "sasl_username": "alice@example.net",
                "client_ip": "203.0.113.7",
                "envelope_from": "alice@example.net",
                "recipients": ["bob@example.org"],
                "raw": "From: Alice <alice@example.net>\r\nTo: bob@example.org\r\n"
                "Subject: lunch\r\n\r\nTomorrow at 1?\r\n",
            }
        },
    )

    message_id: Annotated[Name, StringConstraints(min_length=1, max_length=998)]
    timestamp: datetime | None = Field(default=None, description="RFC 3339; default now. Windows use it.")
    relay: Relay = "default"
    account: ShortText | None = None
    sasl_username: ShortText | None = None
    client_ip: str | None = None
    helo: ShortText | None = None
    envelope_from: ShortText | None = None
    queue_id: ShortText | None = Field(default=None, description="The relay's queue id, to match bounces by")
    recipients: list[ShortText] = Field(default_factory=list)
    raw: Text | None = Field(default=None, description="The whole RFC 5322 message, as text")
    raw_base64: Base64Text | None = Field(
        default=None, description="The whole RFC 5322 message, base64 of its bytes: exact for 8-bit mail"
    )
    headers: list[tuple[Text, Text]] | None = Field(
        default=None, max_length=MAX_LIST, description="`[name, value]` pairs, at most OUTGUARD_MAX_HEADERS"
    )
    subject: Text | None = None
    text: Text | None = None
    html: Text | None = None
    attachments: list[AttachmentIn] | None = Field(
        default=None, max_length=MAX_LIST, description="At most OUTGUARD_MAX_ATTACHMENTS"
    )

    @field_validator("client_ip")
    @classmethod
    def _valid_ip(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        try:
            return str(ip_address(value.strip().strip("[]")))
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None

    @field_validator("timestamp")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value

    @model_validator(mode="after")
    def _one_content_shape(self) -> MessageIn:
        structured = [
            name for name in ("headers", "subject", "text", "html", "attachments") if getattr(self, name) is not None
        ]
        if self.raw is not None and self.raw_base64 is not None:
            raise ValueError("give `raw` or `raw_base64`, not both")
        if (self.raw is not None or self.raw_base64 is not None) and structured:
            raise ValueError(
                f"give the content either as `raw` or as structured fields, not both (got raw and {structured})"
            )
        return self


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[MessageIn] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _few_enough_parts(cls, data: object) -> object:
        """Counted before any message is validated: a len() per list, not a validation per item."""
        messages = data.get("messages") if isinstance(data, dict) else None
        if isinstance(messages, list):
            parts = sum(
                len(value)
                for message in messages
                if isinstance(message, dict)
                for value in (message.get("headers"), message.get("attachments"))
                if isinstance(value, list)
            )
            if parts > MAX_BATCH_LIST:
                raise ValueError(
                    f"the messages list {parts} headers and attachments together, more than the {MAX_BATCH_LIST} "
                    "a batch may carry; send fewer messages per batch"
                )
        return data


class ReasonOut(BaseModel):
    name: str
    value: float
    contribution: float = Field(description="Push towards spam in log-odds (TreeSHAP); negative pulls towards ham")
    description: str


class IdentityConflictOut(BaseModel):
    rule: str = Field(description="The identity rule that matched")
    header: str = Field(description="The header it read")
    claimed: str = Field(description="The login the header named (at most 256 characters)")


class ScoreOut(BaseModel):
    message_id: str
    account: str
    identity_source: str
    spam_probability: float | None = Field(description="Calibrated, 0..1; null when the account is locked")
    account_risk: float
    action: str = Field(description="accept | defer | hold | reject")
    lock_recommended: bool
    account_locked: bool
    reasons: list[ReasonOut]
    model_version: str
    strip_headers: list[str] = Field(description="Headers the relay should remove: an identity rule used them")
    identity_conflict: IdentityConflictOut | None = Field(
        default=None,
        description="A header the sender can write named another login than the SASL user (null when none did); "
        "the SASL user is the account regardless",
    )
    smtp_reply: str | None = Field(
        default=None,
        description="The SMTP reply for the action, from the relay's reply texts: null for accept, "
        "`451 4.7.1 ...` for defer (and for hold where the relay cannot quarantine), `550 5.7.1 ...` for reject. "
        "No scores in it unless the relay's policy sets reply_reveal_scores",
        examples=[
            "550 5.7.1 Account alice@example.net is locked: suspected compromise (incident 8f2c41d0). Contact support."
        ],
    )


class BatchOut(BaseModel):
    results: list[ScoreOut]


class ErrorOut(BaseModel):
    error: str
    detail: str | list[dict[str, object]]
