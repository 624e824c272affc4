"""The cluster's leadership term (``leadership_term``, one row): each process that takes the leadership lock
(cluster/leadership.py) adds 1 to it before any background task runs, and each write of a background task first
reads it FOR SHARE and is refused when it is no longer the term its process began (calendar/fence.py). So a task of
a leader that lost its lock while it ran writes nothing once another process leads. Starts at term 0.

Revision ID: 0028
Revises: 0027
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leadership_term",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("term", sa.BigInteger(), nullable=False),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("since_s", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name="leadership_term_one_row"),
    )
    op.execute(sa.text("INSERT INTO leadership_term (id, term, holder, since_s) VALUES (1, 0, '', 0)"))


def downgrade() -> None:
    op.drop_table("leadership_term")
