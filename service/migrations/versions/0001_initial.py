"""The schema as of the first release with migrations, on SQLite and PostgreSQL.

On PostgreSQL, `scored_messages` is partitioned by day on `ts` (unix seconds), with a
default partition for rows outside the days made so far; `service.stores.retention`
creates days ahead and drops days past the retention. The audit log refuses updates
and deletes on both databases.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Real = sa.Float(precision=53)  # REAL on SQLite, double precision on PostgreSQL


def _id(postgresql: bool) -> sa.Column:
    if postgresql:
        return sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False)
    return sa.Column("id", sa.Integer, primary_key=True)  # SQLite's rowid


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    pk = (lambda *columns: [sa.PrimaryKeyConstraint(*columns)]) if postgresql else (lambda *columns: [])

    op.create_table(
        "scored_messages",
        _id(postgresql),
        sa.Column("ts", Real, nullable=False),
        sa.Column("relay", sa.Text, nullable=False),
        sa.Column("account", sa.Text, nullable=False),
        sa.Column("identity_source", sa.Text, nullable=False),
        sa.Column("message_id", sa.Text, nullable=False),
        sa.Column("queue_id", sa.Text),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("feature_spec_version", sa.Text, nullable=False),
        sa.Column("features", sa.LargeBinary),
        sa.Column("spam_probability", Real),
        sa.Column("account_risk", Real, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("lock_recommended", sa.Integer, nullable=False),
        sa.Column("recipients_hashed", sa.Text, nullable=False),
        sa.Column("client_ip", sa.Text),
        sa.Column("subject", sa.Text),
        sa.Column("scored_at", Real, nullable=False),
        sa.Column("fingerprint", sa.LargeBinary),
        sa.Column("shadow_model_version", sa.Text),
        sa.Column("shadow_probability", Real),
        # A partitioned table's key must hold the partition column.
        *pk("id", "ts"),
        postgresql_partition_by="RANGE (ts)",
    )
    if postgresql:
        op.execute("CREATE TABLE scored_messages_default PARTITION OF scored_messages DEFAULT")
    op.create_index("scored_messages_account_ts", "scored_messages", ["relay", "account", "ts"])
    op.create_index("scored_messages_message_id", "scored_messages", ["message_id"])
    op.create_index(
        "scored_messages_queue_id",
        "scored_messages",
        ["queue_id"],
        sqlite_where=sa.text("queue_id IS NOT NULL"),
        postgresql_where=sa.text("queue_id IS NOT NULL"),
    )
    # Time-range reports and the dashboard (14% off bulk insert speed on SQLite, still far
    # above scoring's rate; python -m bench.reports).
    op.create_index("scored_messages_ts", "scored_messages", ["ts"])

    op.create_table(
        "signatures",
        _id(postgresql),
        sa.Column("fingerprint", sa.LargeBinary, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("message_id", sa.Text),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("note", sa.Text),
        sa.Column("added_at", Real, nullable=False),
        sa.Column("expires_at", Real, nullable=False),
        sa.Column("removed_at", Real),
        sa.Column("removed_by", sa.Text),
        *pk("id"),
    )
    op.create_index(
        "signatures_live",
        "signatures",
        ["expires_at"],
        sqlite_where=sa.text("removed_at IS NULL"),
        postgresql_where=sa.text("removed_at IS NULL"),
    )

    op.create_table(
        "feedback_events",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("ts", Real, nullable=False),
        sa.Column("message_id", sa.Text),
        sa.Column("queue_id", sa.Text),
        sa.Column("relay", sa.Text),
        sa.Column("account", sa.Text),
        sa.Column("recipient_hash", sa.Text),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("matched", sa.Integer, nullable=False),
        sa.Column("received_at", Real, nullable=False),
    )
    op.create_index("feedback_events_message_id", "feedback_events", ["message_id"])
    op.create_index("feedback_events_account_ts", "feedback_events", ["relay", "account", "ts"])
    op.create_index("feedback_events_ts", "feedback_events", ["ts"])

    op.create_table(
        "labels",
        _id(postgresql),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("message_id", sa.Text),
        sa.Column("relay", sa.Text),
        sa.Column("account", sa.Text),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("ts", Real, nullable=False),
        sa.Column("created_at", Real, nullable=False),
        *pk("id"),
    )
    op.create_index("labels_message_id", "labels", ["message_id"])
    op.create_index("labels_account", "labels", ["relay", "account", "ts"])

    op.create_table(
        "account_status",
        sa.Column("relay", sa.Text, nullable=False),
        sa.Column("account", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("locked_until", Real),
        sa.Column("temporary_locks", sa.Integer, nullable=False),
        sa.Column("allowlisted", sa.Integer, nullable=False),
        sa.Column("lock_reason", sa.Text),
        sa.Column("updated_at", Real, nullable=False),
        sa.PrimaryKeyConstraint("relay", "account"),
    )

    op.create_table(
        "audit_log",
        _id(postgresql),
        sa.Column("ts", Real, nullable=False),
        sa.Column("relay", sa.Text, nullable=False),
        sa.Column("account", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("from_status", sa.Text, nullable=False),
        sa.Column("to_status", sa.Text, nullable=False),
        sa.Column("details", sa.Text, nullable=False),
        *pk("id"),
    )
    op.create_index("audit_log_account", "audit_log", ["relay", "account", "id"])
    op.create_index("audit_log_ts", "audit_log", ["ts"])
    # Append-only: the database refuses to change or remove history.
    if postgresql:
        op.execute(
            "CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
        )
    else:
        op.execute(
            "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
            "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
        )
        op.execute(
            "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
            "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
        )

    op.create_table(
        "webhooks",
        _id(postgresql),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("events", sa.Text, nullable=False),
        sa.Column("secret", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("active", sa.Integer, nullable=False),
        sa.Column("created_at", Real, nullable=False),
        *pk("id"),
    )
    op.create_table(
        "webhook_outbox",
        _id(postgresql),
        sa.Column("webhook_id", sa.BigInteger, nullable=False),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", Real, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", Real, nullable=False),
        sa.Column("delivered_at", Real),
        *pk("id"),
    )
    op.create_index("webhook_outbox_due", "webhook_outbox", ["status", "next_attempt_at"])
    op.create_table(
        "webhook_attempts",
        _id(postgresql),
        sa.Column("outbox_id", sa.BigInteger, nullable=False),
        sa.Column("ts", Real, nullable=False),
        sa.Column("status_code", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("duration_ms", Real, nullable=False),
        *pk("id"),
    )
    op.create_index("webhook_attempts_outbox", "webhook_attempts", ["outbox_id"])

    op.create_table(
        "identity_rules",
        sa.Column("relay", sa.Text, primary_key=True),
        sa.Column("rules", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("updated_at", Real, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "identity_rules",
        "webhook_attempts",
        "webhook_outbox",
        "webhooks",
        "audit_log",
        "account_status",
        "labels",
        "feedback_events",
        "signatures",
        "scored_messages",
    ):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
