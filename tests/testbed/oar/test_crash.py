"""sfa-omf killed (SIGKILL) in the middle of a Provision, while OAR is working on the reservation; restarted, it
loses nothing and doubles nothing: if OAR made the reservation, the reconciler finishes the Provision (adopts the
job, once the row is older than two OAR time-outs: a Provision still on its way is left to its call); otherwise the
booking is still allocated and Provision works. The real server (`sfa-omf serve`, configured for OAR through SFA_*
variables, with a short OAR time-out and reconcile period so that the adoption happens within the test, nodes from
`sfa-omf node import --from-oar`) against the real OAR."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.cli import main
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.testbed.oar.client import OarClient, OarJob
from sfa_omf.times import format_time
from tests.ports import free_port
from tests.testbed.oar.conftest import wait_for_job
from tests.tls_harness import proxy

NODE = "urn:publicid:IDN+testbed+node+node7"
SLICE = "urn:publicid:IDN+testbed+slice+demo"


class Server:
    """``sfa-omf serve`` in a subprocess, on free ports, with the OAR backend."""

    def __init__(self, config: str, oar_url: str, log: Path) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "SFA_AGGREGATE_TYPE": "oar",
            "SFA_OAR_API_URL": oar_url,
            "SFA_AGGREGATE_PORT": str(self.port),
            "SFA_REGISTRY_PORT": str(free_port()),
            # Short, so that the reconciler's rounds adopt the job of the interrupted Provision within the test (a
            # row is adopted once older than two time-outs).
            "SFA_OAR_TIMEOUT_S": "5",
            "SFA_OAR_RECONCILE_S": "5",
        }
        self.config, self.log = config, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sfa_omf.cli", "serve", "--config", self.config], env=self.env, stderr=log
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            assert self.process.poll() is None, self.log.read_text()
            time.sleep(0.1)
        pytest.fail(f"sfa-omf serve did not listen: {self.log.read_text()}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture
def server(oar_url: str, oar_users: tuple[str, ...], tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    directory = tmp_path / "tb"
    init_directory(str(directory), "testbed", ("alice",))
    config = str(directory / "sfa-omf.conf")
    assert main(["node", "import", "--from-oar", oar_url, "--config", config]) == 0
    assert main(["account", "map", "urn:publicid:IDN+testbed+user+alice", "alice", "--config", config]) == 0
    running = Server(config, oar_url, tmp_path / "server.log")
    yield running, directory
    running.stop()


def ok(answer: dict[str, Any]) -> Any:
    assert answer["code"]["geni_code"] == 0, answer["output"]
    return answer["value"]


def test_a_crash_mid_provision_loses_and_doubles_nothing(server: tuple[Server, Path], oar_client: OarClient) -> None:
    running, directory = server
    sfi = directory / "users" / "alice" / "sfi"
    slice_cred = (sfi / "testbed.alice-testbed.demo.slice.cred").read_text()
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(
        days=2, hours=random.randrange(18 * 24)
    )
    rspec = (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3">'
        f'<node client_id="n" component_id="{NODE}" exclusive="true"/></rspec>'
    )
    window = {"geni_start_time": format_time(start), "geni_end_time": format_time(start + timedelta(hours=1))}
    running.start()

    def client() -> Any:
        url = f"https://127.0.0.1:{running.port}/"
        return proxy(url, str(sfi / "testbed.alice.user.gid"), str(sfi / "testbed.alice.pkey"))

    (sliver,) = ok(client().Allocate(SLICE, [slice_cred], rspec, window))["geni_slivers"]
    outcome: list[Any] = []
    provisioning = threading.Thread(
        target=lambda: outcome.append(_call(lambda: client().Provision([SLICE], [slice_cred], {})))
    )
    provisioning.start()
    time.sleep(0.5)  # inside OAR's ~1.2 s reservation call
    running.kill()
    provisioning.join(timeout=60)
    assert outcome and isinstance(outcome[0], Exception), "the caller never got an answer"

    running.start()  # the reconciler runs at start, then every 5 s
    made_by_oar = [job for job in oar_client.reservations(start, start + timedelta(hours=1)) if _lease_job(job)]
    if made_by_oar:  # OAR made the reservation before the crash: the reconciler adopts it, Provision is not called
        deadline = time.monotonic() + 120
        status = ""
        while time.monotonic() < deadline and status != "geni_provisioned":
            time.sleep(1)
            (current,) = ok(client().Status([SLICE], [slice_cred], {}))["geni_slivers"]
            status = current["geni_allocation_status"]
        assert status == "geni_provisioned", "the reconciler adopted the job OAR made"
    else:  # OAR never got the reservation: the booking waited, allocated
        (current,) = ok(client().Status([SLICE], [slice_cred], {}))["geni_slivers"]
        assert current["geni_allocation_status"] == "geni_allocated"
        ok(client().Provision([SLICE], [slice_cred], {}))
    lease_jobs = [job for job in oar_client.reservations(start, start + timedelta(hours=1)) if _lease_job(job)]
    assert len(lease_jobs) == 1, lease_jobs
    (job,) = lease_jobs
    assert (job.start_time, job.walltime_s, job.owner) == (start, 3599, "alice")
    (described,) = ok(client().Status([SLICE], [slice_cred], {}))["geni_slivers"]
    assert described["geni_sliver_urn"] == sliver["geni_sliver_urn"]
    assert described["geni_allocation_status"] == "geni_provisioned"
    ok(client().Delete([SLICE], [slice_cred], {}))
    assert wait_for_job(oar_client, job.id, {"Error", "Terminated"}).state in ("Error", "Terminated")


def _lease_job(job: OarJob) -> bool:
    """Whether ``job`` is one named after a lease, on the test's node."""
    return job.name.startswith("sfa-omf_") and job.nodes == ("node7",)


def _call(call: Any) -> Any:
    try:
        return call()
    except Exception as exc:  # the connection dies with the server
        return exc
