"""The agent on a bad network: a real agent round against the aggregate over real TLS on loopback, through a relay
that plays the link (reads slowly, cuts a connection part-way, refuses connections). The TLS session is the agent's
and the server's own, end to end: the relay only passes (or stops passing) bytes.

- a body that takes longer than the time-out to upload goes through, written piece by piece;
- a stage-out file that never gets through is kept on the node when the accounts go at last, and the "ended" report
  says where;
- a stage-in download cut part-way is fetched again next round, the lease not failed;
- after a failed round the next is tried sooner (2, 4, 8 ... s), and rounds are timed from their start;
- a stage-out file the server accepted is not sent again after a round that failed part-way;
- the "ended" report not delivered is delivered next round with its message;
- while the accounts' removal fails (rounds that are each "the last"), a file kept on the node is kept once;
- a stage-in file the server cannot serve (500 every time) fails the lease after STAGE_IN_ROUNDS rounds."""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sfa_omf.agents import node
from sfa_omf.agents.host import DirectoryHost
from sfa_omf.agents.node import Agent, Client, enrol
from sfa_omf.agents.staging import FileStore
from sfa_omf.errors import GeniError, Reason
from tests.agents.conftest import Lab
from tests.agents.test_agent_process import NODE, SLICE, book_now, slice_call
from tests.sshkeys import ssh_key

#: What the relay does with a connection (by its number, from 1): pass it, refuse it (closed at once), cut it once
#: more than CUT_BYTES went up (to the server) or came down (to the agent), or pass it up slowly.
PASS, REFUSE, CUT_UP, CUT_DOWN, SLOW_UP = "pass", "refuse", "cut-up", "cut-down", "slow-up"
#: More than any call but a file's transfer (a heartbeat, the work, a report) takes: the relay cuts files only.
CUT_BYTES = 48 * 1024
FILE_BYTES = 200 * 1024


class StandInNetworkRelay:
    """A TCP relay between the agent and the server (a stand-in for the network between them): ``policy`` says,
    for each connection by number, what becomes of it. Counts the connections that carried more than CUT_BYTES up
    (a file staged out)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.policy: Callable[[int], str] = lambda number: PASS
        self.connections = 0
        self.big_uploads = 0
        #: For SLOW_UP: bytes passed up, then a pause of ``pause_s``.
        self.slow_bytes, self.pause_s = 16 * 1024, 0.0
        # A small receive buffer: what the agent sends waits on its own side (as behind a slow link), not here.
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/"

    def _accept(self) -> None:
        while True:
            try:
                agent_side, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                action = self.policy(self.connections)
            if action == REFUSE:
                agent_side.close()
                continue
            server_side = socket.create_connection(("127.0.0.1", self.target_port))
            up = threading.Thread(target=self._pass, args=(agent_side, server_side, action, True), daemon=True)
            down = threading.Thread(target=self._pass, args=(server_side, agent_side, action, False), daemon=True)
            up.start()
            down.start()

    def _pass(self, source: socket.socket, sink: socket.socket, action: str, upward: bool) -> None:
        passed, counted, cut = 0, False, False
        slow = action == SLOW_UP and upward
        try:
            while True:
                data = source.recv(1024 if slow else 65536)
                if not data:
                    break
                passed += len(data)
                if upward and passed > CUT_BYTES and not counted:
                    counted = True
                    with self.lock:
                        self.big_uploads += 1
                if passed > CUT_BYTES and action == (CUT_UP if upward else CUT_DOWN):
                    cut = True  # the link drops: both ends reset
                    break
                sink.sendall(data)
                if slow and passed % self.slow_bytes < len(data):
                    time.sleep(self.pause_s)
        except OSError:
            pass
        for end in (source, sink):
            try:
                if cut:  # closed with a reset (once the other direction's thread let go of it too)
                    end.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def relay(lab: Lab) -> Iterator[StandInNetworkRelay]:
    made = StandInNetworkRelay(lab.server.port_number)
    yield made
    made.close()


class Node:
    """pc1 enrolled through the relay, running a lease of ann's (one round done: the account set up)."""

    def __init__(
        self, lab: Lab, relay: StandInNetworkRelay, tmp_path: Path, stage_out_rounds: int = node.STAGE_OUT_ROUNDS
    ) -> None:
        self.lab, self.relay, self.state = lab, relay, tmp_path / "a1"
        enrol(relay.url, lab.invite(), lab.root, str(self.state), "pc1")
        book_now(lab, ssh_key("ann@laptop"))
        (lease,) = lab.aggregate.bookings.leases(slice_urn=SLICE)
        self.lease_id = lease.id
        self.host = DirectoryHost(str(tmp_path / "root"), str(self.state))
        self.agent = Agent(str(self.state), self.host, interval_s=30, stage_out_rounds=stage_out_rounds)
        self.store = FileStore(str(lab.directory / "agent_files"), lab.settings.agent_max_file_bytes)

    def start(self) -> str:
        """The round that sets the lease up; the account's login."""
        self.agent.run_once()
        (login,) = self.host.logins()
        return login

    def stage_out(self, login: str) -> Path:
        folder = self.host.root / "home" / login / "stage-out"
        folder.mkdir(exist_ok=True)
        return folder

    def health(self) -> tuple[bool, str, str] | None:
        return self.lab.agents.node_health(NODE, self.lease_id)

    def delete(self) -> None:
        """The lease's slice deleted: the next round stages out and takes the account away."""
        client, cred = slice_call(self.lab)
        assert client.Delete([SLICE], [cred], {})["code"]["geni_code"] == 0

    def kept_out(self) -> set[tuple[str, str]]:
        return {(file.name, file.sha256) for file in self.store.list(self.lease_id, "pc1", "out")}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_slow_upload_goes_in_pieces_each_within_the_time_out(
    lab: Lab, relay: StandInNetworkRelay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The time-out bounds each stalled write, not the whole upload: a file that takes several times TIMEOUT_S to
    go up (the relay passes 16 KiB, then stops for 0.2 s) is staged out. One sendall() of the whole body,
    bounded by TIMEOUT_S in total, failed every time."""
    pc1 = Node(lab, relay, tmp_path)
    monkeypatch.setattr(node, "TIMEOUT_S", 3)
    monkeypatch.setattr(node, "CHUNK_BYTES", 16 * 1024)
    client = Client(relay.url, str(pc1.state / node.CERT), str(pc1.state / node.KEY), lab.root)
    data = bytes(range(256)) * 2048  # 512 KiB: 32 pauses of 0.2 s, twice TIMEOUT_S in all
    relay.slow_bytes, relay.pause_s = 16 * 1024, 0.2
    relay.policy = lambda number: SLOW_UP
    client.put_file(pc1.lease_id, "results.bin", data)
    assert pc1.kept_out() == {("results.bin", _sha256(data))}


def test_a_file_that_never_goes_is_kept_when_the_accounts_go(
    lab: Lab, relay: StandInNetworkRelay, tmp_path: Path
) -> None:
    pc1 = Node(lab, relay, tmp_path, stage_out_rounds=2)
    login = pc1.start()
    data = b"r" * FILE_BYTES
    (pc1.stage_out(login) / "results.bin").write_bytes(data)
    (pc1.stage_out(login) / "notes.txt").write_bytes(b"small\n")
    pc1.delete()
    relay.policy = lambda number: CUT_UP  # every file's upload is cut; the small calls go through
    pc1.agent.run_once()
    assert pc1.host.logins() == [login]  # kept for another round
    pc1.agent.run_once()
    assert pc1.host.logins() == []  # the accounts go all the same, the results do not
    kept = pc1.state / node.UNSENT / pc1.lease_id / "results.bin"
    assert kept.read_bytes() == data
    lost, state, message = pc1.health() or (True, "", "")
    assert (lost, state) == (False, "ended")
    assert f"kept on the node in {kept}" in message and "results.bin" in message
    assert pc1.kept_out() == {("notes.txt", _sha256(b"small\n"))}


def test_a_stage_in_cut_part_way_is_fetched_next_round_not_failed(
    lab: Lab, relay: StandInNetworkRelay, tmp_path: Path
) -> None:
    pc1 = Node(lab, relay, tmp_path)
    data = bytes(range(256)) * 800
    pc1.store.put(pc1.lease_id, "pc1", "in", "input.dat", data, _sha256(data))
    relay.policy = lambda number: CUT_DOWN  # the download is cut part-way (as the link dropping)
    pc1.agent.run_once()
    (login,) = pc1.host.logins()
    assert pc1.health() == (False, "", "")  # not failed: not ready yet
    relay.policy = lambda number: PASS
    pc1.agent.run_once()
    assert (pc1.host.root / "home" / login / "stage-in" / "input.dat").read_bytes() == data
    assert pc1.health() == (False, "started", "")


class Waits(threading.Event):
    """The loop's stop event, recording the waits asked of it (not waiting), and setting itself after ``rounds``."""

    def __init__(self, rounds: int, before_wait: Callable[[int], None]) -> None:
        super().__init__()
        self.rounds, self.before_wait = rounds, before_wait
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(float(timeout or 0))
        self.before_wait(len(self.waits))
        if len(self.waits) >= self.rounds:
            self.set()
        return self.is_set()


def test_after_a_failed_round_the_next_is_tried_sooner(lab: Lab, relay: StandInNetworkRelay, tmp_path: Path) -> None:
    """Three rounds find the server cut off (connections refused), then one goes through, then one fails again: the
    waits are 2, 4, 8 s, then the interval less the round's own length (3 s on the test's clock), then 2 s again."""
    pc1 = Node(lab, relay, tmp_path)
    ticks = iter(range(0, 1000, 3))
    pc1.agent.clock = lambda: float(next(ticks))
    pc1.agent.jitter = lambda: 0.0
    relay.policy = lambda number: REFUSE
    passing = {4}  # the round after the third wait goes through

    def link(waits: int) -> None:
        relay.policy = (lambda number: PASS) if waits + 1 in passing else (lambda number: REFUSE)

    stop = Waits(5, link)
    pc1.agent.run(stop)
    assert stop.waits == [2.0, 4.0, 8.0, 27.0, 2.0]
    # The random part shortens a wait by at most a quarter, and a wait is never longer than the interval.
    pc1.agent.jitter = lambda: 1.0
    assert pc1.agent._retry_wait(64.0) == 30.0 * 0.75


def test_files_accepted_are_not_sent_again(lab: Lab, relay: StandInNetworkRelay, tmp_path: Path) -> None:
    pc1 = Node(lab, relay, tmp_path)
    login = pc1.start()
    files = {name: name.encode("ascii") * (FILE_BYTES // 5) for name in ("a.bin", "b.bin", "c.bin")}
    for name, data in files.items():
        (pc1.stage_out(login) / name).write_bytes(data)
    pc1.delete()
    first_upload = relay.big_uploads + 1

    def cut_after_first(number: int) -> str:
        # Connections are numbered before their bytes are seen: cut every one once a first file went up.
        return PASS if relay.big_uploads < first_upload else CUT_UP

    relay.policy = cut_after_first
    pc1.agent.run_once()
    assert len(pc1.kept_out()) == 1 and pc1.host.logins() == [login]
    relay.policy = lambda number: PASS
    before = relay.big_uploads
    pc1.agent.run_once()
    assert relay.big_uploads - before == 2  # the two not accepted yet, not the one already there
    assert pc1.kept_out() == {(name, _sha256(data)) for name, data in files.items()}
    assert pc1.host.logins() == [] and pc1.health() == (False, "ended", "")
    assert not (pc1.state / node.SENT).exists() or json.loads((pc1.state / node.SENT).read_text()) == {}


def test_an_ended_report_not_delivered_keeps_its_message(lab: Lab, relay: StandInNetworkRelay, tmp_path: Path) -> None:
    pc1 = Node(lab, relay, tmp_path, stage_out_rounds=1)
    login = pc1.start()
    data = b"r" * FILE_BYTES
    (pc1.stage_out(login) / "results.bin").write_bytes(data)
    pc1.delete()
    start = relay.connections
    # heartbeat, work: through; the file: cut; the "ended" report: refused.
    relay.policy = lambda number: {start + 3: CUT_UP, start + 4: REFUSE}.get(number, PASS)
    with pytest.raises(OSError):
        pc1.agent.run_once()
    assert pc1.host.logins() == [] and pc1.health() == (False, "started", "")
    relay.policy = lambda number: PASS
    pc1.agent.run_once()
    lost, state, message = pc1.health() or (True, "", "")
    assert (lost, state) == (False, "ended") and "results.bin" in message and "kept on the node" in message


def test_a_file_is_kept_once_while_the_accounts_removal_fails(
    lab: Lab, relay: StandInNetworkRelay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished lease whose accounts cannot be removed (userdel failing: a user's process holds on) is tried again
    each round, and each such round is its "last": its files that could not go, and one the server refuses (a name
    it does not keep), are kept on the node once, not copied again under a new name ('_results.bin', ...) every
    round until the node's disk is full."""
    pc1 = Node(lab, relay, tmp_path, stage_out_rounds=2)
    login = pc1.start()
    data, refused = b"r" * FILE_BYTES, b"not a name the aggregate keeps\n"
    (pc1.stage_out(login) / "results.bin").write_bytes(data)
    (pc1.stage_out(login) / "my notes.txt").write_bytes(refused)
    pc1.delete()
    remove = pc1.host.remove
    failures = []

    def userdel_fails(lease_id: str, logins: list[str]) -> None:
        # A stand-in for LocalHost.remove when userdel fails (this test makes no Unix accounts): raised, retried.
        if logins:
            failures.append(lease_id)
            raise GeniError(Reason.TESTBED, "userdel: user is currently used by process 123")
        remove(lease_id, logins)

    monkeypatch.setattr(pc1.host, "remove", userdel_fails)
    relay.policy = lambda number: CUT_UP  # every file's upload is cut; the small calls go through
    pc1.agent.run_once()  # round 1 of 2: the accounts kept for another round
    for _ in range(5):
        with pytest.raises(GeniError):
            pc1.agent.run_once()
    assert len(failures) == 5 and pc1.host.logins() == [login]
    folder = pc1.state / node.UNSENT / pc1.lease_id
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == {
        "results.bin": data,
        "my_notes.txt": refused,
    }
    monkeypatch.setattr(pc1.host, "remove", remove)  # the user's process ended
    pc1.agent.run_once()
    assert pc1.host.logins() == [] and sorted(path.name for path in folder.iterdir()) == ["my_notes.txt", "results.bin"]
    lost, state, message = pc1.health() or (True, "", "")
    assert (lost, state) == (False, "ended") and f"kept on the node in {folder / 'results.bin'}" in message


def test_a_stage_in_file_the_server_cannot_serve_fails_the_lease(
    lab: Lab, relay: StandInNetworkRelay, tmp_path: Path
) -> None:
    """The server answers 500 for a stage-in file every time (its stored copy unreadable: a directory in its place):
    tried again for STAGE_IN_ROUNDS rounds, the lease not failed meanwhile, then reported failed with the last error,
    not left not ready until its end with nothing said to the experimenter."""
    pc1 = Node(lab, relay, tmp_path)
    data = b"x" * 1000
    pc1.store.put(pc1.lease_id, "pc1", "in", "input.dat", data, _sha256(data))
    stored = next((lab.directory / "agent_files").rglob("input.dat"))
    stored.unlink()
    stored.mkdir()
    for _ in range(node.STAGE_IN_ROUNDS - 1):
        pc1.agent.run_once()
    assert pc1.health() == (False, "", "")  # not ready yet, not failed
    pc1.agent.run_once()
    lost, state, message = pc1.health() or (True, "", "")
    assert (lost, state) == (False, "failed")
    assert f"input.dat could not be fetched in {node.STAGE_IN_ROUNDS} rounds" in message and "500" in message
