"""The end of a lease's slot on an OMF testbed, through the AM API over real TLS, FRCP over the real RabbitMQ and the
stand-ins for the Ruby controllers (conformance fixtures): an end tried again never switches off a node the next
lease holds and redoes only the steps that failed; the broker away at the end only postpones it, however long; an
end the controllers keep refusing is tried again with a growing wait and logged at ERROR, never given up; a
cm_factory STATUS that says something else than what was asked does not answer the request."""

from __future__ import annotations

import functools
import logging
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pika
import pytest

from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.testbed.omf.frcp import Signer, address, new_message
from sfa_omf.testbed.omf.slot_records import END_FAILED, END_RETRY_FIRST_S, ENDED, MAX_END_ATTEMPTS
from sfa_omf.times import format_time
from tests.sshkeys import ssh_key
from tests.testbed.omf.omf_lab import ANN, SLICE, Lab, Running, node_urn, publish_signed, serve, slot_start, users
from tests.testbed.omf.tcp_forwarder import TcpForwarder
from tests.testbed.omf.test_slots import pass_at, provisioned


def _book_for_another_slice(running: Running, lab: Lab, start: datetime) -> str:
    """Lease B: another slice of ann's (a new one: the lab is shared by the module) on node1 for the hour from
    ``start``, provisioned; its id."""
    authority = LocalAuthority.load(str(lab.directory), "lab")
    other_slice, _ = authority.issue_gid(f"lab.other{uuid.uuid4().hex[:6]}", "slice")
    credential = authority.credential(authority.issued_chain("lab.ann"), other_slice)
    other = other_slice[0].urn
    window = (format_time(start), format_time(start + timedelta(hours=1)))
    request = (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        'xmlns:ol="http://nitlab.inf.uth.gr/schema/sfa/rspec/1">'
        f'<ol:lease client_id="l" valid_from="{window[0]}" valid_until="{window[1]}"/>'
        f'<node client_id="node1" component_id="{node_urn("node1")}" exclusive="true"><ol:lease_ref id_ref="l"/>'
        "</node></rspec>"
    )
    allocated = running.am.Allocate(other, [credential], request, {})
    assert allocated["code"]["geni_code"] == 0, allocated["output"]
    answer = running.am.Provision([other], [credential], users(ssh_key("ann@desktop")))
    assert answer["code"]["geni_code"] == 0, answer["output"]
    (lease,) = running.aggregate.bookings.leases(slice_urn=other)
    return str(lease.id)


def _slot_record(running: Running, lease: str) -> Any:
    assert running.backend.slots is not None
    return running.backend.slots.records.get(lease)


def test_an_end_tried_again_leaves_the_next_lease_node_on_and_redoes_only_what_failed(
    running: Running, lab: Lab
) -> None:
    """Leases A then B back to back on node1. A's end switches node1 off, but user_factory refuses its key step
    once; B starts (node1 on). The next pass redoes A's key step only: node1 stays on during B's slot."""
    start = slot_start()
    a = provisioned(running, lab, {"node1": ""}, ssh_key("ann@laptop"))
    b = _book_for_another_slice(running, lab, start + timedelta(hours=1))
    assert pass_at(running, start).started == [a]
    running.standin.fail_with = "disk full"  # the key step of A's end fails this once
    report = pass_at(running, start + timedelta(hours=1, seconds=5))
    assert report.end_failed == [a] and report.started == [b]
    assert running.nodes.power == {"node1": "on"}
    record = _slot_record(running, a)
    assert record.phase == END_FAILED and list(record.failures) == [
        f"keys:{running.aggregate.accounts.login_for(ANN, SLICE)}"
    ]
    assert "disk full" in record.message
    running.standin.fail_with = ""
    report = pass_at(running, start + timedelta(hours=1, seconds=20))
    assert report.ended == [a]
    assert running.nodes.power == {"node1": "on"}, "B's node was switched off during B's slot"
    assert running.nodes.steps.count(("off", "node1")) == 1
    assert running.nodes.steps == [("on", "node1"), ("off", "node1"), ("on", "node1")]


def test_a_power_off_left_undone_is_not_done_once_the_next_lease_holds_the_node(running: Running, lab: Lab) -> None:
    """cm_factory refuses A's power-off; B starts on node1 in the same pass; the retry of A's end leaves node1 to B."""
    start = slot_start()
    a = provisioned(running, lab, {"node1": ""}, ssh_key("ann@laptop"))
    b = _book_for_another_slice(running, lab, start + timedelta(hours=1))
    pass_at(running, start)
    running.nodes.fail[("node1", "off")] = ("HTTP", "failed to reach cm, ip: 10.0.0.1")
    report = pass_at(running, start + timedelta(hours=1, seconds=5))
    assert report.end_failed == [a] and report.started == [b]
    assert list(_slot_record(running, a).failures) == ["off:node1"]
    del running.nodes.fail[("node1", "off")]
    steps_before = list(running.nodes.steps)
    assert pass_at(running, start + timedelta(hours=1, seconds=20)).ended == [a]
    assert running.nodes.steps == steps_before and running.nodes.power == {"node1": "on"}


def test_an_end_tried_again_leaves_alone_a_node_whose_next_slot_has_begun(running: Running, lab: Lab) -> None:
    """cm_factory refuses A's power-off; no pass runs until B's slot (an hour after A's end) has begun: A's retry
    comes before B's start in that pass, and still leaves node1 to B, whose start powers it on."""
    start = slot_start()
    a = provisioned(running, lab, {"node1": ""}, ssh_key("ann@laptop"))
    b = _book_for_another_slice(running, lab, start + timedelta(hours=2))
    pass_at(running, start)
    running.nodes.fail[("node1", "off")] = ("HTTP", "failed to reach cm, ip: 10.0.0.1")
    assert pass_at(running, start + timedelta(hours=1, seconds=5)).end_failed == [a]
    del running.nodes.fail[("node1", "off")]
    steps_before = list(running.nodes.steps)
    report = pass_at(running, start + timedelta(hours=2, seconds=5))
    assert report.ended == [a] and report.started == [b]
    assert running.nodes.steps[len(steps_before) :] == [("on", "node1")], "A's retry switched off B's node"


def test_the_broker_away_at_the_end_postpones_it_however_long(
    running_reactor: Any, lab: Lab, tmp_path: Path, rabbitmq_url: str
) -> None:
    """The broker unreachable (a TCP forwarder in front of the real RabbitMQ, stopped) for 12 passes around the
    slot's end, more than MAX_END_ATTEMPTS: the end waits, counts nothing, and is done once the broker is back."""
    broker = pika.URLParameters(rabbitmq_url)
    forwarder = TcpForwarder(broker.host, broker.port)
    through = rabbitmq_url.replace(f"{broker.host}:{broker.port}", f"127.0.0.1:{forwarder.port}")
    for running in serve(running_reactor, lab, tmp_path, rabbitmq_url, frcp_amqp_url=through):
        forwarder.start()
        try:
            lease = provisioned(running, lab, {"node1": ""}, ssh_key("ann@laptop"))
            start = slot_start()
            pass_at(running, start)
            login = running.aggregate.accounts.login_for(ANN, SLICE)
            keys = running.root / "home" / login / ".ssh" / "authorized_keys"
            assert keys.read_text().strip()
            forwarder.stop()
            end = start + timedelta(hours=1)
            for n in range(MAX_END_ATTEMPTS + 2):
                assert pass_at(running, end + timedelta(seconds=15 * n)).postponed == [lease]
            record = _slot_record(running, lease)
            assert record.phase == END_FAILED and record.attempts == 0
            assert record.message.startswith("waiting for the testbed: ")
            forwarder.start()
            assert pass_at(running, end + timedelta(minutes=10)).ended == [lease]
            assert keys.read_text() == "" and running.nodes.power == {"node1": "off"}
            assert _slot_record(running, lease).phase == ENDED
        finally:
            forwarder.stop()


def test_an_end_the_controllers_keep_refusing_is_tried_with_a_growing_wait_and_logged_at_error(
    running: Running, lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    lease = provisioned(running, lab, {"node1": ""}, ssh_key("ann@laptop"))
    start = slot_start()
    pass_at(running, start)
    running.nodes.fail[("node1", "off")] = ("AUTH", "You don't have a valid lease for node1")
    end = start + timedelta(hours=1)
    moment = end
    with caplog.at_level(logging.WARNING, logger="sfa_omf.omf.slots"):
        for n in range(MAX_END_ATTEMPTS):
            moment = end + timedelta(seconds=15 * n)
            assert pass_at(running, moment).end_failed == [lease]
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1 and "the operator must see to it" in errors[0].getMessage()
    assert "You don't have a valid lease for node1" in errors[0].getMessage()
    # The keys went at the first try: only the power-off is tried again.
    assert running.nodes.steps.count(("off", "node1")) == MAX_END_ATTEMPTS
    record = _slot_record(running, lease)
    assert record.phase == END_FAILED and record.attempts == MAX_END_ATTEMPTS and list(record.failures) == ["off:node1"]
    # Not abandoned: it waits, then is tried again.
    assert pass_at(running, moment + timedelta(seconds=END_RETRY_FIRST_S - 1)).end_failed == []
    moment += timedelta(seconds=END_RETRY_FIRST_S)
    with caplog.at_level(logging.WARNING, logger="sfa_omf.omf.slots"):
        assert pass_at(running, moment).end_failed == [lease]
    assert running.nodes.steps.count(("off", "node1")) == MAX_END_ATTEMPTS + 1
    # The wait doubles; once the controller accepts, the end is done.
    del running.nodes.fail[("node1", "off")]
    assert pass_at(running, moment + timedelta(seconds=END_RETRY_FIRST_S)).end_failed == []
    assert pass_at(running, moment + timedelta(seconds=2 * END_RETRY_FIRST_S)).ended == [lease]
    assert running.nodes.power == {"node1": "off"}


def test_a_status_that_says_something_else_does_not_answer_a_power_off(
    running_reactor: Any, lab: Lab, tmp_path: Path, rabbitmq_url: str
) -> None:
    """cm_factory (genuinely signed) informs a STATUS about node1 for another request (an experimenter switching it
    on: current booting, desired running) while the aggregate's own 'off' gets no answer: a time-out, not done."""
    for running in serve(running_reactor, lab, tmp_path, rabbitmq_url, frcp_boot_timeout_s=2):
        lease = provisioned(running, lab, {"node1": ""}, ssh_key("ann@laptop"))
        start = slot_start()
        pass_at(running, start)
        running.nodes.silent.add("node1")
        authority = LocalAuthority.load(str(lab.directory), "lab")
        cm = Signer(authority.key, authority.chain, "cm")  # what the cm_factory stand-in signs with
        other = new_message(
            "inform",
            address("127.0.0.1", running.settings.frcp_cm_factory),
            {"node_name": "node1", "current": "booting", "desired": "running"},
            itype="STATUS",
        )
        settings = running.settings
        publish = functools.partial(publish_signed, settings.frcp_amqp_url, settings.frcp_cm_factory, cm, other)
        running.nodes.later(0.5, publish)
        report = pass_at(running, start + timedelta(hours=1, seconds=1))
        assert report.end_failed == [lease] and report.ended == []
        failures = _slot_record(running, lease).failures
        assert failures == {
            "off:node1": "cm_factory could not switch off: no answer about node1 to switch off (cm_factory) within 2 s"
        }
