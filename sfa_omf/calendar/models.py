"""The calendar's tables (SQLAlchemy 2 typed declarative models). Nothing outside calendar/ sees these objects.

Times are stored as integer epoch seconds (UTC): one representation on SQLite and PostgreSQL, exact grain
arithmetic, and PostgreSQL's exclusion constraint works on ``int8range(start_s, end_s)`` (half-open, '[)').

A *sliver* is one node booked for one lease's window: the unit the no-double-booking rule is about. While a sliver
holds its node (``holds_node``), no other sliver of that node may overlap it — on PostgreSQL the database forbids
it (migration 0001's exclusion constraint); on SQLite the write lock is taken before the check (database.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Pool(Base):
    __tablename__ = "pool"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    federated: Mapped[bool] = mapped_column(Boolean, default=True)
    description: Mapped[str] = mapped_column(Text, default="")

    nodes: Mapped[list[Node]] = relationship(back_populates="pool")


class Node(Base):
    __tablename__ = "node"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    component_id: Mapped[str] = mapped_column(String(300), unique=True)
    component_name: Mapped[str] = mapped_column(String(200))
    hardware_type: Mapped[str] = mapped_column(String(100), default="")
    exclusive: Mapped[bool] = mapped_column(Boolean, default=True)
    properties: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    disk_images: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    grain_s: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20), default="usable")
    pool_id: Mapped[int] = mapped_column(ForeignKey("pool.id"))

    pool: Mapped[Pool] = relationship(back_populates="nodes")


class Slice(Base):
    __tablename__ = "slice"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    urn: Mapped[str] = mapped_column(String(300), unique=True)
    expires_s: Mapped[int] = mapped_column(BigInteger)
    shut_down: Mapped[bool] = mapped_column(Boolean, default=False)

    users: Mapped[list[SliceUser]] = relationship(back_populates="slice", cascade="all, delete-orphan")


class SliceUser(Base):
    """A user attached to a slice, with the SSH keys they sent (geni_users / sfa_users)."""

    __tablename__ = "slice_user"
    __table_args__ = (UniqueConstraint("slice_id", "user_urn"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slice_id: Mapped[int] = mapped_column(ForeignKey("slice.id", ondelete="CASCADE"))
    user_urn: Mapped[str] = mapped_column(String(300))
    ssh_keys: Mapped[list[str]] = mapped_column(JSON, default=list)

    slice: Mapped[Slice] = relationship(back_populates="users")


class Lease(Base):
    """A time window booked by a slice on one or more nodes (an ol:lease)."""

    __tablename__ = "lease"
    # A user's leases not yet ended by some time: what the per-user limits read (booking.py's _held_ahead_s and
    # _used_per_day), never the whole history.
    __table_args__ = (Index("ix_lease_owner_end", "owner_urn", "end_s"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # a UUID, as ol:lease id
    slice_id: Mapped[int] = mapped_column(ForeignKey("slice.id"), index=True)  # a slice's leases: every Status
    owner_urn: Mapped[str] = mapped_column(String(300), default="")  # who booked it (per-user limits)
    start_s: Mapped[int] = mapped_column(BigInteger)
    end_s: Mapped[int] = mapped_column(BigInteger)
    # allocated, provisioned, cancelled, expired (never provisioned), ended (the slot is over)
    state: Mapped[str] = mapped_column(String(20), default="allocated")
    client_id: Mapped[str] = mapped_column(String(200), default="")  # the client's label (ol:lease client_id)

    slice: Mapped[Slice] = relationship()
    slivers: Mapped[list[Sliver]] = relationship(back_populates="lease")


class Sliver(Base):
    """One node of one lease. Its [start_s, end_s) copies the lease's, so the database can compare windows."""

    __tablename__ = "sliver"
    __table_args__ = (Index("ix_sliver_node_window", "node_id", "start_s", "end_s"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    urn: Mapped[str] = mapped_column(String(300), unique=True)
    lease_id: Mapped[str] = mapped_column(ForeignKey("lease.id"), index=True)  # a lease's slivers
    node_id: Mapped[int] = mapped_column(ForeignKey("node.id"))
    start_s: Mapped[int] = mapped_column(BigInteger)
    end_s: Mapped[int] = mapped_column(BigInteger)
    holds_node: Mapped[bool] = mapped_column(Boolean, default=True)
    allocation_state: Mapped[str] = mapped_column(String(40), default="geni_allocated")
    operational_state: Mapped[str] = mapped_column(String(40), default="geni_pending_allocation")
    expires_s: Mapped[int] = mapped_column(BigInteger)  # an allocation not provisioned by then is released
    client_id: Mapped[str] = mapped_column(String(200), default="")  # the request's name for the node
    disk_image: Mapped[str] = mapped_column(String(200), default="")

    lease: Mapped[Lease] = relationship(back_populates="slivers")
    node: Mapped[Node] = relationship()


class AccountMapping(Base):
    """Which local Unix account a federation user (or a slice, or everyone) uses on the testbed."""

    __tablename__ = "account_mapping"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    urn: Mapped[str] = mapped_column(String(300), unique=True)  # a user URN, or a slice URN (per-slice policy)
    login: Mapped[str] = mapped_column(String(32), index=True)
    pinned: Mapped[bool] = mapped_column(Boolean, default=False)  # set by an operator, never recomputed


class RetiredLogin(Base):
    """A login whose holder was removed from the registry (migration 0019): it is never derived for anyone again, and
    the n-th holder of a URN gets a login derived for them (registry/accounts.py), not an earlier holder's account."""

    __tablename__ = "retired_login"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    urn: Mapped[str] = mapped_column(String(300), index=True)  # the removed user's (or slice's) URN
    login: Mapped[str] = mapped_column(String(32), index=True)  # the login it had, or would have had
    retired_s: Mapped[int] = mapped_column(BigInteger)  # when the registry removed it


class VpnCa(Base):
    """The nodes' VPN CA of the whole cluster (one row, migration 0021): every host's DATA_DIR/vpn must hold this CA
    (agents/vpn.py refuses another, and never makes a second one). Its key stays in the files, not here."""

    __tablename__ = "vpn_ca"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1: one CA
    ca_sha256: Mapped[str] = mapped_column(String(64))  # SHA-256 of the CA certificate (DER), hex
    made_on: Mapped[str] = mapped_column(String(200))  # the host that made it: where its files are copied from
    created_s: Mapped[int] = mapped_column(BigInteger)


class VpnIssued(Base):
    """A node's current VPN client certificate, whichever host issued it (every host writes its ccd/ from these)."""

    __tablename__ = "vpn_issued"

    hostname: Mapped[str] = mapped_column(String(200), primary_key=True)
    serial: Mapped[str] = mapped_column(String(50))  # decimal: X.509 serials are up to 159 bits
    address: Mapped[str] = mapped_column(String(64))  # the node's fixed VPN address
    certificate: Mapped[str] = mapped_column(Text)  # PEM
    issued_s: Mapped[int] = mapped_column(BigInteger)


class VpnRevoked(Base):
    """A revoked VPN client certificate (every host writes its crl.pem from these). On SQLite (the file-only VPN,
    whose CRL is its files) a removed node's revocation is recorded here too, for its number's quarantine only."""

    __tablename__ = "vpn_revoked"

    serial: Mapped[str] = mapped_column(String(50), primary_key=True)  # decimal
    hostname: Mapped[str] = mapped_column(String(200))  # the node it was issued to ("" when not known)
    revoked_s: Mapped[int] = mapped_column(BigInteger, index=True)
    # The VPN number of the certificate's address (migration 0029; None when not known, as for older rows): no node
    # gets it for VPN_NUMBER_QUARANTINE_S after revoked_s, while the revoked tunnel may be up (calendar/agents.py).
    vpn_number: Mapped[int | None] = mapped_column(Integer, nullable=True)


class VpnNumberRelease(Base):
    """When a removed node gave its VPN number back (migration 0030), written with the removal: no node gets the
    number for VPN_NUMBER_QUARANTINE_S after it, while the removed node's tunnel may be up (calendar/agents.py)."""

    __tablename__ = "vpn_number_release"

    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    released_s: Mapped[int] = mapped_column(BigInteger)


class RegistryRecord(Base):
    """A record of the local authority's SFA registry: an authority, user, slice or node, with its GID."""

    __tablename__ = "registry_record"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    hrn: Mapped[str] = mapped_column(String(300), unique=True)
    type: Mapped[str] = mapped_column(String(20))
    urn: Mapped[str] = mapped_column(String(300))
    gid: Mapped[str] = mapped_column(Text)  # PEM chain, leaf first
    email: Mapped[str] = mapped_column(String(200), default="")
    keys: Mapped[list[str]] = mapped_column(JSON, default=list)  # users' SSH public keys
    researchers: Mapped[list[str]] = mapped_column(JSON, default=list)  # slices' member user HRNs
    pis: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")  # authorities' PI user HRNs
    expires_s: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # slices: when the slice ends
    created_s: Mapped[int] = mapped_column(BigInteger)
    updated_s: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # None: never changed since created
    # Users: whether someone holds the private half of the key their GID certifies. False: the registry made that
    # key pair and kept nothing (Register without a key or certificate), so an Update giving an ssh-rsa key re-keys
    # them. None: recorded before sfa-omf kept this (migration 0036), or no user.
    key_held: Mapped[bool | None] = mapped_column(Boolean, nullable=True)


class OarJob(Base):
    """The OAR advance reservation that makes a lease real (the OAR backend; kept here so that it commits with the
    calendar). ``state``: submitting (asked OAR, answer not yet recorded), submitted, deleting, deleted, failed."""

    __tablename__ = "oar_job"

    lease_id: Mapped[str] = mapped_column(ForeignKey("lease.id"), primary_key=True)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    owner: Mapped[str] = mapped_column(String(32))  # the local login that owns the OAR job
    state: Mapped[str] = mapped_column(String(20))
    message: Mapped[str] = mapped_column(Text, default="")  # OAR's own words when it failed
    updated_s: Mapped[int] = mapped_column(BigInteger)


class ProvisionHoldRow(Base):
    """An allocation a Provision holds from the expiry sweep while the testbed works (booking.py
    ``Bookings.hold_for_provision``): the sweep leaves the lease until ``held_until_s``, whatever its slivers' expiry
    (which a hold never changes). ``token`` names the Provision at work; empty once that Provision ended while the
    testbed may still hold the lease (a time-out, a job maybe made): the row then only keeps the sweep off until
    OAR's reconciler adopts the job, and no longer keeps another Provision out. One row a lease. No foreign key: a
    lease discarded after a failed call may leave its row behind, which lapses."""

    __tablename__ = "provision_hold"

    lease_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    token: Mapped[str] = mapped_column(String(32))
    held_until_s: Mapped[int] = mapped_column(BigInteger)


class OmfSlot(Base):
    """The OMF backend's work at a provisioned lease's slot boundaries (sfa_omf/testbed/omf/slots.py). ``phase``:
    provisioned (accounts made, slot not started), starting, ready, failed (the start failed: ``failures`` holds
    each node's reason, ``message`` the whole), ending, ended, end_failed. ``accounts``: login -> the SSH keys
    this lease installed, so the end removes exactly them. No foreign key: a lease discarded after a failed call
    may leave its row behind, which no lease joins any more."""

    __tablename__ = "omf_slot"

    lease_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    phase: Mapped[str] = mapped_column(String(20), index=True)
    accounts: Mapped[dict[str, list[str]]] = mapped_column(JSON, default=dict)
    # node -> reason; while an end is under way or failed, its steps left -> reason (slot_records.py)
    failures: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    message: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    updated_s: Mapped[int] = mapped_column(BigInteger)
    # An operator's ``omf retry``: the failed end is due from then, whatever its wait (cleared when it is claimed)
    retry_due_s: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class LeaseRevision(Base):
    """What the iCal feeds last published about a lease (its fingerprint) and the SEQUENCE that version carries.

    No foreign key: a lease discarded after a failed call may leave its row behind, harmlessly."""

    __tablename__ = "lease_revision"

    lease_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    sequence: Mapped[int] = mapped_column(Integer)
    fingerprint: Mapped[str] = mapped_column(String(64))
    stamp_s: Mapped[int] = mapped_column(BigInteger)  # when this version was first published (DTSTAMP)


class FeedToken(Base):
    """A user's private iCal feed: only the SHA-256 of the token is kept, so the table does not leak the feeds."""

    __tablename__ = "feed_token"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_urn: Mapped[str] = mapped_column(String(300), unique=True)
    created_s: Mapped[int] = mapped_column(BigInteger)


class NotifySubscription(Base):
    """A user's opt-in to one channel: e-mail to an address, or a webhook to a URL."""

    __tablename__ = "notify_subscription"
    __table_args__ = (UniqueConstraint("user_urn", "channel"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_urn: Mapped[str] = mapped_column(String(300))
    channel: Mapped[str] = mapped_column(String(10))  # email or webhook
    address: Mapped[str] = mapped_column(String(500))


class UserContact(Base):
    """The e-mail address in the GID a user last presented when booking or provisioning here (Allocate,
    Provision): where lease e-mails go by default for users of other authorities, who have no registry record."""

    __tablename__ = "user_contact"

    user_urn: Mapped[str] = mapped_column(String(300), primary_key=True)
    gid_email: Mapped[str] = mapped_column(String(200))
    updated_s: Mapped[int] = mapped_column(BigInteger)


class NotifyOutbox(Base):
    """One message to deliver: written once per (event, recipient) — the unique key makes noticing an event twice
    harmless — and marked sent when the channel took it."""

    __tablename__ = "notify_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(600), unique=True)  # event key + channel + address
    event: Mapped[str] = mapped_column(String(40))
    channel: Mapped[str] = mapped_column(String(10))
    address: Mapped[str] = mapped_column(String(500))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(10), default="pending", index=True)  # pending, sent, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_s: Mapped[int] = mapped_column(BigInteger)
    created_s: Mapped[int] = mapped_column(BigInteger)
    sent_s: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    # A notifier that is delivering the row: others leave it alone until the claim expires (a crashed notifier's
    # rows are taken up again then).
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    claim_until_s: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class NotifyEvent(Base):
    """An event that is not a lease's state (a refused renewal, a node down, the testbed down or back, a reconciler
    repair), recorded once by its unique key; the notifier turns it into outbox messages. Events of a slice go to
    its users; events without a slice go to the operators."""

    __tablename__ = "notify_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(600), unique=True)
    event: Mapped[str] = mapped_column(String(40))
    slice_urn: Mapped[str | None] = mapped_column(String(300), nullable=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_s: Mapped[int] = mapped_column(BigInteger, index=True)


class RepositoryImage(Base):
    """A disk image of the image repository (sfa_omf/images): its file in the data directory's image store, what it
    is, who added it when. Kept here so that removing an image and checking the leases that use it is one unit of
    work of the calendar's database."""

    __tablename__ = "repository_image"

    label: Mapped[str] = mapped_column(String(100), primary_key=True)  # the name requests use (<disk_image name>)
    file_name: Mapped[str] = mapped_column(String(100), unique=True)  # inside the image store directory
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    os: Mapped[str] = mapped_column(String(100), default="")
    version: Mapped[str] = mapped_column(String(100), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    hardware_types: Mapped[list[str]] = mapped_column(JSON, default=list)  # empty: every node can run it
    added_by: Mapped[str] = mapped_column(String(300))  # a Unix login (image add) or a user URN (a saved image)
    added_s: Mapped[int] = mapped_column(BigInteger)
    # A saved image: only added_by may use it (and nobody sees it advertised) until an operator publishes it.
    private: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class LeaseInstance(Base):
    """A container a lease asked for on one of its nodes (sfa_omf/images/instances.py), from Allocate until it is
    destroyed: recorded here so that a restarted server still destroys it at the slot's end. ``address`` is unique
    while the container holds it (NULL once destroyed: NULLs never clash)."""

    __tablename__ = "lease_instance"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)  # the LXC container name
    lease_id: Mapped[str] = mapped_column(ForeignKey("lease.id"), index=True)
    sliver_urn: Mapped[str] = mapped_column(String(300))  # the node's sliver the container belongs to
    node: Mapped[str] = mapped_column(String(300))  # component_id
    position: Mapped[int] = mapped_column(Integer)  # 0..count-1 on its sliver
    image: Mapped[str] = mapped_column(String(100))  # repository label; "" for the base container
    address: Mapped[str | None] = mapped_column(String(50), nullable=True, unique=True)
    state: Mapped[str] = mapped_column(String(20), index=True)  # planned, starting, running, stopped, failed, destroyed
    error: Mapped[str] = mapped_column(Text, default="")
    updated_s: Mapped[int] = mapped_column(BigInteger)


class CalendarGeneration(Base):
    """The generation's rows (ids 1..32, migration 0018): each unit of work that writes to the database adds 1 to
    one of them, in the same transaction as the write; the generation is their sum. A process that cached an answer
    computed at generation G knows it is still right as long as it reads G (calendar/generation.py). Shared by every
    process and host using the database."""

    __tablename__ = "calendar_generation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class LeadershipTerm(Base):
    """The cluster's leadership term (one row, id 1, migration 0028): the process that takes the leadership lock
    adds 1 to ``term`` before its background tasks run (``holder``: its host:pid, ``since_s``: when); each write of
    a background task reads it FOR SHARE and is refused once it is not its process's term (calendar/fence.py)."""

    __tablename__ = "leadership_term"
    __table_args__ = (CheckConstraint("id = 1", name="leadership_term_one_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    term: Mapped[int] = mapped_column(BigInteger)
    holder: Mapped[str] = mapped_column(Text)
    since_s: Mapped[int] = mapped_column(BigInteger)


class WithdrawalDue(Base):
    """A slice whose users' keys could not be taken out of their local logins when its leases ended (migration 0032):
    why (the last failure's words) and since when. Written where the withdrawal failed, deleted once it succeeds;
    the leader's retire_ended tries each row again at every pass (am/withdrawals.py). In the database, not in the
    process: a restart or a new leader must not forget it (a former member would keep a login). No foreign key: a
    slice's URN is all the withdrawal needs, and a removed slice is named by its mark."""

    __tablename__ = "withdrawal_due"

    slice_urn: Mapped[str] = mapped_column(String(300), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    since_s: Mapped[int] = mapped_column(BigInteger)


class ClusterSettings(Base):
    """What one serving process runs with, of the settings every host of a cluster must agree on, and its host's clock
    offset to the database's (migration 0033; sfa_omf/cluster/agreement.py): written at its start, ``seen_s`` (and
    the offset) refreshed while it runs, deleted when it stops.
    A row not refreshed for a few minutes is a dead process's, ignored (and deleted) by the others."""

    __tablename__ = "cluster_settings"

    process: Mapped[str] = mapped_column(String(300), primary_key=True)  # host:pid
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_s: Mapped[int] = mapped_column(BigInteger)
    seen_s: Mapped[int] = mapped_column(BigInteger)
    settings: Mapped[str] = mapped_column(Text)  # JSON: setting name -> value (agreement.agreed_values)
    # This host's clock minus the database's at seen_s (cluster/clock.py): the other hosts compare their clocks with
    # it. None: not measured (never, in practice; a row written by hand).
    clock_offset_s: Mapped[float | None] = mapped_column(Float, nullable=True)


# The node agents' tables live in their own module; importing it here puts them in Base.metadata (migrations, tests).
from sfa_omf.calendar import agent_models as _agent_models  # noqa: E402, F401
