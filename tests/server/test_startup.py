"""``sfa-omf serve`` as systemd runs it: a real subprocess. Every start-up failure exits non-zero, fast, with one
line naming the problem and the fix; a started server says READY=1 on $NOTIFY_SOCKET and honours trusted roots added
or removed while it serves (SIGHUP)."""

from __future__ import annotations

import errno
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sfa_omf.cli import main
from sfa_omf.registry.bootstrap import init_directory
from tests.ports import free_port
from tests.tls_harness import proxy

REPO = Path(__file__).resolve().parents[2]
POSTGRES_URL = os.environ.get("SFA_OMF_TEST_POSTGRES_URL")
# A hang is a failure: generous, so that a loaded machine does not fail the test (the exit takes about a second).
EXIT_TIMEOUT_S = 20
READY_TIMEOUT_S = 60  # a started server's READY=1, a log line: bounded too
READY_POLL_S = 0.5  # how often wait_ready looks whether the server exited instead
PORT_RACE_STARTS = 3  # starts of a server whose port another process took meanwhile


@pytest.fixture
def lab(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """An initialised directory (authority lab, user ann) with free ports for both servers."""
    directory = tmp_path / "lab"
    assert main(["init", str(directory), "--authority", "lab", "--user", "ann"]) == 0
    capsys.readouterr()
    return directory


def serve_env(registry_port: int, aggregate_port: int, **extra: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SFA_")}
    environment.update(
        PYTHONPATH=str(REPO),
        SFA_REGISTRY_PORT=str(registry_port),
        SFA_AGGREGATE_PORT=str(aggregate_port),
        **extra,
    )
    return environment


def serve_once(directory: Path, environment: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sfa_omf.cli", *extra, "serve", "--config", str(directory / "sfa-omf.conf")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT_S,
    )


def assert_one_line_failure(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("sfa-omf: cannot start: ")
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_port_taken_exits_at_once_with_one_line(lab: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve_once(lab, serve_env(free_port(), port))
        assert_one_line_failure(
            done, f"the aggregate cannot listen on 127.0.0.1:{port}: address already in use", "[sfa_aggregate] port"
        )
        done = serve_once(lab, serve_env(port, free_port()))
        assert_one_line_failure(done, f"the registry cannot listen on 127.0.0.1:{port}", "[sfa_registry] port")
        # --debug shows the traceback as well
        debug = serve_once(lab, serve_env(free_port(), port), "--debug")
        assert debug.returncode == 1 and "Traceback" in debug.stderr and "StartupError" in debug.stderr


def test_a_port_taken_between_the_check_and_listening_is_one_line_too(lab: Path) -> None:
    """serve checks the ports before importing Twisted; another program may still take one before it listens."""
    from twisted.internet.error import CannotListenError

    from sfa_omf.config import read_config
    from sfa_omf.preflight import StartupError
    from sfa_omf.server.app import _listen

    settings = read_config(str(lab / "sfa-omf.conf"), environ={})

    def taken() -> None:
        raise CannotListenError("127.0.0.1", 12345, OSError(errno.EADDRINUSE, "Address already in use"))

    with pytest.raises(StartupError) as refused:
        _listen("registry", settings, taken)
    assert str(refused.value).startswith(
        "the registry cannot listen on 127.0.0.1:12345: address already in use; another program listens there"
    )


def test_missing_trusted_roots(lab: Path) -> None:
    shutil.rmtree(lab / "trusted_roots")
    done = serve_once(lab, serve_env(free_port(), free_port()))
    assert_one_line_failure(done, f"trusted roots directory {lab}/trusted_roots does not exist", "cp ")
    (lab / "trusted_roots").mkdir()
    done = serve_once(lab, serve_env(free_port(), free_port()))
    assert_one_line_failure(done, "holds no root", "sfa-omf trust add-root")


def test_unreadable_or_missing_key(lab: Path) -> None:
    key = lab / "aggregate" / "am.pkey"
    key.write_text("not a key\n")
    done = serve_once(lab, serve_env(free_port(), free_port()))
    assert_one_line_failure(done, f"cannot use the aggregate's private key {key}", "restore it from a backup")
    key.unlink()
    done = serve_once(lab, serve_env(free_port(), free_port()))
    assert_one_line_failure(done, f"the aggregate's private key {key} does not exist", "run sfa-omf init")


def test_log_file_that_cannot_be_written(lab: Path, tmp_path: Path) -> None:
    log_file = tmp_path / "logs"
    log_file.mkdir()  # a directory: no process can open it as a file, not even root's
    done = serve_once(lab, serve_env(free_port(), free_port(), SFA_OMF_LOG_FILE=str(log_file)))
    assert_one_line_failure(done, f"cannot write the log file {log_file}: Is a directory", "[sfa_omf] log_file")


def test_database_not_migrated(lab: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite"
    done = serve_once(lab, serve_env(free_port(), free_port(), SFA_OMF_DATABASE_URL=f"sqlite:///{empty}"))
    assert_one_line_failure(done, "is empty: run sfa-omf db upgrade")
    assert not empty.exists()  # the check wrote nothing


def test_database_unreachable(lab: Path) -> None:
    url = f"postgresql+psycopg://nobody:secret@127.0.0.1:{free_port()}/calendar"
    done = serve_once(lab, serve_env(free_port(), free_port(), SFA_OMF_DATABASE_URL=url))
    line = assert_one_line_failure(done, "cannot be reached", "start it, or fix [sfa_omf] database_url")
    assert "secret" not in line


@pytest.mark.skipif(not POSTGRES_URL, reason="SFA_OMF_TEST_POSTGRES_URL is not set (scripts/postgres.sh)")
def test_postgres_database_behind_the_code(lab: Path) -> None:
    """A PostgreSQL database at an older migration: 'run sfa-omf db upgrade'; after it, the check passes."""
    from sqlalchemy import create_engine, text

    from sfa_omf.calendar.database import Database, head_revision

    assert POSTGRES_URL
    engine = create_engine(POSTGRES_URL)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        connection.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        connection.execute(text("INSERT INTO alembic_version VALUES ('0005')"))
    engine.dispose()
    try:
        done = serve_once(lab, serve_env(free_port(), free_port(), SFA_OMF_DATABASE_URL=POSTGRES_URL))
        needs = f"is at migration 0005, this sfa-omf needs {head_revision()}: run sfa-omf db upgrade"
        assert_one_line_failure(done, needs)
    finally:  # the shared test database is left empty, never half-made, whatever happened above
        engine = create_engine(POSTGRES_URL)
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        engine.dispose()
    Database(POSTGRES_URL).upgrade()
    from sfa_omf.config import read_config
    from sfa_omf.preflight import database_findings

    settings = read_config(str(lab / "sfa-omf.conf"), environ={"SFA_OMF_DATABASE_URL": POSTGRES_URL})
    assert database_findings(settings) == []


class Server:
    """``sfa-omf serve`` in a subprocess; its log lines are read in a thread so that a test can wait for one."""

    def __init__(self, directory: Path, tmp_path: Path, command: tuple[str, ...] = ()) -> None:
        self.arguments = command or ("serve", "--config", str(directory / "sfa-omf.conf"))
        self.notify_path = str(tmp_path / "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.settimeout(READY_POLL_S)
        self.starts = 0
        self._start()

    def _start(self) -> None:
        # free_port cannot hold the port: another process (the other pytest process of the suite) may take it before
        # the server listens. wait_ready starts the server again on new ports when that happened.
        self.starts += 1
        self.registry_port, self.aggregate_port = free_port(), free_port()
        environment = serve_env(self.registry_port, self.aggregate_port, NOTIFY_SOCKET=self.notify_path)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sfa_omf.cli", *self.arguments],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line.rstrip("\n"))

    def wait_ready(self) -> str:
        """The notification the server sends once it serves (READY=1). A server that exits first fails the test with
        its log, unless it lost a port to another process, then it is started again on new ports (three times)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                return self.notify.recv(4096).decode()
            except TimeoutError:
                pass
            code = self.process.poll()
            if code is not None:
                self.reader.join(timeout=EXIT_TIMEOUT_S)
                log = list(self.lines.queue)
                if any("address already in use" in line.lower() for line in log) and self.starts < PORT_RACE_STARTS:
                    self._start()
                    continue
                raise AssertionError(f"serve exited with {code} before READY=1: {log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no READY=1 within {READY_TIMEOUT_S} s: {list(self.lines.queue)}")

    def wait_for_line(self, needle: str) -> str:
        while True:
            line = self.lines.get(timeout=READY_TIMEOUT_S)  # queue.Empty: the line never came
            if needle in line:
                return line

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=EXIT_TIMEOUT_S)
        self.reader.join(timeout=EXIT_TIMEOUT_S)  # every line the server wrote is in self.lines now
        self.notify.close()
        return code


@pytest.fixture
def server(lab: Path, tmp_path: Path) -> Iterator[Server]:
    running = Server(lab, tmp_path)
    yield running
    if running.process.poll() is None:
        running.stop()


def test_trusted_root_added_while_serving_is_honoured(
    server: Server, lab: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = init_directory(str(tmp_path / "other"), "other", ("bob",))
    sfi = Path(other.sfi_dirs["bob"])
    bob = (str(sfi / "other.bob.user.gid"), str(sfi / "other.bob.pkey"))
    bob_cred = (sfi / "other.bob.user.cred").read_text()
    assert server.wait_ready() == "READY=1"
    url = f"https://127.0.0.1:{server.aggregate_port}/"
    options = {"geni_rspec_version": {"type": "GENI", "version": "3"}}

    ann_sfi = lab / "users" / "ann" / "sfi"
    ann = (str(ann_sfi / "lab.ann.user.gid"), str(ann_sfi / "lab.ann.pkey"))
    ann_cred = (ann_sfi / "lab.ann.user.cred").read_text()

    refused = proxy(url, *bob).ListResources([bob_cred], options)
    assert refused["code"]["geni_code"] != 0 and "other" in refused["output"]

    code = main(
        [
            "trust",
            "add-root",
            str(tmp_path / "other" / "authority" / "other.gid"),
            "--config",
            str(lab / "sfa-omf.conf"),
        ]
    )
    assert code == 0 and "picks it up" in capsys.readouterr().out
    server.process.send_signal(signal.SIGHUP)
    line = server.wait_for_line("trusted roots reloaded")
    assert "added urn:publicid:IDN+other+authority+sa" in line
    assert proxy(url, *bob).ListResources([bob_cred], options)["code"]["geni_code"] == 0

    (lab / "trusted_roots" / "other.gid").unlink()
    server.process.send_signal(signal.SIGHUP)
    assert "removed urn:publicid:IDN+other+authority+sa" in server.wait_for_line("trusted roots reloaded")
    # Refused again as before the root was added (the same code, the same words), not a server that fails every
    # call: the lab's own users are still served.
    again = proxy(url, *bob).ListResources([bob_cred], options)
    assert (again["code"]["geni_code"], again["output"]) == (refused["code"]["geni_code"], refused["output"])
    assert proxy(url, *ann).ListResources([ann_cred], options)["code"]["geni_code"] == 0
    assert server.stop() == 0


def test_unreadable_root_keeps_the_roots_in_use(server: Server, lab: Path) -> None:
    assert server.wait_ready() == "READY=1"
    (lab / "trusted_roots" / "broken.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    server.process.send_signal(signal.SIGHUP)
    line = server.wait_for_line("not reloaded")
    assert "WARNING" in line and "still trusting lab" in line
    assert "cannot read a PEM certificate chain" in line and "bad_args" not in line
    assert server.process.poll() is None  # still serving
    assert server.stop() == 0


def test_serve_starts_quietly(server: Server) -> None:
    """No Alembic lines (no migration runs), and the start says where it serves and whom it trusts."""
    assert server.wait_ready() == "READY=1"
    assert server.stop() == 0
    assert server.process.stderr is not None
    lines = [server.lines.get(timeout=EXIT_TIMEOUT_S) for _ in range(3)]
    assert "registry lab serving the SFA Registry API" in lines[0]
    assert "(advertised as 127.0.0.1); trusting lab" in lines[1]
    assert lines[2].endswith("INFO sfa_omf.server stopped")
    assert server.lines.empty()


def test_quickstart_keeps_the_authority_of_an_existing_directory(lab: Path, tmp_path: Path) -> None:
    """quickstart DIR on a directory made with another --authority serves that authority (it used to refuse)."""
    quick = Server(lab, tmp_path, ("quickstart", str(lab)))
    try:
        assert quick.wait_ready() == "READY=1"
        assert quick.process.stdout is not None
        first = quick.process.stdout.readline()
        assert first.startswith(
            f"sfa-omf aggregate urn:publicid:IDN+lab+authority+am on https://127.0.0.1:{quick.aggregate_port}/ "
        )
    finally:
        assert quick.stop() == 0
    log = []
    while not quick.lines.empty():
        log.append(quick.lines.get())
    assert not [line for line in log if "alembic" in line], log
