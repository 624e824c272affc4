"""Notifications: the e-mail address in the GID each user presented at Allocate or Provision (table user_contact),
where lease e-mails go by default when the user has no address of their own here.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_contact",
        sa.Column("user_urn", sa.String(300), primary_key=True),
        sa.Column("gid_email", sa.String(200), nullable=False),
        sa.Column("updated_s", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("user_contact")
