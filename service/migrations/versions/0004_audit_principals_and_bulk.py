"""Who did it: the token's name on every audit entry; bulk operations as one audited record.

`audit_log.principal` (nullable text): the name of the token whose request made the
change (`OUTGUARD_TOKENS`; `anonymous` with auth off). `actor` stays what the request
said (a person, a ticket system); the principal is who was authenticated. Entries from
before this revision have none.

`audit_log.operation_id` (nullable text): the bulk operation an entry belongs to.

`bulk_operations`: one row per bulk action (`POST /v1/accounts/{relay}/bulk`), written
in the same transaction as its accounts' audit entries and statuses: the action, its
selector (the filter, or how many accounts were named), who did it, the counts, and
the accounts it left alone (already so, or never seen). Append-only like the audit log.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Real = sa.Float(precision=53)


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    if sa.inspect(op.get_bind()).has_table("audit_log"):  # a SQLite file from before the migrations has none
        _audit_columns()
    op.create_table(
        "bulk_operations",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("ts", Real, nullable=False),
        sa.Column("relay", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("principal", sa.Text, nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("selector", sa.Text, nullable=False),
        sa.Column("matched", sa.Integer, nullable=False),
        sa.Column("changed", sa.Integer, nullable=False),
        sa.Column("unchanged", sa.Integer, nullable=False),
        sa.Column("unseen", sa.Integer, nullable=False),
        sa.Column("details", sa.Text, nullable=False),
    )
    op.create_index("bulk_operations_relay", "bulk_operations", ["relay", "ts"])
    if postgresql:
        op.execute(
            "CREATE FUNCTION bulk_operations_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'bulk_operations is append-only'; END $$"
        )
        op.execute(
            "CREATE TRIGGER bulk_operations_append_only BEFORE UPDATE OR DELETE ON bulk_operations "
            "FOR EACH ROW EXECUTE FUNCTION bulk_operations_append_only()"
        )
    else:
        op.execute(
            "CREATE TRIGGER bulk_operations_no_update BEFORE UPDATE ON bulk_operations "
            "BEGIN SELECT RAISE(ABORT, 'bulk_operations is append-only'); END"
        )
        op.execute(
            "CREATE TRIGGER bulk_operations_no_delete BEFORE DELETE ON bulk_operations "
            "BEGIN SELECT RAISE(ABORT, 'bulk_operations is append-only'); END"
        )


def _audit_columns() -> None:
    op.add_column("audit_log", sa.Column("principal", sa.Text, nullable=True))
    op.add_column("audit_log", sa.Column("operation_id", sa.Text, nullable=True))
    op.create_index("audit_log_principal", "audit_log", ["principal", "id"])
    op.create_index(
        "audit_log_operation",
        "audit_log",
        ["operation_id", "id"],
        sqlite_where=sa.text("operation_id IS NOT NULL"),
        postgresql_where=sa.text("operation_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_table("bulk_operations")  # its triggers go with it
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS bulk_operations_append_only()")
    if sa.inspect(op.get_bind()).has_table("audit_log"):
        op.drop_index("audit_log_operation", "audit_log")
        op.drop_index("audit_log_principal", "audit_log")
        op.drop_column("audit_log", "operation_id")
        op.drop_column("audit_log", "principal")
