"""Alembic environment: run with the connection Database.upgrade() hands over (no alembic.ini needed)."""

from __future__ import annotations

from alembic import context

from sfa_omf.calendar.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
