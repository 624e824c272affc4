"""Notifications: how fast events are noticed into the outbox and delivered to a real SMTP server (aiosmtpd) and a
real HTTP webhook receiver, all on 127.0.0.1.

Run from the repository root, with the project's virtualenv (aiosmtpd is a test dependency):

    python benchmarks/notify_bench.py [--leases 500] [--notifiers 1]

Data, made with the calendar's own code in a temporary SQLite file: ``--leases`` provisioned leases of one slice
(10 back-to-back slots on each of ``--leases``/10 nodes), all over at the benchmark's "now", so each has its 6
events (allocated, provisioned, starting soon, started, ending soon, ended); the booking user subscribed to e-mail
and to a webhook. Measured:
``Notifier.notice()`` the first time (writes 12 messages a lease) and again (finds them all there, writes nothing),
then ``Notifier.deliver()`` until the outbox is empty, by ``--notifiers`` notifiers at once (threads, each with its
own connections, as server processes have; they share the outbox through its claims); the receivers' counts are
checked against the outbox (each message exactly once).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from serving import free_port  # benchmarks/ is sys.path[0] when run as a script

from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.outbox import Outbox
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.notify.channels import SmtpSettings
from sfa_omf.notify.notifier import Notifier, NotifySettings

START = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
USER = "urn:publicid:IDN+bench+user+me"
SLICE = "urn:publicid:IDN+bench+slice+mine"


class Counter:
    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def add(self) -> None:
        with self.lock:
            self.count += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=500)
    parser.add_argument("--notifiers", type=int, default=1, help="notifiers delivering at once (threads)")
    args = parser.parse_args()

    mails = Counter()

    class Mailbox:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            mails.add()
            return "250 OK"

    hooks = Counter()

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            hooks.add()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    smtp_port = free_port()
    smtp = Controller(Mailbox(), hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    http = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as directory:
        database = Database(sqlite_url(os.path.join(directory, "notify.sqlite")))
        database.upgrade()
        clock = [START - timedelta(hours=1)]
        policy = Policy(max_advance_s=365 * 86400, max_nodes_per_request=100_000)
        nodes = max(1, args.leases // 10)  # 10 back-to-back slots a node: every lease ended within the last day
        for number in range(nodes):
            Inventory(database, policy).add_node(NodeSpec(f"urn:publicid:IDN+bench+node+n{number}", f"n{number}"))
        bookings = Bookings(database, policy, "bench", clock=lambda: clock[0])
        requests = [
            BookingRequest(
                f"urn:publicid:IDN+bench+node+n{i % nodes}",
                START + timedelta(minutes=30 * (i // nodes)),
                START + timedelta(minutes=30 * (i // nodes) + 30),
                lease_label=f"l{i}",
            )
            for i in range(args.leases)
        ]
        leases = bookings.book(SLICE, START + timedelta(days=60), requests, owner_urn=USER).leases
        bookings.mark_provisioned_all([lease.id for lease in leases], SLICE)
        outbox = Outbox(database)
        outbox.subscribe(USER, "email", "me@example.org")
        outbox.subscribe(USER, "webhook", f"http://127.0.0.1:{http.server_address[1]}/hook")
        clock[0] = START + timedelta(minutes=30 * (args.leases // nodes + 1) + 1)  # all over: 6 events each
        settings = NotifySettings(smtp=SmtpSettings(port=smtp_port), webhook_secret="k")
        notifier = Notifier(database, settings, clock=lambda: clock[0])
        started = time.perf_counter()
        written = notifier.notice()
        notice_s = time.perf_counter() - started
        started = time.perf_counter()
        again = notifier.notice()
        again_s = time.perf_counter() - started
        assert written == 12 * args.leases and again == 0, (written, again)
        others = [Database(database.url) for _ in range(args.notifiers - 1)]
        notifiers = [notifier] + [Notifier(db, settings, clock=lambda: clock[0]) for db in others]
        shares = [0] * len(notifiers)

        def deliver_all(index: int) -> None:
            while True:
                sent = notifiers[index].deliver(limit=500)
                if not sent:
                    return
                shares[index] += sent

        threads = [threading.Thread(target=deliver_all, args=(i,)) for i in range(len(notifiers))]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        deliver_s = time.perf_counter() - started
        delivered = sum(shares)
        for other in others:
            other.dispose()
        counts = outbox.counts()
        assert delivered == written and counts.pending == 0 and counts.sent == written
        assert mails.count == hooks.count == written // 2, (mails.count, hooks.count)
        database.dispose()
    smtp.stop()
    http.shutdown()
    print(
        f"# {args.leases} leases x 6 events x 2 channels, SQLite, {args.notifiers} notifier(s) "
        f"(shares: {shares}), {os.cpu_count()} CPUs\n"
    )
    print("| step | messages | seconds | messages/s |\n|---|---:|---:|---:|")
    print(f"| notice (first: writes the outbox) | {written} | {notice_s:.2f} | {written / notice_s:.0f} |")
    print(f"| notice (again: nothing new) | 0 | {again_s:.2f} | - |")
    print(
        f"| deliver (e-mail and webhook; {args.notifiers} notifier(s)) | {delivered} | {deliver_s:.2f} | "
        f"{delivered / deliver_s:.0f} |"
    )


if __name__ == "__main__":
    main()
