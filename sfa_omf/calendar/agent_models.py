"""The tables of node agents (sfa_omf/agents): join tokens, enrolled agents and what they reported per lease.

Kept in calendar/ so that an agent's node and its calendar rows commit together; nothing outside calendar/ sees
these objects (calendar/agents.py hands out plain records). Migration 0009 creates them; 0027 adds the agents' VPN
numbers; 0031 a token's bound host name and its revocation.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from sfa_omf.calendar.models import Base


class AgentToken(Base):
    """A one-time join token made by ``sfa-omf node invite``. Only the SHA-256 of its secret is stored."""

    __tablename__ = "agent_token"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # the public half of the token
    secret_sha256: Mapped[str] = mapped_column(String(64))
    pool: Mapped[str] = mapped_column(String(100))
    created_s: Mapped[int] = mapped_column(BigInteger)
    expires_s: Mapped[int] = mapped_column(BigInteger)
    # Set when an agent used it: the same key and host name may present it again (idempotent re-registration).
    used_s: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    key_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    hostname: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # The only host name the token may enrol (`node invite --hostname`), None: any host name not enrolled yet. Only a
    # bound token re-binds an enrolled node to a new key: a token that leaks must not replace a running node's agent.
    bound_hostname: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # Set by `node invite-revoke`: the token enrols nothing from then on.
    revoked_s: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Agent(Base):
    """The agent of one node: the key it enrolled with, the certificate we issued to that key, where it is."""

    __tablename__ = "agent"

    node_id: Mapped[int] = mapped_column(ForeignKey("node.id", ondelete="CASCADE"), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(200), unique=True)
    key_sha256: Mapped[str] = mapped_column(String(64))  # SHA-256 of the agent's public key (DER)
    cert_sha256: Mapped[str] = mapped_column(String(64), index=True)  # SHA-256 of the certificate we issued (DER)
    certificate: Mapped[str] = mapped_column(Text)  # PEM chain, leaf first
    local_address: Mapped[str] = mapped_column(String(64), default="")
    lan_group: Mapped[str] = mapped_column(String(100), default="")
    registered_s: Mapped[int] = mapped_column(BigInteger)
    last_seen_s: Mapped[int] = mapped_column(BigInteger)
    lost: Mapped[bool] = mapped_column(Boolean, default=False)
    # The agent's own number, 1..VPN_NUMBERS (calendar/agents.py): its VPN address is 10.200.0.0 + 1 + number and its
    # OAR resource's vpn_number. Given at registration (the lowest free one), freed when the node goes.
    vpn_number: Mapped[int] = mapped_column(Integer, unique=True)


class AgentReport(Base):
    """What an agent last reported for one lease on its node: started, failed or ended."""

    __tablename__ = "agent_report"

    lease_id: Mapped[str] = mapped_column(ForeignKey("lease.id", ondelete="CASCADE"), primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("node.id", ondelete="CASCADE"), primary_key=True)
    state: Mapped[str] = mapped_column(String(20))
    message: Mapped[str] = mapped_column(Text, default="")
    updated_s: Mapped[int] = mapped_column(BigInteger)
