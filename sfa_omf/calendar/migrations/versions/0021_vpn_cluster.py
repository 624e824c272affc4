"""Node VPN: its CA, issued and revoked certificates recorded for the whole cluster (tables vpn_ca, vpn_issued,
vpn_revoked): hosts serving one database share one CA and every host writes its CRL and client configs (ccd/) from
these rows, so a certificate revoked through one host is refused by all (sfa_omf/agents/vpn.py).

What a host kept in its DATA_DIR/vpn before (issued/, revoked.json) is recorded by that host at its next start.

Revision ID: 0021
Revises: 0020
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vpn_ca",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("ca_sha256", sa.String(64), nullable=False),
        sa.Column("made_on", sa.String(200), nullable=False),
        sa.Column("created_s", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "vpn_issued",
        sa.Column("hostname", sa.String(200), primary_key=True),
        sa.Column("serial", sa.String(50), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("certificate", sa.Text(), nullable=False),
        sa.Column("issued_s", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "vpn_revoked",
        sa.Column("serial", sa.String(50), primary_key=True),
        sa.Column("hostname", sa.String(200), nullable=False),
        sa.Column("revoked_s", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    # An older sfa-omf keeps the VPN in each host's files only (each host's CRL misses the others' revocations).
    op.drop_table("vpn_revoked")
    op.drop_table("vpn_issued")
    op.drop_table("vpn_ca")
