"""When each VPN number was last given back by a removed node (table vpn_number_release: number, released_s),
written in the unit of work that removes the node and its agent row: the number's quarantine (calendar/agents.py)
starts with the removal itself, not with the revocation of the node's VPN certificate that follows it (a step of
its own, which may fail or come late), so no registration in between gets the address of a tunnel still up.

Revision ID: 0030
Revises: 0029
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0030"
down_revision = "0029"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vpn_number_release",
        sa.Column("number", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("released_s", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("vpn_number_release")
