"""What Status asks of the containers' SSH servers (sfa_omf/images/lxc.py answering_ssh), against real TCP servers on
loopback: all at once within one budget for the call, whether the servers answer, stay silent or refuse."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from sfa_omf.images.lxc import answering_ssh


@dataclass
class Servers:
    """TCP servers on 127.0.0.1 that hold every connection open until the client closes it; ``banner`` is sent on
    connect (b"": silent). Counts the connections open at the same moment, across all of them."""

    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    open_now: int = 0
    most_open: int = 0
    accepted: int = 0
    threads: list[threading.Thread] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)

    def serve(self, banner: bytes) -> tuple[str, int]:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.1)
        self.sockets.append(listener)
        self._thread(self._accept, listener, banner)
        return "127.0.0.1", int(listener.getsockname()[1])

    def _thread(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self.threads.append(thread)

    def _accept(self, listener: socket.socket, banner: bytes) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._thread(self._hold, connection, banner)

    def _hold(self, connection: socket.socket, banner: bytes) -> None:
        with self.lock:
            self.accepted += 1
            self.open_now += 1
            self.most_open = max(self.most_open, self.open_now)
        with connection:
            if banner:
                connection.sendall(banner)
            connection.settimeout(0.1)
            while not self.stop.is_set():
                try:
                    if connection.recv(16) == b"":
                        break
                except TimeoutError:
                    continue
                except OSError:
                    break
        with self.lock:
            self.open_now -= 1


@pytest.fixture
def servers() -> Iterator[Servers]:
    made = Servers()
    yield made
    made.stop.set()
    for listener in made.sockets:
        listener.close()
    for thread in made.threads:
        thread.join()


def closed_port() -> tuple[str, int]:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return "127.0.0.1", int(probe.getsockname()[1])  # nothing listens once closed: connections are refused


def test_every_container_is_probed_at_once_within_one_budget(servers: Servers) -> None:
    silent = [servers.serve(b"") for _ in range(4)]
    ssh = servers.serve(b"SSH-2.0-dropbear\r\n")
    refused = closed_port()
    assert answering_ssh([*silent, ssh, refused], budget_s=2.0) == {ssh}
    assert servers.most_open >= 4  # the silent ones were held open together: probed at once, not one after another


def test_a_spent_budget_probes_nothing(servers: Servers) -> None:
    ssh = servers.serve(b"SSH-2.0-dropbear\r\n")
    assert answering_ssh([ssh], budget_s=0) == set()
    assert servers.accepted == 0  # not even a connection: the call's budget is what bounds each probe
    assert answering_ssh([ssh], budget_s=2.0) == {ssh}
    assert answering_ssh([], budget_s=2.0) == set()
