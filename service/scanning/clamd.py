"""A small asyncio client for clamd's `INSTREAM`: the bytes of one message in, a verdict out.

The protocol (clamd(8)): connect (a unix socket or TCP), send `zINSTREAM\\0`, then the
data as chunks, each prefixed with its length as a 4-byte big-endian integer, and a
zero-length chunk to end it. clamd answers one NUL-terminated line and closes:

    stream: OK
    stream: Win.Trojan.Agent-123 FOUND
    INSTREAM size limit exceeded. ERROR      (more than its StreamMaxLength was sent)
    <anything else> ERROR

clamd counts every chunk against `StreamMaxLength` (25 MB by default, Debian's too) and
closes the connection when it is exceeded, so the client sends at most `max_bytes`:
a larger message is scanned up to that many bytes (its first `max_bytes`), never
refused for its size, and the result says it was cut.

Not a library: `clamd` and `pyclamd` are unmaintained and synchronous; `clamdpy` and
`clamav-client` are synchronous (a thread per scan); `aioclamd` is asyncio but speaks
TCP only (no unix socket, which is how clamd is usually reached on the same host), sends
1 KB chunks without waiting for the socket to drain (a 10 MB message is buffered whole),
applies no timeout although it takes one, and imports `pkg_resources`, which current
setuptools no longer ships. The protocol is the hundred lines below.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from typing import Literal

CHUNK_BYTES = 64 * 1024  # per INSTREAM chunk; clamd's own clamdscan sends about this much
REPLY_LIMIT = 64 * 1024  # the longest reply line read (a signature name is under 200 bytes)
_END = struct.pack("!L", 0)

FailureReason = Literal["unavailable", "timeout", "error"]


class ClamdFailure(Exception):
    """The scan did not complete: clamd could not be reached (`unavailable`), did not answer in
    time (`timeout`), or answered something other than a verdict (`error`)."""

    def __init__(self, reason: FailureReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: FailureReason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ClamdAddress:
    """Where clamd listens: `unix:/run/clamav/clamd.ctl` or `tcp:127.0.0.1:3310` (`tcp:[::1]:3310`)."""

    path: str | None = None
    host: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, spec: str) -> ClamdAddress:
        scheme, _, rest = spec.strip().partition(":")
        if scheme == "unix":
            if not rest.startswith("/"):
                raise ValueError(f"{spec!r}: a unix socket needs an absolute path (unix:/run/clamav/clamd.ctl)")
            return cls(path=rest)
        if scheme == "tcp":
            host, _, port = rest.rpartition(":")
            host = host.removeprefix("[").removesuffix("]")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{spec!r}: give tcp:HOST:PORT (tcp:127.0.0.1:3310, tcp:[::1]:3310)")
            return cls(host=host, port=int(port))
        raise ValueError(f"{spec!r}: give unix:/path/to/clamd.ctl or tcp:HOST:PORT")

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """clamd's answer on one stream: `signature` is None when it found nothing."""

    signature: str | None
    scanned_bytes: int
    truncated: bool  # the data was longer than `max_bytes`: only its first `max_bytes` were scanned


class ClamdClient:
    """One connection per scan (INSTREAM takes one stream per connection), at most `connections` at once.

    Every call raises `ClamdFailure` when it does not complete within `timeout_s` (waiting
    for a free connection is not counted: that is this client's own queue, not clamd).
    """

    def __init__(
        self,
        address: ClamdAddress,
        *,
        timeout_s: float = 5.0,
        max_bytes: int = 25 * 1024 * 1024,
        connections: int = 8,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        if max_bytes < 1 or chunk_bytes < 1 or connections < 1 or timeout_s <= 0:
            raise ValueError("max_bytes, chunk_bytes, connections and timeout_s must be positive")
        self.address = address
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.chunk_bytes = chunk_bytes
        self.connections = connections
        self._slots: asyncio.Semaphore | None = None
        self._slots_loop: asyncio.AbstractEventLoop | None = None

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots_loop is not loop:  # one per event loop (tests run several)
            self._slots, self._slots_loop = asyncio.Semaphore(self.connections), loop
        return self._slots

    async def instream(self, data: bytes | memoryview, handed: asyncio.Event | None = None) -> Verdict:
        """Scan `data` (its first `max_bytes`).

        `handed` is set once the caller need not keep the event loop free for this scan:
        the whole stream is written to clamd (which scans in its own process while the
        caller computes), or the scan waits for a free connection (its turn comes later).
        """
        view = memoryview(data)[: self.max_bytes]
        truncated = len(data) > self.max_bytes
        slots = self._semaphore()
        if handed is not None and slots.locked():
            handed.set()
        async with slots:
            reply = await self._exchange(b"zINSTREAM\0", view, handed=handed)
        if reply.endswith(" FOUND"):
            name = reply.removeprefix("stream: ").removesuffix(" FOUND").strip()
            return Verdict(name or "unnamed", len(view), truncated)
        if reply.endswith(": OK"):
            return Verdict(None, len(view), truncated)
        if "size limit exceeded" in reply:
            raise ClamdFailure(
                "error",
                f"clamd's StreamMaxLength is under {len(view)} bytes: set OUTGUARD_CLAMD_MAX_BYTES to at most "
                "its StreamMaxLength",
            )
        raise ClamdFailure("error", f"clamd answered {reply[:200]!r}")

    async def command(self, name: str, timeout_s: float | None = None) -> str:
        """A one-line command (`PING`, `VERSION`): its answer. Not queued behind scans: a probe sees clamd itself."""
        return await self._exchange(f"z{name}\0".encode(), None, timeout_s)

    async def _exchange(
        self,
        command: bytes,
        data: memoryview | None,
        timeout_s: float | None = None,
        handed: asyncio.Event | None = None,
    ) -> str:
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await self._connect()
                try:
                    return await self._talk(reader, writer, command, data, handed)
                finally:
                    writer.close()
        except TimeoutError:
            raise ClamdFailure("timeout", f"no answer from {self.address} within {timeout_s:g} s") from None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            if self.address.path is not None:
                return await asyncio.open_unix_connection(self.address.path, limit=REPLY_LIMIT)
            return await asyncio.open_connection(self.address.host, self.address.port, limit=REPLY_LIMIT)
        except OSError as error:
            raise ClamdFailure("unavailable", f"cannot connect to {self.address}: {error.strerror or error}") from None

    async def _talk(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        command: bytes,
        data: memoryview | None,
        handed: asyncio.Event | None = None,
    ) -> str:
        sent = 0
        try:
            writer.write(command)
            if data is not None:
                for start in range(0, len(data), self.chunk_bytes):
                    chunk = data[start : start + self.chunk_bytes]
                    writer.write(struct.pack("!L", len(chunk)))
                    writer.write(chunk)
                    await writer.drain()  # never more than a chunk or two buffered here
                    sent += len(chunk)
                writer.write(_END)
            await writer.drain()
            cut_short = False
        except (ConnectionError, OSError):
            cut_short = True  # clamd closed early: over its StreamMaxLength, or shutting down
        if handed is not None:
            handed.set()
        try:
            line = await reader.readuntil(b"\0")
        except asyncio.IncompleteReadError as error:
            if not error.partial:
                raise self._dropped(cut_short, sent, "closed the connection without an answer") from None
            line = error.partial
        except asyncio.LimitOverrunError:
            raise ClamdFailure("error", f"{self.address} answered more than {REPLY_LIMIT} bytes") from None
        except (ConnectionError, OSError) as error:
            raise self._dropped(cut_short, sent, f"dropped the connection ({error})") from None
        return line.rstrip(b"\0").decode("utf-8", "replace").strip()

    def _dropped(self, cut_short: bool, sent: int, what: str) -> ClamdFailure:
        if cut_short and sent:  # it took part of the stream, then hung up: its size limit, most likely
            return ClamdFailure(
                "error",
                f"{self.address} {what} after {sent} bytes of the message: if that is its StreamMaxLength, set "
                "OUTGUARD_CLAMD_MAX_BYTES to at most that",
            )
        return ClamdFailure("unavailable", f"{self.address} {what}")
