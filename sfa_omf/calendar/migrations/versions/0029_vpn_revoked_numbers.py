"""The VPN number of each revoked certificate's address (vpn_revoked.vpn_number, nullable) and an index on when it
was revoked: a number is not given to another node until VPN_NUMBER_QUARANTINE_S after its certificate's revocation
(calendar/agents.py), since OpenVPN checks the CRL only at a handshake and a removed node's tunnel lasts until then.
On SQLite (the file-only VPN) a removed node's revocation is recorded there for that too.

The rows there keep no number (it is not known any more): only a node removed in the minutes before the upgrade is
not in quarantine.

Revision ID: 0029
Revises: 0028
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vpn_revoked") as batch:  # batch: SQLite cannot alter tables in place
        batch.add_column(sa.Column("vpn_number", sa.Integer(), nullable=True))
        batch.create_index("ix_vpn_revoked_revoked_s", ["revoked_s"])


def downgrade() -> None:
    with op.batch_alter_table("vpn_revoked") as batch:
        batch.drop_index("ix_vpn_revoked_revoked_s")
        batch.drop_column("vpn_number")
