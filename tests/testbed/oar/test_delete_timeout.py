"""A Delete whose OAR answer comes too late: OAR goes on and deletes the job all the same. The Delete answers 8
(TIMEDOUT) saying the deletion may have happened; the lease stays provisioned with its job row marked "Delete asked",
Status does not show the killed job as the lease's failure, the reconciler never reserves the lease again and cancels
it once the job is gone (deleting it again when the Delete never reached OAR), then finishes what Delete does after the
calendar (the slice's keys out of the local accounts), and a Delete asked again finishes it. OAR not answering at all
still answers 11, nothing changed. Against the real OAR (scripts/oar.sh), through a real proxy that holds OAR's
answers back."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from sfa_omf.errors import GeniCode, GeniError
from sfa_omf.server.app import _backend_task
from sfa_omf.testbed.oar.backend import DELETE_ASKED
from sfa_omf.testbed.oar.client import OarClient, OarTimeout
from sfa_omf.testbed.oar.jobs import DELETED, DELETING, job_name
from sfa_omf.testbed.unix_accounts import UnixAccounts
from tests.testbed.oar import test_backend
from tests.testbed.oar.conftest import wait_for_job
from tests.testbed.oar.test_backend import HOUR, Site, job_of, settle

site = test_backend.site  # the fixture: an aggregate on the OAR backend, alice and bob mapped to their Unix users

ANSWER_DELAY_S = 5.0  # how late the proxy passes OAR's answers on
CLIENT_TIMEOUT_S = 1.0  # the aggregate's [sfa_oar] timeout_s behind the proxy: shorter than the delay
KEYS_LOGIN = "dtr_alice"  # alice's own real Unix account in this file (made by Provision, removed after the test)
ALICES_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJw8ZC0c4fS3mYjyhQkKJgLw0X6o2xR2zJ1kq3Jc9u4v alice@onelab"


class SlowOarStandIn:
    """Stands in for an OAR too slow to answer within the aggregate's time-out (a loaded server cannot be made so on
    demand): a real TCP proxy on 127.0.0.1 in front of the real OAR that forwards every request at once, so OAR acts
    on it, and holds OAR's answer back ``delay_s`` before passing it on."""

    def __init__(self, oar_url: str, delay_s: float) -> None:
        parts = urlsplit(oar_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.path = parts.path
        self.delay_s = delay_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.accepting = threading.Thread(target=self._accept, daemon=True)
        self.accepting.start()

    @property
    def url(self) -> str:
        """The OAR API's URL through the proxy."""
        return f"http://127.0.0.1:{self.port}{self.path}"

    def _accept(self) -> None:
        while True:
            try:
                caller, _ = self.listener.accept()
            except OSError:
                return  # closed
            oar = socket.create_connection(self.upstream)
            for source, target, delay_s in ((caller, oar, 0.0), (oar, caller, self.delay_s)):
                thread = threading.Thread(target=_pipe, args=(source, target, delay_s), daemon=True)
                thread.start()
                self.threads.append(thread)

    def close(self) -> None:
        """Stop accepting, and wait for the answers on their way (each ends once OAR's answer is passed on)."""
        self.listener.shutdown(socket.SHUT_RDWR)  # (wakes the accepting thread; close alone does not, on Linux)
        self.listener.close()
        self.accepting.join()
        for thread in self.threads:
            thread.join()


def _pipe(source: socket.socket, target: socket.socket, delay_s: float) -> None:
    """Copy ``source`` to ``target``, the first bytes ``delay_s`` late, then close ``target``'s sending side."""
    try:
        while data := source.recv(65536):
            if delay_s:
                time.sleep(delay_s)
                delay_s = 0.0
            target.sendall(data)
    except OSError:
        pass  # the other side went away (the client gave up): nothing to pass on
    finally:
        with contextlib.suppress(OSError):  # (already closed)
            target.shutdown(socket.SHUT_WR)


@pytest.fixture
def slow_oar(oar_url: str) -> Iterator[SlowOarStandIn]:
    proxy = SlowOarStandIn(oar_url, ANSWER_DELAY_S)
    yield proxy
    proxy.close()


def delete_timing_out(site: Site, slow_oar: SlowOarStandIn, oar_url: str) -> GeniError:
    """Delete the slice's provisioned lease through the slow OAR; the refusal it gets. The real client is back after."""
    site.backend.client = OarClient(slow_oar.url, timeout_s=CLIENT_TIMEOUT_S)
    try:
        with pytest.raises(GeniError) as slow:
            site.delete()
    finally:
        site.backend.client = OarClient(oar_url, timeout_s=60)
    return slow.value


def test_a_delete_oar_confirms_too_late_is_neither_a_failure_nor_reserved_again(
    site: Site, slow_oar: SlowOarStandIn, oar_url: str, oar_client: OarClient
) -> None:
    site.allocate(["node7"], site.start + 3 * HOUR)
    site.provision()
    (lease_id,) = site.lease_ids()
    job_id = job_of(site, lease_id)

    refused = delete_timing_out(site, slow_oar, oar_url)
    assert refused.code == GeniCode.TIMEDOUT, refused
    assert "may have deleted it" in refused.message and "call Delete again" in refused.message
    assert wait_for_job(oar_client, job_id, {"Error", "Terminated"})  # OAR did delete it
    row = site.backend.jobs.get(lease_id)
    assert row is not None and (row.state, row.message) == (DELETING, f"{DELETE_ASKED} {job_id}")

    (sliver,) = site.status()  # the user's own Delete is not told as the lease's failure
    assert sliver["geni_allocation_status"] == "geni_provisioned"
    assert sliver["geni_operational_status"] == "geni_notready", sliver
    assert "call Delete again" in sliver["geni_error"], sliver

    report = site.backend.reconcile()
    assert report.resubmitted == [] and report.deleted == [lease_id], report
    assert [
        job.id
        for job in oar_client.reservations(site.start, site.start + 5 * HOUR, unplaced=True)
        if job.name == job_name(lease_id)
    ] == []
    assert site.aggregate.bookings.lease_states([lease_id]) == {lease_id: "cancelled"}
    row = site.backend.jobs.get(lease_id)
    assert row is not None and row.state == DELETED


def test_a_delete_asked_again_finishes_one_oar_confirmed_too_late(
    site: Site, slow_oar: SlowOarStandIn, oar_url: str, oar_client: OarClient
) -> None:
    site.allocate(["node8"], site.start + 3 * HOUR)
    site.provision()
    (lease_id,) = site.lease_ids()
    job_id = job_of(site, lease_id)
    assert delete_timing_out(site, slow_oar, oar_url).code == GeniCode.TIMEDOUT
    wait_for_job(oar_client, job_id, {"Error", "Terminated"})
    site.delete()  # OAR answers in time now
    assert site.aggregate.bookings.lease_states([lease_id]) == {lease_id: "cancelled"}
    row = site.backend.jobs.get(lease_id)
    assert row is not None and (row.state, row.job_id) == (DELETED, job_id)


def test_oar_not_answering_at_all_still_answers_unavailable_with_nothing_changed(
    site: Site, oar_url: str, oar_client: OarClient
) -> None:
    site.allocate(["node9"], site.start + 3 * HOUR)
    site.provision()
    (lease_id,) = site.lease_ids()
    job_id = job_of(site, lease_id)
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    site.backend.client = OarClient(f"http://127.0.0.1:{port}/oarapi", timeout_s=CLIENT_TIMEOUT_S)
    try:
        with pytest.raises(GeniError) as down:
            site.delete()
    finally:
        site.backend.client = OarClient(oar_url, timeout_s=60)
    assert down.value.code == GeniCode.UNAVAILABLE and "nothing changed here" in down.value.message
    job = oar_client.job(job_id)
    assert job is not None and job.state == "Waiting"
    assert site.aggregate.bookings.lease_states([lease_id]) == {lease_id: "provisioned"}


@pytest.fixture
def keyed_site(site: Site) -> Iterator[Site]:
    """The site with real Unix accounts (UnixAccounts: Provision makes the login and writes the slice's keys), alice
    pinned to a login of this file's own; the login is removed afterwards, once its OAR jobs are deleted."""
    subprocess.run(["userdel", "-r", KEYS_LOGIN], capture_output=True, check=False)  # a previous run's
    site.aggregate.accounts.pin(site.pki.users["alice"].chain[0].urn or "", KEYS_LOGIN)
    site.aggregate.unix_accounts = UnixAccounts()
    yield site
    for lease in site.aggregate.bookings.leases():  # (as its owner, while the login exists)
        with contextlib.suppress(GeniError):
            site.backend.release(lease)
    subprocess.run(["userdel", "-r", KEYS_LOGIN], capture_output=True, check=False)


def test_the_reconcilers_cancellation_of_a_late_delete_takes_the_slices_keys_away(
    keyed_site: Site, slow_oar: SlowOarStandIn, oar_url: str, oar_client: OarClient
) -> None:
    """The Delete that timed out stopped before taking the slice's keys out of the local accounts; the reconciler's
    round, run as the server runs it, cancels the lease and the aggregate then withdraws them (no lease is left)."""
    site = keyed_site
    alice = site.pki.users["alice"]
    site.allocate(["node6"], site.start + 3 * HOUR)
    users = [{"urn": alice.chain[0].urn, "keys": [ALICES_KEY]}]
    site.aggregate.provision(alice.chain, [site.pki.slice_urn], [alice.slice_cred], {"geni_users": users})
    (lease_id,) = site.lease_ids()
    job_id = job_of(site, lease_id)
    assert UnixAccounts().slice_keys(KEYS_LOGIN, site.pki.slice_urn) == [ALICES_KEY]

    assert delete_timing_out(site, slow_oar, oar_url).code == GeniCode.TIMEDOUT
    wait_for_job(oar_client, job_id, {"Error", "Terminated"})
    assert UnixAccounts().slice_keys(KEYS_LOGIN, site.pki.slice_urn) == [ALICES_KEY], "kept while provisioned"

    (reconcile,) = [task for task in site.backend.background_tasks() if task.repairs]
    _backend_task(site.aggregate, reconcile)
    assert site.aggregate.bookings.lease_states([lease_id]) == {lease_id: "cancelled"}
    assert UnixAccounts().slice_keys(KEYS_LOGIN, site.pki.slice_urn) == []


class OarNeverGotTheDeleteStandIn(OarClient):
    """The real OAR, but its deletion times out before OAR gets it (a connect time-out: an OAR too loaded to accept
    connections cannot be made so on demand): ``delete_job`` raises OarTimeout without asking OAR; every other call
    is asked for real."""

    def delete_job(self, job_id: int, *, user: str) -> None:
        raise OarTimeout(f"timed out connecting to OAR (the deletion of job {job_id} was never sent)")


@contextlib.contextmanager
def oar_client_in_place(site: Site, client: OarClient, oar_url: str) -> Iterator[None]:
    """``client`` (a stand-in) in place of the backend's for the block; the real client back after, whatever
    happened (the fixture's clean-up deletes the jobs through it)."""
    site.backend.client = client
    try:
        yield
    finally:
        site.backend.client = OarClient(oar_url, timeout_s=60)


def provisioned_with_a_delete_never_sent(site: Site, oar_url: str, node: str) -> tuple[str, int]:
    """Provision ``node``, then Delete it through a client whose deletion times out before reaching OAR: the lease
    stays provisioned, its row marked "Delete asked", its job alive in OAR. The lease's id and the job's."""
    site.allocate([node], site.start + 3 * HOUR)
    site.provision()
    (lease_id,) = site.lease_ids()
    job_id = job_of(site, lease_id)
    never_got_it = OarNeverGotTheDeleteStandIn(oar_url, timeout_s=60)
    with oar_client_in_place(site, never_got_it, oar_url), pytest.raises(GeniError) as late:
        site.delete()
    assert late.value.code == GeniCode.TIMEDOUT, late.value
    row = site.backend.jobs.get(lease_id)
    assert row is not None and (row.state, row.message) == (DELETING, f"{DELETE_ASKED} {job_id}")
    return lease_id, job_id


def test_the_reconciler_deletes_again_a_job_whose_delete_never_reached_oar(
    site: Site, oar_url: str, oar_client: OarClient
) -> None:
    """A Delete that timed out before reaching OAR left the job alive: once the row is settled, the round asks OAR
    to delete it again (as its owner) and the lease is cancelled (this round, or the next once OAR ended the job)."""
    lease_id, job_id = provisioned_with_a_delete_never_sent(site, oar_url, "node10")
    job = oar_client.job(job_id)
    assert job is not None and job.state == "Waiting", "OAR never got the deletion"

    settle(site, lease_id)  # older than two time-outs: the Delete is surely over
    reports = [site.backend.reconcile()]
    gone = wait_for_job(oar_client, job_id, {"Error", "Terminated"})
    assert gone.state in ("Error", "Terminated")
    if site.aggregate.bookings.lease_states([lease_id]) != {lease_id: "cancelled"}:
        reports.append(site.backend.reconcile())  # OAR ended the job after the round read it
    assert site.aggregate.bookings.lease_states([lease_id]) == {lease_id: "cancelled"}
    assert [lease for report in reports for lease in report.deleted] == [lease_id], reports
    assert [lease for report in reports for lease in report.cancelled] == [lease_id], reports
    assert all(not report.resubmitted and not report.failed for report in reports), reports
    row = site.backend.jobs.get(lease_id)
    assert row is not None and (row.state, row.job_id) == (DELETED, job_id)
