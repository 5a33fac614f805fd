"""The signature database over the API, as Rspamd's fuzzy add and del: by message id or raw message.

`POST /v1/signatures` adds the content as known spam (or refreshes the entry that
already holds it) or removes every signature it matches; `GET /v1/signatures` tells
how full the database is; `GET /v1/campaigns` lists the campaigns active now.
"""

from __future__ import annotations

import base64
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from features.content import content_features
from features.fingerprint import Fingerprint
from features.message import parse_raw
from service.api.common import ContainerDep, json_response
from service.api.routes import ERRORS, NOT_FOUND, raw_size
from service.api.schemas import Base64Text, Name, Text
from service.container import Container
from service.errors import InvalidInput, NotFound, PayloadTooLarge
from service.fingerprints.service import FingerprintService

# Every route answers 404 while content fingerprints are switched off.
signatures_router = APIRouter(prefix="/v1", tags=["signatures"], responses={**ERRORS, **NOT_FOUND})


class SignatureIn(BaseModel):
    """Content to add to or remove from the known-spam signatures: a scored message's id, or a raw message."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {"action": "add", "message_id": "<abc@mail.example.net>", "actor": "abuse-desk", "note": "FBL"}
        },
    )

    action: Literal["add", "remove"] = "add"
    message_id: Annotated[Name, StringConstraints(min_length=1, max_length=998)] | None = None
    relay: Annotated[Name, StringConstraints(min_length=1, max_length=128)] | None = Field(
        default=None, description="Prefer the copy scored through this relay"
    )
    raw: Text | None = Field(default=None, description="A whole RFC 5322 message, as text")
    raw_base64: Base64Text | None = Field(default=None, description="A whole RFC 5322 message, base64 of its bytes")
    actor: Annotated[Name, StringConstraints(min_length=1, max_length=256)]
    note: Annotated[Name, StringConstraints(max_length=2000)] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SignatureIn:
        given = [name for name in ("message_id", "raw", "raw_base64") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of `message_id`, `raw` or `raw_base64` (got {given or 'none'})")
        return self


def _service(container: Container) -> FingerprintService:
    if container.fingerprints is None:
        raise NotFound("content fingerprints are switched off (OUTGUARD_FINGERPRINTS=false)")
    return container.fingerprints


async def _fingerprint_of(item: SignatureIn, container: Container, service: FingerprintService) -> Fingerprint:
    if item.message_id is not None:
        ref = await container.ingestor.find(item.message_id, None, item.relay)
        if ref is None:
            raise NotFound(f"no scored message with Message-ID {item.message_id!r}; send the raw message instead")
        if ref.fingerprint is None:
            raise InvalidInput(f"message {item.message_id!r} had too little text to fingerprint")
        return Fingerprint.from_bytes(ref.fingerprint)
    # The same size rule and parser as scoring (`Text` has already replaced lone surrogates).
    raw: str | bytes = item.raw if item.raw is not None else base64.b64decode(item.raw_base64 or "")
    size = raw_size(raw) if isinstance(raw, str) else len(raw)
    if size > container.settings.max_raw_bytes:
        raise PayloadTooLarge(f"raw is {size} bytes, over the limit of {container.settings.max_raw_bytes} bytes")
    fingerprint = service.fingerprinter.fingerprint(content_features(parse_raw(raw)).document)
    if fingerprint is None:
        raise InvalidInput("the message has too little text to fingerprint (fewer than 8 words)")
    return fingerprint


@signatures_router.post("/signatures", summary="Add content to the known-spam signatures, or remove it")
async def change_signatures(item: SignatureIn, container: ContainerDep) -> Response:
    service = _service(container)
    fingerprint = await _fingerprint_of(item, container, service)
    now = time.time()
    if item.action == "add":
        signature_id, created = await service.add(
            fingerprint, source="admin", actor=item.actor, at=now, message_id=item.message_id, note=item.note
        )
        body = {"action": "add", "signature_ids": [signature_id], "created": created}
        return json_response(body, status_code=201 if created else 200)
    removed = await service.remove_matching(fingerprint, item.actor, now)
    return json_response({"action": "remove", "signature_ids": removed, "removed": len(removed)})


@signatures_router.get("/signatures", summary="How full the signature database is")
async def signature_stats(container: ContainerDep) -> Response:
    return json_response(await _service(container).stats(time.time()))


@signatures_router.get("/campaigns", summary="Campaigns active now: one content leaving many accounts")
async def active_campaigns(
    container: ContainerDep,
    at: Annotated[float | None, Query(allow_inf_nan=False, description="Unix seconds (default: now)")] = None,
) -> Response:
    service = _service(container)
    now = time.time() if at is None else at
    campaigns = [
        {
            "campaign_id": c.cluster_id,
            "first_seen": c.first_seen,
            "active_until": c.active_until,
            "accounts": [{"relay": k.relay, "account": k.account} for k in c.senders],
            "mean_spam_probability": round(c.mean_probability, 4),
            "messages_scored": c.probability_count,
        }
        for c in await service.active_campaigns(now)
    ]
    return json_response({"campaigns": campaigns})
