"""The incident report of one account: what was seen, why it was locked, what to do next.

Written for a hosting support person who has never heard of LightGBM: plain words, the
numbers behind them, how strong the evidence is, and next steps chosen by how the
account was identified (a mailbox password, a PHP script) and what it did (many client
IPs, invalid recipients). The account's mail since its first spam-scored message is
compared with its own history, because "it sent 400 messages" means little until one
knows it used to send 30 a day. The model's reasons are recomputed from the logged
feature vectors, so the report shows why the messages scored as they did without
storing more per message.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import Connection, text

from features.engagement import engagement_features
from features.spec import BY_NAME, FEATURE_INDEX
from service.decision import account_risk
from service.lifecycle import SYSTEM_ACTOR
from service.stores import AccountKey
from service.stores.database import mappings
from service.stores.events import account_activity, client_ips_seen_before

WINDOW_S = 86_400
MAX_MESSAGES = 2_000
TEMPLATES = Path(__file__).parent / "templates"

# Evidence strength. An automatic lock comes after about four extreme scores, and mail
# refused while locked is not scored, so a real takeover often shows only a few
# spam-scored messages: fewer than this is thin unless something else backs them.
FEW_SPAM_MESSAGES = 3
# Delivery feedback that backs the content scores (the rates are smoothed towards a prior
# well under these, so a handful of recipients cannot reach them by chance).
BAD_BOUNCE_RATE = 0.05
BAD_INVALID_RECIPIENT_RATE = 0.05
BAD_COMPLAINT_RATE = 0.003  # the complaint rate mailbox providers start blocking at
VOLUME_SPIKE = 5.0  # times its usual volume
BOTNET_CLIENT_IPS = 5
# An earlier history this long (scored messages) is enough to say "it always looked like this".
USUAL_MAIL_MESSAGES = 20


@dataclass(frozen=True, slots=True)
class IncidentSources:
    """What the report reads; the API passes the container's stores."""

    database: Any
    accounts: Any
    engagement: Any
    ledger: Any
    model: Any
    hold_threshold: float
    lock_threshold: float


@dataclass(frozen=True, slots=True)
class KnownMailer:
    """A well-known CMS, shop plugin or library whose files send the site's own mail.

    Deleting such a file breaks the customer's site and stops nothing: spam that comes
    out of it was put in by something else (an injected file, a hacked admin account, an
    abused contact form), so the report never names these files for deletion.
    Matched case-insensitively on the script's path: `file_names` are shell patterns over
    the file's name alone (PHP often writes nothing else into the header), `path_parts`
    are folders or files that must appear as whole path segments.
    """

    software: str
    sends: str  # what it sends when the site works as intended
    file_names: tuple[str, ...] = ()
    path_parts: tuple[str, ...] = ()


KNOWN_MAILERS: tuple[KnownMailer, ...] = (
    KnownMailer(
        "WordPress",
        "password resets, new-user and comment notices, and the mail of its plugins (wp_mail)",
        file_names=("class-phpmailer.php", "class-wp-phpmailer.php", "pluggable.php", "wp-login.php", "wp-cron.php"),
        path_parts=("wp-includes/phpmailer",),
    ),
    KnownMailer(
        "WooCommerce",
        "the shop's order confirmations, invoices and customer-account mail",
        file_names=("class-wc-emails.php", "class-wc-email*.php"),
        path_parts=("plugins/woocommerce",),
    ),
    KnownMailer("Contact Form 7", "the site's contact-form mail", path_parts=("plugins/contact-form-7",)),
    KnownMailer("WPForms", "the site's form notifications", path_parts=("plugins/wpforms", "plugins/wpforms-lite")),
    KnownMailer("Gravity Forms", "the site's form notifications", path_parts=("plugins/gravityforms",)),
    KnownMailer("Elementor forms", "the site's form notifications", path_parts=("plugins/elementor-pro",)),
    KnownMailer("Jetpack", "contact-form mail and site notices", path_parts=("plugins/jetpack",)),
    KnownMailer(
        "Joomla",
        "password resets, registrations and contact-form mail",
        path_parts=("libraries/src/mail", "libraries/joomla/mail", "libraries/vendor/phpmailer", "libraries/phpmailer"),
    ),
    KnownMailer(
        "PHPMailer (the mail library inside WordPress, Joomla and many other applications)",
        "whatever mail the application hands it",
        file_names=("phpmailer.php", "class.phpmailer.php"),
        path_parts=("phpmailer/phpmailer",),
    ),
    KnownMailer(
        "Drupal",
        "account, password and contact-form mail",
        path_parts=("core/lib/drupal/core/mail", "includes/mail.inc", "modules/system/system.mail.inc"),
    ),
    KnownMailer(
        "Magento / Adobe Commerce",
        "the shop's order, invoice and account mail",
        path_parts=(
            "magento/module-email",
            "magento/framework/mail",
            "app/code/magento/email",
            "app/code/core/mage/core/model/email",
        ),
    ),
    KnownMailer("PrestaShop", "the shop's order and account mail", path_parts=("classes/mail.php",)),
    KnownMailer(
        "OpenCart", "the shop's order and account mail", path_parts=("system/library/mail", "system/library/mail.php")
    ),
    KnownMailer(
        "phpBB",
        "forum notifications and registrations",
        file_names=("functions_messenger.php",),
        path_parts=("includes/functions_messenger.php",),
    ),
    KnownMailer(
        "Roundcube",
        "the webmail users' own messages",
        file_names=("rcmail_sendmail.php",),
        path_parts=("program/lib/roundcube",),
    ),
    KnownMailer("Nextcloud", "share notices, activity mail and password resets", path_parts=("lib/private/mail",)),
    KnownMailer("Matomo", "scheduled analytics reports and password resets", path_parts=("core/mail.php", "core/mail")),
    KnownMailer(
        "MediaWiki",
        "account confirmations, password resets and watchlist notices",
        file_names=("usermailer.php",),
        path_parts=("includes/mail/usermailer.php",),
    ),
    KnownMailer(
        "a PHP framework's mailer (Laravel, Symfony Mailer, SwiftMailer, PHPMailer via Composer)",
        "the application's own mail",
        path_parts=("vendor/phpmailer", "vendor/symfony/mailer", "vendor/swiftmailer", "vendor/laravel"),
    ),
)


def known_mailer(script_path: str) -> KnownMailer | None:
    """The well-known software this script belongs to, if its path says so."""
    # Segments end at a slash either side, so `plugins/woocommerce` does not match `plugins/woocommerce-evil`.
    path = "/" + script_path.lower().replace("\\", "/").replace(":", "/").strip("/ ") + "/"
    name = path.rstrip("/").rsplit("/", 1)[-1]
    for mailer in KNOWN_MAILERS:
        if any(fnmatchcase(name, pattern) for pattern in mailer.file_names):
            return mailer
        if any(f"/{part}/" in path for part in mailer.path_parts):
            return mailer
    return None


def is_script(identity_source: str, account: str) -> bool:
    return identity_source.startswith("rule:php") or ".php" in account.lower()


def script_origin(account: str) -> tuple[str | None, str]:
    """(uid, path) of a script identity: PHP writes `X-PHP-Originating-Script: <uid>:<file>`."""
    uid, separator, path = account.partition(":")
    if separator and uid.strip().isdigit() and path.strip():
        return uid.strip(), path.strip()
    return None, account.strip()


def _when(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else None


def _duration(seconds: float) -> str:
    if seconds < 60:
        return "under a minute"
    if seconds < 3_600:
        minutes = max(1, round(seconds / 60))
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    if seconds < 2 * 86_400:
        return f"{seconds / 3_600:.1f} hours"
    return f"{seconds / 86_400:.1f} days"


def _percent(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.0f}%"


def _messages(connection: Connection, key: AccountKey) -> list[dict[str, Any]]:
    account = {"relay": key.relay, "account": key.account}
    newest = connection.execute(
        text("SELECT max(ts) FROM scored_messages WHERE relay = :relay AND account = :account"), account
    ).scalar()
    if newest is None:
        return []
    return mappings(
        connection,
        "SELECT ts, message_id, identity_source, spam_probability, action, client_ip, subject, features, "
        "recipients_hashed, identity_conflict FROM scored_messages "
        "WHERE relay = :relay AND account = :account AND ts >= :since ORDER BY ts DESC LIMIT :limit",
        account | {"since": newest - WINDOW_S, "limit": MAX_MESSAGES},
    )


def _identity_conflicts(messages: list[dict[str, Any]], hold_threshold: float) -> dict[str, Any] | None:
    """Its messages whose header (one the sender can write) named another login than the SASL user that sent them."""
    found = [(orjson.loads(m["identity_conflict"]), m["spam_probability"]) for m in messages if m["identity_conflict"]]
    if not found:
        return None
    named = Counter((conflict["header"], conflict["claimed"]) for conflict, _ in found)
    return {
        "messages": len(found),
        "spam_scored": sum(1 for _, p in found if p is not None and p >= hold_threshold),
        "named": [{"header": h, "claimed": c, "messages": n} for (h, c), n in named.most_common(5)],
    }


def _malware(connection: Connection, key: AccountKey, since: float) -> dict[str, Any] | None:
    """What clamd found in its mail since `since`: the scorer's `malware_detected` audit entries."""
    rows = mappings(
        connection,
        "SELECT ts, details FROM audit_log WHERE relay = :relay AND account = :account "
        "AND action = 'malware_detected' AND ts >= :since ORDER BY id DESC LIMIT :limit",
        {"relay": key.relay, "account": key.account, "since": since, "limit": MAX_MESSAGES},
    )
    if not rows:
        return None
    found = Counter(orjson.loads(row["details"]).get("signature") or "unnamed" for row in rows)
    return {
        "messages": len(rows),
        "signatures": [{"signature": name, "messages": n} for name, n in found.most_common(5)],
        "last": _when(rows[0]["ts"]),
    }


def _signatures(malware: dict[str, Any]) -> str:
    return ", ".join(f"`{s['signature']}`" for s in malware["signatures"])


def _named(conflicts: dict[str, Any]) -> str:
    return ", ".join(f"{n['header']}: `{n['claimed']}`" for n in conflicts["named"])


def _top_reasons(model: Any, rows: list[list[float]]) -> list[dict[str, Any]]:
    if not rows:
        return []
    bundle = model.current
    contributions = bundle.predict(np.asarray(rows, dtype=np.float64)).contributions
    pushing = np.clip(contributions, 0, None).mean(axis=0)
    top = np.argsort(-pushing)[:5]
    return [
        {
            "feature": bundle.model_features[i],
            "meaning": BY_NAME[bundle.model_features[i]].description,
            "mean_push_towards_spam": round(float(pushing[i]), 3),
        }
        for i in top
        if pushing[i] > 0
    ]


def _activity_around(
    connection: Connection, key: AccountKey, turning_point: float, recent_ips: set[str], spam_threshold: float
) -> dict[str, Any]:
    return {
        "before": account_activity(connection, key, None, turning_point, spam_threshold),
        "day_before": account_activity(connection, key, turning_point - WINDOW_S, turning_point, spam_threshold),
        "since": account_activity(connection, key, turning_point, None, spam_threshold),
        "known_ips": client_ips_seen_before(connection, key, turning_point, recent_ips),
    }


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 3) if whole else None


def _how_it_changed(
    around: dict[str, Any], turning_point: float, after_spam: bool, recent: list[dict[str, Any]]
) -> dict[str, Any]:
    """Its mail from the turning point on against its own history before it, in numbers and in plain words."""
    before, day_before, since = around["before"], around["day_before"], around["since"]
    from_what = "its first message scored as spam" if after_spam else "the start of the last 24 hours"
    first_ts = before["first_ts"] if before["messages"] else since["first_ts"]
    # The usual volume comes from before the last day, so a ramp-up in that day does not hide in the average.
    earlier_messages = before["messages"] - day_before["messages"]
    earlier_days = (turning_point - WINDOW_S - first_ts) / 86_400 if earlier_messages else 0.0
    daily_average = earlier_messages / max(earlier_days, 1.0) if earlier_messages else None
    recent_ips = {m["client_ip"] for m in recent if m["client_ip"]}
    new_domain_shares = [
        orjson.loads(m["features"])[FEATURE_INDEX["acct_new_rcpt_domain_share"]] for m in recent if m["features"]
    ]
    change = {
        "from": _when(turning_point),
        "from_what": from_what,
        "from_first_spam": after_spam,
        "first_seen": _when(first_ts),
        "before": {
            "messages": before["messages"],
            "days_of_history": round(max(0.0, turning_point - first_ts) / 86_400, 1),
            "messages_in_the_24_hours_before": day_before["messages"],
            "earlier_messages_per_day": round(daily_average, 1) if daily_average is not None else None,
            "recipients_per_message": round(before["recipients"] / before["messages"], 1)
            if before["messages"]
            else None,
            "client_ips": before["client_ips"],
            "spam_scored_share": _share(before["spam_like"], before["scored"]),
        },
        "since": {
            "messages": since["messages"],
            "hours": round(max(0.0, (since["last_ts"] or turning_point) - turning_point) / 3_600, 2),
            "times_earlier_daily_volume": round(since["messages"] / daily_average, 1) if daily_average else None,
            "recipients_per_message": round(since["recipients"] / since["messages"], 1) if since["messages"] else None,
            "client_ips": since["client_ips"],
            "new_client_ips": len(recent_ips - around["known_ips"]),
            "spam_scored_share": _share(since["spam_like"], since["scored"]),
            "new_recipient_domain_share": round(float(np.mean(new_domain_shares)), 3) if new_domain_shares else None,
        },
    }
    since_s = max(0.0, (since["last_ts"] or turning_point) - turning_point)
    change["in_plain_words"] = _plain_words(change, max(0.0, turning_point - first_ts), since_s)
    return change


def _plain_words(change: dict[str, Any], history_s: float, since_s: float) -> list[str]:
    before, since, from_what = change["before"], change["since"], change["from_what"]
    if before["messages"]:
        words = [f"First seen {change['first_seen']}, {_duration(history_s)} before {from_what}."]
    else:
        words = [f"First seen {change['first_seen']}: nothing from it was logged before {from_what}."]
    if before["earlier_messages_per_day"] is not None:
        words.append(
            f"In the 24 hours before {from_what} it sent {before['messages_in_the_24_hours_before']} message(s); "
            f"before that it averaged {before['earlier_messages_per_day']} a day."
        )
    else:
        words.append(f"Nothing was logged from it more than a day before {from_what}: no usual volume to compare with.")
    volume = f"From {change['from']} on: {since['messages']} message(s) in {_duration(since_s)}"
    if since["times_earlier_daily_volume"] is not None:
        volume += f", {since['times_earlier_daily_volume']} times what it used to send in a whole day"
    words.append(volume + ".")
    if before["messages"]:
        words.append(
            f"Recipients per message: {since['recipients_per_message']} (before: {before['recipients_per_message']}). "
            f"Client addresses: {since['client_ips']}, {since['new_client_ips']} never used by it before "
            f"(before: {before['client_ips']}). Scored as spam: {_percent(since['spam_scored_share'])} "
            f"(before: {_percent(before['spam_scored_share'])})."
        )
    else:
        words.append(
            f"Recipients per message: {since['recipients_per_message']}; client addresses: {since['client_ips']}; "
            f"scored as spam: {_percent(since['spam_scored_share'])}."
        )
    if since["new_recipient_domain_share"] is not None:
        words.append(
            f"On average {_percent(since['new_recipient_domain_share'])} of each message's recipient domains "
            "were new to it."
        )
    return words


def _script(account: str, identity_source: str, change: dict[str, Any] | None) -> dict[str, Any] | None:
    if not is_script(identity_source, account):
        return None
    uid, path = script_origin(account)
    mailer = known_mailer(path)
    return {
        "header_value": account,
        "path": path,
        "uid": uid,
        "part_of": mailer.software if mailer else None,
        "normally_sends": mailer.sends if mailer else None,
        "first_seen": change["first_seen"] if change else None,
    }


def _backing(seen: dict[str, Any], change: dict[str, Any] | None, script: dict[str, Any] | None) -> list[str]:
    """What points at spam besides the per-message content scores: the independent evidence."""
    backing = []
    if malware := seen.get("malware"):
        backing.append(f"clamd found malware in {malware['messages']} of its message(s) ({_signatures(malware)})")
    if seen["hard_bounce_rate"] >= BAD_BOUNCE_RATE:
        backing.append(f"{_percent(seen['hard_bounce_rate'])} of its recipients bounced")
    if seen["invalid_recipient_rate"] >= BAD_INVALID_RECIPIENT_RATE:
        backing.append(f"{_percent(seen['invalid_recipient_rate'])} of its recipients do not exist")
    if seen["complaint_rate"] >= BAD_COMPLAINT_RATE:
        backing.append(f"{100 * seen['complaint_rate']:.1f}% of its recipients complained")
    if (conflicts := seen["identity_conflicts"]) and conflicts["spam_scored"]:
        backing.append(
            f"{conflicts['spam_scored']} spam-scored message(s) named another account than the login "
            f"that sent them ({_named(conflicts)})"
        )
    if seen["matched_known_spam"]:
        backing.append(f"{seen['matched_known_spam']} message(s) matched known spam")
    if seen["most_accounts_sending_its_content"] > 1:
        backing.append(f"the same content came from {seen['most_accounts_sending_its_content']} accounts")
    times_usual = max(
        seen["times_usual_hourly_volume"] or 0.0,
        (change["since"]["times_earlier_daily_volume"] or 0.0) if change else 0.0,
    )
    if times_usual >= VOLUME_SPIKE:
        backing.append(f"its volume rose to {times_usual:g} times its usual")
    # A script's client address is its web server: many of them say nothing about stolen passwords.
    if script is None and seen["client_ips"] >= BOTNET_CLIENT_IPS:
        backing.append(f"it was sent from {seen['client_ips']} client addresses")
    if (
        script is not None
        and change is not None
        and change["from_first_spam"]
        and change["before"]["days_of_history"] < 1
    ):
        backing.append("the script first appeared less than a day before its first spam-scored message")
    return backing


def _mail_looks_as_usual(change: dict[str, Any] | None) -> bool:
    """It sent mail that scored like this all along, at its usual volume: a misjudged kind of mail, more likely."""
    if change is None or change["before"]["spam_scored_share"] is None or not change["since"]["spam_scored_share"]:
        return False
    before, since = change["before"], change["since"]
    return (
        before["messages"] >= USUAL_MAIL_MESSAGES
        and before["spam_scored_share"] >= since["spam_scored_share"] / 2
        and (since["times_earlier_daily_volume"] or 0.0) < VOLUME_SPIKE
    )


def _evidence_strength(
    seen: dict[str, Any], lock: dict[str, Any] | None, change: dict[str, Any] | None, script: dict[str, Any] | None
) -> tuple[str, str]:
    """("strong" | "moderate" | "thin", the sentence saying why)."""
    spam, scored = seen["spam_scored"], seen["messages"] - seen["rejected_while_locked"]
    backing = _backing(seen, change, script)
    nothing_else = "nothing else backs them (no bounces, complaints, known-spam matches or volume spike)"
    by_a_person = lock is not None and lock["actor"] != SYSTEM_ACTOR
    rests_on = f" The lock rests on {lock['actor']}'s judgement: {lock['reason']}." if by_a_person else ""
    if malware := seen.get("malware"):  # a clean account does not send viruses: one detection is enough
        return "strong", (
            f"clamd (ClamAV) found malware in {malware['messages']} of its message(s): {_signatures(malware)}. "
            "One detection is enough: a clean account does not send viruses."
        )
    if not scored and not backing:
        return "thin", f"No scored mail from it was logged in the last 24 hours, so nothing here shows spam.{rests_on}"
    if spam < FEW_SPAM_MESSAGES and not backing:
        if spam == 0:
            why = (
                f"None of its {scored} scored message(s) in the last 24 hours reached the hold threshold "
                f"(highest spam probability {seen['max_spam_probability']}), and there are no bounces, "
                "complaints or known-spam matches."
            )
        else:
            why = f"Only {spam} of its {scored} message(s) scored as spam, and {nothing_else}."
        return "thin", why + rests_on
    if _mail_looks_as_usual(change):
        assert change is not None
        return "moderate", (
            f"{spam} of its {scored} message(s) scored as spam, but its mail scored like this before too "
            f"({_percent(change['before']['spam_scored_share'])} of {change['before']['messages']} earlier messages) "
            "at its usual volume: this may be its normal mail misjudged."
        )
    if spam >= FEW_SPAM_MESSAGES and backing:
        return (
            "strong",
            f"{spam} of its {scored} message(s) scored as spam, and more points the same way: {'; '.join(backing)}.",
        )
    if not backing:
        return "moderate", f"{spam} of its {scored} message(s) scored as spam, but {nothing_else}."
    if spam == 0:
        return "moderate", f"None of its {scored} message(s) scored as spam, but: {'; '.join(backing)}."
    return "moderate", (
        f"Only {spam} of its {scored} message(s) scored as spam, but more points the same way: {'; '.join(backing)}."
    )


def _script_steps(script: dict[str, Any]) -> list[str]:
    where = f"`{script['path']}`" + (f" (run as system user {script['uid']})" if script["uid"] else "")
    if script["part_of"] is None:
        return [
            f"Inspect the script {where} on the customer's site. If it is not part of the customer's own site, "
            "remove it: it sends mail on its own.",
            "Look for other recently changed or uploaded PHP files in the same site (web shells come in pairs), "
            "and update the CMS and its plugins.",
        ]
    # Never advise deleting it: the site needs it, and it only sends what something else hands it.
    return [
        f"Keep {where}: it is part of {script['part_of']}, which uses it to send {script['normally_sends']}. "
        "The site stops sending its own mail without it, and the spam was handed to it by something else.",
        "Look for injected code in the site: PHP files modified in the last days, admin users nobody knows, "
        "a plugin or theme nobody installed.",
        f"Update the CMS, {script['part_of']} and every other plugin and theme; if its files were changed, "
        "reinstall it from a clean copy of the same version.",
        f"Check the mail settings of {script['part_of']} and the site's forms: a contact, registration or order "
        "form without a CAPTCHA lets anyone send mail through the site.",
        "Look for a NEW script sending mail from the same site: the outbound report "
        "(`GET /v1/reports/outbound?group_by=identity&identity_source=rule:php-script`) lists every script "
        "that sent mail, with the first one to appear around the incident the likeliest culprit.",
    ]


def _next_steps(seen: dict[str, Any], script: dict[str, Any] | None, evidence_strength: str) -> list[str]:
    steps = []
    if malware := seen.get("malware"):
        where = "the server or site the script runs on" if script is not None else "the customer's computer"
        steps.append(
            f"Its mail carried malware ({_signatures(malware)}): {where} is most likely infected. Have it cleaned "
            "with an up-to-date anti-virus before anything else, or a new password is stolen again at once."
        )
    if evidence_strength == "thin":
        steps.append(
            "The evidence is thin: before changing anything, check with the customer (and whoever locked it) "
            "whether this is their usual mail. If it is, unlock the account and say so in the unlock reason."
        )
    if script is not None:
        steps += _script_steps(script)
    else:
        steps += [
            "Reset the mailbox password and end its open sessions; the password is most likely stolen.",
            "Tell the customer to check their computer for malware and to turn on two-factor sign-in.",
        ]
        if seen["client_ips"] >= BOTNET_CLIENT_IPS:
            steps.append(
                f"The account sent from {seen['client_ips']} different addresses: a password used by a botnet. "
                "Check the login log for those addresses."
            )
    if conflicts := seen["identity_conflicts"]:
        steps.append(
            f"{conflicts['messages']} of its messages carried a header naming another account than the login "
            f"that sent them ({_named(conflicts)}): a header the sender wrote, to pass the mail off as that "
            "account's. The account named was not charged for them; this login was."
        )
    if seen["invalid_recipient_rate"] >= BAD_INVALID_RECIPIENT_RATE:
        steps.append(
            f"{100 * seen['invalid_recipient_rate']:.0f}% of recipients do not exist: a bought or harvested list, "
            "not the customer's contacts."
        )
    steps.append("When it is cleaned up, unlock the account (`POST .../unlock` with your name and what you did).")
    return steps


async def build_incident(sources: IncidentSources, key: AccountKey) -> dict[str, Any]:
    messages = await sources.database.read(lambda c: _messages(c, key))
    since = (messages[0]["ts"] if messages else time.time()) - WINDOW_S
    malware = await sources.database.read(lambda c: _malware(c, key, since))
    state = await sources.accounts.get(key)
    engagement = await sources.engagement.snapshot(key)
    history = await sources.ledger.history(key, limit=20)
    rates = engagement_features(engagement)
    scored = [m for m in messages if m["spam_probability"] is not None]
    probabilities = [m["spam_probability"] for m in scored]
    vectors = [orjson.loads(m["features"]) for m in scored if m["features"]]
    latest = vectors[0] if vectors else None
    ips = Counter(m["client_ip"] for m in messages if m["client_ip"])
    recipients = sum(len(orjson.loads(m["recipients_hashed"])) for m in messages)
    subjects = [s for s, _ in Counter(m["subject"] for m in messages if m["subject"]).most_common(5)]
    per_hour = latest[FEATURE_INDEX["acct_msgs_1h"]] if latest else 0.0
    has_baseline = bool(latest) and latest[FEATURE_INDEX["acct_history_hours"]] >= math.log1p(2)
    vs_baseline = latest[FEATURE_INDEX["acct_rate_vs_baseline"]] if latest else 0.0
    seen = {
        "window": "the last 24 hours of this account's mail",
        "messages": len(messages),
        "recipients": recipients,
        "rejected_while_locked": sum(1 for m in messages if m["spam_probability"] is None),
        "spam_scored": sum(1 for p in probabilities if p >= sources.hold_threshold),
        "mean_spam_probability": round(float(np.mean(probabilities)), 3) if probabilities else None,
        "max_spam_probability": round(float(max(probabilities)), 3) if probabilities else None,
        "messages_last_hour": int(per_hour),
        # An account younger than two hours has no usual volume to compare with.
        "times_usual_hourly_volume": round(math.exp(vs_baseline), 1) if latest and has_baseline else None,
        "client_ips": len(ips),
        "top_client_ips": [{"ip": ip, "messages": n} for ip, n in ips.most_common(5)],
        "hard_bounce_rate": round(rates["eng_hard_bounce_rate"], 4),
        "invalid_recipient_rate": round(rates["eng_invalid_recipient_rate"], 4),
        "complaint_rate": round(rates["eng_complaint_rate"], 4),
        "reply_rate": round(rates["eng_reply_rate"], 4),
        "feedback_recipients": round(engagement.recipients, 1) if engagement else 0.0,
        "sample_subjects": subjects,
        # Content fingerprints: known spam it sent, and how many others sent the same content.
        "matched_known_spam": sum(1 for v in vectors if v[FEATURE_INDEX["sig_similarity"]] > 0),
        "most_accounts_sending_its_content": 1
        + max((round(math.expm1(v[FEATURE_INDEX["campaign_accounts_log"]])) for v in vectors), default=0),
        "top_reasons": _top_reasons(sources.model, vectors[:500]),
        "identity_conflicts": _identity_conflicts(messages, sources.hold_threshold),
        "malware": malware,  # what clamd found in its mail (service.scanning), or None
    }
    change = None
    if messages:
        # Compare from the first spam-scored message on; with none, the last 24 hours against the days before.
        spam_times = [m["ts"] for m in scored if m["spam_probability"] >= sources.hold_threshold]
        turning_point = min(spam_times) if spam_times else messages[0]["ts"] - WINDOW_S
        recent = [m for m in messages if m["ts"] >= turning_point]
        recent_ips = {m["client_ip"] for m in recent if m["client_ip"]}
        around = await sources.database.read(
            lambda c: _activity_around(c, key, turning_point, recent_ips, sources.hold_threshold)
        )
        change = _how_it_changed(around, turning_point, bool(spam_times), recent)
    lock = next((h for h in history if h["action"] in ("locked", "locked_temporary")), None)
    identity_source = messages[0]["identity_source"] if messages else "unknown"
    script = _script(key.account, identity_source, change)
    strength, strength_reason = _evidence_strength(seen, lock, change, script)
    return {
        "relay": key.relay,
        "account": key.account,
        "identified_by": identity_source,
        "generated_at": _when(time.time()),
        "status": state.status.value,
        "account_risk": round(account_risk(state.evidence, sources.lock_threshold), 3),
        "automatic_locks": state.temporary_locks,
        "allowlisted": state.allowlisted,
        "locked_until": _when(state.locked_until),
        "why_locked": {
            "when": _when(lock["ts"]),
            "by": lock["actor"],
            "reason": lock["reason"],
            "evidence": lock["details"],
        }
        if lock
        else None,
        "evidence_strength": strength,
        "evidence_strength_reason": strength_reason,
        "script": script,
        "what_was_seen": seen,
        "how_its_mail_changed": change,
        "what_to_do_next": _next_steps(seen, script, strength),
        "history": [
            {"when": _when(h["ts"]), "action": h["action"], "by": h["actor"], "reason": h["reason"]} for h in history
        ],
    }


# Subjects, account names and reasons come from senders: everything in HTML is escaped.
_environment = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(report: dict[str, Any], form: str) -> str:
    """`markdown` or `html`."""
    return _environment.get_template(f"incident.{'md' if form == 'markdown' else 'html'}.j2").render(r=report)
