"""Registry records: when each was last changed (sfi.py show prints last_updated).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("registry_record") as table:  # batch: SQLite cannot alter columns in place
        table.add_column(sa.Column("updated_s", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("registry_record") as table:
        table.drop_column("updated_s")
