"""Node agents: the properties no agent may set (network_address, hostname, uuid, cmc, interfaces) are removed once
from the nodes that joined through an agent (a row in table agent). Registration refuses them now, but an agent of an
older sfa-omf may have stored them (a CMC or interfaces of its choosing, another node's uuid or host name). Values an
operator sets on such a node afterwards stay: nothing removes them again.

Revision ID: 0020
Revises: 0019
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

# As sfa_omf/agents/service.py NOT_FROM_AGENTS, fixed here: a migration does not change with the code.
NOT_FROM_AGENTS = frozenset({"network_address", "hostname", "uuid", "cmc", "interfaces"})

log = logging.getLogger("sfa_omf.calendar")

_node = sa.table("node", sa.column("id", sa.Integer()), sa.column("component_id"), sa.column("properties", sa.JSON()))
_agent = sa.table("agent", sa.column("node_id", sa.Integer()))


def upgrade() -> None:
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(_node.c.id, _node.c.component_id, _node.c.properties).join(_agent, _agent.c.node_id == _node.c.id)
    ).all()
    cleaned: list[str] = []
    for node_id, component_id, properties in rows:
        if not properties or NOT_FROM_AGENTS.isdisjoint(properties):
            continue
        kept = {name: value for name, value in properties.items() if name not in NOT_FROM_AGENTS}
        connection.execute(sa.update(_node).where(_node.c.id == node_id).values(properties=kept))
        cleaned.append(component_id)
    if cleaned:
        # Answers cached by processes still running (the advertisement) must not keep the removed values.
        connection.execute(sa.text("UPDATE calendar_generation SET value = value + 1 WHERE id = 1"))
        log.warning(
            "removed %s from %d agent node(s): %s",
            "/".join(sorted(NOT_FROM_AGENTS)),
            len(cleaned),
            ", ".join(sorted(cleaned)),
        )


def downgrade() -> None:
    # Nothing to restore: the removed values were never the aggregate's to keep.
    pass
