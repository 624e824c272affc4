"""PostgreSQL: a notification on channel ``sfa_omf_calendar`` from every transaction that bumps the calendar's
generation (every unit of work that writes), sent when it commits. Each serving process listens
(calendar/changes.py) and keeps a slice's leases between Status calls until one arrives, so that a Status polled
by clients costs no statement while the calendar is unchanged. A trigger for each statement on the generation's
rows, not a NOTIFY written in each writer: writers of every version and command send it, and identical notifications
of one transaction are sent once. SQLite has nothing to add (changes.py asks it directly).

Revision ID: 0035
Revises: 0034
"""

from __future__ import annotations

from alembic import op

revision = "0035"
down_revision = "0034"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE OR REPLACE FUNCTION sfa_omf_calendar_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('sfa_omf_calendar', '');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER calendar_generation_changed AFTER INSERT OR UPDATE ON calendar_generation "
        "FOR EACH STATEMENT EXECUTE FUNCTION sfa_omf_calendar_changed()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS calendar_generation_changed ON calendar_generation")
    op.execute("DROP FUNCTION IF EXISTS sfa_omf_calendar_changed()")
