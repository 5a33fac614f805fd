"""Helpers every route module shares: the container dependency, JSON answers, timestamps."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import orjson
from fastapi import Depends, Request
from fastapi.responses import Response

from service.container import Container
from service.errors import InvalidInput
from service.settings import Settings


def get_container(request: Request) -> Container:
    return request.app.state.container


ContainerDep = Annotated[Container, Depends(get_container)]


def json_response(body: object, status_code: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json")


def event_time(value: datetime | None, limits: Settings, position: str = "", now: datetime | None = None) -> float:
    """Seconds since the epoch; default now. Refuses the far future: one message from it would
    make every later one look late to its account's windows. And refuses the time before the
    epoch: no mail was sent then, and its reports could not print the date (year 0)."""
    now = now or datetime.now(UTC)
    moment = value or now
    if (ahead := (moment - now).total_seconds()) > limits.max_clock_skew_s:
        raise InvalidInput(
            f"{position}timestamp is {ahead:.0f} s in the future, more than the allowed clock skew of "
            f"{limits.max_clock_skew_s} s"
        )
    if (seconds := moment.timestamp()) < 0:
        raise InvalidInput(f"{position}timestamp is before 1970-01-01T00:00:00Z, the Unix epoch")
    return seconds
