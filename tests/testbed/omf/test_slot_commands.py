"""``sfa-omf omf slots`` and ``sfa-omf omf retry``, on SQLite and on the real PostgreSQL, over slot records the real
slot keeper made: the aggregate's own Allocate and Provision (called in-process, no TLS server: the commands only read
and write the calendar), FRCP over the real RabbitMQ to the stand-ins for the Ruby controllers (conformance fixtures,
tests/testbed/omf/node_controllers_standin.py and user_factory_standin.py), and the keeper's passes at chosen times.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.calendar.database import sqlite_url
from sfa_omf.calendar.queries import from_s, to_s
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.cli import main
from sfa_omf.config import write_config
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.server.app import build_aggregate
from sfa_omf.testbed.omf.backend import OmfTestbed
from sfa_omf.testbed.omf.frcp import SignatureChecker, Signer
from sfa_omf.testbed.omf.slot_records import (
    END_FAILED,
    END_RETRY_FIRST_S,
    ENDED,
    FAILED,
    MAX_END_ATTEMPTS,
    PROVISIONED,
    READY,
    STARTING,
)
from sfa_omf.testbed.omf.slots import SlotKeeper, SlotReport
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.gid import load_gid_chain_file
from sfa_omf.trust.roots import load_trusted_roots
from tests.postgres import empty_postgres
from tests.sshkeys import ssh_key
from tests.testbed.omf.node_controllers_standin import NodeControllersStandIn
from tests.testbed.omf.omf_lab import IMAGE, NODES, SLICE, Lab, node_urn, rspec, slot_start, users
from tests.testbed.omf.user_factory_standin import UserFactoryStandIn

REFUSAL = "You don't have a valid lease for node1"


@dataclass
class Site:
    aggregate: Aggregate
    nodes: NodeControllersStandIn
    config: str  # the configuration file the commands read

    @property
    def keeper(self) -> SlotKeeper:
        backend = self.aggregate.backend
        assert isinstance(backend, OmfTestbed) and backend.slots is not None
        return backend.slots

    def pass_at(self, moment: datetime) -> SlotReport:
        self.aggregate.clock = lambda: moment
        self.keeper.clock = lambda: moment
        return self.keeper.run()


@pytest.fixture(params=["sqlite", "postgresql"])
def site(request: pytest.FixtureRequest, lab: Lab, tmp_path: Path, rabbitmq_url: str) -> Iterator[Site]:
    """The lab's aggregate (``type = omf``) on SQLite or PostgreSQL, its FRCP peers the stand-ins on topics of this
    test, and a configuration file naming its database for the commands."""
    database_url = sqlite_url(str(tmp_path / "calendar.sqlite")) if request.param == "sqlite" else empty_postgres()
    prefix = uuid.uuid4().hex[:8]  # topics of this test only: others use the same broker
    settings = replace(
        lab.settings,
        aggregate_type="omf",
        database_url=database_url,
        frcp_amqp_url=rabbitmq_url,
        frcp_user_factory=f"user_factory-{prefix}",
        frcp_cm_factory=f"cm_factory-{prefix}",
        frcp_frisbee_factory=f"frisbee_factory-{prefix}",
        frcp_timeout_s=20,
        frcp_boot_timeout_s=20,
    )
    authority = LocalAuthority.load(str(lab.directory), "lab")
    checker = SignatureChecker(load_trusted_roots(settings.trusted_roots_dir))
    accounts = UserFactoryStandIn(
        rabbitmq_url,
        settings.frcp_user_factory,
        tmp_path / "root",
        Signer(authority.key, authority.chain, "uf"),
        checker,
    )
    nodes = NodeControllersStandIn(
        rabbitmq_url,
        settings.frcp_cm_factory,
        settings.frcp_frisbee_factory,
        tmp_path / "testbed",
        Signer(authority.key, authority.chain, "cm"),
        checker,
    )
    accounts.start()
    nodes.start()
    (tmp_path / "testbed" / "images" / IMAGE).write_bytes(b"an image of the baseline system\n" * 64)
    config = tmp_path / "sfa-omf.conf"
    write_config(str(config), settings)
    aggregate = build_aggregate(settings)
    try:
        for name in NODES:
            aggregate.inventory.add_node(NodeSpec(node_urn(name), name, disk_images=({"name": IMAGE},)))
        yield Site(aggregate, nodes, str(config))
    finally:
        aggregate.database.dispose()
        accounts.stop()
        nodes.stop()


def _provisioned(site: Site, lab: Lab, images: dict[str, str]) -> str:
    """Ann's lease on ``images``' nodes, two hours ahead, allocated and provisioned through the aggregate; its id."""
    chain = load_gid_chain_file(lab.chain)
    site.aggregate.allocate(chain, SLICE, [lab.slice_cred], rspec(images), {})
    site.aggregate.provision(chain, [SLICE], [lab.slice_cred], users(ssh_key("ann@laptop")))
    (lease,) = site.aggregate.bookings.leases(slice_urn=SLICE)
    return str(lease.id)


def _command(capsys: pytest.CaptureFixture[str], site: Site, *argv: str) -> tuple[int, str, str]:
    """``sfa-omf omf ARGV --config <the site's>``: exit status, standard output, standard error."""
    capsys.readouterr()
    status = main(["omf", *argv, "--config", site.config])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _listed(capsys: pytest.CaptureFixture[str], site: Site, *options: str) -> list[dict[str, Any]]:
    status, out, _ = _command(capsys, site, "slots", "--json", *options)
    assert status == 0
    listed = json.loads(out)
    assert isinstance(listed, list)
    return listed


def _refused_end(site: Site, lab: Lab) -> tuple[str, datetime]:
    """A lease on node1 started, whose end cm_factory refused MAX_END_ATTEMPTS times: its id and the last try."""
    lease = _provisioned(site, lab, {"node1": ""})
    start = slot_start()
    assert site.pass_at(start).started == [lease]
    site.nodes.fail[("node1", "off")] = ("AUTH", REFUSAL)
    moment = start
    for n in range(MAX_END_ATTEMPTS):
        moment = start + timedelta(hours=1, seconds=15 * n)
        assert site.pass_at(moment).end_failed == [lease]
    return lease, moment


def test_a_refused_end_is_listed_with_its_node_steps_tries_and_next_try(
    site: Site, lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    lease, last_try = _refused_end(site, lab)
    (listed,) = _listed(capsys, site)
    start = slot_start()
    assert listed == {
        "lease": lease,
        "slice": SLICE,
        "lease_state": "provisioned",
        "start": format_time(start),
        "end": format_time(start + timedelta(hours=1)),
        "nodes": ["node1"],
        "phase": END_FAILED,
        "failures": {"off:node1": f"cm_factory could not switch off: {REFUSAL}"},
        "message": f"node1: cm_factory could not switch off: {REFUSAL}",
        "attempts": MAX_END_ATTEMPTS,
        "last_try": format_time(last_try),
        "next_try": format_time(last_try + timedelta(seconds=END_RETRY_FIRST_S)),
    }
    status, out, _ = _command(capsys, site, "slots")
    assert status == 0
    header, row = out.splitlines()
    assert header.split()[:4] == ["LEASE", "PHASE", "LEASE", "END"]
    assert row.startswith(f"{lease}  end_failed  {format_time(start + timedelta(hours=1))}  node1  10  ")
    assert format_time(last_try + timedelta(seconds=END_RETRY_FIRST_S)) in row and REFUSAL in row


def test_retry_makes_a_waiting_end_due_at_the_next_pass_and_writes_nothing_else(
    site: Site, lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    lease, last_try = _refused_end(site, lab)
    records = site.keeper.records
    before = records.get(lease)
    assert before is not None
    del site.nodes.fail[("node1", "off")]  # the operator mended the controller
    assert site.pass_at(last_try + timedelta(seconds=1)).end_failed == [], "tried before its wait is over"
    status, out, _ = _command(capsys, site, "retry", lease)
    assert status == 0 and "is due now" in out
    after = records.get(lease)
    assert after is not None and after.retry_due_s is not None and after.retry_due_s <= to_s(utcnow())
    assert replace(after, retry_due_s=None) == before, "retry wrote more than when the end is due"
    (listed,) = _listed(capsys, site)
    assert listed["next_try"] is not None and listed["next_try"] <= format_time(utcnow())
    assert listed["last_try"] == format_time(from_s(before.updated_s)), "the last try shown is not the last one made"
    status, out, _ = _command(capsys, site, "slots")
    assert status == 0 and "  next pass  " in out
    # The wait is over: the next pass (still within the minute the controller's refusal asked to wait) ends it.
    assert site.pass_at(last_try + timedelta(seconds=2)).ended == [lease]
    assert site.nodes.power == {"node1": "off"}
    ended = records.get(lease)
    assert ended is not None and ended.phase == ENDED
    assert _listed(capsys, site) == []
    assert [entry["phase"] for entry in _listed(capsys, site, "--all")] == [ENDED]


def test_a_failed_start_is_listed_and_only_the_work_to_see_to(
    site: Site, lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """node2's cm_factory refuses to switch it on: its start failed (listed, tried again only by geni_restart); the
    same lease's start done on node1 alone is not a second entry, and a lease started well is listed with --all."""
    lease = _provisioned(site, lab, {"node1": "", "node2": ""})
    site.nodes.fail[("node2", "on")] = ("HTTP", "failed to reach cm, ip: 10.0.0.2")
    start = slot_start()
    assert site.pass_at(start).failed == [lease]
    (listed,) = _listed(capsys, site)
    assert (listed["lease"], listed["phase"], listed["nodes"]) == (lease, FAILED, ["node1", "node2"])
    assert listed["failures"] == {node_urn("node2"): "cm_factory could not switch on: failed to reach cm, ip: 10.0.0.2"}
    assert listed["next_try"] is None and listed["attempts"] == 0
    status, out, _ = _command(capsys, site, "slots")
    assert status == 0 and "on geni_restart" in out and "node2: cm_factory could not switch on" in out
    # The start done again (geni_restart) works: nothing needs attention, --all shows the lease ready.
    del site.nodes.fail[("node2", "on")]
    chain = load_gid_chain_file(lab.chain)
    site.aggregate.perform_operational_action(chain, [SLICE], [lab.slice_cred], "geni_restart", {})
    assert site.pass_at(start + timedelta(seconds=15)).started == [lease]
    assert _listed(capsys, site) == []
    status, out, _ = _command(capsys, site, "slots")
    assert status == 0 and out.strip() == "no lease's slot work needs attention"
    assert [(entry["lease"], entry["phase"]) for entry in _listed(capsys, site, "--all")] == [(lease, READY)]


def test_a_start_taken_back_after_a_crash_is_listed_as_waiting(
    site: Site, lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """A start claimed by a process that died is taken back (release_stale): due again at the next pass."""
    lease = _provisioned(site, lab, {"node1": ""})
    start = slot_start()
    records = site.keeper.records
    assert _listed(capsys, site) == [] and [entry["phase"] for entry in _listed(capsys, site, "--all")] == [PROVISIONED]
    assert records.claim(lease, (PROVISIONED,), STARTING, to_s(start))
    assert records.release_stale(to_s(start) + 1, to_s(start) + 2) == 1
    (listed,) = _listed(capsys, site)
    assert (listed["phase"], listed["next_try"]) == (PROVISIONED, format_time(start))
    assert listed["message"].startswith("interrupted")


def test_retry_refuses_what_is_not_a_failed_end_and_changes_nothing(
    site: Site, lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    lease = _provisioned(site, lab, {"node1": ""})
    records = site.keeper.records
    status, _, err = _command(capsys, site, "retry", "no-such-lease")
    assert status == 2 and "no slot record of lease 'no-such-lease'" in err
    before = records.get(lease)
    status, _, err = _command(capsys, site, "retry", lease)
    assert status == 2 and f"lease {lease}'s slot is provisioned" in err and "nothing was changed" in err
    assert records.get(lease) == before
    # An end refused fewer times than MAX_END_ATTEMPTS is tried at every pass: due already, nothing written.
    start = slot_start()
    site.pass_at(start)
    site.nodes.fail[("node1", "off")] = ("AUTH", REFUSAL)
    assert site.pass_at(start + timedelta(hours=1)).end_failed == [lease]
    before = records.get(lease)
    assert before is not None and before.attempts == 1
    status, out, _ = _command(capsys, site, "retry", lease)
    assert status == 0 and "due already" in out and "nothing was changed" in out
    assert records.get(lease) == before
