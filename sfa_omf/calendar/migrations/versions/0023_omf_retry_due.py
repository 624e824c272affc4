"""An operator's ``sfa-omf omf retry`` records when the failed end is due (omf_slot.retry_due_s) instead of moving the
time of its last try back: ``sfa-omf omf slots`` showed a last try that never happened.

Revision ID: 0023
Revises: 0022
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("omf_slot") as batch:
        batch.add_column(sa.Column("retry_due_s", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("omf_slot") as batch:
        batch.drop_column("retry_due_s")
