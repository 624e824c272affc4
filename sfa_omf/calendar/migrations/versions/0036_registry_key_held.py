"""Whether someone holds the key a user's GID certifies (registry_record.key_held): False for a user registered without
a key or certificate (the registry made the key pair and kept nothing), True for every other user recorded from now
on. An Update giving a user with no ssh-rsa key on record their first one re-issues their GID for it only when the
key it certifies is held by nobody (registry/api.py): before, it did so for every such user, and a user who held
their key pair (sfa-omf user add without an ssh-rsa key, a certificate given at Register) lost the use of it.
Records made before are left None: for them, nothing tells, and the earlier rule stands.

Revision ID: 0036
Revises: 0035
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0036"
down_revision = "0035"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("registry_record") as table:  # batch: SQLite cannot alter tables in place
        table.add_column(sa.Column("key_held", sa.Boolean(), nullable=True))


def downgrade() -> None:
    # The versions before re-key every user with no ssh-rsa key on record at the first Update giving one.
    with op.batch_alter_table("registry_record") as table:
        table.drop_column("key_held")
