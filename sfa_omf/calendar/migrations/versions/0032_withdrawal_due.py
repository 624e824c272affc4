"""The slices whose users' keys are still to be taken out of their local logins (table withdrawal_due: slice_urn,
reason, since_s): a withdrawal that failed at a lease's end is written there and tried again at every pass of the
leader's retire_ended until it succeeds, which deletes the row (am/withdrawals.py). Before, only the process that saw
the failure remembered it: a restart or another leader forgot it, and a former member of the slice kept a login.

Revision ID: 0032
Revises: 0031
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0032"
down_revision = "0031"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "withdrawal_due",
        sa.Column("slice_urn", sa.String(length=300), primary_key=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("since_s", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    # The versions before keep due withdrawals in their process only: the rows left here are not tried again by them
    # (an operator downgrading takes those slices' keys out by hand: `SELECT slice_urn, reason FROM withdrawal_due`).
    op.drop_table("withdrawal_due")
