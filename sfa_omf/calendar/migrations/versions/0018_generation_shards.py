"""The calendar's generation is kept in 32 rows, its value their sum (calendar/generation.py: writers of several
processes no longer queue on one row). This migration makes rows 2..32 (value 0, so the sum is unchanged). It also
marks the change for processes of an older sfa-omf, which read row 1 alone and would miss most writes: they refuse
to start on a database at this revision, so every process of every host must be upgraded together.

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

SHARDS = 32  # as calendar/generation.py, fixed here: a migration does not change with the code


def upgrade() -> None:
    for shard in range(1, SHARDS + 1):
        op.execute(
            sa.text(
                "INSERT INTO calendar_generation (id, value) SELECT :shard, 0 "
                "WHERE NOT EXISTS (SELECT 1 FROM calendar_generation WHERE id = :shard)"
            ).bindparams(shard=shard)
        )


def downgrade() -> None:
    # Back to one row holding the whole count, as the older code reads it.
    op.execute(
        sa.text("UPDATE calendar_generation SET value = (SELECT sum(value) FROM calendar_generation) WHERE id = 1")
    )
    op.execute(sa.text("DELETE FROM calendar_generation WHERE id > 1"))
