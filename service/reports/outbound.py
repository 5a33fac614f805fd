"""The outbound report: per account, identity, relay or day over a time range, riskiest first.

One SQL query per report over the event log: the scored messages' counts and scores,
the feedback that came back (bounces, complaints, replies) and the locks, each
aggregated on the same key and joined. Rows come back from a cursor in pages, so a CSV
of a large range streams without being held in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from enum import StrEnum

from sqlalchemy import Connection, Row, text

from service.stores.database import Sql


class GroupBy(StrEnum):
    ACCOUNT = "account"
    IDENTITY = "identity"  # the account together with how it was identified (a header rule, SASL...)
    RELAY = "relay"
    DAY = "day"


# The key columns of each grouping, as SQL over a table with ts, relay and account.
_KEYS: dict[GroupBy, tuple[tuple[str, str], ...]] = {
    GroupBy.ACCOUNT: (("relay", "relay"), ("account", "account")),
    GroupBy.IDENTITY: (("identity_source", "identity_source"), ("relay", "relay"), ("account", "account")),
    GroupBy.RELAY: (("relay", "relay"),),
    GroupBy.DAY: (("day", "{day}"),),
}
METRICS = (
    "messages",
    "recipients",
    "spam_messages",
    "mean_spam_probability",
    "max_spam_probability",
    "bounces",
    "complaints",
    "replies",
    "locks",
    "malware_detections",
)
SORTABLE = frozenset(METRICS) | {"relay", "account", "day", "identity_source"}


@dataclass(frozen=True, slots=True)
class OutboundQuery:
    since: float
    until: float
    group_by: GroupBy = GroupBy.ACCOUNT
    relay: str | None = None
    identity_source: str | None = None  # e.g. `rule:php-script`: only identities found that way
    sort: str = "-spam_messages"
    limit: int | None = 100
    offset: int = 0
    hold_threshold: float = 0.99

    def columns(self) -> list[str]:
        return [name for name, _ in _KEYS[self.group_by]] + list(METRICS)


def _sql(query: OutboundQuery, sql: Sql) -> tuple[str, dict[str, object]]:
    keys = tuple((name, expr.format(day=sql.day("ts"))) for name, expr in _KEYS[query.group_by])
    key_select = ", ".join(f"{expr} AS {name}" for name, expr in keys)
    key_names = ", ".join(name for name, _ in keys)
    join_on = " AND ".join(f"f.{name} IS NOT DISTINCT FROM m.{name}" for name, _ in keys)
    # Locks belong to the account, not to one way of finding it: with group_by=identity an
    # account found two ways shows its locks on both rows.
    lock_keys = tuple(k for k in keys if k[0] != "identity_source")
    lock_select = ", ".join(f"{expr} AS {name}" for name, expr in lock_keys)
    lock_names = ", ".join(name for name, _ in lock_keys)
    lock_on = " AND ".join(f"l.{name} IS NOT DISTINCT FROM m.{name}" for name, _ in lock_keys)
    filters = "ts >= :since AND ts < :until" + (" AND relay = :relay" if query.relay else "")
    by_identity = query.group_by is GroupBy.IDENTITY or query.identity_source is not None
    identity_filter = " AND identity_source = :identity_source" if query.identity_source else ""
    message_filters = filters + identity_filter
    # Feedback is attributed through the message it is about, so it lands on that message's identity.
    feedback_rows = (
        "(SELECT f.ts, f.relay, f.account, f.type, (SELECT s.identity_source FROM scored_messages s "
        "WHERE s.message_id = f.message_id AND s.relay = f.relay LIMIT 1) AS identity_source "
        f"FROM feedback_events f WHERE f.matched = 1 AND f.{filters.replace(' AND ', ' AND f.')})"
        if by_identity
        else f"(SELECT * FROM feedback_events WHERE matched = 1 AND {filters})"
    )
    descending = query.sort.startswith("-")
    column = query.sort.lstrip("-")
    statement = f"""
WITH m AS (
    SELECT {key_select}, count(*) AS messages,
        sum({sql.json_length("recipients_hashed")}) AS recipients,
        sum(CASE WHEN spam_probability >= :hold THEN 1 ELSE 0 END) AS spam_messages,
        avg(spam_probability) AS mean_spam_probability,
        max(spam_probability) AS max_spam_probability
    FROM scored_messages WHERE {message_filters} GROUP BY {key_names}
), f AS (
    SELECT {key_select}, sum(CASE WHEN type = 'bounce' THEN 1 ELSE 0 END) AS bounces,
        sum(CASE WHEN type = 'complaint' THEN 1 ELSE 0 END) AS complaints,
        sum(CASE WHEN type = 'reply' THEN 1 ELSE 0 END) AS replies
    FROM {feedback_rows} AS feedback WHERE 1 = 1 {identity_filter} GROUP BY {key_names}
), l AS (
    SELECT {lock_select}, sum(CASE WHEN action = 'malware_detected' THEN 0 ELSE 1 END) AS locks,
        sum(CASE WHEN action = 'malware_detected' THEN 1 ELSE 0 END) AS malware_detections
    FROM audit_log WHERE action IN ('locked', 'locked_temporary', 'malware_detected') AND {filters}
    GROUP BY {lock_names}
)
SELECT {", ".join(f"m.{name} AS {name}" for name, _ in keys)}, m.messages AS messages,
    coalesce(m.recipients, 0) AS recipients, coalesce(m.spam_messages, 0) AS spam_messages,
    {sql.round("m.mean_spam_probability", 4)} AS mean_spam_probability,
    {sql.round("m.max_spam_probability", 4)} AS max_spam_probability,
    coalesce(f.bounces, 0) AS bounces, coalesce(f.complaints, 0) AS complaints,
    coalesce(f.replies, 0) AS replies, coalesce(l.locks, 0) AS locks,
    coalesce(l.malware_detections, 0) AS malware_detections
FROM m LEFT JOIN f ON {join_on} LEFT JOIN l ON {lock_on}
ORDER BY {column} {"DESC" if descending else "ASC"} NULLS LAST, {", ".join(f"m.{n}" for n, _ in keys)}
"""
    params: dict[str, object] = {
        "since": query.since,
        "until": query.until,
        "hold": query.hold_threshold,
        "relay": query.relay,
        "identity_source": query.identity_source,
    }
    if query.limit is not None or query.offset:
        statement += f" LIMIT {int(query.limit) if query.limit is not None else sql.no_limit} OFFSET :offset"
        params.update(offset=query.offset)
    return statement, params


def outbound_rows(connection: Connection, query: OutboundQuery) -> list[Row]:
    statement, params = _sql(query, Sql.of(connection))
    return list(connection.execute(text(statement), params))


def count_groups(connection: Connection, query: OutboundQuery) -> int:
    statement, params = _sql(replace(query, limit=None, offset=0), Sql.of(connection))
    return connection.execute(text(f"SELECT count(*) FROM ({statement}) AS report"), params).scalar_one()


def iter_outbound(connection: Connection, query: OutboundQuery, page: int = 1_000) -> Iterator[list[Row]]:
    """The report's rows, `page` at a time, from one server-side cursor (for streaming)."""
    statement, params = _sql(query, Sql.of(connection))
    result = connection.execution_options(stream_results=True, max_row_buffer=page).execute(text(statement), params)
    while rows := result.fetchmany(page):
        yield rows
