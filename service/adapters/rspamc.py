"""Rspamd's protocols: the `/checkv2` JSON (`service.api.rspamd`) and Exim's RSPAMC/1.3 over TCP.

Both turn an Rspamd scan request into the `MessageInput` the scorer takes and its
`ScoreResult` into Rspamd's answer, so Haraka's `rspamd` plugin, `rspamc` and Exim's
`spamd_address = HOST PORT variant=rspamd` work against outguard unchanged.

**The request**: the raw message, and the envelope as headers: `User` (the SASL login),
`IP`, `Helo`, `From`, `Rcpt` (once per recipient), `Queue-Id`, and `MTA-Tag` (the relay
name). `Pass`, `Hostname`, `Deliver-To`, `Flags` and the rest are ignored. A message over
`max_raw_bytes` is scored on its first `max_raw_bytes`: its account is still checked
(a locked account's big attachment is refused like its small mail), and the rest of the
content changes little.

**The answer** (`answer`): outguard's action as Rspamd's

| outguard | Rspamd `action` | Haraka's rspamd plugin | Exim (the ACL in docs/relay-integration.md) |
| --- | --- | --- | --- |
| accept | `no action` | continues | accepts |
| defer | `soft reject` | 451 4.7.1 | defers, 451 4.7.1 |
| hold | `soft reject` + symbol `OUTGUARD_HOLD` | 451 4.7.1 | freezes the message |
| reject | `reject` | 550 (with `reject.authenticated`) | denies, 550 5.7.1 |

`hold` is a soft reject because the clients that speak this protocol cannot quarantine:
Haraka's plugin and Rspamd's own milter treat `add header` as "deliver, with headers",
which would let held spam leave. The symbol tells an Exim ACL to freeze instead.

`score` is the spam probability as log-odds (natural log), so `required_score`, the hold
threshold's log-odds (4.6 at 0.99), is where a message alone is held; a locked account's
message, never scored, gets the reject threshold's. `symbols` are the answer's reasons
(contributions in log-odds as their scores) and one `OUTGUARD_<ACTION>` symbol;
`messages.smtp_message` is the reply text (`service.adapters.replies`: never a score
unless the relay asks); `milter.remove_headers` names the headers an identity rule
wants stripped. The extra `outguard` object carries the native answer.

**RSPAMC/1.3** (`RspamcServer`, on `OUTGUARD_RSPAMC_LISTEN`): Exim's `spam.c` sends
`CHECK RSPAMC/1.3`, headers (`Content-length`, `Queue-Id`, `From`, `Recipient-Number`,
`Rcpt`, `Helo`, `Hostname`, `IP`, `User`), a blank line and exactly `Content-length`
bytes, without closing its side. The answer is `RSPAMD/1.3 0 EX_OK`, then `Metric:
default; True|False; SCORE / REQUIRED / 0.0` and `Action:`, which spam.c parses into
`$spam_score` and `$spam_action`, then `Symbol:`, `Message:`, `X-Milter-Del:` and
`Message-ID:` lines (the rest of `$spam_report`), and the connection closes. Anything
that goes wrong closes the connection without an answer: Exim's `spam` condition then
defers, and `/defer_ok` lets the mail through.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.adapters.listener import Listener
from service.errors import InvalidInput, OutguardError
from service.scoring import MessageInput

if TYPE_CHECKING:
    from service.container import Container
    from service.scoring import ScoreResult
    from service.settings import Settings

log = logging.getLogger(__name__)

RELAY = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
MAX_FIELD = 998  # the longest envelope value (a header line's limit), as the JSON API's
HEAD_SCAN_BYTES = 256 * 1024  # how far into a message its Message-ID is looked for
SYNTHETIC_DOMAIN = "outguard.invalid"  # the Message-ID given to a message without one

ENVELOPE_HEADERS = frozenset({"user", "ip", "helo", "from", "queue-id", "mta-tag"})
ACTIONS = {"accept": "no action", "defer": "soft reject", "hold": "soft reject", "reject": "reject"}
VERDICTS = {
    "accept": "outguard accepts the message",
    "defer": "outguard defers the message: try again later",
    "hold": "outguard holds the message for review (answered soft reject where it cannot be quarantined)",
    "reject": "outguard rejects the message",
}
# Protocol labels of the metrics (`Metrics.adapter_*`).
CHECKV2, RSPAMC = "rspamd", "rspamc"


@dataclass(frozen=True, slots=True)
class Envelope:
    """What a relay told about a message besides its content (the request's headers)."""

    user: str | None = None
    ip: str | None = None
    helo: str | None = None
    sender: str | None = None
    recipients: tuple[str, ...] = ()
    queue_id: str | None = None
    relay: str | None = None


def envelope_from_headers(headers: Iterable[tuple[str, str]]) -> Envelope:
    """The envelope from a request's headers (names in any case; `Rcpt` repeated). `InvalidInput` when unusable."""
    single: dict[str, str] = {}
    recipients: list[str] = []
    for name, value in headers:
        key = name.strip().lower()
        if key == "rcpt":
            if address := _address(_field(key, value)):
                recipients.append(address)
        elif key in ENVELOPE_HEADERS:  # anything else (Settings, Flags, Pass, ...) is not read at all
            single[key] = _field(key, value)
    relay = single.get("mta-tag") or None
    if relay is not None and not RELAY.match(relay):
        raise InvalidInput("MTA-Tag must be a relay name: 1 to 128 letters, digits and ._:@-")
    return Envelope(
        user=single.get("user") or None,
        ip=client_ip(single.get("ip")),
        helo=single.get("helo") or None,
        sender=_address(single.get("from", "")),
        recipients=tuple(recipients),
        queue_id=single.get("queue-id") or None,
        relay=relay,
    )


def message_input(raw: bytes, envelope: Envelope, settings: Settings, default_relay: str) -> MessageInput:
    """The scorer's message: content cut at `max_raw_bytes`, recipients at `max_recipients`."""
    content = raw[: settings.max_raw_bytes]
    relay = envelope.relay or default_relay
    return MessageInput(
        message_id=message_id_of(content) or synthetic_message_id(envelope.queue_id, relay),
        timestamp=time.time(),
        relay=relay,
        sasl_username=envelope.user,
        client_ip=envelope.ip,
        helo=envelope.helo,
        envelope_from=envelope.sender,
        queue_id=envelope.queue_id,
        recipients=envelope.recipients[: settings.max_recipients],
        raw=content,
    )


def message_id_of(raw: bytes) -> str | None:
    """The Message-ID header's value as written (angle brackets kept), from the header block; None without one."""
    head = raw[:HEAD_SCAN_BYTES]
    end = re.search(rb"\r?\n\r?\n", head)
    head = head[: end.start()] if end else head
    unfolded = re.sub(rb"\r?\n[ \t]+", b" ", head)
    for line in unfolded.split(b"\n"):
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"message-id":
            text = value.strip().decode("utf-8", "replace").replace("\x00", "")
            return text[:MAX_FIELD] or None
    return None


def synthetic_message_id(queue_id: str | None, relay: str) -> str:
    """For a message without a Message-ID: the relay's queue id (feedback can match it), else a random one."""
    local = queue_id if queue_id and re.fullmatch(r"[A-Za-z0-9._-]{1,200}", queue_id) else uuid.uuid4().hex
    return f"<{local}.{relay}@{SYNTHETIC_DOMAIN}>"


# -- the answer


def rspamd_score(probability: float | None, settings: Settings) -> float:
    """The spam probability as log-odds; a message never scored (a locked account's) gets the reject threshold's."""
    return round(_logit(settings.reject_threshold if probability is None else probability), 2)


def answer(result: ScoreResult, settings: Settings) -> dict[str, Any]:
    """Rspamd's `/checkv2` answer for a score result."""
    symbols: dict[str, dict[str, Any]] = {}
    for name, description in _verdict_symbols(result):
        symbols[name] = {"name": name, "score": 0.0, "metric_score": 0.0, "description": description}
    for reason in result.reasons:
        name = reason.name.upper()
        score = round(reason.contribution, 4)
        symbols[name] = {
            "name": name,
            "score": score,
            "metric_score": score,
            "description": reason.description,
            "options": [f"{reason.value:.4g}"],
        }
    reply = result.smtp_reply
    milter: dict[str, Any] = {}
    if result.strip_headers:
        milter["remove_headers"] = {name: 0 for name in result.strip_headers}  # 0: every occurrence
    body: dict[str, Any] = {
        "is_skipped": False,
        "score": rspamd_score(result.spam_probability, settings),
        "required_score": round(_logit(settings.hold_threshold), 2),
        "action": ACTIONS.get(result.action, "no action"),
        "symbols": symbols,
        "messages": {"smtp_message": reply.text} if reply is not None else {},
        "message-id": _answer_message_id(result.message_id),
        "outguard": {
            "action": result.action,
            "account": result.account,
            "identity_source": result.identity_source,
            "relay": result.relay,
            "spam_probability": result.spam_probability,
            "account_risk": result.account_risk,
            "account_locked": result.account_locked,
            "lock_recommended": result.lock_recommended,
            "smtp_reply": reply.line if reply is not None else None,
            "model_version": result.model_version,
        },
    }
    if milter:
        body["milter"] = milter
    return body


def _answer_message_id(message_id: str) -> str:
    """As Rspamd answers it: without angle brackets, `undef` for a message that had none."""
    if message_id.endswith(SYNTHETIC_DOMAIN + ">"):
        return "undef"
    return message_id.strip().strip("<>") or "undef"


def _verdict_symbols(result: ScoreResult) -> list[tuple[str, str]]:
    verdict = [(f"OUTGUARD_{result.action.upper()}", VERDICTS.get(result.action, result.action))]
    if result.rate_limited:
        verdict.append(("OUTGUARD_RATE_LIMITED", "The sending account is over its rate limit's allowance"))
    return verdict


def legacy_reply(body: Mapping[str, Any]) -> bytes:
    """The RSPAMC/1.3 answer Exim's spam.c parses, for a `/checkv2` answer."""
    action = body["action"]
    spam = "False" if action == "no action" else "True"
    lines = [
        "RSPAMD/1.3 0 EX_OK",
        f"Metric: default; {spam}; {body['score']:.2f} / {body['required_score']:.2f} / 0.0",
        f"Action: {action}",
    ]
    lines += [f"Symbol: {name}({symbol['score']:.2f})" for name, symbol in body["symbols"].items()]
    lines += [f"Message: {text}" for text in body["messages"].values()]
    lines += [f"X-Milter-Del: {name}" for name in body.get("milter", {}).get("remove_headers", {})]
    lines.append(f"Message-ID: {body['message-id']}")
    return ("\r\n".join(_one_line(line) for line in lines) + "\r\n").encode("utf-8", "replace")


# -- RSPAMC/1.3 over TCP

MAX_HEAD_LINE = 8_192
# A Rcpt line per recipient (Exim's recipients_max is 50,000): recipients past max_recipients are read and
# dropped rather than refused, so a message cannot skip its scan by having too many.
MAX_HEAD_LINES = 100_000
READ_TIMEOUT_S = 120.0  # Exim's own spamd timeout (SPAMD_TIMEOUT)
MAX_CONNECTIONS = 256


class ProtocolError(Exception):
    """The client did not speak RSPAMC: the connection is closed without an answer."""


class RspamcServer(Listener):
    """Exim's spamd protocol (`variant=rspamd`) on a TCP socket, scoring with the app's scorer."""

    protocol = RSPAMC
    description = "RSPAMC (Exim spamd variant=rspamd)"

    def __init__(self, container: Container) -> None:
        super().__init__(container.metrics, MAX_CONNECTIONS, MAX_HEAD_LINE)
        self.container = container
        self.settings = container.settings

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started = time.perf_counter()
        try:
            reply = await asyncio.wait_for(self._check(reader), READ_TIMEOUT_S)
            writer.write(reply)
            await writer.drain()
        except (ProtocolError, OutguardError) as error:
            self.metrics.adapter_errors.labels(RSPAMC, "protocol").inc()
            log.warning("RSPAMC request refused, closing without an answer: %s", error)
        except TimeoutError:
            self.metrics.adapter_errors.labels(RSPAMC, "timeout").inc()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.metrics.adapter_errors.labels(RSPAMC, "connection").inc()
        except Exception as error:  # the MTA's defer_ok decides; never a traceback with message data
            self.metrics.adapter_errors.labels(RSPAMC, "scoring").inc()
            log.error("RSPAMC scoring failed, closing without an answer: %s", type(error).__name__)
        finally:
            self.metrics.adapter_latency.labels(RSPAMC, "check").observe(time.perf_counter() - started)

    async def _check(self, reader: asyncio.StreamReader) -> bytes:
        command, headers = await read_head(reader)
        if command not in ("CHECK", "SYMBOLS", "REPORT", "REPORT_IFSPAM", "PROCESS"):
            raise ProtocolError(f"unsupported command {command[:20]!r}")
        self.metrics.adapter_requests.labels(RSPAMC, "check").inc()
        length = content_length(headers)
        keep = min(length, self.settings.max_raw_bytes)
        if keep < length:
            self.metrics.adapter_errors.labels(RSPAMC, "oversize").inc()
        raw = await reader.readexactly(keep)
        await _discard(reader, length - keep)
        envelope = envelope_from_headers(headers)
        message = message_input(raw, envelope, self.settings, self.settings.rspamc_relay)
        [result] = await self.container.scorer.score([message])
        body = answer(result, self.settings)
        self.metrics.adapter_answers.labels(RSPAMC, result.action).inc()
        return legacy_reply(body)


async def read_head(reader: asyncio.StreamReader) -> tuple[str, list[tuple[str, str]]]:
    """`CHECK RSPAMC/1.3` and the header lines up to the blank line."""
    first = (await _line(reader)).decode("latin-1").strip()
    command, _, version = first.partition(" ")
    if not version.upper().startswith("RSPAMC/"):
        raise ProtocolError("not an RSPAMC request")
    headers: list[tuple[str, str]] = []
    while True:
        line = (await _line(reader)).rstrip(b"\r\n")
        if not line:
            return command.upper(), headers
        if len(headers) >= MAX_HEAD_LINES:
            raise ProtocolError("too many header lines")
        name, colon, value = line.partition(b":")
        if not colon:
            raise ProtocolError("a header line without a colon")
        headers.append((name.decode("latin-1"), value.strip().decode("utf-8", "replace")))


async def _line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise ProtocolError(f"a header line longer than {MAX_HEAD_LINE} bytes") from None


def content_length(headers: Iterable[tuple[str, str]]) -> int:
    for name, value in headers:
        if name.strip().lower() == "content-length":
            if not value.strip().isdigit():
                raise ProtocolError("Content-length is not a number")
            return int(value)
    raise ProtocolError("no Content-length")


async def _discard(reader: asyncio.StreamReader, count: int) -> None:
    while count > 0:
        chunk = await reader.readexactly(min(count, 1 << 16))
        count -= len(chunk)


def _field(key: str, value: str) -> str:
    value = value.strip()
    if "\x00" in value:
        raise InvalidInput(f"the {key} header holds U+0000, which cannot be stored")
    if len(value) > MAX_FIELD:
        raise InvalidInput(f"the {key} header is longer than {MAX_FIELD} characters")
    return value


def _address(value: str) -> str | None:
    """`<alice@example.net>` or `alice@example.net` -> the address; `<>` (a bounce's) -> None."""
    value = value.strip()
    if value.startswith("<") and ">" in value:
        value = value[1 : value.index(">")]
    return value.strip() or None


def client_ip(value: str | None) -> str | None:
    """A client address as given (brackets and an IPv6 zone allowed); anything else is no address."""
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value.strip().strip("[]").split("%")[0]))
    except ValueError:
        return None


def _logit(probability: float) -> float:
    p = min(max(probability, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")
