"""Feedback events and admin verdicts in the database, committed before the service replies.

Feedback is idempotent by `event_id` (`INSERT OR IGNORE`): the same event posted
twice is stored once and counted once (`ON CONFLICT DO NOTHING`). `training_labels` joins the scored-message
log with verdicts and complaints: the labelled feature vectors training learns from.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from sqlalchemy import Connection, text

from service.stores import FeedbackEvent, Label
from service.stores.database import Database

_INSERT_FEEDBACK = text("""
INSERT INTO feedback_events (event_id, type, ts, message_id, queue_id, relay, account,
    recipient_hash, detail, matched, received_at)
VALUES (:event_id, :type, :ts, :message_id, :queue_id, :relay, :account, :recipient_hash, :detail, :matched,
    :received_at)
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
""")
_INSERT_LABEL = text("""
INSERT INTO labels (target, message_id, relay, account, label, actor, reason, ts, created_at)
VALUES (:target, :message_id, :relay, :account, :label, :actor, :reason, :ts, :created_at)
RETURNING id
""")


class SqlFeedbackLog:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def add(self, events: list[FeedbackEvent]) -> list[bool]:
        received = time.time()
        rows = [
            {
                "event_id": e.event_id,
                "type": e.type.value,
                "ts": e.timestamp,
                "message_id": e.message_id,
                "queue_id": e.queue_id,
                "relay": e.relay,
                "account": e.account,
                "recipient_hash": e.recipient_hash,
                "detail": orjson.dumps(e.detail).decode(),
                "matched": int(e.matched),
                "received_at": received,
            }
            for e in events
        ]

        def insert(connection: Connection) -> list[bool]:
            # RETURNING gives a row only for an insert that happened: a duplicate id returns none.
            return [connection.execute(_INSERT_FEEDBACK, row).first() is not None for row in rows]

        return await self.database.writer.submit(insert)

    async def count(self) -> int:
        return await self.database.read(lambda c: c.execute(text("SELECT count(*) FROM feedback_events")).scalar_one())


class SqlLabelStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def add(self, label: Label) -> int:
        row = {
            "target": label.target.value,
            "message_id": label.message_id,
            "relay": label.relay,
            "account": label.account,
            "label": label.label.value,
            "actor": label.actor,
            "reason": label.reason,
            "ts": label.timestamp,
            "created_at": time.time(),
        }
        return await self.database.writer.submit(lambda c: int(c.execute(_INSERT_LABEL, row).scalar_one()))


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


def training_labels(database: Database) -> list[dict[str, Any]]:
    """Every logged feature vector with what is known of it since.

    `label` is 1 (spam) for a message an admin called spam or a recipient complained
    about, 0 for one an admin called ham, None while nothing is known. The account's
    latest verdict and whether a person locked it (`lock_confirmed`: an admin's lock in
    the audit log) come alongside: training decides how to use them.
    """

    def query(connection: Connection) -> list[dict[str, Any]]:
        out = []
        for row in connection.execute(text(_TRAINING_LABELS)).mappings():
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
