"""The OMF backend's breakers (sfa_omf/testbed/omf/frcp.py, with sfa_omf/testbed/gate.py's CircuitBreaker), end to
end: the AM API over real TLS, FRCP over the real RabbitMQ, the stand-ins for the Ruby controllers.

A broker that takes connections and never answers held every call for the connection's time-out, and a controller
that never answers for the request's (cm_factory: ``boot_timeout_s``), each call again. Now the first call fails
after its time-out, UNAVAILABLE (11) for the broker, and the calls after it are refused UNAVAILABLE at once: the
broker is not even connected to (``StandInHungBroker`` counts the connections), the silent controller is sent
nothing (the stand-in records every request it gets), a slot pass postpones its work, nothing is written. Once the
cool-down is over, and the peer back, a call goes through and closes the breaker. A silent cm_factory does not stop
user_factory (Provision's accounts, the end's keys), and Renew, which needs no testbed here, is never refused."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pika
import pytest
from sqlalchemy import MetaData, select

from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.errors import GeniCode
from sfa_omf.testbed.gate import CircuitBreaker, GatedBackend
from sfa_omf.testbed.omf.backend import OmfTestbed
from sfa_omf.testbed.omf.frcp import FrcpCircuitOpen, FrcpClient, FrcpUnavailable
from sfa_omf.testbed.registry import load_backend
from sfa_omf.times import format_time
from tests.sshkeys import ssh_key
from tests.testbed.omf.omf_lab import ANN, SLICE, Lab, Running, rspec, serve, slot_start, users
from tests.testbed.omf.test_slots import pass_at, provisioned

COOLDOWN_S = 15


class StandInHungBroker:
    """Stands in for a RabbitMQ that hangs: a TCP listener on 127.0.0.1 that, once ``hang()`` is called, accepts
    every connection and never answers (the shared RabbitMQ of the tests must not be made to hang). Before that, and
    after ``answer_again()``, it forwards each connection byte for byte to the real RabbitMQ: the broker is back, at
    the same address. ``accepted`` counts the connections it took, so a test can tell whether the broker was asked."""

    def __init__(self, real_host: str, real_port: int) -> None:
        self._real = (real_host, real_port)
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._accepted = 0
        self._hanging = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def accepted(self) -> int:
        with self._lock:
            return self._accepted

    def hang(self) -> None:
        """From now on, hold each new connection without a word."""
        with self._lock:
            self._hanging = True

    def answer_again(self) -> None:
        """From now on, forward each new connection to the real RabbitMQ."""
        with self._lock:
            self._hanging = False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            held, self._sockets = self._sockets, []
        for connection in held:
            with contextlib.suppress(OSError):
                connection.close()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:  # closed
                return
            with self._lock:
                self._accepted += 1
                self._sockets.append(connection)
                hanging = self._hanging
            if not hanging:
                threading.Thread(target=self._forward, args=(connection,), daemon=True).start()

    def _forward(self, connection: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self._real, timeout=30)
        except OSError:
            connection.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._sockets.append(upstream)

        def pipe(source: socket.socket, sink: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := source.recv(65536):
                    sink.sendall(data)
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

        threading.Thread(target=pipe, args=(upstream, connection), daemon=True).start()
        pipe(connection, upstream)


@pytest.fixture
def hung_broker(rabbitmq_url: str) -> Iterator[StandInHungBroker]:
    real = pika.URLParameters(rabbitmq_url)
    stand_in = StandInHungBroker(real.host, real.port)
    yield stand_in
    stand_in.close()


def through(rabbitmq_url: str, stand_in: StandInHungBroker) -> str:
    """The broker's URL (its user, password and vhost) with the stand-in's address."""
    real = pika.URLParameters(rabbitmq_url)
    return rabbitmq_url.replace(f"{real.host}:{real.port}", f"127.0.0.1:{stand_in.port}")


def calendar_rows(database: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, but the counter of the calendar's changes (a Provision holds its allocations and
    ends the hold when it fails: the rows are as they were, the counter has moved on)."""
    metadata = MetaData()
    metadata.reflect(database.engine)
    with database.engine.connect() as connection:
        return {
            name: sorted((tuple(row) for row in connection.execute(select(table))), key=repr)
            for name, table in metadata.tables.items()
            if name != "calendar_generation"
        }


class ManualClock:
    """Monotonic seconds the test moves on: a cool-down ends when the test says, not after a sleep."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def breakers_on(running: Running, clock: ManualClock) -> FrcpClient:
    """The aggregate's FRCP client made again as make_omf_backend makes it, but its breakers on ``clock`` (with a
    cool-down of COOLDOWN_S), for its calls and its slot passes alike."""
    backend = running.backend
    assert backend.user_factory is not None and backend.slots is not None and backend.slots.controllers is not None
    made = backend.user_factory.client
    client = FrcpClient(
        made.url,
        signer=made.signer,
        checker=made.checker,
        topic=made.topic,
        timeout_s=made.timeout_s,
        breakers=functools.partial(CircuitBreaker, cooldown_s=COOLDOWN_S, clock=clock),
    )
    backend.user_factory.client = client
    backend.slots.controllers.client = client
    return client


def breaker(client: FrcpClient, peer: str = "") -> CircuitBreaker:
    """The client's breaker of ``peer`` (a controller's topic; "" the broker)."""
    found = client.breaker(peer)
    assert found is not None
    return found


def update_users(running: Running, lab: Lab, key: str) -> dict[str, Any]:
    answer: dict[str, Any] = running.am.PerformOperationalAction(
        [SLICE], [lab.slice_cred], "geni_update_users", users(ssh_key(key))
    )
    return answer


def power(running: Running, lab: Lab, action: str) -> dict[str, Any]:
    answer: dict[str, Any] = running.am.PerformOperationalAction([SLICE], [lab.slice_cred], action, {})
    return answer


def test_a_hung_broker_is_not_connected_to_again_until_its_cool_down_then_a_call_goes_through(
    running_reactor: Any, lab: Lab, tmp_path: Path, rabbitmq_url: str, hung_broker: StandInHungBroker
) -> None:
    url = through(rabbitmq_url, hung_broker)
    for running in serve(running_reactor, lab, tmp_path, rabbitmq_url, frcp_amqp_url=url):
        clock = ManualClock()
        client = breakers_on(running, clock)
        lease = provisioned(running, lab, {"node1": ""}, ssh_key("ann@laptop"))
        login = running.aggregate.accounts.login_for(ANN, SLICE)
        keys = running.root / "home" / login / ".ssh" / "authorized_keys"
        assert running.am.Allocate(SLICE, [lab.slice_cred], rspec({"node2": ""}), {})["code"]["geni_code"] == 0
        hung_broker.hang()
        before = calendar_rows(running.aggregate.database)
        asked = hung_broker.accepted

        first = update_users(running, lab, "ann@desk")  # the broker hangs: its time-out, as before

        assert first["code"]["geni_code"] == GeniCode.UNAVAILABLE, first["output"]
        assert "did not complete the AMQP handshake" in first["output"]
        assert hung_broker.accepted == asked + 1

        again = update_users(running, lab, "ann@desk")  # during the cool-down: at once, not even connected to

        assert again["code"]["geni_code"] == GeniCode.UNAVAILABLE, again["output"]
        assert f"the AMQP broker at amqp://127.0.0.1:{hung_broker.port}/" in again["output"]
        assert " failed at " in again["output"] and "it is tried again at " in again["output"]
        provision = running.am.Provision([SLICE], [lab.slice_cred], users(ssh_key("ann@laptop")))
        assert provision["code"]["geni_code"] == GeniCode.UNAVAILABLE, provision["output"]
        assert hung_broker.accepted == asked + 1
        assert calendar_rows(running.aggregate.database) == before  # the failed calls wrote nothing
        assert keys.read_text() == f"{ssh_key('ann@laptop')}\n"
        # The slot's start waits for the next pass, without a connection either.
        assert pass_at(running, slot_start()).postponed == [lease]
        assert hung_broker.accepted == asked + 1
        # Renew talks to no testbed here: it is not refused.
        renewed = running.am.Renew([SLICE], [lab.slice_cred], format_time(slot_start() + timedelta(hours=2)), {})
        assert renewed["code"]["geni_code"] == 0, renewed["output"]

        hung_broker.answer_again()
        clock.advance(COOLDOWN_S + 1)  # the cool-down is over: the next call is the probe
        back = update_users(running, lab, "ann@desk")

        assert back["code"]["geni_code"] == 0, back["output"]
        assert keys.read_text() == f"{ssh_key('ann@desk')}\n"
        assert not breaker(client).is_open
        assert pass_at(running, slot_start()).started == [lease]
        assert running.nodes.power == {"node1": "on"}


def test_a_silent_cm_factory_is_sent_nothing_until_its_cool_down_and_user_factory_is_still_asked(
    running_reactor: Any, lab: Lab, tmp_path: Path, rabbitmq_url: str
) -> None:
    for running in serve(running_reactor, lab, tmp_path, rabbitmq_url, frcp_boot_timeout_s=1):
        clock = ManualClock()
        client = breakers_on(running, clock)
        lease = provisioned(running, lab, {"node1": ""}, ssh_key("ann@laptop"))
        login = running.aggregate.accounts.login_for(ANN, SLICE)
        keys = running.root / "home" / login / ".ssh" / "authorized_keys"
        start = slot_start()
        assert pass_at(running, start).started == [lease]
        running.nodes.silent.add("node1")
        before = calendar_rows(running.aggregate.database)
        asked = len(running.nodes.steps)

        stop = power(running, lab, "geni_stop")  # cm_factory says nothing: its time-out, as before

        assert stop["code"]["geni_code"] == GeniCode.TIMEDOUT, stop["output"]
        assert "no answer about node1 to switch off" in stop["output"]
        assert len(running.nodes.steps) == asked + 1

        refused = power(running, lab, "geni_restart")  # during the cool-down: cm_factory is sent nothing

        assert refused["code"]["geni_code"] == GeniCode.UNAVAILABLE, refused["output"]
        cm = running.settings.frcp_cm_factory
        assert f"the controller {cm} (on amqp://" in refused["output"] and " failed at " in refused["output"]
        assert "no answer about node1 to switch off" in refused["output"]  # why
        assert len(running.nodes.steps) == asked + 1
        assert calendar_rows(running.aggregate.database) == before

        # Another controller is still asked: user_factory sets the keys.
        assert update_users(running, lab, "ann@desk")["code"]["geni_code"] == 0
        assert keys.read_text() == f"{ssh_key('ann@desk')}\n"
        # The end of the slot: cm_factory is not asked (the power-off waits), the keys are withdrawn now.
        end = start + timedelta(hours=1, seconds=1)
        assert pass_at(running, end).postponed == [lease]
        assert len(running.nodes.steps) == asked + 1
        assert keys.read_text() == ""

        running.nodes.silent.clear()
        clock.advance(COOLDOWN_S + 1)
        assert pass_at(running, end + timedelta(minutes=10)).ended == [lease]
        assert running.nodes.power == {"node1": "off"}
        assert not breaker(client, cm).is_open


def test_the_loaded_omf_backend_has_breakers_and_its_gate_none(lab: Lab, tmp_path: Path, rabbitmq_url: str) -> None:
    """The broker's and the controllers' breakers are the FRCP client's, with ``backend_cooldown_s``; the gate gets
    none (Renew and Delete do not talk to the testbed on OMF, and a hung cm_factory must not refuse user_factory's
    calls)."""
    database = Database(sqlite_url(str(tmp_path / "load.sqlite")))
    database.upgrade()
    settings = dataclasses.replace(
        lab.settings, aggregate_type="omf", frcp_amqp_url=rabbitmq_url, backend_cooldown_s=20, threads=5
    )
    backend = load_backend("omf", settings, database)
    assert isinstance(backend, GatedBackend) and isinstance(backend, OmfTestbed)
    assert backend.gate.breaker is None and backend.gate.slots == 3
    assert backend.user_factory is not None and backend.slots is not None and backend.slots.controllers is not None
    client = backend.user_factory.client
    assert backend.slots.controllers.client is client  # one client: the calls' and the slot passes' breakers
    broker, cm = client.breaker(""), client.breaker(settings.frcp_cm_factory)
    assert broker is not None and cm is not None and broker is not cm
    assert broker.cooldown_s == cm.cooldown_s == 20
    assert client.breaker(f"amqp://host/frcp.{settings.frcp_cm_factory}") is cm  # an address names its topic


def test_a_connection_that_times_out_opens_the_brokers_breaker_a_refused_one_does_not() -> None:
    """A broker host that is gone drops the connection's SYNs: the connection times out, and that wait is what the
    breaker saves the next calls. A port nothing listens on refuses at once: no call is held, so the broker is
    tried again at the next call (and is used as soon as it is back)."""
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
    breakers = functools.partial(CircuitBreaker, clock=ManualClock())  # (a cool-down that ends when the test says)
    refusing = FrcpClient(f"amqp://u:p@127.0.0.1:{closed_port}/%2F", timeout_s=1, breakers=breakers)
    for _ in range(2):
        with pytest.raises(FrcpUnavailable) as refused, refusing.session():
            pass
        assert "cannot be reached" in str(refused.value) and " failed at " not in str(refused.value)
    assert not breaker(refusing).is_open

    full = socket.create_server(("127.0.0.1", 0), backlog=0)  # never accepts: once its queue is full, SYNs drop
    fillers = [socket.socket() for _ in range(4)]
    try:
        for filler in fillers:
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(full.getsockname())
        timing_out = FrcpClient(f"amqp://u:p@127.0.0.1:{full.getsockname()[1]}/%2F", timeout_s=1, breakers=breakers)
        with pytest.raises(FrcpUnavailable) as first, timing_out.session():
            pass
        assert "timed out" in str(first.value)
        assert breaker(timing_out).is_open
        with pytest.raises(FrcpCircuitOpen), timing_out.session():
            pass
    finally:
        for filler in fillers:
            filler.close()
        full.close()
