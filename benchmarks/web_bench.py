"""Web calendar and iCal feeds: the Gantt page for 1 000 nodes x 1 week, and a feed of 10 000 leases.

Run from the repository root, with the project's virtualenv (chromium from Debian: bash scripts/chromium.sh):

    python benchmarks/web_bench.py [--nodes 1000] [--leases 10000] [--chromium /usr/bin/chromium]

The data is made with the calendar's own code (``Inventory.add_node``, ``Bookings.book``) in a temporary SQLite
file, with a fixed "now" (a Monday 00:00 UTC):

* page — ``--nodes`` nodes in 10 pools, each with one booking a day for the week (3 h, at an hour that depends on
  the node), 7 bars a node; half the bookings belong to the viewer's slice. Measured: the server's answer
  (``WebCalendar.handle`` for ``/?view=week`` as that viewer: queries, layout, Jinja2; median of 5), its size, and in
  Debian's chromium (Playwright) the time from navigation start to the load event and to the first frame drawn after
  it (two animation frames: layout and paint of the whole page done), median of 5 loads (the answers are made
  beforehand and delivered by Playwright's request routing, so neither the server nor the network is in these).
  The bars on the page are counted against the bookings.
* feed — one slice with ``--leases`` leases (100 nodes, back-to-back 30-minute slots). Measured: the slice feed's
  answer the first time (every lease's revision is recorded: one write) and again (nothing changed: reads only),
  median of 3, its size, and parsing it back with the icalendar parser (the event count is checked).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from icalendar import Calendar

from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.trust.roots import TrustedRoots
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from sfa_omf.web.app import WebCalendar, WebRequest, WebSettings
from sfa_omf.web.viewer import Viewer

NOW = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)  # a Monday
SLICE = "urn:publicid:IDN+bench+slice+mine"
OTHER = "urn:publicid:IDN+bench+slice+other"
USER = "urn:publicid:IDN+bench+user+me"
POLICY = Policy(max_advance_s=365 * 86400, max_nodes_per_request=100_000)


def node_urn(number: int) -> str:
    return f"urn:publicid:IDN+bench+node+n{number:05d}"


def fresh(directory: str, name: str) -> Database:
    database = Database(sqlite_url(os.path.join(directory, name)))
    database.upgrade()
    return database


class FixedViewer(WebCalendar):
    """The benchmark's viewer is a member of SLICE (a certificate would be judged the same way; not measured)."""

    def viewer(self, request: WebRequest) -> Viewer:
        return Viewer(urn=USER, slices=frozenset({SLICE}))


def calendar_for(database: Database) -> WebCalendar:
    verifier = CredentialVerifier(TrustedRoots(()), VerdictCache())
    return FixedViewer(database, verifier, WebSettings(host="bench.example"), clock=lambda: NOW)


def median_ms(function: Any, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def page_bench(directory: str, nodes: int, chromium: str | None) -> list[tuple[str, str]]:
    database = fresh(directory, "page.sqlite")
    inventory = Inventory(database, POLICY)
    for pool in range(10):
        inventory.create_pool(f"pool{pool}")
    for number in range(nodes):
        inventory.add_node(NodeSpec(node_urn(number), f"n{number:05d}", pool=f"pool{number % 10}", hardware_type="x"))
    bookings = Bookings(database, POLICY, "bench", clock=lambda: NOW)
    for day in range(7):
        for slice_urn, parity in ((SLICE, 0), (OTHER, 1)):
            requests = [
                BookingRequest(
                    node_urn(number),
                    NOW + timedelta(days=day, hours=number % 20),
                    NOW + timedelta(days=day, hours=number % 20 + 3),
                )
                for number in range(parity, nodes, 2)
            ]
            bookings.book(slice_urn, NOW + timedelta(days=30), requests, owner_urn=USER if parity == 0 else "")
    calendar = calendar_for(database)
    request = WebRequest(path="/", query={"view": "week", "start": f"{NOW:%Y-%m-%d}"})
    answer = calendar.handle(request)
    assert answer.status == 200
    bars = answer.body.count(b'class="bar ')
    server_ms = median_ms(lambda: calendar.handle(request), 5)
    rows = [
        ("nodes x days", f"{nodes} x 7"),
        ("bars on the page", f"{bars - 3} (bookings: {nodes * 7})"),  # the legend has 3 sample bars
        ("page size", f"{len(answer.body) / 1024:.0f} KiB"),
        ("server: WebCalendar.handle (median of 5)", f"{server_ms:.0f} ms"),
    ]
    assert bars - 3 == nodes * 7
    if chromium:
        rows += browser_rows(calendar, request, chromium, nodes * 7)
    database.dispose()
    return rows


def browser_rows(calendar: WebCalendar, request: WebRequest, chromium: str, bookings: int) -> list[tuple[str, str]]:
    from playwright.sync_api import Route, sync_playwright

    # Answers made beforehand: the browser's part alone is timed (the server's is the row above).
    answers = {
        path: calendar.handle(WebRequest(path=path, query=request.query))
        for path in ("/", "/static/calendar.js", "/static/calendar.css")
    }

    def serve(route: Route) -> None:
        answer = answers[route.request.url.split("/calendar", 1)[1].split("?", 1)[0]]
        route.fulfill(status=answer.status, content_type=answer.content_type, body=answer.body)

    loads, frames = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.route("https://bench.example/**", serve)
        for _ in range(5):
            page.goto("https://bench.example/calendar/?view=week", wait_until="load")
            timing = page.evaluate(
                """() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(() => {
                           const nav = performance.getEntriesByType('navigation')[0];
                           done([nav.loadEventEnd - nav.startTime, performance.now(),
                                 document.querySelectorAll('#gantt .bar').length]); })))"""
            )
            assert timing[2] == bookings, timing
            loads.append(timing[0])
            frames.append(timing[1])
        browser.close()
    return [
        ("chromium: navigation start -> load event (median of 5)", f"{statistics.median(loads):.0f} ms"),
        (
            "chromium: navigation start -> first frame drawn after load (median of 5)",
            f"{statistics.median(frames):.0f} ms",
        ),
    ]


def feed_bench(directory: str, leases: int) -> list[tuple[str, str]]:
    database = fresh(directory, "feed.sqlite")
    inventory = Inventory(database, POLICY)
    node_count = 100
    for number in range(node_count):
        inventory.add_node(NodeSpec(node_urn(number), f"n{number:05d}"))
    bookings = Bookings(database, POLICY, "bench", clock=lambda: NOW)
    per_node = leases // node_count
    for number in range(node_count):
        requests = [
            BookingRequest(
                node_urn(number),
                NOW + timedelta(minutes=30 * slot),
                NOW + timedelta(minutes=30 * slot + 30),
                lease_label=f"l{slot}",
            )
            for slot in range(per_node)
        ]
        bookings.book(SLICE, NOW + timedelta(days=60), requests, owner_urn=USER)
    calendar = calendar_for(database)
    request = WebRequest(path=f"/slice/{SLICE}.ics")
    started = time.perf_counter()
    first = calendar.handle(request)
    first_ms = (time.perf_counter() - started) * 1000
    assert first.status == 200, first.body[:300]
    again_ms = median_ms(lambda: calendar.handle(request), 3)
    started = time.perf_counter()
    events = Calendar.from_ical(first.body).walk("VEVENT")
    parse_ms = (time.perf_counter() - started) * 1000
    assert len(events) == node_count * per_node, len(events)
    database.dispose()
    return [
        ("leases in the feed", f"{len(events)}"),
        ("feed size", f"{len(first.body) / 1024 / 1024:.1f} MiB"),
        ("first answer (records every lease's revision; renders every event)", f"{first_ms:.0f} ms"),
        ("later answers, nothing changed (median of 3)", f"{again_ms:.0f} ms"),
        ("parsing it back with icalendar", f"{parse_ms:.0f} ms"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--leases", type=int, default=10_000)
    parser.add_argument("--chromium", default=os.environ.get("SFA_OMF_TEST_CHROMIUM", "/usr/bin/chromium"))
    args = parser.parse_args()
    chromium = args.chromium if os.path.exists(args.chromium) else None
    print(
        f"# {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, SQLite, "
        f"icalendar {importlib.metadata.version('icalendar')}, Jinja2 {importlib.metadata.version('jinja2')}, "
        f"chromium: {chromium or 'not found (browser rows left out)'}"
    )
    with tempfile.TemporaryDirectory() as directory:
        for title, rows in (
            ("Gantt page, week view", page_bench(directory, args.nodes, chromium)),
            ("iCal slice feed", feed_bench(directory, args.leases)),
        ):
            print(f"\n{title}\n")
            print("| measure | value |\n|---|---|")
            for name, value in rows:
                print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
