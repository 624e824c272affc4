"""``[sfa_omf] calls_in_reactor`` on a real ``sfa-omf serve`` and PostgreSQL, over real TLS XML-RPC: Allocate,
Delete and Status are answered in the reactor thread (its log says so), 32 clients racing for one node still get one
winner per round, a provisioned lease's Delete (the testbed's release, sent to a thread) works, Status of its
provisioned sliver (the testbed's word on it, asked in a thread) sees the calendar as it changes, and the server
stops cleanly. Off, or on SQLite, the calls stay on the call threads."""

from __future__ import annotations

import http.client
import threading
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.config import Settings
from sfa_omf.errors import GeniCode
from sfa_omf.server.app import _reactor_calls
from tests.cluster.harness import Lab, Serve, make_lab, request, window
from tests.cluster.test_processes import code, race, sliver_view, the_one_winner
from tests.postgres import empty_postgres
from tests.tls_harness import client_context

CLIENTS = 32
ROUNDS = 3
ON = {"SFA_OMF_CALLS_IN_REACTOR": "yes"}
IN_REACTOR = "Allocate, Delete and Status answered in the reactor thread"


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return make_lab(tmp_path, empty_postgres(), CLIENTS)


@pytest.mark.parametrize("setting", ["default", "no"])
def test_32_clients_racing_one_winner_per_round(lab: Lab, tmp_path: Path, servers: list[Serve], setting: str) -> None:
    """On by default on PostgreSQL; with ``no``, the same on the call threads."""
    environment = {} if setting == "default" else {"SFA_OMF_CALLS_IN_REACTOR": setting}
    server = Serve(lab, tmp_path, "reactor", "--workers", "1", **environment)
    servers.append(server)
    server.wait_ready()
    server.wait_for_line("serving AM API v3")  # (its start's lines are all written by then)
    assert any(IN_REACTOR in line for line in server.lines) == (setting == "default"), server.lines
    clients = [server.client(lab) for _ in range(CLIENTS)]
    for client in clients:
        assert code(client.GetVersion()) == 0  # connected before the race
    for round_number in range(ROUNDS):
        slot = window(days_ahead=21, hour=2 + round_number)
        winner = the_one_winner(race(lab, clients, slot), round_number)
        urn, credential = lab.slices[winner]
        (sliver,) = sliver_view(server.client(lab).Status([urn], [credential], {}))
        assert sliver[1:] == ("geni_allocated", *slot)
        assert code(clients[winner].Delete([urn], [credential], {})) == 0
        assert server.client(lab).Status([urn], [credential], {})["value"]["geni_slivers"] == []
    assert server.stop() == 0
    assert not any("Traceback" in line or "internal error" in line for line in server.lines), server.lines


def test_a_provisioned_lease_is_deleted_in_the_reactor_while_status_is_answered(
    lab: Lab, tmp_path: Path, servers: list[Serve]
) -> None:
    """Delete of a provisioned lease releases it on the testbed (in a thread: waits.blocking); Status calls, in the
    reactor too and made all along, never see anything but the slice's states."""
    server = Serve(lab, tmp_path, "reactor", "--workers", "2", **ON)  # (each worker installs the asyncio reactor)
    servers.append(server)
    server.wait_ready()
    deadline = time.monotonic() + 60
    while sum(IN_REACTOR in line for line in server.lines) < 2:
        assert time.monotonic() < deadline, server.lines
        time.sleep(0.1)
    urn, credential = lab.slices[0]
    client = server.client(lab)
    stop = threading.Event()
    seen: list[Any] = []

    def watch() -> None:
        watcher = server.client(lab)
        while not stop.is_set():
            answer = watcher.Status([urn], [credential], {})
            seen.append(
                [s["geni_allocation_status"] for s in answer["value"]["geni_slivers"]]
                if code(answer) == 0
                else code(answer)
            )

    watching = threading.Thread(target=watch)
    watching.start()
    try:
        for round_number in range(2):
            first, second = (
                window(days_ahead=22, hour=4 + 2 * round_number),
                window(days_ahead=22, hour=5 + 2 * round_number),
            )
            assert code(client.Allocate(urn, [credential], request(first), {})) == 0
            provisioned = client.Provision([urn], [credential], {})
            assert code(provisioned) == 0, provisioned
            assert [s["geni_allocation_status"] for s in provisioned["value"]["geni_slivers"]] == ["geni_provisioned"]
            # A second Allocate in the slice answers its provisioned sliver too, with the testbed's word on it.
            allocated = client.Allocate(urn, [credential], request(second), {})
            assert code(allocated) == 0, allocated
            states = sorted(
                (s["geni_allocation_status"], s.get("geni_operational_status"))
                for s in allocated["value"]["geni_slivers"]
            )
            assert states[0][0] == "geni_allocated" and len(states) in (1, 2), states
            deleted = client.Delete([urn], [credential], {})
            assert code(deleted) == 0, deleted
            assert [s["geni_allocation_status"] for s in deleted["value"]] == ["geni_unallocated"] * 2
            assert client.Status([urn], [credential], {})["value"]["geni_slivers"] == []
    finally:
        stop.set()
        watching.join()
    # What Status saw: the slice empty, or its (at most two) slivers allocated or provisioned; never an error or
    # another state.
    states = {"geni_allocated", "geni_provisioned"}
    assert seen and all(isinstance(view, list) and len(view) <= 2 and set(view) <= states for view in seen), seen
    assert server.stop() == 0
    assert not any("Traceback" in line for line in server.lines), server.lines


def post(server: Serve, lab: Lab, body: bytes) -> Any:
    """``body`` POSTed as an XML-RPC call over TLS with ann's certificate; the answer, parsed (a Fault raises)."""
    connection = http.client.HTTPSConnection(
        "127.0.0.1", server.aggregate_port, context=client_context(*lab.ann), timeout=60
    )
    try:
        connection.request("POST", "/", body, {"content-type": "text/xml"})
        response = connection.getresponse()
        assert response.status == 200
        return xmlrpc.client.loads(response.read())[0][0]
    finally:
        connection.close()


def test_bad_calls_read_in_the_reactor_are_refused_and_change_nothing(
    lab: Lab, tmp_path: Path, servers: list[Serve]
) -> None:
    """Calls naming Allocate, read in the reactor thread: malformed XML, an entity expansion, a wrong type and an
    impossible time are each refused with the right code; nothing is booked, and the server answers after them."""
    server = Serve(lab, tmp_path, "reactor", "--workers", "1")
    servers.append(server)
    server.wait_ready()
    server.wait_for_line(IN_REACTOR)
    urn, credential = lab.slices[0]
    start = b"<?xml version='1.0'?><methodCall><methodName>Allocate</methodName><params>"
    with pytest.raises(xmlrpc.client.Fault) as malformed:
        post(server, lab, start + b"<param><value><string>unclosed")
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        b"<methodCall><methodName>Allocate</methodName><params><param><value><string>&b;</string></value></param>"
        b"</params></methodCall>"
    )
    with pytest.raises(xmlrpc.client.Fault) as expanded:
        post(server, lab, bomb)
    assert malformed.value.faultCode == expanded.value.faultCode == GeniCode.BADARGS
    wrong_type = post(server, lab, xmlrpc.client.dumps((urn, credential, "<rspec/>", {}), "Allocate").encode())
    assert code(wrong_type) == GeniCode.BADARGS, wrong_type  # credentials must be a list
    slot = ("2026-02-30T10:00:00Z", "2026-02-30T11:00:00Z")
    impossible = post(server, lab, xmlrpc.client.dumps((urn, [credential], request(slot), {}), "Allocate").encode())
    assert code(impossible) == GeniCode.BADARGS, impossible
    assert server.client(lab).Status([urn], [credential], {})["value"]["geni_slivers"] == []
    assert code(server.client(lab).Allocate(urn, [credential], request(window(days_ahead=23, hour=3)), {})) == 0
    assert server.stop() == 0


@pytest.mark.parametrize(
    "url", ["sqlite:////nonexistent/calendar.db", "postgresql+psycopg://sfaomf@127.0.0.1/nonexistent"]
)
def test_where_it_cannot_be_the_calls_stay_on_the_threads(url: str) -> None:
    """SQLite has no asynchronous driver; a process whose reactor is another (these tests' own) cannot await. (A
    real ``serve`` on PostgreSQL installs the asyncio reactor: the tests above.)"""
    assert _reactor_calls(Settings("lab", "/nonexistent", calls_in_reactor=True, database_url=url)) is None
    assert _reactor_calls(Settings("lab", "/nonexistent", calls_in_reactor=False, database_url=url)) is None
