"""Storage behind small interfaces: the event log, per-account behaviour windows, account state.

The embedded default is SQLite for the event log and in-process memory for the hot
per-account state; PostgreSQL and Redis implement the same protocols. The methods
are async because the production backends do network I/O and the scoring handlers
must never block the event loop; the in-process implementations return at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from features.behaviour import BehaviourSnapshot, Observation
from features.engagement import EngagementSnapshot
from service.identity import HeaderRule

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AccountKey:
    relay: str
    account: str


@dataclass(slots=True)
class ScoredEvent:
    """One scored message as the log keeps it: features as the model saw them, no body."""

    timestamp: float
    relay: str
    account: str
    identity_source: str
    message_id: str
    model_version: str
    feature_spec_version: str
    features: list[float] | None  # None when the account was locked and nothing was computed
    spam_probability: float | None
    account_risk: float
    action: str
    lock_recommended: bool
    recipients_hashed: list[str] = field(default_factory=list)
    client_ip: str | None = None
    scored_at: float = 0.0
    queue_id: str | None = None
    subject: str | None = None  # truncated, for incident reports; never the body
    fingerprint: bytes | None = None  # the content's MinHash (features.fingerprint), never the text
    shadow_model_version: str | None = None  # a shadow model scored it too (never acted on)
    shadow_probability: float | None = None
    identity_conflict: str | None = None  # JSON: a header named another login than the SASL user


@dataclass(frozen=True, slots=True)
class MessageRef:
    """Where a scored message came from: what feedback about it is attributed to."""

    message_id: str
    queue_id: str | None
    relay: str
    account: str
    timestamp: float
    fingerprint: bytes | None = None
    spam_probability: float | None = None


class FeedbackType(StrEnum):
    DELIVERED = "delivered"
    BOUNCE = "bounce"
    DEFERRED = "deferred"
    COMPLAINT = "complaint"
    REPLY = "reply"
    OPEN = "open"
    CLICK = "click"
    UNSUBSCRIBE = "unsubscribe"
    NOT_SPAM = "not_spam"  # an ARF "not-spam" report: a recipient rescued the message


@dataclass(slots=True)
class FeedbackEvent:
    """One thing that happened to a sent message, for one recipient."""

    event_id: str
    type: FeedbackType
    timestamp: float
    message_id: str | None = None
    queue_id: str | None = None
    relay: str | None = None  # filled from the scored message when it is found
    account: str | None = None
    recipient_hash: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    matched: bool = False  # attributed to a scored message


class LabelTarget(StrEnum):
    MESSAGE = "message"
    ACCOUNT = "account"


class Verdict(StrEnum):
    SPAM = "spam"
    HAM = "ham"
    COMPROMISED = "compromised"
    CLEAN = "clean"


@dataclass(slots=True)
class Label:
    """An admin verdict on a message or an account: a training label."""

    target: LabelTarget
    label: Verdict
    actor: str
    reason: str
    timestamp: float
    message_id: str | None = None
    relay: str | None = None
    account: str | None = None


class AccountStatus(StrEnum):
    ACTIVE = "active"
    RATE_LIMITED = "rate_limited"
    LOCKED_TEMPORARY = "locked_temporary"
    LOCKED = "locked"


@dataclass(slots=True)
class AccountState:
    """The account decision's running state, and where the account is in its lifecycle."""

    evidence: float = 0.0  # CUSUM of per-message log-likelihood ratios, in nats
    messages_scored: int = 0
    last_scored: float | None = None
    status: AccountStatus = AccountStatus.ACTIVE
    locked_until: float | None = None  # for a temporary lock
    temporary_locks: int = 0  # automatic locks so far: the Nth is permanent
    allowlisted: bool = False
    lock_reason: str | None = None
    tokens: float | None = None  # rate-limit token bucket
    tokens_at: float | None = None
    # The account's own templates, packed (`service.fingerprints.templates`): at most 16,
    # 664 characters.
    templates: str = ""
    # Signatures learned from this account's automatic locks: a clean verdict or an
    # unlock takes down those that match its templates. The newest few.
    lock_signatures: tuple[int, ...] = ()
    compromised_verdict: bool = False  # an admin called it compromised: corroboration for a lock
    # A lifecycle change decided on the scoring path but not yet committed to the ledger
    # (JSON, `service.lifecycle.hold_back`): it takes effect only once recorded, and the
    # account's mail is deferred meanwhile. Empty when nothing waits.
    pending_change: str = ""

    @property
    def locked(self) -> bool:
        return self.status in (AccountStatus.LOCKED, AccountStatus.LOCKED_TEMPORARY)


class EventLog(Protocol):
    async def append(self, event: ScoredEvent) -> None:
        """Hand an event to the log; returns without waiting for disk."""

    async def flush(self) -> None:
        """Wait until every appended event is on disk."""

    async def ping(self) -> bool:
        """The log's storage answers."""


class BehaviourStore(Protocol):
    async def observe(self, key: AccountKey, observation: Observation) -> BehaviourSnapshot:
        """Count one message in the account's windows and return them, this message included."""


class EngagementStore(Protocol):
    async def add(self, key: AccountKey, counts: dict[str, float], timestamp: float) -> None:
        """Add to the account's decayed engagement counts (recipients sent, outcomes, feedback)."""

    async def snapshot(self, key: AccountKey) -> EngagementSnapshot | None:
        """The account's engagement, or None for an account with none."""


class FeedbackLog(Protocol):
    async def add(self, events: list[FeedbackEvent]) -> list[bool]:
        """Store durably before returning; per event, whether it was new (False: a duplicate id)."""


class LabelStore(Protocol):
    async def add(self, label: Label) -> int:
        """Store durably before returning; the label's id."""


class IdentityRuleStore(Protocol):
    def rules_for(self, relay: str) -> tuple[HeaderRule, ...]:
        """The relay's rules, in order (the defaults when it has none of its own); no I/O."""

    def is_default(self, relay: str) -> bool:
        """Whether the relay uses the default rules."""

    async def put(self, relay: str, rules: list[HeaderRule], actor: str) -> None:
        """Replace the relay's rules; durable before returning."""

    async def reset(self, relay: str) -> None:
        """Back to the default rules."""


class AccountStateStore(Protocol):
    async def get(self, key: AccountKey) -> AccountState:
        """The account's state (a fresh one for an account never seen)."""

    async def put(self, key: AccountKey, state: AccountState) -> None:
        """Store the account's state."""

    async def update(self, key: AccountKey, mutate: Callable[[AccountState], T]) -> tuple[AccountState, T]:
        """Read, change and store the account's state as one step: replicas never lose each other's changes.

        `mutate` changes the state in place and may run more than once (it must not
        have other effects); the state as stored and its last result come back.
        """


class MessageIndex(Protocol):
    async def remember(self, ref: MessageRef) -> None:
        """Keep a scored message for matching its feedback."""

    async def find(self, message_id: str | None, queue_id: str | None) -> list[MessageRef]:
        """Remembered messages with this Message-ID or queue id."""
