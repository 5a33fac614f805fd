"""Webhook subscriptions over the API: create (URL checked, secret returned once), list, delete, deliveries."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from service.api.common import ContainerDep, json_response
from service.api.routes import ERRORS
from service.errors import InvalidInput, NotFound
from service.notify import EVENT_TYPES
from service.webhooks.targets import RefusedTarget, check_target

webhooks_router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=ERRORS)


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, StringConstraints(min_length=8, max_length=2048)]
    events: list[str] = Field(min_length=1, description=f"Any of: {', '.join(EVENT_TYPES)}")
    description: Annotated[str, StringConstraints(max_length=500)] = ""
    secret: Annotated[str, StringConstraints(min_length=16, max_length=256)] | None = Field(
        default=None, description="The signing secret; default: generated, and returned once"
    )


@webhooks_router.post("", summary="Subscribe a URL to event types", status_code=201)
async def create_webhook(body: WebhookIn, container: ContainerDep) -> Response:
    unknown = sorted(set(body.events) - set(EVENT_TYPES))
    if unknown:
        raise InvalidInput(f"unknown event types {unknown}; known: {list(EVENT_TYPES)}")
    try:
        await check_target(body.url, container.settings.webhook_allow_private)
    except RefusedTarget as exc:
        raise InvalidInput(str(exc)) from None
    subscription = await container.webhooks.create(body.url, body.events, body.description, body.secret)
    return json_response({**subscription.public(), "secret": subscription.secret}, status_code=201)


@webhooks_router.get("", summary="The subscriptions (secrets are never shown again)")
async def list_webhooks(container: ContainerDep) -> Response:
    return json_response({"webhooks": [s.public() for s in container.webhooks.subscriptions]})


@webhooks_router.delete("/{webhook_id}", summary="Unsubscribe; pending deliveries are dropped")
async def delete_webhook(webhook_id: int, container: ContainerDep) -> Response:
    if not await container.webhooks.delete(webhook_id):
        raise NotFound(f"no active webhook {webhook_id}")
    return json_response({"id": webhook_id, "deleted": True})


@webhooks_router.get("/{webhook_id}/deliveries", summary="Events queued for a subscriber, and every attempt")
async def deliveries(webhook_id: int, container: ContainerDep) -> Response:
    return json_response({"id": webhook_id, "deliveries": await container.webhooks.deliveries(webhook_id)})
