"""Accounts over the API: their state, and the admin's lock, unlock, reset and allowlist.

Account names hold `@`, `/` and `(`: the URL takes them percent-encoded
(`/v1/accounts/default/33%3Awp-content%2Fx.php/lock`), and the path converter accepts
the slashes they decode to.

A lock of an account the service has never seen (no message scored in the retained log,
no status recorded) is refused with 409 unless the body says `force: true`: a typo
must not create an account. Without an `actor`, the token's name is the actor; the
audit entry records the token's name as its principal either way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import Connection

from features.engagement import engagement_features
from features.spec import FEATURE_INDEX
from service.api.auth import Principal, PrincipalDep
from service.api.common import ContainerDep, json_response
from service.api.routes import ERRORS
from service.api.schemas import Name
from service.container import Container
from service.decision import account_risk
from service.errors import OutguardError
from service.feedback.verdicts import signatures_to_take_down
from service.fingerprints.templates import remembered_templates
from service.lifecycle import Transition, admin_allowlist, admin_lock, admin_reset, admin_unlock
from service.reports.incident import IncidentSources, build_incident, render
from service.stores import AccountKey, AccountState, AccountStatus
from service.stores.database import mappings

accounts_router = APIRouter(prefix="/v1/accounts", tags=["accounts"], responses=ERRORS)
RelayPath = Annotated[Name, Path(min_length=1, max_length=128)]
AccountPath = Annotated[Name, Path(min_length=1, max_length=998)]
RECENT = 20
# The longest lock an admin may set for a while rather than for good: ten years (a
# permanent lock is the default); longer ones would end past any date a report can print.
MAX_LOCK_S = 10 * 365 * 86_400
INCIDENT_CONTENT = {
    200: {
        "description": "The report, as `format` asks",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/markdown": {"schema": {"type": "string"}},
            "text/html": {"schema": {"type": "string"}},
        },
    }
}


Actor = Annotated[Name, StringConstraints(min_length=1, max_length=256)]
Reason = Annotated[Name, StringConstraints(min_length=1, max_length=2000)]


class AccountNeverSeen(OutguardError):
    """A lock of an account the service has never seen (a typo?), without `force`."""

    status = 409
    code = "account_never_seen"


class AdminAction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    actor: Actor | None = Field(
        default=None,
        description="Who asks (a person, a ticket system); default: the token's name. The audit entry records "
        "the token's name as its principal either way",
    )
    reason: Reason

    def actor_for(self, principal: Principal) -> str:
        return self.actor or principal.name


class LockIn(AdminAction):
    duration_s: int | None = Field(
        default=None, ge=60, le=MAX_LOCK_S, description="A temporary lock, up to ten years; default: permanent"
    )
    force: bool = Field(
        default=False,
        description="Lock an account this service has never seen (no message scored, no status recorded); "
        "without it, such a lock is refused with 409, so a typo does not create an account",
    )


class AllowlistIn(AdminAction):
    allowlisted: bool = True


def state_json(state: AccountState, risk: float) -> dict[str, Any]:
    return {
        "status": state.status.value,
        "locked": state.locked,
        "locked_until": state.locked_until,
        "lock_reason": state.lock_reason,
        "automatic_locks": state.temporary_locks,
        "allowlisted": state.allowlisted,
        "account_risk": risk,
        "evidence_nats": round(state.evidence, 3),
        "messages_scored": state.messages_scored,
        "last_scored": state.last_scored,
        "templates": remembered_templates(state.templates),
    }


COUNTERS = (
    "acct_msgs_1m",
    "acct_msgs_1h",
    "acct_msgs_24h",
    "acct_rcpts_1h",
    "acct_rcpts_24h",
    "acct_rcpt_domains_1h",
    "acct_client_ips_1h",
    "acct_client_ips_24h",
)


async def recent_scores(
    container: Container, key: AccountKey, limit: int = RECENT
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The latest scores, and the account's windows as the latest scored message saw them."""

    def query(connection: Connection) -> tuple[list[dict[str, Any]], dict[str, float]]:
        rows = mappings(
            connection,
            "SELECT ts, message_id, spam_probability, account_risk, action, client_ip, features FROM scored_messages "
            "WHERE relay = :relay AND account = :account ORDER BY ts DESC LIMIT :limit",
            {"relay": key.relay, "account": key.account, "limit": limit},
        )
        vector = next((orjson.loads(r["features"]) for r in rows if r["features"]), None)
        counters = {name.removeprefix("acct_"): vector[FEATURE_INDEX[name]] for name in COUNTERS} if vector else {}
        for row in rows:
            del row["features"]
        return rows, counters

    return await container.database.read(query)


async def account_view(container: Container, key: AccountKey) -> dict[str, Any]:
    await container.events.flush()  # every message scored before this request is in the log
    state = await container.accounts.get(key)
    engagement = await container.engagement.snapshot(key)
    policy = container.scorer.policy
    risk = account_risk(state.evidence, policy.lock_threshold)
    history, (recent, counters) = await asyncio.gather(container.ledger.history(key), recent_scores(container, key))
    return {
        "relay": key.relay,
        "account": key.account,
        **state_json(state, risk),
        "engagement": {
            "recipients": round(engagement.recipients, 1) if engagement else 0.0,
            **{k: round(v, 4) for k, v in engagement_features(engagement).items() if k.endswith("_rate")},
        },
        "counters": counters,
        "recent_scores": recent,
        "lock_history": history,
    }


async def incident_report(container: Container, key: AccountKey) -> dict[str, Any]:
    sources = IncidentSources(
        database=container.database,
        accounts=container.accounts,
        engagement=container.engagement,
        ledger=container.ledger,
        model=container.model,
        hold_threshold=container.settings.hold_threshold,
        lock_threshold=container.settings.lock_threshold,
    )
    await container.events.flush()  # every message scored before this request is in the report
    return await build_incident(sources, key)


@accounts_router.get(
    "/{relay}/{account:path}/incident",
    summary="The incident report: what was seen, why it was locked, what to do next (JSON, Markdown or HTML)",
    responses=INCIDENT_CONTENT,
)
async def incident(
    relay: RelayPath,
    account: AccountPath,
    container: ContainerDep,
    format: Literal["json", "markdown", "html"] = Query(default="json"),
) -> Response:
    report = await incident_report(container, AccountKey(relay, account))
    if format == "json":
        return json_response(report)
    media = "text/markdown; charset=utf-8" if format == "markdown" else "text/html; charset=utf-8"
    return Response(render(report, format), media_type=media)


@accounts_router.get("/{relay}/{account:path}/lock-history", summary="The account's audit log, newest first")
async def lock_history(relay: RelayPath, account: AccountPath, container: ContainerDep) -> Response:
    return json_response(
        {
            "relay": relay,
            "account": account,
            "history": await container.ledger.history(AccountKey(relay, account), limit=1000),
        }
    )


async def change_account(
    container: Container, key: AccountKey, change: Callable[[AccountState, float], Transition]
) -> None:
    """An admin's change to an account (the API's and the dashboard's), audited before it takes effect.

    The audit entry's principal is the request's token (`service.stores.ledger.acting_principal`).
    """
    at = time.time()
    state = await container.accounts.get(key)
    transition = change(state, at)
    # An unlock with a reason vouches for the account's templates; the signatures its own
    # false lock taught are named in the audit entry and taken down after it.
    false_lock = signatures_to_take_down(container.fingerprints, [transition], state.templates)
    # Stored and audited before the answer; only then does scoring see it, applied to
    # the freshest state (another replica may have scored the account meanwhile).
    await container.scorer.apply_transitions(key, state, [transition])
    await container.accounts.update(key, lambda fresh: change(fresh, at))
    if false_lock and container.fingerprints is not None:
        await container.fingerprints.remove(false_lock, transition.actor, at)


def evidently_seen(state: AccountState) -> bool:
    """The hot state alone shows the account is known (the database may know it otherwise: `account_seen`)."""
    return bool(
        state.messages_scored
        or state.last_scored is not None
        or state.status is not AccountStatus.ACTIVE
        or state.allowlisted
        or state.temporary_locks
    )


async def account_seen(container: Container, key: AccountKey, state: AccountState | None = None) -> bool:
    """Whether the service knows the account: it scored its mail (in the retained log) or recorded a status."""
    state = state if state is not None else await container.accounts.get(key)
    if evidently_seen(state):
        return True
    await container.events.flush()  # a message scored just before is in the log
    return key.account in await container.ledger.seen(key.relay, [key.account])


def never_seen(key: AccountKey) -> AccountNeverSeen:
    return AccountNeverSeen(
        f"account {key.account!r} has never been seen on relay {key.relay!r} (no message scored, no status "
        "recorded): check its name, or send `force: true` to lock it anyway"
    )


async def _admin(
    container: Container, key: AccountKey, change: Callable[[AccountState, float], Transition]
) -> Response:
    await change_account(container, key, change)
    return json_response(await account_view(container, key))


@accounts_router.post(
    "/{relay}/{account:path}/lock",
    summary="Lock the account (permanent, or for duration_s); an account never seen needs force",
    responses={409: {"description": "The account has never been seen: check its name, or send force"}},
)
async def lock(
    relay: RelayPath, account: AccountPath, body: LockIn, container: ContainerDep, principal: PrincipalDep
) -> Response:
    key = AccountKey(relay, account)
    if not body.force and not await account_seen(container, key):
        raise never_seen(key)
    actor = body.actor_for(principal)
    return await _admin(container, key, lambda s, at: admin_lock(s, actor, body.reason, at, body.duration_s))


@accounts_router.post(
    "/{relay}/{account:path}/unlock",
    summary="Unlock the account; its evidence starts over and the templates it sent become known-good",
)
async def unlock(
    relay: RelayPath, account: AccountPath, body: AdminAction, container: ContainerDep, principal: PrincipalDep
) -> Response:
    actor = body.actor_for(principal)
    return await _admin(container, AccountKey(relay, account), lambda s, at: admin_unlock(s, actor, body.reason, at))


@accounts_router.post("/{relay}/{account:path}/reset", summary="Back to active, with no evidence and no lock count")
async def reset(
    relay: RelayPath, account: AccountPath, body: AdminAction, container: ContainerDep, principal: PrincipalDep
) -> Response:
    actor = body.actor_for(principal)
    return await _admin(container, AccountKey(relay, account), lambda s, at: admin_reset(s, actor, body.reason, at))


@accounts_router.post("/{relay}/{account:path}/allowlist", summary="Never auto-lock the account (still scored)")
async def allowlist(
    relay: RelayPath, account: AccountPath, body: AllowlistIn, container: ContainerDep, principal: PrincipalDep
) -> Response:
    actor = body.actor_for(principal)
    return await _admin(
        container,
        AccountKey(relay, account),
        lambda s, at: admin_allowlist(s, body.allowlisted, actor, body.reason, at),
    )


@accounts_router.get("/{relay}/{account:path}", summary="The account: state, risk, engagement, recent scores, locks")
async def get_account(relay: RelayPath, account: AccountPath, container: ContainerDep) -> Response:
    return json_response(await account_view(container, AccountKey(relay, account)))
