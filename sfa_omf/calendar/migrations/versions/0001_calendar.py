"""The calendar: pools, nodes, slices and their users, leases, slivers; no overlapping slivers on PostgreSQL.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pool",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("federated", sa.Boolean(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
    )
    op.create_table(
        "node",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("component_id", sa.String(300), nullable=False, unique=True),
        sa.Column("component_name", sa.String(200), nullable=False),
        sa.Column("hardware_type", sa.String(100), nullable=False),
        sa.Column("exclusive", sa.Boolean(), nullable=False),
        sa.Column("properties", sa.JSON(), nullable=False),
        sa.Column("disk_images", sa.JSON(), nullable=False),
        sa.Column("grain_s", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("pool_id", sa.Integer(), sa.ForeignKey("pool.id"), nullable=False),
    )
    op.create_table(
        "slice",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("urn", sa.String(300), nullable=False, unique=True),
        sa.Column("expires_s", sa.BigInteger(), nullable=False),
        sa.Column("shut_down", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "slice_user",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("slice_id", sa.Integer(), sa.ForeignKey("slice.id", ondelete="CASCADE"), nullable=False),
        sa.Column("user_urn", sa.String(300), nullable=False),
        sa.Column("ssh_keys", sa.JSON(), nullable=False),
        sa.UniqueConstraint("slice_id", "user_urn"),
    )
    op.create_table(
        "lease",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("slice_id", sa.Integer(), sa.ForeignKey("slice.id"), nullable=False),
        sa.Column("owner_urn", sa.String(300), nullable=False),
        sa.Column("start_s", sa.BigInteger(), nullable=False),
        sa.Column("end_s", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
    )
    op.create_table(
        "sliver",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("urn", sa.String(300), nullable=False, unique=True),
        sa.Column("lease_id", sa.String(36), sa.ForeignKey("lease.id"), nullable=False),
        sa.Column("node_id", sa.Integer(), sa.ForeignKey("node.id"), nullable=False),
        sa.Column("start_s", sa.BigInteger(), nullable=False),
        sa.Column("end_s", sa.BigInteger(), nullable=False),
        sa.Column("holds_node", sa.Boolean(), nullable=False),
        sa.Column("allocation_state", sa.String(40), nullable=False),
        sa.Column("operational_state", sa.String(40), nullable=False),
        sa.Column("expires_s", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_sliver_node_window", "sliver", ["node_id", "start_s", "end_s"])
    if op.get_bind().dialect.name == "postgresql":
        # The database itself forbids two slivers holding one node for overlapping windows ('[)': back-to-back is
        # fine). btree_gist lets the GiST index compare node_id with '='. It is a trusted extension (PG 13+).
        op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
        op.execute(
            "ALTER TABLE sliver ADD CONSTRAINT sliver_no_overlap EXCLUDE USING gist "
            "(node_id WITH =, int8range(start_s, end_s) WITH &&) WHERE (holds_node)"
        )
        op.execute("ALTER TABLE sliver ADD CONSTRAINT sliver_window_valid CHECK (start_s < end_s)")


def downgrade() -> None:
    for table in ("sliver", "lease", "slice_user", "slice", "node", "pool"):
        op.drop_table(table)
