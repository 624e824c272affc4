"""An agent and the server in network namespaces this test makes (a veth pair, private addresses of its own) and
removes: enrolment and work across a real link, the link cut (the agent is lost, its node leaves service) and
restored (it is back).

Needs root and ``ip netns``: scripts/test.sh checks both and sets SFA_OMF_TEST_NETNS=1; without it the test skips,
saying so (under CI, where it is always set, a missing variable is a failure).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from sfa_omf.agents.host import DirectoryHost
from sfa_omf.calendar.agents import Agents
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.config import read_config
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.times import utcnow
from tests.agents.conftest import AGENT_ADDRESS, SERVER_ADDRESS, run
from tests.agents.test_agent_process import eventually

REPO = Path(__file__).resolve().parents[2]
NODE = "urn:publicid:IDN+lab+node+far1"


def in_namespace(namespace: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", namespace, sys.executable, "-m", "sfa_omf.cli", *args]


def test_an_agent_behind_a_link_that_is_cut_and_restored(namespaces: tuple[str, str, str], tmp_path: Path) -> None:
    server_ns, agent_ns, agent_link = namespaces
    init_directory(str(tmp_path / "lab"), "lab", ("ann",))
    config = str(tmp_path / "lab" / "sfa-omf.conf")
    environ = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        SFA_AGGREGATE_HOST=SERVER_ADDRESS,
        SFA_REGISTRY_HOST=SERVER_ADDRESS,
        SFA_AGENTS_HEARTBEAT_S="1",
    )
    settings = read_config(config, environ)
    database = Database(settings.calendar_url)
    database.upgrade()
    agents = Agents(database)
    token = agents.create_token("default", 600)[0]
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(in_namespace(server_ns, "serve", "--config", config), env=environ, stdout=log, stderr=log)
    agent: subprocess.Popen[bytes] | None = None
    try:
        url = f"https://{SERVER_ADDRESS}:{settings.aggregate_port}/"
        state, root = str(tmp_path / "state"), str(tmp_path / "root")
        enrol = in_namespace(agent_ns, "agent", "enrol", "--server", url, "--token", token, "--root")
        enrol += [str(tmp_path / "lab" / "authority" / "lab.gid"), "--state", state, "--hostname", "far1"]
        enrol += ["--local-address", AGENT_ADDRESS, "--lan-group", "far-lan"]

        def enrolled() -> bool:
            done = subprocess.run(enrol, env=environ, capture_output=True, text=True)
            return done.returncode == 0  # the server may still be starting: the same token again is harmless

        eventually(enrolled, "the agent in its namespace enrols with the server in the other")
        node = Inventory(database).get_node(NODE)
        assert (node.state, node.properties["local_address"], node.properties["lan_group"]) == (
            "usable",
            AGENT_ADDRESS,
            "far-lan",
        )
        agent = subprocess.Popen(
            in_namespace(agent_ns, "agent", "run", "--state", state, "--root-dir", root, "--interval", "0.2"),
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        first = agents.list_agents()[0].last_seen
        eventually(lambda: agents.list_agents()[0].last_seen > first, "heartbeats cross the link")

        # Cut the link: nothing the agent sends arrives; once silent past the timeout, its node is lost.
        run("ip", "-n", agent_ns, "link", "set", agent_link, "down")
        # (The sweep's clock is a minute past the timeout, so a heartbeat gathered just before the cut and written
        # late changes nothing.)
        later = Agents(database, clock=lambda: utcnow() + timedelta(seconds=settings.agent_timeout_s + 60))
        assert later.sweep_lost(settings.agent_timeout_s) == [NODE]
        # A lost agent's heartbeat is written at once, and this one tries 5 times a second: had anything crossed the
        # cut link, the node would be usable again within these 3 seconds.
        time.sleep(3)
        assert Inventory(database).get_node(NODE).state == "lost"
        assert agent.poll() is None  # the agent keeps trying

        # Restore it: the agent's next heartbeat brings the node back.
        run("ip", "-n", agent_ns, "link", "set", agent_link, "up")
        eventually(lambda: Inventory(database).get_node(NODE).state == "usable", "the node is back in service")
        assert DirectoryHost(root, state).logins() == []  # no lease: nothing was set up on the host
    finally:
        for process in (agent, server):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
        log.close()
        database.dispose()
