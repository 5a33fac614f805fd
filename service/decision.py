"""From a message's spam probability to an action, and the account's running evidence.

Per message: the calibrated probability gives the likelihood ratio LR of spam against
ham (the probabilities are calibrated at equal priors, so LR is the odds). The
account-level question is not "is this message spam" but "is this account
compromised": a compromised account sends spam with share `compromised_spam_share`
(pi) among its owner's mail, a clean one spam-looking mail with share
`clean_spam_share` (eps). The message's evidence is the log-likelihood ratio of those
two mixtures, log((pi LR + 1 - pi) / (eps LR + 1 - eps)): at most log(pi/eps) for the
clearest spam, and only log((1-pi)/(1-eps)) for clear ham, so the owner's own mail
cannot hide a slow drip of spam. Per account: a CUSUM of that evidence,
S = max(0, S + llr), recommended for locking when S reaches `lock_threshold`. CUSUM's
average run length to a false alarm is about e^h messages, so the threshold follows from
a target false-lock rate: h = ln(messages per account-day * 1000 / target per 1,000
account-days).
Feedback adds the engagement log-likelihood ratio (`features.engagement`): bounces to
invalid recipients and complaints raise it, deliveries and replies lower it.
`account_risk` is the total as a share of the lock threshold.

Repeated content is one piece of evidence, not N. The CUSUM assumes messages are
independent evidence; copies of one template are not (the model's error on a template
repeats on every copy), so a shop sending its order confirmation to forty customers
would otherwise be locked for the model's one mistake, forty times over. Each account
remembers its templates (`service.fingerprints.templates`: near-copies share at least
8 of 24 compact MinHash values, measured there), and a message's evidence (`llr`) counts
by the standing of its content (`standing_of`, `counted_evidence`):

- a copy of a template that is the account's normal, first seen at least
  `baseline_age_s` (24 h) before it, or vouched for by an admin (known-good): only
  min(0, llr). It is what the account always sends.
- a copy of a template while the account is NEW (first seen less than
  `baseline_age_s` ago, or fewer than `established_min_messages` (10) messages scored)
  and nothing in its behaviour corroborates spam: ham counts, spam only by how far it
  exceeds the template's highest evidence so far (`peak`), so one template is at most
  one piece of evidence (log(pi/eps) = 3.4 nats), below the lock threshold.
- a copy of a template that is new (first seen within `baseline_age_s`) from an
  ESTABLISHED account, or from a new account whose behaviour corroborates spam: full
  llr per copy. A hijack is a change from the account's own baseline, and a run of one
  spam through a new account that is also spraying recipients is a run.
- content matching no template, or too short to fingerprint: full llr, and it becomes
  a new template (the least recently seen of 16 is forgotten).

Cold start: a NEW account is never recommended for locking on content evidence alone;
a lock also needs corroboration (`corroboration`): engagement evidence of at least
`corroborating_engagement` (1 nat: invalid recipients, hard bounces, complaints), at
least `corroborating_recipients_1h` (100) recipients, `corroborating_domains_1h` (20)
distinct recipient domains or `corroborating_client_ips_1h` (5) client addresses (a
password used from many places) in the last hour, a near-copy of known spam, a
spam-like campaign that is active, or an admin's `compromised` verdict. Established
accounts need none.

Known spam counts on its own: a near-copy (similarity >= `known_spam_min_similarity`,
0.6) of a signature in the known-spam database has its probability raised to
`known_spam_probability` (0.995, over the hold threshold: it is held), worth
log((0.3*199 + 0.7) / (0.01*199 + 0.99)) = 3.0 nats, unless the content is a template
the account has as known-good. The standings above then apply to that evidence.

Malware counts at once: a message in which clamd found malware (`service.scanning`) is
rejected whatever its score, corroborates a new account, and adds `malware_evidence`
(the lock threshold plus the engagement credit, 14.6 nats) instead of its content's own
evidence when that is lower, so one detection recommends a lock whatever the account's
history and engagement; an allowlisted account gets no such evidence.

Actions, mildest first: accept; defer (temporary failure, the relay retries) when the
account is recommended for locking but this message is not spam-like; hold (quarantine)
for a message over `hold_threshold`; reject for a message over `reject_threshold` from
an account recommended for locking, and for a message carrying malware.

The rule, with its numbers and the measurements behind them, is in docs/decision.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from service.fingerprints.templates import TemplateMatch, TemplateMemory
from service.stores import AccountState


class Action(StrEnum):
    ACCEPT = "accept"
    DEFER = "defer"
    HOLD = "hold"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class DecisionPolicy:
    hold_threshold: float
    reject_threshold: float
    lock_threshold: float
    compromised_spam_share: float = 0.3
    clean_spam_share: float = 0.01
    engagement_credit: float = 4.0
    # Templates and the cold start (see the module docstring and docs/decision.md).
    baseline_age_s: float = 86_400.0
    established_min_messages: int = 10
    corroborating_engagement: float = 1.0
    # One invalid recipient among a new account's first few is a typo as often as a
    # spam run (2.7 nats at the model's rates): engagement corroborates from two on.
    corroborating_bad_outcomes: float = 2.0
    corroborating_recipients_1h: float = 100.0
    corroborating_domains_1h: float = 20.0
    corroborating_client_ips_1h: float = 5.0
    # Known spam: a near-copy of a signature is held however the model scored it.
    known_spam_probability: float = 0.995
    known_spam_min_similarity: float = 0.6

    @property
    def message_evidence_max(self) -> float:
        """The most one message can add: log(pi / eps)."""
        return math.log(self.compromised_spam_share / self.clean_spam_share)


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    account_risk: float
    lock_recommended: bool


class Standing(StrEnum):
    """How a message's content stands in its account's own history: what its evidence counts for."""

    NEW_CONTENT = "new_content"  # matches no template (or has no fingerprint): full evidence, remembered
    NORMAL = "normal"  # a template of the account's baseline, or known-good: only evidence for ham
    REPEAT = "repeat"  # a template of a new, uncorroborated account: only what exceeds its peak
    NEW_TEMPLATE = "new_template"  # a recent template of an established or corroborated account: full evidence


@dataclass(frozen=True, slots=True)
class Behaviour:
    """What the account's windows say about it, as the message's feature row saw them."""

    history_seconds: float  # since the account was first seen
    recipients_1h: float
    recipient_domains_1h: float
    client_ips_1h: float = 0.0


def message_evidence(probability: float, prior_log_odds: float, policy: DecisionPolicy) -> float:
    """Log-likelihood ratio, compromised against clean, of one message with this spam probability."""
    p = min(max(probability, 1e-9), 1 - 1e-9)
    likelihood_ratio = math.exp(math.log(p / (1 - p)) - prior_log_odds)
    pi, eps = policy.compromised_spam_share, policy.clean_spam_share
    return math.log((pi * likelihood_ratio + 1 - pi) / (eps * likelihood_ratio + 1 - eps))


def lock_threshold_for(target_per_1000_account_days: float, messages_per_account_day: float) -> float:
    """CUSUM level whose mean run to a false alarm is 1000 / target account-days of mail."""
    return math.log(messages_per_account_day * 1000.0 / target_per_1000_account_days)


def is_established(history_seconds: float, messages_scored: int, policy: DecisionPolicy) -> bool:
    """An account with a day of history and a few messages has a baseline to deviate from."""
    return history_seconds >= policy.baseline_age_s and messages_scored >= policy.established_min_messages


def corroboration(
    behaviour: Behaviour,
    engagement: float,
    policy: DecisionPolicy,
    *,
    known_spam: bool = False,
    spam_campaign: bool = False,
    compromised_verdict: bool = False,
    malware: bool = False,
    bad_outcomes: float = 0.0,
) -> tuple[str, ...]:
    """What, besides content, says a new account is sending spam (empty: nothing does).

    `bad_outcomes`: the invalid recipients and complaints the engagement evidence rests
    on (decayed); fewer than `policy.corroborating_bad_outcomes` corroborate nothing.
    """
    found = []
    if engagement >= policy.corroborating_engagement and bad_outcomes >= policy.corroborating_bad_outcomes - 1e-9:
        found.append(f"bounces and complaints worth {engagement:.1f} nats")
    if behaviour.recipients_1h >= policy.corroborating_recipients_1h:
        found.append(f"{behaviour.recipients_1h:.0f} recipients in the last hour")
    if behaviour.recipient_domains_1h >= policy.corroborating_domains_1h:
        found.append(f"{behaviour.recipient_domains_1h:.0f} recipient domains in the last hour")
    if behaviour.client_ips_1h >= policy.corroborating_client_ips_1h:
        found.append(f"{behaviour.client_ips_1h:.0f} client addresses in the last hour")
    if known_spam:
        found.append("a near-copy of known spam")
    if spam_campaign:
        found.append("an active spam-like campaign")
    if compromised_verdict:
        found.append("an admin's compromised verdict")
    if malware:
        found.append("malware found in its mail")
    return tuple(found)


def standing_of(
    match: TemplateMatch | None, at: float, *, established: bool, corroborated: bool, policy: DecisionPolicy
) -> Standing:
    if match is None:
        return Standing.NEW_CONTENT
    if match.known_good or at - match.first_seen >= policy.baseline_age_s:
        return Standing.NORMAL
    if established or corroborated:
        return Standing.NEW_TEMPLATE
    return Standing.REPEAT


def counted_evidence(evidence: float, standing: Standing, peak: float = 0.0) -> float:
    """What a message's evidence (nats) adds to its account's CUSUM, given its content's standing."""
    if standing is Standing.NORMAL:
        return min(0.0, evidence)
    if standing is Standing.REPEAT:
        # Ham still counts; spam only by how far it exceeds the template's copies so far.
        return evidence if evidence <= 0.0 else max(0.0, evidence - peak)
    return evidence


def content_evidence(
    state: AccountState,
    values: np.ndarray | None,
    evidence: float,
    at: float,
    *,
    established: bool,
    corroborated: bool,
    policy: DecisionPolicy,
) -> tuple[float, Standing]:
    """The message's counted evidence and its content's standing; the content is remembered in `state`.

    `values` are the message's compact template values (`templates.compact_values`), or
    None for a message too short to fingerprint.
    """
    memory = TemplateMemory.decode(state.templates)
    match = memory.match(values)
    standing = standing_of(match, at, established=established, corroborated=corroborated, policy=policy)
    counted = counted_evidence(evidence, standing, match.peak if match is not None else 0.0)
    if values is not None:
        memory.observe(values, match, at, evidence)
        state.templates = memory.encode()
    return counted, standing


def update_account(state: AccountState, evidence: float, timestamp: float) -> None:
    state.evidence = max(0.0, state.evidence + evidence)
    state.messages_scored += 1
    state.last_scored = timestamp if state.last_scored is None else max(state.last_scored, timestamp)


def malware_evidence(policy: DecisionPolicy) -> float:
    """What one malware detection adds to its account's CUSUM, in nats (docs/decision.md, section 5).

    The lock threshold plus the most that good engagement can offset: one detection
    reaches the lock threshold from any history, whatever the account's engagement. The
    message's own content evidence counts only when it is higher (`max(0, llr)`): a virus
    carrier's text often looks like ham ("invoice attached") and must not offset it.
    """
    return policy.lock_threshold + policy.engagement_credit


def account_evidence(state: AccountState, engagement: float, policy: DecisionPolicy) -> float:
    """Content CUSUM plus engagement evidence. Bounces and complaints push without limit;
    good engagement offsets at most `engagement_credit`, because recipients whose
    bounces have not arrived yet look like deliveries."""
    return max(0.0, state.evidence + max(engagement, -policy.engagement_credit))


def account_risk(evidence: float, lock_threshold: float) -> float:
    """Evidence as a share of what locks, capped at 1."""
    return min(1.0, evidence / lock_threshold)


def decide(
    probability: float,
    state: AccountState,
    policy: DecisionPolicy,
    engagement: float = 0.0,
    *,
    may_lock: bool = True,
    malware: bool = False,
) -> Decision:
    """The message's action and the account's risk; `may_lock` False (a new account nothing
    corroborates) keeps the evidence and the risk but recommends no lock. A message carrying
    malware (`malware`) is rejected whatever its score."""
    evidence = account_evidence(state, engagement, policy)
    risk = account_risk(evidence, policy.lock_threshold)
    lock_recommended = may_lock and evidence >= policy.lock_threshold
    # Graduated: one extreme message from an account with no other evidence is held for a
    # person to look at; only an account already recommended for locking gets bounces.
    if malware or (probability >= policy.reject_threshold and lock_recommended):
        action = Action.REJECT
    elif probability >= policy.hold_threshold:
        action = Action.HOLD
    elif lock_recommended:
        # Not spam-like on its own, but the account is: keep it queued until a person looks.
        action = Action.DEFER
    else:
        action = Action.ACCEPT
    return Decision(action=action, account_risk=risk, lock_recommended=lock_recommended)


def locked_decision() -> Decision:
    return Decision(action=Action.REJECT, account_risk=1.0, lock_recommended=True)
