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

from collections.abc import Awaitable, Callable

from service.decision import DecisionPolicy
from service.fingerprints.service import FingerprintService
from service.lifecycle import Transition, admin_unlock, admin_vouch
from service.stores import AccountKey, AccountState, AccountStateStore, AccountStatus, Label, Verdict

RecordTransitions = Callable[[AccountKey, AccountState, list[Transition]], Awaitable[None]]


def verdict_change(label: Label, policy: DecisionPolicy) -> Callable[[AccountState, float], list[Transition]]:
    """The verdict as a change to an account's state; it returns the lifecycle changes it made."""

    def change(state: AccountState, at: float) -> list[Transition]:
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

    return change


async def apply_verdict(
    label: Label, accounts: AccountStateStore, policy: DecisionPolicy, at: float, record: RecordTransitions
) -> tuple[AccountKey | None, AccountState | None, list[Transition]]:
    """Apply the verdict; a lifecycle change (a clean verdict's unlock or vouching) is
    `record`ed before it takes effect, so a refused write changes nothing."""
    if label.account is None or label.relay is None:
        return None, None, []  # a message this service never scored: a label, nothing more
    key = AccountKey(label.relay, label.account)
    change = verdict_change(label, policy)
    if label.label is not Verdict.CLEAN:  # evidence only: no lifecycle change, nothing to audit
        state, _ = await accounts.update(key, lambda s: change(s, at))
        return key, state, []
    preview = await accounts.get(key)
    transitions = change(preview, at)
    await record(key, preview, transitions)
    # Applied to the freshest state: another replica may have scored the account meanwhile.
    state, _ = await accounts.update(key, lambda fresh: change(fresh, at))
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
