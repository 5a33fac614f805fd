"""What the dashboard pages show, read from the event log: series over time and one account's history.

Periods end at the newest scored message rather than the wall clock, so a replayed
log (or a quiet night) still shows its traffic.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, text

from service.stores.database import Sql

HOUR, DAY = 3_600, 86_400
ACTIONS = ("accept", "defer", "hold", "reject")


@dataclass(frozen=True, slots=True)
class Period:
    start: float
    end: float
    bucket: int  # seconds per bar: an hour for two days or less, else a day

    @property
    def buckets(self) -> int:
        return max(1, int((self.end - self.start) // self.bucket) + 1)

    def label(self, index: int) -> str:
        moment = datetime.fromtimestamp(self.start + index * self.bucket, UTC)
        return moment.strftime("%m-%d %H:00" if self.bucket == HOUR else "%Y-%m-%d")


def period_ending_at_newest(
    connection: Connection, days: float, now: float, where: str = "", params: dict[str, Any] | None = None
) -> Period:
    newest = connection.execute(text(f"SELECT max(ts) FROM scored_messages {where}"), params or {}).scalar()
    end = float(newest) if newest is not None else now
    bucket = HOUR if days <= 2 else DAY
    start = (end - days * DAY) // bucket * bucket
    return Period(start=start, end=end, bucket=bucket)


def overview(connection: Connection, period: Period, hold: float) -> dict[str, Any]:
    n = period.buckets
    bucket = Sql.of(connection).whole("(ts - :start) / :bucket")
    window = {"start": period.start, "end": period.end, "bucket": period.bucket}
    messages, spam = [0.0] * n, [0.0] * n
    actions = {a: [0.0] * n for a in ACTIONS}
    for index, action, count, spam_count in connection.execute(
        text(
            f"SELECT {bucket}, action, count(*), "
            "coalesce(sum(CASE WHEN spam_probability >= :hold THEN 1 ELSE 0 END), 0) FROM scored_messages "
            "WHERE ts >= :start AND ts <= :end GROUP BY 1, 2"
        ),
        window | {"hold": hold},
    ):
        if 0 <= index < n:
            messages[index] += count
            spam[index] += spam_count
            if action in actions:
                actions[action][index] += count
    locks = [0.0] * n
    for index, count in connection.execute(
        text(
            f"SELECT {bucket}, count(*) FROM audit_log "
            "WHERE action IN ('locked', 'locked_temporary') AND ts >= :start AND ts <= :end GROUP BY 1"
        ),
        window,
    ):
        if 0 <= index < n:
            locks[index] += count
    total, total_spam = sum(messages), sum(spam)
    return {
        "labels": [period.label(i) for i in range(n)],
        "ham": [m - s for m, s in zip(messages, spam, strict=True)],
        "spam": spam,
        "actions": actions,
        "locks": locks,
        "totals": {
            "messages": int(total),
            "spam": int(total_spam),
            "spam_share": round(total_spam / total, 4) if total else 0.0,
            "locks": int(sum(locks)),
            **{a: int(sum(v)) for a, v in actions.items()},
        },
    }


def account_timeline(connection: Connection, relay: str, account: str, period: Period) -> dict[str, Any]:
    n = period.buckets
    volume = [0.0] * n
    times, scores = [], []
    key = {"relay": relay, "account": account}
    for ts, probability in connection.execute(
        text(
            "SELECT ts, spam_probability FROM scored_messages WHERE relay = :relay AND account = :account "
            "AND ts >= :start AND ts <= :end ORDER BY ts"
        ),
        key | {"start": period.start, "end": period.end},
    ):
        index = int((ts - period.start) // period.bucket)
        if 0 <= index < n:
            volume[index] += 1
        if probability is not None:
            times.append(ts)
            scores.append(probability)
    # The account's usual volume: its median over the buckets in which it sent anything.
    active = sorted(v for v in volume if v > 0)
    usual = active[len(active) // 2] if active else 0.0
    feedback = {
        kind: count
        for kind, count in connection.execute(
            # Feedback arrives after the mail it is about: everything since the period began.
            text(
                "SELECT type, count(*) FROM feedback_events WHERE relay = :relay AND account = :account "
                "AND ts >= :start GROUP BY type"
            ),
            key | {"start": period.start},
        )
    }
    return {
        "labels": [period.label(i) for i in range(n)],
        "volume": volume,
        "usual": [usual] * n,
        "times": times,
        "scores": scores,
        "feedback": feedback,
        "messages": len(times),
    }
