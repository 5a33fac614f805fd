"""Bearer tokens: who is asking (a named principal), with which scopes, on which relays.

Auth is an ASGI middleware rather than a route dependency: FastAPI reads and parses
the body before it resolves dependencies, which would let anyone without a token make
the service parse up to `max_request_bytes` of JSON. With no tokens configured, auth
is off (and the CLI binds loopback only); every request is then the `anonymous` principal.

Each token has a name (`OUTGUARD_TOKENS`; `service.settings.NamedToken`). The
middleware puts the request's `Principal` in the ASGI scope (`current_principal`, the
`PrincipalDep` of a route) and its name in `acting_principal`, which the ledger writes
into every audit entry the request makes: the audit log says which token did it, not
only the actor a body named.

A token with `relays` sees and acts on those relays only. `relay_guard`, a dependency
of every route (`service.app`), is the one place that decides: it finds the relays a
request names (the `{relay}` of its path, the `relay` of a scored message or of a
report's query, the `MTA-Tag` of `/checkv2`) and answers 403 naming a relay the token
may not use. A route that spans every relay (webhooks, signatures, models, feedback,
labels, the dashboard) is refused to such a token; `GET /v1/audit` narrows itself to
the token's relays.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import Forbidden, InvalidInput, OutguardError, Unauthenticated, send_error
from service.settings import Scope as TokenScope
from service.settings import Settings
from service.stores.ledger import acting_principal

# The dashboard keeps an admin token in this cookie (HttpOnly, SameSite=Strict, path /dashboard).
SESSION_COOKIE = "outguard_session"
# Where the middleware leaves the request's principal in the ASGI scope.
PRINCIPAL_KEY = "outguard.principal"
ANONYMOUS = "anonymous"

# Path prefix -> the scope it needs. Anything else under /v1/ needs `admin`; the
# operational endpoints outside /v1/ (health, readiness, metrics, docs) are open.
ROUTE_SCOPES: tuple[tuple[str, TokenScope], ...] = (
    ("/v1/score", TokenScope.SCORE),
    ("/v1/feedback", TokenScope.FEEDBACK),
)


# Rspamd's scan route (service.api.rspamd) scores like /v1/score; its /ping is open like /healthz.
RSPAMD_SCAN = "/checkv2"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is from: the token's name, its scopes, and the relays it may use (None: every relay)."""

    name: str
    scopes: frozenset[TokenScope]
    relays: frozenset[str] | None = None

    @property
    def is_admin(self) -> bool:
        return TokenScope.ADMIN in self.scopes

    def may_use(self, relay: str) -> bool:
        return self.relays is None or relay in self.relays

    def require_relay(self, relay: str) -> None:
        if not self.may_use(relay):
            raise Forbidden(
                f"token {self.name!r} may not use relay {relay!r}; it is limited to {_listed(self.relays or ())}"
            )


# With auth off: one local user who may do anything. With auth on, an open route's caller: nobody.
LOCAL = Principal(ANONYMOUS, frozenset(TokenScope), None)
NOBODY = Principal(ANONYMOUS, frozenset(), None)


def _listed(relays: frozenset[str] | tuple[str, ...] | list[str]) -> str:
    return ", ".join(repr(r) for r in sorted(relays))


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
        self._tokens = [
            (
                t.token.get_secret_value().encode(),
                Principal(t.name, frozenset(t.scopes), frozenset(t.relays) if t.relays is not None else None),
            )
            for t in settings.named_tokens
        ]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def principal_of(self, presented: bytes) -> Principal | None:
        found: Principal | None = None
        for token, principal in self._tokens:  # compare against every token: no timing hint of which matched
            if hmac.compare_digest(token, presented):
                found = principal
        return found

    def scopes_of(self, presented: bytes) -> frozenset[TokenScope] | None:
        principal = self.principal_of(presented)
        return principal.scopes if principal is not None else None

    def admin(self, token: str) -> Principal | None:
        """The principal of an admin token for every relay (the dashboard's), else None."""
        principal = self.principal_of(token.strip().encode())
        if principal is None or not principal.is_admin or principal.relays is not None:
            return None
        return principal

    def is_admin(self, token: str) -> bool:
        """Whether the token may use the dashboard: admin, on every relay (the dashboard shows them all)."""
        return self.admin(token) is not None

    def check(self, authorization: str | None, needed: TokenScope) -> Principal:
        if not authorization:
            raise Unauthenticated("missing Authorization header; send `Authorization: Bearer <token>`")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise Unauthenticated("Authorization must be `Bearer <token>`")
        found = self.principal_of(credentials.strip().encode())
        if found is None:
            raise Unauthenticated("unknown token")
        if needed not in found.scopes and not found.is_admin:
            raise Forbidden(f"this token lacks the `{needed.value}` scope")
        return found


class TokenAuthMiddleware:
    def __init__(self, app: ASGIApp, auth: TokenAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        principal = LOCAL
        if self.auth.enabled and _dashboard_page(path):
            admin = self._dashboard_admin(scope)
            if admin is None:
                await _redirect_to_login(scope, send)
                return
            principal = admin
        elif self.auth.enabled:
            principal = NOBODY  # an open route
            if (needed := required_scope(path)) is not None:
                header = dict(scope["headers"]).get(b"authorization")
                try:
                    principal = self.auth.check(header.decode("latin-1") if header else None, needed)
                except OutguardError as exc:
                    await send_error(send, exc)
                    return
        await _as(principal, self.app, scope, receive, send)

    def _dashboard_admin(self, scope: Scope) -> Principal | None:
        """An admin token from the dashboard's cookie or, failing that, the Authorization header."""
        headers = dict(scope["headers"])
        cookie = cookie_parser(headers.get(b"cookie", b"").decode("latin-1")).get(SESSION_COOKIE)
        if cookie and (principal := self.auth.admin(cookie)) is not None:
            return principal
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        return self.auth.admin(token) if scheme.lower() == "bearer" and token else None


async def _as(principal: Principal, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Run the request as `principal`: in its scope for the routes, its name for the audit entries it writes."""
    scope[PRINCIPAL_KEY] = principal
    token = acting_principal.set(principal.name)
    try:
        await app(scope, receive, send)
    finally:
        acting_principal.reset(token)


def current_principal(request: Request) -> Principal:
    """The request's principal (`anonymous` where auth is off, or on an open route)."""
    return request.scope.get(PRINCIPAL_KEY, LOCAL)


PrincipalDep = Annotated[Principal, Depends(current_principal)]


# -- relays: which ones a request names, and the one check of them

RelaysOf = Callable[[Request], Awaitable[list[str] | None]]


def _default_relay() -> str:
    from service.api.schemas import MessageIn

    return str(MessageIn.model_fields["relay"].default)


def _message_relay(message: Any) -> list[str]:
    # A relay of the wrong type is left to the body's validation (422), which runs next.
    relay = message.get("relay", _default_relay()) if isinstance(message, dict) else None
    return [relay] if isinstance(relay, str) else []


async def _scored_relay(request: Request) -> list[str] | None:
    return _message_relay(await request.json())


async def _batch_relays(request: Request) -> list[str] | None:
    body = await request.json()
    messages = body.get("messages") if isinstance(body, dict) else None
    return [relay for m in messages for relay in _message_relay(m)] if isinstance(messages, list) else []


async def _rspamd_relay(request: Request) -> list[str] | None:
    relay = request.headers.get("mta-tag", "").strip()
    return [relay or _default_relay()]


async def _query_relay_required(request: Request) -> list[str] | None:
    relays = request.query_params.getlist("relay")
    if not relays:
        principal = current_principal(request)
        raise Forbidden(
            f"token {principal.name!r} is limited to relays {_listed(principal.relays or ())}: name one with `?relay=`"
        )
    return relays


async def _query_relay_optional(request: Request) -> list[str] | None:
    return request.query_params.getlist("relay")  # none: the route narrows itself to the token's relays


# Routes (their templates) that name a relay elsewhere than in their path.
RELAY_ROUTES: dict[str, RelaysOf] = {
    "/v1/score": _scored_relay,
    "/v1/score/batch": _batch_relays,
    RSPAMD_SCAN: _rspamd_relay,
    "/v1/reports/outbound": _query_relay_required,
    "/v1/audit": _query_relay_optional,
}


async def relay_guard(request: Request) -> None:
    """Refuse (403) a token limited to some relays anything on another relay, or spanning every relay."""
    principal = current_principal(request)
    if principal.relays is None:
        return
    template = getattr(request.scope.get("route"), "path", "")
    if "relay" in request.path_params:
        relays: list[str] | None = [str(request.path_params["relay"])]
    elif (finder := RELAY_ROUTES.get(template)) is not None:
        try:
            relays = await finder(request)
        except ValueError:  # malformed JSON: FastAPI answers it before any dependency runs
            raise InvalidInput("the body is not JSON") from None
    elif template.startswith("/v1/") or template == "/dashboard" or template.startswith("/dashboard/"):
        relays = None
    else:
        return  # health, readiness, metrics, docs: open to anyone
    if relays is None:
        raise Forbidden(
            f"token {principal.name!r} is limited to relays {_listed(principal.relays)}; "
            f"{request.method} {template} spans every relay and needs a token without `relays`"
        )
    for relay in relays:
        principal.require_relay(relay)


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
