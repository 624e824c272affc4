"""The OAR client against an API that misbehaves: every answer that does not read as OAR's is an OarError
(OarUnavailable, so callers answer UNAVAILABLE), promptly and in a bounded number of requests; an answer that drips
in is an OarTimeout once ``timeout_s`` is spent, and one that is too long is refused."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from sfa_omf.testbed.oar import client as oar_client_module
from sfa_omf.testbed.oar.client import OarClient, OarTimeout, OarUnavailable

WINDOW_START = datetime(2027, 1, 10, 10, 0, tzinfo=UTC)
WINDOW_END = WINDOW_START + timedelta(days=1)


class MisbehavingOar:
    """A stand-in for an OAR API gone wrong (or a broken proxy in front of it), on 127.0.0.1: a real OAR cannot be made
    to answer garbage or to drip its answer. It answers every request with ``answer`` (HTTP 200), or when ``pages``
    is set with ``pages(offset, limit)`` for the request's offset and limit; all at once, or one byte every ``drip_s``
    seconds when that is set, and records how many requests it got and, for a drip, how many bytes it still had to
    send when the connection ended."""

    def __init__(self) -> None:
        self.answer = b"{}"
        self.pages: Callable[[int, int], dict[str, Any]] | None = None
        self.drip_s = 0.0
        self.requests = 0
        self.unsent: int | None = None  # bytes of the last dripped answer left unsent when the connection ended
        self.drip_over = threading.Event()
        self.closing = threading.Event()

    def set_answer(self, answer: Any) -> None:
        self.answer = answer if isinstance(answer, bytes) else json.dumps(answer).encode()

    def answer_to(self, path: str) -> bytes:
        """The answer to a request of ``path`` (with its query string)."""
        if self.pages is None:
            return self.answer
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        return json.dumps(self.pages(int(query["offset"][0]), int(query["limit"][0]))).encode()


@pytest.fixture
def misbehaving_oar() -> Iterator[tuple[MisbehavingOar, str]]:
    stand_in = MisbehavingOar()

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            stand_in.requests += 1
            answer = stand_in.answer_to(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            if not stand_in.drip_s:
                self.wfile.write(answer)
                return
            sent = 0
            try:
                while sent < len(stand_in.answer) and not stand_in.closing.is_set():
                    self.wfile.write(stand_in.answer[sent : sent + 1])
                    self.wfile.flush()
                    sent += 1
                    time.sleep(stand_in.drip_s)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client hung up
            finally:
                stand_in.unsent = len(stand_in.answer) - sent
                stand_in.drip_over.set()

        do_GET = do_POST = do_DELETE = answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield stand_in, f"http://127.0.0.1:{server.server_address[1]}/oarapi"
    stand_in.closing.set()
    server.shutdown()
    server.server_close()


def job(**fields: Any) -> dict[str, Any]:
    """A detailed job as OAR lists it, with ``fields`` changed."""
    return {
        "id": 7,
        "state": "Waiting",
        "owner": "bob",
        "start_time": int(WINDOW_START.timestamp()) + 3600,
        "walltime": 3599,
        "types": ["noop"],
        "nodes": [{"network_address": "node1", "status": "reserved"}],
        **fields,
    }


def listing(*items: Any, total: int | None = None) -> dict[str, Any]:
    return {"items": list(items), "offset": 0, "total": len(items) if total is None else total}


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(listing(1, total=5), id="listed item not an object"),
        pytest.param(listing(job(id="x")), id="job id not a number"),
        pytest.param(listing(job(walltime="abc")), id="walltime not a number"),
        pytest.param(listing(job(start_time=2e12)), id="start time beyond any date"),
        pytest.param(listing(job(start_time=1e300)), id="start time beyond any float date"),
        pytest.param(listing(job(nodes=5)), id="nodes not a list"),
        pytest.param({"items": "none", "total": 0}, id="items not a list"),
        pytest.param({"items": [], "total": True}, id="total not a number"),
        pytest.param(listing(job(id=8), job(id=7)), id="page not sorted by id"),
        pytest.param(listing(job(id=7), job(id=7)), id="an id listed twice"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="JSON nested too deep"),
    ],
)
def test_a_listing_oar_would_not_send_is_refused_at_once(
    misbehaving_oar: tuple[MisbehavingOar, str], answer: Any
) -> None:
    stand_in, url = misbehaving_oar
    stand_in.set_answer(answer)
    with pytest.raises(OarUnavailable):
        OarClient(url, timeout_s=5).reservations(WINDOW_START, WINDOW_END)
    assert stand_in.requests == 1


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param({"id": "x", "state": "Waiting", "walltime": "abc"}, id="id not a number"),
        pytest.param({"id": 5, "state": "Waiting", "start_time": 2e12}, id="start time beyond any date"),
        pytest.param({"id": 5, "walltime": float("inf")}, id="walltime infinite"),
        pytest.param([1, 2], id="not an object"),
    ],
)
def test_a_job_oar_would_not_send_is_refused(misbehaving_oar: tuple[MisbehavingOar, str], answer: Any) -> None:
    stand_in, url = misbehaving_oar
    stand_in.set_answer(answer)
    with pytest.raises(OarUnavailable):
        OarClient(url, timeout_s=5).job(5, with_nodes=True)


def test_a_resource_without_id_is_refused(misbehaving_oar: tuple[MisbehavingOar, str]) -> None:
    stand_in, url = misbehaving_oar
    stand_in.set_answer(listing({"network_address": "node1", "state": "Alive"}))
    with pytest.raises(OarUnavailable):
        OarClient(url, timeout_s=5).resources()


def test_a_listing_that_never_ends_is_refused_after_a_bounded_number_of_pages(
    misbehaving_oar: tuple[MisbehavingOar, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_in, url = misbehaving_oar
    # Offsets ignored: every page is full (as many jobs as asked for), and always the first ones.
    stand_in.pages = lambda offset, limit: listing(*(job(id=number) for number in range(1, limit + 1)))
    monkeypatch.setattr(oar_client_module, "MAX_LISTING_PAGES", 5)
    with pytest.raises(OarUnavailable) as refused:
        OarClient(url, timeout_s=5).reservations(WINDOW_START, WINDOW_END)
    assert "did not end within 5 pages" in refused.value.message and "check the URL" in refused.value.message
    assert stand_in.requests == 5


def test_a_listing_whose_total_is_never_reached_ends_at_its_last_page(
    misbehaving_oar: tuple[MisbehavingOar, str],
) -> None:
    """OAR 2.5.9 counts its total in another query than the page's, which counts Running jobs the page leaves out
    (one that ends before the window): the total is more than OAR lists, and the listing ends at its short page."""
    stand_in, url = misbehaving_oar
    jobs = [job(id=number) for number in (1, 2, 3)]
    stand_in.pages = lambda offset, limit: listing(*jobs[offset : offset + limit], total=len(jobs) + 1)
    listed = OarClient(url, timeout_s=5, page_size=2).reservations(WINDOW_START, WINDOW_END)
    assert [listed_job.id for listed_job in listed] == [1, 2, 3]
    assert stand_in.requests == 2


def test_an_empty_page_ends_the_listing(misbehaving_oar: tuple[MisbehavingOar, str]) -> None:
    stand_in, url = misbehaving_oar
    stand_in.set_answer(listing(total=5))  # says 5, lists none
    assert OarClient(url, timeout_s=5).reservations(WINDOW_START, WINDOW_END) == []
    assert stand_in.requests == 1


def test_an_answer_over_the_size_cap_is_refused(misbehaving_oar: tuple[MisbehavingOar, str]) -> None:
    stand_in, url = misbehaving_oar
    stand_in.set_answer(json.dumps(listing()).encode() + b" " * 5000)  # valid JSON, only too long
    with pytest.raises(OarUnavailable) as refused:
        OarClient(url, timeout_s=5, max_answer_bytes=1000).reservations(WINDOW_START, WINDOW_END)
    assert "over 1000 bytes" in refused.value.message
    assert OarClient(url, timeout_s=5, max_answer_bytes=10_000).reservations(WINDOW_START, WINDOW_END) == []


def test_an_answer_that_drips_in_is_a_timeout_for_the_whole_answer(misbehaving_oar: tuple[MisbehavingOar, str]) -> None:
    stand_in, url = misbehaving_oar
    # A valid empty listing, one byte every 50 ms: 10 s in all, each byte well within the 0.5 s per read.
    stand_in.set_answer(json.dumps(listing()).encode() + b" " * 160)
    stand_in.drip_s = 0.05
    with pytest.raises(OarTimeout):
        OarClient(url, timeout_s=0.5).reservations(WINDOW_START, WINDOW_END)
    assert stand_in.drip_over.wait(timeout=60), "the stand-in never saw the connection end"
    assert stand_in.unsent, "the client hung up while the answer was still coming"
    assert stand_in.requests == 1
