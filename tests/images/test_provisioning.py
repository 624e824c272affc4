"""perjob or ondemand, node by node: the decision table, the embedded backend's plan from the calendar, and the OAR
backend's deploy command (planned from the calendar; OAR itself is never asked here, its client points nowhere)."""

from __future__ import annotations

import pytest

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.records import BookingRequest, LeaseRecord
from sfa_omf.images.provisioning import ONDEMAND, PERJOB, decide
from sfa_omf.testbed.embedded import EmbeddedTestbed
from sfa_omf.testbed.oar.backend import OarTestbed
from sfa_omf.testbed.oar.client import OarClient
from tests.calendar.conftest import SLICE, SLICE_EXPIRES, Calendar, at, node_urn

N1, N2 = node_urn("n1"), node_urn("n2")


@pytest.mark.parametrize(
    ("mode", "image", "running", "reprovision", "why"),
    [
        (PERJOB, "deb", "deb", True, "perjob: every lease installs its image"),
        (PERJOB, "deb", "", True, "perjob"),
        (ONDEMAND, "deb", "deb", False, "already runs deb"),
        (ONDEMAND, "deb", "old", True, "runs old"),
        (ONDEMAND, "deb", "", True, "unknown image"),
        (PERJOB, "", "deb", False, "no image asked for"),
        (ONDEMAND, "", "deb", False, "no image asked for"),
    ],
)
def test_the_decision_table(mode: str, image: str, running: str, reprovision: bool, why: str) -> None:
    step = decide(mode, "n1", image, running)
    assert (step.node, step.image, step.running, step.reprovision) == ("n1", image, running, reprovision)
    assert why in step.why


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="one of perjob, ondemand"):
        decide("always", "n1", "deb", "")


def history(calendar: Calendar) -> LeaseRecord:
    """n1 ran deb and n2 ran old in provisioned leases before; the returned lease asks deb on both, later."""
    for node, image, hours in ((N1, "deb", 0), (N2, "old", 1)):
        lease = calendar.bookings.book(
            SLICE, SLICE_EXPIRES, [BookingRequest(node, at(hours), at(hours + 1), disk_image=image)]
        ).leases[0]
        calendar.bookings.mark_provisioned(lease.id)
    calendar.bookings.book(  # an allocation never provisioned installs nothing: it does not count
        SLICE, SLICE_EXPIRES, [BookingRequest(N1, at(2), at(3), disk_image="other")]
    )
    return calendar.bookings.book(
        SLICE, SLICE_EXPIRES, [BookingRequest(node, at(4), at(5), disk_image="deb") for node in (N1, N2)]
    ).leases[0]


@pytest.mark.parametrize(("mode", "installed"), [(ONDEMAND, {N2}), (PERJOB, {N1, N2})])
def test_the_embedded_backend_plans_each_node(
    calendar: Calendar, database: Database, mode: str, installed: set[str]
) -> None:
    lease = history(calendar)
    backend = EmbeddedTestbed(database, mode)
    backend.provision(lease, "alice", [])
    plan = {step.node: step for step in backend.deployments[lease.id]}
    assert {node for node, step in plan.items() if step.reprovision} == installed
    assert (plan[N1].running, plan[N2].running) == ("deb", "old")
    backend.release(lease)
    assert lease.id not in backend.deployments


@pytest.mark.parametrize(("mode", "command"), [(ONDEMAND, "/sbin/deploy deb n2"), (PERJOB, "/sbin/deploy deb n1,n2")])
def test_the_oar_deploy_command_follows_the_mode(
    calendar: Calendar, database: Database, mode: str, command: str
) -> None:
    lease = history(calendar)
    oar = OarTestbed(
        OarClient("http://127.0.0.1:9/oarapi"),  # never called: planning reads the calendar only
        database,
        "testbed",
        job_type="deploy",
        deploy_command="/sbin/deploy",
        provisioning_mode=mode,
    )
    assert oar._deploy_command(lease) == command
