"""Bearer tokens with scopes, checked before a request body is read.

Auth is an ASGI middleware rather than a route dependency: FastAPI reads and parses
the body before it resolves dependencies, which would let anyone without a token make
the service parse up to `max_request_bytes` of JSON. With no tokens configured, auth
is off (and the CLI binds loopback only).
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import Forbidden, OutguardError, Unauthenticated, send_error
from service.settings import Scope as TokenScope
from service.settings import Settings

# Path prefix -> the scope it needs. Anything else under /v1/ needs `admin`; the
# operational endpoints outside /v1/ (health, readiness, metrics, docs) are open.
ROUTE_SCOPES: tuple[tuple[str, TokenScope], ...] = (
    ("/v1/score", TokenScope.SCORE),
    ("/v1/feedback", TokenScope.FEEDBACK),
)


def required_scope(path: str) -> TokenScope | None:
    if not path.startswith("/v1/"):
        return None
    for prefix, scope in ROUTE_SCOPES:
        if path == prefix or path.startswith(prefix + "/"):
            return scope
    return TokenScope.ADMIN


class TokenAuth:
    def __init__(self, settings: Settings) -> None:
        self._tokens = [(token.encode(), frozenset(scopes)) for token, scopes in settings.tokens.items()]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def check(self, authorization: str | None, needed: TokenScope) -> None:
        if not authorization:
            raise Unauthenticated("missing Authorization header; send `Authorization: Bearer <token>`")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise Unauthenticated("Authorization must be `Bearer <token>`")
        presented = credentials.strip().encode()
        found: frozenset[TokenScope] | None = None
        for token, scopes in self._tokens:  # compare against every token: no timing hint of which matched
            if hmac.compare_digest(token, presented):
                found = scopes
        if found is None:
            raise Unauthenticated("unknown token")
        if needed not in found and TokenScope.ADMIN not in found:
            raise Forbidden(f"this token lacks the `{needed.value}` scope")


class TokenAuthMiddleware:
    def __init__(self, app: ASGIApp, auth: TokenAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        needed = required_scope(scope["path"]) if scope["type"] == "http" and self.auth.enabled else None
        if needed is not None:
            header = dict(scope["headers"]).get(b"authorization")
            try:
                self.auth.check(header.decode("latin-1") if header else None, needed)
            except OutguardError as exc:
                await send_error(send, exc)
                return
        await self.app(scope, receive, send)
