"""An experimenter's first steps (docs/experimenters.md): ``sfa-omf quickstart`` run as a real process, then the calls
sfi.py makes for each printed step, over real TLS, with the files quickstart wrote (the demo user's sfi folder, its
SSH key, the example requests of DIR/rspecs)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.config import Settings
from sfa_omf.registry.bootstrap import EXAMPLE_REQUESTS, init_directory
from sfa_omf.times import format_time, parse_time, utcnow
from tests.ports import free_port
from tests.tls_harness import proxy

REPO = Path(__file__).resolve().parent.parent
GENI_V3 = {"type": "GENI", "version": "3"}
SLICE = "urn:publicid:IDN+tb+slice+demo"


@dataclass
class Quickstart:
    directory: Path
    output: list[str]  # what it printed before serving
    am_url: str
    registry_url: str

    @property
    def sfi(self) -> Path:
        return self.directory / "users" / "alice" / "sfi"

    def client(self, url: str) -> Any:
        return proxy(url, str(self.sfi / "tb.alice.user.gid"), str(self.sfi / "tb.alice.pkey"))


@pytest.fixture
def quickstart(tmp_path: Path) -> Iterator[Quickstart]:
    directory = tmp_path / "demo"
    ports = {"registry_port": free_port(), "aggregate_port": free_port()}
    init_directory(str(directory), "tb", ("alice",), Settings(interface_hrn="tb", data_dir=str(directory), **ports))
    process = subprocess.Popen(
        [sys.executable, "-m", "sfa_omf.cli", "quickstart", str(directory), "--authority", "tb"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert process.stdout is not None
    output = []
    for line in process.stdout:  # the whole flow is printed before it serves
        output.append(line.rstrip("\n"))
        if "Stop with Ctrl-C" in line:
            break
    started = Quickstart(
        directory,
        output,
        f"https://127.0.0.1:{ports['aggregate_port']}/",
        f"https://127.0.0.1:{ports['registry_port']}/",
    )
    try:
        am = started.client(started.am_url)
        for _ in range(300):  # until it listens (readiness, not a measure of speed)
            try:
                am.GetVersion()
                break
            except OSError:
                time.sleep(0.1)
        yield started
    finally:
        process.terminate()
        process.wait(timeout=30)


def ok(answer: dict[str, Any]) -> Any:
    assert answer["code"]["geni_code"] == 0, answer["output"]
    return answer["value"]


def test_quickstart_prints_the_flow_with_absolute_paths_and_writes_the_example_requests(
    quickstart: Quickstart,
) -> None:
    text = "\n".join(quickstart.output)
    rspecs = quickstart.directory / "rspecs"
    assert sorted(os.listdir(rspecs)) == sorted(EXAMPLE_REQUESTS)
    for step in ("version", "list -t node tb", "resources", "resources -l all", "describe tb.demo",
                 "provision tb.demo", "status tb.demo", "renew tb.demo", "delete tb.demo"):  # fmt: skip
        assert f"sfi.py -d {quickstart.sfi} {step}" in text, step
    assert f"allocate tb.demo {rspecs / 'request-ol-lease.xml'}" in text
    assert all(str(rspecs / name) in text for name in EXAMPLE_REQUESTS)
    assert str(quickstart.sfi / "id_ed25519") in text
    for line in quickstart.output:
        for path in re.findall(r"(?<=\s)(\S+\.xml)\b", line):
            assert os.path.isabs(path), f"a relative RSpec path is a dead end for sfi.py: {line}"
    config = (quickstart.sfi / "sfi_config").read_text()
    assert "keep these URLs http://" in config and "registry = http://127.0.0.1:" in config
    key = quickstart.sfi / "id_ed25519"
    assert key.stat().st_mode & 0o777 == 0o600


def test_the_sfi_flow_with_the_files_quickstart_wrote(quickstart: Quickstart) -> None:
    registry = quickstart.client(quickstart.registry_url)
    am = quickstart.client(quickstart.am_url)
    user_cred = (quickstart.sfi / "tb.alice.user.cred").read_text()
    slice_cred = (quickstart.sfi / "tb.alice-tb.demo.slice.cred").read_text()
    # sfi.py list -t node tb; sfi.py show tb.node2; sfi.py show tb.alice (not "has No key")
    listed = registry.List("tb", [user_cred], {})
    assert sorted(r["hrn"] for r in listed if r["type"] == "node") == [f"tb.node{n}" for n in range(1, 6)]
    (node2,) = registry.Resolve("tb.node2", [user_cred], {"details": True})
    assert node2["type"] == "node" and node2["reg-urn"] == "urn:publicid:IDN+tb+node+node2"
    (me,) = registry.Resolve("tb.alice", [user_cred], {"details": True})
    ssh_key = (quickstart.sfi / "id_ed25519.pub").read_text().strip()
    assert me["reg-keys"] == [ssh_key]
    # sfi.py resources; resources -l all
    assert "urn:publicid:IDN+tb+node+node1" in ok(am.ListResources([user_cred], {"geni_rspec_version": GENI_V3}))
    everything = ok(am.ListResources([user_cred], {"geni_rspec_version": GENI_V3, "list_leases": "all"}))
    assert "urn:publicid:IDN+tb+node+node4" in everything
    # sfi.py allocate tb.demo DIR/rspecs/request-ol-lease.xml (sfi sends the researchers' keys as geni_users)
    users = {"geni_users": [{"urn": me["reg-urn"], "keys": me["reg-keys"]}]}
    rspecs = quickstart.directory / "rspecs"
    request = (rspecs / "request-ol-lease.xml").read_text()
    valid_from = re.search(r'valid_from="([^"]+)"', request)
    assert valid_from is not None
    allocated = ok(am.Allocate(SLICE, [slice_cred], request, users))
    assert [s["geni_start_time"] for s in allocated["geni_slivers"]] == [valid_from.group(1)]
    described = ok(am.Describe([SLICE], [slice_cred], {"geni_rspec_version": GENI_V3}))
    assert 'component_id="urn:publicid:IDN+tb+node+node1"' in described["geni_rspec"]
    provisioned = ok(am.Provision([SLICE], [slice_cred], users))
    assert 'username="alice_' in provisioned["geni_rspec"], "the manifest says how to log in"
    status = ok(am.Status([SLICE], [slice_cred], {}))
    assert [s["geni_allocation_status"] for s in status["geni_slivers"]] == ["geni_provisioned"]
    renewed = ok(am.Renew([SLICE], [slice_cred], "+2h", {}))  # sfi passes the user's words as they are
    assert parse_time(renewed[0]["geni_end_time"]) >= utcnow() + timedelta(hours=2) - timedelta(seconds=5)
    assert ok(am.Delete([SLICE], [slice_cred], {}))[0]["geni_allocation_status"] == "geni_unallocated"
    # The other three examples book as they say.
    for name in ("request-sfa-lease.xml", "request-no-time.xml", "request-asap.xml"):
        before = utcnow().replace(microsecond=0)
        (sliver,) = ok(am.Allocate(SLICE, [slice_cred], (rspecs / name).read_text(), {}))["geni_slivers"]
        start = parse_time(sliver["geni_start_time"])
        if name == "request-sfa-lease.xml":
            assert sliver["geni_start_time"] == valid_from.group(1), "the same slot as the ol:lease example"
        elif name == "request-no-time.xml":
            assert before <= start <= utcnow(), "from now"
        else:
            assert start >= before and format_time(start)[14:] in ("00:00Z", "30:00Z"), "the earliest whole slot"
        ok(am.Delete([SLICE], [slice_cred], {}))
    with pytest.raises(xmlrpc.client.Fault):
        registry.Resolve("tb.node9", [user_cred], {})


def test_the_omni_config_init_wrote_reaches_both_servers_as_omni_reads_it(quickstart: Quickstart) -> None:
    """omni has no --cert/--key: quickstart prints ``omni -c SFI/omni_config -V3 -a URL getversion``, and that file
    (read as omni reads it: its sfa framework's cert, key, registry and slicemgr; the users section's urn and keys)
    must name the user's real files and the servers' https:// URLs."""
    import configparser

    path = quickstart.sfi / "omni_config"
    assert f"omni -c {path} -V3 -a {quickstart.am_url} getversion" in "\n".join(quickstart.output)
    config = configparser.ConfigParser()
    assert config.read(path) == [str(path)]
    framework = config[config["omni"]["default_cf"]]
    assert framework["type"] == "sfa" and framework["authority"] == "tb" and framework["user"] == "tb.alice"
    (user,) = config["omni"]["users"].split(",")
    assert config[user]["urn"] == "urn:publicid:IDN+tb+user+alice"
    assert Path(config[user]["keys"]).read_text() == (quickstart.sfi / "id_ed25519.pub").read_text()
    assert framework["registry"] == quickstart.registry_url and framework["slicemgr"] == quickstart.am_url
    # Its certificate and key open real TLS calls at its URLs, as omni's do.
    registry = proxy(framework["registry"], framework["cert"], framework["key"])
    credential = registry.GetSelfCredential(
        Path(framework["cert"]).read_text(), "urn:publicid:IDN+tb+user+alice", "user"
    )
    assert "<signed-credential" in credential
    am = proxy(framework["slicemgr"], framework["cert"], framework["key"])
    assert ok(am.GetVersion())["geni_api"] == 3
