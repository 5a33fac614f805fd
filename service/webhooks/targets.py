"""Which webhook URLs are allowed: http(s) only, and no loopback, private or link-local targets.

A subscriber URL that resolves inside the provider's network would let whoever can
create a webhook make this service send requests there (SSRF). The check runs when a
subscription is created and again before every delivery, since DNS can change.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit


class RefusedTarget(ValueError):
    """The URL may not be called; the message says why."""


def _forbidden(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


async def check_target(url: str, allow_private: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedTarget(f"{url!r} is not an http(s) URL with a host")
    if allow_private:
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise RefusedTarget(f"{url!r} has an invalid port") from None
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise RefusedTarget(f"{parts.hostname!r} does not resolve: {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if _forbidden(address):
            raise RefusedTarget(
                f"{parts.hostname!r} resolves to {address}, a loopback/private/link-local address; "
                "set OUTGUARD_WEBHOOK_ALLOW_PRIVATE=true to allow it"
            )
