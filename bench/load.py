"""A small HTTP/1.1 keep-alive load generator: N connections, each sending requests back to back.

Requests are pre-encoded bytes and responses are read by Content-Length, so the
client spends a few microseconds per request; an httpx client spends more per
request than the server under test, which would make it the bottleneck on a
two-core machine.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies: np.ndarray  # seconds, per request

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies.size else float("nan")


def encode_post(host: str, port: int, path: str, body: bytes, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{auth}\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def _connection(
    host: str,
    port: int,
    requests: list[bytes],
    stop_at: float,
    out: list[float],
    errors: list[int],
    offset: int,
    max_requests: int | None = None,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = offset
    try:
        while time.perf_counter() < stop_at and (max_requests is None or i - offset < max_requests):
            started = time.perf_counter()
            writer.write(requests[i % len(requests)])
            status = await _read_response(reader)
            out.append(time.perf_counter() - started)
            if status != 200:
                errors.append(status)
            i += 1
    finally:
        writer.close()


async def run_load(
    host: str,
    port: int,
    requests: list[bytes],
    connections: int,
    seconds: float,
    warmup: float = 1.0,
    max_requests: int | None = None,
) -> LoadResult:
    """Send `requests` round-robin over `connections` for `seconds` (after `warmup`), bounded in time.

    With `max_requests`, each connection stops after that many (and `seconds` only bounds it).
    """
    if max_requests is not None:
        seconds = max(seconds, 300.0)
    if warmup > 0:
        await asyncio.gather(
            *(_connection(host, port, requests, time.perf_counter() + warmup, [], [], c) for c in range(connections))
        )
    latencies: list[float] = []
    errors: list[int] = []
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(
        *(
            _connection(host, port, requests, stop_at, latencies, errors, c * 7919, max_requests)
            for c in range(connections)
        )
    )
    elapsed = time.perf_counter() - started
    return LoadResult(len(latencies), len(errors), elapsed, np.array(latencies))
