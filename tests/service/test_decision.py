"""The account decision: evidence per message, CUSUM per account, graduated actions."""

from __future__ import annotations

import math

import pytest

from service.decision import Action, DecisionPolicy, decide, message_evidence, update_account
from service.stores import AccountState

POLICY = DecisionPolicy(hold_threshold=0.99, reject_threshold=0.999, lock_threshold=9.2, evidence_clip=4.0)


def test_evidence_is_the_log_likelihood_ratio_at_equal_priors_clipped() -> None:
    assert message_evidence(0.5, 0.0, 4.0) == 0.0
    assert message_evidence(0.9, 0.0, 4.0) == pytest.approx(math.log(9))
    assert message_evidence(0.999999, 0.0, 4.0) == 4.0
    assert message_evidence(0.0, 0.0, 4.0) == -4.0


def test_cusum_never_goes_below_zero_and_ham_pulls_it_down() -> None:
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
        (0.9995, 9.2, Action.REJECT, True),  # extreme, from an account recommended for locking
        (0.995, 9.2, Action.HOLD, True),
        (0.2, 9.2, Action.DEFER, True),  # harmless-looking, from an account that is not
    ],
)
def test_graduated_actions(probability: float, evidence: float, action: Action, recommended: bool) -> None:
    decision = decide(probability, AccountState(evidence=evidence), POLICY)
    assert decision.action == action
    assert decision.lock_recommended is recommended
    assert decision.account_risk == pytest.approx(min(1.0, evidence / 9.2))


def test_three_clear_spam_messages_recommend_a_lock_two_do_not() -> None:
    state = AccountState()
    for _ in range(2):
        update_account(state, message_evidence(0.9999, 0.0, POLICY.evidence_clip), 0.0)
    assert not decide(0.9999, state, POLICY).lock_recommended
    update_account(state, message_evidence(0.9999, 0.0, POLICY.evidence_clip), 0.0)
    assert decide(0.9999, state, POLICY).lock_recommended
