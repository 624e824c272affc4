"""Notifications: users' channel subscriptions and the outbox of messages to deliver.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notify_subscription",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_urn", sa.String(300), nullable=False),
        sa.Column("channel", sa.String(10), nullable=False),
        sa.Column("address", sa.String(500), nullable=False),
        sa.UniqueConstraint("user_urn", "channel"),
    )
    op.create_table(
        "notify_outbox",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key", sa.String(600), nullable=False, unique=True),
        sa.Column("event", sa.String(40), nullable=False),
        sa.Column("channel", sa.String(10), nullable=False),
        sa.Column("address", sa.String(500), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(10), nullable=False, index=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_s", sa.BigInteger(), nullable=False),
        sa.Column("created_s", sa.BigInteger(), nullable=False),
        sa.Column("sent_s", sa.BigInteger(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("notify_outbox")
    op.drop_table("notify_subscription")
