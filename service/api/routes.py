"""HTTP routes: scoring, and the operational endpoints (health, readiness, metrics)."""

from __future__ import annotations

import base64
from datetime import datetime

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from features.message import Attachment
from service.api.common import ContainerDep, OrjsonRoute, event_time, json_response
from service.api.schemas import BatchIn, BatchOut, ErrorOut, MessageIn, ScoreOut
from service.errors import NotReady, PayloadTooLarge
from service.scoring import MessageInput, ScoreResult
from service.settings import Settings

ERRORS = {
    400: {"model": ErrorOut, "description": "Malformed JSON"},
    401: {"model": ErrorOut, "description": "Missing or unknown token"},
    403: {"model": ErrorOut, "description": "Token lacks the scope"},
    413: {"model": ErrorOut, "description": "Request body, message content, a count or the batch over its limit"},
    422: {"model": ErrorOut, "description": "A field is missing or invalid"},
    503: {"model": ErrorOut, "description": "The database (or Redis, failing closed) is unavailable: retry later"},
}
# Added where a route answers them.
NOT_FOUND = {404: {"model": ErrorOut, "description": "No such thing, or the feature is switched off"}}
UNSUPPORTED_MEDIA_TYPE = {415: {"model": ErrorOut, "description": "The body's Content-Type is not the one asked for"}}

scoring = APIRouter(prefix="/v1", tags=["scoring"], responses=ERRORS, route_class=OrjsonRoute)
operations = APIRouter(tags=["operations"])


def raw_size(raw: str) -> int:
    """Size in bytes as UTF-8; cheap for the usual ASCII message."""
    return len(raw) if raw.isascii() else len(raw.encode("utf-8", "surrogatepass"))


def structured_size(message: MessageIn) -> int:
    """Bytes (as UTF-8) of the structured content: subject, text, html, header names and values, attachment names."""
    parts = [message.subject or "", message.text or "", message.html or ""]
    parts += [part for header in message.headers or () for part in header]
    parts += [part for a in message.attachments or () for part in (a.filename, a.content_type)]
    return sum(raw_size(part) for part in parts)


def checked_content(message: MessageIn, limits: Settings, position: str = "") -> str | bytes | None:
    """The raw message if there is one; 413 when the content, in either form, is over the limits."""
    raw: str | bytes | None = message.raw
    if message.raw_base64 is not None:
        raw = base64.b64decode(message.raw_base64)
    size = raw_size(raw) if isinstance(raw, str) else len(raw or b"")
    if size > limits.max_raw_bytes:
        raise PayloadTooLarge(f"{position}raw is {size} bytes, over the limit of {limits.max_raw_bytes} bytes")
    for name, items, limit in (
        ("headers", message.headers, limits.max_headers),
        ("attachments", message.attachments, limits.max_attachments),
    ):
        if items is not None and len(items) > limit:
            raise PayloadTooLarge(f"{position}{name} has {len(items)} entries, over the limit of {limit}")
    if raw is None and (size := structured_size(message)) > limits.max_raw_bytes:
        raise PayloadTooLarge(
            f"{position}subject, text, html, headers and attachment names are {size} bytes together, "
            f"over the limit of {limits.max_raw_bytes} bytes"
        )
    return raw


def to_input(message: MessageIn, limits: Settings, position: str = "", now: datetime | None = None) -> MessageInput:
    raw = checked_content(message, limits, position)
    if len(message.recipients) > limits.max_recipients:
        raise PayloadTooLarge(
            f"{position}recipients has {len(message.recipients)} entries, over the limit of {limits.max_recipients}"
        )
    return MessageInput(
        message_id=message.message_id,
        timestamp=event_time(message.timestamp, limits, position, now),
        relay=message.relay,
        account=message.account,
        sasl_username=message.sasl_username,
        client_ip=message.client_ip,
        helo=message.helo,
        envelope_from=message.envelope_from,
        queue_id=message.queue_id,
        recipients=message.recipients,
        raw=raw,
        headers=message.headers,
        subject=message.subject,
        text=message.text,
        html=message.html,
        attachments=[Attachment(a.filename, a.content_type, a.size) for a in message.attachments]
        if message.attachments is not None
        else None,
    )


def to_json(result: ScoreResult) -> dict[str, object]:
    return {
        "message_id": result.message_id,
        "account": result.account,
        "identity_source": result.identity_source,
        "spam_probability": result.spam_probability,
        "account_risk": result.account_risk,
        "action": result.action,
        "lock_recommended": result.lock_recommended,
        "account_locked": result.account_locked,
        "reasons": [
            {"name": r.name, "value": r.value, "contribution": r.contribution, "description": r.description}
            for r in result.reasons
        ],
        "model_version": result.model_version,
        "strip_headers": list(result.strip_headers),
        "identity_conflict": result.identity_conflict.as_dict() if result.identity_conflict else None,
        "smtp_reply": result.smtp_reply.line if result.smtp_reply is not None else None,
    }


# Hot routes answer with orjson bytes directly: the response model documents them,
# but building and re-validating pydantic models per message would only cost time.
@scoring.post("/score", response_model=ScoreOut, summary="Score one outgoing message")
async def score(message: MessageIn, container: ContainerDep) -> Response:
    [result] = await container.scorer.score([to_input(message, container.settings)])
    return json_response(to_json(result))


@scoring.post("/score/batch", response_model=BatchOut, summary="Score up to max_batch messages, answered in order")
async def score_batch(batch: BatchIn, container: ContainerDep) -> Response:
    if len(batch.messages) > container.settings.max_batch:
        raise PayloadTooLarge(
            f"batch has {len(batch.messages)} messages, over the limit of {container.settings.max_batch}"
        )
    inputs = [to_input(m, container.settings, f"messages.{i}.") for i, m in enumerate(batch.messages)]
    results = await container.scorer.score(inputs)
    return json_response({"results": [to_json(r) for r in results]})


@operations.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@operations.get(
    "/readyz",
    summary="Model loaded and storage reachable",
    responses={503: {"description": "Not ready: the failing checks", "content": {"application/json": {}}}},
)
async def readyz(container: ContainerDep, response: Response) -> dict[str, object]:
    checks = {"model": container.model.current is not None, "event_log": await container.events.ping()}
    detail: dict[str, object] = {}
    if container.shared is not None:  # with Redis down, scoring may go on degraded, but this replica is not well
        checks["shared_state"] = await container.shared.check()  # no wait while its breaker is open
        detail["shared_state"] = container.shared.describe()
    if container.scanner is not None:  # detail only: with clamd down, scoring fails open (or defers), never unready
        detail["malware_scanner"] = await container.scanner.describe()
    if not all(checks.values()):
        failing = ", ".join(name for name, ok in checks.items() if not ok)
        response.status_code = NotReady.status  # the usual error shape, with the checks and the breaker's state
        return {"error": NotReady.code, "detail": f"not ready: {failing}", "checks": checks, **detail}
    return {"status": "ready", "model_version": container.model.current.version, "checks": checks, **detail}


@operations.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(container: ContainerDep) -> Response:
    container.metrics.event_queue_depth.set(container.events.queue_depth)
    return Response(generate_latest(container.metrics.registry), media_type=CONTENT_TYPE_LATEST)
