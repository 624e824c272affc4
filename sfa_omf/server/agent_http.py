"""The node agents' API over HTTPS, as JSON, under ``/agents/v1/`` on the aggregate's TLS server.

    POST /agents/v1/register           {token, hostname, csr, local_address, lan_group, properties} -> certificate
    POST /agents/v1/heartbeat          {}                       (the agent's certificate at the handshake)
    GET  /agents/v1/work                                        -> {active: [...], finished: [...]}
    PUT  /agents/v1/work/<lease_id>    {state, message}         (idempotent)
    PUT  /agents/v1/files/<lease_id>/out/<name>   raw bytes, header X-Content-SHA256   (stage-out; idempotent)
    GET  /agents/v1/files/<lease_id>/in/<name>    -> raw bytes, header X-Content-SHA256 (stage-in)
    POST /agents/v1/vpn                {csr}    -> OpenVPN client certificate, CA, fixed address, client config

Answers are JSON objects; a refusal is ``{"error": reason, "message": text}`` with a status that says what kind:
400 bad input, 403 not trusted (bad token, unknown certificate), 404 unknown, 405 wrong method, 409 conflict (a
name taken, a staged-out file kept with other content, a lease not open to stage-out now), 413 too big, 502 OAR
refused the node's resource, 503 the database, the DNS server or OAR is busy or down (nothing was written: retry).
The logic is sfa_omf/agents/service.py; this module only moves bytes and threads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web import resource, server

from sfa_omf.agents.service import AgentService
from sfa_omf.errors import GeniError, Reason
from sfa_omf.server.tls import peer_chain
from sfa_omf.trust.gid import GidChain

log = logging.getLogger("sfa_omf.agents")

STATUS = {
    Reason.BAD_ARGS: 400,
    Reason.CALLER_UNTRUSTED: 403,
    Reason.NOT_FOUND: 404,
    Reason.ALREADY_EXISTS: 409,
    Reason.POLICY: 409,  # a rule of the operator's: a lease's files are staged out only from its start to its grace
    Reason.TOO_BIG: 413,
    Reason.DATABASE: 503,
    Reason.BUSY: 503,
    Reason.UNAVAILABLE: 503,  # the DNS server or OAR did not answer: nothing was written, retry
    Reason.TIMEDOUT: 503,
    Reason.TESTBED: 502,  # OAR refused the node's resource: its words are in the message
    Reason.UNSUPPORTED: 501,
}


class AgentResource(resource.Resource):
    """Every path under /agents/v1/ (a leaf: the rest of the path is read here)."""

    isLeaf = True

    def __init__(
        self, service: AgentService, pool: ThreadPool, reactor: Any, max_body_bytes: int, max_file_bytes: int
    ) -> None:
        super().__init__()
        self.max_file_bytes = max_file_bytes
        self.service = service
        self.pool = pool
        self.reactor = reactor
        self.max_body_bytes = max_body_bytes

    def body_limit(self, segments: list[bytes]) -> int:
        """The largest body taken at /agents/<segments>: a staged-out file's upload is a file (``max_file_bytes``),
        any other call a JSON body (``max_body_bytes``). The site applies it as soon as a request's length is
        known (server/xmlrpc.py's OwnBodyLimits), so a body over it is never read."""
        return self.max_file_bytes if _is_file_upload(_agent_path(segments)) else self.max_body_bytes

    def largest_body_limit(self) -> int:
        """The largest body any call of the agent API takes."""
        return max(self.max_body_bytes, self.max_file_bytes)

    def too_big_answer(self, segments: list[bytes], what: str) -> tuple[bytes, str]:
        """The agent API's 413 (its JSON refusal, never an XML-RPC fault) for a body over body_limit(segments)."""
        if _is_file_upload(_agent_path(segments)):
            message = (
                f"{what}: a staged file is at most {self.max_file_bytes} bytes ([sfa_agents] max_file_bytes; the work "
                "answer's max_file_bytes): keep the files of the stage-out directory under it, or ask the testbed's "
                "operator to raise it"
            )
        else:
            message = (
                f"{what}: an agent API call's JSON body is at most {self.max_body_bytes} bytes ([sfa_agents] "
                "max_body_bytes): send a smaller body (an agent's calls take a few kilobytes; check the agent's "
                "version)"
            )
        return json.dumps({"error": str(Reason.TOO_BIG), "message": message}).encode("utf-8"), "application/json"

    def render(self, request: server.Request) -> Any:
        method = request.method.decode("ascii", "replace")
        path = _agent_path(request.postpath or [])
        if path[:1] != ["v1"]:
            return _answer(request, 404, {"error": "not_found", "message": "the agent API lives under /agents/v1/"})
        route = path[1:]
        call: Callable[[GidChain, dict[str, Any]], dict[str, Any]] | None = None
        allowed = ""
        if route == ["register"]:
            allowed, call = "POST", self.service.register
        elif route == ["heartbeat"]:
            allowed, call = "POST", lambda chain, _body: self.service.heartbeat(chain)
        elif route == ["vpn"]:
            allowed, call = "POST", self.service.vpn_certificate
        elif route == ["work"]:
            allowed, call = "GET", lambda chain, _body: self.service.work(chain)
        elif len(route) == 2 and route[0] == "work":
            lease_id = route[1]
            allowed, call = "PUT", lambda chain, body: self.service.report(chain, lease_id, body)
        if _is_file_route(route):
            return self._file(request, method, route[1], route[2], route[3])
        if call is None:
            return _answer(request, 404, {"error": "not_found", "message": f"no agent API call at {request.path!r}"})
        if method != allowed:
            request.setHeader(b"allow", allowed.encode("ascii"))
            return _answer(request, 405, {"error": "bad_args", "message": f"use {allowed} here, not {method}"})
        body: dict[str, Any] = {}
        if method != "GET":
            raw = request.content.read(self.max_body_bytes + 1) if request.content is not None else b""
            if len(raw) > self.max_body_bytes:
                return _answer(
                    request, 413, {"error": "too_big", "message": f"the body is over {self.max_body_bytes} bytes"}
                )
            # The body is bounded above (max_body_bytes) and parsed before the caller is known: whatever it holds
            # must be a 400, never a 500. Nesting deep enough (b"[" * 60000) makes the parser raise RecursionError.
            try:
                decoded = json.loads(raw or b"{}")
            except (ValueError, UnicodeDecodeError) as exc:
                return _answer(request, 400, {"error": "bad_args", "message": f"the body is not JSON: {exc}"})
            except RecursionError:
                message = "the body's JSON is nested too deeply: send a flat JSON object"
                return _answer(request, 400, {"error": "bad_args", "message": message})
            if not isinstance(decoded, dict):
                return _answer(request, 400, {"error": "bad_args", "message": "the body must be a JSON object"})
            body = decoded
        chain = peer_chain(request.transport.getHandle())  # type: ignore[union-attr]
        deferred = deferToThreadPool(self.reactor, self.pool, call, chain, body)
        deferred.addCallback(lambda result: _finish(request, 200, result))
        deferred.addErrback(lambda failure: _failed(request, route, failure))
        return server.NOT_DONE_YET

    def _file(self, request: server.Request, method: str, lease_id: str, direction: str, name: str) -> Any:
        """Stage-out (the agent PUTs a file) and stage-in (the agent GETs one): raw bytes with their SHA-256."""
        allowed = "PUT" if direction == "out" else "GET"
        if method != allowed:
            request.setHeader(b"allow", allowed.encode("ascii"))
            return _answer(request, 405, {"error": "bad_args", "message": f"use {allowed} here, not {method}"})
        chain = peer_chain(request.transport.getHandle())  # type: ignore[union-attr]
        if direction == "out":
            data = request.content.read(self.max_file_bytes + 1) if request.content is not None else b""
            if len(data) > self.max_file_bytes:
                message = f"the file is over the limit of {self.max_file_bytes} bytes"
                return _answer(request, 413, {"error": "too_big", "message": message})
            header = request.getHeader(b"x-content-sha256") or b""
            declared = (header.decode("ascii", "replace") if isinstance(header, bytes) else header).strip().lower()
            deferred: Any = deferToThreadPool(
                self.reactor, self.pool, self.service.stage_out, chain, lease_id, name, data, declared
            )
            deferred.addCallback(lambda result: _finish(request, 200, result))
        else:
            deferred = deferToThreadPool(self.reactor, self.pool, self.service.stage_in, chain, lease_id, name)
            deferred.addCallback(lambda result: _finish_bytes(request, result[0], result[1]))
        deferred.addErrback(lambda failure: _failed(request, ["files", direction], failure))
        return server.NOT_DONE_YET


def _agent_path(segments: list[bytes]) -> list[str]:
    """The path under /agents/ as the API reads it, from its segments (Twisted's postpath: split and unquoted):
    decoded, empty segments dropped. ``["v1", "files", lease_id, "out", name]`` for a stage-out."""
    return [part.decode("utf-8", "replace") for part in segments if part]


def _is_file_route(route: list[str]) -> bool:
    """Is ``route`` (the path after ``v1``) a staged file's, ``files/<lease_id>/<in|out>/<name>``?"""
    return len(route) == 4 and route[0] == "files" and route[2] in ("in", "out")


def _is_file_upload(path: list[str]) -> bool:
    """Does ``path`` (from _agent_path) take a file as its body: a stage-out, ``v1/files/<lease_id>/out/<name>``?"""
    return path[:1] == ["v1"] and _is_file_route(path[1:]) and path[3] == "out"


def _finish_bytes(request: server.Request, data: bytes, sha256: str) -> None:
    if request.finished or request.channel is None:
        return
    request.setHeader(b"content-type", b"application/octet-stream")
    request.setHeader(b"x-content-sha256", sha256.encode("ascii"))
    request.write(data)
    request.finish()


def _answer(request: server.Request, status: int, payload: dict[str, Any]) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(payload).encode("utf-8")


def _finish(request: server.Request, status: int, payload: dict[str, Any]) -> None:
    if request.finished or request.channel is None:
        return  # the agent went away
    request.write(_answer(request, status, payload))
    request.finish()


def _failed(request: server.Request, route: list[str], failure: Failure) -> None:
    error = failure.value
    if isinstance(error, GeniError):
        _finish(request, STATUS.get(error.reason, 500), {"error": str(error.reason), "message": error.message})
        return
    log.error("agent API %s failed: %s", "/".join(route), failure.getTraceback())
    _finish(request, 500, {"error": "server_error", "message": "internal error; the operator's log has the details"})
