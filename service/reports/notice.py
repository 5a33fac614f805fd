"""The lock notice: an email that tells a person an account was locked, what was seen, why, and what to do.

When an account is locked (automatically or by an admin), `service.notify.LockNoticeHook`
queues a notice in the webhook outbox (the `NOTICE_CHANNEL` pseudo-subscription), in the
same step that announces the lock to webhooks: it is durable from then on, and the
outbox's dispatcher sends it at once and retries it with backoff when the SMTP server
refuses or is down. It goes to the relay's addresses (`OUTGUARD_NOTICE_TO`) and, with
`OUTGUARD_NOTICE_CUSTOMER`, to the contact of the account's customer.

The message is the account's incident report (`service.reports.incident`), built when
it is sent, as text and HTML, under a short header with two links: the report itself
behind a signed, expiring, read-only link that needs no login, and the account's
dashboard page. Locks that fall due together (a bulk lock of a campaign) go out as one
message per set of recipients: a list of the accounts with their links, and the full
reports of the first few.

Nothing here logs a recipient, a subject or the report's content; an SMTP failure is
recorded by its kind and code only (an SMTP server's reply often quotes the address).
"""

from __future__ import annotations

import asyncio
import logging
import re
import smtplib
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import escape

from service.reports.digest import SmtpTarget, send_digest
from service.reports.incident import IncidentSources, build_incident, render
from service.reports.links import ReportLinks
from service.settings import Settings
from service.stores import AccountKey

TEMPLATES = Path(__file__).parent / "templates"
FULL_REPORTS = 5  # in one message; the others are linked

_environment = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
    trim_blocks=True,
    lstrip_blocks=True,
)
log = logging.getLogger(__name__)
_BODY = re.compile(r"<body>(.*)</body>", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Sent:
    """What became of some notice rows: None when sent, else why not (no addresses, no message text)."""

    rows: list[dict[str, Any]]
    error: str | None
    ms: float


def smtp_target(settings: Settings) -> SmtpTarget | None:
    if not settings.smtp_host:
        return None
    return SmtpTarget(
        host=settings.smtp_host,
        port=settings.smtp_port,
        username=settings.smtp_username,
        password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
        starttls=settings.smtp_starttls,
        sender=settings.smtp_from,
        timeout_s=settings.webhook_timeout_s * 3,
    )


def smtp_failure(error: BaseException) -> str:
    """A failure as it may be stored: its kind and SMTP code, never the server's text (it quotes addresses)."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return f"SMTPRecipientsRefused: {len(error.recipients)} recipient(s) refused"
    if isinstance(error, smtplib.SMTPResponseException):
        return f"{type(error).__name__}: SMTP {error.smtp_code}"
    return type(error).__name__


class LockNotices:
    """Builds and sends lock notices; the webhook dispatcher hands it the notice rows that are due."""

    def __init__(
        self,
        settings: Settings,
        sources: IncidentSources,
        links: ReportLinks,
        flush: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.sources = sources
        self.links = links
        self.target = smtp_target(settings)
        self._flush = flush

    def recipients(self, key: AccountKey) -> list[str]:
        """The relay's addresses, and the customer's contact when configured; in order, without repeats."""
        found = self.settings.notice_recipients(key.relay)
        customer = self.settings.customer_of(key.account) if self.settings.notice_customer else None
        if customer is not None and customer[1].contact:
            found.append(customer[1].contact)
        return list(dict.fromkeys(found))

    def wants(self, key: AccountKey) -> bool:
        """Whether a lock of this account is to be mailed (an SMTP server and someone to tell)."""
        return self.target is not None and bool(self.recipients(key))

    async def send(self, rows: list[dict[str, Any]]) -> list[Sent]:
        """Send the due notice rows, one message per set of recipients; what became of each row."""
        if self._flush is not None:
            await self._flush()  # the mail scored before the lock is in the report
        groups: dict[tuple[str, ...], list[tuple[dict[str, Any], AccountKey]]] = {}
        outcome: list[Sent] = []
        for row in rows:
            event = orjson.loads(bytes(row["payload"]))
            key = AccountKey(event["relay"], event["account"])
            to = tuple(self.recipients(key))
            if self.target is None or not to:
                outcome.append(Sent([row], "no SMTP server or no address for this relay any more", 0.0))
                continue
            groups.setdefault(to, []).append((row, key))
        for to, members in groups.items():
            started = time.perf_counter()
            keys = list(dict.fromkeys(key for _, key in members))
            try:
                message = await self.message(keys, list(to))
            except Exception as exc:  # the database is down: retried like a refused delivery
                log.warning("a lock notice could not be built, it will be retried: %s", type(exc).__name__)
                outcome.append(Sent([row for row, _ in members], f"report not built: {type(exc).__name__}", 0.0))
                continue
            try:
                await asyncio.to_thread(send_digest, message, self.target)  # type: ignore[arg-type]
                error = None
            except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:  # refused, unreachable, timed out
                error = smtp_failure(exc)
            outcome.append(Sent([row for row, _ in members], error, (time.perf_counter() - started) * 1000))
        return outcome

    async def message(self, keys: list[AccountKey], to: list[str]) -> EmailMessage:
        reports = [await build_incident(self.sources, key) for key in keys[:FULL_REPORTS]]
        entries = [self._entry(key, reports[n] if n < len(reports) else None) for n, key in enumerate(keys)]
        context = {"entries": entries, "reports": len(reports), "expires": _when(time.time() + self.links.ttl_s)}
        first = entries[0]
        if len(keys) == 1:
            subject = f"outguard: {first['relay']}/{first['account']} was locked ({first['strength']} evidence)"
        else:
            relays = sorted({k.relay for k in keys})
            subject = f"outguard: {len(keys)} accounts were locked on {', '.join(relays)}"
        intro_text = _environment.get_template("notice.txt.j2").render(**context)
        intro_html = _environment.get_template("notice.html.j2").render(**context)
        text = intro_text + "".join("\n\n" + "-" * 72 + "\n\n" + render(report, "markdown") for report in reports)
        html = _combine([render(report, "html") for report in reports], intro_html, subject)
        message = EmailMessage()
        message["Subject"] = subject
        message["From"] = self.settings.smtp_from
        message["To"] = ", ".join(to)
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(domain=self.settings.smtp_from.rpartition("@")[2] or None)
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to it
        message.set_content(text)
        message.add_alternative(html, subtype="html")
        return message

    def _entry(self, key: AccountKey, report: dict[str, Any] | None) -> dict[str, Any]:
        why = (report or {}).get("why_locked") or {}
        return {
            "relay": key.relay,
            "account": key.account,
            "incident_url": self.links.incident(key),
            "dashboard_url": self.links.dashboard(key),
            "when": why.get("when"),
            "by": why.get("by"),
            "reason": why.get("reason"),
            "strength": (report or {}).get("evidence_strength", "unknown"),
            "has_report": report is not None,
        }


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _combine(documents: list[str], intro: str, title: str) -> str:
    """One HTML document: the first report's head, the notice's header, then each report's body."""
    head = documents[0].split("<body>", 1)[0] if documents else "<!doctype html><html><head>"
    head = re.sub(r"<title>.*?</title>", "", head, flags=re.DOTALL).replace("</head>", "")
    bodies = [m.group(1) for d in documents if (m := _BODY.search(d))]
    return f"{head}<title>{escape(title)}</title></head><body>{intro}" + "<hr>".join(bodies) + "</body></html>"
