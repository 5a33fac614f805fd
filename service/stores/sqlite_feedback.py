"""Feedback events and admin verdicts in SQLite, committed before the service replies.

Feedback is idempotent by `event_id` (`INSERT OR IGNORE`): the same event posted
twice is stored once and counted once. `training_labels` joins the scored-message
log with verdicts and complaints: the labelled feature vectors training learns from.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import orjson

from service.stores import FeedbackEvent, Label
from service.stores.sqlite import SqliteDatabase

_INSERT_FEEDBACK = """
INSERT OR IGNORE INTO feedback_events (event_id, type, ts, message_id, queue_id, relay, account,
    recipient_hash, detail, matched, received_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_INSERT_LABEL = """
INSERT INTO labels (target, message_id, relay, account, label, actor, reason, ts, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


class SqliteFeedbackLog:
    def __init__(self, database: SqliteDatabase) -> None:
        self.database = database

    async def add(self, events: list[FeedbackEvent]) -> list[bool]:
        received = time.time()
        rows = [
            (
                e.event_id,
                e.type.value,
                e.timestamp,
                e.message_id,
                e.queue_id,
                e.relay,
                e.account,
                e.recipient_hash,
                orjson.dumps(e.detail).decode(),
                int(e.matched),
                received,
            )
            for e in events
        ]

        def insert(connection: sqlite3.Connection) -> list[bool]:
            return [connection.execute(_INSERT_FEEDBACK, row).rowcount == 1 for row in rows]

        return await self.database.writer.submit(insert)

    async def count(self) -> int:
        return await self.database.read(lambda c: c.execute("SELECT count(*) FROM feedback_events").fetchone()[0])


class SqliteLabelStore:
    def __init__(self, database: SqliteDatabase) -> None:
        self.database = database

    async def add(self, label: Label) -> int:
        row = (
            label.target.value,
            label.message_id,
            label.relay,
            label.account,
            label.label.value,
            label.actor,
            label.reason,
            label.timestamp,
            time.time(),
        )
        return await self.database.writer.submit(lambda c: c.execute(_INSERT_LABEL, row).lastrowid)


_TRAINING_LABELS = """
SELECT s.id, s.ts, s.relay, s.account, s.message_id, s.feature_spec_version, s.features, s.spam_probability,
    (SELECT l.label FROM labels l WHERE l.target = 'message' AND l.message_id = s.message_id
        ORDER BY l.ts DESC LIMIT 1) AS message_verdict,
    (SELECT count(*) FROM feedback_events f WHERE f.type = 'complaint' AND f.message_id = s.message_id
        AND f.relay = s.relay) AS complaints,
    (SELECT l.label FROM labels l WHERE l.target = 'account' AND l.relay = s.relay AND l.account = s.account
        ORDER BY l.ts DESC LIMIT 1) AS account_verdict,
    EXISTS (SELECT 1 FROM audit_log a WHERE a.relay = s.relay AND a.account = s.account
        AND a.action IN ('locked', 'locked_temporary') AND a.actor != 'outguard') AS lock_confirmed
FROM scored_messages s
WHERE s.features IS NOT NULL
ORDER BY s.id
"""


def training_labels(database: SqliteDatabase) -> list[dict[str, Any]]:
    """Every logged feature vector with what is known of it since.

    `label` is 1 (spam) for a message an admin called spam or a recipient complained
    about, 0 for one an admin called ham, None while nothing is known. The account's
    latest verdict and whether a person locked it (`lock_confirmed`: an admin's lock in
    the audit log) come alongside: training decides how to use them.
    """

    def query(connection: sqlite3.Connection) -> list[dict[str, Any]]:
        out = []
        for row in connection.execute(_TRAINING_LABELS):
            record = dict(row)
            record["features"] = orjson.loads(record["features"])
            record["lock_confirmed"] = bool(record["lock_confirmed"])
            verdict = record["message_verdict"]
            if verdict == "spam" or (verdict is None and record["complaints"] > 0):
                record["label"] = 1
            elif verdict == "ham":
                record["label"] = 0
            else:
                record["label"] = None
            out.append(record)
        return out

    return database.read_now(query)
