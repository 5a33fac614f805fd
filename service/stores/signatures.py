"""Known-spam signatures in the database: the durable side of `service.fingerprints.signatures`.

Adds and removals are committed before they are acknowledged; removal keeps the row
(who removed it and when) so the history of a signature can be read back.

Every add, refresh and removal also writes a row to `signature_changes` in the same
transaction: the feed each replica reads to keep its in-memory index current
(`service.fingerprints.sync`). Feed rows older than `FEED_KEEP_S` are deleted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Connection, text

from features.fingerprint import Fingerprint
from service.fingerprints.signatures import SignatureAdd, StoredSignature
from service.stores.database import Database

_REFRESH = text(
    "UPDATE signatures SET expires_at = CASE WHEN expires_at < :expires_at THEN :expires_at ELSE expires_at END "
    "WHERE id = :id"
)
_INSERT = text(
    "INSERT INTO signatures (fingerprint, source, message_id, actor, note, added_at, expires_at) "
    "VALUES (:fingerprint, :source, :message_id, :actor, :note, :added_at, :expires_at) RETURNING id"
)
_REMOVE = text("UPDATE signatures SET removed_at = :at, removed_by = :actor WHERE id = :id AND removed_at IS NULL")
_CHANGED = text("INSERT INTO signature_changes (signature_id, changed_at) VALUES (:id, :at)")
_TRIM = text("DELETE FROM signature_changes WHERE changed_at < :before")
# The changes after a feed position, each with its signature as the table has it now.
_CHANGES = text(
    "SELECT c.id, s.id, s.fingerprint, s.source, s.added_at, s.expires_at, s.removed_at "
    "FROM signature_changes c JOIN signatures s ON s.id = c.signature_id WHERE c.id > :after ORDER BY c.id"
)

FEED_KEEP_S = 86_400.0  # feed rows are kept this long (wall clock); a replica further behind reloads
_TRIM_EVERY_S = 3_600.0
# At start, the feed is read from this long before the load: a change committed out of
# id order around the load is applied again (harmlessly) rather than missed.
FEED_OVERLAP_S = 60.0


@dataclass(frozen=True, slots=True)
class SignatureChange:
    """A feed row: a signature that changed, as it stands now (`removed`: taken down)."""

    change_id: int
    signature: StoredSignature
    removed: bool


class SqlSignatureStore:
    def __init__(self, database: Database) -> None:
        self.database = database
        self._trimmed_at = 0.0

    async def write(self, new: list[tuple[SignatureAdd, float]], refreshed: dict[int, float]) -> list[StoredSignature]:
        """New signatures (each with its expiry) and refreshed expiries, in one transaction."""

        now = time.time()
        trim = now - self._trimmed_at >= _TRIM_EVERY_S
        self._trimmed_at = now if trim else self._trimmed_at

        def write(connection: Connection) -> list[int]:
            if refreshed:
                connection.execute(_REFRESH, [{"expires_at": e, "id": i} for i, e in refreshed.items()])
            ids = [
                int(
                    connection.execute(
                        _INSERT,
                        {
                            "fingerprint": item.fingerprint.to_bytes(),
                            "source": item.source,
                            "message_id": item.message_id,
                            "actor": item.actor,
                            "note": item.note,
                            "added_at": item.at,
                            "expires_at": expires_at,
                        },
                    ).scalar_one()
                )
                for item, expires_at in new
            ]
            connection.execute(_CHANGED, [{"id": i, "at": now} for i in [*refreshed, *ids]])
            if trim:
                connection.execute(_TRIM, {"before": now - FEED_KEEP_S})
            return ids

        ids = await self.database.writer.submit(write)
        return [
            StoredSignature(signature_id, item.fingerprint, item.source, item.at, expires_at)
            for signature_id, (item, expires_at) in zip(ids, new, strict=True)
        ]

    async def remove(self, signature_ids: list[int], actor: str, at: float) -> None:
        if not signature_ids:
            return

        rows = [{"at": at, "actor": actor, "id": i} for i in signature_ids]
        changes = [{"id": i, "at": time.time()} for i in signature_ids]

        def write(connection: Connection) -> None:
            connection.execute(_REMOVE, rows)
            connection.execute(_CHANGED, changes)

        await self.database.writer.submit(write)

    def live(self, now: float, limit: int) -> list[StoredSignature]:
        """The newest `limit` signatures neither removed nor expired, oldest first (for loading at start)."""
        rows = self.database.read_now(
            lambda c: c.execute(
                text(
                    "SELECT id, fingerprint, source, added_at, expires_at FROM signatures "
                    "WHERE removed_at IS NULL AND expires_at > :now ORDER BY id DESC LIMIT :limit"
                ),
                {"now": now, "limit": limit},
            ).all()
        )
        return [
            StoredSignature(int(r[0]), Fingerprint.from_bytes(r[1]), r[2], float(r[3]), float(r[4]))
            for r in reversed(rows)
        ]

    def feed_position(self, now: float) -> int:
        """Where a replica loading the live signatures now starts reading the feed."""
        return int(
            self.database.read_now(
                lambda c: c.execute(
                    text("SELECT COALESCE(MAX(id), 0) FROM signature_changes WHERE changed_at < :before"),
                    {"before": now - FEED_OVERLAP_S},
                ).scalar_one()
            )
        )

    async def changes(self, after: int) -> list[SignatureChange]:
        """The feed after position `after`, oldest first, each with its signature's current row."""

        def query(connection: Connection) -> list[SignatureChange]:
            return [
                SignatureChange(
                    int(r[0]),
                    StoredSignature(int(r[1]), Fingerprint.from_bytes(r[2]), r[3], float(r[4]), float(r[5])),
                    r[6] is not None,
                )
                for r in connection.execute(_CHANGES, {"after": after}).all()
            ]

        return await self.database.read(query)
