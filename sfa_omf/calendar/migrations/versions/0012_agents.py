"""Node agents: join tokens, enrolled agents, their reports per lease (sfa_omf/calendar/agent_models.py).

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_token",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("pool", sa.String(100), nullable=False),
        sa.Column("created_s", sa.BigInteger(), nullable=False),
        sa.Column("expires_s", sa.BigInteger(), nullable=False),
        sa.Column("used_s", sa.BigInteger(), nullable=True),
        sa.Column("key_sha256", sa.String(64), nullable=True),
        sa.Column("hostname", sa.String(200), nullable=True),
    )
    op.create_table(
        "agent",
        sa.Column("node_id", sa.Integer(), sa.ForeignKey("node.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("hostname", sa.String(200), nullable=False, unique=True),
        sa.Column("key_sha256", sa.String(64), nullable=False),
        sa.Column("cert_sha256", sa.String(64), nullable=False, index=True),
        sa.Column("certificate", sa.Text(), nullable=False),
        sa.Column("local_address", sa.String(64), nullable=False),
        sa.Column("lan_group", sa.String(100), nullable=False),
        sa.Column("registered_s", sa.BigInteger(), nullable=False),
        sa.Column("last_seen_s", sa.BigInteger(), nullable=False),
        sa.Column("lost", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "agent_report",
        sa.Column("lease_id", sa.String(36), sa.ForeignKey("lease.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("node_id", sa.Integer(), sa.ForeignKey("node.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("updated_s", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("agent_report")
    op.drop_table("agent")
    op.drop_table("agent_token")
