"""The account decision: mixture evidence per message, CUSUM per account, a derived threshold, graduated actions."""

from __future__ import annotations

import math

import pytest

from service.decision import (
    Action,
    DecisionPolicy,
    decide,
    lock_threshold_for,
    message_evidence,
    update_account,
)
from service.stores import AccountState

THRESHOLD = lock_threshold_for(0.5, 20.0)
POLICY = DecisionPolicy(hold_threshold=0.99, reject_threshold=0.999, lock_threshold=THRESHOLD)


def test_the_threshold_follows_from_the_target_false_lock_rate() -> None:
    assert pytest.approx(math.log(40_000)) == THRESHOLD
    assert lock_threshold_for(0.05, 20.0) == pytest.approx(THRESHOLD + math.log(10))  # ten times fewer: +ln 10


def test_one_message_adds_at_most_log_pi_over_eps_and_ham_takes_little() -> None:
    assert message_evidence(0.5, 0.0, POLICY) == pytest.approx(0.0)
    assert message_evidence(0.999999, 0.0, POLICY) == pytest.approx(math.log(0.3 / 0.01), abs=1e-3)
    assert message_evidence(1e-6, 0.0, POLICY) == pytest.approx(math.log(0.7 / 0.99), abs=1e-4)


def test_a_slow_drip_among_the_owners_mail_still_adds_up() -> None:
    state = AccountState()
    for n in range(12):  # one spam message for every two of the owner's
        probability = 0.9999 if n % 3 == 0 else 0.001
        update_account(state, message_evidence(probability, 0.0, POLICY), float(n))
    assert decide(0.001, state, POLICY).lock_recommended


def test_four_clear_spam_messages_recommend_a_lock_three_do_not() -> None:
    state = AccountState()
    for _ in range(3):
        update_account(state, message_evidence(0.9999, 0.0, POLICY), 0.0)
    assert not decide(0.9999, state, POLICY).lock_recommended
    update_account(state, message_evidence(0.9999, 0.0, POLICY), 0.0)
    assert decide(0.9999, state, POLICY).lock_recommended


def test_cusum_never_goes_below_zero() -> None:
    state = AccountState()
    for evidence in (3.0, 3.0, -4.0, -4.0, -4.0):
        update_account(state, evidence, 0.0)
    assert state.evidence == 0.0
    assert state.messages_scored == 5


@pytest.mark.parametrize(
    ("probability", "evidence", "action", "recommended"),
    [
        (0.2, 0.0, Action.ACCEPT, False),
        (0.995, 0.0, Action.HOLD, False),  # extreme, but the account is clean: held, not bounced
        (0.9995, 0.0, Action.HOLD, False),
        (0.9995, THRESHOLD, Action.REJECT, True),  # extreme, from an account recommended for locking
        (0.995, THRESHOLD, Action.HOLD, True),
        (0.2, THRESHOLD, Action.DEFER, True),  # harmless-looking, from an account that is not
    ],
)
def test_graduated_actions(probability: float, evidence: float, action: Action, recommended: bool) -> None:
    decision = decide(probability, AccountState(evidence=evidence), POLICY)
    assert decision.action == action
    assert decision.lock_recommended is recommended
    assert decision.account_risk == pytest.approx(min(1.0, evidence / THRESHOLD))
