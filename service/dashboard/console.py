"""The dashboard as an operator's console: find accounts, watch decisions, see the network, act.

Pages: account search (name, relay, domain, customer, client IP, status, a campaign's
senders), the live log of decisions with their reasons (it polls a JSON endpoint),
per-domain and per-customer totals, the relay and client-IP picture, identity rules
(edit, dry-run, reset) and the audit log. Every list can lock, unlock, allowlist and
label its accounts after a confirmation page, and select rows to act on many at once
(`POST /dashboard/api/bulk`, which previews a dry run before it is confirmed).

Reads go through the named queries of `service.stores.console`; changes go through the
JSON API as the logged-in operator (`render.call_api`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

import numpy as np
import orjson
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from features.spec import BY_NAME
from service.api.accounts import AdminAction, account_seen
from service.api.common import ContainerDep, json_response
from service.api.feedback_schemas import LabelIn
from service.api.identity_rules import RulesIn
from service.container import Container
from service.dashboard.data import period_ending_at_newest
from service.dashboard.render import (
    ApiAnswer,
    account_url,
    api_path,
    back_to,
    call_api,
    confirm_url,
    page,
    same_origin,
    with_query,
)
from service.decision import account_risk
from service.errors import Forbidden, InvalidInput
from service.model_runtime import ModelHolder
from service.reports.incident import BAD_BOUNCE_RATE, BAD_COMPLAINT_RATE
from service.stores import AccountKey, AccountState
from service.stores.console import (
    AccountSearch,
    DecisionFilter,
    DomainFilter,
    client_ip_totals,
    decision_relays,
    domain_totals,
    recent_decisions,
    relay_totals,
    search_accounts,
)

console_router = APIRouter(prefix="/dashboard")

PAGE_SIZE = 100
MAX_PAGE = 2_000  # a campaign tracks at most 2,000 senders: all of them fit on one page
LOG_ROWS = 50
IP_ROWS = 200
SPAM_SHARE_AT_RISK = 0.05  # a sending address whose mail is this much spam is heading for a blocklist
BULK_ACTIONS = ("lock", "unlock", "allowlist", "reset")
BULK_MAX = 10_000
STATUSES = ("locked", "active", "rate_limited", "allowlisted")
NO_DOMAIN = "(none)"

# What each account action is, for the confirmation page and the notice after it.
ACCOUNT_ACTIONS: dict[str, tuple[str, str, str]] = {
    # action: (button, what it does, past tense)
    "lock": ("Lock", "Its mail is refused until someone unlocks it.", "locked"),
    "unlock": (
        "Unlock",
        "Its mail flows again and its evidence starts over; with a reason, the mail it sent becomes known-good.",
        "unlocked",
    ),
    "allowlist": ("Allowlist", "It is never locked or rate-limited automatically (still scored).", "allowlisted"),
    "unallowlist": ("Remove from the allowlist", "Automatic locks apply to it again.", "removed from the allowlist"),
    "reset": ("Reset", "Back to active, with no evidence and no count of automatic locks.", "reset"),
    "compromised": (
        "Label compromised",
        "A training label; the account is recommended for locking at once (locked by its next message where the "
        "relay auto-locks).",
        "labelled compromised",
    ),
    "clean": (
        "Label clean",
        "A training label; the account is unlocked if locked, its evidence starts over and its mail becomes "
        "known-good.",
        "labelled clean",
    ),
}
MESSAGE_LABELS: dict[str, tuple[str, str]] = {
    "spam": ("Label spam", "A training label; it adds a message's worth of evidence against the account."),
    "ham": ("Label not spam", "A training label; it takes a message's worth of evidence off the account."),
}


def _days(value: float) -> float:
    return min(max(value, 1 / 24), 90.0) if math.isfinite(value) else 7.0


async def _period(container: Container, days: float) -> Any:
    await container.events.flush()
    return await container.database.read(lambda c: period_ending_at_newest(c, _days(days), time.time()))


async def _live(container: Container, rows: list[dict[str, Any]]) -> None:
    """Each row's status and risk as scoring sees them now (the hot state, not the last record)."""
    for row in rows:
        state = await container.accounts.get(AccountKey(row["relay"], row["account"]))
        row["status"] = state.status.value
        row["allowlisted"] = state.allowlisted
        row["locked"] = state.locked
        row["risk"] = round(account_risk(state.evidence, container.settings.lock_threshold), 2)


def _blank(value: str | None) -> str | None:
    return value.strip() if value and value.strip() else None


# -- account search


@console_router.get("/accounts")
async def accounts_page(
    request: Request,
    container: ContainerDep,
    q: str | None = Query(default=None, max_length=998),
    relay: str | None = Query(default=None, max_length=128),
    domain: str | None = Query(default=None, max_length=255),
    customer: str | None = Query(default=None, max_length=255),
    ip: str | None = Query(default=None, max_length=64),
    status: str | None = Query(default=None, max_length=32),
    campaign: int | None = Query(default=None, ge=0),
    days: float = 7.0,
    page_number: int = Query(default=1, ge=1, le=100_000, alias="page"),
) -> HTMLResponse:
    q, relay, domain, customer, ip, status = map(_blank, (q, relay, domain, customer, ip, status))
    notes: list[str] = []
    domains = DomainFilter()
    if domain is not None:
        domains = DomainFilter(exact=("" if domain == NO_DOMAIN else domain.lower(),))
    if customer is not None:
        found = container.settings.customers.get(customer)
        # A name without a customer of its own is a domain shown under its own name.
        domains = DomainFilter.of(found.domains) if found else DomainFilter(exact=(customer.lower(),))
    senders: tuple[AccountKey, ...] | None = None
    if campaign is not None:
        cluster = container.fingerprints.campaigns.cluster(campaign) if container.fingerprints else None
        senders = tuple(cluster.senders) if cluster is not None else ()
        if cluster is None:
            notes.append(f"Campaign {campaign} is no longer tracked (campaigns live in memory).")
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status is one of {', '.join(STATUSES)}")
    period = await _period(container, days)
    limit = MAX_PAGE if senders is not None else PAGE_SIZE
    search = AccountSearch(
        since=period.start,
        until=period.end,
        now=time.time(),
        hold_threshold=container.settings.hold_threshold,
        text=q,
        relay=relay,
        domains=domains,
        client_ip=ip,
        status=status,
        accounts=senders,
        limit=limit,
        offset=(page_number - 1) * limit,
    )
    rows, total = await container.database.read(lambda c: search_accounts(c, search))
    await _live(container, rows)
    filters = {"q": q, "relay": relay, "domain": domain, "customer": customer, "ip": ip, "status": status}
    filters |= {"campaign": campaign, "days": days if days != 7.0 else None}
    kept = {k: v for k, v in filters.items() if v is not None}
    pages = max(1, math.ceil(total / limit))
    return page(
        "accounts.html.j2",
        request,
        rows=rows,
        total=total,
        filters=filters,
        statuses=STATUSES,
        notes=notes,
        period=period,
        page_number=page_number,
        pages=pages,
        page_url=lambda n: "/dashboard/accounts?" + urlencode(kept | {"page": n}),
        relays=await container.database.read(lambda c: decision_relays(c, period.start)),
        all_selected=senders is not None,
    )


# -- the live log of decisions


def explain(holder: ModelHolder, rows: Sequence[dict[str, Any]], top: int = 3) -> list[list[dict[str, str]]]:
    """Why each message scored as it did: the features that pushed it most towards spam (recomputed from the
    logged feature vector, as the incident report does)."""
    reasons: list[list[dict[str, str]]] = [[] for _ in rows]
    vectors = [(i, orjson.loads(r["features"])) for i, r in enumerate(rows) if r.get("features")]
    bundle = holder.current
    if vectors:
        try:
            contributions = bundle.predict(np.asarray([v for _, v in vectors], dtype=np.float64)).contributions
        except (ValueError, IndexError):  # vectors of another feature spec than the model's
            contributions = None
        if contributions is not None:
            for (i, _), row in zip(vectors, contributions, strict=True):
                for j in np.argsort(-row)[:top]:
                    if row[j] > 0:
                        name = bundle.model_features[j]
                        reasons[i].append({"feature": name, "meaning": BY_NAME[name].description})
    for i, row in enumerate(rows):
        if row.get("spam_probability") is None:
            reasons[i].insert(0, {"feature": "", "meaning": "not scored: the account was locked or held back"})
        if row.get("identity_conflict"):
            try:
                conflict = orjson.loads(row["identity_conflict"])
                claimed = f"{conflict.get('header', 'a header')} named {conflict.get('claimed', 'another login')}"
            except (orjson.JSONDecodeError, AttributeError):
                claimed = "a header named another login"
            reasons[i].append({"feature": "identity_conflict", "meaning": f"{claimed} than the SASL login"})
    return reasons


def decision_json(row: dict[str, Any], reasons: list[dict[str, str]]) -> dict[str, Any]:
    here = "/dashboard/log"
    return {
        "id": row["id"],
        "ts": row["ts"],
        "when": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["ts"])),
        "relay": row["relay"],
        "account": row["account"],
        "account_url": account_url(row["relay"], row["account"]),
        "identity_source": row["identity_source"],
        "message_id": row["message_id"],
        "action": row["action"],
        "spam_probability": None if row["spam_probability"] is None else round(row["spam_probability"], 3),
        "account_risk": round(row["account_risk"], 3),
        "client_ip": row["client_ip"],
        "subject": row["subject"],
        "reasons": reasons,
        "label_spam": confirm_url(row["relay"], row["account"], "spam", here, row["message_id"]),
        "label_ham": confirm_url(row["relay"], row["account"], "ham", here, row["message_id"]),
        "lock": confirm_url(row["relay"], row["account"], "lock", here),
    }


async def _decisions(container: Container, wanted: DecisionFilter) -> list[dict[str, Any]]:
    await container.events.flush()
    rows = await container.database.read(lambda c: recent_decisions(c, wanted))
    return [decision_json(r, why) for r, why in zip(rows, explain(container.model, rows), strict=True)]


def _decision_filter(
    relay: str | None, account: str | None, action: str | None, ip: str | None, **cursor: int | None
) -> DecisionFilter:
    return DecisionFilter(
        relay=_blank(relay), account=_blank(account), action=_blank(action), client_ip=_blank(ip), **cursor
    )


LogText = Annotated[str | None, Query(max_length=998)]


@console_router.get("/log")
async def log_page(
    request: Request,
    container: ContainerDep,
    relay: LogText = None,
    account: LogText = None,
    action: LogText = None,
    ip: LogText = None,
    before: int | None = Query(default=None, ge=0),
) -> HTMLResponse:
    wanted = _decision_filter(relay, account, action, ip, before_id=before)
    rows = await _decisions(container, DecisionFilter(**{**_fields(wanted), "limit": LOG_ROWS}))
    filters = {"relay": wanted.relay, "account": wanted.account, "action": wanted.action, "ip": wanted.client_ip}
    return page(
        "log.html.j2",
        request,
        rows=rows,
        filters=filters,
        query=urlencode({k: v for k, v in filters.items() if v}),
        actions=("accept", "defer", "hold", "reject"),
        newest=rows[0]["id"] if rows else 0,
        oldest=rows[-1]["id"] if rows else None,
        paging_back=before is not None,
    )


def _fields(wanted: DecisionFilter) -> dict[str, Any]:
    return {name: getattr(wanted, name) for name in DecisionFilter.__dataclass_fields__}


@console_router.get("/api/decisions")
async def decisions_json(
    container: ContainerDep,
    relay: LogText = None,
    account: LogText = None,
    action: LogText = None,
    ip: LogText = None,
    after: int | None = Query(default=None, ge=0),
    before: int | None = Query(default=None, ge=0),
    limit: int = Query(default=LOG_ROWS, ge=1, le=500),
) -> Response:
    """Decisions newest first; `after` (the newest id the page has) returns only what came since: poll it."""
    wanted = _decision_filter(relay, account, action, ip, after_id=after, before_id=before)
    rows = await _decisions(container, DecisionFilter(**{**_fields(wanted), "limit": limit}))
    newest = rows[0]["id"] if rows else after or 0
    return json_response({"rows": rows, "newest": newest})


# -- per domain and per customer


def _at_risk(row: dict[str, Any]) -> list[str]:
    why = []
    if row["spam_share"] >= SPAM_SHARE_AT_RISK and row["spam_messages"]:
        why.append(f"{100 * row['spam_share']:.1f}% spam")
    if row["bounce_rate"] >= BAD_BOUNCE_RATE:
        why.append(f"{100 * row['bounce_rate']:.1f}% bounced")
    if row["complaint_rate"] >= BAD_COMPLAINT_RATE:
        why.append(f"{100 * row['complaint_rate']:.2f}% complained")
    if row.get("locked_accounts"):
        why.append(f"{row['locked_accounts']} locked")
    return why


async def _domains(container: Container, days: float) -> tuple[Any, list[dict[str, Any]]]:
    period = await _period(container, days)
    settings = container.settings
    rows = await container.database.read(
        lambda c: domain_totals(c, period.start, period.end, time.time(), settings.hold_threshold)
    )
    return period, rows


@console_router.get("/domains")
async def domains_page(request: Request, container: ContainerDep, days: float = 7.0) -> HTMLResponse:
    period, rows = await _domains(container, days)
    for row in rows:
        row["name"] = row["domain"] or NO_DOMAIN
        row["link"] = "/dashboard/accounts?" + urlencode({"domain": row["name"]})
        customer = container.settings.customer_of(f"x@{row['domain']}") if row["domain"] else None
        row["customer"] = customer[0] if customer else None
        row["at_risk"] = _at_risk(row)
    rows.sort(key=lambda r: (-r["spam_messages"], -r["messages"], r["name"]))
    return page("groups.html.j2", request, title="Domains", kind="domain", rows=rows, period=period)


@console_router.get("/customers")
async def customers_page(request: Request, container: ContainerDep, days: float = 7.0) -> HTMLResponse:
    period, domain_rows = await _domains(container, days)
    summed = ("accounts", "messages", "recipients", "spam_messages", "bounces", "complaints", "locked_accounts")
    groups: dict[str, dict[str, Any]] = {}
    for row in domain_rows:
        customer = container.settings.customer_of(f"x@{row['domain']}") if row["domain"] else None
        name = customer[0] if customer else row["domain"] or NO_DOMAIN
        group = groups.setdefault(
            name, {"name": name, "mapped": customer is not None, "domains": [], **dict.fromkeys(summed, 0)}
        )
        group["domains"].append(row["domain"] or NO_DOMAIN)
        for column in summed:
            group[column] += row[column]
    for name in container.settings.customers:  # customers with nothing in the period
        groups.setdefault(name, {"name": name, "mapped": True, "domains": [], **dict.fromkeys(summed, 0)})
    rows = list(groups.values())
    for row in rows:
        row["spam_share"] = round(row["spam_messages"] / row["messages"], 4) if row["messages"] else 0.0
        row["bounce_rate"] = round(row["bounces"] / row["recipients"], 4) if row["recipients"] else 0.0
        row["complaint_rate"] = round(row["complaints"] / row["recipients"], 4) if row["recipients"] else 0.0
        key = "customer" if row["mapped"] else "domain"
        row["link"] = "/dashboard/accounts?" + urlencode({key: row["name"]})
        row["at_risk"] = _at_risk(row)
    rows.sort(key=lambda r: (-r["spam_messages"], -r["messages"], r["name"]))
    return page("groups.html.j2", request, title="Customers", kind="customer", rows=rows, period=period)


# -- the relay and client-IP picture


@console_router.get("/network")
async def network_page(
    request: Request,
    container: ContainerDep,
    days: float = 7.0,
    relay: str | None = Query(default=None, max_length=128),
) -> HTMLResponse:
    period = await _period(container, days)
    hold, now, relay = container.settings.hold_threshold, time.time(), _blank(relay)

    def read(connection: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        relays = relay_totals(connection, period.start, period.end, now, hold)
        ips = client_ip_totals(connection, period.start, period.end, now, hold, relay, IP_ROWS)
        return relays, ips

    relays, ips = await container.database.read(read)
    for row in relays + ips:
        row["at_risk"] = _at_risk(row)
    ips.sort(key=lambda r: (not r["at_risk"], -r["spam_messages"], -r["messages"]))
    return page("network.html.j2", request, relays=relays, ips=ips, period=period, relay=relay)


# -- acting on one account or message, after a confirmation


async def _known(container: Container, key: AccountKey) -> bool:
    """As the API judges it: a lock of an account it has never seen needs `force` (409 without)."""
    return await account_seen(container, key)


@console_router.get("/confirm")
async def confirm_page(
    request: Request,
    container: ContainerDep,
    relay: Annotated[str, Query(min_length=1, max_length=128)],
    account: Annotated[str, Query(min_length=1, max_length=998)],
    action: Annotated[str, Query(max_length=32)],
    message_id: Annotated[str | None, Query(max_length=998)] = None,
    next: Annotated[str | None, Query(max_length=4_000)] = None,
) -> HTMLResponse:
    key = AccountKey(relay, account)
    if message_id is not None:
        if action not in MESSAGE_LABELS:
            raise Forbidden(f"a message is labelled spam or ham, not {action!r}")
        button, effect = MESSAGE_LABELS[action]
    elif action in ACCOUNT_ACTIONS:
        button, effect, _ = ACCOUNT_ACTIONS[action]
    else:
        raise Forbidden(f"the dashboard cannot {action!r} an account")
    unseen = action == "lock" and message_id is None and not await _known(container, key)
    state = await container.accounts.get(key)
    return _confirmation(request, key, action, button, effect, state, unseen, message_id, next)


def _confirmation(
    request: Request,
    key: AccountKey,
    action: str,
    button: str,
    effect: str,
    state: AccountState,
    unseen: bool,
    message_id: str | None,
    back: str | None,
    reason: str = "",
) -> HTMLResponse:
    target = "/dashboard/messages/label" if message_id else f"{account_url(key.relay, key.account)}/{action}"
    return page(
        "confirm.html.j2",
        request,
        key=key,
        action=action,
        button=button,
        effect=effect,
        state=state,
        unseen=unseen,
        message_id=message_id,
        target=target,
        back=back_to(back, account_url(key.relay, key.account)),
        reason=reason,
    )


def who(actor: str, model: type[BaseModel]) -> dict[str, str]:
    """The actor the operator typed; none lets the API name the token (where its model allows none)."""
    if actor.strip():
        return {"actor": actor.strip()}
    return {"actor": "dashboard"} if model.model_fields["actor"].is_required() else {}


async def act_on_account(
    request: Request, key: AccountKey, action: str, reason: str, actor: str, force: bool
) -> ApiAnswer:
    """One account action through the API, as the logged-in operator."""
    why = reason.strip() or f"{action} from the dashboard"
    if action in ("compromised", "clean"):
        label = {"target": "account", "label": action, "relay": key.relay, "account": key.account, "reason": why}
        return await call_api(request, "POST", "/v1/labels", label | who(actor, LabelIn))
    body: dict[str, Any] = {"reason": why, **who(actor, AdminAction)}
    if action == "lock" and force:
        body["force"] = True  # the operator confirmed an account never seen
    if action in ("allowlist", "unallowlist"):
        body["allowlisted"] = action == "allowlist"
        action = "allowlist"
    return await call_api(request, "POST", api_path("accounts", key.relay, key.account, action), body)


def failed(request: Request, answer: ApiAnswer, what: str) -> HTMLResponse:
    """The API refused: say why on a page, with the API's status (never a 500 of the dashboard's own)."""
    return page("failed.html.j2", request, status_code=answer.status, what=what, answer=answer)


async def account_action(
    request: Request,
    container: Container,
    key: AccountKey,
    action: str,
    reason: str,
    actor: str,
    force: bool,
    back: str | None,
) -> Response:
    same_origin(request)
    if action not in ACCOUNT_ACTIONS:
        raise Forbidden(f"the dashboard cannot {action!r} an account")
    if action == "lock" and not force and not await _known(container, key):
        # Never seen: most likely a typo. Ask, and lock only with `force`.
        button, effect, _ = ACCOUNT_ACTIONS[action]
        state = await container.accounts.get(key)
        return _confirmation(request, key, action, button, effect, state, True, None, back, reason)
    answer = await act_on_account(request, key, action, reason, actor, force)
    if answer.status == 409 and action == "lock" and not force:  # the API has never seen it either
        button, effect, _ = ACCOUNT_ACTIONS[action]
        state = await container.accounts.get(key)
        return _confirmation(request, key, action, button, effect, state, True, None, back, reason)
    if not answer.ok:
        return failed(request, answer, f"{ACCOUNT_ACTIONS[action][0]} {key.relay}/{key.account}")
    done = ACCOUNT_ACTIONS[action][2]
    if back and back_to(back, "") and urlsplit(back).path != account_url(key.relay, key.account):
        return RedirectResponse(with_query(back, flash=f"{key.relay}/{key.account} {done}."), status_code=303)
    return RedirectResponse(f"{account_url(key.relay, key.account)}?{urlencode({'done': done})}", status_code=303)


@console_router.post("/messages/label")
async def label_message(
    request: Request,
    relay: Annotated[str, Form(min_length=1, max_length=128)],
    account: Annotated[str, Form(min_length=1, max_length=998)],
    message_id: Annotated[str, Form(min_length=1, max_length=998)],
    label: Annotated[str, Form(max_length=8)],
    reason: Annotated[str, Form(max_length=2_000)] = "",
    actor: Annotated[str, Form(max_length=256)] = "",
    next: Annotated[str | None, Form(max_length=4_000)] = None,
) -> Response:
    same_origin(request)
    if label not in MESSAGE_LABELS:
        raise Forbidden(f"a message is labelled spam or ham, not {label!r}")
    body = {
        "target": "message",
        "label": label,
        "message_id": message_id,
        "relay": relay,
        "reason": reason.strip() or f"{label} from the dashboard",
        **who(actor, LabelIn),
    }
    answer = await call_api(request, "POST", "/v1/labels", body)
    if not answer.ok:
        return failed(request, answer, f"Label {message_id} {label}")
    flash = f"{message_id} labelled {label}."
    return RedirectResponse(with_query(back_to(next, "/dashboard/log"), flash=flash), status_code=303)


# -- bulk actions


class BulkAccount(BaseModel):
    model_config = ConfigDict(extra="forbid")

    relay: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    account: Annotated[str, StringConstraints(min_length=1, max_length=998)]


class BulkIn(BaseModel):
    """The selected rows and what to do with them; `dry_run` says what would change without changing it."""

    model_config = ConfigDict(extra="forbid")

    action: Annotated[str, StringConstraints(max_length=16)]
    accounts: list[BulkAccount] = Field(min_length=1, max_length=BULK_MAX)
    reason: Annotated[str, StringConstraints(max_length=2_000)] = ""
    actor: Annotated[str, StringConstraints(max_length=256)] = ""
    dry_run: bool = True


@console_router.post("/api/bulk")
async def bulk(request: Request, body: BulkIn) -> Response:
    """The selection, relay by relay, through `POST /v1/accounts/{relay}/bulk` (one audited operation each)."""
    same_origin(request)
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise Forbidden("bulk actions are sent as JSON by the dashboard's own page")
    if body.action not in BULK_ACTIONS:
        raise InvalidInput(f"action is one of {', '.join(BULK_ACTIONS)}")
    by_relay: dict[str, list[str]] = {}
    for item in body.accounts:
        by_relay.setdefault(item.relay, [])
        if item.account not in by_relay[item.relay]:
            by_relay[item.relay].append(item.account)
    results = []
    for relay, names in by_relay.items():
        request_body = {
            "action": body.action,
            "accounts": names,
            "reason": body.reason.strip() or f"{body.action} from the dashboard (bulk)",
            "dry_run": body.dry_run,
            **({"actor": body.actor.strip()} if body.actor.strip() else {}),
        }
        answer = await call_api(request, "POST", api_path("accounts", relay, "bulk"), request_body)
        results.append(
            {
                "relay": relay,
                "accounts": len(names),
                "status": answer.status,
                "ok": answer.ok,
                "summary": summarise(answer),
                "result": answer.body,
            }
        )
    return json_response(
        {"action": body.action, "dry_run": body.dry_run, "ok": all(r["ok"] for r in results), "relays": results}
    )


def summarise(answer: ApiAnswer) -> str:
    """One line on a bulk answer: what changed (or would), what was left alone, the operation to read back."""
    if not answer.ok:
        return f"refused ({answer.status}): {answer.detail}"
    body = answer.body if isinstance(answer.body, dict) else {}
    verb = "would change" if body.get("dry_run") else "changed"
    parts = [f"{verb}: {body.get('changed', 0)}", f"already so: {body.get('unchanged', 0)}"]
    if body.get("unseen"):
        parts.append(f"never seen (skipped): {body['unseen']}")
    if body.get("operation_id"):
        parts.append(f"operation {body['operation_id']}")
    return "; ".join(parts)


# -- identity rules


@console_router.get("/rules")
async def rules_page(
    request: Request, relay: Annotated[str, Query(min_length=1, max_length=128)] = "default"
) -> HTMLResponse:
    answer = await call_api(request, "GET", api_path("identity-rules", relay))
    if not answer.ok:
        return failed(request, answer, f"Read the identity rules of {relay}")
    rules_text = orjson.dumps(answer.body["rules"], option=orjson.OPT_INDENT_2).decode()
    return page("rules.html.j2", request, relay=relay, listing=answer.body, rules_text=rules_text, sample={})


@console_router.post("/rules")
async def rules_change(
    request: Request,
    relay: Annotated[str, Form(min_length=1, max_length=128)],
    do: Annotated[str, Form(max_length=16)],
    rules: Annotated[str, Form(max_length=200_000)] = "[]",
    actor: Annotated[str, Form(max_length=256)] = "",
    raw: Annotated[str, Form(max_length=1_000_000)] = "",
    sasl_username: Annotated[str, Form(max_length=998)] = "",
    account: Annotated[str, Form(max_length=998)] = "",
) -> Response:
    """`do`: dry-run (the candidate rules on a sample message), save, or reset (the defaults)."""
    same_origin(request)
    sample = {"raw": raw, "sasl_username": sasl_username, "account": account}
    current = await call_api(request, "GET", api_path("identity-rules", relay))
    if not current.ok:
        return failed(request, current, f"Read the identity rules of {relay}")
    error, dry_run = None, None
    try:
        candidate = orjson.loads(rules)
        if not isinstance(candidate, list):
            raise ValueError("the rules are a JSON list of rules")
    except ValueError as exc:
        candidate, error = None, f"The rules are not valid JSON: {exc}"
    if error is None and do == "save":
        answer = await call_api(
            request, "PUT", api_path("identity-rules", relay), {"rules": candidate, **who(actor, RulesIn)}
        )
        if answer.ok:
            return RedirectResponse(
                "/dashboard/rules?" + urlencode({"relay": relay, "flash": f"The rules of {relay} are saved."}),
                status_code=303,
            )
        error = f"Not saved ({answer.status}): {answer.detail}"
    elif do == "reset":
        answer = await call_api(request, "DELETE", api_path("identity-rules", relay))
        if answer.ok:
            return RedirectResponse(
                "/dashboard/rules?" + urlencode({"relay": relay, "flash": f"{relay} uses the default rules again."}),
                status_code=303,
            )
        error = f"Not reset ({answer.status}): {answer.detail}"
    elif error is None and do == "dry-run":
        if not raw.strip():
            error = "Paste a sample message (its headers at least) to try the rules on."
        else:
            message = {"message_id": "<dry-run@dashboard>", "relay": relay, "raw": raw}
            message |= {k: v.strip() for k, v in (("sasl_username", sasl_username), ("account", account)) if v.strip()}
            answer = await call_api(
                request, "POST", api_path("identity-rules", relay, "dry-run"), {"message": message, "rules": candidate}
            )
            if answer.ok:
                dry_run = answer.body
            else:
                error = f"The dry run was refused ({answer.status}): {answer.detail}"
    elif do not in ("save", "dry-run", "reset"):
        raise InvalidInput("do is dry-run, save or reset")
    return page(
        "rules.html.j2",
        request,
        status_code=422 if error and do != "reset" else 200,
        relay=relay,
        listing=current.body,
        rules_text=rules,
        sample=sample,
        error=error,
        dry_run=dry_run,
    )


# -- the audit log


@console_router.get("/audit")
async def audit_page(
    request: Request,
    relay: LogText = None,
    account: LogText = None,
    actor: LogText = None,
    action: LogText = None,
    principal: LogText = None,
    cursor: int | None = Query(default=None, ge=1),
) -> HTMLResponse:
    """`GET /v1/audit`, as the logged-in operator: every change to an account, who made it, newest first."""
    filters = {
        "relay": _blank(relay),
        "account": _blank(account),
        "actor": _blank(actor),
        "action": _blank(action),
        "principal": _blank(principal),
    }
    query = {k: v for k, v in filters.items() if v is not None}
    answer = await call_api(request, "GET", "/v1/audit", params=query | ({"cursor": cursor} if cursor else {}))
    if not answer.ok:
        return failed(request, answer, "Read the audit log")
    return page(
        "audit.html.j2",
        request,
        entries=answer.body.get("entries", []),
        filters=filters,
        older=urlencode(query | {"cursor": answer.body["next_cursor"]}) if answer.body.get("next_cursor") else None,
    )
