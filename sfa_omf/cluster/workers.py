"""``sfa-omf serve --workers N``: N processes serving the same ports, supervised by the process the operator started.

The design (docs/operators.md, "Several workers and several hosts"):

- The master binds both listening sockets (aggregate, registry) itself, then starts N workers: fresh interpreters
  (``python -m sfa_omf.cli serve ... --worker-sockets A,R``) that inherit the two sockets and serve them, each with its
  own reactor, thread pool, database pool and Leadership. All workers accept from the same queue of the kernel, so a
  connection waiting there is never lost when a worker dies: another one accepts it. (SO_REUSEPORT would give each
  worker a queue of its own, and the connections waiting in a dead worker's queue would be reset.)
- The master imports neither Twisted nor the database layer, and serves no call: it forwards SIGTERM/SIGINT (stop)
  and SIGHUP (reload the trusted roots) to the workers, and tells systemd READY=1 once every worker has said it to
  the master (the workers' NOTIFY_SOCKET is the master's own datagram socket).
- Every worker, a replacement too, serves the configuration the master read at its start: the master hands the
  file's bytes to each in an inherited anonymous file (``--worker-config FD``), so that a file edited since (or
  half-edited: invalid) changes nothing until the service restarts. On SIGHUP the master says when the file differs.
- A worker that dies while serving is replaced at once (a warning names it and how it ended); its in-flight calls are
  lost (their clients see the connection close, never a wrong answer: a call is one database transaction). A worker
  that fails before it is ready, or workers dying more than MAX_RESTARTS times in RESTART_WINDOW_S, stop the whole
  server with exit status 1, so that systemd's Restart= policy takes over rather than a loop of crashes here.
"""

from __future__ import annotations

import logging
import os
import secrets
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sfa_omf.config import AUTO_WORKERS, CONFIG_CHANGED_WARNING, Settings, file_changed, load_config
from sfa_omf.server.systemd import notify_systemd

log = logging.getLogger("sfa_omf.server")

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
READY_TIMEOUT_S = 120.0  # a worker that has not said READY=1 by then has failed to start
#: After SIGTERM, how much longer than [sfa_omf] database_timeout_s the master waits for its workers before it kills
#: those still running: a worker answers its calls in progress before it exits, and such a call may be waiting on
#: the database for up to database_timeout_s (a lock another session holds) before it answers (BUSY at worst). The
#: margin covers the rest of the stop: writing the answers (STOP_FLUSH_S, server/app.py), the background tasks' wait,
#: a loaded host. systemd's TimeoutStopSec must be longer still (config/sfa-omf.service).
STOP_MARGIN_S = 15.0


def stop_timeout_s(database_timeout_s: int) -> float:
    """How long the master waits after SIGTERM for a worker still answering calls before it kills it."""
    return database_timeout_s + STOP_MARGIN_S


#: The master's stop timeout with the default database_timeout_s (30 s).
STOP_TIMEOUT_S = stop_timeout_s(Settings.database_timeout_s)
POLL_S = 0.5


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_count(settings: Settings, asked: int | None = None) -> tuple[int, str]:
    """How many processes serve, and a warning to log when the operator asked for more than the database allows.

    ``asked``: ``--workers`` (None: ``[sfa_omf] workers``; 0 there means auto: the cores on PostgreSQL, 1 on SQLite).
    """
    wanted = settings.workers if asked is None else asked
    if settings.calendar_url.startswith("sqlite"):
        if wanted > 1:
            return 1, (
                f"serving with 1 worker, not {wanted}: the embedded SQLite database takes one writing process at a "
                "time; use PostgreSQL ([sfa_db] or [sfa_omf] database_url) to serve with several"
            )
        return 1, ""
    return (cores() if wanted == AUTO_WORKERS else wanted), ""


def bind_listening(host: str, port: int) -> socket.socket:
    """A non-blocking listening TCP socket on (host, port) that worker processes inherit. Raises OSError."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
        0
    ]
    listening = socket.socket(family, kind, proto)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted listens: restarts do not wait
        listening.bind(address)
        listening.listen(socket.SOMAXCONN)
        listening.setblocking(False)
        listening.set_inheritable(True)
    except OSError:
        listening.close()
        raise
    return listening


@dataclass
class Worker:
    number: int
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    ready: bool = False  # it said READY=1: it serves
    status: str = ""  # its last STATUS= (a worker that cannot start says why there: worker_failed)


class Supervisor:
    """Starts ``count`` workers running ``command`` (the serve command line without the sockets), keeps them running,
    stops them on SIGTERM/SIGINT. ``run()`` returns the exit status. ``config_data``: the configuration file
    (``config_path``) as the master read it, handed to every worker it starts (None: workers read the file)."""

    def __init__(
        self,
        command: Sequence[str],
        count: int,
        sockets: Sequence[socket.socket],
        config_path: str = "",
        config_data: bytes | None = None,
        stop_timeout: float | None = None,
    ) -> None:
        """``stop_timeout``: how long a stop waits for the workers before it kills them; None: derived from the
        configuration's database_timeout_s (``stop_timeout_s``), as the workers will read it."""
        self.command = list(command)
        self.stop_timeout = stop_timeout if stop_timeout is not None else _stop_timeout(config_path, config_data)
        self.count = count
        self.sockets = list(sockets)
        self.config_path = config_path
        self.config_data = config_data
        self.config_fd = config_descriptor(config_data) if config_data is not None else None
        self.workers: dict[int, Worker] = {}
        self.restarts: list[float] = []
        self.stopping = False
        self.reload = False
        # Workers say READY=1 here, as they would to systemd (an abstract socket: nothing to clean up).
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if PASS_CREDENTIALS is not None:  # the kernel names the sender of each message: which worker said READY=1
            self.notify.setsockopt(socket.SOL_SOCKET, PASS_CREDENTIALS, 1)
        self.notify_address = f"@sfa-omf-master-{os.getpid()}-{secrets.token_hex(4)}"
        self.notify.bind("\0" + self.notify_address[1:])
        self.notify.setblocking(False)

    def _environment(self) -> dict[str, str]:
        environment = dict(os.environ)
        environment["NOTIFY_SOCKET"] = self.notify_address
        return environment

    def _spawn(self, number: int) -> Worker:
        fds = ",".join(str(listening.fileno()) for listening in self.sockets)
        config = [] if self.config_fd is None else ["--worker-config", str(self.config_fd)]
        inherited = [listening.fileno() for listening in self.sockets]
        process = subprocess.Popen(
            [
                *self.command,
                *config,
                "--worker-sockets",
                fds,
                "--worker-number",
                str(number),
                "--worker-of",
                str(os.getpid()),
            ],
            env=self._environment(),
            pass_fds=inherited if self.config_fd is None else [*inherited, self.config_fd],
            # Born ignoring SIGHUP (kept across exec) until it installs its own reload handler: a reload forwarded
            # while it still imports would otherwise kill it. The master has no threads, so preexec_fn is safe.
            preexec_fn=_ignore_sighup,
        )
        worker = Worker(number, process)
        self.workers[number] = worker
        return worker

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            self.reload = True
        else:
            self.stopping = True

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (0), or until the workers cannot be kept running (1)."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        for number in range(1, self.count + 1):
            self._spawn(number)
        try:
            if not self._wait_ready():
                if self.stopping:  # SIGTERM (systemctl stop) while starting: a stop asked for, not a failure
                    log.info("stopped while starting")
                    return 0
                return 1
            notify_systemd("READY=1")
            log.info(
                "serving with %d worker processes (pids %s)",
                self.count,
                " ".join(str(worker.process.pid) for worker in self.workers.values()),
            )
            return self._supervise()
        finally:
            self._stop_all()
            self.notify.close()
            if self.config_fd is not None:
                os.close(self.config_fd)
                self.config_fd = None

    def _read_notifications(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the workers' messages, then read all there are: READY=1 marks its sender
        ready, STATUS= is kept as its status."""
        readable, _, _ = select.select([self.notify], [], [], timeout_s)
        while readable:
            try:
                message, ancillary, _, _ = self.notify.recvmsg(4096, socket.CMSG_SPACE(CREDENTIALS.size))
            except BlockingIOError:
                break
            worker = self._sender(ancillary)
            if worker is None:  # a process that has been replaced meanwhile
                continue
            for line in message.decode("utf-8", "replace").split("\n"):
                if line == "READY=1":
                    worker.ready = True
                elif line.startswith("STATUS="):
                    worker.status = line.removeprefix("STATUS=")

    def _sender(self, ancillary: list[tuple[int, int, bytes]]) -> Worker | None:
        """The worker that sent a message, by the pid the kernel gives (SCM_CREDENTIALS). Without credentials (not
        Linux): the first worker not ready yet, as the messages are READY=1 in the order the workers start."""
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == CREDENTIALS_MESSAGE and len(data) >= CREDENTIALS.size:
                pid = CREDENTIALS.unpack(data[: CREDENTIALS.size])[0]
                return next((worker for worker in self.workers.values() if worker.process.pid == pid), None)
        return next((worker for worker in self.workers.values() if not worker.ready), None)

    def _wait_ready(self) -> bool:
        """True once every worker said READY=1; False when one exits first, time runs out, or we are stopped."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(worker.ready for worker in self.workers.values()):
            if self.stopping:
                return False
            for worker in self.workers.values():
                code = worker.process.poll()
                if code is not None:  # it printed why (one line, as serve does) on the shared standard error
                    log.debug("worker %d exited with %s before it was ready", worker.number, code)
                    return False
            if time.monotonic() > deadline:
                log.error("the workers did not start within %d s; stopping", READY_TIMEOUT_S)
                return False
            self._read_notifications(POLL_S)
        return True

    def _supervise(self) -> int:
        while not self.stopping:
            self._read_notifications(POLL_S)  # restarted workers say READY=1 too; nothing to wait for
            if self.reload:
                self.reload = False
                if self.config_data is not None and file_changed(self.config_path, self.config_data):
                    log.warning(CONFIG_CHANGED_WARNING, self.config_path)
                for worker in self.workers.values():
                    worker.process.send_signal(signal.SIGHUP)
            for number, worker in list(self.workers.items()):
                code = worker.process.poll()
                if code is None or self.stopping:
                    continue
                self._read_notifications(0)  # what it said just before it exited (sent before, so queued by now)
                how = ended(worker)
                now = time.monotonic()
                self.restarts = [moment for moment in self.restarts if now - moment < RESTART_WINDOW_S]
                if len(self.restarts) >= MAX_RESTARTS:
                    log.error(
                        "worker %d (pid %d) %s, the %dth worker to end within %d s; stopping the server",
                        number,
                        worker.process.pid,
                        how,
                        MAX_RESTARTS + 1,
                        RESTART_WINDOW_S,
                    )
                    return 1
                self.restarts.append(now)
                replacement = self._spawn(number)
                # One that never said READY=1 served no call: it lost none.
                lost = "; its calls in progress were lost" if worker.ready else ""
                log.warning(
                    "worker %d (pid %d) %s%s; started pid %d in its place",
                    number,
                    worker.process.pid,
                    how,
                    lost,
                    replacement.process.pid,
                )
        return 0

    def _stop_all(self) -> None:
        """Close the master's copies of the listening sockets, then SIGTERM to every worker, SIGKILL to those still
        running after ``stop_timeout`` (longer than a call may wait on the database: no answer is lost)."""
        # At once: the ports then refuse new connections as soon as each worker closed its own copy (the first thing
        # a worker does when it stops), rather than the kernel queueing connections nobody will accept until the
        # last worker exits.
        for listening in self.sockets:
            listening.close()
        running = [worker.process for worker in self.workers.values() if worker.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop within %g s; killed", process.pid, self.stop_timeout)
                process.kill()
                process.wait()


def _stop_timeout(config_path: str, config_data: bytes | None) -> float:
    """The stop timeout for the database_timeout_s the workers serve with: the configuration the master read and the
    environment they inherit (the default when the master hands them no file, or it cannot be read here)."""
    if config_data is None:
        return stop_timeout_s(Settings.database_timeout_s)
    try:
        loaded = load_config(config_path, data=config_data)
    except ValueError:  # not UTF-8: the workers say so, and stop
        return stop_timeout_s(Settings.database_timeout_s)
    return stop_timeout_s(loaded.settings.database_timeout_s)


PR_SET_PDEATHSIG = 1  # prctl(2)
#: Linux's SO_PASSCRED and SCM_CREDENTIALS (struct ucred: pid, uid, gid); None elsewhere.
PASS_CREDENTIALS: int | None = getattr(socket, "SO_PASSCRED", None)
CREDENTIALS_MESSAGE: int | None = getattr(socket, "SCM_CREDENTIALS", None)
CREDENTIALS = struct.Struct("iII")


def ended(worker: Worker) -> str:
    """How an ended worker ended, for the log: what it said when it could not start, or its exit status."""
    code = worker.process.returncode
    how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
    if worker.ready:
        return how
    return f"failed to start: {worker.status}" if worker.status else f"failed to start: it {how}"


def _ignore_sighup() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def die_with_master(master_pid: int) -> None:
    """In a worker: end with SIGTERM when the master dies, even by SIGKILL (Linux's parent-death signal), so that no
    orphaned worker keeps serving the ports without a master to replace or stop it."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the master's own SIGTERM still stops us
        return
    if os.getppid() != master_pid:  # the master died before the signal was asked for
        os.kill(os.getpid(), signal.SIGTERM)


def config_descriptor(data: bytes) -> int:
    """A descriptor of an anonymous file holding ``data`` (memfd on Linux: nothing on disk, and the file may hold
    passwords), for the workers to inherit and read with read_config_descriptor."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("sfa-omf.conf", os.MFD_CLOEXEC)
    else:  # (not Linux) a temporary file, removed at once: only the descriptor names it
        fd, name = tempfile.mkstemp(prefix="sfa-omf-conf-")
        os.unlink(name)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return fd


def read_config_descriptor(fd: int) -> bytes:
    """In a worker: the configuration its master handed down (config_descriptor), read from the start whatever the
    shared offset (pread), then the descriptor closed (nothing this worker starts inherits it)."""
    chunks: list[bytes] = []
    offset = 0
    try:
        while chunk := os.pread(fd, 65536, offset):
            chunks.append(chunk)
            offset += len(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def worker_command(config: str | None, log_level: str | None) -> list[str]:
    """The command line a worker runs: this interpreter, ``sfa-omf serve`` with the master's options."""
    command = [sys.executable, "-m", "sfa_omf.cli", "serve"]
    if config:
        command += ["--config", config]
    if log_level:
        command += ["--log-level", log_level]
    return command
