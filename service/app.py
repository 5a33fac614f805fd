"""The app factory: `create_app(settings)` wires stores, model and routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.adapters.milter import MilterServer
from service.adapters.policy import PolicyServer
from service.adapters.rspamc import RspamcServer
from service.api.accounts import accounts_router
from service.api.audit import audit_router
from service.api.auth import TokenAuth, TokenAuthMiddleware, relay_guard
from service.api.bulk import bulk_router
from service.api.feedback import feedback
from service.api.identity_rules import rules_router
from service.api.models import models_router
from service.api.reports import reports_router
from service.api.routes import operations, scoring
from service.api.rspamd import rspamd_router
from service.api.signatures import signatures_router
from service.api.webhooks import webhooks_router
from service.container import build_container
from service.dashboard.routes import STATIC, dashboard_router
from service.errors import PayloadTooLarge, install_error_handlers, send_error
from service.maintenance import Chores
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)

# Routes measured under their own label; anything else is "other" (bounded cardinality).
KNOWN_ROUTES = frozenset(
    {
        "/v1/score",
        "/v1/score/batch",
        "/v1/feedback",
        "/v1/feedback/batch",
        "/v1/feedback/dsn",
        "/v1/feedback/arf",
        "/v1/labels",
        "/healthz",
        "/readyz",
        "/metrics",
        "/checkv2",
        "/ping",
    }
)


class RequestMetrics:
    """Pure ASGI middleware: request counts and latency per route."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in KNOWN_ROUTES else "other"
        status = 500
        started = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()


class BodySizeLimit:
    """Pure ASGI middleware: refuse request bodies over `limit` bytes with a 413, before they fill memory.

    A declared Content-Length is checked up front. A chunked body (no length) is read
    here up to the limit and then replayed to the app, which reads whole JSON bodies anyway.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.limit:
                await self._refuse(send, int(declared))
                return
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self._refuse(send, size)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, size: int) -> None:
        detail = f"request body of {size} bytes or more is over the limit of {self.limit} bytes"
        await send_error(send, PayloadTooLarge(detail))


def create_app(settings: Settings) -> FastAPI:
    container = build_container(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        container.dispatcher.start()
        chores = Chores(container)
        chores.start()
        # The MTA protocols served besides HTTP (docs/relay-integration.md), on the same scorer.
        listeners: list[RspamcServer | PolicyServer | MilterServer] = []
        for listen, server in (
            (settings.rspamc_listen, RspamcServer),
            (settings.policy_listen, PolicyServer),
            (settings.milter_listen, MilterServer),
        ):
            if listen:
                listeners.append(server(container))
                await listeners[-1].start(listen)
        app.state.listeners = listeners
        poller = None
        if settings.model_source == "registry" and settings.model_poll_s > 0:
            poller = asyncio.create_task(container.models.poll(container.model, settings.model_poll_s))
        log.info("outguard ready: model %s", container.model.current.version)
        try:
            yield
        finally:
            for listener in listeners:
                await listener.close()
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            await chores.stop()
            await container.dispatcher.stop()
            await container.aclose()
            container.close()

    app = FastAPI(
        title="outguard",
        version="0.1.0",
        summary="Outbound-spam scoring: a calibrated spam probability, an action and reasons per outgoing message.",
        lifespan=lifespan,
        dependencies=[Depends(relay_guard)],  # a token limited to some relays: refused the others (service.api.auth)
    )
    app.state.container = container
    install_error_handlers(app)
    app.include_router(scoring)
    app.include_router(rspamd_router)
    app.include_router(feedback)
    app.include_router(rules_router)
    app.include_router(bulk_router)  # before accounts_router: /{relay}/bulk/{id} is not an account's name
    app.include_router(accounts_router)
    app.include_router(audit_router)
    app.include_router(webhooks_router)
    app.include_router(signatures_router)
    app.include_router(models_router)
    app.include_router(reports_router)
    app.include_router(dashboard_router)
    app.mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static")
    app.include_router(operations)
    # Outermost last: metrics see every answer, auth runs before the body is read.
    app.add_middleware(BodySizeLimit, limit=settings.max_request_bytes)
    app.add_middleware(TokenAuthMiddleware, auth=TokenAuth(settings))
    app.add_middleware(RequestMetrics, metrics=container.metrics)
    return app


def app_from_environment() -> FastAPI:
    """For `uvicorn --factory`: settings from the OUTGUARD_* environment."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(Settings())
