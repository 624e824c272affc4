"""The web calendar over HTTPS: a Twisted resource at /calendar that hands each GET (and the forms' POSTs of
/calendar/me) to ``WebCalendar`` in the thread pool (the calendar reads the database) and writes its answer. Nothing
Twisted goes further."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs

from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web import http, resource, server

from sfa_omf.server.tls import peer_chain
from sfa_omf.web.app import WebCalendar, WebRequest, WebResponse
from sfa_omf.web.forms import FORM_TYPE, MAX_FORM_BYTES, FormOrigin

log = logging.getLogger("sfa_omf.server")

#: Headers every answer carries: no framing by other sites, no sniffing, scripts and styles from this server only.
SECURITY_HEADERS = {
    b"content-security-policy": b"default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
}


class WebCalendarResource(resource.Resource):
    """GET (and HEAD), and POST of small forms; the path below /calendar, the query, the form, the TLS client chain
    and the headers that say where a form comes from go to the calendar."""

    isLeaf = True

    def __init__(self, calendar: WebCalendar, pool: ThreadPool, reactor: Any) -> None:
        super().__init__()
        self.calendar = calendar
        self.pool = pool
        self.reactor = reactor

    def render_GET(self, request: server.Request) -> Any:
        return self._handle(request, "GET", {})

    def render_POST(self, request: server.Request) -> Any:
        content_type = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
        if content_type != FORM_TYPE:
            request.setResponseCode(http.UNSUPPORTED_MEDIA_TYPE)
            return f"A form is sent as {FORM_TYPE}.\n".encode()
        body = request.content.read(MAX_FORM_BYTES + 1) if request.content is not None else b""
        if len(body) > MAX_FORM_BYTES:
            request.setResponseCode(http.REQUEST_ENTITY_TOO_LARGE)
            return f"A form is at most {MAX_FORM_BYTES} bytes.\n".encode()
        form = {
            name: values[0]
            for name, values in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()
            if values
        }
        return self._handle(request, "POST", form)

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
        deferred.addCallback(lambda answer: _write(request, answer))
        deferred.addErrback(lambda failure: _failed(request, failure))
        return server.NOT_DONE_YET


def _write(request: server.Request, answer: WebResponse) -> None:
    if request.finished or request.channel is None:
        return
    request.setResponseCode(answer.status)
    request.setHeader(b"content-type", answer.content_type.encode("ascii"))
    for name, value in SECURITY_HEADERS.items():
        request.setHeader(name, value)
    for header, text in answer.headers.items():  # the answer's own (Retry-After on a 503)
        request.setHeader(header.encode("ascii"), text.encode("ascii"))
    request.write(answer.body)
    request.finish()


def _failed(request: server.Request, failure: Failure) -> None:
    log.error("web calendar request %s failed: %s", request.uri, failure.getTraceback())
    _write(
        request,
        WebResponse(500, "text/plain; charset=utf-8", b"internal error; the operator's log has the details\n"),
    )
