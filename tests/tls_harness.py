"""A real Twisted reactor in a background thread, real TLS listeners on 127.0.0.1, and real TLS clients (shared by
the server and AM tests)."""

from __future__ import annotations

import ssl
import threading
import xmlrpc.client
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet import reactor as _reactor
from twisted.internet.threads import blockingCallFromThread
from twisted.python.threadpool import ThreadPool

reactor: Any = _reactor


@pytest.fixture(scope="session")
def running_reactor() -> Iterator[Any]:
    thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True)
    thread.start()
    yield reactor
    reactor.callFromThread(reactor.stop)
    thread.join(timeout=10)


class Listener:
    """A TLS listener started in the reactor thread; stopped (and its pool too) at the end of the test."""

    def __init__(self, running_reactor: Any) -> None:
        self.reactor = running_reactor
        self.ports: list[Any] = []
        self.pools: list[ThreadPool] = []

    def pool(self, size: int) -> ThreadPool:
        pool = ThreadPool(minthreads=0, maxthreads=size, name="test")
        pool.start()
        self.pools.append(pool)
        return pool

    def listen(self, site: Any, tls: Any) -> int:
        port = blockingCallFromThread(self.reactor, self.reactor.listenSSL, 0, site, tls, interface="127.0.0.1")
        self.ports.append(port)
        return int(port.getHost().port)

    def close(self) -> None:
        for port in self.ports:
            blockingCallFromThread(self.reactor, port.stopListening)
        for pool in self.pools:
            pool.stop()


@pytest.fixture
def listener(running_reactor: Any) -> Iterator[Listener]:
    created = Listener(running_reactor)
    yield created
    created.close()


def client_context(chain_path: str | None, key_path: str | None) -> ssl.SSLContext:
    """What sfi.py and omni do: present a GID chain, do not verify the server."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if chain_path is not None:
        context.load_cert_chain(chain_path, key_path)
    return context


def proxy(url: str, chain_path: str | None, key_path: str | None) -> xmlrpc.client.ServerProxy:
    return xmlrpc.client.ServerProxy(url, context=client_context(chain_path, key_path), allow_none=True)


Caller = Callable[..., Any]
