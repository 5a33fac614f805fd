"""Known-spam signatures in SQLite: the durable side of `service.fingerprints.signatures`.

Adds and removals are committed before they are acknowledged; removal keeps the row
(who removed it and when) so the history of a signature can be read back.
"""

from __future__ import annotations

import sqlite3

from features.fingerprint import Fingerprint
from service.fingerprints.signatures import SignatureAdd, StoredSignature
from service.stores.sqlite import SqliteDatabase


class SqliteSignatureStore:
    def __init__(self, database: SqliteDatabase) -> None:
        self.database = database

    async def write(self, new: list[tuple[SignatureAdd, float]], refreshed: dict[int, float]) -> list[StoredSignature]:
        """New signatures (each with its expiry) and refreshed expiries, in one transaction."""

        def write(connection: sqlite3.Connection) -> list[int]:
            connection.executemany(
                "UPDATE signatures SET expires_at = max(expires_at, ?) WHERE id = ?",
                [(expires_at, signature_id) for signature_id, expires_at in refreshed.items()],
            )
            ids = []
            for item, expires_at in new:
                cursor = connection.execute(
                    "INSERT INTO signatures (fingerprint, source, message_id, actor, note, added_at, expires_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        item.fingerprint.to_bytes(),
                        item.source,
                        item.message_id,
                        item.actor,
                        item.note,
                        item.at,
                        expires_at,
                    ),
                )
                ids.append(int(cursor.lastrowid or 0))
            return ids

        ids = await self.database.writer.submit(write)
        return [
            StoredSignature(signature_id, item.fingerprint, item.source, item.at, expires_at)
            for signature_id, (item, expires_at) in zip(ids, new, strict=True)
        ]

    async def remove(self, signature_ids: list[int], actor: str, at: float) -> None:
        if not signature_ids:
            return

        def mark(connection: sqlite3.Connection) -> None:
            connection.executemany(
                "UPDATE signatures SET removed_at = ?, removed_by = ? WHERE id = ? AND removed_at IS NULL",
                [(at, actor, i) for i in signature_ids],
            )

        await self.database.writer.submit(mark)

    def live(self, now: float, limit: int) -> list[StoredSignature]:
        """The newest `limit` signatures neither removed nor expired, oldest first (for loading at start)."""
        rows = self.database.read_now(
            lambda c: c.execute(
                "SELECT id, fingerprint, source, added_at, expires_at FROM signatures "
                "WHERE removed_at IS NULL AND expires_at > ? ORDER BY id DESC LIMIT ?",
                (now, limit),
            ).fetchall()
        )
        return [
            StoredSignature(int(r[0]), Fingerprint.from_bytes(r[1]), r[2], float(r[3]), float(r[4]))
            for r in reversed(rows)
        ]
