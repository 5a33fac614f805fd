"""Identity rules say whether the relay vouches for their header; scored messages keep identity conflicts.

`scored_messages.identity_conflict` (nullable text, compact JSON `{"rule", "header",
"claimed"}`): the message's untrusted header named another login than its SASL user
(`service.identity`). On PostgreSQL the column is added to the partitioned table and
so to every partition.

Each stored rule (`identity_rules.rules`, a JSON list) gets `trusted` and `identifies`
written out. Before this revision every rule outranked the SASL user, which let a
sender name someone else's account; rules are now untrusted unless an admin marks them
(`PUT /v1/identity-rules/{relay}` with `"trusted": true`), so an upgrade never trusts a
header nobody vouched for. A rule on `X-PHP-Originating-Script` identifies a script.
The downgrade removes both keys, which the previous release refuses to load.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCRIPT_HEADERS = frozenset({"x-php-originating-script"})


Rule = dict[str, Any]


def _rewrite(change: Callable[[Rule], Rule]) -> None:
    connection = op.get_bind()
    if not sa.inspect(connection).has_table("identity_rules"):  # a SQLite file from before the migrations
        return
    for relay, raw in connection.execute(sa.text("SELECT relay, rules FROM identity_rules")).all():
        rules = [change(dict(rule)) for rule in json.loads(raw)]
        connection.execute(
            sa.text("UPDATE identity_rules SET rules = :rules WHERE relay = :relay"),
            {"rules": json.dumps(rules, separators=(",", ":")), "relay": relay},
        )


def _with_trust(rule: Rule) -> Rule:
    rule.setdefault("trusted", False)
    rule.setdefault("identifies", "script" if str(rule.get("header", "")).lower() in SCRIPT_HEADERS else "login")
    return rule


def _without_trust(rule: Rule) -> Rule:
    rule.pop("trusted", None)
    rule.pop("identifies", None)
    return rule


def upgrade() -> None:
    op.add_column("scored_messages", sa.Column("identity_conflict", sa.Text, nullable=True))
    _rewrite(_with_trust)


def downgrade() -> None:
    _rewrite(_without_trust)
    op.drop_column("scored_messages", "identity_conflict")
