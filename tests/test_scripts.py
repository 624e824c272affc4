"""The scripts an operator runs (scripts/*.sh) and the service unit they install (config/sfa-omf.service)."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sfa_omf.cli import _build_parser

REPO = Path(__file__).resolve().parent.parent


def fake_venv(tmp_path: Path) -> Path:
    """A virtualenv whose python only records how it was called (so that no test ever installs anything)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\necho "$*" >> {venv}/calls\nexit 0\n')
    python.chmod(0o755)
    return venv


def venv_install(venv: Path, extras: str) -> subprocess.CompletedProcess[str]:
    script = f'source "{REPO}/scripts/lib.sh"; python_ready() {{ :; }}; venv_install "{extras}"'
    environment = {**os.environ, "SFA_OMF_VENV": str(venv)}
    environment.pop("SFA_OMF_REINSTALL", None)
    return subprocess.run(["bash", "-c", script], env=environment, capture_output=True, text=True, timeout=60)


def test_demo_does_not_reinstall_when_nothing_changed(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path)
    first = venv_install(venv, "")
    assert first.returncode == 0, first.stderr
    assert "== installing sfa-omf into" in first.stderr
    assert any(line.startswith("-m pip install -q -e") for line in (venv / "calls").read_text().splitlines())
    (venv / "calls").unlink()
    again = venv_install(venv, "")
    assert again.returncode == 0 and again.stderr == ""
    assert (venv / "calls").read_text().splitlines() == ["-c import sfa_omf, lxml, xmlsec"]  # the check, no pip
    more_extras = venv_install(venv, "[test]")
    assert "== installing sfa-omf[test]" in more_extras.stderr


def test_demo_and_test_alternating_install_once(tmp_path: Path) -> None:
    """test.sh installs "[test]", demo.sh "": demo's extras are among test's, so alternating the two installs
    nothing more (it reinstalled each time, needing the network, though pyproject.toml had not changed)."""
    venv = fake_venv(tmp_path)
    first = venv_install(venv, "[test]")
    assert first.returncode == 0 and "== installing sfa-omf[test] into" in first.stderr, first.stderr
    (venv / "calls").unlink()
    for extras in ("", "[test]", "", "[test]"):
        again = venv_install(venv, extras)
        assert again.returncode == 0 and again.stderr == "", (extras, again.stderr)
    assert set((venv / "calls").read_text().splitlines()) == {"-c import sfa_omf, lxml, xmlsec"}  # never pip
    assert " extras=[test] " in (venv / ".sfa-omf-install").read_text()


def test_an_install_keeps_the_extras_installed_before(tmp_path: Path) -> None:
    """pyproject.toml changed (a stamp of another digest) after test.sh's install: demo.sh installs again, with the
    "[test]" extras the virtualenv holds, so that they follow pyproject.toml too and test.sh needs no install next."""
    venv = fake_venv(tmp_path)
    assert venv_install(venv, "[test]").returncode == 0
    stamp = venv / ".sfa-omf-install"
    stamp.write_text("0" * 64 + stamp.read_text()[64:])
    demo = venv_install(venv, "")
    assert "== installing sfa-omf[test] into" in demo.stderr, demo.stderr
    assert venv_install(venv, "[test]").stderr == ""


def test_scripts_parse() -> None:
    for script in sorted((REPO / "scripts").glob("*.sh")):
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, (script, done.stderr)


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read(REPO / "config" / "sfa-omf.service")
    return parser


def test_service_unit_runs_serve_unprivileged_with_only_the_data_directory_writable() -> None:
    service = unit()["Service"]
    assert service["Type"] == "notify"  # sfa-omf serve sends READY=1 (tests/server/test_startup.py)
    assert service["Restart"] == "on-failure"
    assert service["User"] not in ("", "root") and service["ProtectSystem"] == "strict"
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/bin/sfa-omf")
    args = _build_parser().parse_args(argv[1:])
    assert args.handler.__name__ == "_serve"
    assert service["ReadWritePaths"] == os.path.dirname(args.config)  # the data directory, nothing else


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_service_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    text = (REPO / "config" / "sfa-omf.service").read_text()
    executable = Path(sys.executable).parent / "sfa-omf"
    if not executable.exists():
        pytest.skip(f"{executable} is not installed")
    copy = tmp_path / "sfa-omf.service"
    copy.write_text(text.replace("/opt/sfa-omf/venv/bin/sfa-omf", str(executable)))
    done = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_example_configuration_has_no_problem() -> None:
    from sfa_omf.config import load_config

    loaded = load_config(str(REPO / "config" / "sfa-omf.conf.example"), environ={})
    # Only what this machine lacks: the example's data directory.
    assert [problem.kind for problem in loaded.problems] in ([], ["path"])
    assert (loaded.settings.hostname, loaded.settings.aggregate_host) == ("am.testbed.example.org", "0.0.0.0")
