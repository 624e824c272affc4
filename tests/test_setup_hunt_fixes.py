"""What the setup hunt found, fixed:

1. ``bash scripts/test.sh --down`` stopped at the first service already stopped (rabbitmq.sh down answered 1 under
   set -e), silently, leaving PostgreSQL running. The services' scripts run here against stub commands on PATH (no
   service is touched: OAR's PID files are moved into the test's directory).
2. (tests/test_scripts.py: demo.sh and test.sh alternating reinstalled the virtualenv each time.)
3. ``sfa-omf init --authority onelab:mylab`` made a site under a name the registry refuses in every record.
4. ``[sfa_omf] grain_s`` took up to ten years, though a node's grain is at most a year.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sfa_omf.calendar.inventory import MAX_GRAIN_S
from sfa_omf.config import MAXIMA, load_config
from sfa_omf.errors import BadArgs
from sfa_omf.registry.authority import AuthorityError
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.registry.records import new_record_urn
from sfa_omf.xrn import authority_hrn_problem, hrn_part_problem
from tests.test_cli_operator import one_line_error, sfa_omf

REPO = Path(__file__).resolve().parent.parent
YEAR_S = 365 * 24 * 3600

# --- 1. test.sh --down stops every service, whichever is stopped already -----------------------------------------

# Stub commands: each records its call in $STUB_LOG. pg_lsclusters says what $PG_STATUS says; rabbitmqctl answers
# status with $RABBITMQ_STATUS (0: running) and stop with $RABBITMQ_STOP.
STUBS = {
    "rabbitmqctl": """#!/bin/sh
echo "rabbitmqctl $*" >>"$STUB_LOG"
case " $* " in
*" status "*) exit "$RABBITMQ_STATUS" ;;
*" stop "*) exit "$RABBITMQ_STOP" ;;
esac
exit 0
""",
    "pg_lsclusters": """#!/bin/sh
echo "pg_lsclusters $*" >>"$STUB_LOG"
echo "15 main 5432 $PG_STATUS postgres /var/lib/postgresql/15/main /var/log/postgresql/postgresql-15-main.log"
""",
    "pg_ctlcluster": """#!/bin/sh
echo "pg_ctlcluster $*" >>"$STUB_LOG"
""",
    # oar.sh down removes the firewall table that keeps Almighty's port to loopback: never the real one's here.
    "nft": """#!/bin/sh
echo "nft $*" >>"$STUB_LOG"
""",
    # as_root uses sudo when not root: the stub runs the (stub) command itself.
    "sudo": """#!/bin/sh
exec "$@"
""",
}


def sandbox(tmp_path: Path) -> Path:
    """A copy of the scripts test.sh --down runs, with stub commands first on PATH; oar.sh's PID files are in the
    copy's run/ directory (nothing runs there), never the real ones."""
    scripts = tmp_path / "repo" / "scripts"
    scripts.mkdir(parents=True)
    for name in ("test.sh", "lib.sh", "rabbitmq.sh", "postgres.sh"):
        shutil.copy(REPO / "scripts" / name, scripts / name)
    oar = (REPO / "scripts" / "oar.sh").read_text(encoding="utf-8")
    assert oar.count("=/var/run/") == 3, "oar.sh's PID files moved: update this test"
    (tmp_path / "run" / "apache2").mkdir(parents=True)
    (scripts / "oar.sh").write_text(oar.replace("=/var/run/", f"={tmp_path}/run/"), encoding="utf-8")
    assert "/var/run" not in (scripts / "oar.sh").read_text(encoding="utf-8")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in STUBS.items():
        (bin_dir / name).write_text(text, encoding="utf-8")
        (bin_dir / name).chmod(0o755)
    return tmp_path


def run_script(
    box: Path, *argv: str, rabbitmq_status: int, rabbitmq_stop: int = 0, pg_status: str = "online"
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the sandbox's ``scripts/ARGV[0]`` with the stubs; the stubs' calls so far."""
    environment = {
        **os.environ,
        "PATH": f"{box / 'bin'}:{os.environ['PATH']}",
        "STUB_LOG": str(box / "calls"),
        "RABBITMQ_STATUS": str(rabbitmq_status),
        "RABBITMQ_STOP": str(rabbitmq_stop),
        "PG_STATUS": pg_status,
    }
    done = subprocess.run(
        ["bash", str(box / "repo" / "scripts" / argv[0]), *argv[1:]],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls = (box / "calls").read_text().splitlines() if (box / "calls").exists() else []
    return done, calls


def test_down_stops_postgresql_when_rabbitmq_is_stopped_already(tmp_path: Path) -> None:
    """RabbitMQ not running: test.sh --down went no further (exit 1, nothing said), PostgreSQL stayed up."""
    box = sandbox(tmp_path)
    done, calls = run_script(box, "test.sh", "--down", rabbitmq_status=1)
    assert done.returncode == 0, done.stderr
    assert "pg_ctlcluster 15 main stop" in calls, calls
    assert not [call for call in calls if call.endswith(" stop") and call.startswith("rabbitmqctl")], calls


def test_each_service_down_succeeds_when_it_is_stopped_already(tmp_path: Path) -> None:
    box = sandbox(tmp_path)
    rabbitmq, calls = run_script(box, "rabbitmq.sh", "down", rabbitmq_status=1)
    assert rabbitmq.returncode == 0, rabbitmq.stderr
    postgres, calls = run_script(box, "postgres.sh", "down", rabbitmq_status=1, pg_status="down")
    assert postgres.returncode == 0, postgres.stderr
    oar, calls = run_script(box, "oar.sh", "down", rabbitmq_status=1)
    assert oar.returncode == 0, oar.stderr
    assert not [call for call in calls if call.startswith("pg_ctlcluster")], calls


def test_down_stops_a_running_rabbitmq(tmp_path: Path) -> None:
    box = sandbox(tmp_path)
    done, calls = run_script(box, "rabbitmq.sh", "down", rabbitmq_status=0)
    assert done.returncode == 0, done.stderr
    assert "rabbitmqctl -q -n rabbit@localhost stop" in calls, calls


def test_down_goes_on_past_a_service_that_does_not_stop_and_says_so(tmp_path: Path) -> None:
    box = sandbox(tmp_path)
    done, calls = run_script(box, "test.sh", "--down", rabbitmq_status=0, rabbitmq_stop=1)
    assert done.returncode == 1
    assert "test.sh --down: could not stop: rabbitmq (see the lines above)" in done.stderr, done.stderr
    assert "pg_ctlcluster 15 main stop" in calls, calls


# --- 3. an authority name the registry refuses in its records -----------------------------------------------------


@pytest.mark.parametrize("command", ["init", "quickstart"])
def test_init_refuses_an_authority_with_a_colon_in_words_and_creates_nothing(tmp_path: Path, command: str) -> None:
    """The site was made and its root handed out; then user add, slice create and every node's registry record
    failed ("the HRN part 'onelab:mylab' holds ':'"), and an authority cannot be renamed."""
    site = tmp_path / "site"
    line = one_line_error(sfa_omf(command, str(site), "--authority", "onelab:mylab"), 2)
    assert line.startswith("sfa-omf: the authority HRN (--authority) 'onelab:mylab': the HRN part "), line
    assert "holds ':'" in line and "no user, slice or node could be registered under the authority" in line, line
    assert "write 'onelab.mylab'" in line, line
    assert not site.exists()


@pytest.mark.parametrize("hrn", ["lab+x", "lab/x", "onelab.my:lab", "lab\u00e9"])
def test_every_part_the_registry_refuses_is_refused_for_an_authority(tmp_path: Path, hrn: str) -> None:
    problem = authority_hrn_problem(hrn)
    assert problem is not None
    part = next(part for part in hrn.split(".") if hrn_part_problem(part) is not None)
    assert f"{hrn_part_problem(part)}; no user, slice or node" in problem, problem
    with pytest.raises(AuthorityError, match="the authority HRN"):
        init_directory(str(tmp_path / "site"), hrn, demo=False)
    assert not (tmp_path / "site").exists()


def test_the_registry_and_the_authority_check_apply_one_rule() -> None:
    """The rule moved from registry/records.py to xrn.py: the registry refuses as before."""
    with pytest.raises(BadArgs) as refused:
        new_record_urn("onelab:mylab.alice", "user")
    assert refused.value.message == hrn_part_problem("onelab:mylab")
    assert refused.value.message.startswith("the HRN part 'onelab:mylab' holds ':': parts of a registered name")
    assert authority_hrn_problem("onelab.mylab") is None and hrn_part_problem("my-lab_2") is None
    for hrn in ("a:b+c", "a:", "a::b"):  # no suggestion refused too
        assert "write" not in (authority_hrn_problem(hrn) or "write"), hrn


def test_config_check_refuses_such_an_interface_hrn(tmp_path: Path) -> None:
    path = tmp_path / "site.conf"
    path.write_text(f"[sfa]\ninterface_hrn = onelab:mylab\ndata_dir = {tmp_path}\n", encoding="utf-8")
    problems = [str(problem) for problem in load_config(str(path), environ={}).problems if problem.kind == "invalid"]
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}:2: [sfa] interface_hrn 'onelab:mylab': the HRN part 'onelab:mylab' holds")
    assert "an authority cannot be renamed" in problems[0]
    done = sfa_omf("config", "check", "--settings-only", str(path))
    assert done.returncode != 0 and "[sfa] interface_hrn 'onelab:mylab'" in done.stdout + done.stderr, done


# --- 4. grain_s at most a node's longest grain -----------------------------------------------------------------


def test_config_check_refuses_a_grain_of_two_years(tmp_path: Path) -> None:
    """node add --grain and node import refuse a grain above a year (MAX_GRAIN_S), but grain_s, the grain of a node
    added without one, took ten years: node add stored it."""
    assert MAXIMA["grain_s"] == MAX_GRAIN_S == YEAR_S
    path = tmp_path / "site.conf"
    lines = [f"[sfa]\ninterface_hrn = lab\ndata_dir = {tmp_path}\n", "[sfa_omf]\n", f"max_duration_s = {3 * YEAR_S}\n"]
    path.write_text("".join([*lines, f"grain_s = {2 * YEAR_S}\n"]), encoding="utf-8")
    problems = [str(problem) for problem in load_config(str(path), environ={}).problems if problem.kind == "invalid"]
    assert problems == [f"{path}:6: [sfa_omf] grain_s {2 * YEAR_S} is above its maximum, {YEAR_S}"]
    done = sfa_omf("config", "check", "--settings-only", str(path))
    assert done.returncode != 0 and f"grain_s {2 * YEAR_S} is above its maximum" in done.stdout + done.stderr, done
    path.write_text("".join([*lines, f"grain_s = {YEAR_S}\n"]), encoding="utf-8")
    assert not [problem for problem in load_config(str(path), environ={}).problems if problem.kind == "invalid"]
