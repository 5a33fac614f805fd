"""Known-spam signatures in the database: the durable side of `service.fingerprints.signatures`.

Adds and removals are committed before they are acknowledged; removal keeps the row
(who removed it and when) so the history of a signature can be read back.
"""

from __future__ import annotations

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


class SqlSignatureStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def write(self, new: list[tuple[SignatureAdd, float]], refreshed: dict[int, float]) -> list[StoredSignature]:
        """New signatures (each with its expiry) and refreshed expiries, in one transaction."""

        def write(connection: Connection) -> list[int]:
            if refreshed:
                connection.execute(_REFRESH, [{"expires_at": e, "id": i} for i, e in refreshed.items()])
            return [
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

        ids = await self.database.writer.submit(write)
        return [
            StoredSignature(signature_id, item.fingerprint, item.source, item.at, expires_at)
            for signature_id, (item, expires_at) in zip(ids, new, strict=True)
        ]

    async def remove(self, signature_ids: list[int], actor: str, at: float) -> None:
        if not signature_ids:
            return

        rows = [{"at": at, "actor": actor, "id": i} for i in signature_ids]
        await self.database.writer.submit(lambda c: c.execute(_REMOVE, rows))

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
