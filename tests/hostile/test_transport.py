"""Hostile bytes on the wire, sent over raw TLS sockets to each endpoint (AM API v3 at /, v2 at /am2, the registry):
deep nesting (class 5), malformed XML-RPC bodies (class 6), declared sizes and header lines over the limits (class
7), and an RSpec string holding invalid UTF-8 (class 9). Every case also asserts that the server logged no crash and
that nothing changed (tests/hostile/__init__.py, tests/hostile/harness.py)."""

from __future__ import annotations

import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.hostile.harness import (
    CALL_TIMEOUT_S,
    GENI_V3,
    RAW_TIMEOUT_S,
    RawAnswer,
    World,
    cred,
    fault_in,
    post_bytes,
    raw_exchange,
)

DEPTH = 50_000
PLACEHOLDER = "@@HOSTILE@@"
PATHS = {"v3": "/", "v2": "/am2", "registry": "/"}
MAX_REQUEST_BYTES = 4 * 1024 * 1024  # [sfa_omf] max_request_bytes of a new init directory


def nested_list(depth: int = DEPTH) -> str:
    return "<value><array><data>" * depth + "<value><string>x</string></value>" + "</data></array></value>" * depth


def nested_struct(depth: int = DEPTH) -> str:
    opening = "<value><struct><member><name>a</name>"
    return opening * depth + "<value><int>1</int></value>" + "</member></struct></value>" * depth


def call_with(method: str, params: tuple[Any, ...], hostile: str | bytes) -> bytes:
    """The methodCall of ``params`` with the one parameter that is PLACEHOLDER replaced by raw ``hostile`` XML."""
    body = xmlrpc.client.dumps(params, method, allow_none=True).encode("utf-8")
    marker = f"<value><string>{PLACEHOLDER}</string></value>".encode()
    assert body.count(marker) == 1, "exactly one parameter is the placeholder"
    return body.replace(marker, hostile.encode("utf-8") if isinstance(hostile, str) else hostile)


# -- what a case expects --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RawCase:
    klass: str
    api: str
    name: str
    payload: Callable[[World], bytes]
    expect: (
        str  # "fault-1": HTTP 200 with an XML-RPC fault 1; "too-big": fault 6 or HTTP 413, closed; "header": 400/431
    )
    timeout_s: float = RAW_TIMEOUT_S

    @property
    def id(self) -> str:
        return f"c{self.klass}-{self.api}-{self.name}"


def judge_raw(case: RawCase, answer: RawAnswer) -> list[str]:
    if answer.status is None:
        return [f"no HTTP answer: {answer.error}"]
    fault = fault_in(answer.body)
    shown = answer.body[:300]
    if case.expect == "fault-1":
        if answer.status != 200 or fault is None or fault.faultCode != 1 or not fault.faultString.strip():
            return [f"expected HTTP 200 with XML-RPC fault 1 and a message, got HTTP {answer.status}: {shown!r}"]
        return []
    problems = []
    if case.expect == "too-big":
        if not (answer.status == 413 or (answer.status == 200 and fault is not None and fault.faultCode == 6)):
            problems.append(f"expected XML-RPC fault 6 or HTTP 413, got HTTP {answer.status}: {shown!r}")
    elif answer.status not in (400, 414, 431):
        problems.append(f"expected HTTP 400/414/431, got HTTP {answer.status}: {shown!r}")
    if not answer.closed:
        problems.append("the server kept the connection open after refusing the request")
    return problems


def play_raw(world: World, case: RawCase) -> None:
    before = world.snapshot()
    mark = world.logs.mark()
    port = world.registry if case.api == "registry" else world.port
    answer = raw_exchange(world, port, case.payload(world), case.timeout_s, want_close=case.expect != "fault-1")
    after = world.snapshot()
    problems = judge_raw(case, answer)
    changes = before.differences(after)
    if changes:
        world.repair(before)
        problems += ["state changed: " + change for change in changes]
    problems += ["server log: " + line for line in world.logs.since(mark)]
    assert not problems, f"{case.id}:\n" + "\n".join(problems)


# -- the valid parameters of every method, one of them the placeholder -------------------------------------------------
def slice_cred(w: World) -> dict[str, str]:
    return cred(w.creds["alice_slice"])


P = PLACEHOLDER
V3_CALLS: dict[str, Callable[[World], tuple[Any, ...]]] = {
    "GetVersion": lambda w: (P,),
    "ListResources": lambda w: (P, {"geni_rspec_version": GENI_V3}),
    "Describe": lambda w: (P, [slice_cred(w)], {"geni_rspec_version": GENI_V3}),
    "Allocate": lambda w: (P, [slice_cred(w)], w.free_request(), {}),
    "Provision": lambda w: (P, [slice_cred(w)], {"geni_rspec_version": GENI_V3}),
    "Status": lambda w: (P, [slice_cred(w)], {}),
    "Renew": lambda w: (P, [slice_cred(w)], "+1d", {}),
    "Delete": lambda w: (P, [slice_cred(w)], {}),
    "PerformOperationalAction": lambda w: (P, [slice_cred(w)], "geni_stop", {}),
    "Shutdown": lambda w: (P, [slice_cred(w)]),
}
V2_CALLS: dict[str, Callable[[World], tuple[Any, ...]]] = {
    "GetVersion": lambda w: (P,),
    "ListResources": lambda w: (P, {"geni_rspec_version": GENI_V3}),
    "CreateSliver": lambda w: (P, [w.creds["alice_slice"]], w.free_request(), [], {}),
    "SliverStatus": lambda w: (P, [w.creds["alice_slice"]], {}),
    "RenewSliver": lambda w: (P, [w.creds["alice_slice"]], "+1d", {}),
    "DeleteSliver": lambda w: (P, [w.creds["alice_slice"]], {}),
    "Shutdown": lambda w: (P, [w.creds["alice_slice"]], {}),
    "ListSlices": lambda w: (P, {}),
    "GetTicket": lambda w: (P, [w.creds["alice_slice"]], w.free_request(), [], {}),
}
REGISTRY_CALLS: dict[str, Callable[[World], tuple[Any, ...]]] = {
    "GetVersion": lambda w: (P,),
    "GetSelfCredential": lambda w: (P, "testbed.alice", "user"),
    "GetCredential": lambda w: (w.creds["alice_user"], P, "slice"),
    "Resolve": lambda w: (P, [w.creds["alice_user"]]),
    "List": lambda w: (P, [w.creds["alice_user"]]),
    "Register": lambda w: (P, [w.creds["operator"]]),
    "Update": lambda w: (P, [w.creds["operator"]]),
    "Remove": lambda w: (P, [w.creds["operator"]], "user"),
}
CALLS = {"v3": V3_CALLS, "v2": V2_CALLS, "registry": REGISTRY_CALLS}


def deep(api: str, method: str, nesting: Callable[[], str]) -> Callable[[World], bytes]:
    return lambda w: post_bytes(PATHS[api], call_with(method, CALLS[api][method](w), nesting()))


# -- class 5: deep nesting, refused while unmarshalling ----------------------------------------------------------------
CLASS_5 = [
    RawCase("5", api, f"{method}-list-{DEPTH}-deep", deep(api, method, nested_list), "fault-1", CALL_TIMEOUT_S)
    for api, calls in CALLS.items()
    for method in calls
] + [
    RawCase("5", api, f"{method}-struct-{DEPTH}-deep", deep(api, method, nested_struct), "fault-1", CALL_TIMEOUT_S)
    for api, method in (("v3", "Allocate"), ("v3", "Status"), ("v2", "CreateSliver"), ("registry", "Update"))
]

# -- class 6: malformed XML-RPC bodies: a fault 1 with HTTP 200, never a 500 -------------------------------------
GOOD = xmlrpc.client.dumps(("x",), "GetVersion").encode()


def in_a_call(value: str | bytes) -> bytes:
    """GetVersion with one parameter whose <value> is ``value`` (raw XML)."""
    return call_with("GetVersion", (PLACEHOLDER,), value)


MALFORMED: list[tuple[str, bytes]] = [
    ("member-without-name", in_a_call("<value><struct><member><value><int>1</int></value></member></struct></value>")),
    ("member-without-value", in_a_call("<value><struct><member><name>a</name></member></struct></value>")),
    ("array-without-data", in_a_call("<value><array><value><int>1</int></value></array></value>")),
    (
        "bogus-encoding",
        b'<?xml version="1.0" encoding="x-bogus-42"?><methodCall><methodName>GetVersion</methodName></methodCall>',
    ),
    ("truncated", GOOD[: len(GOOD) // 2]),
    ("not-xml", b"GET me a node, please"),
    ("empty", b""),
    ("no-methodName", b"<?xml version='1.0'?><methodCall><params/></methodCall>"),
    ("empty-methodName", b"<?xml version='1.0'?><methodCall><methodName></methodName><params/></methodCall>"),
    ("a-methodResponse", xmlrpc.client.dumps((1,), methodresponse=True).encode()),
    ("junk-after-the-document", GOOD + b"<junk/>"),
    ("invalid-base64", in_a_call("<value><base64>!!!not*base64***</base64></value>")),
    ("invalid-int", in_a_call("<value><int>12abc</int></value>")),
    ("invalid-i4", in_a_call("<value><i4>0x1F</i4></value>")),
    ("invalid-double", in_a_call("<value><double>1.2.3</double></value>")),
    ("invalid-boolean", in_a_call("<value><boolean>7</boolean></value>")),
    ("invalid-dateTime", in_a_call("<value><dateTime.iso8601>not-a-date</dateTime.iso8601></value>")),
    ("unknown-type", in_a_call("<value><frobnicate>1</frobnicate></value>")),
    ("invalid-utf8", in_a_call(b"<value><string>caf\xc3\x28 \xff\xfe</string></value>")),
]
CLASS_6 = [
    RawCase("6", api, name, lambda w, api=api, body=body: post_bytes(PATHS[api], body), "fault-1")
    for api in CALLS
    for name, body in MALFORMED
]


# -- class 7: sizes over the limits, refused at once and the connection closed ------------------------------------
def declared_huge(api: str) -> Callable[[World], bytes]:
    """Content-Length: 10 GiB, and only 64 KiB of it sent."""
    return lambda w: post_bytes(PATHS[api], b"<" * 65536, {"Content-Length": "10737418240"})


def declared_over_limit(api: str) -> Callable[[World], bytes]:
    """Content-Length one byte over the limit, and nothing of the body sent."""
    return lambda w: post_bytes(PATHS[api], b"", {"Content-Length": str(MAX_REQUEST_BYTES + 1)})


def long_header(api: str) -> Callable[[World], bytes]:
    return lambda w: post_bytes(PATHS[api], GOOD, {"X-Padding": "a" * (20 * 1024)})


def long_request_line(api: str) -> Callable[[World], bytes]:
    return lambda w: post_bytes(PATHS[api] + "?" + "a" * (20 * 1024), GOOD)


def many_headers(api: str) -> Callable[[World], bytes]:
    return lambda w: post_bytes(PATHS[api], GOOD, {f"X-Padding-{number}": "a" * 100 for number in range(650)})


CLASS_7 = [
    case
    for api in CALLS
    for case in (
        RawCase("7", api, "content-length-10GiB-64KiB-sent", declared_huge(api), "too-big"),
        RawCase("7", api, "content-length-over-the-limit-nothing-sent", declared_over_limit(api), "too-big"),
        RawCase("7", api, "header-line-20KiB", long_header(api), "header"),
        RawCase("7", api, "request-line-20KiB", long_request_line(api), "header"),
        RawCase("7", api, "headers-64KiB-in-all", many_headers(api), "header"),
    )
]

# -- class 9: an RSpec string holding invalid UTF-8 ------------------------------------------------------------------
CLASS_9 = [
    RawCase(
        "9",
        "v3",
        "Allocate-rspec-invalid-utf8",
        lambda w: post_bytes("/", call_with("Allocate", (w.slice, [slice_cred(w)], P, {}), _bad_rspec(w))),
        "fault-1",
    ),
    RawCase(
        "9",
        "v2",
        "CreateSliver-rspec-invalid-utf8",
        lambda w: post_bytes(
            "/am2", call_with("CreateSliver", (w.slice, [w.creds["alice_slice"]], P, [], {}), _bad_rspec(w))
        ),
        "fault-1",
    ),
]


def _bad_rspec(w: World) -> bytes:
    """A valid request whose client_id holds bytes that are not UTF-8 (the document says it is UTF-8)."""
    escaped = xmlrpc.client.escape(w.free_request()).encode("utf-8")
    return (
        b"<value><string>" + escaped.replace(b'client_id="node2"', b'client_id="node2\xe9\xff"') + b"</string></value>"
    )


CASES = CLASS_5 + CLASS_6 + CLASS_7 + CLASS_9


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_bytes(world: World, case: RawCase) -> None:
    play_raw(world, case)


def test_the_server_still_serves_after_the_hostile_bytes(world: World) -> None:
    """Run last in this module: every endpoint still answers an ordinary call."""
    assert world.client("v3").GetVersion()["code"]["geni_code"] == 0
    assert world.client("v2").GetVersion()["geni_api"] == 2
    assert world.client("registry").GetVersion()["interface"] == "registry"
