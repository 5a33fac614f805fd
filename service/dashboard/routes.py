"""The web dashboard at `/dashboard`: server-rendered pages, inline SVG charts, local assets only.

Pages: the overview (traffic, spam, actions and locks over time, the riskiest
accounts), an account (its volume against its usual, its scores, feedback, lock
history, lock and unlock buttons), its incident report, and the model in use with its
card. With tokens configured, an admin token is asked for once and kept in an
HttpOnly, SameSite=Strict cookie (`service.api.auth` checks it); forms that change
anything are also refused unless they come from the dashboard's own origin.
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markdown_it import MarkdownIt
from markupsafe import Markup

from service.api.accounts import change_account, incident_report
from service.api.auth import SESSION_COOKIE, TokenAuth
from service.api.common import ContainerDep
from service.container import Container
from service.dashboard.charts import bar_chart, line_chart, score_chart
from service.dashboard.data import account_timeline, overview, period_ending_at_newest
from service.decision import account_risk
from service.errors import Forbidden
from service.lifecycle import admin_lock, admin_unlock
from service.reports.incident import render as render_incident
from service.reports.outbound import GroupBy, OutboundQuery, outbound_rows
from service.stores import AccountKey

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
RISKIEST = 15

dashboard_router = APIRouter(prefix="/dashboard", include_in_schema=False)
_environment = Environment(
    loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True), trim_blocks=True, lstrip_blocks=True
)


def _days(value: float) -> float:
    """A period from an hour to 90 days; anything else (nan, inf, negative) falls back to a week."""
    return min(max(value, 1 / 24), 90.0) if math.isfinite(value) else 7.0


def account_url(relay: str, account: str) -> str:
    return f"/dashboard/accounts/{quote(relay, safe='')}/{quote(account, safe='')}"


_environment.globals["account_url"] = account_url
_environment.filters["when"] = lambda ts: datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")


def _page(name: str, request: Request, **context: Any) -> HTMLResponse:
    container: Container = request.app.state.container
    html = _environment.get_template(name).render(
        request=request, auth=container.settings.auth_enabled, model=container.model.current.version, **context
    )
    return HTMLResponse(html)


def _same_origin(request: Request) -> None:
    """Forms that change state must come from this dashboard (a second line behind the SameSite cookie)."""
    site = request.headers.get("sec-fetch-site")
    origin = request.headers.get("origin")
    host = request.headers.get("host", "")
    if site not in (None, "same-origin", "none") or (origin is not None and origin.split("://", 1)[-1] != host):
        raise Forbidden("the dashboard accepts changes only from its own pages")


@dashboard_router.get("/login")
async def login_form(request: Request, next: str = "/dashboard", error: str | None = None) -> HTMLResponse:
    return _page("login.html.j2", request, next=next if next.startswith("/dashboard") else "/dashboard", error=error)


@dashboard_router.post("/login")
async def login(
    request: Request,
    container: ContainerDep,
    token: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/dashboard",
) -> Response:
    _same_origin(request)
    target = next if next.startswith("/dashboard") else "/dashboard"
    if not TokenAuth(container.settings).is_admin(token):
        return RedirectResponse(f"/dashboard/login?error=1&next={quote(target)}", status_code=303)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/dashboard",
        max_age=12 * 3_600,
    )
    return response


@dashboard_router.post("/logout")
async def logout(request: Request) -> Response:
    _same_origin(request)
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/dashboard")
    return response


@dashboard_router.get("")
async def overview_page(request: Request, container: ContainerDep, days: float = 7.0) -> HTMLResponse:
    days = _days(days)
    hold = container.settings.hold_threshold
    await container.events.flush()

    def read(connection: Any) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
        period = period_ending_at_newest(connection, days, time.time())
        query = OutboundQuery(period.start, period.end + 1, GroupBy.ACCOUNT, limit=RISKIEST, hold_threshold=hold)
        rows = [dict(zip(query.columns(), r, strict=True)) for r in outbound_rows(connection, query)]
        return period, overview(connection, period, hold), rows

    period, series, riskiest = await container.database.read(read)
    for row in riskiest:
        state = await container.accounts.get(AccountKey(row["relay"], row["account"]))
        row["status"] = state.status.value
        row["risk"] = round(account_risk(state.evidence, container.settings.lock_threshold), 2)
    riskiest.sort(key=lambda r: (-r["risk"], -r["spam_messages"]))
    charts = [
        bar_chart("Messages scored", series["labels"], {"not spam": series["ham"], "spam": series["spam"]}),
        bar_chart("Actions", series["labels"], series["actions"]),
        bar_chart("Account locks", series["labels"], {"locks": series["locks"]}),
    ]
    # Campaigns live in memory: those active at the newest message (a replayed log has its own clock).
    campaigns = (
        [
            {
                "id": c.cluster_id,
                "accounts": [f"{k.relay}/{k.account}" for k in c.senders],
                "mean_spam_probability": round(c.mean_probability, 3),
                "messages": c.probability_count,
            }
            for c in container.fingerprints.campaigns.active(period.end)
        ]
        if container.fingerprints is not None
        else []
    )
    return _page(
        "overview.html.j2",
        request,
        days=days,
        period=period,
        totals=series["totals"],
        charts=charts,
        riskiest=riskiest,
        campaigns=campaigns,
    )


@dashboard_router.get("/accounts/{relay}/{account:path}/incident")
async def incident_page(relay: str, account: str, container: ContainerDep) -> HTMLResponse:
    report = await incident_report(container, AccountKey(relay, account))
    return HTMLResponse(render_incident(report, "html"))


@dashboard_router.get("/accounts/{relay}/{account:path}")
async def account_page(
    request: Request, relay: str, account: str, container: ContainerDep, days: float = 7.0
) -> HTMLResponse:
    key = AccountKey(relay, account)
    await container.events.flush()
    where = "WHERE relay = :relay AND account = :account"

    def read(connection: Any) -> tuple[Any, dict[str, Any]]:
        period = period_ending_at_newest(
            connection, _days(days), time.time(), where, {"relay": relay, "account": account}
        )
        return period, account_timeline(connection, relay, account, period)

    period, timeline = await container.database.read(read)
    state = await container.accounts.get(key)
    history = await container.ledger.history(key, limit=50)
    charts = [
        line_chart("Messages", timeline["labels"], {"sent": timeline["volume"], "usual": timeline["usual"]}),
        score_chart(
            "Spam probability of each message",
            timeline["labels"],
            timeline["times"],
            timeline["scores"],
            period.start,
            period.end,
            container.settings.hold_threshold,
        ),
    ]
    return _page(
        "account.html.j2",
        request,
        key=key,
        state=state,
        risk=round(account_risk(state.evidence, container.settings.lock_threshold), 3),
        timeline=timeline,
        history=history,
        charts=charts,
        notice=request.query_params.get("done"),
    )


@dashboard_router.post("/accounts/{relay}/{account:path}/{action}")
async def account_action(
    request: Request,
    relay: str,
    account: str,
    action: str,
    container: ContainerDep,
    reason: Annotated[str, Form(max_length=2_000)] = "",
    actor: Annotated[str, Form(max_length=256)] = "dashboard",
) -> Response:
    _same_origin(request)
    key = AccountKey(relay, account)
    why = reason.strip() or f"{action} from the dashboard"
    if action == "lock":
        await change_account(container, key, lambda s, at: admin_lock(s, actor, why, at, None))
    elif action == "unlock":
        await change_account(container, key, lambda s, at: admin_unlock(s, actor, why, at))
    else:
        raise Forbidden(f"the dashboard cannot {action!r} an account")
    return RedirectResponse(f"{account_url(relay, account)}?done={action}ed", status_code=303)


@dashboard_router.get("/model")
async def model_page(request: Request, container: ContainerDep) -> HTMLResponse:
    card_path = container.model.primary.directory / "MODEL_CARD.md"
    text = await asyncio.to_thread(card_path.read_text) if card_path.is_file() else None
    card = _markdown.render(text) if text else None
    return _page("model.html.j2", request, described=container.model.describe(), card=Markup(card) if card else None)
