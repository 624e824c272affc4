"""The OAR backend when the way to OAR fails half-way, against the real OAR 2.5.9 (scripts/oar.sh): a reservation
OAR made whose answer was lost (a connection broken off, a proxy's 502, an answer without a job id) is deleted after
Delete; a renewal whose old job is deleted but not seen gone puts the old window back, one timing out answers 8, and
a job the aggregate deleted itself is never told to the users as lost; OAR's 4xx refusals are the testbed's errors
with its words; a Delete landing during a reconcile round is not undone by it. The faults are made by
``OarProxyFaultStandIn``, a small HTTP proxy in front of the real OAR API: every request it forwards is answered by
the real OAR."""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

import pytest

from sfa_omf.calendar.outbox import NotifyEvents
from sfa_omf.errors import GeniCode, GeniError
from sfa_omf.testbed.oar.backend import OarTestbed
from sfa_omf.testbed.oar.client import OarClient
from sfa_omf.testbed.oar.jobs import DELETED, DELETING, job_name
from sfa_omf.times import format_time
from tests.testbed.oar import test_backend
from tests.testbed.oar.conftest import OarJobs, wait_for_job
from tests.testbed.oar.test_backend import settle

HOUR = timedelta(hours=1)
Site = test_backend.Site
site = test_backend.site  # the aggregate on the OAR backend (fixture)
job_of = test_backend.job_of

FORWARD = "forward"
FORWARD_THEN_502 = "forward, then answer 502 as a proxy would"
FORWARD_THEN_BREAK_OFF = "forward, then close the connection without an answer"
FORWARD_THEN_NO_JOB_ID = "forward, then answer 200 with no job id"
ANSWER_502 = "answer 502 without forwarding"
ANSWER_403 = "answer OAR's JSON 403 refusal without forwarding"
STALL = "hold the request unanswered until the client gives up"
FORWARD_UNTIL_ENDED_THEN_504 = "forward until OAR says the job ended, then answer 504 as a proxy giving up would"

# A rule: (method, path) -> what the proxy does with that request.
Rule = Callable[[str, str], str]


class OnOar(Protocol):
    """A test site on the OAR backend (this file's, or test_containers.py's)."""

    backend: OarTestbed


class OarProxyFaultStandIn(ThreadingHTTPServer):
    """Stands in for the network between the aggregate and OAR failing half-way (a reverse proxy answering 502 or
    504, a connection reset after the request was sent, a broken API answering without a job id, a refusal): faults
    the real OAR cannot be made to show on demand. It forwards each request to the real OAR API unless ``rule``
    says otherwise, and records what it was asked (``asked``)."""

    daemon_threads = True

    def __init__(self, oar_url: str, rule: Rule) -> None:
        super().__init__(("127.0.0.1", 0), _FaultHandler)
        target = urllib.parse.urlsplit(oar_url)
        self.oar_host, self.oar_port = target.hostname or "127.0.0.1", target.port or 80
        self.url = f"http://127.0.0.1:{self.server_address[1]}{target.path}"
        self.rule = rule
        self.asked: list[tuple[str, str, str]] = []  # (method, path, what was done)
        self.released = threading.Event()  # ends every stalled request

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes | None) -> tuple[int, bytes]:
        """The real OAR's answer to the request: its status and body."""
        connection = http.client.HTTPConnection(self.oar_host, self.oar_port, timeout=120)
        try:
            connection.request(method, path, body=body, headers=headers)
            answer = connection.getresponse()
            return answer.status, answer.read()
        finally:
            connection.close()


class _FaultHandler(BaseHTTPRequestHandler):
    server: OarProxyFaultStandIn

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {name: value for name, value in self.headers.items() if name.lower() != "host"}
        what = self.server.rule(self.command, urllib.parse.urlsplit(self.path).path)
        self.server.asked.append((self.command, self.path, what))
        if what == STALL:
            self.server.released.wait(120)
            self.close_connection = True
            return
        if what in (ANSWER_502, ANSWER_403):
            self._answer(*((502, b"<html>502 Bad Gateway</html>") if what == ANSWER_502 else _REFUSAL))
            return
        status, answer = self.server.forward(self.command, self.path, headers, body)
        if what == FORWARD_UNTIL_ENDED_THEN_504:  # (a job read: OAR deletes asynchronously, within seconds)
            deadline = time.monotonic() + 120
            while b'"Error"' not in answer and b'"Terminated"' not in answer and time.monotonic() < deadline:
                time.sleep(0.5)
                status, answer = self.server.forward(self.command, self.path, headers, body)
            self._answer(504, b"<html><body><h1>504 Gateway Time-out</h1></body></html>")
            return
        if what == FORWARD_THEN_502:
            self._answer(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>")
        elif what == FORWARD_THEN_BREAK_OFF:
            self.close_connection = True  # OAR made it; the answer never comes
        elif what == FORWARD_THEN_NO_JOB_ID:
            self._answer(200, b'{"status": "Accepted"}')
        else:
            self._answer(status, answer)

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if body.startswith(b"{") else "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _handle

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads ``asked``."""


REFUSAL_WORDS = "this request is refused (a stand-in refusal)"
_REFUSAL = (403, b'{"code": 403, "title": "Forbidden", "message": "' + REFUSAL_WORDS.encode() + b'"}')


@contextlib.contextmanager
def oar_through_fault_proxy(
    site: OnOar, oar_url: str, rule: Rule, timeout_s: float = 60
) -> Iterator[OarProxyFaultStandIn]:
    """The site's backend talks to OAR through an ``OarProxyFaultStandIn`` applying ``rule`` while in the block."""
    proxy = OarProxyFaultStandIn(oar_url, rule)
    serving = threading.Thread(target=proxy.serve_forever, daemon=True)
    serving.start()
    direct = site.backend.client
    site.backend.client = OarClient(proxy.url, timeout_s=timeout_s)
    try:
        yield proxy
    finally:
        site.backend.client = direct
        proxy.released.set()
        proxy.shutdown()
        proxy.server_close()
        serving.join()


def jobs_named(oar_client: OarClient, lease_id: str, start: datetime) -> list[int]:
    """The ids of the jobs OAR holds (not ended) named after the lease, in the day from ``start``."""
    return [job.id for job in oar_client.reservations(start, start + 24 * HOUR) if job.name == job_name(lease_id)]


DELETE_THEN_ROUND = "Delete through the aggregate, then a reconcile round"
RELEASE = "the backend's release (what Delete and a failed CreateSliver call)"


@pytest.mark.parametrize(
    ("fault", "cleanup"),
    [
        (FORWARD_THEN_502, DELETE_THEN_ROUND),
        (FORWARD_THEN_BREAK_OFF, DELETE_THEN_ROUND),
        (FORWARD_THEN_NO_JOB_ID, DELETE_THEN_ROUND),
        (FORWARD_THEN_502, RELEASE),
    ],
)
def test_a_reservation_made_whose_answer_was_lost_is_deleted_after_delete(
    site: Site, oar_url: str, oar_client: OarClient, oar_jobs: OarJobs, fault: str, cleanup: str
) -> None:
    """OAR made the job but its answer was lost: Provision fails, the booking stays allocated, the lease's row keeps
    the job's owner, and after Delete the job OAR made is deleted (the reconciler's orphan sweep acts only on jobs
    whose owner was recorded): nothing is left in OAR, nor mirrored as an outside hold."""
    site.allocate(["node7"], site.start)
    (lease_id,) = site.lease_ids()

    def on_submit(method: str, path: str) -> str:
        return fault if (method, path) == ("POST", "/oarapi/jobs.json") else FORWARD

    with oar_through_fault_proxy(site, oar_url, on_submit), pytest.raises(GeniError) as failed:
        site.provision()
    assert failed.value.code in (GeniCode.UNAVAILABLE, GeniCode.ERROR), failed.value
    assert "Provision" in failed.value.message
    assert [s["geni_allocation_status"] for s in site.status()] == ["geni_allocated"]
    (made,) = jobs_named(oar_client, lease_id, site.start)  # OAR booked it all the same
    oar_jobs.track(made, "alice")  # (deleted at the end whatever happens)
    row = site.backend.jobs.get(lease_id)
    assert row is not None and row.owner == "alice", "the owner to act as is kept"
    assert failed.value.maybe_made, "the aggregate keeps what the job OAR may have made needs"
    # While the lease is allocated, the job OAR made is the lease's own (its row names the owner), not an outside hold.
    assert f"oar:{made}" not in site.backend.refresh_external().added
    if cleanup == RELEASE:
        (lease,) = site.aggregate.bookings.leases(slice_urn=site.pki.slice_urn)
        site.backend.release(lease)
    else:
        site.delete()
        assert site.backend.reconcile().orphans_deleted == [made]
    wait_for_job(oar_client, made, {"Error", "Terminated"})
    assert jobs_named(oar_client, lease_id, site.start) == [], "nothing is left in OAR"


def test_oars_own_refusal_of_a_reservation_forgets_the_row(site: Site, oar_url: str, oar_client: OarClient) -> None:
    """OAR refuses the reservation with its JSON 4xx (a refusal the real OAR does not give on demand): it certainly
    made nothing, so the lease's row is forgotten (nothing for Delete or the reconciler to look for), the failure is
    not marked as one after which a job may exist, and the booking stays allocated."""
    site.allocate(["node9"], site.start)
    (lease_id,) = site.lease_ids()

    def refuse_submitting(method: str, path: str) -> str:
        return ANSWER_403 if (method, path) == ("POST", "/oarapi/jobs.json") else FORWARD

    with oar_through_fault_proxy(site, oar_url, refuse_submitting), pytest.raises(GeniError) as refused:
        site.provision()
    assert refused.value.code == GeniCode.ERROR and REFUSAL_WORDS in refused.value.message, refused.value
    assert not refused.value.maybe_made
    assert site.backend.jobs.get(lease_id) is None, "the row is forgotten"
    assert [s["geni_allocation_status"] for s in site.status()] == ["geni_allocated"]
    assert jobs_named(oar_client, lease_id, site.start) == []


def renew(site: Site, end: datetime) -> None:
    """Renew the slice's lease to ``end`` through the aggregate, as alice."""
    alice = site.pki.users["alice"]
    site.aggregate.renew(alice.chain, [site.pki.slice_urn], [alice.slice_cred], format_time(end), {})


def failed_notices(site: Site) -> list[str]:
    """The reasons of the "failed" notices recorded for the slice's users."""
    events = NotifyEvents(site.aggregate.database).since(datetime.now(UTC) - 24 * HOUR)
    return [event.payload["reason"] for event in events if event.event == "failed"]


def test_a_renewal_whose_old_job_is_not_seen_gone_puts_the_old_window_back(
    site: Site, oar_url: str, oar_client: OarClient, oar_jobs: OarJobs
) -> None:
    """Renew deletes the old job (OAR cannot move a reservation), but reading it back fails (a proxy gives up while
    OAR deletes it): the renewal fails, the lease keeps its end, and the old window is reserved again at once (not
    left without a job until the reconciler, which would tell the users the job we deleted was lost)."""
    site.allocate(["node8"], site.start)
    site.provision()
    (lease_id,) = site.lease_ids()
    first = job_of(site, lease_id)

    def on_reading_the_old_job(method: str, path: str) -> str:
        return FORWARD_UNTIL_ENDED_THEN_504 if (method, path) == ("GET", f"/oarapi/jobs/{first}.json") else FORWARD

    with oar_through_fault_proxy(site, oar_url, on_reading_the_old_job), pytest.raises(GeniError) as failed:
        renew(site, site.start + 2 * HOUR)
    assert failed.value.code == GeniCode.UNAVAILABLE, failed.value
    (lease,) = site.aggregate.bookings.leases(slice_urn=site.pki.slice_urn)
    assert lease.end == site.start + HOUR, "the lease keeps its end"
    restored = oar_client.job(job_of(site, lease_id), with_nodes=True)
    assert restored is not None and restored.id != first
    oar_jobs.track(restored.id, "alice")
    assert (restored.state, restored.start_time, restored.walltime_s) == ("Waiting", site.start, 3599)
    assert f"its old window is reserved again as OAR job {restored.id}" in failed.value.message, failed.value
    assert jobs_named(oar_client, lease_id, site.start) == [restored.id]
    report = site.backend.reconcile()
    assert not report.changed and not report.failed, report
    assert failed_notices(site) == []


def test_a_renewal_timing_out_answers_timedout_and_the_job_we_deleted_is_never_told_as_lost(
    site: Site, oar_url: str, oar_client: OarClient, oar_jobs: OarJobs
) -> None:
    """Renew deleted the old job; the new window's reservation gets no answer in time (code 8, TIMEDOUT, as for
    Provision), and putting the old window back fails too (a proxy's 502: OAR made nothing). The lease has no job
    until the reconciler reserves its window again; the users are not told that the job the aggregate deleted
    itself was lost."""
    site.allocate(["node8"], site.start)
    site.provision()
    (lease_id,) = site.lease_ids()
    first = job_of(site, lease_id)
    submits: list[str] = []

    def on_submit(method: str, path: str) -> str:
        if (method, path) != ("POST", "/oarapi/jobs.json"):
            return FORWARD
        submits.append(path)
        return STALL if len(submits) == 1 else ANSWER_502  # the new window, then the old one put back

    with oar_through_fault_proxy(site, oar_url, on_submit, timeout_s=10), pytest.raises(GeniError) as failed:
        renew(site, site.start + 2 * HOUR)
    assert failed.value.code == GeniCode.TIMEDOUT, failed.value
    assert len(submits) == 2, "the old window was asked for again"
    assert jobs_named(oar_client, lease_id, site.start) == [], "the old job is deleted, nothing replaced it"
    report = site.backend.reconcile()
    assert report.resubmitted == [lease_id] and not report.failed, report
    again = oar_client.job(job_of(site, lease_id), with_nodes=True)
    assert again is not None and again.id != first
    oar_jobs.track(again.id, "alice")
    assert (again.start_time, again.walltime_s, again.nodes) == (site.start, 3599, ("node8",))
    assert failed_notices(site) == [], "the job the aggregate deleted itself is not told as lost"


def test_oars_refusal_of_a_read_is_a_testbed_error_not_an_internal_one(site: Site, oar_url: str) -> None:
    """OAR answers the listing or reading of jobs and the deletion with a 4xx and its JSON words (refusals the real
    OAR does not give on demand): Renew and Delete answer the testbed's error with OAR's words (geni_code 2, never
    SERVERERROR), and change nothing."""
    site.allocate(["node9"], site.start)
    site.provision()
    (lease_id,) = site.lease_ids()
    job_id = job_of(site, lease_id)

    def refuse_all_but_submitting(method: str, path: str) -> str:
        return FORWARD if method == "POST" else ANSWER_403

    with oar_through_fault_proxy(site, oar_url, refuse_all_but_submitting):
        with pytest.raises(GeniError) as renewing:
            renew(site, site.start + 2 * HOUR)
        with pytest.raises(GeniError) as deleting:
            site.delete()
    for refused in (renewing.value, deleting.value):
        assert refused.code == GeniCode.ERROR, refused
        assert f"OAR refused the request: {REFUSAL_WORDS}" in refused.message, refused
    (lease,) = site.aggregate.bookings.leases(slice_urn=site.pki.slice_urn)
    assert (lease.state, lease.end) == ("provisioned", site.start + HOUR), "nothing changed"
    assert job_of(site, lease_id) == job_id


def test_a_lease_deleted_during_a_reconcile_round_is_left_alone_by_that_round(
    site: Site, oar_url: str, oar_client: OarClient
) -> None:
    """A round reads OAR and the calendar at its start, then works lease by lease. A Delete that lands while it works
    (here: while it reads the first lease's job, which vanished; the proxy only forwards and lets the Delete happen
    then) is not undone by the round: it does not record the deleted lease's job as its reservation again."""
    site.allocate(["node9"], site.start)
    site.allocate(["node10"], site.start + 2 * HOUR)
    site.provision()
    first, second = site.lease_ids()  # (oldest first: the round's order)
    vanished = job_of(site, first)
    oar_client.delete_job(vanished, user="alice")
    wait_for_job(oar_client, vanished, {"Error", "Terminated"})
    (doomed,) = [lease for lease in site.aggregate.bookings.leases() if lease.id == second]
    alice = site.pki.users["alice"]
    deleted: list[str] = []

    def delete_the_second_lease_meanwhile(method: str, path: str) -> str:
        if (method, path) == ("GET", f"/oarapi/jobs/{vanished}.json") and not deleted:
            deleted.append(second)
            urns = [sliver.urn for sliver in doomed.slivers]
            site.aggregate.delete(alice.chain, urns, [alice.slice_cred], {})
        return FORWARD

    with oar_through_fault_proxy(site, oar_url, delete_the_second_lease_meanwhile):
        report = site.backend.reconcile()
    assert deleted == [second], "the Delete landed during the round"
    assert report.resubmitted == [first] and second not in report.adopted, report
    row = site.backend.jobs.get(second)
    assert row is not None and row.state == DELETED, row


def answer_502_to(method_refused: str) -> Rule:
    """A rule: requests of ``method_refused`` are answered 502 without being forwarded (OAR never sees them)."""
    return lambda method, path: ANSWER_502 if method == method_refused else FORWARD


def test_a_renewal_whose_delete_never_happened_keeps_the_job_told_as_lost_if_oar_loses_it_later(
    site: Site, oar_url: str, oar_client: OarClient, oar_jobs: OarJobs
) -> None:
    """Renew's deletion of the old job is answered 502 by a proxy that never forwarded it: OAR still holds the old
    job, so reserving its window again is refused; the renewal fails saying the lease keeps its end. The next round
    finds the old job alive and the lease's: it clears the row's mark of a job the aggregate deleted itself, so that
    when OAR really loses the job later, the round that reserves it again tells the users."""
    site.allocate(["node8"], site.start)
    site.provision()
    (lease_id,) = site.lease_ids()
    first = job_of(site, lease_id)
    with oar_through_fault_proxy(site, oar_url, answer_502_to("DELETE")), pytest.raises(GeniError) as failed:
        renew(site, site.start + 2 * HOUR)
    assert "the lease keeps its end" in failed.value.message, failed.value
    assert jobs_named(oar_client, lease_id, site.start) == [first], "OAR still holds the old job"
    settle(site, lease_id)  # (written before the round: not a call's write during it)
    assert site.backend.reconcile().adopted == [lease_id]
    row = site.backend.jobs.get(lease_id)
    assert row is not None and (row.job_id, row.message) == (first, ""), row
    oar_client.delete_job(first, user="alice")  # now OAR really loses it (an admin's oardel)
    wait_for_job(oar_client, first, {"Error", "Terminated"})
    settle(site, lease_id)
    report = site.backend.reconcile()
    assert report.resubmitted == [lease_id], report
    oar_jobs.track(job_of(site, lease_id), "alice")
    (told,) = failed_notices(site)
    assert f"OAR job {first} ended" in told, told


def test_a_renewal_failing_after_a_failed_delete_is_reserved_again_and_not_told_as_lost(
    site: Site, oar_url: str, oar_client: OarClient, oar_jobs: OarJobs
) -> None:
    """A Delete answered 502 (never forwarded) leaves the lease provisioned and its row DELETING; a Renew then
    deletes the old job, and reserving the new window and the old one again both get a 502 (OAR made nothing). The
    next round turns the row back to SUBMITTED keeping its mark (a job the aggregate deleted itself), and in that
    same round reserves the lease's window again, without telling the users the job was lost."""
    site.allocate(["node9"], site.start)
    site.provision()
    (lease_id,) = site.lease_ids()
    first = job_of(site, lease_id)
    with oar_through_fault_proxy(site, oar_url, answer_502_to("DELETE")), pytest.raises(GeniError):
        site.delete()
    row = site.backend.jobs.get(lease_id)
    assert row is not None and row.state == DELETING, row
    with oar_through_fault_proxy(site, oar_url, answer_502_to("POST")), pytest.raises(GeniError) as failed:
        renew(site, site.start + 2 * HOUR)
    assert "the lease keeps its end" in failed.value.message, failed.value
    assert jobs_named(oar_client, lease_id, site.start) == [], "the old job is deleted, nothing replaced it"
    settle(site, lease_id)
    report = site.backend.reconcile()
    assert report.resubmitted == [lease_id] and not report.failed, report
    again = job_of(site, lease_id)
    oar_jobs.track(again, "alice")
    assert again != first
    assert failed_notices(site) == [], "the job the aggregate deleted itself is not told as lost"


def test_a_delete_landing_while_a_round_reserves_a_lease_again_leaves_no_job(
    site: Site, oar_url: str, oar_client: OarClient, oar_jobs: OarJobs
) -> None:
    """The lease's job vanished in OAR; the round reserves its window again, and the experimenter's Delete lands
    while OAR is being asked (the proxy lets it happen just before forwarding the reservation). The round deletes
    the job it made and writes nothing: the row stays DELETED, and OAR holds no job for the cancelled lease."""
    site.allocate(["node10"], site.start)
    site.provision()
    (lease_id,) = site.lease_ids()
    vanished = job_of(site, lease_id)
    oar_client.delete_job(vanished, user="alice")
    wait_for_job(oar_client, vanished, {"Error", "Terminated"})
    settle(site, lease_id)
    deleted: list[str] = []

    def delete_before_the_reservation(method: str, path: str) -> str:
        if (method, path) == ("POST", "/oarapi/jobs.json") and not deleted:
            deleted.append(lease_id)
            site.delete()
        return FORWARD

    with oar_through_fault_proxy(site, oar_url, delete_before_the_reservation):
        report = site.backend.reconcile()
    for left in jobs_named(oar_client, lease_id, site.start):  # (deleted at the end whatever happens)
        oar_jobs.track(left, "alice")
    assert deleted == [lease_id], "the Delete landed during the round"
    assert report.resubmitted == [] and len(report.orphans_deleted) == 1, report
    (made,) = report.orphans_deleted
    row = site.backend.jobs.get(lease_id)
    assert row is not None and row.state == DELETED and row.job_id == vanished, row
    wait_for_job(oar_client, made, {"Error", "Terminated"})
    assert jobs_named(oar_client, lease_id, site.start) == []


def test_a_renewal_landing_during_a_round_is_not_undone_by_it(
    site: Site, oar_url: str, oar_client: OarClient, oar_jobs: OarJobs
) -> None:
    """A round reads OAR and the calendar at its start. A Renew of the second lease lands while the round works on
    the first (whose job vanished): the Renew replaces the second lease's job. The round leaves the second lease
    alone (its row was written during the round): it does not record the old job, deleted by the Renew, as its
    reservation again."""
    site.allocate(["node9"], site.start)
    site.allocate(["node10"], site.start + 2 * HOUR)
    site.provision()
    first, second = site.lease_ids()  # (oldest first: the round's order)
    vanished = job_of(site, first)
    old_of_second = job_of(site, second)
    oar_client.delete_job(vanished, user="alice")
    wait_for_job(oar_client, vanished, {"Error", "Terminated"})
    settle(site, first)
    settle(site, second)
    (renewed,) = [lease for lease in site.aggregate.bookings.leases() if lease.id == second]
    alice = site.pki.users["alice"]
    renewals: list[str] = []

    def renew_the_second_lease_meanwhile(method: str, path: str) -> str:
        if (method, path) == ("GET", f"/oarapi/jobs/{vanished}.json") and not renewals:
            renewals.append(second)
            urns = [sliver.urn for sliver in renewed.slivers]
            new_end = format_time(renewed.end + HOUR)
            site.aggregate.renew(alice.chain, urns, [alice.slice_cred], new_end, {})
        return FORWARD

    with oar_through_fault_proxy(site, oar_url, renew_the_second_lease_meanwhile):
        report = site.backend.reconcile()
    new_of_second = job_of(site, second)
    oar_jobs.track(new_of_second, "alice")
    oar_jobs.track(job_of(site, first), "alice")
    assert renewals == [second], "the Renew landed during the round"
    assert new_of_second != old_of_second, "the row records the Renew's job, not the one it deleted"
    assert report.resubmitted == [first] and second not in report.adopted, report
    job = oar_client.job(new_of_second)
    assert job is not None and job.walltime_s == 2 * 3600 - 1


def test_a_delete_that_reached_oar_though_its_answer_was_lost_is_not_told_as_lost(
    site: Site, oar_url: str, oar_client: OarClient, oar_jobs: OarJobs
) -> None:
    """Delete's request reaches OAR, which deletes the job, but the answer is lost (a proxy's 502): the Delete fails
    and the lease stays provisioned. The next round reserves its window again, as the calendar has it, without
    telling the users their job was lost: the aggregate deleted it itself."""
    site.allocate(["node10"], site.start)
    site.provision()
    (lease_id,) = site.lease_ids()
    first = job_of(site, lease_id)

    def on_delete(method: str, path: str) -> str:
        return FORWARD_THEN_502 if method == "DELETE" else FORWARD

    with oar_through_fault_proxy(site, oar_url, on_delete), pytest.raises(GeniError):
        site.delete()
    wait_for_job(oar_client, first, {"Error", "Terminated"})  # OAR deleted it all the same
    settle(site, lease_id)
    assert site.backend.reconcile().resubmitted == [lease_id]
    again = job_of(site, lease_id)
    oar_jobs.track(again, "alice")
    assert again != first
    assert failed_notices(site) == [], "the job the aggregate deleted itself is not told as lost"
