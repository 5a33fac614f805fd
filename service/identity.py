"""Who sent a message: the account the decision and the locks apply to.

A header names the account only where the relay vouches for it; nothing a sender can
write outranks the login it authenticated with. Order, first found wins:

1. `account`, given explicitly by the relay in the API call;
2. a TRUSTED header rule (`trusted: true`): a header the relay writes itself and strips
   from client input, so it speaks for the relay just as `account` does (a hosting
   control panel's mapping of the login to the hosting account, say);
3. the SASL user: what the client authenticated as;
4. an UNTRUSTED header rule, only when there is no SASL user: a header the sender can
   write. With no login to go by, it still tells senders apart, above all PHP's
   `X-PHP-Originating-Script` for mail a site hands to the local sendmail;
5. the envelope sender (lower-cased; the null sender `<>` names nobody);
6. the client IP.

Rules are tried in their list order within steps 2 and 4. The defaults are all
untrusted: a client can write `X-AuthUser` and any number of `Received` lines (the
relay's own `Received` cannot be told from a forged one lower down), and
`X-PHP-Originating-Script` is written by the PHP on the customer's server, so it names
the script that sent (a sub-identity of the hosting account: `identifies: script`),
never the login.

A conflict: with a SASL user, an untrusted rule that `identifies: login` extracts
another name than that user (case-insensitively) from any of its headers. It never
names the account; the answer reports it (`identity_conflict`) and the incident report
counts it. A relay that writes `X-AuthUser` with the same user causes none. A trusted
rule that differs from the SASL user is the relay's own mapping, not a conflict, and a
script header is a sub-identity, not a claim to a login.

What a conflict costs (`service.scoring`): no evidence of its own, since mail relayed
from another server (a mailing list, a customer's MTA behind this relay) carries that
server's `Received` and `X-AuthUser` lines. It corroborates instead, like a sprayed
recipient list: a new login whose spam-scored mail names someone else is not a cold
start to wait out, so its copies count in full and it can be locked on its content.

Why trusted rules come before the SASL user and untrusted ones after it: the relay
wrote the first kind, as good as an explicit `account`; the sender wrote the second,
which must never decide whose account pays for the mail when a login says who sent it.
Untrusted headers stay above the envelope sender because both are the sender's word and
the header is the finer one (one script, not the whole site's `www-data@host`).

Rule patterns are compiled with RE2, whose matching time is linear in the input: a
pattern cannot backtrack catastrophically, whatever the headers hold. A pattern RE2
cannot express (backreferences, lookaround) is refused when the rule is saved.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import re2

MAX_PATTERN_CHARS = 512
# Header values longer than this are cut before matching (RFC 5322 lines stop at 998).
MAX_HEADER_CHARS = 4_096
# A conflicting header's claim is kept this long in the answer and the log; the sender wrote it.
MAX_CLAIM_CHARS = 256
UNKNOWN_ACCOUNT = "<unknown>"
LOGIN, SCRIPT = "login", "script"  # what a rule's header identifies
IDENTIFIES = (LOGIN, SCRIPT)
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is the caller's 422, not the server's stderr


class InvalidRule(ValueError):
    """A rule that cannot be saved; the message says why."""


@dataclass(frozen=True, slots=True)
class IdentityConflict:
    """An untrusted header naming another login than the SASL user: the sender wrote someone else's name."""

    rule: str
    header: str
    claimed: str  # what the header named, cut to MAX_CLAIM_CHARS, unprintable characters as "?"

    def as_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "header": self.header, "claimed": self.claimed}


@dataclass(frozen=True, slots=True)
class Identity:
    account: str
    source: str  # account | rule:<name> | sasl | envelope_from | client_ip | unknown
    strip_headers: tuple[str, ...] = ()  # headers the relay should remove after use
    conflict: IdentityConflict | None = None


@dataclass(frozen=True, slots=True)
class HeaderRule:
    """Take the account from a header: its whole value, or a regex's one capture group.

    `trusted`: the relay writes the header and strips it from client input, so it
    outranks the SASL user; otherwise it is used only when there is no SASL user.
    `identifies`: `login` (an account name, compared with the SASL user) or `script`
    (a sending script within a hosting account, never compared).
    """

    name: str
    header: str
    pattern: str | None = None  # None: the whole value
    strip: bool = False
    trusted: bool = False
    identifies: str = LOGIN
    _compiled: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def build(
        cls,
        name: str,
        header: str,
        pattern: str | None = None,
        strip: bool = False,
        trusted: bool = False,
        identifies: str = LOGIN,
    ) -> HeaderRule:
        for what, value in (("name", name), ("header", header), ("pattern", pattern)):
            if value is not None and not _is_utf8(value):
                raise InvalidRule(f"rule {name!r}: the {what} holds a lone surrogate, which is not text")
        if not header.strip() or ":" in header or any(c.isspace() for c in header.strip()):
            raise InvalidRule(f"rule {name!r}: {header!r} is not a header name")
        if identifies not in IDENTIFIES:
            raise InvalidRule(f"rule {name!r}: identifies must be one of {', '.join(IDENTIFIES)}, not {identifies!r}")
        if not isinstance(trusted, bool):
            raise InvalidRule(f"rule {name!r}: trusted must be true or false")
        compiled = compile_pattern(name, pattern) if pattern is not None else None
        return cls(
            name=name,
            header=header.strip(),
            pattern=pattern,
            strip=strip,
            trusted=trusted,
            identifies=identifies,
            _compiled=compiled,
        )

    def values(self, headers: Sequence[tuple[str, str]]) -> Iterator[str]:
        """What the rule extracts from each of its headers, in header order (empty extractions skipped)."""
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
                yield found

    def extract(self, headers: Sequence[tuple[str, str]]) -> str | None:
        return next(self.values(headers), None)

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "header": self.header,
            "pattern": self.pattern,
            "strip": self.strip,
            "trusted": self.trusted,
            "identifies": self.identifies,
        }


def _is_utf8(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


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
    # Any client can write it: a name only without a login, a conflict when it names another.
    # A relay that writes it and strips the client's copies marks its own rule trusted.
    HeaderRule.build("x-authuser", "X-AuthUser"),
    # "1000:/home/shop/public_html/contact.php" or "33:wp-content/plugins/x/y.php(12) : eval()'d code".
    # Written by PHP on the customer's server: the script, for mail with no login (local sendmail).
    HeaderRule.build("php-script", "X-PHP-Originating-Script", r"^\s*([^(]+?)\s*(?:\(|$)", identifies=SCRIPT),
    # Postfix with smtpd_sasl_authenticated_header: "(Authenticated sender: alice@example.net)". The
    # relay's own line cannot be told from a client's forged one, nor from an upstream server's.
    HeaderRule.build("received-authenticated-sender", "Received", r"\(Authenticated sender:\s*([^)\s]+)\s*\)"),
)


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def _claim(value: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in value[:MAX_CLAIM_CHARS])


def find_conflict(
    sasl_username: str | None, headers: Sequence[tuple[str, str]], rules: Sequence[HeaderRule]
) -> IdentityConflict | None:
    """The first untrusted login rule whose header names someone other than the SASL user (None without one)."""
    sasl = _clean(sasl_username)
    if sasl is None:
        return None
    login = sasl.casefold()
    for rule in rules:
        if rule.trusted or rule.identifies != LOGIN:
            continue
        for value in rule.values(headers):
            if value.casefold() != login:
                return IdentityConflict(rule.name, rule.header, _claim(value))
    return None


def resolve_identity(
    *,
    account: str | None,
    sasl_username: str | None,
    envelope_from: str | None,
    client_ip: str | None,
    headers: Sequence[tuple[str, str]],
    rules: Sequence[HeaderRule] = (),
) -> Identity:
    sasl = _clean(sasl_username)
    # Reported whatever names the account: it says what the sender tried, not who it is.
    conflict = find_conflict(sasl, headers, rules)

    def by_rule(trusted: bool) -> Identity | None:
        for rule in rules:
            if rule.trusted is trusted and (found := rule.extract(headers)):
                return Identity(found, f"rule:{rule.name}", (rule.header,) if rule.strip else (), conflict)
        return None

    if explicit := _clean(account):
        return Identity(explicit, "account", conflict=conflict)
    if trusted := by_rule(True):
        return trusted
    if sasl:
        return Identity(sasl, "sasl", conflict=conflict)
    if untrusted := by_rule(False):
        return untrusted
    # The null sender <> (bounces, auto-replies) names nobody: fall through to the client IP.
    if sender := _clean((envelope_from or "").strip().strip("<>")):
        # Addresses are case-insensitive in practice; one spelling, one account.
        return Identity(sender.lower(), "envelope_from")
    if ip := _clean(client_ip):
        return Identity(ip, "client_ip")
    return Identity(UNKNOWN_ACCOUNT, "unknown")
