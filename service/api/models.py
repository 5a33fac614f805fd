"""The models in use, over the API: what is served, reloading it without downtime, the shadow's report."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from service.api.common import ContainerDep, json_response
from service.api.routes import ERRORS
from service.reports.shadow import shadow_report

models_router = APIRouter(prefix="/v1/admin/models", tags=["models"], responses=ERRORS)


@models_router.get("", summary="The model serving now, where it came from, and the shadow")
async def current_models(container: ContainerDep) -> Response:
    return json_response(container.model.describe())


@models_router.post("/reload", summary="Load the model again from its source and swap it in without downtime")
async def reload_models(container: ContainerDep) -> Response:
    return json_response(await container.models.reload(container.model))


@models_router.get("/shadow", summary="The acting model against the shadow model on the same traffic")
async def shadow_comparison(
    container: ContainerDep,
    since: Annotated[float, Query(allow_inf_nan=False, description="Unix seconds")] = 0.0,
) -> Response:
    hold = container.settings.hold_threshold
    report = await container.database.read(lambda c: shadow_report(c, since, hold))
    return json_response(report)
