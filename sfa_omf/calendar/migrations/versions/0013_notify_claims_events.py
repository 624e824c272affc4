"""Notifications: outbox rows are claimed before delivery (several notifiers on one database never send a message
twice), and events that are not lease states (refused renewals, operators' events) are recorded in notify_event.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notify_outbox") as table:
        table.add_column(sa.Column("claimed_by", sa.String(64), nullable=True))
        table.add_column(sa.Column("claim_until_s", sa.BigInteger(), nullable=True))
    op.create_table(
        "notify_event",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key", sa.String(600), nullable=False, unique=True),
        sa.Column("event", sa.String(40), nullable=False),
        sa.Column("slice_urn", sa.String(300), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_s", sa.BigInteger(), nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("notify_event")
    with op.batch_alter_table("notify_outbox") as table:
        table.drop_column("claim_until_s")
        table.drop_column("claimed_by")
