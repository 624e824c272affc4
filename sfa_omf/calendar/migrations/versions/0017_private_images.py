"""Images saved from a container (sfa_omf_save_image) are private to the user who saved them until an operator
publishes them (``sfa-omf image publish``): column repository_image.private. Images already there stay public.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("repository_image") as image:
        image.add_column(sa.Column("private", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("repository_image") as image:
        image.drop_column("private")
