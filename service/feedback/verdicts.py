"""What an admin verdict does to the account decision, beyond becoming a training label.

A message called spam adds a full message's worth of evidence to its account, one
called ham takes it away; an account called compromised is recommended for locking at
once (and locked by its next message where the relay auto-locks), one called clean
starts over and is unlocked.
"""

from __future__ import annotations

from service.decision import DecisionPolicy
from service.lifecycle import Transition, admin_unlock
from service.stores import AccountKey, AccountState, AccountStateStore, AccountStatus, Label, Verdict


async def apply_verdict(
    label: Label, accounts: AccountStateStore, policy: DecisionPolicy, at: float
) -> tuple[AccountKey | None, AccountState | None, list[Transition]]:
    """Apply the verdict; return the lifecycle changes it made, for the caller to record."""
    if label.account is None or label.relay is None:
        return None, None, []  # a message this service never scored: a label, nothing more
    key = AccountKey(label.relay, label.account)

    def apply(state: AccountState) -> list[Transition]:
        if label.label is Verdict.SPAM:
            state.evidence += policy.message_evidence_max
        elif label.label is Verdict.HAM:
            state.evidence = max(0.0, state.evidence - policy.message_evidence_max)
        elif label.label is Verdict.COMPROMISED:
            state.evidence = max(state.evidence, policy.lock_threshold)
        transitions = []
        if label.label is Verdict.CLEAN:
            state.evidence = 0.0
            if state.locked or state.status is not AccountStatus.ACTIVE:
                transitions.append(admin_unlock(state, label.actor, f"verdict clean: {label.reason}", at))
        return transitions

    state, transitions = await accounts.update(key, apply)
    return key, state, transitions
