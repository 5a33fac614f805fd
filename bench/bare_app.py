"""The framework floor: a FastAPI app that only validates the same request bodies and answers."""

from __future__ import annotations

import orjson
from fastapi import FastAPI
from fastapi.responses import Response

from service.api.schemas import BatchIn, MessageIn


def create_bare_app() -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/score")
    async def score(message: MessageIn) -> Response:
        return Response(
            orjson.dumps({"message_id": message.message_id, "action": "accept"}), media_type="application/json"
        )

    @app.post("/v1/score/batch")
    async def score_batch(batch: BatchIn) -> Response:
        results = [{"message_id": m.message_id, "action": "accept"} for m in batch.messages]
        return Response(orjson.dumps({"results": results}), media_type="application/json")

    return app
