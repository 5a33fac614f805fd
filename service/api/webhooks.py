"""Webhook subscriptions over the API: create (URL checked, secret returned once), list, delete, deliveries."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from service.api.common import ContainerDep, json_response
from service.api.routes import ERRORS, NOT_FOUND
from service.api.schemas import Name
from service.errors import InvalidInput, NotFound
from service.notify import EVENT_TYPES
from service.webhooks.targets import RefusedTarget, check_target

webhooks_router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=ERRORS)
# Ids are the database's 64-bit signed integers: a larger one names no subscription (422, not an overflow).
WebhookId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The subscription's id")]


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[Name, StringConstraints(min_length=8, max_length=2048)]
    events: list[Annotated[Name, StringConstraints(max_length=64)]] = Field(
        min_length=1, max_length=64, description=f"Any of: {', '.join(EVENT_TYPES)}"
    )
    description: Annotated[Name, StringConstraints(max_length=500)] = ""
    secret: Annotated[Name, StringConstraints(min_length=16, max_length=256)] | None = Field(
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


@webhooks_router.delete("/{webhook_id}", summary="Unsubscribe; pending deliveries are dropped", responses=NOT_FOUND)
async def delete_webhook(webhook_id: WebhookId, container: ContainerDep) -> Response:
    if not await container.webhooks.delete(webhook_id):
        raise NotFound(f"no active webhook {webhook_id}")
    return json_response({"id": webhook_id, "deleted": True})


@webhooks_router.get("/{webhook_id}/deliveries", summary="Events queued for a subscriber, and every attempt")
async def deliveries(webhook_id: WebhookId, container: ContainerDep) -> Response:
    return json_response({"id": webhook_id, "deliveries": await container.webhooks.deliveries(webhook_id)})
