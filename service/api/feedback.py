"""Feedback routes: events as JSON, raw DSNs and ARF reports, and admin verdicts (labels)."""

from __future__ import annotations

import time
from dataclasses import asdict

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from features.fingerprint import Fingerprint
from service.api.common import ContainerDep, event_time, json_response
from service.api.feedback_schemas import FeedbackBatchIn, FeedbackIn, LabelIn
from service.api.routes import ERRORS, UNSUPPORTED_MEDIA_TYPE
from service.container import Container
from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from service.feedback.arf import arf_events
from service.feedback.bounces import bounce_class, invalid_recipient
from service.feedback.dsn import dsn_events
from service.feedback.reports import MalformedReport
from service.feedback.verdicts import apply_verdict, signatures_to_take_down
from service.lifecycle import Transition
from service.stores import AccountKey, AccountState, FeedbackEvent, FeedbackType, Label, MessageRef, Verdict

feedback = APIRouter(prefix="/v1", tags=["feedback"], responses=ERRORS)

REPORT_MEDIA_TYPES = ("message/rfc822", "message/global")


def to_event(item: FeedbackIn, container: Container, position: str = "") -> FeedbackEvent:
    detail = item.detail.model_dump(exclude_none=True)
    if item.type is FeedbackType.BOUNCE:
        detail.setdefault("bounce_class", bounce_class(item.detail.status, item.detail.smtp_code))
        detail["invalid_recipient"] = detail["bounce_class"] == "hard" and invalid_recipient(item.detail.status)
    return FeedbackEvent(
        event_id=item.event_id,
        type=item.type,
        timestamp=event_time(item.timestamp, container.settings, position),
        message_id=item.message_id,
        queue_id=item.queue_id,
        relay=item.relay,
        account=item.account,
        recipient_hash=container.scorer.hash_recipient(item.recipient) if item.recipient else None,
        detail=detail,
    )


@feedback.post("/feedback", summary="Ingest one feedback event (stored before the answer)")
async def ingest_one(item: FeedbackIn, container: ContainerDep) -> Response:
    [result] = await container.ingestor.ingest([to_event(item, container)])
    return json_response(asdict(result))


@feedback.post("/feedback/batch", summary="Ingest up to max_batch feedback events, answered per event in order")
async def ingest_batch(batch: FeedbackBatchIn, container: ContainerDep) -> Response:
    if len(batch.events) > container.settings.max_batch:
        raise PayloadTooLarge(f"batch has {len(batch.events)} events, over the limit of {container.settings.max_batch}")
    events = [to_event(item, container, f"events.{i}.") for i, item in enumerate(batch.events)]
    results = await container.ingestor.ingest(events)
    return json_response({"results": [asdict(r) for r in results]})


async def _report_body(request: Request) -> bytes:
    media_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if media_type not in REPORT_MEDIA_TYPES:
        raise UnsupportedMediaType(f"send the report as Content-Type: message/rfc822 (got {media_type or 'none'!r})")
    body = await request.body()
    if len(body) > request.app.state.container.settings.max_raw_bytes:
        raise PayloadTooLarge(f"report is {len(body)} bytes, over the limit")
    return body


async def _ingest_report(request: Request, container: Container, parse: object, relay: str | None) -> Response:
    body = await _report_body(request)
    try:
        events = parse(  # type: ignore[operator]
            body, container.scorer.hash_recipient, max_clock_skew_s=container.settings.max_clock_skew_s
        )
    except MalformedReport as exc:
        raise InvalidInput(str(exc)) from None
    for event in events:
        event.relay = relay
    results = await container.ingestor.ingest(events)
    return json_response({"events": [asdict(r) | {"type": e.type.value} for r, e in zip(results, events, strict=True)]})


@feedback.post(
    "/feedback/dsn",
    responses=UNSUPPORTED_MEDIA_TYPE,
    summary="Ingest a delivery status notification (RFC 3464), the raw message as message/rfc822",
    openapi_extra={"requestBody": {"content": {"message/rfc822": {"schema": {"type": "string"}}}}},
)
async def ingest_dsn(
    request: Request, container: ContainerDep, relay: str | None = Query(default=None, max_length=128)
) -> Response:
    return await _ingest_report(request, container, dsn_events, relay)


@feedback.post(
    "/feedback/arf",
    responses=UNSUPPORTED_MEDIA_TYPE,
    summary="Ingest an abuse report from a feedback loop (ARF, RFC 5965), the raw message as message/rfc822",
    openapi_extra={"requestBody": {"content": {"message/rfc822": {"schema": {"type": "string"}}}}},
)
async def ingest_arf(
    request: Request, container: ContainerDep, relay: str | None = Query(default=None, max_length=128)
) -> Response:
    return await _ingest_report(request, container, arf_events, relay)


@feedback.post("/labels", summary="Record an admin verdict on a message or an account (a training label)")
async def add_label(item: LabelIn, container: ContainerDep) -> Response:
    label = Label(
        target=item.target,
        label=item.label,
        actor=item.actor,
        reason=item.reason,
        timestamp=event_time(item.timestamp, container.settings),
        message_id=item.message_id,
        relay=item.relay,
        account=item.account,
    )
    ref = await container.ingestor.find(label.message_id, None, item.relay) if label.message_id else None
    if ref is not None:
        label.relay, label.account = ref.relay, ref.account
    label_id = await container.labels.add(label)
    signatures = await _verdict_signatures(container, label, ref)
    container.metrics.labels_received.labels(label.label.value).inc()
    at = time.time()
    false_lock: list[int] = []

    async def record(key: AccountKey, state: AccountState, transitions: list[Transition]) -> None:
        # A clean verdict vouches for the account's templates: the signatures its own
        # false lock taught are named in the audit log, then taken down.
        false_lock.extend(signatures_to_take_down(container.fingerprints, transitions, state.templates))
        await container.scorer.apply_transitions(key, state, transitions)

    await apply_verdict(label, container.accounts, container.scorer.policy, at, record)
    if false_lock and container.fingerprints is not None:
        removed = await container.fingerprints.remove(false_lock, label.actor, at)
        signatures["removed"] = [*signatures["removed"], *removed]
    return json_response(
        {
            "id": label_id,
            "target": label.target.value,
            "label": label.label.value,
            "relay": label.relay,
            "account": label.account,
            "matched": label.account is not None,
            "signatures": signatures,
        },
        status_code=201,
    )


async def _verdict_signatures(container: Container, label: Label, ref: MessageRef | None) -> dict[str, list[int]]:
    """A message called spam becomes a signature; one called ham takes down the signatures it matches."""
    fingerprints = container.fingerprints
    if fingerprints is None or ref is None or ref.fingerprint is None:
        return {"added": [], "removed": []}
    fingerprint = Fingerprint.from_bytes(ref.fingerprint)
    if label.label is Verdict.SPAM:
        signature_id, _ = await fingerprints.add(
            fingerprint, source="verdict", actor=label.actor, at=label.timestamp, message_id=label.message_id
        )
        return {"added": [signature_id], "removed": []}
    if label.label is Verdict.HAM:
        return {"added": [], "removed": await fingerprints.remove_matching(fingerprint, label.actor, label.timestamp)}
    return {"added": [], "removed": []}
