"""The account lifecycle: rate limits that tighten with risk, temporary locks that expire and add up."""

from __future__ import annotations

import pytest

from service.decision import Action, Decision
from service.lifecycle import (
    admin_allowlist,
    admin_lock,
    admin_reset,
    admin_unlock,
    after_decision,
    allowance_per_minute,
    expire_lock,
)
from service.settings import RelayPolicy
from service.stores import AccountState, AccountStatus

POLICY = RelayPolicy(rate_limit_per_minute=30, rate_limit_min_per_minute=1, rate_limit_burst=3, temporary_lock_s=600)
LOCK = Decision(Action.HOLD, 1.0, True)


def risky(risk: float) -> Decision:
    return Decision(Action.ACCEPT, risk, False)


def test_the_allowance_shrinks_as_risk_grows() -> None:
    assert allowance_per_minute(0.5, POLICY) == 30
    assert allowance_per_minute(0.75, POLICY) == pytest.approx(15.5)
    assert allowance_per_minute(1.0, POLICY) == 1


def test_a_risky_account_is_rate_limited_with_a_token_bucket() -> None:
    state = AccountState()
    actions = [after_decision(state, risky(0.9), "why", 1000.0 + i, POLICY)[0] for i in range(6)]
    assert state.status is AccountStatus.RATE_LIMITED
    assert actions[:3] == [Action.ACCEPT] * 3  # the burst
    assert Action.DEFER in actions[3:]  # then about 6.8 a minute at risk 0.9
    later, _ = after_decision(state, risky(0.9), "why", 1000.0 + 60, POLICY)
    assert later is Action.ACCEPT  # tokens came back


def test_rate_limit_is_lifted_with_hysteresis() -> None:
    state = AccountState()
    after_decision(state, risky(0.6), "why", 0.0, POLICY)
    after_decision(state, risky(0.3), "why", 1.0, POLICY)
    assert state.status is AccountStatus.RATE_LIMITED  # 0.3 is not below half of 0.5
    _, [lifted] = after_decision(state, risky(0.2), "why", 2.0, POLICY)
    assert (lifted.action, state.status) == ("rate_limit_lifted", AccountStatus.ACTIVE)


def test_temporary_locks_expire_and_the_third_is_permanent() -> None:
    state = AccountState()
    for n in (1, 2):
        _, [locked] = after_decision(state, LOCK, "spam run", n * 10_000.0, POLICY)
        assert (locked.action, state.status, state.temporary_locks) == (
            "locked_temporary",
            AccountStatus.LOCKED_TEMPORARY,
            n,
        )
        assert expire_lock(state, n * 10_000.0 + 599) is None
        assert expire_lock(state, n * 10_000.0 + 600).action == "lock_expired"
        assert state.status is AccountStatus.ACTIVE
    _, [permanent] = after_decision(state, LOCK, "spam run", 30_000.0, POLICY)
    assert (permanent.action, state.status, state.locked_until) == ("locked", AccountStatus.LOCKED, None)
    assert expire_lock(state, 10**12) is None


def test_auto_lock_off_for_a_relay() -> None:
    state = AccountState()
    _, transitions = after_decision(state, LOCK, "spam", 0.0, POLICY.model_copy(update={"auto_lock": False}))
    assert not state.locked
    assert [t.action for t in transitions] == ["rate_limited"]


def test_allowlisted_accounts_are_never_limited_or_locked() -> None:
    state = AccountState()
    admin_allowlist(state, True, "ops", "our newsletter", 0.0)
    assert after_decision(state, LOCK, "spam", 1.0, POLICY) == (Action.HOLD, [])
    assert state.status is AccountStatus.ACTIVE


def test_admin_actions() -> None:
    state = AccountState(evidence=7.0, temporary_locks=2)
    assert admin_lock(state, "ops", "ticket", 0.0, None).status is AccountStatus.LOCKED
    unlocked = admin_unlock(state, "ops", "password reset", 1.0)
    assert (unlocked.previous, state.status, state.evidence) == (AccountStatus.LOCKED, AccountStatus.ACTIVE, 0.0)
    assert state.temporary_locks == 2  # unlocking forgives, it does not forget
    admin_reset(state, "ops", "new owner", 2.0)
    assert state.temporary_locks == 0
    admin_lock(state, "ops", "cool down", 3.0, 900)
    assert (state.status, state.locked_until) == (AccountStatus.LOCKED_TEMPORARY, 903.0)
