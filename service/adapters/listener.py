"""One TCP listener of an MTA protocol: where it listens, how many connections it takes, how it stops.

The milter, RSPAMC and policy servers differ only in what they say on a connection
(`Listener.serve`). Binding, the bound on open connections (one over it is closed at
once: the MTA applies its fail-open default), the connection gauge, closing every
connection on shutdown and the warning for a non-loopback address live here once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging

from service.metrics import Metrics

log = logging.getLogger(__name__)


def split_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` (as the settings validate it)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Listener:
    """Subclasses set `protocol` (the metrics label) and `description`, and implement `serve`."""

    protocol: str = ""
    description: str = ""

    def __init__(self, metrics: Metrics, max_connections: int, line_limit: int = 2**16, reuse_port: bool = False):
        self.metrics = metrics
        self.max_connections = max_connections
        self.line_limit = line_limit
        self.reuse_port = reuse_port  # several `outguard serve` processes share the port (with Redis)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, listen: str) -> None:
        host, port = split_listen(listen)
        self._server = await asyncio.start_server(
            self._accept, host, port, limit=self.line_limit, reuse_port=self.reuse_port or None
        )
        if not is_loopback(host):
            log.warning(
                "%s listens on %s: the protocol has no authentication, so only relays may reach it",
                self.protocol,
                listen,
            )
        log.info("%s on %s:%d", self.description, host, self.port)

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)
        self._server = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection, from its first byte to its end; exceptions are the subclass's to handle."""
        raise NotImplementedError

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.max_connections:
            self.metrics.adapter_errors.labels(self.protocol, "overload").inc()
            writer.close()  # the MTA applies its fail-open default
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.metrics.adapter_connections.labels(self.protocol).inc()
        try:
            await self.serve(reader, writer)
        except asyncio.CancelledError:
            pass  # shutting down
        finally:
            self._connections.discard(task)
            self.metrics.adapter_connections.labels(self.protocol).dec()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
