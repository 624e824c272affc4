"""The OMF backend: how fast the omf_sfa-compatible inventory answers the controllers' question
(``GET /resources/nodes?name=X`` over HTTPS with a client certificate) with 50 controllers asking at once, and what
an FRCP round trip through a real RabbitMQ costs (signed both ways) with the user_factory stand-in. Each is printed
beside a floor measured in the same run: the same TLS server answering a constant body (no calendar), and an
unsigned AMQP loopback through the same broker (publish on our own topic, consume it back).

Run from the repository root with the project's virtualenv (and PYTHONPATH=. for the stand-in in tests/):

    SFA_OMF_TEST_RABBITMQ_URL="$(bash scripts/rabbitmq.sh up | tail -n 1)" python benchmarks/omf_bench.py
    python benchmarks/omf_bench.py --nodes 100 --leases 400 --requests 300 --clients 50 --per-client 20

Set-up: ``init_directory`` (authority ``lab``, user ann) in a temporary directory, the calendar in SQLite there,
the aggregate built as ``sfa-omf serve`` builds it with ``type = omf``, served by Twisted on 127.0.0.1 in this
process; ``--nodes`` nodes and ``--leases`` one-hour leases spread over them (booked through the calendar). Each
request asks for a random node's record with its leases. "new TLS" opens a connection per request (what a
controller doing one check per request does); "keep-alive" reuses one. Concurrency: ``--clients`` threads (the
controllers), each making ``--per-client`` requests on a new TLS connection each, all started together; the table
gives each request's latency and the run's requests/s. FRCP: a session (connect, own topic, reply queue), ``create
{type: user}`` + ``configure {auth_keys}`` on the child (two signed round trips: JWT RS256 both ways, checked
against trusted roots), the configure alone, and the whole account flow (create, configure cert, configure
auth_keys, release) as Provision runs it.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.config import read_config
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.server.app import build_aggregate, start_aggregate
from sfa_omf.server.tls import ServerTls
from sfa_omf.testbed.omf.accounts import AccountCertificates, UserFactory
from sfa_omf.testbed.omf.frcp import FrcpClient, FrcpSession, SignatureChecker, Signer
from sfa_omf.testbed.unix_accounts import LocalAccount
from sfa_omf.times import utcnow
from sfa_omf.trust.gid import load_gid_chain_file
from sfa_omf.trust.pki import load_private_key_file
from sfa_omf.trust.roots import load_trusted_roots
from tests.tls_harness import client_context

reactor: Any = _reactor


def timed(action: Callable[[], object], rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        begin = time.perf_counter()
        action()
        samples.append(time.perf_counter() - begin)
    return samples


def row(label: str, samples: list[float]) -> str:
    ms = sorted(sample * 1000 for sample in samples)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    return f"| {label} | {statistics.median(ms):.2f} | {p95:.2f} | {ms[0]:.2f} | {ms[-1]:.2f} | {len(ms)} |"


def concurrently(one: Callable[[], None], clients: int, each: int) -> tuple[list[float], float]:
    """``clients`` threads started together, each timing ``each`` calls of ``one``; (every latency, wall time)."""
    samples: list[float] = []
    lock = threading.Lock()
    gate = threading.Barrier(clients + 1)

    def client() -> None:
        gate.wait()
        mine = timed(one, each)
        with lock:
            samples.extend(mine)

    workers = [threading.Thread(target=client) for _ in range(clients)]
    for worker in workers:
        worker.start()
    gate.wait()
    begin = time.perf_counter()
    for worker in workers:
        worker.join()
    return samples, time.perf_counter() - begin


def constant_tls_server(data_dir: str) -> int:
    """The floor: Twisted serving a constant JSON body over the aggregate's own TLS context (call in the reactor)."""
    from twisted.web import resource, server

    class Constant(resource.Resource):
        isLeaf = True

        def render_GET(self, request: server.Request) -> bytes:
            request.setHeader(b"content-type", b"application/json")
            return b'{"resource_response": {"resource": {}}}'

    tls = ServerTls(os.path.join(data_dir, "aggregate", "am.pkey"), os.path.join(data_dir, "aggregate", "am.gid"))
    return int(reactor.listenSSL(0, server.Site(Constant()), tls, interface="127.0.0.1").getHost().port)


def loopback(session: FrcpSession) -> None:
    """Publish an unsigned message on our own topic and consume it back: the broker's round trip alone."""
    body = b'{"op": "inform", "mid": "floor"}'
    session.channel.basic_publish(exchange=session.client.topic, routing_key="o.info", body=body)
    for method, _, _ in session.channel.consume(session.queue, auto_ack=True, inactivity_timeout=10):
        if method is None:
            raise SystemExit("the AMQP loopback did not come back")
        break
    session.channel.cancel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--leases", type=int, default=400)
    parser.add_argument("--requests", type=int, default=300, help="requests per measurement (per client)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent controllers")
    parser.add_argument("--per-client", type=int, default=20, help="requests per concurrent controller")
    parser.add_argument("--frcp-rounds", type=int, default=50)
    parser.add_argument("--rabbitmq-url", default=os.environ.get("SFA_OMF_TEST_RABBITMQ_URL", ""))
    args = parser.parse_args()

    print(f"# {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores")
    work = Path(tempfile.mkdtemp(prefix="omf-bench-"))
    report = init_directory(str(work / "lab"), "lab", ("ann",))
    settings = replace(read_config(str(work / "lab" / "sfa-omf.conf")), aggregate_type="omf", threads=8)
    aggregate = build_aggregate(settings)
    for index in range(args.nodes):
        aggregate.inventory.add_node(NodeSpec(f"urn:publicid:IDN+lab+node+node{index}", f"node{index}"))
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    for index in range(args.leases):
        node = f"urn:publicid:IDN+lab+node+node{index % args.nodes}"
        begin = start + timedelta(hours=index // args.nodes)
        aggregate.bookings.book(
            f"urn:publicid:IDN+lab+slice+s{index % 20}",
            start + timedelta(days=20),
            [BookingRequest(node, begin, begin + timedelta(hours=1))],
            owner_urn="urn:publicid:IDN+lab+user+ann",
        )
    thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True)
    thread.start()
    server = blockingCallFromThread(reactor, start_aggregate, settings, aggregate, 0)
    port = server.port_number
    sfi = Path(report.sfi_dirs["ann"])
    context = client_context(str(sfi / "lab.ann.user.gid"), str(sfi / "lab.ann.pkey"))

    def path() -> str:
        return f"/resources/nodes?name=node{random.randrange(args.nodes)}"

    def fetch(connection: http.client.HTTPSConnection) -> None:
        connection.request("GET", path())
        answer = connection.getresponse()
        body = answer.read()
        if answer.status != 200 or b'"resource"' not in body:
            raise SystemExit(f"unexpected answer {answer.status}: {body[:200]!r}")

    def new_tls() -> None:
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context)
        fetch(connection)
        connection.close()

    kept = http.client.HTTPSConnection("127.0.0.1", port, context=context)
    fetch(kept)  # warm up (TLS, caches)
    print(
        f"\nGET /resources/nodes?name=X: {args.nodes} nodes, {args.leases} leases ({args.leases // args.nodes} a node)"
    )
    print("\n| | median ms | p95 ms | min | max | requests |\n|---|---:|---:|---:|---:|---:|")
    print(row("new TLS connection per request", timed(new_tls, args.requests)))
    print(row("keep-alive connection", timed(lambda: fetch(kept), args.requests)))
    kept.close()

    floor_port = blockingCallFromThread(reactor, constant_tls_server, settings.data_dir)
    floor = http.client.HTTPSConnection("127.0.0.1", floor_port, context=context)

    def floor_fetch(connection: http.client.HTTPSConnection) -> None:
        connection.request("GET", "/")
        answer = connection.getresponse()
        if answer.status != 200 or not answer.read():
            raise SystemExit("the floor server did not answer")

    def floor_new_tls() -> None:
        connection = http.client.HTTPSConnection("127.0.0.1", floor_port, context=context)
        floor_fetch(connection)
        connection.close()

    floor_fetch(floor)
    print(row("floor: same TLS server stack, constant body, new TLS", timed(floor_new_tls, args.requests)))
    print(row("floor: keep-alive", timed(lambda: floor_fetch(floor), args.requests)))
    floor.close()

    print(f"\n{args.clients} controllers at once, each {args.per_client} requests on a new TLS connection each")
    print("\n| | median ms | p95 ms | min | max | requests | requests/s |\n|---|---:|---:|---:|---:|---:|---:|")
    for label, one in (("GET /resources/nodes?name=X", new_tls), ("floor: constant body", floor_new_tls)):
        samples, elapsed = concurrently(one, args.clients, args.per_client)
        print(f"{row(label, samples)} {len(samples) / elapsed:.0f} |")
    blockingCallFromThread(reactor, server.stop)

    if not args.rabbitmq_url:
        print("\nFRCP: skipped (no --rabbitmq-url / SFA_OMF_TEST_RABBITMQ_URL)")
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.testbed.omf.user_factory_standin import UserFactoryStandIn

    directory = str(work / "lab")
    authority = LocalAuthority.load(directory, "lab")
    roots = load_trusted_roots(settings.trusted_roots_dir)
    topic = f"user_factory-{uuid.uuid4().hex[:8]}"
    standin = UserFactoryStandIn(
        args.rabbitmq_url, topic, work / "root", Signer(authority.key, authority.chain, "uf"), SignatureChecker(roots)
    )
    standin.start()
    chain = load_gid_chain_file(os.path.join(directory, "aggregate", "am.gid"))
    signer = Signer(load_private_key_file(os.path.join(directory, "aggregate", "am.pkey")), chain, "am")
    frcp = FrcpClient(args.rabbitmq_url, signer=signer, checker=SignatureChecker(roots), timeout_s=30)
    keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH0eXN0Tq3T7pRCpJ9m4E2ZtCkQwYVw3x2d5Yq8wZ1vA bench"]
    print("\nFRCP through RabbitMQ on 127.0.0.1, signed both ways (JWT RS256), user_factory stand-in")
    print("\n| | median ms | p95 ms | min | max | rounds |\n|---|---:|---:|---:|---:|---:|")

    def open_session() -> None:
        with frcp.session():
            pass

    print(row("session: connect, own topic, reply queue, close", timed(open_session, args.frcp_rounds)))
    with frcp.session() as session:
        print(
            row("floor: AMQP loopback on our own topic, unsigned", timed(lambda: loopback(session), args.frcp_rounds))
        )

        def create_configure() -> None:
            child = session.request(topic, "create", {"type": "user", "username": "bench"}).props["res_id"]
            session.request(child, "configure", {"auth_keys": keys})

        print(row("create + configure {auth_keys} (2 signed round trips)", timed(create_configure, args.frcp_rounds)))
        child = session.request(topic, "create", {"type": "user", "username": "bench"}).props["res_id"]
        print(
            row(
                "configure {auth_keys} round trip",
                timed(lambda: session.request(child, "configure", {"auth_keys": keys}), args.frcp_rounds),
            )
        )
        session.request(topic, "release", rid=child)
    certificates = AccountCertificates(authority.key, authority.chain, "lab", "lab.example.org")
    factory = UserFactory(frcp, topic, certificates)
    account = LocalAccount("bench", ("urn:publicid:IDN+lab+user+ann",), tuple(keys))
    print(
        row(
            "one account as Provision makes it (4 round trips + session)",
            timed(lambda: factory.ensure([account]), args.frcp_rounds),
        )
    )
    standin.stop()
    reactor.callFromThread(reactor.stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
