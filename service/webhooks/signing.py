"""Webhook signatures: HMAC-SHA256 over "<timestamp>.<body>", the scheme Stripe and others use.

Header: ``Outguard-Signature: t=1795430400,v1=<hex digest>``. A receiver recomputes the
digest with the subscription's secret, compares in constant time, and rejects
timestamps older than a few minutes (replays):

    import hashlib, hmac, time

    def verify(secret: str, header: str, body: bytes, tolerance_s: int = 300) -> bool:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp, signature = int(fields["t"]), fields["v1"]
        expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, signature) and abs(time.time() - timestamp) <= tolerance_s
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Outguard-Signature"


def sign(secret: str, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, header: str, body: bytes, tolerance_s: int = 300, now: float | None = None) -> bool:
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp, signature = int(fields["t"]), fields["v1"]
    except (KeyError, ValueError):
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    fresh = abs((time.time() if now is None else now) - timestamp) <= tolerance_s
    return hmac.compare_digest(expected, signature) and fresh
