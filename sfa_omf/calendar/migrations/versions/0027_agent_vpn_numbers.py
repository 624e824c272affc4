"""Agents' VPN numbers: each agent has a number of its own (agent.vpn_number, unique), which gives its node's VPN
address and its OAR resource's vpn_number, instead of its node's row id. Node ids are never given back (PostgreSQL
spends one on each insert, a failed registration's too; ``node add`` and ``node import`` spend theirs), so once they
passed the VPN's 65533 addresses every registration was refused, however few nodes there were. A registration now
takes the lowest free number, and a removed node's is free again.

The agents there are keep what they had: number = node id, the address of their certificates, DNS names and OAR
resources (10.200.0.0 + 1 + number). An agent whose node id is past the VPN (it could get no VPN address) gets the
lowest number no other agent holds.

Revision ID: 0027
Revises: 0026
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None

#: calendar/agents.py's VPN_NUMBERS, as of this migration.
VPN_NUMBERS = 65533


def upgrade() -> None:
    with op.batch_alter_table("agent") as batch:  # batch: SQLite cannot alter columns in place
        batch.add_column(sa.Column("vpn_number", sa.Integer(), nullable=True))
    connection = op.get_bind()
    node_ids = [int(node_id) for node_id in connection.scalars(sa.text("SELECT node_id FROM agent ORDER BY node_id"))]
    numbers = {node_id: node_id for node_id in node_ids if 1 <= node_id <= VPN_NUMBERS}
    past = [node_id for node_id in node_ids if node_id not in numbers]
    held = set(numbers.values())
    free = (number for number in range(1, VPN_NUMBERS + 1) if number not in held)
    for node_id in past:
        number = next(free, None)
        if number is None:
            raise RuntimeError(
                f"{len(node_ids)} agents, more than the nodes' VPN's {VPN_NUMBERS} numbers: remove the nodes that "
                "are gone (sfa-omf node remove) with the sfa-omf before this one, then upgrade again"
            )
        numbers[node_id] = number
    if numbers:
        connection.execute(
            sa.text("UPDATE agent SET vpn_number = :number WHERE node_id = :node_id"),
            [{"number": number, "node_id": node_id} for node_id, number in numbers.items()],
        )
    with op.batch_alter_table("agent") as batch:
        batch.alter_column("vpn_number", existing_type=sa.Integer(), nullable=False)
        batch.create_unique_constraint("agent_vpn_number_key", ["vpn_number"])


def downgrade() -> None:
    with op.batch_alter_table("agent") as batch:
        batch.drop_constraint("agent_vpn_number_key", type_="unique")
        batch.drop_column("vpn_number")
