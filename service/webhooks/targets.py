"""Which webhook URLs are allowed: http(s) only, and only to public (globally reachable) addresses.

A subscriber URL that resolves inside the provider's network would let whoever can
create a webhook make this service send requests there (SSRF). The check runs when a
subscription is created and again before every delivery, since DNS can change.

Public means `is_global` (no loopback, private, shared CGNAT `100.64.0.0/10`, link-local,
documentation, reserved or multicast address), and for an IPv6 address that carries an
IPv4 one the IPv4 address is judged: alone for IPv4-mapped and NAT64 (`64:ff9b::/96`)
addresses, which only stand for it, and as well for 6to4 (`2002::/16`) and Teredo, which
tunnel to it: that is where the packets end up.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits
_NOT_GLOBAL = (ipaddress.IPv6Network("64:ff9b:1::/48"),)  # local-use NAT64 (RFC 8215); Python 3.11 calls it global


class RefusedTarget(ValueError):
    """The URL may not be called; the message says why."""


def carried_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for: IPv4-mapped (`::ffff:a.b.c.d`) or NAT64 (`64:ff9b::a.b.c.d`).

    Such an address is only a way of reaching the IPv4 one, so that is the one judged.
    """
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


def tunnelled_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a 6to4 (`2002:AABB:CCDD::`) or Teredo (`2001::/32`) address tunnels to."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.sixtofour is not None:
        return address.sixtofour
    return address.teredo[1] if address.teredo is not None else None


def not_public(address: Address) -> str | None:
    """Why `address` is no public target (None when it is one)."""
    if (carried := carried_ipv4(address)) is not None:
        why = not_public(carried)
        return f"{address}, which stands for {why}" if why is not None else None
    if not address.is_global or address.is_multicast or address.is_reserved or any(address in n for n in _NOT_GLOBAL):
        return f"{address}, a loopback/private/shared/link-local/reserved address, not a public one"
    inner = tunnelled_ipv4(address)
    if inner is not None and (why := not_public(inner)) is not None:
        return f"{address}, which tunnels to {why}"
    return None


async def check_target(url: str, allow_private: bool) -> None:
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError as exc:  # e.g. an unclosed IPv6 literal
        raise RefusedTarget(f"{url!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise RefusedTarget(f"{url!r} is not an http(s) URL with a host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise RefusedTarget(f"{url!r} has an invalid port") from None
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as exc:  # UnicodeError: not a valid IDNA name
        raise RefusedTarget(f"{hostname!r} does not resolve: {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if (why := not_public(address)) is not None:
            raise RefusedTarget(
                f"{hostname!r} resolves to {why}; set OUTGUARD_WEBHOOK_ALLOW_PRIVATE=true to allow private targets"
            )
