"""The OAR REST client: against the real OAR that scripts/oar.sh runs, and its pure parts (input checks, server-local
time conversions, what it sends) without OAR."""

from __future__ import annotations

import json
import os
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from sfa_omf.testbed.oar.client import (
    OarClient,
    OarError,
    OarRefused,
    OarTimeout,
    OarUnavailable,
    from_server_time,
    refusal,
    server_zone,
    to_server_time,
    walltime_text,
)
from tests.ports import free_port
from tests.testbed.oar.conftest import OarJobs, oar_script, wait_for_job

HOUR = timedelta(hours=1)
PARIS = ZoneInfo("Europe/Paris")

# --- against the real OAR -------------------------------------------------------------------------------------------


def test_version(oar_client: OarClient) -> None:
    version = oar_client.version()
    assert version["oar_version"].startswith("2.5.9")
    assert version["api_version"]
    assert isinstance(version["api_timestamp"], int)


def test_resources_are_the_fake_nodes(oar_client: OarClient) -> None:
    resources = oar_client.resources()
    by_node = {resource.network_address: resource for resource in resources}
    assert {f"node{i}" for i in range(1, 11)} <= set(by_node)
    node3 = by_node["node3"]
    assert node3.id > 0
    assert node3.state in ("Alive", "Suspected", "Absent", "Dead")
    # all properties, as strings, including the ones scripts/oar.sh adds
    assert node3.properties["network_address"] == "node3"
    assert node3.properties["host"] == "node3"
    assert node3.properties["type"] == "default"


def test_resources_follow_pagination(oar_url: str, oar_client: OarClient) -> None:
    paged = OarClient(oar_url, timeout_s=60, page_size=3).resources()
    assert [resource.id for resource in paged] == [resource.id for resource in oar_client.resources()]
    assert len({resource.id for resource in paged}) == len(paged)


def test_reservation_pins_the_nodes_at_the_time_asked(
    oar_client: OarClient, oar_jobs: OarJobs, oar_start: datetime
) -> None:
    job_id = oar_jobs.submit(
        user="alice", nodes=["node1", "node2"], start=oar_start, walltime_s=3599, name="urn:publicid:IDN+tb+slice+s1"
    )
    job = oar_client.job(job_id, with_nodes=True)
    assert job is not None
    assert job.id == job_id
    assert job.owner == "alice"
    assert job.name == "urn:publicid:IDN+tb+slice+s1"
    assert job.start_time == oar_start
    assert job.start_time.tzinfo is not None and job.start_time.utcoffset() == timedelta(0)
    assert job.walltime_s == 3599
    assert job.nodes == ("node1", "node2")
    assert job.state == "Waiting"
    assert job.reservation == "Scheduled"
    assert job.types == ("noop",)
    # without with_nodes: the same job, no nodes
    plain = oar_client.job(job_id)
    assert plain is not None and plain.nodes == () and plain.start_time == oar_start


def test_back_to_back_slots_are_both_accepted(oar_client: OarClient, oar_jobs: OarJobs, oar_start: datetime) -> None:
    # A job holds [start, start + walltime] inclusive: walltime = duration - 1 s leaves the next slot free.
    first = oar_jobs.submit(user="alice", nodes=["node3"], start=oar_start, walltime_s=3599)
    second = oar_jobs.submit(user="bob", nodes=["node3"], start=oar_start + HOUR, walltime_s=3599)
    jobs = {job.id: job for job in oar_client.reservations(oar_start, oar_start + 2 * HOUR)}
    assert jobs[first].start_time == oar_start and jobs[first].nodes == ("node3",)
    assert jobs[second].start_time == oar_start + HOUR and jobs[second].owner == "bob"


def test_overlapping_reservation_is_refused(oar_client: OarClient, oar_jobs: OarJobs, oar_start: datetime) -> None:
    held = oar_jobs.submit(user="alice", nodes=["node4"], start=oar_start, walltime_s=3599)
    with pytest.raises(OarRefused) as refused:
        oar_jobs.submit(user="bob", nodes=["node4"], start=oar_start + HOUR / 2, walltime_s=3599)
    exc = refused.value
    assert exc.status == 400
    assert "Reservation not valid" in exc.message
    # OAR's hint: the earliest start after the held slot, read from server-local time into UTC
    assert exc.could_run_at is not None
    assert exc.could_run_at.utcoffset() == timedelta(0)
    assert oar_start + HOUR <= exc.could_run_at < oar_start + 2 * 24 * HOUR
    # OAR consumed a job id for the refusal and left that job in Error; the held slot is untouched
    assert exc.job_id is not None and exc.job_id > held
    refused_job = oar_client.job(exc.job_id)
    assert refused_job is not None and refused_job.state == "Error"
    still = oar_client.job(held)
    assert still is not None and still.state == "Waiting"


def test_unknown_node_is_an_error_not_a_refusal(oar_jobs: OarJobs, oar_start: datetime) -> None:
    with pytest.raises(OarError) as error:
        oar_jobs.submit(user="alice", nodes=["node999"], start=oar_start, walltime_s=3599)
    assert not isinstance(error.value, OarRefused)
    assert error.value.status == 400
    assert "not enough resources" in error.value.message


def test_unknown_user_is_an_error(oar_jobs: OarJobs, oar_start: datetime) -> None:
    with pytest.raises(OarError) as error:
        oar_jobs.submit(user="nosuchuser", nodes=["node9"], start=oar_start, walltime_s=3599)
    assert not isinstance(error.value, OarRefused | OarUnavailable)
    assert "target user" in error.value.message


def test_delete_ends_the_job_and_is_idempotent(oar_client: OarClient, oar_jobs: OarJobs, oar_start: datetime) -> None:
    job_id = oar_jobs.submit(user="bob", nodes=["node5"], start=oar_start, walltime_s=3599)
    with pytest.raises(OarError) as wrong_user:
        oar_client.delete_job(job_id, user="alice")
    assert "not the right user" in wrong_user.value.message
    oar_client.delete_job(job_id, user="bob")
    oar_client.delete_job(job_id, user="bob")  # "already killed" is not an error
    job = wait_for_job(oar_client, job_id, {"Error", "Terminated"})
    assert job.owner == "bob"
    # a deleted job no longer holds its nodes
    assert job_id not in {held.id for held in oar_client.reservations(oar_start, oar_start + HOUR)}
    oar_client.delete_job(job_id, user="bob")


def test_delete_unknown_job_is_not_an_error(oar_client: OarClient, oar_users: tuple[str, ...]) -> None:
    oar_client.delete_job(999_999_999, user="alice")


def test_reservations_lists_the_window_with_nodes(
    oar_url: str, oar_client: OarClient, oar_jobs: OarJobs, oar_start: datetime
) -> None:
    inside = oar_jobs.submit(user="alice", nodes=["node6", "node7"], start=oar_start, walltime_s=3599)
    later = oar_jobs.submit(user="bob", nodes=["node6"], start=oar_start + 2 * HOUR, walltime_s=3599)

    window = {job.id: job for job in oar_client.reservations(oar_start, oar_start + HOUR)}
    assert inside in window and later not in window
    assert window[inside].nodes == ("node6", "node7")
    assert window[inside].owner == "alice" and window[inside].start_time == oar_start
    for job in window.values():  # everything listed holds nodes in the window and is not finished
        assert job.nodes and job.start_time is not None
        assert job.start_time < oar_start + HOUR
        assert job.start_time + timedelta(seconds=job.walltime_s) >= oar_start
        assert job.state not in ("Error", "Terminated")
    # the same, one job per request
    one_per_page = OarClient(oar_url, timeout_s=60, page_size=1).reservations(oar_start, oar_start + HOUR)
    assert [job.id for job in one_per_page] == sorted(window)

    # [start + 1 h, start + 2 h): the first ended at start + 59:59, the second starts at the window's (open) end
    between = {job.id for job in oar_client.reservations(oar_start + HOUR, oar_start + 2 * HOUR)}
    assert inside not in between and later not in between
    overlapping_both = {
        job.id for job in oar_client.reservations(oar_start + HOUR / 2, oar_start + 2 * HOUR + timedelta(seconds=1))
    }
    assert {inside, later} <= overlapping_both


def test_unknown_job_is_none(oar_client: OarClient) -> None:
    assert oar_client.job(999_999_999) is None
    assert oar_client.job(999_999_999, with_nodes=True) is None


def test_api_stopped_is_unavailable(oar_url: str) -> None:
    client = OarClient(oar_url, timeout_s=30)
    oar_script("stop-api")
    try:
        with pytest.raises(OarUnavailable) as down:
            client.version()
        assert oar_url in down.value.message
        assert "is OAR's API (apache2) running?" in down.value.message
    finally:
        oar_script("start-api")
    assert client.version()["oar_version"].startswith("2.5.9")


def test_submit_pins_exactly_the_nodes_and_walltime_asked(
    oar_url: str, oar_client: OarClient, oar_jobs: OarJobs, oar_start: datetime
) -> None:
    """The resource request OAR reads: those nodes and no other, for that walltime, with the type, name and extra
    options asked (``extra`` -> oarsub's --project)."""
    job_id = oar_jobs.submit(
        user="alice",
        nodes=["node10", "node8"],
        start=oar_start,
        walltime_s=2 * 3600 - 1,
        name="slice1",
        extra={"project": "demo"},
    )
    job = oar_client.job(job_id, with_nodes=True)
    assert job is not None
    assert (job.owner, job.name, job.types, job.walltime_s) == ("alice", "slice1", ("noop",), 2 * 3600 - 1)
    assert job.nodes == ("node10", "node8") and job.start_time == oar_start
    asked = urllib.request.Request(f"{oar_url}/jobs/{job_id}.json", headers={"X-Remote-Ident": "alice"})
    with urllib.request.urlopen(asked, timeout=60) as answer:  # what OAR recorded
        assert json.load(answer)["project"] == "demo"


def test_reservations_are_the_jobs_holding_nodes_in_the_window(
    oar_client: OarClient, oar_jobs: OarJobs, oar_start: datetime
) -> None:
    """A job holds [start, start + walltime] inclusive: one ending a second before the window is not in it, one
    ending at its start is; one starting at its (open) end is not; a job OAR refused (left in Error) or one deleted,
    though asked for the window, holds nothing.
    Nodes are listed once each, sorted."""
    before = oar_jobs.submit(user="alice", nodes=["node9"], start=oar_start - HOUR, walltime_s=3599)
    touching = oar_jobs.submit(user="bob", nodes=["node10", "node8"], start=oar_start - 2 * HOUR, walltime_s=2 * 3600)
    after = oar_jobs.submit(user="alice", nodes=["node8"], start=oar_start + HOUR, walltime_s=3599)
    with pytest.raises(OarRefused) as refused:  # overlaps `touching` on node10: OAR leaves the job in Error
        oar_jobs.submit(user="alice", nodes=["node10"], start=oar_start - HOUR / 2, walltime_s=3599)
    errored = refused.value.job_id
    assert errored is not None
    deleted = oar_jobs.submit(user="bob", nodes=["node9"], start=oar_start + HOUR / 4, walltime_s=599)
    oar_client.delete_job(deleted, user="bob")  # ended: holds nothing, though its nodes were assigned
    wait_for_job(oar_client, deleted, {"Error", "Terminated"})
    jobs = {job.id: job for job in oar_client.reservations(oar_start, oar_start + HOUR)}
    assert touching in jobs and not {before, after, errored, deleted} & set(jobs)
    assert jobs[touching].nodes == ("node10", "node8") and jobs[touching].start_time == oar_start - 2 * HOUR


def test_web_server_without_oar_is_unavailable(oar_url: str, oar_client: OarClient) -> None:
    """The real apache at a path where no OAR is: its 404 (HTML) is no "job not found", while OAR's own 404 is."""
    elsewhere = urllib.parse.urljoin(oar_url.rstrip("/") + "/", "../no-oar-here")
    with pytest.raises(OarUnavailable) as missing:
        OarClient(elsewhere, timeout_s=60).job(5)
    assert missing.value.status == 404
    assert oar_client.job(999_999_999) is None  # OAR's own 404


# --- without OAR ----------------------------------------------------------------------------------------------------


def test_unreachable_port_is_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}/oarapi"
    with pytest.raises(OarUnavailable) as down:
        OarClient(url, timeout_s=5).version()
    assert url in down.value.message
    assert "is OAR's API (apache2) running?" in down.value.message


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A socket on 127.0.0.1 that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.1)  # so the accepting thread sees the end of the test
    held: list[socket.socket] = []
    over = threading.Event()

    def accept() -> None:
        while not over.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/oarapi"
    over.set()
    thread.join(timeout=5)
    for connection in [*held, listener]:
        connection.close()


def test_silent_server_is_a_timeout(silent_server: str) -> None:
    client = OarClient(silent_server, timeout_s=0.5)
    with pytest.raises(OarTimeout) as slow:
        client.version()
    assert slow.value.status == 0
    with pytest.raises(OarTimeout):
        client.job(1)


class OarStandIn:
    """A stand-in for OAR's REST API, for the faults the real OAR of the tests cannot be made to show: a server in
    another time zone than UTC (the tests' OAR runs in UTC, so a client that sent UTC would pass against it), listings
    that shift between the pages of one reading (items come and go between two requests), and apache failing to run
    OAR's CGI (a 500). What the real OAR can show is tested against it (the section above). A tiny HTTP server
    answering as OAR does, recording what the client sends."""

    def __init__(self, status: int, answer: bytes) -> None:
        self.status, self.answer = status, answer
        self.pages: list[dict[str, Any]] = []  # when set: 200 answers, one per request, in order
        # When set: the listing as OAR holds it at each request, in order (the last one stays), answered as OAR does,
        # the page at the request's offset and limit, and the listing's length as its total.
        self.listings: list[list[dict[str, Any]]] = []
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []

    def next_answer(self, path: str) -> tuple[int, bytes]:
        if self.pages:
            return 200, json.dumps(self.pages.pop(0)).encode()
        if self.listings:
            listing = self.listings.pop(0) if len(self.listings) > 1 else self.listings[0]
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
            offset, limit = int(query["offset"][0]), int(query["limit"][0])
            page = {"offset": offset, "total": len(listing), "items": listing[offset : offset + limit]}
            return 200, json.dumps(page).encode()
        return self.status, self.answer


@pytest.fixture
def oar_stand_in() -> Iterator[tuple[OarStandIn, str]]:
    stand_in = OarStandIn(201, b'{"id": 42}')

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            stand_in.requests.append((self.command, self.path, dict(self.headers), body))
            status, answer = stand_in.next_answer(self.path)
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if answer.startswith(b"{") else "text/html")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_GET = do_POST = do_DELETE = answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield stand_in, f"http://127.0.0.1:{server.server_address[1]}/oarapi"
    server.shutdown()
    server.server_close()


def test_submit_sends_server_local_time(oar_stand_in: tuple[OarStandIn, str]) -> None:
    """The stand-in's case: a server in Paris (the tests' OAR runs in UTC, where local time and UTC are one). The
    resource request itself is checked against the real OAR (test_submit_pins_exactly_the_nodes_and_walltime_asked)."""
    stand_in, url = oar_stand_in
    client = OarClient(url, server_timezone="Europe/Paris")
    start = datetime(2027, 7, 1, 8, 0, tzinfo=UTC)
    job_id = client.submit_reservation(
        user="alice", nodes=["node1"], start=start, walltime_s=60, job_type="noop", name="slice1"
    )
    assert job_id == 42
    method, path, headers, body = stand_in.requests[0]
    assert (method, path, headers["X-Remote-Ident"]) == ("POST", "/oarapi/jobs.json", "alice")
    assert body["reservation"] == "2027-07-01 10:00:00"  # 08:00 UTC is 10:00 in Paris in summer (CEST)
    # a naive start is UTC; in winter Paris is UTC+1
    client.submit_reservation(
        user="bob", nodes=["n"], start=datetime(2027, 1, 10, 9, 0), walltime_s=60, job_type="noop", name="x"
    )
    assert stand_in.requests[1][3]["reservation"] == "2027-01-10 10:00:00"


def test_refusal_is_read_in_the_server_zone(oar_stand_in: tuple[OarStandIn, str]) -> None:
    stand_in, url = oar_stand_in
    stand_in.status = 400
    stand_in.answer = json.dumps(
        {
            "code": 400,
            "title": "Bad query",
            "message": "Oarsub command exited with status 10: OAR_JOB_ID=77\nReservation mode: waiting validation...\n"
            "Reservation not valid --> KO (This reservation could run at 2027-07-01 12:00:00)\n\nCmd:\noarsub ...",
        }
    ).encode()
    client = OarClient(url, server_timezone="Europe/Paris")
    with pytest.raises(OarRefused) as refused:
        client.submit_reservation(
            user="bob",
            nodes=["node1"],
            start=datetime(2027, 7, 1, 9, tzinfo=UTC),
            walltime_s=60,
            job_type="noop",
            name="x",
        )
    assert refused.value.could_run_at == datetime(2027, 7, 1, 10, 0, tzinfo=UTC)
    assert refused.value.job_id == 77
    assert "Cmd:" not in refused.value.message  # OAR's echo of its own command line is dropped


def test_apache_failing_to_run_oar_is_unavailable(oar_stand_in: tuple[OarStandIn, str]) -> None:
    """apache's 500 when OAR's CGI cannot run (the shared real OAR is not broken for a test; its wrong path is tested
    against the real apache: test_web_server_without_oar_is_unavailable)."""
    stand_in, url = oar_stand_in
    stand_in.status, stand_in.answer = 500, b"<html>Internal Server Error</html>"
    with pytest.raises(OarUnavailable) as broken:
        OarClient(url).version()
    assert broken.value.status == 500


def resource(rid: int) -> dict[str, Any]:
    return {"id": rid, "network_address": f"node{rid}", "state": "Alive", "cpu": None, "links": []}


def test_resources_pages_by_offset(oar_stand_in: tuple[OarStandIn, str]) -> None:
    stand_in, url = oar_stand_in
    stand_in.pages = [
        {"offset": 0, "total": 5, "items": [resource(1), resource(2)]},
        {"offset": 1, "total": 5, "items": [resource(2), resource(3), resource(4)]},
        {"offset": 3, "total": 5, "items": [resource(4), resource(5)]},
    ]
    resources = OarClient(url, page_size=2).resources()
    assert [r.network_address for r in resources] == ["node1", "node2", "node3", "node4", "node5"]
    assert resources[0].properties == {"id": "1", "network_address": "node1", "state": "Alive", "cpu": ""}
    queries = [urllib.parse.parse_qs(urllib.parse.urlsplit(path).query) for _, path, _, _ in stand_in.requests]
    # Each page after the first starts at the last item read: it shows whether the listing shifted meanwhile.
    assert [(q["offset"], q["limit"]) for q in queries] == [(["0"], ["2"]), (["1"], ["3"]), (["3"], ["3"])]


def test_a_listing_that_shifts_between_pages_misses_nothing(oar_stand_in: tuple[OarStandIn, str]) -> None:
    """Resource 1 goes away and resource 5 comes between the first two pages: the total is the same, and the later
    items moved one place back under the offsets (read at offset 2, the second page would start at 4). The reading
    notices (the page does not start with the last item read), steps back, and misses none of those listed all along
    (3 among them)."""
    stand_in, url = oar_stand_in
    stand_in.listings = [[resource(1), resource(2), resource(3), resource(4)], [resource(n) for n in (2, 3, 4, 5)]]
    assert [r.id for r in OarClient(url, page_size=2).resources()] == [1, 2, 3, 4, 5]
    queries = [urllib.parse.parse_qs(urllib.parse.urlsplit(path).query) for _, path, _, _ in stand_in.requests]
    # The page after the step back asks for the place stepped back over too: it still brings a page of new items.
    assert [(q["offset"][0], q["limit"][0]) for q in queries] == [("0", "2"), ("1", "3"), ("0", "4"), ("3", "3")]


def test_a_listing_that_loses_many_items_steps_back_by_doubling_steps(oar_stand_in: tuple[OarStandIn, str]) -> None:
    """Resources 2 to 7 go away between the first two pages (page of 10): the reading steps back 1, 2, then 4 places
    (not a page each time, nor one place at a time) until a page starts no later than the last item read again, and
    that page asks for the places stepped back over as well."""
    stand_in, url = oar_stand_in
    stand_in.listings = [
        [resource(n) for n in range(1, 31)],
        [resource(1), *(resource(n) for n in range(8, 31))],
    ]
    assert [r.id for r in OarClient(url, page_size=10).resources()] == list(range(1, 31))
    queries = [urllib.parse.parse_qs(urllib.parse.urlsplit(path).query) for _, path, _, _ in stand_in.requests]
    assert [(q["offset"][0], q["limit"][0]) for q in queries] == [
        ("0", "10"),  # 1..10
        ("9", "11"),  # 16..26: the listing shifted (10 is at offset 3 now)
        ("8", "12"),  # 15..26: one place back, still later than 10
        ("6", "14"),  # 13..26: two more
        ("2", "18"),  # 9..26: four more, 10 among them: 11..26 are new
        ("19", "11"),  # 26..30: a short page
    ]


def test_listed_jobs_that_hold_nothing_are_left_out(oar_stand_in: tuple[OarStandIn, str]) -> None:
    """The stand-in's case: OAR's listing as the real one never shows it here (a finished job still listed with its
    nodes, a job with none, a node listed once per resource it has), the reading checks each job itself. The window and
    the query are tested against the real OAR (test_reservations_are_the_jobs_holding_nodes_in_the_window)."""
    stand_in, url = oar_stand_in
    start = datetime(2027, 1, 10, 10, 0, tzinfo=UTC)

    def job(jid: int, state: str, nodes: tuple[str, ...]) -> Any:
        nodes_listed = [{"network_address": node, "status": "reserved"} for node in nodes]
        return {
            "id": jid,
            "state": state,
            "owner": "alice",
            "start_time": int(start.timestamp()),
            "walltime": 3599,
            "types": ["noop"],
            "nodes": nodes_listed,
        }

    stand_in.pages = [
        {
            "offset": 0,
            "total": 4,
            "items": [
                job(1, "Waiting", ("n2", "n1", "n1")),  # n1 has two resources: listed once
                job(2, "Error", ("n1",)),  # finished jobs hold nothing
                job(3, "Terminated", ("n1",)),
                job(4, "Waiting", ()),  # no nodes: holds nothing
            ],
        }
    ]
    jobs = OarClient(url).reservations(start, start + HOUR)
    assert [(j.id, j.nodes) for j in jobs] == [(1, ("n1", "n2"))]


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"nodes": []}, "non-empty"),
        ({"nodes": "node1"}, "non-empty"),
        ({"nodes": ["node1')} OR true OR {('"]}, "node name"),
        ({"nodes": ['node"1']}, "node name"),
        ({"nodes": ["node1", "node1"]}, "duplicate"),
        ({"walltime_s": 0}, "walltime"),
        ({"walltime_s": -60}, "walltime"),
        ({"walltime_s": 1.5}, "walltime"),
        ({"user": "bob-x"}, "user"),  # OAR would act as "bob"
        ({"user": "bob; rm -rf /"}, "user"),
        ({"name": 'x" --queue="admin'}, "job name"),
        ({"name": "$(id)"}, "job name"),
        ({"job_type": "noop`id`"}, "job type"),
        ({"command": 'sleep 1" && "id'}, "command"),
        ({"extra": {"queue": "a b"}}, "value of queue"),
        ({"extra": {"workdir": "/tmp"}}, "not allowed"),
        ({"extra": {"reservation": "2027-01-01 00:00:00"}}, "not allowed"),
        ({"start": datetime(2027, 1, 1, 10, 0, 0, 500_000, tzinfo=UTC)}, "whole second"),
    ],
)
def test_bad_input_is_refused_before_oar(change: dict[str, Any], complaint: str) -> None:
    # port 9 (discard) is never contacted: the checks come first
    client = OarClient("http://127.0.0.1:9/oarapi", timeout_s=1)
    request: dict[str, Any] = {
        "user": "alice",
        "nodes": ["node1"],
        "start": datetime(2027, 1, 1, 10, 0, tzinfo=UTC),
        "walltime_s": 3599,
        "job_type": "noop",
        "name": "x",
    }
    request.update(change)
    with pytest.raises(ValueError, match=complaint):
        client.submit_reservation(**request)


def test_other_bad_input() -> None:
    client = OarClient("http://127.0.0.1:9/oarapi", timeout_s=1)
    start = datetime(2027, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="empty window"):
        client.reservations(start, start)
    with pytest.raises(ValueError, match="positive"):
        client.job(0)
    with pytest.raises(ValueError, match="user"):
        client.delete_job(5, user="o'neil")
    with pytest.raises(ValueError, match="time zone"):
        OarClient("http://127.0.0.1:9/oarapi", server_timezone="Nowhere/Land")
    with pytest.raises(ValueError, match="URL"):
        OarClient("127.0.0.1:6668/oarapi")


# --- server-local time, pure ----------------------------------------------------------------------------------------


def test_to_server_time() -> None:
    assert to_server_time(datetime(2027, 1, 10, 9, 0, tzinfo=UTC), PARIS) == "2027-01-10 10:00:00"
    assert to_server_time(datetime(2027, 7, 1, 8, 0, tzinfo=UTC), PARIS) == "2027-07-01 10:00:00"
    assert to_server_time(datetime(2027, 7, 1, 8, 0), PARIS) == "2027-07-01 10:00:00"  # naive = UTC
    eastern = datetime(2027, 7, 1, 10, 0, tzinfo=ZoneInfo("America/New_York"))  # an aware non-UTC instant
    assert to_server_time(eastern, PARIS) == "2027-07-01 16:00:00"
    assert to_server_time(datetime(2027, 7, 1, 8, 0, tzinfo=UTC), UTC) == "2027-07-01 08:00:00"


def test_to_server_time_refuses_the_repeated_hour() -> None:
    # Paris goes back from 03:00 CEST to 02:00 CET on 2027-10-31: 02:30 happens at 00:30 UTC and again at 01:30 UTC.
    for utc_hour in (0, 1):
        with pytest.raises(ValueError, match="occurs twice"):
            to_server_time(datetime(2027, 10, 31, utc_hour, 30, tzinfo=UTC), PARIS)
    assert to_server_time(datetime(2027, 10, 31, 2, 0, tzinfo=UTC), PARIS) == "2027-10-31 03:00:00"
    # the hour skipped in spring is never produced: 01:00 UTC is 03:00 CEST
    assert to_server_time(datetime(2027, 3, 28, 1, 0, tzinfo=UTC), PARIS) == "2027-03-28 03:00:00"


def test_from_server_time() -> None:
    assert from_server_time("2027-01-10 11:00:00", PARIS) == datetime(2027, 1, 10, 10, 0, tzinfo=UTC)
    assert from_server_time("2027-07-01 12:00:00", PARIS) == datetime(2027, 7, 1, 10, 0, tzinfo=UTC)
    assert from_server_time("2027-07-01 12:00:00", UTC) == datetime(2027, 7, 1, 12, 0, tzinfo=UTC)
    assert from_server_time("2027-10-31 02:30:00", PARIS) == datetime(2027, 10, 31, 0, 30, tzinfo=UTC)  # the earlier
    with pytest.raises(ValueError):
        from_server_time("2027-13-45 25:00:00", PARIS)


def test_refusal_parses_hint_and_job_id() -> None:
    message = "OAR_JOB_ID=7\nReservation not valid --> KO (This reservation could run at 2027-01-10 11:00:00)"
    refused = refusal(message, 400, PARIS)
    assert refused.could_run_at == datetime(2027, 1, 10, 10, 0, tzinfo=UTC)
    assert refused.job_id == 7 and refused.status == 400 and refused.message == message
    too_old = refusal("OAR_JOB_ID=4\nReservation not valid --> KO (Reservation too old)", 400, PARIS)
    assert too_old.could_run_at is None and too_old.job_id == 4


def test_server_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    assert server_zone("Europe/Paris") == PARIS
    if "TZ" not in os.environ:  # this host's zone, whatever it is, converts like the C library's local time
        moment = datetime(2027, 7, 1, 8, 0, tzinfo=UTC)
        assert moment.astimezone(server_zone(None)).utcoffset() == moment.astimezone().utcoffset()
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    assert server_zone(None) == ZoneInfo("Asia/Tokyo")
    monkeypatch.setenv("TZ", ":Europe/Paris")
    assert server_zone(None) == PARIS


def test_walltime_text() -> None:
    assert walltime_text(3599) == "0:59:59"
    assert walltime_text(3600) == "1:00:00"
    assert walltime_text(25 * 3600 + 61) == "25:01:01"


@pytest.mark.parametrize(
    "properties",
    [
        {"vpn_number": "1"},  # no network_address
        {"network_address": "pc1", "local_ip_address": "1.2.3.4'); DROP TABLE resources; --"},
        {"network_address": "pc1", "Bad-Name": "x"},
        {"network_address": "pc 1"},
        {"network_address": "pc1", "vpn_number": ""},
    ],
)
def test_a_resource_oar_would_put_into_sql_as_it_is_is_refused_before_any_request(
    properties: dict[str, str],
) -> None:
    # Nothing listens at this port: a ValueError (not OarUnavailable) shows the request was never sent.
    client = OarClient(f"http://127.0.0.1:{free_port()}/oarapi", timeout_s=2)
    with pytest.raises(ValueError):
        client.add_resource(properties)


def test_resource_state_and_id_are_checked_before_any_request() -> None:
    client = OarClient(f"http://127.0.0.1:{free_port()}/oarapi", timeout_s=2)
    with pytest.raises(ValueError, match="Alive, Absent, Dead"):
        client.set_resource_state(1, "Suspected")
    with pytest.raises(ValueError, match="resource ids"):
        client.set_resource_state(0, "Dead")
