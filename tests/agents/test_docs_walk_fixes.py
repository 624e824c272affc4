"""``sfa-omf agent run --once`` on a node the operator removed says so in one line, with what to do (enrol again),
as the README promises of every command, instead of a traceback. Real aggregate over real TLS on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfa_omf.agents.node import enrol
from sfa_omf.cli import main
from tests.agents.conftest import Lab


def test_agent_run_once_after_the_node_was_removed_says_enrol_again(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    enrolled = enrol(lab.url, lab.invite(), lab.root, str(state), "pc7")
    run_once = ["agent", "run", "--state", str(state), "--root-dir", str(tmp_path / "root"), "--once"]
    assert main(run_once) == 0  # enrolled: the heartbeat is answered
    assert main(["node", "remove", enrolled.node, "--config", lab.settings_path]) == 0
    capsys.readouterr()

    assert main(run_once) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("sfa-omf agent: the server refused: "), err
    assert "(403 caller_untrusted)" in err, err
    assert f"enrol again (sfa-omf agent enrol --state {state} ...)" in err, err
