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
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sfa_omf.config import AUTO_WORKERS, Settings
from sfa_omf.server.systemd import notify_systemd

log = logging.getLogger("sfa_omf.server")

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
READY_TIMEOUT_S = 120.0  # a worker that has not said READY=1 by then has failed to start
STOP_TIMEOUT_S = 20.0  # workers still running this long after SIGTERM are killed
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


class Supervisor:
    """Starts ``count`` workers running ``command`` (the serve command line without the sockets), keeps them running,
    stops them on SIGTERM/SIGINT. ``run()`` returns the exit status."""

    def __init__(self, command: Sequence[str], count: int, sockets: Sequence[socket.socket]) -> None:
        self.command = list(command)
        self.count = count
        self.sockets = list(sockets)
        self.workers: dict[int, Worker] = {}
        self.restarts: list[float] = []
        self.stopping = False
        self.reload = False
        # Workers say READY=1 here, as they would to systemd (an abstract socket: nothing to clean up).
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify_address = f"@sfa-omf-master-{os.getpid()}-{secrets.token_hex(4)}"
        self.notify.bind("\0" + self.notify_address[1:])
        self.notify.setblocking(False)

    def _environment(self) -> dict[str, str]:
        environment = dict(os.environ)
        environment["NOTIFY_SOCKET"] = self.notify_address
        return environment

    def _spawn(self, number: int) -> Worker:
        fds = ",".join(str(listening.fileno()) for listening in self.sockets)
        process = subprocess.Popen(
            [*self.command, "--worker-sockets", fds, "--worker-number", str(number), "--worker-of", str(os.getpid())],
            env=self._environment(),
            pass_fds=[listening.fileno() for listening in self.sockets],
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

    def _ready_messages(self, timeout_s: float) -> int:
        readable, _, _ = select.select([self.notify], [], [], timeout_s)
        count = 0
        while readable:
            try:
                message = self.notify.recv(4096)
            except BlockingIOError:
                break
            count += message.split(b"\n").count(b"READY=1")
        return count

    def _wait_ready(self) -> bool:
        """True once every worker said READY=1; False when one exits first, time runs out, or we are stopped."""
        ready = 0
        deadline = time.monotonic() + READY_TIMEOUT_S
        while ready < self.count:
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
            ready += self._ready_messages(POLL_S)
        return True

    def _supervise(self) -> int:
        while not self.stopping:
            self._ready_messages(POLL_S)  # restarted workers say READY=1 too; nothing to wait for
            if self.reload:
                self.reload = False
                for worker in self.workers.values():
                    worker.process.send_signal(signal.SIGHUP)
            for number, worker in list(self.workers.items()):
                code = worker.process.poll()
                if code is None or self.stopping:
                    continue
                how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
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
                log.warning(
                    "worker %d (pid %d) %s; its calls in progress were lost; started pid %d in its place",
                    number,
                    worker.process.pid,
                    how,
                    replacement.process.pid,
                )
        return 0

    def _stop_all(self) -> None:
        """SIGTERM to every worker, SIGKILL to those still running after STOP_TIMEOUT_S."""
        running = [worker.process for worker in self.workers.values() if worker.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop within %d s; killed", process.pid, STOP_TIMEOUT_S)
                process.kill()
                process.wait()


PR_SET_PDEATHSIG = 1  # prctl(2)


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


def worker_command(config: str | None, log_level: str | None) -> list[str]:
    """The command line a worker runs: this interpreter, ``sfa-omf serve`` with the master's options."""
    command = [sys.executable, "-m", "sfa_omf.cli", "serve"]
    if config:
        command += ["--config", config]
    if log_level:
        command += ["--log-level", log_level]
    return command
