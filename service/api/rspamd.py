"""Rspamd-compatible HTTP: `POST /checkv2` and `GET /ping`, for Haraka's `rspamd` plugin and `rspamc`.

The request and the answer are Rspamd's (`service.adapters.rspamc` says how each field
maps). `/checkv2` needs a token with the `score` scope, like `/v1/score` (Haraka's plugin
sends one with `auth.header`/`auth.value`, rspamc with `--header`); `/ping` is open,
like `/healthz`. A message is scored and counted exactly as through `/v1/score`.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from service.adapters.rspamc import CHECKV2, answer, envelope_from_headers, message_input
from service.api.common import ContainerDep, json_response
from service.api.routes import ERRORS
from service.errors import InvalidInput, UnsupportedMediaType

rspamd_router = APIRouter(tags=["rspamd"])

CHECK_DESCRIPTION = """The raw message is the body. The envelope comes as headers: `User` (SASL login), `IP`,
`Helo`, `From`, `Rcpt` (once per recipient), `Queue-Id`, `MTA-Tag` (the relay name). The answer is
Rspamd's: `action` (`no action`, `soft reject` for defer and hold, `reject`), `score` and
`required_score` (log-odds), `symbols` (the reasons), `messages.smtp_message`,
`milter.remove_headers`, `message-id`, and outguard's own answer under `outguard`."""


@rspamd_router.post(
    "/checkv2",
    summary="Scan a message the way Rspamd does (Haraka's rspamd plugin, rspamc)",
    description=CHECK_DESCRIPTION,
    responses={**ERRORS, 415: {"description": "A compressed body (send it uncompressed)"}},
    openapi_extra={"requestBody": {"content": {"message/rfc822": {"schema": {"type": "string"}}}, "required": True}},
)
async def checkv2(request: Request, container: ContainerDep) -> Response:
    metrics, started = container.metrics, time.perf_counter()
    metrics.adapter_requests.labels(CHECKV2, "check").inc()
    try:
        headers = [(k.decode("latin-1"), v.decode("utf-8", "replace")) for k, v in request.headers.raw]
        compression = request.headers.get("compression", "").strip().lower()
        if compression not in ("", "none") or request.headers.get("content-encoding", "identity") != "identity":
            raise UnsupportedMediaType("the message is compressed; send it uncompressed (rspamc without -z)")
        envelope = envelope_from_headers(headers)
    except (InvalidInput, UnsupportedMediaType):
        metrics.adapter_errors.labels(CHECKV2, "protocol").inc()
        raise
    raw = await request.body()
    if len(raw) > container.settings.max_raw_bytes:
        metrics.adapter_errors.labels(CHECKV2, "oversize").inc()
    message = message_input(raw, envelope, container.settings, "default")
    try:
        [result] = await container.scorer.score([message])
    except Exception:
        metrics.adapter_errors.labels(CHECKV2, "scoring").inc()
        raise
    metrics.adapter_answers.labels(CHECKV2, result.action).inc()
    metrics.adapter_latency.labels(CHECKV2, "check").observe(time.perf_counter() - started)
    return json_response(answer(result, container.settings))


@rspamd_router.get("/ping", summary="Rspamd's liveness check: `pong`", response_class=PlainTextResponse)
async def ping() -> PlainTextResponse:
    return PlainTextResponse("pong\r\n")
