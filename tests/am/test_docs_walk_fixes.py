"""The AM's log line of a call names the slice it is about, never the caller's credentials: ListResources (and
ListSlices) take the credentials first, which used to be logged whole as ``slice=``. Real server, real TLS."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.config import read_config
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.server.app import build_aggregate, start_aggregate
from tests.tls_harness import proxy

SLICE = "urn:publicid:IDN+lab+slice+demo"


def test_list_resources_logs_no_credential_and_status_logs_its_slice(
    running_reactor: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    report = init_directory(str(tmp_path / "lab"), "lab", ("ann",))
    settings = read_config(str(tmp_path / "lab" / "sfa-omf.conf"))
    sfi = Path(report.sfi_dirs["ann"])
    chain, key = str(sfi / "lab.ann.user.gid"), str(sfi / "lab.ann.pkey")
    user_cred = (sfi / "lab.ann.user.cred").read_text()
    slice_cred = (sfi / "lab.ann-lab.demo.slice.cred").read_text()
    server = blockingCallFromThread(running_reactor, start_aggregate, settings, build_aggregate(settings), 0)
    try:
        v3 = f"https://127.0.0.1:{server.port_number}/"
        v2 = v3 + "am2"
        with caplog.at_level(logging.INFO, logger="sfa_omf.am"):
            options = {"geni_rspec_version": {"type": "GENI", "version": "3"}}
            assert proxy(v3, chain, key).ListResources([user_cred], options)["code"]["geni_code"] == 0
            assert proxy(v2, chain, key).ListResources([user_cred], options)["code"]["geni_code"] == 0
            # The slice holds nothing yet (geni_code 12): what is logged is the question.
            proxy(v2, chain, key).ListResources([slice_cred], {**options, "geni_slice_urn": SLICE})
            proxy(v3, chain, key).Status([SLICE], [slice_cred], {})
    finally:
        blockingCallFromThread(running_reactor, server.stop)
    lines = [line.split(" geni_code=")[0] for line in caplog.messages if " caller=" in line]
    ann = "urn:publicid:IDN+lab+user+ann"
    assert lines == [
        f"ListResources caller={ann} slice=-",
        f"ListResources caller={ann} slice=-",
        f"ListResources caller={ann} slice={SLICE}",
        f"Status caller={ann} slice={SLICE}",
    ]
    assert not any("signed-credential" in line or "<?xml" in line for line in caplog.messages)
