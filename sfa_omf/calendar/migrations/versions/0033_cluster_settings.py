"""The settings each serving process runs with, where the other hosts of a PostgreSQL cluster can compare them (table
cluster_settings: process ``host:pid``, host, pid, started_s, seen_s, settings as JSON, clock_offset_s): the values
that must agree across hosts (sfa_omf/cluster/agreement.py), and the host's clock minus the database's, which the
other hosts compare their own with (sfa_omf/cluster/clock.py). Each process writes its row at start, refreshes
``seen_s`` and the offset while it runs and deletes it when it stops; rows not refreshed for a few minutes are those of
dead processes, ignored and deleted.

Revision ID: 0033
Revises: 0032
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0033"
down_revision = "0032"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cluster_settings",
        sa.Column("process", sa.String(length=300), primary_key=True),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_s", sa.BigInteger(), nullable=False),
        sa.Column("seen_s", sa.BigInteger(), nullable=False),
        sa.Column("settings", sa.Text(), nullable=False),
        sa.Column("clock_offset_s", sa.Float(), nullable=True),
    )


def downgrade() -> None:
    # The versions before compare nothing: the rows only told the hosts what the others run with.
    op.drop_table("cluster_settings")
