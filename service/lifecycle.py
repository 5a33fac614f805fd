"""The account lifecycle: active -> rate_limited -> locked_temporary -> locked.

Pure functions over `AccountState`; each returns the `Transition`s it made, which the
caller records in the audit log (durably) and announces to webhooks.

- **rate_limited** at `rate_limit_risk`: a token bucket whose rate shrinks linearly
  from `rate_limit_per_minute` at that risk to `rate_limit_min_per_minute` at risk 1;
  a message without a token is deferred. Back to active below half that risk.
- **locked_temporary** when a lock is recommended and the relay auto-locks: for
  `temporary_lock_s`, counted; the lock expires at the first message after it.
- **locked** (permanent) at the `permanent_after`-th automatic lock, or by an admin.
- Allowlisted accounts are scored and reported but never rate-limited or auto-locked.
- An admin who unlocks with a reason, or calls the account clean, vouches for its mail:
  every template it has sent becomes known-good (`service.decision`: their copies
  count only as ham), so the same mail does not lock it again. The transition's
  details carry how many templates (and the templates, which the ledger restores at
  start), and the signatures learned from its own locks, for the caller to take down
  those that are copies of them.

Times are message timestamps on the scoring path (replays are exact) and the wall
clock for admin actions.

No change takes effect before its record is committed (`service.stores.ledger`). An
admin's change is recorded first and then applied. A change the scoring path makes (a
rate limit or lock out of the decision, a temporary lock's expiry) is made on the state
and at once `hold_back`: the lifecycle fields go back to what they were and the change
waits in `AccountState.pending_change`, stored with the rest of the hot state in the
same read-change-write. The scorer then records it and, once committed, `take_pending`
applies it; while the database refuses the record, the change stays pending, the
account's mail is deferred, and its next message tries the record again. An admin's
lock, unlock, reset or allowlisting drops an automatic change still pending: the
admin's word is the newer one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from service.decision import Action, Decision
from service.fingerprints.templates import TemplateMemory
from service.settings import RelayPolicy
from service.stores import AccountState, AccountStatus

SYSTEM_ACTOR = "outguard"


@dataclass(frozen=True, slots=True)
class Transition:
    action: str  # rate_limited | locked_temporary | locked | unlocked | lock_expired | reset | allowlisted | ...
    previous: AccountStatus
    status: AccountStatus
    actor: str
    reason: str
    timestamp: float
    details: dict[str, Any] = field(default_factory=dict)


def _move(
    state: AccountState, status: AccountStatus, action: str, actor: str, reason: str, at: float, **details: Any
) -> Transition:
    previous = state.status
    state.status = status
    return Transition(action, previous, status, actor, reason, at, details)


def lock_has_expired(state: AccountState, at: float) -> bool:
    return (
        state.status is AccountStatus.LOCKED_TEMPORARY and state.locked_until is not None and at >= state.locked_until
    )


def expire_lock(state: AccountState, at: float) -> Transition | None:
    """A temporary lock whose time has come is lifted; the evidence starts over."""
    if lock_has_expired(state, at):
        state.locked_until = None
        state.evidence = 0.0
        return _move(state, AccountStatus.ACTIVE, "lock_expired", SYSTEM_ACTOR, "temporary lock expired", at)
    return None


def after_decision(
    state: AccountState, decision: Decision, risk_reason: str, at: float, policy: RelayPolicy
) -> tuple[Action, list[Transition]]:
    """Move the account on after one scored message; the message's action may tighten (rate limit)."""
    if state.allowlisted or state.locked:
        return decision.action, []
    transitions: list[Transition] = []
    risk = decision.account_risk
    if decision.lock_recommended and policy.auto_lock:
        state.temporary_locks += 1
        details = {"account_risk": risk, "evidence": state.evidence, "automatic_locks": state.temporary_locks}
        state.lock_reason = risk_reason
        if state.temporary_locks >= policy.permanent_after:
            state.locked_until = None
            transitions.append(_move(state, AccountStatus.LOCKED, "locked", SYSTEM_ACTOR, risk_reason, at, **details))
        else:
            state.locked_until = at + policy.temporary_lock_s
            details["locked_until"] = state.locked_until
            transitions.append(
                _move(
                    state, AccountStatus.LOCKED_TEMPORARY, "locked_temporary", SYSTEM_ACTOR, risk_reason, at, **details
                )
            )
        return decision.action, transitions
    if risk >= policy.rate_limit_risk and state.status is AccountStatus.ACTIVE:
        state.tokens, state.tokens_at = policy.rate_limit_burst, at
        transitions.append(
            _move(state, AccountStatus.RATE_LIMITED, "rate_limited", SYSTEM_ACTOR, risk_reason, at, account_risk=risk)
        )
    elif risk < policy.rate_limit_risk / 2 and state.status is AccountStatus.RATE_LIMITED:
        transitions.append(
            _move(state, AccountStatus.ACTIVE, "rate_limit_lifted", SYSTEM_ACTOR, "risk fell", at, account_risk=risk)
        )
    action = decision.action
    if state.status is AccountStatus.RATE_LIMITED and not take_token(state, risk, at, policy):
        action = max(action, Action.DEFER, key=_SEVERITY.index)
    return action, transitions


_SEVERITY = [Action.ACCEPT, Action.DEFER, Action.HOLD, Action.REJECT]


def allowance_per_minute(risk: float, policy: RelayPolicy) -> float:
    """The bucket's refill rate: full allowance at `rate_limit_risk`, the floor at risk 1."""
    span = max(1e-9, 1.0 - policy.rate_limit_risk)
    share = min(1.0, max(0.0, (risk - policy.rate_limit_risk) / span))
    return policy.rate_limit_per_minute - share * (policy.rate_limit_per_minute - policy.rate_limit_min_per_minute)


def take_token(state: AccountState, risk: float, at: float, policy: RelayPolicy) -> bool:
    """Spend one token of the account's rate-limit bucket if it has one (the scorer's and the policy gate's)."""
    tokens = policy.rate_limit_burst if state.tokens is None else state.tokens
    since = 0.0 if state.tokens_at is None else max(0.0, at - state.tokens_at)
    tokens = min(policy.rate_limit_burst, tokens + since * allowance_per_minute(risk, policy) / 60.0)
    state.tokens_at = max(at, state.tokens_at or at)
    if tokens >= 1.0:
        state.tokens = tokens - 1.0
        return True
    state.tokens = tokens
    return False


# -- admin actions (wall clock)


def admin_lock(state: AccountState, actor: str, reason: str, at: float, duration_s: int | None) -> Transition:
    state.lock_reason, state.pending_change = reason, ""
    if duration_s:
        state.locked_until = at + duration_s
        return _move(
            state,
            AccountStatus.LOCKED_TEMPORARY,
            "locked_temporary",
            actor,
            reason,
            at,
            locked_until=state.locked_until,
        )
    state.locked_until = None
    return _move(state, AccountStatus.LOCKED, "locked", actor, reason, at)


def admin_unlock(state: AccountState, actor: str, reason: str, at: float) -> Transition:
    """Unlocked, evidence starting over; with a reason, the admin also vouches for the account's templates."""
    state.locked_until, state.lock_reason, state.evidence, state.pending_change = None, None, 0.0, ""
    vouched = vouch_for_templates(state) if reason.strip() else {}
    return _move(state, AccountStatus.ACTIVE, "unlocked", actor, reason, at, **vouched)


def admin_vouch(state: AccountState, actor: str, reason: str, at: float) -> Transition:
    """A clean verdict on an account that is not locked: its templates become known-good all the same."""
    return _move(state, state.status, "vouched", actor, reason, at, **vouch_for_templates(state))


def vouch_for_templates(state: AccountState) -> dict[str, Any]:
    """Every remembered template known-good; the lock-learned signatures handed over (details for the audit log)."""
    memory = TemplateMemory.decode(state.templates)
    trusted = memory.trust_all()
    state.templates = memory.encode()
    lock_signatures, state.lock_signatures = list(state.lock_signatures), ()
    state.compromised_verdict = False
    # The templates themselves go to the audit log too: the ledger restores them at start.
    return {
        "templates_known_good": trusted,
        "lock_signatures": lock_signatures,
        "known_good_templates": state.templates,
    }


def admin_reset(state: AccountState, actor: str, reason: str, at: float) -> Transition:
    state.locked_until, state.lock_reason, state.evidence, state.pending_change = None, None, 0.0, ""
    state.temporary_locks, state.tokens, state.tokens_at = 0, None, None
    state.compromised_verdict = False
    return _move(state, AccountStatus.ACTIVE, "reset", actor, reason, at)


def admin_allowlist(state: AccountState, allowlisted: bool, actor: str, reason: str, at: float) -> Transition:
    state.allowlisted = allowlisted
    if allowlisted:  # never limited or locked: an automatic change still pending no longer applies
        state.pending_change = ""
    return _move(state, state.status, "allowlisted" if allowlisted else "unallowlisted", actor, reason, at)


# -- changes held back until their record is committed


# What a lifecycle change may touch on the state; `hold_back` puts these back.
LIFECYCLE_FIELDS = ("status", "locked_until", "temporary_locks", "lock_reason", "tokens", "tokens_at", "evidence")

_WORDS = {
    "locked_temporary": "temporary lock",
    "locked": "lock",
    "rate_limited": "rate limit",
    "rate_limit_lifted": "lifting of its rate limit",
    "lock_expired": "end of its temporary lock",
}
_LOCKS = ("locked_temporary", "locked")


def lifecycle_of(state: AccountState) -> dict[str, Any]:
    """The state's lifecycle fields, to `hold_back` a change made after this."""
    return {name: getattr(state, name) for name in LIFECYCLE_FIELDS}


def hold_back(state: AccountState, before: dict[str, Any], transitions: list[Transition]) -> None:
    """Undo what `transitions` changed since `before`, keeping the change as the state's pending one.

    Pure, like every function here: it may run again in a retried read-change-write.
    """
    if not transitions:
        return
    changes = {name: getattr(state, name) for name in LIFECYCLE_FIELDS if getattr(state, name) != before[name]}
    for name in changes:
        setattr(state, name, before[name])
    state.pending_change = orjson.dumps(
        {
            "changes": changes,
            "transitions": [
                {
                    "action": t.action,
                    "previous": t.previous.value,
                    "status": t.status.value,
                    "actor": t.actor,
                    "reason": t.reason,
                    "timestamp": t.timestamp,
                    "details": t.details,
                }
                for t in transitions
            ],
        }
    ).decode()


def expire_lock_held_back(state: AccountState, at: float) -> Transition | None:
    """`expire_lock`, held back for its record; None when not due, or when another change is pending first."""
    if state.pending_change:
        return None
    before = lifecycle_of(state)
    expired = expire_lock(state, at)
    hold_back(state, before, [expired] if expired is not None else [])
    return expired


def pending_target(state: AccountState) -> tuple[AccountState, list[Transition]]:
    """The account as it will be once its pending change is recorded (what the ledger stores), and the change."""
    data = orjson.loads(state.pending_change)
    target = replace(state, pending_change="")
    _apply(target, data["changes"])
    transitions = [
        Transition(
            t["action"],
            AccountStatus(t["previous"]),
            AccountStatus(t["status"]),
            t["actor"],
            t["reason"],
            t["timestamp"],
            t["details"],
        )
        for t in data["transitions"]
    ]
    return target, transitions


def take_pending(state: AccountState, recorded: str) -> bool:
    """The recorded change takes effect, unless it is no longer the pending one (an admin's word came between)."""
    if not recorded or state.pending_change != recorded:
        return False
    _apply(state, orjson.loads(recorded)["changes"])
    state.pending_change = ""
    return True


def _apply(state: AccountState, changes: dict[str, Any]) -> None:
    for name, value in changes.items():
        setattr(state, name, AccountStatus(value) if name == "status" else value)


def pending_locks(state: AccountState) -> bool:
    """Whether the change waiting for its record is a lock."""
    return bool(state.pending_change) and any(t.action in _LOCKS for t in pending_target(state)[1])


def unrecorded_description(state: AccountState) -> str:
    """Why the account's mail is deferred while its change waits for its record, in words."""
    actions = [t.action for t in pending_target(state)[1]] if state.pending_change else []
    what = " and ".join(_WORDS.get(action, action.replace("_", " ")) for action in actions) or "change"
    return (
        f"The account's {what} could not be recorded in the audit log yet (the database refused the write); "
        "it takes effect only once recorded, and the account's mail is deferred until then"
    )
