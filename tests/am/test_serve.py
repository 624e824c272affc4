"""The server as an operator runs it: built from an init directory's configuration; a restart keeps slices, slivers
and their states; one log line per call."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.calendar.records import NodeSpec
from sfa_omf.config import read_config
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.server.app import build_aggregate, start_aggregate
from sfa_omf.times import format_time, utcnow
from tests.tls_harness import proxy

NODE = "urn:publicid:IDN+lab+node+n1"


def request(window: tuple[str, str]) -> str:
    return (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        'xmlns:ol="http://nitlab.inf.uth.gr/schema/sfa/rspec/1">'
        f'<ol:lease client_id="l" valid_from="{window[0]}" valid_until="{window[1]}"/>'
        f'<node client_id="n1" component_id="{NODE}" exclusive="true"><ol:lease_ref id_ref="l"/></node></rspec>'
    )


def test_restart_keeps_everything(running_reactor: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    report = init_directory(str(tmp_path / "lab"), "lab", ("ann",))
    settings = read_config(str(tmp_path / "lab" / "sfa-omf.conf"))
    sfi = Path(report.sfi_dirs["ann"])
    chain, key = str(sfi / "lab.ann.user.gid"), str(sfi / "lab.ann.pkey")
    slice_cred = (sfi / "lab.ann-lab.demo.slice.cred").read_text()
    slice_urn = "urn:publicid:IDN+lab+slice+demo"

    aggregate = build_aggregate(settings)
    aggregate.inventory.add_node(NodeSpec(NODE, "n1"))
    server = blockingCallFromThread(running_reactor, start_aggregate, settings, aggregate, 0)
    url = f"https://127.0.0.1:{server.port_number}/"
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    window = (format_time(start), format_time(start + timedelta(hours=1)))
    with caplog.at_level(logging.INFO, logger="sfa_omf.am"):
        assert proxy(url, chain, key).Allocate(slice_urn, [slice_cred], request(window), {})["code"]["geni_code"] == 0
        assert proxy(url, chain, key).Provision([slice_urn], [slice_cred], {})["code"]["geni_code"] == 0
        before = proxy(url, chain, key).Status([slice_urn], [slice_cred], {})["value"]
    assert any(
        "Allocate caller=urn:publicid:IDN+lab+user+ann slice=urn:publicid:IDN+lab+slice+demo geni_code=0 ms=" in line
        for line in caplog.messages
    )
    blockingCallFromThread(running_reactor, server.stop)

    restarted = blockingCallFromThread(running_reactor, start_aggregate, settings, build_aggregate(settings), 0)
    try:
        url = f"https://127.0.0.1:{restarted.port_number}/"
        after = proxy(url, chain, key).Status([slice_urn], [slice_cred], {})["value"]
    finally:
        blockingCallFromThread(running_reactor, restarted.stop)
    assert after == before
    assert [s["geni_allocation_status"] for s in after["geni_slivers"]] == ["geni_provisioned"]
    assert [(s["geni_start_time"], s["geni_end_time"]) for s in after["geni_slivers"]] == [window]


def test_served_versions(running_reactor: Any, tmp_path: Path) -> None:
    """GetVersion names both API versions, and each answers at the URL it names."""
    report = init_directory(str(tmp_path / "lab"), "lab", ("ann",))
    settings = read_config(str(tmp_path / "lab" / "sfa-omf.conf"))
    sfi = Path(report.sfi_dirs["ann"])
    chain, key = str(sfi / "lab.ann.user.gid"), str(sfi / "lab.ann.pkey")
    server = blockingCallFromThread(running_reactor, start_aggregate, settings, build_aggregate(settings), 0)
    try:
        base = f"https://127.0.0.1:{server.port_number}/"
        versions = proxy(base, chain, key).GetVersion()["value"]["geni_api_versions"]
        assert sorted(versions) == ["2", "3"] and versions["2"].endswith("/am2")
        assert proxy(base + "am2", chain, key).GetVersion()["geni_api"] == 2
        assert proxy(base + "RPC2", chain, key).GetVersion()["geni_api"] == 3
    finally:
        blockingCallFromThread(running_reactor, server.stop)
