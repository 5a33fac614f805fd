"""The SMTP reply for a decision: one place, the same text over every protocol.

- `accept`: no reply, the transaction goes on;
- `defer`: `451 4.7.1`, with `reply_rate_limited` when the account is over its
  allowance, else `reply_defer`;
- `hold`: where the protocol can hold a message (milter: Postfix's hold queue; Exim:
  freeze) it is quarantined with `reply_hold` as the reason and accepted; elsewhere
  `451 4.7.1` with that text;
- `reject`: `550 5.7.1`, with `reply_locked` for a locked account's mail, else
  `reply_reject`.

The texts are the relay's (`RelayPolicy.reply_*`, per relay through
`OUTGUARD_RELAY_POLICIES`). They never carry the spam probability, the account's risk or
the reasons behind them (a spammer who reads them could tune his mail until it passes)
unless the relay sets `reply_reveal_scores`: then the templates may use
`{spam_probability}`, `{account_risk}`, `{reasons}` and `{lock_reason}`, and a template
without any of them gets `(spam probability 0.998, account risk 0.91)` after it.

A reply is one line of printable ASCII, at most `MAX_TEXT` characters of text: whatever
a sender controls (an account named by an envelope sender or a header) is cut short and
anything outside printable ASCII replaced by `?`, so a name can neither break the SMTP
reply nor smuggle a second line into it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from service.settings import REPLY_SCORE_FIELDS, RelayPolicy
from service.stores import AccountKey, AccountState, AccountStatus

if TYPE_CHECKING:
    from service.scoring import ScoreResult

# The reply line is at most 512 octets with its CRLF (RFC 5321 4.5.3.1.5): the code, the
# enhanced status and this much text fit with room for an MTA's own prefix.
MAX_TEXT = 400
MAX_FIELD = 128  # any one value put into a template
TEMPFAIL = (451, "4.7.1")
REJECT = (550, "5.7.1")
# How the scorer's own lock reasons start (`service.scoring._risk_reason`): a lock with
# any other reason was an administrator's.
AUTOMATIC_LOCK_VERDICT = "enough evidence of spam to lock"
DEFAULT_POLICY = RelayPolicy()


@dataclass(frozen=True, slots=True)
class SmtpReply:
    code: int  # 451 or 550
    enhanced: str  # RFC 3463: 4.7.1 or 5.7.1
    text: str  # one line of printable ASCII

    @property
    def line(self) -> str:
        """`550 5.7.1 Account alice@example.net is locked: ...`, as an MTA sends it."""
        return f"{self.code} {self.enhanced} {self.text}"

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500


@dataclass(frozen=True, slots=True)
class LockInfo:
    """Why and how an account is locked, as the scorer read it from the account's state."""

    status: str  # locked | locked_temporary
    reason: str | None  # the lock's reason: the scorer's evidence or the administrator's words
    until: float | None  # a temporary lock's end (unix time)
    automatic: bool  # locked by outguard's own evidence, not by an administrator
    incident: str  # short reference, the same in every reply during this lock

    @property
    def summary(self) -> str:
        """What the sender may be told: never the evidence, nor an administrator's note."""
        return "suspected compromise" if self.automatic else "locked by an administrator"

    @property
    def until_text(self) -> str:
        if self.until is None:
            return ""
        return datetime.fromtimestamp(self.until, UTC).strftime("%Y-%m-%d %H:%M UTC")

    def describe(self) -> str:
        """The lock in words, for the answer's reasons (the relay's eyes, not the sender's)."""
        how = f"until {self.until_text}" if self.until is not None else "permanently"
        who = "automatically by outguard" if self.automatic else "by an administrator"
        return f"The account is locked {how}, {who}: {self.reason or 'no reason recorded'} (incident {self.incident})"


def incident_reference(key: AccountKey, state: AccountState) -> str:
    """Eight hex digits naming this lock of this account: stable while it lasts, new with the next lock."""
    parts = (key.relay, key.account, str(state.temporary_locks), state.lock_reason or "", str(state.locked_until))
    seed = "\0".join(parts)
    return hashlib.sha256(seed.encode("utf-8", "replace")).hexdigest()[:8]


def lock_info(key: AccountKey, state: AccountState) -> LockInfo | None:
    """The account's lock, or None when it is not locked."""
    if not state.locked:
        return None
    reason = state.lock_reason
    return LockInfo(
        status=state.status.value,
        reason=reason,
        until=state.locked_until if state.status is AccountStatus.LOCKED_TEMPORARY else None,
        automatic=bool(reason) and reason.startswith(AUTOMATIC_LOCK_VERDICT),
        incident=incident_reference(key, state),
    )


def smtp_reply(result: ScoreResult, policy: RelayPolicy | None = None) -> SmtpReply | None:
    """The reply for the result's action under the relay's policy; None for `accept` (the transaction goes on).

    For `hold` this is the reply of a protocol that cannot hold a message (451 4.7.1);
    one that can quarantines it with the reply's text as the reason and accepts.
    """
    policy = policy or DEFAULT_POLICY
    scores = _scores(result)
    if result.action == "accept":
        return None
    if result.action == "defer":
        template = policy.reply_rate_limited if result.rate_limited else policy.reply_defer
        return _reply(TEMPFAIL, template, policy, result.account, scores)
    if result.action == "hold":
        return _reply(TEMPFAIL, policy.reply_hold, policy, result.account, scores)
    if result.lock is not None or result.account_locked:
        return locked_reply(result.account, result.lock, policy)
    return _reply(REJECT, policy.reply_reject, policy, result.account, scores)


def locked_reply(account: str, lock: LockInfo | None, policy: RelayPolicy | None = None) -> SmtpReply:
    """550 5.7.1 for a locked account's mail (the milter says it at MAIL FROM, the policy gate at RCPT)."""
    policy = policy or DEFAULT_POLICY
    fields = {
        "lock_summary": lock.summary if lock is not None else "locked",
        "incident": lock.incident if lock is not None else "unknown",
        "until": lock.until_text if lock is not None else "",
    }
    scores = {"lock_reason": (lock.reason if lock is not None else None) or "no reason recorded"}
    return _reply(REJECT, policy.reply_locked, policy, account, scores, **fields)


def rate_limited_reply(account: str, policy: RelayPolicy | None = None) -> SmtpReply:
    """451 4.7.1 for an account over its allowance (the milter says it at RCPT, the policy gate too)."""
    return _reply(TEMPFAIL, (policy or DEFAULT_POLICY).reply_rate_limited, policy or DEFAULT_POLICY, account, {})


def virus_reply(virus: str, account: str = "", policy: RelayPolicy | None = None) -> SmtpReply:
    """550 5.7.1 `Virus found: NAME` (the malware scanner's verdict)."""
    return _reply(REJECT, (policy or DEFAULT_POLICY).reply_virus, policy or DEFAULT_POLICY, account, {}, virus=virus)


def score_summary(result: ScoreResult, policy: RelayPolicy | None = None) -> str | None:
    """`spam probability 0.998, account risk 0.91` for a relay that asks for scores (a header), else None."""
    if not (policy or DEFAULT_POLICY).reply_reveal_scores:
        return None
    return _suffix(_scores(result))


def clean(value: str, limit: int = MAX_FIELD) -> str:
    """Printable ASCII only (anything else becomes `?`), at most `limit` characters."""
    text = "".join(c if " " <= c <= "~" else "?" for c in value[: limit + 1])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _scores(result: ScoreResult) -> dict[str, str]:
    top = [r.name for r in result.reasons if r.contribution > 0][:3]
    return {
        "spam_probability": "n/a" if result.spam_probability is None else f"{result.spam_probability:.3f}",
        "account_risk": f"{result.account_risk:.2f}",
        "reasons": ", ".join(top) or "none",
        "lock_reason": (result.lock.reason if result.lock is not None else None) or "",
    }


def _suffix(scores: dict[str, str]) -> str:
    if scores.get("spam_probability", "n/a") == "n/a":
        return f"account risk {scores['account_risk']}" if "account_risk" in scores else ""
    return f"spam probability {scores['spam_probability']}, account risk {scores['account_risk']}"


def _reply(
    code: tuple[int, str],
    template: str,
    policy: RelayPolicy,
    account: str,
    scores: dict[str, str],
    **fields: str,
) -> SmtpReply:
    values = {"account": account, "incident": "", "lock_summary": "", "until": "", "virus": "", **fields}
    reveal = policy.reply_reveal_scores
    # A template may name a score field only with reveal set (checked when the policy is
    # read); a policy merged from overrides is checked again here, by withholding them.
    for name in REPLY_SCORE_FIELDS:
        values[name] = scores.get(name, "") if reveal else "(withheld)"
    text = template.format_map({name: clean(value) for name, value in values.items()})
    if reveal and not any(f"{{{name}}}" in template for name in REPLY_SCORE_FIELDS) and (suffix := _suffix(scores)):
        text = f"{text} ({suffix})"
    return SmtpReply(code[0], code[1], clean(text, MAX_TEXT))
