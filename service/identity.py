"""Who sent a message: the account the decision and the locks apply to.

Order: the relay's explicit `account`, then identity rules over the headers (the seam
for per-relay rules: `X-AuthUser`, `X-PHP-Originating-Script`, `Authenticated sender:`),
then the SASL user, the envelope sender, and last the client IP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Identity:
    account: str
    source: str  # account | rule:<name> | sasl | envelope_from | client_ip | unknown


class IdentityRule(Protocol):
    name: str

    def extract(self, headers: Sequence[tuple[str, str]]) -> str | None:
        """The account this rule finds in the headers, or None."""


UNKNOWN_ACCOUNT = "<unknown>"


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def resolve_identity(
    *,
    account: str | None,
    sasl_username: str | None,
    envelope_from: str | None,
    client_ip: str | None,
    headers: Sequence[tuple[str, str]],
    rules: Sequence[IdentityRule] = (),
) -> Identity:
    if explicit := _clean(account):
        return Identity(explicit, "account")
    for rule in rules:
        if found := _clean(rule.extract(headers)):
            return Identity(found, f"rule:{rule.name}")
    if sasl := _clean(sasl_username):
        return Identity(sasl, "sasl")
    # The null sender <> (bounces, auto-replies) names nobody: fall through to the client IP.
    if sender := _clean((envelope_from or "").strip().strip("<>")):
        # Addresses are case-insensitive in practice; one spelling, one account.
        return Identity(sender.lower(), "envelope_from")
    if ip := _clean(client_ip):
        return Identity(ip, "client_ip")
    return Identity(UNKNOWN_ACCOUNT, "unknown")
