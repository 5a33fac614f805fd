"""The milter: Postfix's `smtpd_milters` and Sendmail's `INPUT_MAIL_FILTER`, served by this process.

With `OUTGUARD_MILTER_LISTEN=HOST:PORT` the app starts this server in its lifespan, next
to the HTTP API: the same scorer, account state and metrics. One asyncio task per MTA
connection (Postfix opens one per SMTP session); the protocol is version 6, the subset
Postfix and Sendmail use (`milter_codec`).

What it does with a transaction:

- **connect**: the client address (the connect event's, or `{client_addr}` at MAIL, which
  XCLIENT sets); the relay is `OUTGUARD_MILTER_RELAY`, else the MTA's `{daemon_name}`
  (Postfix: `milter_macro_daemon_name`; left unset it is the host name `{j}`, and the
  relay is `default`).
- **MAIL FROM**: the user from `{auth_authen}`. When nothing in the headers can name
  another account (a SASL user and no trusted identity rule on the relay), the
  account's state is read, and a locked account is refused here, `550 5.7.1` with its
  reply text, before any recipient or body is sent. One state read, no model.
- **RCPT TO**: an account over its rate limit's allowance gets `451 4.7.1`, from the same
  state read's token bucket (nothing is taken from it: the message that goes through
  takes its token when scored).
- **headers and body**: kept, up to `OUTGUARD_MAX_RAW_BYTES` per message in all
  (`OUTGUARD_MILTER_OVERSIZE`: score the part kept, or `451 4.7.1`), at most
  `OUTGUARD_MAX_HEADERS` headers and `OUTGUARD_MAX_RECIPIENTS` recipients.
- **end of message**: the whole message is scored, built as the JSON API builds it
  (`service.api.routes.to_input`), and the answer becomes the reply: `accept` continues;
  `defer` is `451 4.7.1`; `hold` is SMFIR_QUARANTINE (Postfix's hold queue) where the MTA
  allowed it, else `451 4.7.1`; `reject` is `550 5.7.1`. The headers of `strip_headers`
  are deleted (SMFIR_CHGHEADER with an empty value); a relay with
  `reply_reveal_scores` also gets an `X-Outguard` header.

When scoring fails or takes longer than `OUTGUARD_MILTER_SCORE_TIMEOUT_S`,
`OUTGUARD_MILTER_ERROR_ACTION` decides: `mta` (the default) closes the connection
without an answer, so the MTA applies its own `milter_default_action` (Postfix) or
`F=` flag (Sendmail), exactly as when outguard is down; or `accept` / `tempfail`.

Only networks in `OUTGUARD_MILTER_ALLOWED_CLIENTS` (loopback by default) may connect:
the protocol has no authentication, and a client could otherwise feed an account's
evidence. Nothing here logs a body, a subject or a recipient.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network
from pathlib import Path

from service.adapters import milter_codec as codec
from service.adapters.listener import Listener
from service.adapters.replies import lock_info, locked_reply, rate_limited_reply, score_summary
from service.api.routes import to_input
from service.api.schemas import MessageIn
from service.container import Container
from service.decision import account_risk
from service.identity import resolve_identity
from service.lifecycle import allowance_per_minute, lock_has_expired
from service.scoring import Scorer, ScoreResult
from service.settings import RelayPolicy, Settings
from service.stores import AccountKey, AccountState, AccountStateStore, AccountStatus, IdentityRuleStore

log = logging.getLogger(__name__)

PROTOCOL = "milter"
# What we ask of the MTA, each only where it offers it: add and delete headers, hold a
# message, and choose the macros we read.
WANTED_ACTIONS = codec.F_ADDHDRS | codec.F_CHGHDRS | codec.F_QUARANTINE | codec.F_SETSYMLIST
# Events we do not need, and replies we do not send (fewer round trips): every header and
# the connect and HELO events go through without a reply.
WANTED_STEPS = (
    codec.P_NOUNKNOWN
    | codec.P_NODATA
    | codec.P_SKIP
    | codec.P_NR_CONN
    | codec.P_NR_HELO
    | codec.P_NR_HDR
    | codec.P_NR_EOH
    | codec.P_NR_DATA
    | codec.P_NR_UNKN
)
# The macros read, per stage (SMFIM_*), asked for where the MTA lets the filter choose.
MACROS = {
    codec.M_CONNECT: ("j", "{daemon_name}"),
    codec.M_ENVFROM: ("i", "{auth_authen}", "{client_addr}", "{daemon_name}"),
    codec.M_ENVRCPT: ("i",),
    codec.M_EOM: ("i",),
}
# The largest packet accepted: Postfix sends headers up to header_size_limit (100 KB by
# default) and body chunks of 64 KB; anything bigger is a broken or hostile peer.
MAX_PACKET = 1 << 20
RELAY_NAME = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
MAX_FIELD = 998  # the JSON API's longest metadata field
MAX_MACROS = 256  # distinct macro names kept per connection and per message


class _Close(Exception):
    """End the connection without an answer: QUIT, or the MTA's own default action after an error."""


@dataclass(slots=True)
class _Message:
    """One transaction's state: reset at MAIL FROM, ABORT and after end of message."""

    macros: dict[str, str] = field(default_factory=dict)
    envelope_from: str | None = None
    recipients: list[str] = field(default_factory=list)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: list[bytes] = field(default_factory=list)
    size: int = 0
    truncated: bool = False
    early_key: AccountKey | None = None  # the account, when the envelope alone names it
    rcpt_reply: bytes | None = None  # the answer every RCPT of this message gets (rate limited)


def _address(value: str | None) -> str | None:
    """An IP address as the JSON API stores it (Sendmail writes IPv6 as `IPv6:...`), or None."""
    if not value:
        return None
    value = value.strip().strip("[]")
    value = value[5:] if value[:5].lower() == "ipv6:" else value
    try:
        return str(ip_address(value))
    except ValueError:
        return None


def _crlf(value: bytes) -> bytes:
    """A folded header value as the MTA sends it (lines joined by LF) with CRLF line ends."""
    return value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _unbracket(address: str) -> str:
    return address.strip().removeprefix("<").removesuffix(">")


class MilterServer(Listener):
    """The asyncio server; one `MilterSession` per connection."""

    protocol = PROTOCOL
    description = "milter"

    def __init__(self, container: Container) -> None:
        self.settings: Settings = container.settings
        # reuse_port: several `outguard serve --workers` processes share the port (with Redis).
        super().__init__(container.metrics, self.settings.milter_max_connections, reuse_port=True)
        self.scorer: Scorer = container.scorer
        self.accounts: AccountStateStore = container.accounts
        self.rules: IdentityRuleStore = container.rules
        self.allowed = [ip_network(n, strict=False) for n in self.settings.milter_allowed_clients]

    async def start(self, listen: str | None = None) -> None:
        await super().start(listen or self.settings.milter_listen or "127.0.0.1:0")

    def relay_for(self, macros: Callable[[str], str | None]) -> str:
        if self.settings.milter_relay:
            return self.settings.milter_relay
        # Postfix sends its host name ({j}) when milter_macro_daemon_name is not set: no relay name.
        name = macros("daemon_name")
        return name if name and name != macros("j") and RELAY_NAME.match(name) else "default"

    def envelope_account(
        self, relay: str, sasl: str | None, envelope_from: str | None, client_ip: str | None
    ) -> AccountKey | None:
        """The account when the envelope alone decides it: no header the message may carry could name another."""
        rules = self.rules.rules_for(relay)
        identity = resolve_identity(
            account=None,
            sasl_username=sasl,
            envelope_from=envelope_from,
            client_ip=client_ip,
            headers=(),
            rules=rules,
        )
        if identity.source == "sasl" and not any(rule.trusted for rule in rules):
            return AccountKey(relay, identity.account)
        if identity.source in ("envelope_from", "client_ip") and not rules:
            return AccountKey(relay, identity.account)
        return None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        peer_ip = _address(peer[0]) if isinstance(peer, tuple) and peer else None
        if peer_ip is None or not any(ip_address(peer_ip) in network for network in self.allowed):
            self.metrics.adapter_errors.labels(PROTOCOL, "forbidden").inc()
            log.warning("milter: refused a connection from %s (not in OUTGUARD_MILTER_ALLOWED_CLIENTS)", peer_ip)
            return
        session = MilterSession(self)
        try:
            while True:
                async with asyncio.timeout(self.settings.milter_idle_timeout_s):
                    length = codec.packet_length(await reader.readexactly(4))
                    if length > MAX_PACKET:
                        raise codec.MilterProtocolError(f"a packet of {length} bytes, over {MAX_PACKET}")
                    packet = await reader.readexactly(length)
                answer = await session.handle(packet[:1], packet[1:])
                if answer:
                    writer.write(answer)
                    await writer.drain()
        except _Close:
            pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the MTA went away: its business
        except TimeoutError:
            self.metrics.adapter_errors.labels(PROTOCOL, "idle_timeout").inc()
        except codec.MilterProtocolError as error:
            self.metrics.adapter_errors.labels(PROTOCOL, "protocol").inc()
            log.warning("milter: protocol error from %s, connection closed: %s", peer_ip, error)
        except asyncio.CancelledError:
            pass  # shutting down
        except Exception as error:  # never let one connection take the server down
            self.metrics.adapter_errors.labels(PROTOCOL, "internal").inc()
            # The type and where, not the message: an error's text may quote the mail.
            frame = traceback.extract_tb(error.__traceback__)[-1]
            where = f"{Path(frame.filename).name}:{frame.lineno}"
            log.error("milter: connection from %s failed: %s at %s", peer_ip, type(error).__name__, where)


class MilterSession:
    """One MTA connection: the negotiated options, the connection's facts, the message in flight."""

    def __init__(self, server: MilterServer) -> None:
        self.server = server
        self.settings = server.settings
        self.metrics = server.metrics
        self.actions = 0
        self.steps = 0
        self._reset_connection()

    def _reset_connection(self) -> None:
        self.connection_macros: dict[str, str] = {}
        self.client_ip: str | None = None
        self.helo: str | None = None
        self.message = _Message()

    def macro(self, name: str) -> str | None:
        return self.message.macros.get(name) or self.connection_macros.get(name) or None

    async def handle(self, command: bytes, data: bytes) -> bytes | None:
        """The answer to one packet (None: this one gets none)."""
        handler = _HANDLERS.get(command)
        if handler is None:
            raise codec.MilterProtocolError(f"unknown command {command!r}")
        return await handler(self, data)

    def _continue(self, no_reply_flag: int = 0) -> bytes | None:
        return None if self.steps & no_reply_flag else codec.simple(codec.CONTINUE)

    # -- the connection

    async def on_optneg(self, data: bytes) -> bytes:
        offer = codec.parse_optneg(data)
        if offer.version < 2:
            raise codec.MilterProtocolError(f"protocol version {offer.version}: 2 to 6 are spoken")
        version = min(offer.version, codec.PROTOCOL_VERSION)
        self.actions = WANTED_ACTIONS & offer.actions
        self.steps = WANTED_STEPS & offer.protocol
        macros = MACROS if self.actions & codec.F_SETSYMLIST else None
        return codec.optneg_reply(version, self.actions, self.steps, macros)

    async def on_macro(self, data: bytes) -> None:
        stage, values = codec.parse_macros(data)
        macros = self.connection_macros if stage in (codec.CONNECT, codec.HELO) else self.message.macros
        for name, value in values.items():
            if name in macros or len(macros) < MAX_MACROS:  # a peer cannot grow them without bound
                macros[name] = value

    async def on_connect(self, data: bytes) -> bytes | None:
        self.metrics.adapter_requests.labels(PROTOCOL, "connect").inc()
        connect = codec.parse_connect(data)
        if connect.family in (codec.FAMILY_INET, codec.FAMILY_INET6):
            self.client_ip = _address(connect.address)
        return self._continue(codec.P_NR_CONN)

    async def on_helo(self, data: bytes) -> bytes | None:
        strings = codec.cstrings(data)
        self.helo = codec.text(strings[0])[:MAX_FIELD] if strings else None
        return self._continue(codec.P_NR_HELO)

    async def on_quit(self, _: bytes) -> None:
        raise _Close

    async def on_quit_new_connection(self, _: bytes) -> None:
        self._reset_connection()  # the same socket, the next SMTP session

    async def on_abort(self, _: bytes) -> None:
        self.metrics.adapter_requests.labels(PROTOCOL, "abort").inc()
        self.message = _Message(macros={})

    async def on_unknown(self, _: bytes) -> bytes | None:
        return self._continue(codec.P_NR_UNKN)

    async def on_data(self, _: bytes) -> bytes | None:
        return self._continue(codec.P_NR_DATA)

    # -- the envelope

    def relay(self) -> str:
        return self.server.relay_for(self.macro)

    def policy(self, relay: str) -> RelayPolicy:
        return self.settings.policy_for(relay)

    async def on_mail(self, data: bytes) -> bytes:
        started = time.perf_counter()
        self.metrics.adapter_requests.labels(PROTOCOL, "mail").inc()
        macros = self.message.macros  # the MAIL stage's macros arrived just before
        self.message = _Message(macros=macros)
        args = codec.parse_args(data)
        self.message.envelope_from = args[0][:MAX_FIELD]
        if (address := _address(self.macro("client_addr"))) is not None:
            self.client_ip = address  # XCLIENT ADDR, or the MTA's own view
        relay = self.relay()
        key = self.server.envelope_account(relay, self._sasl(), self.message.envelope_from, self.client_ip)
        self.message.early_key = key
        answer = codec.simple(codec.CONTINUE)
        state = await self._state(key) if key is not None else None
        if key is not None and state is not None and state.locked and not lock_has_expired(state, time.time()):
            reply = locked_reply(key.account, lock_info(key, state), self.policy(relay))
            answer = codec.reply_code(reply.line)
            self.metrics.adapter_answers.labels(PROTOCOL, "locked").inc()
            log.debug("milter: MAIL FROM refused, %s/%s is locked", relay, key.account)
        self.metrics.adapter_latency.labels(PROTOCOL, "mail").observe(time.perf_counter() - started)
        return answer

    async def on_rcpt(self, data: bytes) -> bytes:
        started = time.perf_counter()
        self.metrics.adapter_requests.labels(PROTOCOL, "rcpt").inc()
        message = self.message
        recipient = _unbracket(codec.parse_args(data)[0])[:MAX_FIELD]
        if message.rcpt_reply is None and message.early_key is not None and not message.recipients:
            # Once per message, at its first recipient: is the account over its allowance?
            key = message.early_key
            state = await self._state(key)
            policy = self.policy(key.relay)
            if state is not None and self._over_allowance(state, policy):
                message.rcpt_reply = codec.reply_code(rate_limited_reply(key.account, policy).line)
                self.metrics.adapter_answers.labels(PROTOCOL, "rate_limited").inc()
        if message.rcpt_reply is not None:
            answer = message.rcpt_reply
        else:
            if len(message.recipients) < self.settings.max_recipients:
                message.recipients.append(recipient)
            answer = codec.simple(codec.CONTINUE)
        self.metrics.adapter_latency.labels(PROTOCOL, "rcpt").observe(time.perf_counter() - started)
        return answer

    def _sasl(self) -> str | None:
        sasl = self.macro("auth_authen")
        return sasl[:MAX_FIELD] if sasl else None

    async def _state(self, key: AccountKey) -> AccountState | None:
        """The account's state, one read; None when it cannot be read (the end of message decides then)."""
        try:
            return await self.server.accounts.get(key)
        except Exception as error:
            self.metrics.adapter_errors.labels(PROTOCOL, "state").inc()
            log.warning("milter: account state unreadable (%s); judged at end of message", type(error).__name__)
            return None

    def _over_allowance(self, state: AccountState, policy: RelayPolicy) -> bool:
        """The rate limit's token bucket as the next message would find it, without taking a token."""
        if state.status is not AccountStatus.RATE_LIMITED or state.allowlisted:
            return False
        risk = account_risk(state.evidence, self.server.scorer.policy.lock_threshold)
        tokens = policy.rate_limit_burst if state.tokens is None else state.tokens
        since = 0.0 if state.tokens_at is None else max(0.0, time.time() - state.tokens_at)
        tokens = min(policy.rate_limit_burst, tokens + since * allowance_per_minute(risk, policy) / 60.0)
        return tokens < 1.0

    # -- the content

    def _keep(self, size: int) -> bool:
        """Room for `size` more bytes of this message? Past the limit it is truncated, and stays so."""
        message = self.message
        if message.truncated or message.size + size > self.settings.max_raw_bytes:
            message.truncated = True
            return False
        message.size += size
        return True

    async def on_header(self, data: bytes) -> bytes | None:
        name, value = codec.parse_header(data)
        if len(self.message.headers) < self.settings.max_headers and self._keep(len(name) + len(value) + 4):
            self.message.headers.append((name, value))
        return self._continue(codec.P_NR_HDR)

    async def on_eoh(self, _: bytes) -> bytes | None:
        return self._continue(codec.P_NR_EOH)

    async def on_body(self, data: bytes) -> bytes:
        if self._keep(len(data)):
            self.message.body.append(data)
            return codec.simple(codec.CONTINUE)
        room = self.settings.max_raw_bytes - self.message.size
        if room > 0:  # the part that still fits
            self.message.body.append(data[:room])
            self.message.size += room
        self.metrics.adapter_errors.labels(PROTOCOL, "oversize").inc()
        if self.settings.milter_oversize == "tempfail":
            policy = self.policy(self.relay())
            self.metrics.adapter_answers.labels(PROTOCOL, "oversize").inc()
            line = f"451 4.7.1 {policy.reply_defer}"
            self.message = _Message()
            return codec.reply_code(line)
        # Score what was kept; the MTA need not send the rest.
        return codec.simple(codec.SKIP if self.steps & codec.P_SKIP else codec.CONTINUE)

    async def on_end_of_message(self, data: bytes) -> bytes | None:
        if data:  # Sendmail may send the last chunk with the end of message
            answer = await self.on_body(data)
            if answer is not None and answer[4:5] == codec.REPLYCODE:
                return answer
        started = time.perf_counter()
        self.metrics.adapter_requests.labels(PROTOCOL, "eom").inc()
        try:
            return await self._judge(self.message)
        finally:
            self.message = _Message()  # the next transaction on this connection starts clean
            self.metrics.adapter_latency.labels(PROTOCOL, "eom").observe(time.perf_counter() - started)

    def build_input(self, message: _Message, relay: str) -> MessageIn:
        """The message as a relay would send it to `POST /v1/score`."""
        lines = [name + b": " + _crlf(value) + b"\r\n" for name, value in message.headers]
        raw = (b"".join(lines) + b"\r\n" + b"".join(message.body))[: self.settings.max_raw_bytes]
        queue_id = self.macro("i")
        message_id = (
            next((codec.text(v).strip() for n, v in message.headers if n.lower() == b"message-id" and v.strip()), None)
            or f"<{queue_id or uuid.uuid4().hex}@{relay}.milter.outguard>"
        )
        fields: dict[str, object] = {
            "message_id": message_id[:MAX_FIELD],
            "relay": relay,
            "sasl_username": self._sasl(),
            "client_ip": self.client_ip,
            "helo": self.helo,
            "envelope_from": message.envelope_from,
            "queue_id": queue_id[:MAX_FIELD] if queue_id else None,
            "recipients": message.recipients,
        }
        if raw.isascii():
            fields["raw"] = raw.decode("ascii")
        else:
            fields["raw_base64"] = base64.b64encode(raw).decode("ascii")
        return MessageIn.model_validate(fields)

    async def _judge(self, message: _Message) -> bytes | None:
        relay = self.relay()
        try:
            scoring = asyncio.ensure_future(self._score(message, relay))
            # Shielded: a message whose answer came too late is still counted in its account.
            async with asyncio.timeout(self.settings.milter_score_timeout_s):
                result = await asyncio.shield(scoring)
        except TimeoutError:
            scoring.add_done_callback(_retrieve)
            self.metrics.adapter_errors.labels(PROTOCOL, "timeout").inc()
            log.warning("milter: scoring took over %.1f s", self.settings.milter_score_timeout_s)
            return self._error_answer(relay)
        except Exception as error:
            self.metrics.adapter_errors.labels(PROTOCOL, "scoring").inc()
            log.warning("milter: scoring failed (%s)", type(error).__name__)  # its text may quote the mail
            return self._error_answer(relay)
        if message.truncated:
            limit = self.settings.max_raw_bytes
            log.info("milter: queue id %s over %d bytes, scored on its first part", self.macro("i"), limit)
        self.metrics.adapter_answers.labels(PROTOCOL, result.action).inc()
        return self.answer(result, self.policy(relay), message.headers)

    async def _score(self, message: _Message, relay: str) -> ScoreResult:
        inputs = to_input(self.build_input(message, relay), self.settings)
        [result] = await self.server.scorer.score([inputs])
        return result

    def _error_answer(self, relay: str) -> bytes:
        action = self.settings.milter_error_action
        self.metrics.adapter_answers.labels(PROTOCOL, f"error_{action}").inc()
        if action == "accept":
            return codec.simple(codec.CONTINUE)
        if action == "tempfail":
            return codec.reply_code(f"451 4.7.1 {self.policy(relay).reply_defer}")
        raise _Close  # no answer: the MTA applies milter_default_action

    def answer(self, result: ScoreResult, policy: RelayPolicy, headers: list[tuple[bytes, bytes]]) -> bytes:
        """The end-of-message packets for a score: header edits, then the decision."""
        packets: list[bytes] = []
        if result.action in ("accept", "hold"):
            if result.strip_headers and self.actions & codec.F_CHGHDRS:
                packets += _strip(result.strip_headers, headers)
            if (summary := score_summary(result, policy)) is not None and self.actions & codec.F_ADDHDRS:
                packets.append(codec.add_header("X-Outguard", f"{result.action}; {summary}"))
        if result.action == "accept" or result.smtp_reply is None:
            packets.append(codec.simple(codec.CONTINUE))
        elif result.action == "hold" and self.actions & codec.F_QUARANTINE:
            packets += [codec.quarantine(result.smtp_reply.text), codec.simple(codec.CONTINUE)]
        else:
            packets.append(codec.reply_code(result.smtp_reply.line))
        return b"".join(packets)


def _strip(names: tuple[str, ...], headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """Delete every instance of each header, the last first (so no index moves under the next).

    The index counts the headers of that name as the MTA sent them (Postfix leaves its own
    Received header out of both the headers it sends and the index).
    """
    packets = []
    for name in names:
        wanted = name.lower().encode()
        count = sum(1 for header, _ in headers if header.lower() == wanted)
        packets += [codec.change_header(index, name, "") for index in range(count, 0, -1)]
    return packets


def _retrieve(task: asyncio.Future[ScoreResult]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.warning("milter: late scoring failed (%s)", type(error).__name__)


_HANDLERS = {
    codec.OPTNEG: MilterSession.on_optneg,
    codec.MACRO: MilterSession.on_macro,
    codec.CONNECT: MilterSession.on_connect,
    codec.HELO: MilterSession.on_helo,
    codec.MAIL: MilterSession.on_mail,
    codec.RCPT: MilterSession.on_rcpt,
    codec.DATA: MilterSession.on_data,
    codec.HEADER: MilterSession.on_header,
    codec.EOH: MilterSession.on_eoh,
    codec.BODY: MilterSession.on_body,
    codec.BODYEOB: MilterSession.on_end_of_message,
    codec.ABORT: MilterSession.on_abort,
    codec.QUIT: MilterSession.on_quit,
    codec.QUIT_NC: MilterSession.on_quit_new_connection,
    codec.UNKNOWN: MilterSession.on_unknown,
}
