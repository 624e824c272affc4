"""cm_factory's errors that may be its refusal of someone else's request, over the real RabbitMQ with the stand-in
for cm_factory and frisbee_factory (a conformance fixture for the Ruby controllers): cm_factory's informs carry no
cid, so an ERROR about a node is held for ``[sfa_frcp] foreign_error_grace_s``. Our request's STATUS within the
grace wins; an error with nothing after it is the node's answer, in cm_factory's words, once the grace ends (not at
``boot_timeout_s``); a bad grace is refused by the configuration."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.config import load_config
from sfa_omf.testbed.omf.controllers import Controllers
from sfa_omf.testbed.omf.frcp import ControllerSigners, FrcpClient, SignatureChecker, Signer
from tests.conftest import DemoPki
from tests.test_config import minimal
from tests.testbed.omf.node_controllers_standin import NodeControllersStandIn
from tests.testbed.omf.omf_lab import IMAGE, Lab, serve, slot_start
from tests.testbed.omf.test_slots import pass_at, provisioned, states

REFUSAL = ("AUTH", "You don't have a valid lease for node1")

#: Controllers(boot_timeout_s, foreign_error_grace_s) on a cm_factory stand-in of this test.
MakeControllers = Callable[[float, float], Controllers]


@pytest.fixture
def cm_lab(pki: DemoPki, tmp_path: Path, rabbitmq_url: str) -> Iterator[tuple[NodeControllersStandIn, MakeControllers]]:
    """The cm_factory and frisbee_factory stand-in on topics of this test, and a maker of the aggregate's
    Controllers talking to it."""
    prefix = uuid.uuid4().hex[:8]  # topics of this test only: the broker is shared
    standin = NodeControllersStandIn(
        rabbitmq_url,
        f"cm-{prefix}",
        f"fr-{prefix}",
        tmp_path / "testbed",
        Signer(pki.authority.key, pki.authority.chain, "cm"),
        SignatureChecker(pki.roots),
    )
    standin.start()
    checker = SignatureChecker(pki.roots, controllers=ControllerSigners("testbed"))
    am = Signer(pki.authority.key, pki.authority.chain, "am")
    client = FrcpClient(rabbitmq_url, signer=am, checker=checker, topic=f"am-{prefix}", timeout_s=10)

    def make(boot_timeout_s: float, foreign_error_grace_s: float) -> Controllers:
        return Controllers(client, f"cm-{prefix}", f"fr-{prefix}", boot_timeout_s, foreign_error_grace_s)

    try:
        yield standin, make
    finally:
        standin.stop()


def test_a_foreign_error_then_our_success_within_the_grace_is_a_success(
    cm_lab: tuple[NodeControllersStandIn, MakeControllers],
) -> None:
    """cm_factory refuses someone else's "node1 on" just before it answers ours: node1 is switched on."""
    standin, make = cm_lab
    standin.foreign_error["node1"] = REFUSAL
    outcomes = make(60, 30).power(["node1", "node2"], "on")
    assert {node: outcome.reason for node, outcome in outcomes.items()} == {"node1": "", "node2": ""}
    assert standin.power == {"node1": "on", "node2": "on"}


def test_an_error_with_nothing_after_it_is_the_answer_once_the_grace_ends(
    cm_lab: tuple[NodeControllersStandIn, MakeControllers],
) -> None:
    """cm_factory refuses our "node1 on" and says nothing more: node1 fails with cm_factory's words after the grace
    (1 s), long before boot_timeout_s (60 s); node2 is switched on all the same."""
    standin, make = cm_lab
    standin.fail[("node1", "on")] = REFUSAL
    controllers = make(60, 1)
    asked = time.monotonic()
    outcomes = controllers.power(["node1", "node2"], "on")
    answered = time.monotonic()
    node1 = outcomes["node1"]
    assert not node1.ok and not node1.timed_out
    assert node1.reason == f"cm_factory could not switch on: {REFUSAL[1]}"
    assert outcomes["node2"].ok
    # Held for the grace (it may be someone else's refusal), then answered: not at the overall deadline.
    assert controllers.foreign_error_grace_s <= answered - asked < controllers.boot_timeout_s


def test_a_slot_start_survives_a_foreign_error_at_every_step(
    running_reactor: Any, lab: Lab, tmp_path: Path, rabbitmq_url: str
) -> None:
    """The lease's start (PXE, image, off PXE, on) through the server's settings: at each of node1's cm_factory
    steps, an error about node1 (someone else's refusal) comes first. The start is done; node1 is ready."""
    for running in serve(running_reactor, lab, tmp_path, rabbitmq_url, frcp_foreign_error_grace_s=15):
        assert running.backend.slots is not None and running.backend.slots.controllers is not None
        assert running.backend.slots.controllers.foreign_error_grace_s == 15
        lease = provisioned(running, lab, {"node1": IMAGE})
        running.nodes.foreign_error["node1"] = REFUSAL
        report = pass_at(running, slot_start())
        assert report.started == [lease] and report.failed == [], running.backend.slots
        assert states(running, lab) == {"node1": ("geni_ready", "")}
        assert ("written", "node1") in running.nodes.steps


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("foreign_error_grace_s = 0", "[sfa_frcp] foreign_error_grace_s = '0': must be at least 1"),
        ("foreign_error_grace_s = 5s", "[sfa_frcp] foreign_error_grace_s = '5s': not a whole number"),
        (
            "foreign_error_grace_s = 600",
            "[sfa_frcp] foreign_error_grace_s 600 is not shorter than boot_timeout_s 600: a refusal would be held "
            "until the time-out; a few seconds are enough (default 5)",
        ),
    ],
)
def test_a_bad_grace_is_refused_naming_the_setting(tmp_path: Path, line: str, message: str) -> None:
    path = minimal(tmp_path, "[sfa_aggregate]", "type = omf", "[sfa_frcp]", line)
    (problem,) = load_config(path, environ={}).problems
    assert problem.kind == "invalid"
    assert str(problem) == f"{path}:7: {message}"


def test_the_grace_is_read_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = minimal(tmp_path, "[sfa_aggregate]", "type = omf", "[sfa_frcp]", "foreign_error_grace_s = 3")
    assert load_config(path, environ={}).settings.frcp_foreign_error_grace_s == 3
    loaded = load_config(path, environ={"SFA_FRCP_FOREIGN_ERROR_GRACE_S": "7"})
    assert (loaded.problems, loaded.settings.frcp_foreign_error_grace_s) == ((), 7)
    assert load_config(minimal(tmp_path), environ={}).settings.frcp_foreign_error_grace_s == 5
