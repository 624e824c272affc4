"""An index on lease (owner_urn, end_s): the per-user limits (max_node_hours_ahead_per_user,
max_hours_per_day_per_user) read one user's leases that have not ended by some time, checked at every Allocate and
Renew of that user under their lock. Without it, both read every sliver kept (a year of history by default: a
parallel scan of 300 000 rows, 50 ms a check); with it, only that user's leases ending after the time asked.

Revision ID: 0034
Revises: 0033
"""

from __future__ import annotations

from alembic import op

revision = "0034"
down_revision = "0033"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_lease_owner_end", "lease", ["owner_urn", "end_s"])


def downgrade() -> None:
    op.drop_index("ix_lease_owner_end", table_name="lease")
