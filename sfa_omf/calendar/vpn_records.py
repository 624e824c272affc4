"""The node VPN's records for the whole cluster: its CA's fingerprint, the nodes' current client certificates and
the revoked ones (tables vpn_ca, vpn_issued, vpn_revoked). agents/vpn.py signs and writes each host's files (CRL,
ccd/) from these; the database is what makes a revocation through one host known to all of them.

Its writes do not bump the calendar's generation (calendar/generation.py): no cached answer holds these rows (the
advertisement, Status and the calendar pages show no VPN certificate), and a bump threw away every process's cached
advertisement at each certificate issued or revoked. Every host's refresh finds them by ``version`` instead."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Numeric, Select, cast, delete, func, literal, select, text
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sfa_omf.calendar.agent_models import Agent
from sfa_omf.calendar.agents import vpn_number_of
from sfa_omf.calendar.database import Database, TransientConflict
from sfa_omf.calendar.models import VpnCa, VpnIssued, VpnRevoked
from sfa_omf.errors import GeniError, Reason

#: How long issuing a certificate waits for a row another unit of work holds (a registration, a removal of the node).
LOCK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ClusterCa:
    """The CA every host must hold: the SHA-256 of its certificate (DER, hex) and the host that made it."""

    sha256: str
    made_on: str


@dataclass(frozen=True)
class IssuedCertificate:
    """A node's current VPN client certificate."""

    hostname: str
    serial: int
    address: str
    certificate: str  # PEM


@dataclass(frozen=True)
class VpnState:
    """What every host's VPN files are written from, and the records' ``version`` read just before them (the rows
    are at least that new: a host that wrote its files from them and later reads the same version has nothing to
    write)."""

    revoked: frozenset[int]
    issued: tuple[IssuedCertificate, ...]
    version: str


def _version_statement() -> Select[tuple[int, object, str | None]]:
    """The records' version in one statement: how many certificates are revoked and the sum of their serials (rows
    are only ever added there: a CRL only grows), and an MD5 of every node's hostname, serial and address."""
    revoked = select(func.count(), func.coalesce(func.sum(cast(VpnRevoked.serial, Numeric)), 0)).subquery()
    current = VpnIssued.hostname + literal(" ") + VpnIssued.serial + literal(" ") + VpnIssued.address
    in_byte_order = VpnIssued.hostname.collate("C")  # any fixed order will do; bytes sort in half the time
    issued = select(func.md5(func.string_agg(current, aggregate_order_by(literal(","), in_byte_order))))
    return select(revoked.c[0], revoked.c[1], issued.scalar_subquery())


_VERSION = _version_statement()


class VpnRecords:
    """The VPN's rows in the calendar database; each method is one unit of work of its own. For PostgreSQL, the
    database several hosts share: a revocation is made while an agent's registration holds its own unit of work
    open (agents/service.py), which SQLite's single writer could not do (and SQLite serves one host, whose files
    suffice)."""

    def __init__(self, database: Database, clock: Callable[[], float] = time.time) -> None:
        if database.is_sqlite:
            raise ValueError("the VPN's cluster records need PostgreSQL: on SQLite one host serves, its files suffice")
        self.database = database
        self.clock = clock
        self.lock_timeout_s = LOCK_TIMEOUT_S

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """A unit of work that writes VPN rows and nothing else: ``Database.write()`` without its bump of the
        calendar's generation (see the module's docstring). Committed at the end, rolled back on any exception."""
        with self.database.write_connection() as connection, Session(connection) as session:
            yield session
            session.flush()  # the connection's transaction is committed by write_connection, with these rows

    def version(self) -> str:
        """A short summary of the records that changes whenever a certificate is issued, replaced or revoked: one
        cheap statement, for a refresh to tell that nothing changed since it last wrote the files (every few
        seconds, in every process of every host)."""
        ((revoked, serials, issued),) = self.database.fetch_all(_VERSION)
        return f"{revoked}:{serials}:{issued or ''}"

    @staticmethod
    def _version(session: Session) -> str:
        """version() as ``session`` sees the records (its own writes not committed yet among them)."""
        revoked, serials, issued = tuple(session.execute(_VERSION).one())
        return f"{revoked}:{serials}:{issued or ''}"

    def cluster_ca(self) -> ClusterCa | None:
        """The cluster's CA, or None before the first host made one."""
        with self.database.read() as session:
            row = session.get(VpnCa, 1)
            return None if row is None else ClusterCa(row.ca_sha256, row.made_on)

    def record_ca(self, sha256: str, made_on: str) -> ClusterCa:
        """Record the cluster's CA, unless one is recorded already: returns the one recorded (another host's when it
        came first; the caller compares)."""
        try:
            with self._write() as session:
                row = session.get(VpnCa, 1)
                if row is None:
                    session.add(VpnCa(id=1, ca_sha256=sha256, made_on=made_on, created_s=int(self.clock())))
                    return ClusterCa(sha256, made_on)
                return ClusterCa(row.ca_sha256, row.made_on)
        except IntegrityError:  # another host recorded its CA at the same moment
            recorded = self.cluster_ca()
            assert recorded is not None, "the row whose insert collided is there"
            return recorded

    def replace(
        self,
        issued: IssuedCertificate,
        before_commit: Callable[[VpnState], None] | None = None,
        agent_number: int | None = None,
        agent_key_sha256: str = "",
    ) -> int | None:
        """Make ``issued`` the node's current certificate, revoking the previous one (whose serial is returned).
        ``before_commit(the records as they will be)`` runs before the commit (this host's files written from them):
        when it raises, nothing is recorded. With ``agent_number``, only while the node's agent is enrolled under
        this hostname, with that VPN number (the certificate's address) and with the key of SHA-256
        ``agent_key_sha256`` (the certificate's: NOT_FOUND otherwise): its row is locked until the commit, so a
        removal of the node, or its re-binding to a new key, either comes first (refused here) or waits and then
        revokes this certificate."""
        now = int(self.clock())
        try:
            with self._write() as session:
                # Bounded waits for the rows' locks: the caller holds its host's VPN file lock meanwhile, which a
                # registration holding the agent's row may be waiting for (it refreshes the files): that cycle ends
                # here, with BUSY, instead of holding both for ever.
                session.execute(text(f"SET LOCAL lock_timeout = {int(self.lock_timeout_s * 1000)}"))
                if agent_number is not None:
                    enrolled = select(Agent.node_id).where(
                        Agent.vpn_number == agent_number,
                        Agent.hostname == issued.hostname,
                        Agent.key_sha256 == agent_key_sha256,
                    )
                    if session.scalar(enrolled.with_for_update(read=True)) is None:
                        raise GeniError(
                            Reason.NOT_FOUND,
                            f"node {issued.hostname} is no longer enrolled with this key (removed, or re-bound to "
                            "another key): no VPN certificate is issued",
                        )
                row = session.get(VpnIssued, issued.hostname, with_for_update=True)
                previous = None
                if row is None:
                    session.add(
                        VpnIssued(
                            hostname=issued.hostname,
                            serial=str(issued.serial),
                            address=issued.address,
                            certificate=issued.certificate,
                            issued_s=now,
                        )
                    )
                else:
                    previous = int(row.serial)
                    _revoke(session, previous, row.hostname, now, row.address)
                    row.serial, row.address, row.certificate = str(issued.serial), issued.address, issued.certificate
                    row.issued_s = now
                if before_commit is not None:
                    session.flush()
                    before_commit(self._state(session, self._version(session)))
                return previous
        except IntegrityError as exc:  # the node's first certificate asked through two hosts at the same moment
            raise GeniError(
                Reason.BUSY, f"node {issued.hostname}: another VPN certificate was issued at the same moment; try again"
            ) from exc
        except TransientConflict as exc:  # the wait above ran out (or the database broke a deadlock)
            raise GeniError(
                Reason.BUSY, f"node {issued.hostname} is being registered or removed at this moment; try again"
            ) from exc

    def revoke_current(self, hostname: str, keep: Callable[[str], bool] = lambda _pem: False) -> int | None:
        """Revoke the node's current certificate and forget it, unless ``keep(its PEM)``; the serial revoked, or None
        (no certificate, or kept)."""
        with self._write() as session:
            row = session.get(VpnIssued, hostname, with_for_update=True)
            if row is None or keep(row.certificate):
                return None
            serial = int(row.serial)
            _revoke(session, serial, hostname, int(self.clock()), row.address)
            session.delete(row)
            return serial

    def revoke_serial(self, serial: int, hostname: str) -> None:
        """Revoke one certificate (the node's current one is forgotten if it is this one)."""
        for attempt in (1, 2):
            try:
                with self._write() as session:
                    address = session.scalar(select(VpnIssued.address).where(VpnIssued.serial == str(serial)))
                    _revoke(session, serial, hostname, int(self.clock()), address)
                    session.execute(delete(VpnIssued).where(VpnIssued.serial == str(serial)))
                return
            except IntegrityError:  # another host revoked it at the same moment: then it is revoked
                if attempt == 2:
                    raise

    def state(self) -> VpnState:
        """The revoked serials and the current certificates, and the records' version read before them (the rows are
        at least that new: a change committed in between is seen again by the next refresh, never missed)."""
        version = self.version()
        with self.database.read() as session:
            return self._state(session, version)

    @staticmethod
    def _state(session: Session, version: str) -> VpnState:
        revoked = frozenset(int(serial) for serial in session.scalars(select(VpnRevoked.serial)))
        columns = select(VpnIssued.hostname, VpnIssued.serial, VpnIssued.address, VpnIssued.certificate)
        rows = session.execute(columns.order_by(VpnIssued.hostname))  # plain rows: a third of the ORM's time
        issued = tuple(IssuedCertificate(name, int(serial), address, pem) for name, serial, address, pem in rows)
        return VpnState(revoked, issued, version)

    def record_local(self, revoked: set[int], issued: list[IssuedCertificate]) -> int:
        """Record what one host kept in its files only (before the cluster's records, or an operator's command run
        without the database): revocations the cluster does not know, and certificates of nodes the cluster has none
        for (unless revoked). Returns how many rows were added."""
        try:
            return self._record_local(revoked, issued)
        except IntegrityError:  # another host recorded the same rows at the same moment: the rest, once more
            return self._record_local(revoked, issued)

    def _record_local(self, revoked: set[int], issued: list[IssuedCertificate]) -> int:
        now = int(self.clock())
        added = 0
        with self._write() as session:
            known = set(session.scalars(select(VpnRevoked.serial)))
            for serial in sorted(revoked):
                if str(serial) not in known:
                    current = session.execute(
                        select(VpnIssued.hostname, VpnIssued.address).where(VpnIssued.serial == str(serial))
                    ).first()
                    hostname, address = (current[0], current[1]) if current is not None else ("", None)
                    _revoke(session, serial, hostname, now, address)
                    session.execute(delete(VpnIssued).where(VpnIssued.serial == str(serial)))
                    known.add(str(serial))
                    added += 1
            for certificate in issued:
                if str(certificate.serial) in known or session.get(VpnIssued, certificate.hostname) is not None:
                    continue
                session.add(
                    VpnIssued(
                        hostname=certificate.hostname,
                        serial=str(certificate.serial),
                        address=certificate.address,
                        certificate=certificate.certificate,
                        issued_s=now,
                    )
                )
                added += 1
        return added


def _revoke(session: Session, serial: int, hostname: str, now_s: int, address: str | None) -> None:
    """Record the revocation, with the VPN number of the certificate's ``address`` (None: not known): that number's
    quarantine (calendar/agents.py)."""
    if session.get(VpnRevoked, str(serial)) is None:
        number = vpn_number_of(address) if address is not None else None
        session.add(VpnRevoked(serial=str(serial), hostname=hostname, revoked_s=now_s, vpn_number=number))


def record_file_revocation(database: Database, serial: int, hostname: str, number: int | None, now_s: int) -> None:
    """The file-only VPN (SQLite's one host, no VpnRecords): a removed node's revocation, which its files hold, recorded
    in the calendar's database too, for its VPN ``number``'s quarantine (calendar/agents.py) only: OpenVPN reads the
    files, and nothing writes them from these rows. Its own unit of work (no bump of the calendar's generation)."""
    with database.write_connection() as connection, Session(connection) as session:
        if session.get(VpnRevoked, str(serial)) is None:
            session.add(VpnRevoked(serial=str(serial), hostname=hostname, revoked_s=now_s, vpn_number=number))
        session.flush()
