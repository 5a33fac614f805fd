"""The service's exceptions, and their mapping to HTTP answers, in one place.

Every error answer is JSON `{"error": code, "detail": ...}` saying what was wrong;
nothing reaches the client as a stack trace. A database error an answer reports is
logged here, once, and without the data of the statement (`describe`).
"""

from __future__ import annotations

import logging
import traceback
from typing import ClassVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from service.stores.writer import WriterStopped, describe

log = logging.getLogger(__name__)


class OutguardError(Exception):
    status = 400
    code = "bad_request"
    headers: ClassVar[dict[str, str] | None] = None

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidInput(OutguardError):
    status = 422
    code = "invalid_request"


class NotFound(OutguardError):
    status = 404
    code = "not_found"


class UnsupportedMediaType(OutguardError):
    status = 415
    code = "unsupported_media_type"


class PayloadTooLarge(OutguardError):
    status = 413
    code = "payload_too_large"


class Unauthenticated(OutguardError):
    status = 401
    code = "unauthenticated"
    headers: ClassVar[dict[str, str] | None] = {"WWW-Authenticate": "Bearer"}


class Forbidden(OutguardError):
    status = 403
    code = "forbidden"


class NotReady(OutguardError):
    status = 503
    code = "not_ready"


class TemporarilyUnavailable(OutguardError):
    """A backing service is down: nothing was done, the caller should retry."""

    status = 503
    code = "unavailable"
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "5"}


class StorageUnavailable(TemporarilyUnavailable):
    """The database did not take a write: nothing was acknowledged."""

    code = "storage_unavailable"


class SharedStateUnavailable(TemporarilyUnavailable):
    """Redis is unreachable and the service is configured to fail closed."""

    code = "shared_state_unavailable"


async def send_error(send: Send, error: OutguardError) -> None:
    """Answer from ASGI middleware, before any route runs, in the same JSON shape."""
    body = orjson.dumps({"error": error.code, "detail": error.detail})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _validation_detail(exc: RequestValidationError) -> tuple[str, list[dict[str, object]]]:
    problems = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            ctx = error.get("ctx") or {}
            return "malformed_json", [{"field": "body", "problem": f"malformed JSON: {ctx.get('error', 'invalid')}"}]
        location = [str(part) for part in error.get("loc", ()) if part != "body"]
        problems.append({"field": ".".join(location) or "body", "problem": error.get("msg", "invalid")})
    return "invalid_request", problems


def _where(request: Request) -> str:
    """The method and route for a log line: the template, not the URL, which holds account names."""
    route = request.scope.get("route")
    return f"{request.method} {getattr(route, 'path', None) or request.url.path}"


def _answer(error: OutguardError) -> JSONResponse:
    return JSONResponse({"error": error.code, "detail": error.detail}, status_code=error.status, headers=error.headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OutguardError)
    async def _outguard(request: Request, exc: OutguardError) -> JSONResponse:
        if isinstance(exc, StorageUnavailable) and exc.__cause__ is not None:  # the writer leaves it to its caller
            log.error("database error on %s: %s", _where(request), describe(exc.__cause__))
        return _answer(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        code, problems = _validation_detail(exc)
        return JSONResponse({"error": code, "detail": problems}, status_code=400 if code == "malformed_json" else 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": code, "detail": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(WriterStopped)
    async def _storage(request: Request, exc: Exception) -> JSONResponse:
        # The database is down or refused the write: say so, nothing was stored.
        log.error("database error on %s: %s", _where(request), describe(exc))
        return _answer(StorageUnavailable("the database is unavailable; nothing was stored, retry later"))

    @app.exception_handler(SQLAlchemyError)
    async def _database_bug(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        # Not the database being unavailable: a statement it refused. Where in the code, but not the row's values.
        log.error(
            "unhandled database error on %s: %s\n%s",
            _where(request),
            describe(exc),
            "".join(traceback.format_tb(exc.__traceback__)).rstrip(),
        )
        return JSONResponse({"error": "internal", "detail": "internal error; it has been logged"}, status_code=500)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", _where(request))
        return JSONResponse({"error": "internal", "detail": "internal error; it has been logged"}, status_code=500)
