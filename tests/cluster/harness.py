"""Real ``sfa-omf serve`` processes on one real PostgreSQL, as several hosts (instances on ports of their own) or as
one instance with several workers; the lab they serve (authority lab, user ann, node n1, slices s0..sN)."""

from __future__ import annotations

import http.client
import os
import queue
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.cli import main
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.times import format_time, utcnow
from tests.ports import free_port
from tests.tls_harness import proxy

REPO = Path(__file__).resolve().parents[2]
NODE = "urn:publicid:IDN+lab+node+n1"
START_TIMEOUT_S = 90  # bounds on things that must happen (a hang is a failure), generous for a loaded machine
STOP_TIMEOUT_S = 30
#: What a client sees when the process holding its connection dies or cuts it: never an answer, right or wrong.
CONNECTION_ERRORS = (ConnectionError, http.client.HTTPException, ssl.SSLError, OSError)


@dataclass
class Lab:
    """An init directory on the test PostgreSQL with one node and ``slices`` slices of user ann."""

    directory: Path
    database_url: str
    slices: list[tuple[str, str]] = field(default_factory=list)  # (slice URN, ann's credential over it)

    @property
    def config(self) -> str:
        return str(self.directory / "sfa-omf.conf")

    @property
    def ann(self) -> tuple[str, str]:
        sfi = self.directory / "users" / "ann" / "sfi"
        return str(sfi / "lab.ann.user.gid"), str(sfi / "lab.ann.pkey")


def make_lab(tmp_path: Path, database_url: str, slices: int) -> Lab:
    directory = tmp_path / "lab"
    assert main(["init", str(directory), "--authority", "lab", "--user", "ann"]) == 0
    Database(database_url).upgrade()
    Inventory(Database(database_url)).add_node(NodeSpec(NODE, "n1"))
    lab = Lab(directory, database_url)
    authority = LocalAuthority.load(str(directory), "lab")
    ann = authority.issued_chain("lab.ann")
    for number in range(slices):
        chain, _ = authority.issue_gid(f"lab.s{number}", "slice")
        lab.slices.append((chain[0].urn, authority.credential(ann, chain)))
    return lab


class Serve:
    """``sfa-omf serve`` in a subprocess on ports of its own; its standard error lines are collected."""

    def __init__(self, lab: Lab, tmp_path: Path, name: str, *options: str, **environment: str) -> None:
        self.name = name
        self.notify_path = str(tmp_path / f"{name}.notify")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self._command = [sys.executable, "-m", "sfa_omf.cli", "serve", "--config", lab.config, *options]
        self._environment = {key: value for key, value in os.environ.items() if not key.startswith("SFA_")}
        self._environment.update(
            PYTHONPATH=str(REPO), SFA_OMF_DATABASE_URL=lab.database_url, NOTIFY_SOCKET=self.notify_path, **environment
        )
        self._start()

    def _start(self) -> None:
        """The server on two ports found free now (another may take one before it listens: wait_ready starts it
        again then)."""
        self.registry_port, self.aggregate_port = free_port(), free_port()
        self.process = subprocess.Popen(
            self._command,
            env=dict(
                self._environment,
                SFA_REGISTRY_PORT=str(self.registry_port),
                SFA_AGGREGATE_PORT=str(self.aggregate_port),
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line.rstrip("\n"))

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.aggregate_port}/"

    def client(self, lab: Lab) -> Any:
        return proxy(self.url, *lab.ann)

    def wait_ready(self) -> None:
        """READY=1 on the notification socket; AssertionError (with the log) when it exits or says nothing in time.
        A server that exits because one of its ports was taken since it was found free (tests run beside) is started
        again on other ports, twice at most."""
        for _attempt in range(3):
            said = self._until_ready()
            if said == b"READY=1" or not self._port_was_taken():
                break
            self._start()
        assert said == b"READY=1", f"{self.name} did not start (exit {self.process.poll()}): {self.lines}"

    def _until_ready(self) -> bytes:
        self.notify.settimeout(0.5)
        deadline = time.monotonic() + START_TIMEOUT_S
        said = b""
        while not said and self.process.poll() is None and time.monotonic() < deadline:
            try:
                said = self.notify.recv(4096)
            except TimeoutError:
                continue
        return said

    def _port_was_taken(self) -> bool:
        """The server exited saying one of its ports was taken (serve's one-line refusal)."""
        if self.process.poll() is None:
            return False
        self._reader.join(timeout=STOP_TIMEOUT_S)  # every line it wrote
        return any("cannot listen on" in line and "address already in use" in line for line in self.lines)

    def wait_for_line(self, needle: str, timeout_s: float = START_TIMEOUT_S) -> str:
        """The first line (seen or to come) that holds ``needle``; AssertionError when none comes in time."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if needle in line:
                    return line
            seen = len(self.lines)
            left = deadline - time.monotonic()
            assert left > 0, f"{self.name}: no line with {needle!r} within {timeout_s} s: {self.lines}"
            try:
                self._new.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=STOP_TIMEOUT_S)
        self.notify.close()
        return self.process.returncode


def window(days_ahead: int, hour: int) -> tuple[str, str]:
    """A 30-minute slot on a grain boundary, ``days_ahead`` days from now at ``hour`` (UTC), whatever the time now.
    Well inside the lab's slice credentials (30 days from now): a slot 30 days ahead at 02:00 is past them when the
    tests run between midnight and 02:30."""
    day: datetime = utcnow().replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=days_ahead)
    start = day + timedelta(hours=hour)
    return format_time(start), format_time(start + timedelta(minutes=30))


def request(slot: tuple[str, str]) -> str:
    """A request for node n1 in ``slot`` (the ol lease dialect)."""
    return (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        'xmlns:ol="http://nitlab.inf.uth.gr/schema/sfa/rspec/1">'
        f'<ol:lease client_id="l" valid_from="{slot[0]}" valid_until="{slot[1]}"/>'
        f'<node client_id="n1" component_id="{NODE}" exclusive="true"><ol:lease_ref id_ref="l"/></node></rspec>'
    )
