"""Who sent a message: the account the decision and the locks apply to.

Order: the relay's explicit `account`; then the relay's identity rules over the headers,
first match wins (`X-AuthUser`, `X-PHP-Originating-Script`, the `Authenticated sender:`
of `Received`); then the SASL user, the envelope sender, and last the client IP.

Rule patterns are compiled with RE2, whose matching time is linear in the input: a
pattern cannot backtrack catastrophically, whatever the headers hold. A pattern RE2
cannot express (backreferences, lookaround) is refused when the rule is saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import re2

MAX_PATTERN_CHARS = 512
# Header values longer than this are cut before matching (RFC 5322 lines stop at 998).
MAX_HEADER_CHARS = 4_096
UNKNOWN_ACCOUNT = "<unknown>"
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is the caller's 422, not the server's stderr


class InvalidRule(ValueError):
    """A rule that cannot be saved; the message says why."""


@dataclass(frozen=True, slots=True)
class Identity:
    account: str
    source: str  # account | rule:<name> | sasl | envelope_from | client_ip | unknown
    strip_headers: tuple[str, ...] = ()  # headers the relay should remove after use


@dataclass(frozen=True, slots=True)
class HeaderRule:
    """Take the account from a header: its whole value, or a regex's one capture group."""

    name: str
    header: str
    pattern: str | None = None  # None: the whole value
    strip: bool = False
    _compiled: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def build(cls, name: str, header: str, pattern: str | None = None, strip: bool = False) -> HeaderRule:
        if not header.strip() or ":" in header or any(c.isspace() for c in header.strip()):
            raise InvalidRule(f"rule {name!r}: {header!r} is not a header name")
        compiled = compile_pattern(name, pattern) if pattern is not None else None
        return cls(name=name, header=header.strip(), pattern=pattern, strip=strip, _compiled=compiled)

    def extract(self, headers: Sequence[tuple[str, str]]) -> str | None:
        wanted = self.header.lower()
        for key, value in headers:
            if key.lower() != wanted:
                continue
            value = value[:MAX_HEADER_CHARS]
            if self._compiled is None:
                found = value.strip()
            else:
                match = self._compiled.search(value)
                found = (match.group(1) or "").strip() if match else ""
            if found:
                return found
        return None

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "header": self.header, "pattern": self.pattern, "strip": self.strip}


def compile_pattern(name: str, pattern: str) -> Any:
    if len(pattern) > MAX_PATTERN_CHARS:
        raise InvalidRule(f"rule {name!r}: the pattern is over {MAX_PATTERN_CHARS} characters")
    try:
        compiled = re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise InvalidRule(
            f"rule {name!r}: {pattern!r} does not compile as RE2 ({reason}); backreferences and lookaround "
            "are not supported because they allow catastrophic backtracking"
        ) from None
    if compiled.groups != 1:
        raise InvalidRule(f"rule {name!r}: the pattern needs exactly one capture group, it has {compiled.groups}")
    return compiled


DEFAULT_RULES: tuple[HeaderRule, ...] = (
    HeaderRule.build("x-authuser", "X-AuthUser"),
    # "1000:/home/shop/public_html/contact.php" or "33:wp-content/plugins/x/y.php(12) : eval()'d code"
    HeaderRule.build("php-script", "X-PHP-Originating-Script", r"^\s*([^(]+?)\s*(?:\(|$)"),
    # Postfix with smtpd_sasl_authenticated_header: "(Authenticated sender: alice@example.net)"
    HeaderRule.build("received-authenticated-sender", "Received", r"\(Authenticated sender:\s*([^)\s]+)\s*\)"),
)


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
    rules: Sequence[HeaderRule] = (),
) -> Identity:
    if explicit := _clean(account):
        return Identity(explicit, "account")
    for rule in rules:
        if found := rule.extract(headers):
            return Identity(found, f"rule:{rule.name}", (rule.header,) if rule.strip else ())
    if sasl := _clean(sasl_username):
        return Identity(sasl, "sasl")
    # The null sender <> (bounces, auto-replies) names nobody: fall through to the client IP.
    if sender := _clean((envelope_from or "").strip().strip("<>")):
        # Addresses are case-insensitive in practice; one spelling, one account.
        return Identity(sender.lower(), "envelope_from")
    if ip := _clean(client_ip):
        return Identity(ip, "client_ip")
    return Identity(UNKNOWN_ACCOUNT, "unknown")
