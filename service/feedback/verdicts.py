"""What an admin verdict does to the account decision, beyond becoming a training label.

A message called spam adds a full message's worth of evidence to its account, one
called ham takes it away; an account called compromised is recommended for locking at
once (and locked by its next message where the relay auto-locks), even a new one with
nothing else to corroborate it. One called clean starts over, is unlocked, and has its
templates vouched for: they become known-good, so the same mail does not lock it again,
and the signatures learned from its own automatic locks that are copies of them are
taken down (`signatures_to_take_down`, also used by an admin's unlock).
"""

from __future__ import annotations

from service.decision import DecisionPolicy
from service.fingerprints.service import FingerprintService
from service.lifecycle import Transition, admin_unlock, admin_vouch
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
            state.compromised_verdict = True
        if label.label is not Verdict.CLEAN:
            return []
        state.evidence = 0.0
        reason = f"verdict clean: {label.reason}"
        if state.locked or state.status is not AccountStatus.ACTIVE:
            return [admin_unlock(state, label.actor, reason, at)]
        return [admin_vouch(state, label.actor, reason, at)]

    state, transitions = await accounts.update(key, apply)
    return key, state, transitions


def signatures_to_take_down(
    fingerprints: FingerprintService | None, transitions: list[Transition], templates: str
) -> list[int]:
    """Of the signatures learned from the account's own locks, those that are copies of its templates.

    Written into the vouching transition's details first, so that the audit log says
    which signatures the admin's word took down.
    """
    vouching = [t for t in transitions if "lock_signatures" in t.details]
    if fingerprints is None or not vouching:
        return []
    learned = [i for t in vouching for i in t.details["lock_signatures"]]
    matching = fingerprints.lock_signatures_matching(learned, templates)
    for transition in vouching:
        transition.details["signatures_removed"] = matching
    return matching
