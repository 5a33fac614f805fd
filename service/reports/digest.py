"""The digest: a readable summary of suspicious and locked accounts over a period, by mail or as files.

Built from the event log alone (read-only), so `outguard report` runs beside a live
service or on a copy of its database. Sent over SMTP when `OUTGUARD_SMTP_HOST` is set
(STARTTLS and login when configured); otherwise written as `digest-*.txt` and `.html`.

Each account in it links to its incident report behind a signed, expiring, read-only
link (no login: `service.reports.links`) and to its dashboard page, so the links open
in a browser; the service must share the key (`OUTGUARD_LINK_KEY` or the state folder).
"""

from __future__ import annotations

import smtplib
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import Connection, text

from service.reports.links import ReportLinks
from service.reports.outbound import GroupBy, OutboundQuery, outbound_rows
from service.stores import AccountKey

TEMPLATES = Path(__file__).parent / "templates"
TOP = 20

_environment = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True, slots=True)
class SmtpTarget:
    host: str
    port: int = 587
    username: str | None = None
    password: str | None = None
    starttls: bool = True
    sender: str = "outguard@localhost"
    timeout_s: float = 30.0


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def build_digest(connection: Connection, since: float, until: float, hold_threshold: float) -> dict[str, Any]:
    query = OutboundQuery(
        since, until, GroupBy.ACCOUNT, sort="-spam_messages", limit=TOP, hold_threshold=hold_threshold
    )
    columns = query.columns()
    suspicious = [dict(zip(columns, r, strict=True)) for r in outbound_rows(connection, query)]
    suspicious = [r for r in suspicious if r["spam_messages"] or r["complaints"] or r["locks"]]
    locks = [
        {"when": _when(ts), "relay": relay, "account": account, "action": action, "by": actor, "reason": reason}
        for ts, relay, account, action, actor, reason in connection.execute(
            text(
                "SELECT ts, relay, account, action, actor, reason FROM audit_log "
                "WHERE action IN ('locked', 'locked_temporary') AND ts >= :since AND ts < :until ORDER BY ts"
            ),
            {"since": since, "until": until},
        )
    ]
    messages, spam, accounts = connection.execute(
        text(
            "SELECT count(*), coalesce(sum(CASE WHEN spam_probability >= :hold THEN 1 ELSE 0 END), 0), "
            "count(DISTINCT relay || '/' || account) FROM scored_messages WHERE ts >= :since AND ts < :until"
        ),
        {"hold": hold_threshold, "since": since, "until": until},
    ).one()
    return {
        "since": _when(since),
        "until": _when(until),
        "messages": messages,
        "spam_messages": spam,
        "spam_share": round(spam / messages, 4) if messages else 0.0,
        "accounts": accounts,
        "locks": locks,
        "suspicious": suspicious,
    }


def with_links(digest: dict[str, Any], links: ReportLinks) -> dict[str, Any]:
    """The digest with each account's report link (signed, expiring) and dashboard link."""
    for row in digest["locks"] + digest["suspicious"]:
        key = AccountKey(row["relay"], row["account"])
        row["incident_url"], row["dashboard_url"] = links.incident(key), links.dashboard(key)
    digest["links_expire"] = _when(time.time() + links.ttl_s)
    return digest


def render_digest(digest: dict[str, Any], links: ReportLinks | None = None) -> tuple[str, str, str]:
    """(subject, text, html); with `links`, every account links to its report and its dashboard page."""
    if links is not None:
        digest = with_links(digest, links)
    subject = (
        f"outguard: {len(digest['locks'])} lock(s), {len(digest['suspicious'])} suspicious account(s), "
        f"{digest['since']} to {digest['until']}"
    )
    text = _environment.get_template("digest.txt.j2").render(d=digest)
    html = _environment.get_template("digest.html.j2").render(d=digest)
    return subject, text, html


def digest_message(subject: str, text: str, html: str, sender: str, recipients: list[str]) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


def send_digest(message: EmailMessage, target: SmtpTarget) -> None:
    with smtplib.SMTP(target.host, target.port, timeout=target.timeout_s) as smtp:
        if target.starttls:
            smtp.starttls(context=ssl.create_default_context())
        if target.username:
            smtp.login(target.username, target.password or "")
        smtp.send_message(message)


def write_digest(directory: Path, subject: str, text: str, html: str, stamp: str) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"digest-{stamp}.txt", directory / f"digest-{stamp}.html"]
    paths[0].write_text(f"Subject: {subject}\n\n{text}")
    paths[1].write_text(html)
    return paths
