"""scripts/oar.sh takes a daemon's PID file at its word only when the process it names is that daemon.

The CI run of the thirty-sixth stop failed in 26 OAR tests ("Cannot connect to executor localhost:6666"): the machine
had been stopped with Almighty running, its PID file stayed, and on the next start another process had that PID.
`oar.sh up` believed Almighty was running and never started it, and `down` would have killed the other process.
These tests run the script in the sandbox of tests/test_setup_hunt_fixes.py (its PID files in the test's directory,
stub service commands first on PATH); the processes named in the PID files are the test's own ``sleep``.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.test_setup_hunt_fixes import run_script, sandbox

PID_FILES = {  # the daemon's name in `oar.sh status`: its PID file in the sandbox
    "Almighty": "oar-server.pid",
    "apache2": "apache2/apache2.pid",
    "node sshd": "oar-node_sshd.pid",
}


def command_lines(box: Path) -> dict[str, str]:
    """The command line each daemon runs under, as scripts/oar.sh starts it (the sshd's names its PID file)."""
    return {
        "Almighty": "/usr/lib/oar/Almighty",
        "apache2": "/usr/sbin/apache2 -k start",
        "node sshd": f"sshd: /usr/sbin/sshd -f /etc/oar/sshd_config -o PidFile={box / 'run' / PID_FILES['node sshd']}",
    }


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The test's ``sleep`` processes, killed at the end whatever the script did to them."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait(timeout=10)


def sleeper(processes: list[subprocess.Popen[bytes]], argv0: str = "sleep") -> subprocess.Popen[bytes]:
    """A ``sleep 600`` whose command line starts with ``argv0``."""
    process = subprocess.Popen(["bash", "-c", 'exec -a "$0" sleep 600', argv0])
    processes.append(process)
    for _ in range(100):  # until bash has exec'd: its command line is then argv0's
        if Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")[0] == argv0.encode():
            return process
        subprocess.run(["sleep", "0.05"], check=True)
    raise AssertionError(f"sleep under {argv0!r} did not start")


def write_pid_files(box: Path, pids: dict[str, int]) -> None:
    for name, pid in pids.items():
        (box / "run" / PID_FILES[name]).write_text(f"{pid}\n", encoding="utf-8")


def test_a_pid_file_naming_another_program_reads_stopped_and_down_leaves_that_program(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    box = sandbox(tmp_path)
    stranger = sleeper(processes)
    write_pid_files(box, dict.fromkeys(PID_FILES, stranger.pid))
    status, _ = run_script(box, "oar.sh", "status", rabbitmq_status=0)
    for name in PID_FILES:
        assert f"{name}: stopped" in status.stdout, status.stdout
    assert status.returncode == 1
    down, _ = run_script(box, "oar.sh", "down", rabbitmq_status=0)
    assert down.returncode == 0, down.stderr
    assert stranger.poll() is None, "oar.sh down killed a process that was none of its daemons"
    assert not [name for name, path in PID_FILES.items() if (box / "run" / path).exists()]


def test_a_pid_file_naming_its_daemon_reads_running_and_down_stops_it(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    box = sandbox(tmp_path)
    daemons = {name: sleeper(processes, line) for name, line in command_lines(box).items()}
    write_pid_files(box, {name: process.pid for name, process in daemons.items()})
    status, _ = run_script(box, "oar.sh", "status", rabbitmq_status=0)
    for name, process in daemons.items():
        assert f"{name}: running (pid {process.pid})" in status.stdout, status.stdout
    # The sleeps are this test's children: reaped as they die (as init reaps a daemon), or stop_pid, which waits
    # until the process is gone from /proc, would find a zombie there.
    with ThreadPoolExecutor(len(daemons)) as reapers:
        exits = {name: reapers.submit(process.wait, 30) for name, process in daemons.items()}
        down, _ = run_script(box, "oar.sh", "down", rabbitmq_status=0)
        assert down.returncode == 0, down.stderr
        for name, exit_status in exits.items():
            assert exit_status.result() == -signal.SIGTERM, name  # stop_pid's kill
    assert not [name for name, path in PID_FILES.items() if (box / "run" / path).exists()]
