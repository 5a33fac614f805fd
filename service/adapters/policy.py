"""Postfix policy delegation (SMTPD_POLICY_README) on `OUTGUARD_POLICY_LISTEN`: a cheap gate on account state.

No model runs here: the gate reads the account's state (the lock and the rate limit the
scorer and the admins set) and answers before any content is sent.

- **RCPT** (and MAIL, if the gate is asked there): a locked account gets
  `action=550 5.7.1 <reply_locked>`, a rate-limited account with no token left in its
  bucket `action=451 4.7.1 <reply_rate_limited>` (`service.adapters.replies`). Only
  read, never taken: a message with many recipients is asked about once per recipient.
- **END-OF-MESSAGE**: the message is counted once, with Postfix's `recipient_count`, in
  its account's behaviour windows and sent-recipients count, and a rate-limited account
  spends one token, just as scoring does (without the model). Set
  `OUTGUARD_POLICY_COUNT_MESSAGES=false` when the relay also scores the messages
  (milter, `/checkv2`, spamd): they are counted there. A lock found here refuses the
  message with the same 550.
- Everything else: `action=DUNNO`.

The account is what the scorer would make of the envelope alone: the SASL login, else
the sender, else the client address (header identity rules need the content, which the
gate never sees). The relay is Postfix's `policy_context` (`check_policy_service {
inet:127.0.0.1:10040, policy_context=smtp-out-1 }`) when it is a relay name, else
`OUTGUARD_POLICY_RELAY`.

The connection stays open for the next request (Postfix reuses it, one request after
another). A request that is not the protocol (no `request=` attribute, a line without
`=`, too long) is answered with nothing: the connection is closed, as the protocol
wants, and Postfix applies `default_action` (`DUNNO` in the documented setup: fail
open). The same happens if the state cannot be read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from features.behaviour import Observation, recipient_domain
from features.engagement import SENT
from service.adapters.listener import Listener
from service.adapters.replies import lock_info, locked_reply, rate_limited_reply
from service.adapters.rspamc import RELAY, client_ip
from service.decision import account_risk
from service.identity import resolve_identity
from service.lifecycle import allowance_per_minute, lock_has_expired, take_token  # the scorer's own bucket
from service.stores import AccountKey, AccountState, AccountStatus

if TYPE_CHECKING:
    from service.container import Container
    from service.settings import RelayPolicy

log = logging.getLogger(__name__)

PROTOCOL = "policy"
MAX_LINE = 8_192
MAX_ATTRIBUTES = 200
IDLE_TIMEOUT_S = 600.0  # Postfix closes an idle policy connection after 300 s (smtpd_policy_service_max_idle)
MAX_CONNECTIONS = 1_024
DUNNO = "DUNNO"
STAGES = {"CONNECT", "EHLO", "HELO", "MAIL", "RCPT", "DATA", "END-OF-MESSAGE", "VRFY", "ETRN"}


class PolicyProtocolError(Exception):
    """Not the policy protocol: close without an answer."""


@dataclass(frozen=True, slots=True)
class Verdict:
    action: str  # DUNNO, or `550 5.7.1 text` / `451 4.7.1 text`
    kind: str  # accept | defer | reject, for the metrics


class PolicyGate:
    """The decisions, apart from the socket (so a benchmark or a test can call them directly)."""

    def __init__(self, container: Container) -> None:
        self.container = container
        self.settings = container.settings
        self.accounts = container.accounts
        self.lock_threshold = container.settings.lock_threshold

    def account_key(self, request: dict[str, str]) -> AccountKey:
        context = request.get("policy_context", "").strip()
        relay = context if context and RELAY.match(context) else self.settings.policy_relay
        identity = resolve_identity(
            account=None,
            sasl_username=request.get("sasl_username") or None,
            envelope_from=request.get("sender") or None,
            client_ip=client_ip(request.get("client_address")),
            headers=(),
            rules=self.container.rules.rules_for(relay),
        )
        return AccountKey(relay, identity.account)

    async def decide(self, request: dict[str, str]) -> Verdict:
        if request.get("request") != "smtpd_access_policy":
            return Verdict(DUNNO, "accept")
        stage = request.get("protocol_state", "").upper()
        if stage not in ("MAIL", "RCPT", "END-OF-MESSAGE"):
            return Verdict(DUNNO, "accept")
        key = self.account_key(request)
        now = time.time()
        if stage == "END-OF-MESSAGE" and self.settings.policy_count_messages:
            return await self._count(key, request, now)
        return self._judge(key, await self.accounts.get(key), now, take=False)

    def _judge(self, key: AccountKey, state: AccountState, now: float, *, take: bool) -> Verdict:
        """The answer from the account's state; with `take`, a rate-limited account spends a token (on `state`)."""
        policy = self.settings.policy_for(key.relay)
        if state.allowlisted:
            return Verdict(DUNNO, "accept")
        if state.locked and not lock_has_expired(state, now):
            return Verdict(locked_reply(key.account, lock_info(key, state), policy).line, "reject")
        if state.status is AccountStatus.RATE_LIMITED and not state.pending_change:
            risk = account_risk(state.evidence, self.lock_threshold)
            allowed = take_token(state, risk, now, policy) if take else _tokens(state, risk, now, policy) >= 1.0
            if not allowed:
                return Verdict(rate_limited_reply(key.account, policy).line, "defer")
        return Verdict(DUNNO, "accept")

    async def _count(self, key: AccountKey, request: dict[str, str], now: float) -> Verdict:
        """END-OF-MESSAGE: the message counted once in its account's windows, and its token spent."""
        count = _count_of(request.get("recipient_count", ""))
        recipient = request.get("recipient", "")
        domains = tuple(d for d in (recipient_domain(recipient),) if d) if recipient else ()
        observation = Observation(
            timestamp=now,
            recipients=count,
            recipient_domains=domains,
            client_ip=client_ip(request.get("client_address")),
        )
        await self.container.behaviour.observe(key, observation)
        state = await self.accounts.get(key)
        if state.status is AccountStatus.RATE_LIMITED and not state.allowlisted:  # only then is there a write
            _, verdict = await self.accounts.update(key, lambda s: self._judge(key, s, now, take=True))
        else:
            verdict = self._judge(key, state, now, take=False)
        if verdict.kind == "accept" and count:
            await self.container.engagement.add(key, {SENT: float(count)}, now)
        return verdict


def _tokens(state: AccountState, risk: float, now: float, policy: RelayPolicy) -> float:
    """The tokens the account's bucket holds now (what `take_token` would find), without taking one."""
    tokens = policy.rate_limit_burst if state.tokens is None else state.tokens
    since = 0.0 if state.tokens_at is None else max(0.0, now - state.tokens_at)
    return min(policy.rate_limit_burst, tokens + since * allowance_per_minute(risk, policy) / 60.0)


def _count_of(value: str) -> int:
    value = value.strip()
    return min(int(value), 1_000_000) if value.isdigit() else 0


class PolicyServer(Listener):
    """The policy protocol on a TCP socket: name=value lines, a blank line; `action=...` and a blank line back."""

    protocol = PROTOCOL
    description = "Postfix policy delegation"

    def __init__(self, container: Container) -> None:
        super().__init__(container.metrics, MAX_CONNECTIONS, MAX_LINE)
        self.gate = PolicyGate(container)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (request := await asyncio.wait_for(read_request(reader), IDLE_TIMEOUT_S)) is not None:
                started = time.perf_counter()
                stage = _stage(request)
                self.metrics.adapter_requests.labels(PROTOCOL, stage).inc()
                try:
                    verdict = await self.gate.decide(request)
                except Exception as error:  # no answer: Postfix applies default_action
                    self.metrics.adapter_errors.labels(PROTOCOL, "state").inc()
                    log.error("policy request failed, closing without an answer: %s", type(error).__name__)
                    return
                writer.write(f"action={verdict.action}\n\n".encode("ascii", "replace"))
                await writer.drain()
                self.metrics.adapter_answers.labels(PROTOCOL, verdict.kind).inc()
                self.metrics.adapter_latency.labels(PROTOCOL, stage).observe(time.perf_counter() - started)
        except PolicyProtocolError as error:
            self.metrics.adapter_errors.labels(PROTOCOL, "protocol").inc()
            log.warning("not a policy request, closing without an answer: %s", error)
        except TimeoutError:
            self.metrics.adapter_errors.labels(PROTOCOL, "timeout").inc()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away mid-request


async def read_request(reader: asyncio.StreamReader) -> dict[str, str] | None:
    """One request's attributes (the first value of a repeated name wins); None at a clean end of the connection."""
    attributes: dict[str, str] = {}
    lines = 0
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as error:
            if not error.partial and not attributes:
                return None  # closed between requests
            raise
        except asyncio.LimitOverrunError:
            raise PolicyProtocolError(f"a line longer than {MAX_LINE} bytes") from None
        line = line.rstrip(b"\r\n")
        if not line:
            if not attributes:
                continue  # stray blank lines between requests
            if "request" not in attributes:
                raise PolicyProtocolError("a request without the request attribute")
            return attributes
        lines += 1
        if lines > MAX_ATTRIBUTES:
            raise PolicyProtocolError(f"more than {MAX_ATTRIBUTES} attributes")
        name, equals, value = line.partition(b"=")
        if not equals or not name:
            raise PolicyProtocolError("an attribute line without name=value")
        text = value.decode("utf-8", "replace")
        if "\x00" in text:
            raise PolicyProtocolError("an attribute value holding U+0000")
        attributes.setdefault(name.decode("ascii", "replace").strip().lower(), text.strip())


def _stage(request: dict[str, str]) -> str:
    state = request.get("protocol_state", "").upper()
    if state == "END-OF-MESSAGE":
        return "eom"
    return state.lower() if state in STAGES else "other"
