"""What an admin verdict does to the account decision, beyond becoming a training label.

A message called spam adds a full message's worth of evidence to its account, one
called ham takes it away; an account called compromised is recommended for locking at
once, one called clean starts over.
"""

from __future__ import annotations

from service.decision import DecisionPolicy
from service.stores import AccountKey, AccountStateStore, Label, Verdict


async def apply_verdict(label: Label, accounts: AccountStateStore, policy: DecisionPolicy) -> None:
    if label.account is None or label.relay is None:
        return  # a message this service never scored: a label, nothing more
    key = AccountKey(label.relay, label.account)
    state = await accounts.get(key)
    if label.label is Verdict.SPAM:
        state.evidence += policy.evidence_clip
    elif label.label is Verdict.HAM:
        state.evidence = max(0.0, state.evidence - policy.evidence_clip)
    elif label.label is Verdict.COMPROMISED:
        state.evidence = max(state.evidence, policy.lock_threshold)
    elif label.label is Verdict.CLEAN:
        state.evidence = 0.0
    await accounts.put(key, state)
