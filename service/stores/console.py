"""Named queries behind the dashboard's console, on SQLite and PostgreSQL.

Account search (by name, relay, domain, client IP, status), the live log of decisions,
totals per domain, and the relay and client-IP picture. Each takes a
connection (run them with `Database.read`) and returns plain dicts; every value from a
user is a bound parameter. A temporary lock whose end has passed counts as not locked
(the hot state lifts it at the account's next message). Feedback arrives after the mail
it is about: totals count all of it since the period began.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, text

from service.stores import AccountKey
from service.stores.database import Sql, mappings

LOCKED = ("locked", "locked_temporary")
_LOCKED_NOW = "st.status IN ('locked', 'locked_temporary') AND (st.locked_until IS NULL OR st.locked_until > :now)"
DECISION_COLUMNS = (
    "id, ts, relay, account, identity_source, message_id, spam_probability, account_risk, action, client_ip, "
    "subject, features, identity_conflict"
)


def domain_of(account: str) -> str:
    """The part of an identity after its @, lowercased ('' when it has none: a login or a script)."""
    _, at, domain = account.rpartition("@")
    return domain.lower() if at else ""


def _domain(connection: Connection, column: str = "account") -> str:
    """SQL for `domain_of` (after the first @: an identity has one)."""
    position = f"strpos({column}, '@')" if Sql.of(connection).postgresql else f"instr({column}, '@')"
    return f"(CASE WHEN {position} > 0 THEN lower(substr({column}, {position} + 1)) ELSE '' END)"


def _like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True, slots=True)
class DomainFilter:
    """Exact domains and `*.suffix` patterns (a customer's); empty matches every domain."""

    exact: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()  # ".example.org" for "*.example.org"

    @staticmethod
    def of(patterns: Sequence[str]) -> DomainFilter:
        exact = tuple(p.lower() for p in patterns if not p.startswith("*."))
        suffixes = tuple(p[1:].lower() for p in patterns if p.startswith("*."))
        return DomainFilter(exact, suffixes)

    def __bool__(self) -> bool:
        return bool(self.exact or self.suffixes)

    def sql(self, expression: str, params: dict[str, Any]) -> str:
        parts = []
        for n, domain in enumerate(self.exact):
            params[f"domain{n}"] = domain
            parts.append(f"{expression} = :domain{n}")
        for n, suffix in enumerate(self.suffixes):
            params[f"suffix{n}"] = "%" + _like(suffix)
            parts.append(f"{expression} LIKE :suffix{n} ESCAPE '\\'")
        return "(" + " OR ".join(parts) + ")"


@dataclass(frozen=True, slots=True)
class AccountSearch:
    since: float
    until: float
    now: float
    hold_threshold: float
    text: str | None = None  # part of the account's name, any case
    relay: str | None = None
    domains: DomainFilter = DomainFilter()
    client_ip: str | None = None  # accounts that sent from this address in the period
    status: str | None = None  # locked, active, rate_limited, allowlisted
    accounts: tuple[AccountKey, ...] | None = None  # only these (a campaign's senders)
    limit: int = 100
    offset: int = 0


def search_accounts(connection: Connection, search: AccountSearch) -> tuple[list[dict[str, Any]], int]:
    """Accounts that sent in the period or have a lifecycle record, most spam first; and how many match."""
    params: dict[str, Any] = {
        "since": search.since,
        "until": search.until,
        "hold": search.hold_threshold,
        "now": search.now,
    }
    message_filter = ""
    if search.client_ip:
        message_filter = " AND client_ip = :ip"
        params["ip"] = search.client_ip
    # Accounts known only from their lifecycle (locked, silent since) are found too, unless
    # the search is about the mail they sent from an address.
    keyed = "" if search.client_ip else " UNION SELECT relay, account FROM account_status"
    where = ["1 = 1"]
    if search.text:
        params["text"] = f"%{_like(search.text.lower())}%"
        where.append("lower(k.account) LIKE :text ESCAPE '\\'")
    if search.relay:
        params["relay"] = search.relay
        where.append("k.relay = :relay")
    if search.domains:
        where.append(search.domains.sql(_domain(connection, "k.account"), params))
    if search.status == "locked":
        where.append(_LOCKED_NOW)
    elif search.status == "allowlisted":
        where.append("st.allowlisted = 1")
    elif search.status == "rate_limited":
        where.append("st.status = 'rate_limited'")
    elif search.status == "active":
        where.append(f"(st.status IS NULL OR NOT ({_LOCKED_NOW}))")
    if search.accounts is not None:
        pairs = []
        for n, key in enumerate(search.accounts):
            params[f"r{n}"], params[f"a{n}"] = key.relay, key.account
            pairs.append(f"(k.relay = :r{n} AND k.account = :a{n})")
        where.append("(" + (" OR ".join(pairs) or "1 = 0") + ")")
    body = f"""
WITH m AS (
    SELECT relay, account, count(*) AS messages,
        sum(CASE WHEN spam_probability >= :hold THEN 1 ELSE 0 END) AS spam_messages, max(ts) AS last_seen
    FROM scored_messages WHERE ts >= :since AND ts <= :until{message_filter} GROUP BY relay, account
), k AS (SELECT relay, account FROM m{keyed})
SELECT k.relay AS relay, k.account AS account, coalesce(m.messages, 0) AS messages,
    coalesce(m.spam_messages, 0) AS spam_messages, m.last_seen AS last_seen, st.status AS status,
    coalesce(st.allowlisted, 0) AS allowlisted, st.lock_reason AS lock_reason
FROM k LEFT JOIN m ON m.relay = k.relay AND m.account = k.account
    LEFT JOIN account_status st ON st.relay = k.relay AND st.account = k.account
WHERE {" AND ".join(where)}"""
    total = connection.execute(text(f"SELECT count(*) FROM ({body}) AS found"), params).scalar_one()
    page = body + " ORDER BY spam_messages DESC, messages DESC, relay, account LIMIT :limit OFFSET :offset"
    rows = mappings(connection, page, params | {"limit": search.limit, "offset": search.offset})
    return rows, int(total)


@dataclass(frozen=True, slots=True)
class DecisionFilter:
    relay: str | None = None
    account: str | None = None
    action: str | None = None
    client_ip: str | None = None
    after_id: int | None = None  # newer than this row (polling)
    before_id: int | None = None  # older than this row (paging back)
    limit: int = 50


def recent_decisions(connection: Connection, wanted: DecisionFilter) -> list[dict[str, Any]]:
    """Scored messages, newest first: when, who, what was decided, and the feature vector to explain it."""
    where, params = ["1 = 1"], {"limit": wanted.limit}
    for column, value in (
        ("relay", wanted.relay),
        ("account", wanted.account),
        ("action", wanted.action),
        ("client_ip", wanted.client_ip),
    ):
        if value:
            where.append(f"{column} = :{column}")
            params[column] = value
    if wanted.after_id is not None:
        where.append("id > :after")
        params["after"] = wanted.after_id
    if wanted.before_id is not None:
        where.append("id < :before")
        params["before"] = wanted.before_id
    return mappings(
        connection,
        f"SELECT {DECISION_COLUMNS} FROM scored_messages WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT :limit",
        params,
    )


def decision_relays(connection: Connection, since: float) -> list[str]:
    """The relays that sent anything since `since`, for the filters' choices."""
    found = connection.execute(
        text("SELECT DISTINCT relay FROM scored_messages WHERE ts >= :since ORDER BY relay"), {"since": since}
    )
    return [r[0] for r in found]


def _rates(row: dict[str, Any]) -> dict[str, Any]:
    messages, recipients = row.get("messages") or 0, row.get("recipients") or 0
    row["spam_share"] = round(row["spam_messages"] / messages, 4) if messages else 0.0
    row["bounce_rate"] = round(row["bounces"] / recipients, 4) if recipients else 0.0
    row["complaint_rate"] = round(row["complaints"] / recipients, 4) if recipients else 0.0
    return row


def _merge(base: dict[Any, dict[str, Any]], extra: dict[Any, dict[str, Any]], defaults: dict[str, Any]) -> None:
    for key, row in base.items():
        row.update(extra.get(key, defaults))


def domain_totals(connection: Connection, since: float, until: float, now: float, hold: float) -> list[dict[str, Any]]:
    """Per domain (the part after @; '' for identities without one): accounts, mail, spam, feedback, locks."""
    domain, json_length = _domain(connection), Sql.of(connection).json_length("recipients_hashed")
    window = {"since": since, "until": until, "hold": hold, "now": now}
    rows = {
        r["domain"]: r
        for r in mappings(
            connection,
            f"SELECT {domain} AS domain, count(DISTINCT relay || '/' || account) AS accounts, count(*) AS messages, "
            f"coalesce(sum({json_length}), 0) AS recipients, "
            "sum(CASE WHEN spam_probability >= :hold THEN 1 ELSE 0 END) AS spam_messages "
            "FROM scored_messages WHERE ts >= :since AND ts <= :until GROUP BY 1",
            window,
        )
    }
    feedback = {
        r["domain"]: r
        for r in mappings(
            connection,
            f"SELECT {domain} AS domain, sum(CASE WHEN type = 'bounce' THEN 1 ELSE 0 END) AS bounces, "
            "sum(CASE WHEN type = 'complaint' THEN 1 ELSE 0 END) AS complaints FROM feedback_events "
            "WHERE matched = 1 AND ts >= :since GROUP BY 1",
            window,
        )
    }
    locked = {
        r["domain"]: r
        for r in mappings(
            connection,
            f"SELECT {_domain(connection, 'st.account')} AS domain, count(*) AS locked_accounts "
            f"FROM account_status st WHERE {_LOCKED_NOW} GROUP BY 1",
            window,
        )
    }
    for name in locked:  # a locked account that sent nothing in the period still counts
        rows.setdefault(name, {"domain": name, "accounts": 0, "messages": 0, "recipients": 0, "spam_messages": 0})
    _merge(rows, feedback, {"bounces": 0, "complaints": 0})
    _merge(rows, locked, {"locked_accounts": 0})
    return [_rates(r) for r in rows.values()]


def relay_totals(connection: Connection, since: float, until: float, now: float, hold: float) -> list[dict[str, Any]]:
    """Per relay: accounts, mail, spam, bounces and complaints, and the accounts locked now."""
    json_length = Sql.of(connection).json_length("recipients_hashed")
    window = {"since": since, "until": until, "hold": hold, "now": now}
    rows = {
        r["relay"]: r
        for r in mappings(
            connection,
            "SELECT relay, count(DISTINCT account) AS accounts, count(*) AS messages, "
            f"coalesce(sum({json_length}), 0) AS recipients, "
            "sum(CASE WHEN spam_probability >= :hold THEN 1 ELSE 0 END) AS spam_messages, "
            "count(DISTINCT client_ip) AS client_ips "
            "FROM scored_messages WHERE ts >= :since AND ts <= :until GROUP BY relay",
            window,
        )
    }
    feedback = {
        r["relay"]: r
        for r in mappings(
            connection,
            "SELECT relay, sum(CASE WHEN type = 'bounce' THEN 1 ELSE 0 END) AS bounces, "
            "sum(CASE WHEN type = 'complaint' THEN 1 ELSE 0 END) AS complaints FROM feedback_events "
            "WHERE matched = 1 AND ts >= :since GROUP BY relay",
            window,
        )
    }
    locked = {
        r["relay"]: r
        for r in mappings(
            connection,
            f"SELECT st.relay AS relay, count(*) AS locked_accounts FROM account_status st WHERE {_LOCKED_NOW} "
            "GROUP BY st.relay",
            window,
        )
    }
    for relay in locked:
        rows.setdefault(
            relay,
            {"relay": relay, "accounts": 0, "messages": 0, "recipients": 0, "spam_messages": 0, "client_ips": 0},
        )
    _merge(rows, feedback, {"bounces": 0, "complaints": 0})
    _merge(rows, locked, {"locked_accounts": 0})
    return sorted((_rates(r) for r in rows.values()), key=lambda r: (-r["spam_messages"], -r["messages"]))


def client_ip_totals(
    connection: Connection, since: float, until: float, now: float, hold: float, relay: str | None, limit: int
) -> list[dict[str, Any]]:
    """Per sending client address, the busiest first: accounts and relays on it, mail, spam, feedback, locks."""
    json_length = Sql.of(connection).json_length("recipients_hashed")
    window: dict[str, Any] = {"since": since, "until": until, "hold": hold, "now": now, "limit": limit}
    on_relay = ""
    if relay:
        on_relay, window["relay"] = " AND relay = :relay", relay
    rows = {
        r["client_ip"]: r
        for r in mappings(
            connection,
            "SELECT client_ip, count(DISTINCT relay || '/' || account) AS accounts, count(DISTINCT relay) AS relays, "
            f"count(*) AS messages, coalesce(sum({json_length}), 0) AS recipients, "
            "sum(CASE WHEN spam_probability >= :hold THEN 1 ELSE 0 END) AS spam_messages "
            f"FROM scored_messages WHERE ts >= :since AND ts <= :until AND client_ip IS NOT NULL{on_relay} "
            "GROUP BY client_ip ORDER BY messages DESC, client_ip LIMIT :limit",
            window,
        )
    }
    if not rows:
        return []
    ips = list(rows)
    # Feedback is about a message: it lands on the address that message was sent from.
    feedback_sql = text(
        "SELECT s.client_ip AS client_ip, sum(CASE WHEN f.type = 'bounce' THEN 1 ELSE 0 END) AS bounces, "
        "sum(CASE WHEN f.type = 'complaint' THEN 1 ELSE 0 END) AS complaints "
        "FROM feedback_events f JOIN scored_messages s ON s.message_id = f.message_id AND s.relay = f.relay "
        "AND s.account = f.account WHERE f.matched = 1 AND f.ts >= :since "
        f"AND s.client_ip IN :ips{' AND s.relay = :relay' if relay else ''} GROUP BY s.client_ip"
    ).bindparams(bindparam("ips", expanding=True))
    feedback = {r["client_ip"]: dict(r) for r in connection.execute(feedback_sql, window | {"ips": ips}).mappings()}
    locked_sql = text(
        "SELECT m.client_ip AS client_ip, count(*) AS locked_accounts FROM (SELECT DISTINCT client_ip, relay, account "
        f"FROM scored_messages WHERE ts >= :since AND ts <= :until AND client_ip IN :ips{on_relay}) m "
        f"JOIN account_status st ON st.relay = m.relay AND st.account = m.account WHERE {_LOCKED_NOW} "
        "GROUP BY m.client_ip"
    ).bindparams(bindparam("ips", expanding=True))
    locked = {r["client_ip"]: dict(r) for r in connection.execute(locked_sql, window | {"ips": ips}).mappings()}
    _merge(rows, feedback, {"bounces": 0, "complaints": 0})
    _merge(rows, locked, {"locked_accounts": 0})
    return [_rates(r) for r in rows.values()]
