"""The omf_sfa REST inventory over HTTPS (Twisted), mounted at ``/resources`` on the aggregate's TLS server: the same
paths as omf_sfa's broker (``/resources/nodes``, ``/resources/leases``, ``/resources/accounts``), so controllers and
tools need only the aggregate's host and port.

The TLS layer asks every client for a certificate (server/tls.py); inventory.py judges the chain against the trusted
roots. Calls run in the server's thread pool (the calendar is synchronous). Answers are omf_sfa's JSON envelope;
errors are ``{"exception": {"code": <HTTP status>, "reason": "..."}}`` as omf_sfa's, plus the GENI code and reason
of the one table (sfa_omf/errors.py) so that the same refusal reads the same everywhere.
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

from sfa_omf.errors import BadArgs, GeniCode, GeniError, Reason
from sfa_omf.server.tls import peer_chain
from sfa_omf.testbed.omf.accounts import account_of
from sfa_omf.testbed.omf.inventory import OmfInventory, check_text, check_texts

log = logging.getLogger("sfa_omf.omf.rest")

#: GENI code -> HTTP status of the omf_sfa-style error answer (anything else: 500).
HTTP_STATUS: dict[GeniCode, int] = {
    GeniCode.BADARGS: 400,
    GeniCode.MISSINGARGS: 400,
    GeniCode.BADVERSION: 400,
    GeniCode.UNSUPPORTED: 405,
    GeniCode.FORBIDDEN: 403,
    GeniCode.CREDENTIAL_INVALID: 401,
    GeniCode.CREDENTIAL_EXPIRED: 401,
    GeniCode.CREDENTIAL_MISMATCH: 401,
    GeniCode.CREDENTIAL_SIGNER_UNTRUSTED: 401,
    GeniCode.EXPIRED: 401,
    GeniCode.SEARCHFAILED: 404,
    GeniCode.REFUSED: 409,
    GeniCode.ALREADYEXISTS: 409,
    GeniCode.TOOBIG: 413,
    GeniCode.UNAVAILABLE: 503,
    GeniCode.BUSY: 503,
    GeniCode.TIMEDOUT: 504,
}


def error_body(error: GeniError) -> tuple[int, dict[str, Any]]:
    """(HTTP status, omf_sfa's error object) for a refusal."""
    status = HTTP_STATUS.get(error.code, 500)
    return status, {
        "exception": {
            "code": status,
            "reason": error.message,
            "geni_code": int(error.code),
            "geni_reason": error.reason.value,
        }
    }


class InventoryResource(resource.Resource):
    """``/resources/<collection>[/<uuid>]``: GET for the testbed's own callers, as much as each may see
    (inventory.py's check_reader); POST/PUT/DELETE of leases for operators. Control characters are refused in every
    string of the path, the query and the body."""

    isLeaf = True

    def __init__(self, inventory: OmfInventory, pool: ThreadPool, reactor: Any) -> None:
        super().__init__()
        self.inventory = inventory
        self.pool = pool
        self.reactor = reactor

    def render_GET(self, request: server.Request) -> Any:
        return self._call(request, self._get)

    def render_POST(self, request: server.Request) -> Any:
        return self._call(request, lambda chain, request: self._write(chain, request, self.inventory.create_lease))

    def render_PUT(self, request: server.Request) -> Any:
        return self._call(request, lambda chain, request: self._write(chain, request, self.inventory.update_lease))

    def render_DELETE(self, request: server.Request) -> Any:
        return self._call(request, lambda chain, request: self._write(chain, request, self.inventory.delete_lease))

    # -- in a worker thread -----------------------------------------------------------------------------------
    def _get(self, chain: Any, request: server.Request) -> dict[str, Any]:
        reader = self.inventory.check_reader(chain)
        collection, identifier = _path(request)
        query = _query(request)
        if identifier:
            query["uuid"] = [identifier]
        return self.inventory.get(collection, query, reader)

    def _write(self, chain: Any, request: server.Request, action: Callable[..., dict[str, Any]]) -> dict[str, Any]:
        collection, identifier = _path(request)
        if collection != "leases":
            raise GeniError(
                Reason.UNSUPPORTED, f"/resources/{collection} is read-only here; operator tools write /resources/leases"
            )
        body = _body(request)
        lease = _lease_named(identifier, _query(request), body)
        if lease:
            body["uuid"] = lease
        return action(chain, body)

    # -- plumbing -----------------------------------------------------------------------------------------------
    def _call(self, request: server.Request, work: Callable[[Any, server.Request], dict[str, Any]]) -> Any:
        chain = peer_chain(request.transport.getHandle())  # type: ignore[union-attr]
        deferred = deferToThreadPool(self.reactor, self.pool, work, chain, request)
        deferred.addCallback(lambda answer: _respond(request, 200, answer))
        deferred.addErrback(lambda failure: _failed(request, failure))
        return server.NOT_DONE_YET


def _path(request: server.Request) -> tuple[str, str]:
    try:
        parts = [check_text(part.decode("utf-8"), "the path") for part in request.postpath or [] if part]
    except UnicodeDecodeError as exc:
        raise BadArgs("the path is not UTF-8") from exc
    if not parts or len(parts) > 2:
        raise GeniError(Reason.NOT_FOUND, "ask /resources/nodes, /resources/leases or /resources/accounts")
    return parts[0], parts[1] if len(parts) == 2 else ""


def _query(request: server.Request) -> dict[str, list[str]]:
    try:
        query = {
            key.decode("utf-8"): [value.decode("utf-8") for value in values or []]
            for key, values in (request.args or {}).items()
        }
    except UnicodeDecodeError as exc:
        raise BadArgs("the query string is not UTF-8") from exc
    check_texts(query, "the query string")
    return query


def _lease_named(identifier: str, query: dict[str, list[str]], body: dict[str, Any]) -> Any:
    """The lease a write names in its path (/resources/leases/<uuid>), its query (?uuid=) and its body ({uuid}):
    "" when none does, BadArgs when two of them name different leases (acting on either could be the wrong one)."""
    named: dict[str, Any] = {}
    if identifier:
        named["the path"] = identifier
    for value in query.get("uuid", []):
        named.setdefault("the query", value)
        if value != named["the query"]:
            raise BadArgs(f"the query names the leases {named['the query']!r} and {value!r}; name one lease")
    if "uuid" in body:
        named["the body"] = body["uuid"]
    values = list(named.values())
    if any(value != values[0] for value in values[1:]):
        which = " but ".join(f"{where} names lease {value!r}" for where, value in named.items())
        raise BadArgs(f"{which}: nothing was changed; name the same lease everywhere, or only in the path")
    return values[0] if values else ""


def _body(request: server.Request) -> dict[str, Any]:
    raw = request.content.read() if request.content is not None else b""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadArgs(f"the body is not JSON: {exc}") from exc
    except RecursionError as exc:  # the decoder recurses once per nesting level
        raise BadArgs("the body is JSON nested too deeply; a lease is an object of a few levels") from exc
    if not isinstance(body, dict):
        raise BadArgs(f"the body must be a JSON object, not {type(body).__name__}")
    check_texts(body, "the body")
    return body


def _respond(request: server.Request, status: int, answer: dict[str, Any]) -> None:
    if request.finished or request.channel is None:
        return  # the client went away
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.write(json.dumps(answer, indent=2).encode("utf-8"))
    request.finish()


def _failed(request: server.Request, failure: Failure) -> None:
    if isinstance(failure.value, GeniError):
        status, body = error_body(failure.value)
        _respond(request, status, body)
        return
    log.error("%s %s failed: %s", request.method, request.path, failure.getTraceback())
    body = {"exception": {"code": 500, "reason": "internal error; the operator's log has the details", "geni_code": 5}}
    _respond(request, 500, body)


def inventory_resource(
    aggregate: Any, base_url: str, pool: ThreadPool, reactor: Any, settings: Any = None
) -> InventoryResource:
    """The ``/resources`` resource over an Aggregate's calendar, trust and backend (server/app.py mounts it when
    the backend is ``omf``); ``settings`` (sfa-omf's Settings) name the controllers and admins who read everything."""
    return InventoryResource(omf_inventory(aggregate, base_url, settings), pool, reactor)


def omf_inventory(aggregate: Any, base_url: str, settings: Any = None) -> OmfInventory:
    """The omf_sfa inventory over an Aggregate's calendar, trust and backend, with its registry's word on its users'
    keys (the AM API's cache). Without ``settings`` (the node importer, which only writes), no controller nor admin is
    named."""
    return OmfInventory(
        aggregate.database,
        aggregate.bookings,
        aggregate.verifier,
        aggregate.backend,
        aggregate.settings.authority_hrn,
        base_url,
        account_policy=aggregate.accounts.policy,
        shared_login=aggregate.accounts.shared_login,
        clock=aggregate.clock,
        controllers=settings.frcp_controller_urns if settings is not None else (),
        admins=settings.web_admin_urns if settings is not None else (),
        frcp_account=frcp_account(aggregate, settings),
        registered_keys=aggregate.registered_keys,
    )


def frcp_account(aggregate: Any, settings: Any = None) -> str:
    """The account the aggregate signs FRCP as (never a lease's account): the emailAddress of its signer's
    certificate when it talks to user_factory, else ``[sfa_frcp] account`` (default root)."""
    user_factory = getattr(aggregate.backend, "user_factory", None)
    signer = user_factory.client.signer if user_factory is not None else None
    if signer is not None and account_of(signer.chain[0].certificate):
        return account_of(signer.chain[0].certificate)
    return str(getattr(settings, "frcp_account", "root"))
