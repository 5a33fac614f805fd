"""What every dashboard page shares: its templates, the same-origin check, and calls to the service's own API.

The dashboard changes nothing by itself: a lock, a label, a bulk action or a rule is a
call to the JSON API, made in-process (no network) with the token the operator logged
in with. The API's checks (scopes, per-relay tokens, validation, `force` for an account
never seen) and its audit log, under the token's name, are the dashboard's too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from service.api.auth import SESSION_COOKIE
from service.container import Container
from service.errors import Forbidden

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
INTERNAL = "http://outguard.internal"

environment = Environment(
    loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True), trim_blocks=True, lstrip_blocks=True
)


def account_url(relay: str, account: str) -> str:
    return f"/dashboard/accounts/{quote(relay, safe='')}/{quote(account, safe='')}"


def confirm_url(relay: str, account: str, action: str, back: str | None = None, message_id: str | None = None) -> str:
    """The page that asks before an action on an account (or, with `message_id`, a label on a message)."""
    query = {"relay": relay, "account": account, "action": action}
    if message_id:
        query["message_id"] = message_id
    if back:
        query["next"] = back
    return "/dashboard/confirm?" + urlencode(query)


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts is not None else ""


def _percent(share: float | None) -> str:
    return f"{100 * share:.1f}%" if share is not None else ""


environment.globals["account_url"] = account_url
environment.globals["confirm_url"] = confirm_url
environment.filters["when"] = _when
environment.filters["percent"] = _percent


def page(name: str, request: Request, status_code: int = 200, **context: Any) -> HTMLResponse:
    container: Container = request.app.state.container
    html = environment.get_template(name).render(
        request=request,
        auth=container.settings.auth_enabled,
        model=container.model.current.version,
        here=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        **context,
    )
    return HTMLResponse(html, status_code=status_code, headers={"Cache-Control": "no-store"})


def same_origin(request: Request) -> None:
    """Changes must come from this dashboard (a second line behind the SameSite cookie)."""
    site = request.headers.get("sec-fetch-site")
    origin = request.headers.get("origin")
    host = request.headers.get("host", "")
    if site not in (None, "same-origin", "none") or (origin is not None and origin.split("://", 1)[-1] != host):
        raise Forbidden("the dashboard accepts changes only from its own pages")


def back_to(target: str | None, fallback: str) -> str:
    """A dashboard page to return to: never another site (an open redirect)."""
    if target and target.startswith("/dashboard") and not target.startswith("//"):
        return target
    return fallback


def with_query(url: str, **values: str) -> str:
    return url + ("&" if "?" in url else "?") + urlencode(values)


@dataclass(frozen=True, slots=True)
class ApiAnswer:
    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def detail(self) -> str:
        """What went wrong, in the API's words."""
        if isinstance(self.body, dict):
            detail = self.body.get("detail", self.body.get("error", ""))
            if isinstance(detail, list):  # a validation error: each problem's message
                return "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
            return str(detail)
        return str(self.body)[:500]


def session_token(request: Request) -> str | None:
    """The token the operator logged in with (the dashboard's cookie, else an Authorization header)."""
    if token := request.cookies.get(SESSION_COOKIE):
        return token
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def call_api(
    request: Request, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None
) -> ApiAnswer:
    """The service's own API, in-process, as the logged-in operator."""
    token = session_token(request)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    transport = httpx.ASGITransport(app=request.app)
    async with httpx.AsyncClient(transport=transport, base_url=INTERNAL, timeout=None) as client:
        response = await client.request(method, path, json=body, params=params, headers=headers)
    try:
        parsed: Any = response.json()
    except ValueError:
        parsed = response.text
    return ApiAnswer(response.status_code, parsed)


def api_path(*parts: str) -> str:
    return "/v1/" + "/".join(quote(p, safe="") for p in parts)
