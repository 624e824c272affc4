"""Provision holds: the allocations a Provision holds from the expiry sweep while the testbed works, in a table of
their own (``provision_hold``) instead of in the slivers' expiry. Pushing the expiry made two Provisions of one
allocation share one value (the first one's failure gave it back while the second still worked), ended the hold of
a Provision that timed out though OAR may have made its job, lost a Renew made meanwhile when the Provision failed,
and showed the hold's end as the allocation's expiry in Status and Renew. (No release pushed expiries: nothing to
give back.)

Revision ID: 0026
Revises: 0025
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provision_hold",
        sa.Column("lease_id", sa.String(36), primary_key=True),
        sa.Column("token", sa.String(32), nullable=False),
        sa.Column("held_until_s", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("provision_hold")
