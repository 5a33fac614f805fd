"""Storage behind small interfaces: the event log, per-account behaviour windows, account state.

The embedded default is SQLite for the event log and in-process memory for the hot
per-account state; PostgreSQL and Redis implement the same protocols. The methods
are async because the production backends do network I/O and the scoring handlers
must never block the event loop; the in-process implementations return at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from features.behaviour import BehaviourSnapshot, Observation


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


@dataclass(slots=True)
class AccountState:
    """The account decision's running state."""

    evidence: float = 0.0  # CUSUM of per-message log-likelihood ratios, in nats
    messages_scored: int = 0
    last_scored: float | None = None
    locked: bool = False
    lock_reason: str | None = None


class EventLog(Protocol):
    async def append(self, event: ScoredEvent) -> None:
        """Hand an event to the log; returns without waiting for disk."""

    async def flush(self) -> None:
        """Wait until every appended event is on disk."""

    async def ping(self) -> bool:
        """The log's storage answers."""

    def close(self) -> None:
        """Write what is queued and release the storage."""


class BehaviourStore(Protocol):
    async def observe(self, key: AccountKey, observation: Observation) -> BehaviourSnapshot:
        """Count one message in the account's windows and return them, this message included."""


class AccountStateStore(Protocol):
    async def get(self, key: AccountKey) -> AccountState:
        """The account's state (a fresh one for an account never seen)."""

    async def put(self, key: AccountKey, state: AccountState) -> None:
        """Store the account's state."""
