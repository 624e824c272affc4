"""Slot boundaries on an OMF testbed, through the AM API over real TLS, FRCP over the real RabbitMQ and the stand-ins
for user_factory, cm_factory and frisbee_factory (conformance fixtures for the Ruby controllers): the image load in
order and power on at a lease's start, power off and keys removed at its end, every controller error or silence in
Status as geni_failed with its reason (the booking kept), geni_start/stop/restart as cm on/off/reset, a restart of
the server that neither redoes nor loses the work, the broker going away and coming back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pika
import pytest

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.outbox import NotifyEvents, RecordedEvent
from sfa_omf.calendar.queries import to_s
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.records import Record
from sfa_omf.testbed.omf.backend import make_omf_backend
from sfa_omf.testbed.omf.frcp import address, encode, new_message
from sfa_omf.testbed.omf.slot_records import ENDED, PROVISIONED, STARTING
from sfa_omf.testbed.omf.slots import SlotReport
from sfa_omf.times import format_time
from tests.sshkeys import ssh_key
from tests.testbed.omf.omf_lab import (
    ANN,
    IMAGE,
    SLICE,
    Lab,
    Running,
    allocation_states,
    rspec,
    serve,
    slivers,
    slot_start,
    users,
)
from tests.testbed.omf.tcp_forwarder import TcpForwarder


def provisioned(running: Running, lab: Lab, images: dict[str, str], *keys: str) -> str:
    """Allocate and Provision one lease on ``images``' nodes; its id."""
    allocated = running.am.Allocate(SLICE, [lab.slice_cred], rspec(images), {})
    assert allocated["code"]["geni_code"] == 0, allocated["output"]
    answer = running.am.Provision([SLICE], [lab.slice_cred], users(*keys))
    assert answer["code"]["geni_code"] == 0, answer["output"]
    (lease,) = running.aggregate.bookings.leases(slice_urn=SLICE)
    return str(lease.id)


def pass_at(running: Running, moment: datetime) -> SlotReport:
    running.at(moment)
    assert running.backend.slots is not None
    return running.backend.slots.run()


def states(running: Running, lab: Lab) -> dict[str, tuple[str, str]]:
    """node name -> (operational state, error), from Status."""
    node_of = {
        sliver.urn: sliver.node.rsplit("+", 1)[-1]
        for lease in running.aggregate.bookings.leases(slice_urn=SLICE)
        for sliver in lease.slivers
    }
    return {
        node_of[sliver["geni_sliver_urn"]]: (sliver["geni_operational_status"], sliver["geni_error"])
        for sliver in slivers(running, lab)
    }


def failed_events(running: Running) -> list[RecordedEvent]:
    """The "failed" events recorded for the lease's users (the notifier sends each once)."""
    recorded = NotifyEvents(running.aggregate.database).since(datetime.fromtimestamp(0, UTC))
    return [event for event in recorded if event.event == "failed"]


def test_the_image_is_loaded_in_order_then_the_nodes_powered_on_once(running: Running, lab: Lab) -> None:
    lease = provisioned(running, lab, {"node1": IMAGE, "node2": ""}, ssh_key("ann@laptop"))
    start = slot_start()
    assert pass_at(running, start - timedelta(seconds=1)).started == []  # not yet
    assert running.nodes.steps == []
    report = pass_at(running, start + timedelta(seconds=5))
    assert report.started == [lease] and report.failed == []
    assert running.nodes.steps == [
        ("ports", "7000"),
        ("frisbeed", IMAGE),
        ("start_on_pxe", "node1"),
        ("frisbee", "node1"),
        ("written", "node1"),
        ("start_without_pxe", "node1"),
        ("release", "frisbee"),
        ("release", "frisbeed"),
        ("on", "node1"),
        ("on", "node2"),
    ]
    disk = running.nodes.root / "disks" / "node1"
    assert disk.read_bytes() == (running.nodes.root / "images" / IMAGE).read_bytes()
    assert not (running.nodes.root / "disks" / "node2").exists()
    assert running.nodes.power == {"node1": "on", "node2": "on"}
    assert all(state == ("geni_ready", "") for state in states(running, lab).values())
    # Every request was signed by the aggregate's FRCP account.
    assert set(running.nodes.signers) == {"root"}
    # A later pass (or another thread's) does not load it again.
    assert pass_at(running, start + timedelta(minutes=5)).started == []
    assert len(running.nodes.steps) == 10


def test_at_the_end_the_nodes_are_powered_off_and_the_keys_removed(running: Running, lab: Lab) -> None:
    lease = provisioned(running, lab, {"node1": ""}, ssh_key("ann@laptop"))
    login = running.aggregate.accounts.login_for("urn:publicid:IDN+lab+user+ann", SLICE)
    keys = running.root / "home" / login / ".ssh" / "authorized_keys"
    assert keys.read_text() == f"{ssh_key('ann@laptop')}\n"
    start = slot_start()
    assert pass_at(running, start).started == [lease]
    assert running.nodes.power == {"node1": "on"}
    report = pass_at(running, start + timedelta(hours=1))  # the slot's end
    assert report.ended == [lease] and report.end_failed == []
    assert running.nodes.steps[-1] == ("off", "node1")
    assert running.nodes.power == {"node1": "off"}
    assert keys.read_text() == ""  # per-user account: kept, without this lease's keys
    assert (running.root / "home" / login).is_dir()
    assert pass_at(running, start + timedelta(hours=2)).ended == []  # done once


def test_a_login_shared_by_two_slices_keeps_both_slices_keys(running: Running, lab: Lab) -> None:
    """user_factory's auth_keys overwrites authorized_keys: Provision and geni_update_users in one slice must not
    take away the keys another live slice installed for the same (per-user) login."""
    authority = LocalAuthority.load(str(lab.directory), "lab")
    other_slice, _ = authority.issue_gid("lab.other", "slice")
    other_cred = authority.credential(authority.issued_chain("lab.ann"), other_slice)
    other_urn = other_slice[0].urn
    provisioned(running, lab, {"node1": ""}, ssh_key("ann@laptop"))
    login = running.aggregate.accounts.login_for(ANN, SLICE)
    assert running.aggregate.accounts.login_for(ANN, other_urn) == login  # per-user: one login for both slices
    keys = running.root / "home" / login / ".ssh" / "authorized_keys"
    allocated = running.am.Allocate(other_urn, [other_cred], rspec({"node2": ""}), {})
    assert allocated["code"]["geni_code"] == 0, allocated["output"]
    answer = running.am.Provision([other_urn], [other_cred], users(ssh_key("ann@desktop")))
    assert answer["code"]["geni_code"] == 0, answer["output"]
    assert keys.read_text().splitlines() == [ssh_key("ann@desktop"), ssh_key("ann@laptop")]
    updated = running.am.PerformOperationalAction(
        [other_urn], [other_cred], "geni_update_users", users(ssh_key("ann@tablet"))
    )
    assert updated["code"]["geni_code"] == 0, updated["output"]
    assert keys.read_text().splitlines() == [ssh_key("ann@tablet"), ssh_key("ann@laptop")]
    # The first slice's lease ends: only the other slice's keys stay.
    (first,) = running.aggregate.bookings.leases(slice_urn=SLICE)
    start = slot_start()
    pass_at(running, start)
    running.at(start + timedelta(minutes=5))
    assert running.am.Delete([SLICE], [lab.slice_cred], {})["code"]["geni_code"] == 0
    assert str(first.id) in pass_at(running, start + timedelta(minutes=5)).ended
    assert keys.read_text().splitlines() == [ssh_key("ann@tablet")]


def test_a_per_slice_account_is_closed_at_the_end(
    running_reactor: Any, lab: Lab, tmp_path: Path, rabbitmq_url: str
) -> None:
    for running in serve(running_reactor, lab, tmp_path, rabbitmq_url, account_policy="per-slice"):
        lease = provisioned(running, lab, {"node1": ""}, ssh_key("ann@laptop"))
        login = running.aggregate.accounts.login_for("urn:publicid:IDN+lab+user+ann", SLICE)
        assert (running.root / "home" / login).is_dir()
        assert pass_at(running, slot_start() + timedelta(hours=1)).ended == [lease]
        assert not (running.root / "home" / login).exists()
        assert running.standin.handled[-1].props == {"deluser": {"username": login}}


def test_a_deleted_lease_is_powered_off_by_the_next_pass(running: Running, lab: Lab) -> None:
    lease = provisioned(running, lab, {"node1": ""}, ssh_key("ann@laptop"))
    start = slot_start()
    pass_at(running, start + timedelta(minutes=1))
    running.at(start + timedelta(minutes=2))
    assert running.am.Delete([SLICE], [lab.slice_cred], {})["code"]["geni_code"] == 0
    assert pass_at(running, start + timedelta(minutes=2)).ended == [lease]
    assert running.nodes.power == {"node1": "off"}


def test_a_controller_error_is_geni_failed_with_its_reason_and_the_booking_kept(running: Running, lab: Lab) -> None:
    lease = provisioned(running, lab, {"node1": "", "node2": ""})
    running.nodes.fail[("node2", "on")] = ("HTTP", "failed to reach cm, ip: 10.0.0.102.")
    start = slot_start()
    assert pass_at(running, start + timedelta(seconds=1)).failed == [lease]
    assert states(running, lab) == {
        "node1": ("geni_ready", ""),
        "node2": ("geni_failed", "cm_factory could not switch on: failed to reach cm, ip: 10.0.0.102."),
    }
    assert allocation_states(running, lab) == ["geni_provisioned", "geni_provisioned"]
    # The slice's users are told (notifications.md: "failed"), once, with the controller's words.
    (told,) = failed_events(running)
    assert (told.slice_urn, told.payload["lease"]) == (SLICE, lease)
    assert told.payload["reason"] == "node2: cm_factory could not switch on: failed to reach cm, ip: 10.0.0.102."
    # geni_restart after the failure: the start is done again by the next pass.
    del running.nodes.fail[("node2", "on")]
    restart = running.am.PerformOperationalAction([SLICE], [lab.slice_cred], "geni_restart", {})
    assert restart["code"]["geni_code"] == 0, restart["output"]
    assert pass_at(running, start + timedelta(minutes=1)).started == [lease]
    assert {state for state, _ in states(running, lab).values()} == {"geni_ready"}
    assert len(failed_events(running)) == 1  # a start that worked tells nobody of a failure


def test_a_failed_image_write_is_that_slivers_reason(running: Running, lab: Lab) -> None:
    provisioned(running, lab, {"node1": IMAGE, "node2": IMAGE})
    running.nodes.frisbee_fail["node2"] = "/dev/sda: no such device"
    pass_at(running, slot_start())
    assert states(running, lab) == {
        "node1": ("geni_ready", ""),
        "node2": ("geni_failed", "frisbee could not write the image: /dev/sda: no such device"),
    }
    assert ("start_without_pxe", "node2") not in running.nodes.steps  # left out of the steps after the failure
    assert ("on", "node2") not in running.nodes.steps


def test_a_controller_that_never_answers_is_geni_failed_and_a_forged_answer_does_not_count(
    running_reactor: Any, lab: Lab, tmp_path: Path, rabbitmq_url: str
) -> None:
    for running in serve(running_reactor, lab, tmp_path, rabbitmq_url, frcp_boot_timeout_s=2):
        provisioned(running, lab, {"node1": ""})
        running.nodes.silent.add("node1")
        # Someone without the testbed's trust publishes "node1 is on" on cm_factory's topic, as cm_factory's STATUS
        # inform would say it: unsigned, so refused (the aggregate accepts signed informs from trusted signers only).
        forged = new_message(
            "inform", address("127.0.0.1", "intruder"), {"node_name": "node1", "current": "on"}, itype="STATUS"
        )
        running.nodes.later(0.5, lambda running=running, forged=forged: _publish(running, forged))
        pass_at(running, slot_start())
        ((state, error),) = states(running, lab).values()
        assert state == "geni_failed"
        assert error == "cm_factory could not switch on: no answer about node1 to switch on (cm_factory) within 2 s"
        assert allocation_states(running, lab) == ["geni_provisioned"]


def _publish(running: Running, message: Any) -> None:
    body, content_type = encode(message, None)
    running.nodes.channel.basic_publish(
        exchange=running.nodes.topic,
        routing_key="o.info",
        body=body,
        properties=pika.BasicProperties(content_type=content_type),
    )


def test_operational_actions_are_cm_on_off_reset(running: Running, lab: Lab) -> None:
    provisioned(running, lab, {"node1": "", "node2": ""})
    start = slot_start()
    pass_at(running, start)
    expected = {"geni_stop": "off", "geni_start": "on", "geni_restart": "reset"}
    for action, status in expected.items():
        answer = running.am.PerformOperationalAction([SLICE], [lab.slice_cred], action, {})
        assert answer["code"]["geni_code"] == 0, answer["output"]
        assert running.nodes.steps[-2:] == [(status, "node1"), (status, "node2")]
    assert running.nodes.power == {"node1": "on", "node2": "on"}
    # A refusal: the experimenter reads the controller's reason, and the calendar keeps the state it had.
    running.nodes.fail[("node2", "off")] = ("AUTH", "You don't have a valid lease for node2")
    answer = running.am.PerformOperationalAction([SLICE], [lab.slice_cred], "geni_stop", {})
    assert answer["code"]["geni_code"] == 2
    assert "node2: cm_factory could not switch off: You don't have a valid lease for node2" in answer["output"]
    assert "switched off: node1" in answer["output"]
    assert {state for state, _ in states(running, lab).values()} == {"geni_ready"}


def test_a_restarted_server_neither_redoes_nor_loses_the_work(running: Running, lab: Lab) -> None:
    lease = provisioned(running, lab, {"node1": ""})
    start = slot_start()
    database = Database(running.settings.calendar_url)
    records = running.backend.slots.records if running.backend.slots else None
    assert records is not None
    # The server died while starting the lease: its claim is left behind.
    assert records.claim(lease, (PROVISIONED,), STARTING, to_s(start))
    restarted = make_omf_backend(running.settings, database)  # what `sfa-omf serve` builds after a restart
    assert restarted.slots is not None
    restarted.slots.clock = lambda: start + timedelta(minutes=1)
    assert restarted.slots.run().started == []  # the claim may still be at work somewhere
    later = start + timedelta(seconds=restarted.slots.stale_after_s + 1)
    restarted.slots.clock = lambda: later
    report = restarted.slots.run()
    assert report.taken_back == 1 and report.started == [lease]
    assert running.nodes.steps == [("on", "node1")]
    again = make_omf_backend(running.settings, database)  # and once more: the start is not redone
    assert again.slots is not None
    again.slots.clock = lambda: later
    assert again.slots.run().started == [] and running.nodes.steps == [("on", "node1")]


def test_the_broker_down_is_unavailable_then_everything_recovers(
    running_reactor: Any, lab: Lab, tmp_path: Path, rabbitmq_url: str
) -> None:
    broker = pika.URLParameters(rabbitmq_url)
    forwarder = TcpForwarder(broker.host, broker.port)
    through = rabbitmq_url.replace(f"{broker.host}:{broker.port}", f"127.0.0.1:{forwarder.port}")
    assert through != rabbitmq_url
    for running in serve(running_reactor, lab, tmp_path, rabbitmq_url, frcp_amqp_url=through):
        assert running.am.Allocate(SLICE, [lab.slice_cred], rspec({"node1": ""}), {})["code"]["geni_code"] == 0
        down = running.am.Provision([SLICE], [lab.slice_cred], users(ssh_key("ann@laptop")))
        assert down["code"]["geni_code"] == 11
        assert f"127.0.0.1:{forwarder.port}/{broker.virtual_host} cannot be reached" in down["output"]
        assert allocation_states(running, lab) == ["geni_allocated"]
        forwarder.start()
        try:
            up = running.am.Provision([SLICE], [lab.slice_cred], users(ssh_key("ann@laptop")))
            assert up["code"]["geni_code"] == 0, up["output"]
            (lease,) = running.aggregate.bookings.leases(slice_urn=SLICE)
            forwarder.stop()  # down again when the slot starts: the start waits, and says why
            start = slot_start()
            report = pass_at(running, start)
            assert report.postponed == [lease.id], report
            ((state, error),) = states(running, lab).values()
            assert state == "geni_configuring" and error.startswith("waiting for the testbed: the AMQP broker at")
            forwarder.start()
            assert pass_at(running, start + timedelta(seconds=30)).started == [lease.id]
            assert states(running, lab) == {"node1": ("geni_ready", "")}
        finally:
            forwarder.stop()


def test_an_operational_action_no_controller_answers_is_timedout_and_records_nothing(
    running_reactor: Any, lab: Lab, tmp_path: Path, rabbitmq_url: str
) -> None:
    for running in serve(running_reactor, lab, tmp_path, rabbitmq_url, frcp_boot_timeout_s=1):
        provisioned(running, lab, {"node1": ""})
        pass_at(running, slot_start())
        running.nodes.silent.add("node1")
        answer = running.am.PerformOperationalAction([SLICE], [lab.slice_cred], "geni_stop", {})
        assert answer["code"]["geni_code"] == 8
        assert "no answer about node1 to switch off (cm_factory) within 1 s (no node was switched)" in answer["output"]
        assert states(running, lab) == {"node1": ("geni_ready", "")}


def test_a_pass_during_a_provision_leaves_the_lease_alone(running: Running, lab: Lab) -> None:
    """Provision writes the slot row (backend.provision) before the calendar marks the lease provisioned (one unit
    of work at the end): a pass in between must not take the lease as over."""
    assert running.am.Allocate(SLICE, [lab.slice_cred], rspec({"node1": ""}), {})["code"]["geni_code"] == 0
    (lease,) = running.aggregate.bookings.leases(slice_urn=SLICE)
    assert lease.state == "allocated"
    assert running.backend.slots is not None
    running.backend.slots.provisioned(lease, [])  # what backend.provision writes, mid-Provision
    start = slot_start()
    report = pass_at(running, start + timedelta(minutes=1))
    assert report.ended == [] and report.end_failed == [] and report.started == []
    assert running.nodes.steps == []  # nothing powered off, no key withdrawn
    running.at(datetime.now(UTC))  # the Provision goes on as asked, in the allocation's time (the pass ran meanwhile)
    answer = running.am.Provision([SLICE], [lab.slice_cred], users(ssh_key("ann@laptop")))
    assert answer["code"]["geni_code"] == 0, answer["output"]
    assert pass_at(running, start + timedelta(minutes=1)).started == [lease.id]
    assert running.nodes.power == {"node1": "on"}
    assert states(running, lab) == {"node1": ("geni_ready", "")}


def test_an_allocated_lease_whose_end_passed_is_ended(running: Running, lab: Lab) -> None:
    assert running.am.Allocate(SLICE, [lab.slice_cred], rspec({"node1": ""}), {})["code"]["geni_code"] == 0
    (lease,) = running.aggregate.bookings.leases(slice_urn=SLICE)
    assert running.backend.slots is not None
    running.backend.slots.provisioned(lease, [])
    assert pass_at(running, slot_start() + timedelta(hours=1)).ended == [lease.id]


def test_a_lease_provisioned_again_after_its_work_ended_is_started(running: Running, lab: Lab) -> None:
    """A row left ``ended`` for a lease still allocated (a pass took it as over before this was fixed) is reset by
    the Provision that completes: its slot is started and Status does not say geni_ready before that."""
    assert running.am.Allocate(SLICE, [lab.slice_cred], rspec({"node1": ""}), {})["code"]["geni_code"] == 0
    (lease,) = running.aggregate.bookings.leases(slice_urn=SLICE)
    slots = running.backend.slots
    assert slots is not None
    slots.provisioned(lease, [])
    start = slot_start()
    assert slots.records.claim(lease.id, (PROVISIONED,), ENDED, to_s(start))
    running.at(datetime.now(UTC))  # asked in the allocation's time
    answer = running.am.Provision([SLICE], [lab.slice_cred], users(ssh_key("ann@laptop")))
    assert answer["code"]["geni_code"] == 0, answer["output"]
    running.at(start + timedelta(minutes=1))
    assert states(running, lab) == {"node1": ("geni_configuring", "")}
    assert pass_at(running, start + timedelta(minutes=1)).started == [lease.id]
    assert running.nodes.power == {"node1": "on"}
    assert states(running, lab) == {"node1": ("geni_ready", "")}


def test_operational_actions_outside_the_slot_are_refused_and_switch_nothing(running: Running, lab: Lab) -> None:
    """A provisioned lease for later must not switch off nodes another slice holds now."""
    provisioned(running, lab, {"node1": "", "node2": ""})
    start = slot_start()
    for moment in (start - timedelta(minutes=30), start + timedelta(hours=1)):
        running.at(moment)
        for action in ("geni_start", "geni_stop", "geni_restart"):
            answer = running.am.PerformOperationalAction([SLICE], [lab.slice_cred], action, {})
            if moment < start:
                assert answer["code"]["geni_code"] == 1, answer
                assert "geni_start/stop/restart act during the slot" in answer["output"]
                assert format_time(start) in answer["output"]
            else:  # its end passed (the sweep has not released it yet): ended, whatever the action
                assert answer["code"]["geni_code"] == 12, answer
                assert f"ended at {format_time(start + timedelta(hours=1))}" in answer["output"]
            assert "nothing was changed" in answer["output"]
    assert running.nodes.steps == [] and running.nodes.power == {}
    running.at(start)
    assert {state for state, _ in states(running, lab).values()} == {"geni_configuring"}  # not marked stopped


def test_a_user_left_out_by_geni_update_users_loses_the_lease_keys_on_the_testbed(running: Running, lab: Lab) -> None:
    bob = "urn:publicid:IDN+lab+user+bob"
    both = {"geni_users": [{"urn": ANN, "keys": [ssh_key("ann@laptop")]}, {"urn": bob, "keys": [ssh_key("bob@pc")]}]}
    # ann may put bob's key into his login because the local registry holds it for him (tests/am/test_users_keys.py)
    running.aggregate.records.add(Record("lab.bob", "user", bob, "", keys=(ssh_key("bob@pc"),)))
    assert running.am.Allocate(SLICE, [lab.slice_cred], rspec({"node1": ""}), {})["code"]["geni_code"] == 0
    answer = running.am.Provision([SLICE], [lab.slice_cred], both)
    assert answer["code"]["geni_code"] == 0, answer["output"]
    bob_login = running.aggregate.accounts.login_for(bob, SLICE)
    bob_keys = running.root / "home" / bob_login / ".ssh" / "authorized_keys"
    assert bob_keys.read_text() == f"{ssh_key('bob@pc')}\n"
    updated = running.am.PerformOperationalAction(
        [SLICE], [lab.slice_cred], "geni_update_users", users(ssh_key("ann@tablet"))
    )
    assert updated["code"]["geni_code"] == 0, updated["output"]
    assert bob_keys.read_text() == ""  # per-user account: kept, without this lease's keys
    ann_keys = running.root / "home" / running.aggregate.accounts.login_for(ANN, SLICE) / ".ssh" / "authorized_keys"
    assert ann_keys.read_text() == f"{ssh_key('ann@tablet')}\n"
    # The lease's end withdraws what it holds now: ann's keys; bob's stay withdrawn.
    assert pass_at(running, slot_start() + timedelta(hours=1)).ended
    assert ann_keys.read_text() == "" and bob_keys.read_text() == ""


def test_status_reads_a_lease_slot_work_once_per_call(
    running: Running, lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    provisioned(running, lab, {"node1": "", "node2": ""})
    slots = running.backend.slots
    assert slots is not None
    real, reads = slots.records.state_of, []

    def counted(lease_id: str) -> Any:
        reads.append(lease_id)
        return real(lease_id)

    monkeypatch.setattr(slots.records, "state_of", counted)
    start = slot_start()
    running.at(start)
    assert states(running, lab) == {"node1": ("geni_configuring", ""), "node2": ("geni_configuring", "")}
    assert len(reads) == 1  # two slivers, one read
    pass_at(running, start)
    assert states(running, lab) == {"node1": ("geni_ready", ""), "node2": ("geni_ready", "")}  # read afresh
    assert len(reads) == 2
