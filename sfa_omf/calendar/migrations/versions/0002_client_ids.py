"""Keep what the client called its nodes and leases (manifests answer with the request's client_ids) and the disk
image asked for each sliver.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lease") as lease:
        lease.add_column(sa.Column("client_id", sa.String(200), nullable=False, server_default=""))
    with op.batch_alter_table("sliver") as sliver:
        sliver.add_column(sa.Column("client_id", sa.String(200), nullable=False, server_default=""))
        sliver.add_column(sa.Column("disk_image", sa.String(200), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("sliver") as sliver:
        sliver.drop_column("disk_image")
        sliver.drop_column("client_id")
    with op.batch_alter_table("lease") as lease:
        lease.drop_column("client_id")
