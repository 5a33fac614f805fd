"""Bearer tokens with scopes, checked before a request body is read.

Auth is an ASGI middleware rather than a route dependency: FastAPI reads and parses
the body before it resolves dependencies, which would let anyone without a token make
the service parse up to `max_request_bytes` of JSON. With no tokens configured, auth
is off (and the CLI binds loopback only).
"""

from __future__ import annotations

import hmac
from urllib.parse import quote

from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import Forbidden, OutguardError, Unauthenticated, send_error
from service.settings import Scope as TokenScope
from service.settings import Settings

# The dashboard keeps an admin token in this cookie (HttpOnly, SameSite=Strict, path /dashboard).
SESSION_COOKIE = "outguard_session"

# Path prefix -> the scope it needs. Anything else under /v1/ needs `admin`; the
# operational endpoints outside /v1/ (health, readiness, metrics, docs) are open.
ROUTE_SCOPES: tuple[tuple[str, TokenScope], ...] = (
    ("/v1/score", TokenScope.SCORE),
    ("/v1/feedback", TokenScope.FEEDBACK),
)


# Rspamd's scan route (service.api.rspamd) scores like /v1/score; its /ping is open like /healthz.
RSPAMD_SCAN = "/checkv2"


def required_scope(path: str) -> TokenScope | None:
    if path == RSPAMD_SCAN:
        return TokenScope.SCORE
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

    def scopes_of(self, presented: bytes) -> frozenset[TokenScope] | None:
        found: frozenset[TokenScope] | None = None
        for token, scopes in self._tokens:  # compare against every token: no timing hint of which matched
            if hmac.compare_digest(token, presented):
                found = scopes
        return found

    def is_admin(self, token: str) -> bool:
        scopes = self.scopes_of(token.strip().encode())
        return scopes is not None and TokenScope.ADMIN in scopes

    def check(self, authorization: str | None, needed: TokenScope) -> None:
        if not authorization:
            raise Unauthenticated("missing Authorization header; send `Authorization: Bearer <token>`")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise Unauthenticated("Authorization must be `Bearer <token>`")
        found = self.scopes_of(credentials.strip().encode())
        if found is None:
            raise Unauthenticated("unknown token")
        if needed not in found and TokenScope.ADMIN not in found:
            raise Forbidden(f"this token lacks the `{needed.value}` scope")


class TokenAuthMiddleware:
    def __init__(self, app: ASGIApp, auth: TokenAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = _route_path(scope) if scope["type"] == "http" else ""
        if scope["type"] == "http" and self.auth.enabled and _dashboard_page(path):
            if not self._dashboard_admin(scope):
                await _redirect_to_login(scope, send)
                return
            await self.app(scope, receive, send)
            return
        needed = required_scope(path) if scope["type"] == "http" and self.auth.enabled else None
        if needed is not None:
            header = dict(scope["headers"]).get(b"authorization")
            try:
                self.auth.check(header.decode("latin-1") if header else None, needed)
            except OutguardError as exc:
                await send_error(send, exc)
                return
        await self.app(scope, receive, send)

    def _dashboard_admin(self, scope: Scope) -> bool:
        """An admin token from the dashboard's cookie or, failing that, the Authorization header."""
        headers = dict(scope["headers"])
        cookie = cookie_parser(headers.get(b"cookie", b"").decode("latin-1")).get(SESSION_COOKIE)
        if cookie and self.auth.is_admin(cookie):
            return True
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and bool(token) and self.auth.is_admin(token)


def _route_path(scope: Scope) -> str:
    """The path the router matches: without the root path a proxy mounts the service under."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _dashboard_page(path: str) -> bool:
    """Dashboard pages need an admin; its login page and its assets do not."""
    return (path == "/dashboard" or path.startswith("/dashboard/")) and not path.startswith(
        ("/dashboard/login", "/dashboard/static/")
    )


async def _redirect_to_login(scope: Scope, send: Send) -> None:
    target = "/dashboard/login?next=" + quote(scope["path"], safe="/")
    await send({"type": "http.response.start", "status": 303, "headers": [(b"location", target.encode())]})
    await send({"type": "http.response.body", "body": b""})
