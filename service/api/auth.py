"""Bearer tokens with scopes. With no tokens configured, auth is off (loopback only, see the CLI)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from fastapi import Request

from service.errors import Forbidden, Unauthenticated
from service.settings import Scope, Settings


class TokenAuth:
    def __init__(self, settings: Settings) -> None:
        self._tokens = [(token.encode(), frozenset(scopes)) for token, scopes in settings.tokens.items()]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def scopes_for(self, authorization: str | None) -> frozenset[Scope]:
        if not authorization:
            raise Unauthenticated("missing Authorization header; send `Authorization: Bearer <token>`")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise Unauthenticated("Authorization must be `Bearer <token>`")
        presented = credentials.strip().encode()
        found: frozenset[Scope] | None = None
        for token, scopes in self._tokens:  # compare against every token: no timing hint of which matched
            if hmac.compare_digest(token, presented):
                found = scopes
        if found is None:
            raise Unauthenticated("unknown token")
        return found


def require(scope: Scope) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency that admits requests whose token carries `scope` (or `admin`)."""

    async def check(request: Request) -> None:
        auth: TokenAuth = request.app.state.auth
        if not auth.enabled:
            return
        scopes = auth.scopes_for(request.headers.get("authorization"))
        if scope not in scopes and Scope.ADMIN not in scopes:
            raise Forbidden(f"this token lacks the `{scope.value}` scope")

    return check
