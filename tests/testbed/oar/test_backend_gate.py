"""The gate and the breaker between the aggregate and its testbed (sfa_omf/testbed/gate.py), on the OAR backend: with
OAR's API hung, more Provisions than the gate's slots get BUSY at once and write nothing; after a time-out, calls are
refused at once without OAR being asked (no connection is even opened) until the cool-down is over, which doubles
while OAR keeps failing; once it answers again, calls go through to the real OAR; and through a real server, a
GetVersion answers while Provisions hang on OAR.

OAR hung is ``StandInHungOarApi``; "OAR back" is the real OAR 2.5.9 (scripts/oar.sh) it forwards to."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, select
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import LeaseRecord, NodeSpec, SliverRecord
from sfa_omf.config import Settings, read_config
from sfa_omf.errors import GeniCode, GeniError
from sfa_omf.registry.accounts import Accounts
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.server.app import build_aggregate, start_aggregate
from sfa_omf.testbed.embedded import EmbeddedTestbed
from sfa_omf.testbed.gate import SLOT_WAIT_S, BackendGate, CircuitBreaker, GatedBackend
from sfa_omf.testbed.oar.backend import OarTestbed
from sfa_omf.testbed.oar.client import OarClient
from sfa_omf.testbed.registry import load_backend
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.verifier import CredentialVerifier
from tests.conftest import DemoPki
from tests.tls_harness import proxy

HOUR = timedelta(hours=1)
NODES = ["node6", "node7", "node8"]  # nodes of the real OAR (scripts/oar.sh); each test books at a random time


class StandInHungOarApi:
    """Stands in for OAR's REST API hung: a TCP listener on 127.0.0.1 that accepts every connection and never answers
    (an apache whose CGI workers are all stuck, a host that froze behind its kernel's listen queue). The real OAR
    cannot be made to hang on demand: stopping its API refuses connections at once, another failure. It counts the
    connections it accepted (``accepted``), so a test can tell whether OAR was asked at all. ``release()`` closes the
    held connections (the clients see the connection broken off); after ``answer_again(url)`` each new connection
    is forwarded byte for byte to the real OAR API at ``url``: OAR is back, at the same address."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._accepted = 0
        self._held: list[socket.socket] = []
        self._forward_to: tuple[str, int] | None = None
        self._released = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str = "/oarapi") -> str:
        """The URL the aggregate is given as OAR's API."""
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def accepted(self) -> int:
        """The connections accepted so far."""
        with self._lock:
            return self._accepted

    def release(self) -> None:
        """End every held request, and every later one: its connection is closed without an answer."""
        with self._lock:
            self._released = True
            held, self._held = self._held, []
        for connection in held:
            with contextlib.suppress(OSError):
                connection.close()

    def answer_again(self, real_url: str) -> None:
        """From now on, forward new connections to the real OAR API at ``real_url``."""
        target = urllib.parse.urlsplit(real_url)
        with self._lock:
            self._released = False
            self._forward_to = (target.hostname or "127.0.0.1", target.port or 80)

    def close(self) -> None:
        """Stop listening and release what is held."""
        with contextlib.suppress(OSError):
            self._listener.close()
        self.release()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:  # closed
                return
            with self._lock:
                self._accepted += 1
                forward_to = self._forward_to
                if forward_to is None and not self._released:
                    self._held.append(connection)
            if forward_to is None and self._released:
                connection.close()
            if forward_to is not None:
                threading.Thread(target=self._forward, args=(connection, forward_to), daemon=True).start()

    @staticmethod
    def _forward(connection: socket.socket, target: tuple[str, int]) -> None:
        upstream = socket.create_connection(target, timeout=120)

        def pipe(source: socket.socket, sink: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := source.recv(65536):
                    sink.sendall(data)
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pipe, args=(upstream, connection), daemon=True)
        back.start()
        pipe(connection, upstream)
        back.join(180)
        connection.close()
        upstream.close()


class ManualClock:
    """Monotonic seconds the test moves on (the breaker's cool-down without sleeping through it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclasses.dataclass
class GatedSite:
    aggregate: Aggregate
    backend: GatedBackend
    inner: OarTestbed
    pki: DemoPki
    start: datetime
    slivers: list[str] = dataclasses.field(default_factory=list)

    def allocate(self, node: str) -> str:
        """Book ``node`` for the site's slot (a lease of its own); the new sliver's URN."""
        alice = self.pki.users["alice"]
        rspec = (
            '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3">'
            f'<node client_id="{node}" component_id="{node_urn(node)}" exclusive="true"/></rspec>'
        )
        window = {"geni_start_time": format_time(self.start), "geni_end_time": format_time(self.start + HOUR)}
        answer = self.aggregate.allocate(alice.chain, self.pki.slice_urn, [alice.slice_cred], rspec, window)
        (new,) = [s["geni_sliver_urn"] for s in answer["geni_slivers"] if s["geni_sliver_urn"] not in self.slivers]
        self.slivers.append(new)
        return str(new)

    def provision(self, sliver_urn: str) -> dict[str, Any]:
        alice = self.pki.users["alice"]
        return self.aggregate.provision(alice.chain, [sliver_urn], [alice.slice_cred], {})

    def refused(self, sliver_urn: str) -> GeniError:
        """The refusal Provision of ``sliver_urn`` gets (the test fails if it succeeds)."""
        with pytest.raises(GeniError) as refusal:
            self.provision(sliver_urn)
        return refusal.value


def node_urn(name: str) -> str:
    return f"urn:publicid:IDN+testbed+node+{name}"


def calendar_rows(database: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table: what "nothing was written" compares. But ``calendar_generation``, the counter of
    the calendar's changes that readers' caches follow: Provision holds its allocations before it asks the testbed
    and ends the hold when it fails (sfa_omf/am/aggregate.py), which leaves the rows as they were and counts on."""
    metadata = MetaData()
    metadata.reflect(database.engine)
    with database.engine.connect() as connection:
        return {
            name: sorted((tuple(row) for row in connection.execute(select(table))), key=repr)
            for name, table in metadata.tables.items()
            if name != "calendar_generation"
        }


def wait_until(condition: Callable[[], bool], what: str, within_s: float = 60) -> None:
    """Poll (bounded) until ``condition``; fail the test otherwise (a bound on a hang, not a timing check)."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still not {what} after {within_s} s")
        time.sleep(0.05)


@contextlib.contextmanager
def gated_site(
    tmp_path: Path,
    pki: DemoPki,
    api_url: str,
    *,
    slots: int,
    timeout_s: float,
    breaker: CircuitBreaker | None = None,
) -> Iterator[GatedSite]:
    """An aggregate on the OAR backend at ``api_url`` behind a gate of ``slots`` (and ``breaker``), alice mapped to
    the Unix user alice, at a random slot 2 to 20 days ahead. Whatever a lease holds in OAR is released after."""
    database = Database(sqlite_url(str(tmp_path / "gated.sqlite")))
    database.upgrade()
    inner = OarTestbed(OarClient(api_url, timeout_s=timeout_s, breaker=breaker), database, "testbed", cache_s=1)
    backend = GatedBackend(inner, BackendGate(slots, inner.testbed_words, breaker=breaker))
    accounts = Accounts(database)
    accounts.pin(pki.users["alice"].chain[0].urn or "", "alice")
    aggregate = Aggregate(
        AggregateSettings(authority_hrn="testbed"),
        database,
        CredentialVerifier(pki.roots),
        Policy(max_advance_s=40 * 86400, min_duration_s=60),
        backend=backend,  # type: ignore[arg-type]
        accounts=accounts,
    )
    for name in NODES:
        aggregate.inventory.add_node(NodeSpec(node_urn(name), name))
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = now + timedelta(days=2, hours=random.randrange(18 * 24))
    site = GatedSite(aggregate, backend, inner, pki, start)
    try:
        yield site
    finally:
        for lease in aggregate.bookings.leases():  # leave nothing in OAR
            with contextlib.suppress(GeniError):
                inner.release(lease)


@pytest.fixture
def hung_api() -> Iterator[StandInHungOarApi]:
    stand_in = StandInHungOarApi()
    yield stand_in
    stand_in.close()


def test_more_provisions_than_slots_the_others_are_busy_and_write_nothing(
    tmp_path: Path,
    pki: DemoPki,
    oar_users: tuple[str, ...],
    hung_api: StandInHungOarApi,
) -> None:
    with gated_site(tmp_path, pki, hung_api.url(), slots=2, timeout_s=60) as site:
        slivers = [site.allocate(node) for node in NODES]
        answers: dict[str, Any] = {}

        def provision(urn: str) -> None:
            try:
                answers[urn] = site.provision(urn)
            except GeniError as exc:
                answers[urn] = exc

        holders = [threading.Thread(target=provision, args=(urn,)) for urn in slivers[:2]]
        for holder in holders:
            holder.start()
        # Both are inside the gate, each waiting for OAR's answer on its own connection: the calendar is still.
        wait_until(lambda: hung_api.accepted == 2 and site.backend.gate.in_use == 2, "two Provisions waiting on OAR")
        before = calendar_rows(site.aggregate.database)

        busy = site.refused(slivers[2])

        assert busy.code == GeniCode.BUSY
        assert busy.message == (
            f"2 calls are waiting on the testbed (OAR at {hung_api.url()}); nothing was changed, try again in a minute"
        )
        assert calendar_rows(site.aggregate.database) == before  # nothing written, not even a hold
        assert hung_api.accepted == 2  # OAR was not asked
        hung_api.release()
        for holder in holders:
            holder.join(120)
        assert all(isinstance(answers[urn], GeniError) for urn in slivers[:2])
        assert {lease.state for lease in site.aggregate.bookings.leases()} == {"allocated"}


def test_after_a_time_out_oar_is_not_asked_until_the_cool_down_is_over_then_calls_go_through(
    tmp_path: Path,
    pki: DemoPki,
    oar_url: str,
    oar_users: tuple[str, ...],
    hung_api: StandInHungOarApi,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(f"OAR at {hung_api.url()}", cooldown_s=15, clock=clock)
    with (
        caplog.at_level(logging.WARNING, logger="sfa_omf.testbed.gate"),
        gated_site(tmp_path, pki, hung_api.url(), slots=2, timeout_s=0.5, breaker=breaker) as site,
    ):
        first, second, third = (site.allocate(node) for node in NODES)
        assert site.refused(first).code == GeniCode.TIMEDOUT  # OAR hung: the time-out, as before
        asked = hung_api.accepted
        before = calendar_rows(site.aggregate.database)

        refused = site.refused(second)  # during the cool-down: at once, without asking OAR

        assert refused.code == GeniCode.UNAVAILABLE
        assert f"OAR at {hung_api.url()} failed at " in refused.message
        assert "within 0.5 s" in refused.message  # why: the time-out's own words
        assert "it is tried again at " in refused.message and "Nothing was changed" in refused.message
        assert calendar_rows(site.aggregate.database) == before
        # The background tasks do not ask it either.
        for task in site.backend.background_tasks():
            with contextlib.suppress(Exception):
                task.run()
        assert hung_api.accepted == asked

        clock.advance(16)  # the cool-down is over: one probe, which times out again
        assert site.refused(second).code == GeniCode.TIMEDOUT
        assert hung_api.accepted == asked + 1
        again = site.refused(third)
        assert again.code == GeniCode.UNAVAILABLE and "rested 30 s" in again.message  # the cool-down doubled
        assert hung_api.accepted == asked + 1

        hung_api.answer_again(oar_url)  # OAR is back, and the cool-down over: calls go through
        site.inner.client.timeout_s = 60  # (the real OAR takes a second or more to make a reservation)
        clock.advance(31)
        site.provision(second)
        site.provision(third)
        assert {lease.state for lease in site.aggregate.bookings.leases() if lease.state != "allocated"} == {
            "provisioned"
        }
        assert not breaker.is_open
    told = [record.getMessage() for record in caplog.records if record.name == "sfa_omf.testbed.gate"]
    assert len(told) == 2, told  # opened once, closed once
    assert "failed (" in told[0] and "answers again" in told[1]


def test_the_loaded_oar_backend_is_gated_with_its_clients_breaker(tmp_path: Path) -> None:
    database = Database(sqlite_url(str(tmp_path / "load.sqlite")))
    database.upgrade()
    settings = Settings(
        interface_hrn="testbed",
        data_dir=str(tmp_path),
        aggregate_type="oar",
        oar_api_url="http://127.0.0.1:6668/oarapi",
        threads=5,
        backend_cooldown_s=20,
    )
    backend = load_backend("oar", settings, database)
    assert isinstance(backend, GatedBackend) and isinstance(backend, OarTestbed)  # the server's OAR checks hold
    assert backend.gate.slots == 3  # threads - 2: two threads always free for everybody else
    assert backend.gate.breaker is backend.client.breaker is not None
    assert backend.gate.breaker.cooldown_s == 20
    chosen = load_backend("oar", dataclasses.replace(settings, backend_concurrency=7), database)
    assert isinstance(chosen, GatedBackend) and chosen.gate.slots == 7
    assert type(load_backend("embedded", settings, database)) is EmbeddedTestbed  # nothing there can hang


def test_getversion_answers_while_provisions_hang_on_oar(
    running_reactor: Any,
    tmp_path: Path,
    oar_users: tuple[str, ...],
    hung_api: StandInHungOarApi,
) -> None:
    report = init_directory(str(tmp_path / "lab"), "lab", ("alice",))
    settings = dataclasses.replace(
        read_config(str(tmp_path / "lab" / "sfa-omf.conf")),
        aggregate_type="oar",
        oar_api_url=hung_api.url(),
        oar_timeout_s=120,  # OAR hangs until the stand-in lets go
        threads=4,  # so 2 backend slots
    )
    sfi = Path(report.sfi_dirs["alice"])
    chain, key = str(sfi / "lab.alice.user.gid"), str(sfi / "lab.alice.pkey")
    creds = [(sfi / "lab.alice-lab.demo.slice.cred").read_text()]
    slice_urn = "urn:publicid:IDN+lab+slice+demo"
    aggregate = build_aggregate(settings)
    aggregate.accounts.pin("urn:publicid:IDN+lab+user+alice", "alice")  # a Unix user OAR would accept
    names = [f"n{number}" for number in range(1, 5)]
    for name in names:
        aggregate.inventory.add_node(NodeSpec(f"urn:publicid:IDN+lab+node+{name}", name))
    gate = aggregate.backend.gate  # type: ignore[attr-defined]
    server = blockingCallFromThread(running_reactor, start_aggregate, settings, aggregate, 0)
    codes: list[int] = []
    callers: list[threading.Thread] = []
    try:
        url = f"https://127.0.0.1:{server.port_number}/"
        start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
        slivers: list[str] = []
        for name in names:
            rspec = (
                '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3">'
                f'<node client_id="{name}" component_id="urn:publicid:IDN+lab+node+{name}" exclusive="true"/></rspec>'
            )
            window = {"geni_start_time": format_time(start), "geni_end_time": format_time(start + HOUR)}
            answer = proxy(url, chain, key).Allocate(slice_urn, creds, rspec, window)
            assert answer["code"]["geni_code"] == 0, answer
            slivers += [
                s["geni_sliver_urn"] for s in answer["value"]["geni_slivers"] if s["geni_sliver_urn"] not in slivers
            ]

        def provision(urn: str) -> None:
            codes.append(proxy(url, chain, key).Provision([urn], creds, {})["code"]["geni_code"])

        callers += [threading.Thread(target=provision, args=(urn,), daemon=True) for urn in slivers]
        for caller in callers:
            caller.start()
        wait_until(lambda: gate.in_use == 2, "two Provisions in OAR")
        version: list[Any] = []
        asking = threading.Thread(target=lambda: version.append(proxy(url, chain, key).GetVersion()), daemon=True)
        asking.start()
        asking.join(10)  # generous: it answers, not how fast
        assert version and version[0]["code"]["geni_code"] == 0, "GetVersion got no answer while OAR hangs"
        # The two Provisions beyond the slots were refused BUSY after the gate's short wait.
        wait_until(lambda: len(codes) == 2, "the Provisions beyond the slots answered", within_s=10 * SLOT_WAIT_S)
        assert codes == [GeniCode.BUSY, GeniCode.BUSY]
    finally:
        hung_api.release()
        for caller in callers:
            caller.join(60)
        blockingCallFromThread(running_reactor, server.stop)
    assert len(codes) == 4


def test_a_full_gate_makes_status_show_the_calendar_at_once_not_wait_per_sliver() -> None:
    """Status and Describe ask the backend's health once per provisioned sliver: a wait for a slot at each (as a
    Provision waits) added up over a slice's slivers while the gate was full. With every slot held and a gate that
    would wait an hour, health answers from the calendar without waiting (a hang here is the defect: the join's
    deadline is only there so the suite does not hang with it)."""
    gate = BackendGate(1, "a testbed", wait_s=3600)
    backend = GatedBackend(EmbeddedTestbed(), gate)
    now = datetime(2026, 12, 4, 12, tzinfo=UTC)
    start, end = now - timedelta(hours=1), now + timedelta(hours=1)
    sliver = SliverRecord(
        "urn:publicid:IDN+tb+sliver+l1-n1", "urn:publicid:IDN+tb+node+n1", "l1", start, end,
        "geni_provisioned", "geni_ready", end,
    )  # fmt: skip
    lease = LeaseRecord("l1", "urn:publicid:IDN+tb+slice+s", "urn:publicid:IDN+tb+user+u", start, end,
                        "provisioned", (sliver,))  # fmt: skip
    answers: list[Any] = []
    with gate.slot():  # the one slot, held by a call stuck on the testbed
        asking = threading.Thread(target=lambda: answers.extend(backend.health(sliver, lease, now) for _ in range(20)))
        asking.start()
        asking.join(timeout=60)
        assert not asking.is_alive(), "health waited for a slot"
    assert len(answers) == 20
    assert all(answer.operational_state == "geni_ready" for answer in answers)
    assert all("state from the calendar" in answer.error for answer in answers)
    assert gate.in_use == 0
