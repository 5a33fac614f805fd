"""Links a person can open from a notice, a digest or a webhook, without an API token.

Two kinds: the account's dashboard page (which asks for its own login), and the
account's incident report behind a signed, expiring, read-only token for that one
report: `{public_url}/incident/{token}`. The token is the report's relay, account and
expiry, signed with HMAC-SHA256 under a server key (`OUTGUARD_LINK_KEY`, or one
generated into the state folder); it opens that report and nothing else, and stops
working at its expiry. Whoever holds the link reads that report: it goes only to the
addresses a notice or digest is sent to.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from urllib.parse import quote

import orjson

from service.stores import AccountKey

# The signed bytes start with this, so a token can never be mistaken for another HMAC use of the key.
_PURPOSE = b"outguard-incident-link-v1:"
INCIDENT_PATH = "/incident/"


class BadLink(ValueError):
    """The link's token is not one this server signed, or it has expired; the message says which."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def dashboard_path(key: AccountKey) -> str:
    return f"/dashboard/accounts/{quote(key.relay, safe='')}/{quote(key.account, safe='')}"


class ReportLinks:
    def __init__(self, key: bytes, public_url: str, ttl_s: float) -> None:
        self._key = key
        self.public_url = public_url.rstrip("/")
        self.ttl_s = ttl_s

    def dashboard(self, key: AccountKey) -> str:
        """The account's dashboard page (the dashboard asks for its login)."""
        return self.public_url + dashboard_path(key)

    def token(self, key: AccountKey, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + self.ttl_s)
        payload = _b64(orjson.dumps({"r": key.relay, "a": key.account, "x": expires}))
        return f"{payload}.{_b64(self._sign(payload))}"

    def incident(self, key: AccountKey, now: float | None = None) -> str:
        """The account's incident report (HTML), readable without a login until the link expires."""
        return self.public_url + INCIDENT_PATH + self.token(key, now)

    def verify(self, token: str, now: float | None = None) -> tuple[AccountKey, float]:
        """The account whose report the token opens, and when it expires; `BadLink` otherwise."""
        payload, _, signature = token.partition(".")
        damaged = BadLink("this link is damaged: copy it whole from the message")
        try:
            given = _unb64(signature)
        except ValueError:
            raise damaged from None
        if not hmac.compare_digest(given, self._sign(payload)):  # nothing unsigned is parsed
            raise BadLink("this link was not made by this server (or its key has changed)")
        try:
            fields = orjson.loads(_unb64(payload))
            key, expires = AccountKey(str(fields["r"]), str(fields["a"])), float(fields["x"])
        except (ValueError, KeyError, TypeError):
            raise damaged from None
        if expires < (time.time() if now is None else now):
            raise BadLink("this link has expired: open the account in the dashboard instead")
        return key, expires

    def _sign(self, payload: str) -> bytes:
        return hmac.new(self._key, _PURPOSE + payload.encode(), hashlib.sha256).digest()
