"""Replicas agree on their secrets and on the signature database.

`service_settings` (name, value, created_at): values the service generates once and
every replica must share, read at start (`service.stores.secrets`). Two rows so far:

- `recipient_hash_key`: the key recipients are hashed with, when
  `OUTGUARD_RECIPIENT_HASH_KEY` is not set. The service writes it at its first start on
  this revision: the key from its old file (`recipient-hash.key` in the state folder) if
  there is one, so hashes stored before stay comparable, else a new random key.
- `recipient_hash_key_check`: an HMAC of a fixed text under the key in use, so a replica
  configured with another key is noticed at start.

`signature_changes` (id, signature_id, changed_at): one row per signature added,
refreshed or removed, written in the transaction that changes it. Each replica reads
the rows after the last one it has seen to keep its in-memory signature index current
(`service.fingerprints.sync`). Rows older than a day are deleted.

The downgrade drops both tables; the key then lives only in the old file, if any.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Real = sa.Float(precision=53)  # REAL on SQLite, double precision on PostgreSQL


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "service_settings",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("created_at", Real, nullable=False),
    )
    if postgresql:
        change_id = sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True)
    else:
        change_id = sa.Column("id", sa.Integer, primary_key=True)  # SQLite's rowid
    op.create_table(
        "signature_changes",
        change_id,
        sa.Column("signature_id", sa.BigInteger if postgresql else sa.Integer, nullable=False),
        sa.Column("changed_at", Real, nullable=False),
    )
    op.create_index("signature_changes_changed_at", "signature_changes", ["changed_at"])


def downgrade() -> None:
    op.drop_index("signature_changes_changed_at", table_name="signature_changes")
    op.drop_table("signature_changes")
    op.drop_table("service_settings")
