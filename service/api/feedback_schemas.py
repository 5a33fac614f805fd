"""Feedback and label bodies at the HTTP edge."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from service.api.schemas import Name, ShortText
from service.stores import FeedbackType, LabelTarget, Verdict

Status = Annotated[str, StringConstraints(pattern=r"^[245]\.\d{1,3}\.\d{1,3}$")]


class FeedbackDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bounce_class: Literal["hard", "soft"] | None = None
    smtp_code: int | None = Field(default=None, ge=200, le=599)
    status: Status | None = Field(default=None, description="Enhanced status code (RFC 3463), e.g. 5.1.1")
    source: ShortText | None = Field(default=None, description="Who reported it: a feedback loop, an ESP webhook...")


class FeedbackIn(BaseModel):
    """One thing that happened to a sent message, for one recipient."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "event_id": "esp-7d1c2a",
                "type": "bounce",
                "message_id": "<20261123.1234@mail.example.net>",
                "recipient": "nobody@example.org",
                "timestamp": "2026-11-23T10:16:00Z",
                "detail": {"bounce_class": "hard", "smtp_code": 550, "status": "5.1.1"},
            }
        },
    )

    event_id: Annotated[Name, StringConstraints(min_length=1, max_length=256)] = Field(
        description="Idempotency key: the same id twice counts once"
    )
    type: FeedbackType
    message_id: ShortText | None = Field(default=None, description="The scored message this is about")
    queue_id: ShortText | None = None
    relay: ShortText | None = Field(default=None, description="Prefer the message scored on this relay")
    account: ShortText | None = Field(default=None, description="For messages this service never scored")
    recipient: ShortText | None = Field(default=None, description="Stored only as a keyed hash")
    timestamp: datetime | None = None
    detail: FeedbackDetail = Field(default_factory=FeedbackDetail)

    @model_validator(mode="after")
    def _attributable(self) -> FeedbackIn:
        if not (self.message_id or self.queue_id or self.account):
            raise ValueError("name the message (`message_id` or `queue_id`) or the `account` it is about")
        return self


class FeedbackBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[FeedbackIn] = Field(min_length=1)


class LabelIn(BaseModel):
    """An admin verdict: on a message (spam/ham) or on an account (compromised/clean)."""

    model_config = ConfigDict(extra="forbid")

    target: LabelTarget
    label: Verdict
    message_id: ShortText | None = None
    relay: ShortText = "default"
    account: ShortText | None = None
    actor: Annotated[Name, StringConstraints(min_length=1, max_length=256)]
    reason: Annotated[Name, StringConstraints(max_length=2000)] = ""
    timestamp: datetime | None = None

    @model_validator(mode="after")
    def _fits_target(self) -> LabelIn:
        if self.target is LabelTarget.MESSAGE:
            if self.label not in (Verdict.SPAM, Verdict.HAM):
                raise ValueError("a message is labelled `spam` or `ham`")
            if not self.message_id:
                raise ValueError("a message label needs `message_id`")
        else:
            if self.label not in (Verdict.COMPROMISED, Verdict.CLEAN):
                raise ValueError("an account is labelled `compromised` or `clean`")
            if not self.account:
                raise ValueError("an account label needs `account` (and `relay`, default `default`)")
        return self
