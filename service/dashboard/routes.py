"""The web dashboard at `/dashboard`: server-rendered pages, inline SVG charts, local assets only.

Pages: the overview (traffic, spam, actions and locks over time, the riskiest
accounts, the campaigns), an account (its volume against its usual, its scores,
feedback, lock history, its actions), its incident report, and the model in use with
its card; the console's pages are in `service.dashboard.console`. With tokens
configured, an admin token is asked for once and kept in an HttpOnly, SameSite=Strict
cookie (`service.api.auth` checks it); anything that changes state is also refused
unless it comes from the dashboard's own origin.

Outside `/dashboard`, `/incident/{token}` opens one account's incident report for a
signed, expiring link from a notice, a digest or a webhook (`service.reports.links`):
no login, that report only, read-only.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markdown_it import MarkdownIt
from markupsafe import Markup

from service.api.accounts import incident_report
from service.api.auth import SESSION_COOKIE, TokenAuth
from service.api.common import ContainerDep
from service.dashboard.charts import bar_chart, line_chart, score_chart
from service.dashboard.console import account_action, console_router
from service.dashboard.data import account_timeline, overview, period_ending_at_newest
from service.dashboard.render import STATIC, account_url, page, same_origin
from service.decision import account_risk
from service.reports.incident import render as render_incident
from service.reports.links import BadLink
from service.reports.outbound import GroupBy, OutboundQuery, outbound_rows
from service.stores import AccountKey

__all__ = ["STATIC", "account_url", "dashboard_router"]

RISKIEST = 15

pages = APIRouter(prefix="/dashboard")
links = APIRouter()
_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")


def _days(value: float) -> float:
    """A period from an hour to 90 days; anything else (nan, inf, negative) falls back to a week."""
    return min(max(value, 1 / 24), 90.0) if math.isfinite(value) else 7.0


@pages.get("/login")
async def login_form(request: Request, next: str = "/dashboard", error: str | None = None) -> HTMLResponse:
    return page("login.html.j2", request, next=next if next.startswith("/dashboard") else "/dashboard", error=error)


@pages.post("/login")
async def login(
    request: Request,
    container: ContainerDep,
    token: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/dashboard",
) -> Response:
    same_origin(request)
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


@pages.post("/logout")
async def logout(request: Request) -> Response:
    same_origin(request)
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/dashboard")
    return response


@pages.get("")
async def overviewpage(request: Request, container: ContainerDep, days: float = 7.0) -> HTMLResponse:
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
        row["allowlisted"] = state.allowlisted
        row["risk"] = round(account_risk(state.evidence, container.settings.lock_threshold), 2)
    riskiest.sort(key=lambda r: (-r["risk"], -r["spam_messages"]))
    charts = [
        bar_chart("Messages scored", series["labels"], {"not spam": series["ham"], "spam": series["spam"]}),
        bar_chart("Actions", series["labels"], series["actions"]),
        bar_chart("Account locks", series["labels"], {"locks": series["locks"]}),
    ]
    # Campaigns live in the hot state: those active at the newest message (a replayed log has its own clock).
    campaigns = (
        [
            {
                "id": c.cluster_id,
                "accounts": [f"{k.relay}/{k.account}" for k in c.senders],
                "mean_spam_probability": round(c.mean_probability, 3),
                "messages": c.probability_count,
            }
            for c in await container.fingerprints.active_campaigns(period.end)
        ]
        if container.fingerprints is not None
        else []
    )
    return page(
        "overview.html.j2",
        request,
        days=days,
        period=period,
        totals=series["totals"],
        charts=charts,
        riskiest=riskiest,
        campaigns=campaigns,
    )


@pages.get("/accounts/{relay}/{account:path}/incident")
async def incidentpage(relay: str, account: str, container: ContainerDep) -> HTMLResponse:
    report = await incident_report(container, AccountKey(relay, account))
    return HTMLResponse(render_incident(report, "html"))


@pages.get("/accounts/{relay}/{account:path}")
async def accountpage(
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
    return page(
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


@pages.post("/accounts/{relay}/{account:path}/{action}")
async def account_action_form(
    request: Request,
    relay: str,
    account: str,
    action: str,
    container: ContainerDep,
    reason: Annotated[str, Form(max_length=2_000)] = "",
    actor: Annotated[str, Form(max_length=256)] = "",
    force: Annotated[str, Form(max_length=8)] = "",
    next: Annotated[str | None, Form(max_length=4_000)] = None,
) -> Response:
    """Lock, unlock, allowlist, reset or label the account; an account never seen is locked only with `force`.

    Without an `actor`, the API records the logged-in token's name as the actor."""
    key = AccountKey(relay, account)
    return await account_action(request, container, key, action, reason, actor, force == "1", next)


@pages.get("/model")
async def modelpage(request: Request, container: ContainerDep) -> HTMLResponse:
    card_path = container.model.primary.directory / "MODEL_CARD.md"
    text = await asyncio.to_thread(card_path.read_text) if card_path.is_file() else None
    card = _markdown.render(text) if text else None
    return page("model.html.j2", request, described=container.model.describe(), card=Markup(card) if card else None)


@links.get("/incident/{token}")
async def shared_incident(
    request: Request, container: ContainerDep, token: Annotated[str, Path(max_length=4_000)]
) -> HTMLResponse:
    """One account's incident report for a signed link (read-only, that report only, until the link expires)."""
    try:
        key, _ = container.links.verify(token)
    except BadLink as error:
        return page("link.html.j2", request, status_code=403, error=str(error))
    report = await incident_report(container, key)
    headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex"}
    return HTMLResponse(render_incident(report, "html"), headers=headers)


dashboard_router = APIRouter(include_in_schema=False)
dashboard_router.include_router(console_router)
dashboard_router.include_router(pages)
dashboard_router.include_router(links)
