"""The web calendar over HTTPS: a Twisted resource at /calendar that hands each GET (and the forms' POSTs of
/calendar/me) to ``WebCalendar`` in the thread pool (the calendar reads the database) and writes its answer. Nothing
Twisted goes further."""

from __future__ import annotations

import hashlib
import logging
from typing import Any
from urllib.parse import parse_qs

from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web import resource, server

from sfa_omf.server.tls import peer_chain
from sfa_omf.web.app import WebCalendar, WebRequest, WebResponse, cache_control
from sfa_omf.web.forms import FORM_TYPE, MAX_FORM_BYTES, FormOrigin

log = logging.getLogger("sfa_omf.server")

#: Headers every answer carries: no framing by other sites, no sniffing, scripts and styles from this server only.
SECURITY_HEADERS = {
    b"content-security-policy": b"default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
}
#: Methods whose 200 answers carry an ETag, and which a matching If-None-Match answers 304 (RFC 9110 13.1.2).
VALIDATED_METHODS = (b"GET", b"HEAD")
#: Hex digits of the body's SHA-256 in an ETag (128 bits: no two bodies a client holds share one).
ETAG_HEX_DIGITS = 32
#: The methods Twisted hands to render_GET/render_POST; any other goes to the calendar, which answers 405 with Allow
#: (Twisted's own answer was "501 Huh?", without the headers above).
RENDERED_METHODS = (b"GET", b"HEAD", b"POST")


class WebCalendarResource(resource.Resource):
    """GET (and HEAD), and POST of small forms; the path below /calendar, the query, the form, the TLS client chain
    and the headers that say where a form comes from go to the calendar."""

    isLeaf = True

    def __init__(self, calendar: WebCalendar, pool: ThreadPool, reactor: Any) -> None:
        super().__init__()
        self.calendar = calendar
        self.pool = pool
        self.reactor = reactor

    def render(self, request: server.Request) -> Any:
        """GET, HEAD and POST as Twisted dispatches them; any other method to the calendar (405 with Allow)."""
        if request.method in RENDERED_METHODS:
            return super().render(request)
        return self._handle(request, request.method.decode("ascii", "replace"), {})

    def render_GET(self, request: server.Request) -> Any:
        return self._handle(request, "GET", {})

    def render_POST(self, request: server.Request) -> Any:
        if getattr(request, "_too_big", False):  # LimitedRequest has answered 413 and closed
            return b""
        content_type = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
        if content_type != FORM_TYPE:
            return self._refuse(request, 415, "Unsupported media type", f"a form is sent as {FORM_TYPE}")
        body = request.content.read(MAX_FORM_BYTES + 1) if request.content is not None else b""
        if len(body) > MAX_FORM_BYTES:  # LimitedRequest refuses it before reading; this is the last word
            return self._refuse(request, 413, "Request entity too large", f"a form is at most {MAX_FORM_BYTES} bytes")
        form = {
            name: values[0]
            for name, values in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()
            if values
        }
        return self._handle(request, "POST", form)

    def _refuse(self, request: server.Request, status: int, title: str, message: str) -> Any:
        """The calendar's error page for a request refused here, with the headers of every answer."""
        _write(request, self.calendar.error_page(status, title, message))
        return server.NOT_DONE_YET

    def _handle(self, request: server.Request, method: str, form: dict[str, str]) -> Any:
        path = "/" + "/".join(part.decode("utf-8", "replace") for part in request.postpath or [])
        query = (
            {
                key.decode("utf-8", "replace"): values[0].decode("utf-8", "replace")
                for key, values in (request.args or {}).items()
                if values
            }
            if method == "GET"
            else {}
        )
        handle = request.transport.getHandle() if request.transport is not None else None
        came_from = FormOrigin(
            fetch_site=request.getHeader("sec-fetch-site") or "",
            origin=request.getHeader("origin") or "",
            host=request.getHeader("host") or "",
        )
        web_request = WebRequest(
            path=path,
            query=query,
            caller_chain=peer_chain(handle) if handle else (),
            method=method,
            form=form,
            came_from=came_from,
        )
        deferred = deferToThreadPool(self.reactor, self.pool, self.calendar.handle, web_request)
        caching = cache_control(web_request)
        deferred.addCallback(lambda answer: _write(request, answer, caching))
        deferred.addErrback(lambda failure: _failed(request, failure))
        return server.NOT_DONE_YET


def _write(request: server.Request, answer: WebResponse, caching: str = "no-store") -> None:
    """Send the calendar's answer with the headers of every answer; ``caching``: its Cache-Control (app.py
    cache_control; no-store for the server's own refusals and failures). A 200 answer to GET or HEAD carries a strong
    ETag of its body (a feed's or page's body depends on who reads it: so does its ETag); when the request's
    If-None-Match names it, the answer is 304 without a body (same ETag and Cache-Control): a calendar client that
    polls a feed gets the feed again only when it changed."""
    if request.finished or request.channel is None:
        return
    tag = etag(answer.body) if answer.status == 200 and request.method in VALIDATED_METHODS else None
    not_modified = tag is not None and matches(request.getHeader("if-none-match"), tag)
    request.setResponseCode(304 if not_modified else answer.status)
    if not not_modified:
        request.setHeader(b"content-type", answer.content_type.encode("ascii"))
    for name, value in SECURITY_HEADERS.items():
        request.setHeader(name, value)
    request.setHeader(b"cache-control", caching.encode("ascii"))
    if tag is not None:
        request.setHeader(b"etag", tag.encode("ascii"))
    for header, text in answer.headers.items():  # the answer's own (Retry-After on a 503)
        request.setHeader(header.encode("ascii"), text.encode("ascii"))
    if not not_modified:
        request.write(answer.body)
    request.finish()


def etag(body: bytes) -> str:
    """The strong ETag of a body: its SHA-256's first ETAG_HEX_DIGITS hex digits, quoted."""
    return f'"{hashlib.sha256(body).hexdigest()[:ETAG_HEX_DIGITS]}"'


def matches(if_none_match: str | None, tag: str) -> bool:
    """Whether an If-None-Match header names ``tag``: ``*``, or a list of entity tags of which one is the same by the
    weak comparison (a ``W/`` prefix ignored), as RFC 9110 13.1.2 has GET and HEAD compare."""
    if not if_none_match:
        return False
    for item in if_none_match.split(","):
        candidate = item.strip()
        if candidate == "*":
            return True
        if candidate.startswith("W/"):
            candidate = candidate[2:]
        if candidate == tag:
            return True
    return False


def _failed(request: server.Request, failure: Failure) -> None:
    log.error("web calendar request %s failed: %s", request.uri, failure.getTraceback())
    _write(
        request,
        WebResponse(500, "text/plain; charset=utf-8", b"internal error; the operator's log has the details\n"),
    )
