"""Links: extraction from text, host and registered-domain analysis, shorteners."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

import tldextract

# The snapshot of the Public Suffix List bundled with tldextract; never fetched at run time.
# Private suffixes (github.io, blogspot.com) count as registries: each of their
# subdomains is somebody else's site, and spam hides behind them.
_EXTRACT = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, include_psl_private_domains=True)

URL_IN_TEXT = re.compile(r"""(?:https?://|www\.)[^\s<>"'()\[\]{}]+""", re.IGNORECASE)
DOMAIN_IN_TEXT = re.compile(r"(?:https?://)?(?:[a-z0-9-]+\.)+[a-z]{2,}", re.IGNORECASE)

SHORTENERS = frozenset(
    [
        "bit.ly",
        "bitly.com",
        "tinyurl.com",
        "goo.gl",
        "t.co",
        "ow.ly",
        "is.gd",
        "buff.ly",
        "rebrand.ly",
        "cutt.ly",
        "shorturl.at",
        "tiny.cc",
        "bit.do",
        "rb.gy",
        "t.ly",
        "s.id",
        "lnkd.in",
        "qrco.de",
        "v.gd",
        "x.co",
        "mcaf.ee",
        "soo.gd",
        "clck.ru",
        "u.to",
        "shorte.st",
        "adf.ly",
        "bl.ink",
        "short.io",
        "tr.im",
        "snip.ly",
        "trib.al",
        "db.tt",
    ]
)


@dataclass(frozen=True, slots=True)
class Link:
    url: str
    host: str  # lower case, no port, no user-info
    domain: str  # registered domain (example.co.uk), or the host when it has none
    is_ip: bool
    port: int | None
    has_userinfo: bool


@lru_cache(maxsize=65_536)
def registered_domain(host: str) -> str:
    host = host.lower().rstrip(".")
    if not host:
        return ""
    parts = _EXTRACT(host)
    return parts.top_domain_under_public_suffix or host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def parse_link(url: str) -> Link | None:
    url = url.strip().rstrip(".,;:!?")
    if url.lower().startswith("www."):
        url = "http://" + url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a malformed port or an invalid IPv6 literal
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    is_ip = _is_ip(host)
    # Obfuscated numeric hosts (http://3232235777/) are IP literals too.
    if not is_ip and host.isdigit():
        is_ip = True
    return Link(
        url=url,
        host=host,
        domain=host if is_ip else registered_domain(host),
        is_ip=is_ip,
        port=port,
        has_userinfo="@" in parts.netloc,
    )


def links_in_text(text: str, limit: int = 500) -> list[str]:
    return [m.group(0) for _, m in zip(range(limit), URL_IN_TEXT.finditer(text), strict=False)]


def domain_named_in(text: str) -> str | None:
    """The registered domain a link's visible text claims, if it looks like a URL or host."""
    match = DOMAIN_IN_TEXT.search(text.strip())
    if not match:
        return None
    link = parse_link(match.group(0) if "://" in match.group(0) else "http://" + match.group(0))
    return link.domain if link else None


def email_domain(address: str | None) -> str:
    if not address or "@" not in address:
        return ""
    return registered_domain(address.rsplit("@", 1)[1].strip(" >").lower())
