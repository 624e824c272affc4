"""The hostile suite's machinery: one real aggregate (AM API v3 at /, v2 at /am2) and its registry served over TLS on
127.0.0.1, a slice that already holds a provisioned booking, a snapshot of everything a call could damage, a trap for
tracebacks in the server's log, and the runner that plays one table case and says everything that went wrong.

A case's expectation is kept next to it in the tables (test_*.py): ``Env(code, words...)`` for an AM API envelope,
``Fault(code, words...)`` for an XML-RPC fault (the registry's way, and the transport's for bodies it cannot read).
Each word must appear in the message (case-insensitively): the message names the problem.
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import ssl
import xmlrpc.client
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from sfa_omf.calendar.models import Slice
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.config import read_config
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory, register_demo
from sfa_omf.registry.records import Record, Records
from sfa_omf.server.app import RunningServer, build_aggregate, start_aggregate, start_registry
from sfa_omf.times import format_time, parse_time, utcnow
from sfa_omf.trust.gid import load_gid_chain_file
from tests.sshkeys import ssh_key
from tests.tls_harness import client_context, proxy

AUTHORITY = "testbed"
NODES = ("node1", "node2", "node3", "node4")
GENI_V3 = {"type": "GENI", "version": "3"}
GENI_NS = "http://www.geni.net/resources/rspec/3"
OL_NS = "http://nitlab.inf.uth.gr/schema/sfa/rspec/1"
ALICE_KEY = ssh_key("alice@laptop")
OTHER_KEY = ssh_key("bob@laptop")
HORIZON_DAYS = 14  # [sfa_omf] horizon_days of a new init directory
RAW_TIMEOUT_S = 5.0  # the contract: hostile transport input is answered within 5 s
CALL_TIMEOUT_S = 60.0  # a generous bound that turns a hang of an ordinary call into a failure


def node_urn(name: str) -> str:
    return f"urn:publicid:IDN+{AUTHORITY}+node+{name}"


def user_urn(name: str) -> str:
    return f"urn:publicid:IDN+{AUTHORITY}+user+{name}"


def slice_urn(name: str) -> str:
    return f"urn:publicid:IDN+{AUTHORITY}+slice+{name}"


def cred(xml: str) -> dict[str, str]:
    return {"geni_type": "geni_sfa", "geni_version": "3", "geni_value": xml}


def slot(hours_from_now: int, hours: int = 1) -> tuple[str, str]:
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=hours_from_now)
    return format_time(start), format_time(start + timedelta(hours=hours))


def ol_request(nodes: tuple[str, ...], window: tuple[str, str], *, extra_nodes: int = 0) -> str:
    """An OneLab request: one ol:lease holding ``nodes`` (and ``extra_nodes`` more, named extraN)."""
    names = [*nodes, *(f"extra{number}" for number in range(extra_nodes))]
    node_xml = "".join(
        f'<node client_id="{name}" component_id="{node_urn(name)}" exclusive="true"><ol:lease_ref id_ref="l1"/></node>'
        for name in names
    )
    return (
        f'<rspec type="request" xmlns="{GENI_NS}" xmlns:ol="{OL_NS}">'
        f'<ol:lease client_id="l1" valid_from="{window[0]}" valid_until="{window[1]}"/>{node_xml}</rspec>'
    )


def sfa_request(node: str, start_time: str, duration: str) -> str:
    """An SFA-native lease (what sfi sends): epoch seconds and a number of grains."""
    return (
        f'<rspec type="request" xmlns="{GENI_NS}">'
        f'<node component_id="{node_urn(node)}" client_id="{node}" exclusive="true"/>'
        f'<lease slice_id="{slice_urn("demo")}" start_time="{start_time}" duration="{duration}">'
        f'<node component_id="{node_urn(node)}"/></lease></rspec>'
    )


def plain_request(node: str) -> str:
    """A request with no time at all: the slot comes from the Allocate options (omni) or the default."""
    return (
        f'<rspec type="request" xmlns="{GENI_NS}">'
        f'<node component_id="{node_urn(node)}" client_id="{node}" exclusive="true"/></rspec>'
    )


# -- expectations --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Env:
    """An AM API envelope with this geni_code and a message holding these words."""

    code: int
    words: tuple[str, ...] = ()

    def __init__(self, code: int, *words: str) -> None:
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "words", words)


@dataclass(frozen=True)
class Fault:
    """An XML-RPC fault with this faultCode (HTTP 200) and a faultString holding these words."""

    code: int
    words: tuple[str, ...] = ()

    def __init__(self, code: int, *words: str) -> None:
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "words", words)


Expect = Env | Fault
Args = Callable[["World"], tuple[Any, ...]]


@dataclass(frozen=True)
class Case:
    """One hostile call: ``args(world)`` are sent to ``method`` of ``api`` (v3, v2, registry) as ``caller``."""

    klass: str
    api: str
    method: str
    name: str
    args: Args
    expect: Expect
    caller: str = "alice"

    @property
    def id(self) -> str:
        return f"c{self.klass}-{self.api}-{self.method}-{self.name}"


def ids(cases: list[Case]) -> list[str]:
    found = [case.id for case in cases]
    duplicates = {name for name in found if found.count(name) > 1}
    assert not duplicates, f"case ids must be unique: {sorted(duplicates)}"
    return found


# -- the server's log ----------------------------------------------------------------------------------------------
_BAD_LINE = re.compile(r"traceback|internal error|geni_code=5\b|processing failed", re.IGNORECASE)


class LogTrap(logging.Handler):
    """Everything the server logs (Python logging and Twisted's logger), and the lines that betray a crash."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += " Traceback: " + logging.Formatter().formatException(record.exc_info)
        if record.levelno >= logging.ERROR or _BAD_LINE.search(text):
            self.lines.append(f"{record.levelname} {record.name}: {text[:2000]}")

    def twisted_event(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        failure = event.get("log_failure")
        text = formatEvent(event)
        if failure is not None or event.get("isError") or (level is not None and level >= LogLevel.error):
            trace = failure.getTraceback() if failure is not None else ""
            self.lines.append(f"twisted {level}: {text[:500]} {trace[:2000]}")
        elif _BAD_LINE.search(text):
            self.lines.append(f"twisted: {text[:2000]}")

    def mark(self) -> int:
        return len(self.lines)

    def since(self, mark: int) -> list[str]:
        return self.lines[mark:]

    @classmethod
    @contextmanager
    def installed(cls) -> Iterator[LogTrap]:
        trap = cls()
        loggers = [logging.getLogger(name) for name in ("sfa_omf", "twisted")]
        levels = [logger.level for logger in loggers]
        for logger in loggers:
            logger.setLevel(logging.INFO)  # the one line per call (geni_code=...) is INFO
        root = logging.getLogger()
        root.addHandler(trap)
        globalLogPublisher.addObserver(trap.twisted_event)
        try:
            yield trap
        finally:
            globalLogPublisher.removeObserver(trap.twisted_event)
            root.removeHandler(trap)
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


# -- snapshots -----------------------------------------------------------------------------------------------------
_GENERATED = re.compile(r'\s(generated|expires)="[^"]*"')
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_MOVING = timedelta(hours=1)


def stable(document: str) -> str:
    """An RSpec without what moves with the clock: the root's generated= and expires=, and the times near now or near
    the advertised horizon's end (the horizon, the first free window's start, the last one's end)."""
    now = utcnow()
    horizon_end = now + timedelta(days=HORIZON_DAYS)

    def still(match: re.Match[str]) -> str:
        moment = parse_time(match.group(0))
        if abs(moment - now) < _MOVING:
            return "NOW"
        if abs(moment - horizon_end) < _MOVING:
            return "HORIZON"
        return match.group(0)

    return _TIMESTAMP.sub(still, _GENERATED.sub("", document))


def _stable_answer(answer: Any) -> Any:
    if isinstance(answer, dict) and isinstance(answer.get("value"), dict) and "geni_rspec" in answer["value"]:
        value = dict(answer["value"])
        value["geni_rspec"] = stable(str(value["geni_rspec"]))
        return {**answer, "value": value}
    if isinstance(answer, dict) and isinstance(answer.get("value"), str):
        return {**answer, "value": stable(answer["value"])}
    return answer


@dataclass(frozen=True)
class Snapshot:
    advertisement: Any
    describe: Any
    leases: tuple[Any, ...]
    slices: tuple[Any, ...]
    records: tuple[Record, ...]
    gids: tuple[str, ...]  # the GIDs the authority has issued (its gids/ folder)

    def differences(self, other: Snapshot) -> list[str]:
        found = []
        for name in ("advertisement", "describe", "leases", "slices", "records", "gids"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                found.append(f"{name} changed:\n  before: {str(mine)[:1500]}\n  after:  {str(theirs)[:1500]}")
        return found


# -- the world -----------------------------------------------------------------------------------------------------
@dataclass
class World:
    """The running aggregate and registry, the users' credentials, the slice with its booking, and the log trap."""

    directory: Path
    reactor: Any
    aggregate: Any
    server: RunningServer
    registry_port: Any
    authority: LocalAuthority
    logs: LogTrap
    creds: dict[str, str] = field(default_factory=dict)
    window: tuple[str, str] = ("", "")
    slivers: list[str] = field(default_factory=list)
    _lister: Any = None

    # -- addresses and clients
    @property
    def port(self) -> int:
        return self.server.port_number

    @property
    def registry(self) -> int:
        return int(self.registry_port.getHost().port)

    def url(self, api: str) -> str:
        if api == "registry":
            return f"https://127.0.0.1:{self.registry}/"
        return f"https://127.0.0.1:{self.port}/" + ("am2" if api == "v2" else "")

    def tls_files(self, who: str) -> tuple[str, str]:
        sfi = self.directory / "users" / who / "sfi"
        return str(sfi / f"{AUTHORITY}.{who}.user.gid"), str(sfi / f"{AUTHORITY}.{who}.pkey")

    def client(self, api: str, who: str = "alice") -> Any:
        return proxy(self.url(api), *self.tls_files(who))

    def context(self, who: str = "alice") -> ssl.SSLContext:
        return client_context(*self.tls_files(who))

    # -- the arguments cases use
    @property
    def slice(self) -> str:
        return slice_urn("demo")

    @property
    def user(self) -> str:
        return self.creds["alice_user"]

    @property
    def slice_creds(self) -> list[dict[str, str]]:
        return [cred(self.creds["alice_slice"])]

    @property
    def user_creds(self) -> list[dict[str, str]]:
        return [cred(self.creds["alice_user"])]

    @property
    def sliver(self) -> str:
        return self.slivers[0]

    def alice_users(self) -> list[dict[str, Any]]:
        return [{"urn": user_urn("alice"), "keys": [ALICE_KEY]}]

    def free_request(self) -> str:
        """A valid request for a node and slot nobody holds: a call that wrongly books it changes the state."""
        return ol_request(("node2",), slot(6))

    def conflict_request(self) -> str:
        """The booked node in the booked slot."""
        return ol_request(("node1",), self.window)

    # -- state
    def snapshot(self, light: bool = False) -> Snapshot:
        """Everything a call could damage; ``light`` leaves out the two answers fetched over TLS (ListResources
        with every lease, Describe of the slice) and keeps what is read from the database and the disk."""
        advertisement: Any = None
        describe: Any = None
        if not light:
            if self._lister is None:
                self._lister = self.client("v3")
            advertisement = self._lister.ListResources(
                self.user_creds, {"geni_rspec_version": GENI_V3, "list_leases": "all"}
            )
            describe = self._lister.Describe([self.slice], self.slice_creds, {"geni_rspec_version": GENI_V3})
        leases = tuple(self.aggregate.bookings.leases(active_only=False))
        with self.aggregate.database.read() as session:
            urns = sorted(session.scalars(select(Slice.urn)))
        slices = tuple(self.aggregate.slices.get(urn) for urn in urns)
        records = Records(self.aggregate.database)
        everything = tuple(
            record for kind in ("authority", "user", "slice", "node") for record in records.of_type(kind)
        )
        gids = tuple(sorted(path.name for path in (self.directory / "gids").iterdir()))
        return Snapshot(_stable_answer(advertisement), _stable_answer(describe), leases, slices, everything, gids)

    def repair(self, before: Snapshot) -> None:
        """Put back what a failing case changed, so that the next case starts from the same world."""
        kept = {lease.id: lease for lease in before.leases}
        baseline_damaged = False
        for lease in self.aggregate.bookings.leases():
            if kept.get(lease.id) != lease:
                baseline_damaged = baseline_damaged or lease.id in kept
                self.aggregate.bookings.cancel(lease.id)
        active_before = {lease.id for lease in before.leases if lease.state in ("allocated", "provisioned")}
        active_now = {lease.id for lease in self.aggregate.bookings.leases()}
        baseline_damaged = baseline_damaged or active_before != active_now
        for record in before.slices:
            users = {user.user_urn: list(user.ssh_keys) for user in record.users}
            self.aggregate.slices.update_users(record.urn, users, replace=True)
            self.aggregate.slices.set_shut_down(record.urn, record.shut_down)
        records = Records(self.aggregate.database)
        old = {record.hrn: record for record in before.records}
        for kind in ("authority", "user", "slice", "node"):
            for record in records.of_type(kind):
                if record.hrn not in old:
                    records.remove(record.hrn)
                elif old[record.hrn] != record:
                    was = old[record.hrn]
                    records.update(was.hrn, email=was.email, keys=was.keys, researchers=was.researchers, pis=was.pis)
        for hrn, record in old.items():
            if records.get(hrn) is None:
                # Put back as it was, not given to someone new: without the wait before a removed name is registered
                # again (registry/records.py REGISTER_AGAIN_AFTER_S).
                with pytest.MonkeyPatch.context() as patch:
                    patch.setattr("sfa_omf.registry.records.REGISTER_AGAIN_AFTER_S", 0)
                    records.add(record)
        for path in (self.directory / "gids").iterdir():
            if path.name not in before.gids:
                path.unlink()
        if baseline_damaged:
            self.book_baseline()

    def book_baseline(self) -> None:
        """The slice's booking (node1, one hour, a few hours ahead), provisioned, with alice's key."""
        for lease in self.aggregate.bookings.leases(slice_urn=self.slice):
            self.aggregate.bookings.cancel(lease.id)
        client = self.client("v3")
        allocated = client.Allocate(
            self.slice, self.slice_creds, ol_request(("node1",), self.window), {"geni_users": self.alice_users()}
        )
        assert allocated["code"]["geni_code"] == 0, allocated
        provisioned = client.Provision([self.slice], self.slice_creds, {"geni_rspec_version": GENI_V3})
        assert provisioned["code"]["geni_code"] == 0, provisioned
        self.slivers = [s["geni_sliver_urn"] for s in provisioned["value"]["geni_slivers"]]
        assert self.slivers


def start_world(reactor: Any, directory: Path, trap: LogTrap) -> World:
    """init (alice, bob), the demo inventory, the aggregate and the registry on free ports, the slice's booking."""
    report = init_directory(str(directory), AUTHORITY, ("alice", "bob"))
    settings = read_config(str(directory / "sfa-omf.conf"))
    aggregate = build_aggregate(settings)
    register_demo(report, aggregate.database)
    for name in NODES:
        aggregate.inventory.add_node(NodeSpec(node_urn(name), name, hardware_type="demo"))
    authority = LocalAuthority.load(str(directory), AUTHORITY)
    server = blockingCallFromThread(reactor, start_aggregate, settings, aggregate, 0)
    registry_port = blockingCallFromThread(reactor, start_registry, settings, aggregate.database, 0)
    world = World(directory, reactor, aggregate, server, registry_port, authority, trap)
    world.creds = make_credentials(directory, authority)
    world.window = slot(4)
    world.book_baseline()
    return world


def stop_world(world: World) -> None:
    blockingCallFromThread(world.reactor, world.server.stop)
    blockingCallFromThread(world.reactor, world.registry_port.stopListening)
    world.aggregate.database.dispose()


def make_credentials(directory: Path, authority: LocalAuthority) -> dict[str, str]:
    """Every credential the cases send: the users' own, forged, expired, mismatched, untrusted, info-only."""
    sfi = {who: directory / "users" / who / "sfi" for who in ("alice", "bob")}
    creds = {
        "alice_user": (sfi["alice"] / f"{AUTHORITY}.alice.user.cred").read_text(),
        "alice_slice": (sfi["alice"] / f"{AUTHORITY}.alice-{AUTHORITY}.demo.slice.cred").read_text(),
        "bob_user": (sfi["bob"] / f"{AUTHORITY}.bob.user.cred").read_text(),
        "bob_slice": (sfi["bob"] / f"{AUTHORITY}.bob-{AUTHORITY}.demo.slice.cred").read_text(),
    }
    alice_chain = load_gid_chain_file(str(sfi["alice"] / f"{AUTHORITY}.alice.user.gid"))
    demo_chain = authority.issued_chain(f"{AUTHORITY}.demo")
    other_chain, _ = authority.issue_gid(f"{AUTHORITY}.other", "slice")
    creds["alice_other"] = authority.credential(alice_chain, other_chain)
    creds["operator"] = authority.credential(alice_chain, authority.chain)  # alice is an operator too
    creds["info_only"] = authority.credential(alice_chain, demo_chain, privileges=("info",))
    creds["expired"] = authority.credential(alice_chain, demo_chain, lifetime=timedelta(seconds=-3600))
    creds["tampered"] = creds["alice_slice"].replace("<name>info</name>", "<name>authority</name>")
    assert creds["tampered"] != creds["alice_slice"]
    evil_dir = directory.parent / f"{directory.name}-evil"
    shutil.rmtree(evil_dir, ignore_errors=True)
    evil = LocalAuthority.create(str(evil_dir), "evil")
    creds["untrusted"] = evil.credential(alice_chain, demo_chain)  # signed by an authority nobody trusts
    return creds


# -- playing a case ------------------------------------------------------------------------------------------------
def answer_of(world: World, case: Case) -> tuple[str, Any]:
    """('envelope', dict), ('value', anything), ('fault', Fault) or ('transport', what went wrong)."""
    client = world.client(case.api, case.caller)
    try:
        answer = getattr(client, case.method)(*case.args(world))
    except xmlrpc.client.Fault as fault:
        return "fault", fault
    except xmlrpc.client.ProtocolError as error:
        return "transport", f"HTTP {error.errcode} {error.errmsg}"
    except (OSError, ssl.SSLError, xmlrpc.client.ResponseError) as error:
        return "transport", repr(error)
    if isinstance(answer, dict) and isinstance(answer.get("code"), dict) and "geni_code" in answer["code"]:
        return "envelope", answer
    return "value", answer


def judge(expect: Expect, kind: str, answer: Any) -> list[str]:
    """What is wrong with ``answer`` for ``expect`` (nothing: it is right)."""
    if isinstance(expect, Env):
        if kind != "envelope":
            return [f"expected an envelope with geni_code {expect.code}, got {kind}: {str(answer)[:600]}"]
        code, message = answer["code"]["geni_code"], str(answer.get("output") or "")
    else:
        if kind != "fault":
            return [f"expected XML-RPC fault {expect.code}, got {kind}: {str(answer)[:600]}"]
        code, message = answer.faultCode, str(answer.faultString or "")
    problems = []
    if code != expect.code:
        problems.append(f"expected code {expect.code}, got {code}: {message[:600]!r}")
    if expect.code != 0 and not message.strip():
        problems.append("the refusal carries no message")
    missing = [word for word in expect.words if word.lower() not in message.lower()]
    if missing:
        problems.append(f"the message does not name {missing}: {message[:600]!r}")
    return problems


def play(world: World, case: Case) -> None:
    """Snapshot, call, snapshot: the answer is the expected one, nothing changed, nothing crashed in the log."""
    before = world.snapshot()
    mark = world.logs.mark()
    kind, answer = answer_of(world, case)
    after = world.snapshot()
    log_lines = world.logs.since(mark)
    problems = judge(case.expect, kind, answer)
    changes = before.differences(after)
    if changes:
        world.repair(before)
        problems += ["state changed: " + change for change in changes]
    problems += ["server log: " + line for line in log_lines]
    assert not problems, f"{case.id}:\n" + "\n".join(problems)


# -- raw HTTP over TLS ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RawAnswer:
    status: int | None  # None: no answer at all
    body: bytes
    closed: bool  # the server closed the connection after answering
    error: str = ""


def raw_exchange(
    world: World, port: int, payload: bytes, timeout_s: float = RAW_TIMEOUT_S, want_close: bool = False
) -> RawAnswer:
    """Send ``payload`` as it is on a new TLS connection (alice's chain) and read one HTTP answer within the timeout;
    with ``want_close``, then wait (within the timeout too) to see whether the server closes the connection."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    with world.context().wrap_socket(raw) as connection:
        connection.settimeout(timeout_s)
        with suppress(OSError):  # the server may refuse and close before it has read everything: read its answer
            connection.sendall(payload)
        received = b""
        closed = False
        try:
            while b"\r\n\r\n" not in received:
                chunk = connection.recv(65536)
                if not chunk:
                    closed = True
                    break
                received += chunk
        except (TimeoutError, OSError) as exc:
            return RawAnswer(None, received, False, f"no answer within {timeout_s:g} s ({exc!r})")
        if b"\r\n\r\n" not in received:
            return RawAnswer(None, received, True, "the connection closed without an answer")
        head, _, body = received.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip().lower()
        chunked = fields.get(b"transfer-encoding") == b"chunked"
        length = int(fields[b"content-length"]) if b"content-length" in fields else None
        try:
            while not closed and not _complete(body, chunked, length):
                chunk = connection.recv(65536)
                closed = not chunk
                body += chunk
            if want_close and not closed:
                closed = connection.recv(1) == b""
        except (TimeoutError, OSError):
            pass
        return RawAnswer(status, _dechunked(body) if chunked else body, closed)


def _complete(body: bytes, chunked: bool, length: int | None) -> bool:
    if chunked:
        return body.endswith(b"0\r\n\r\n")
    return length is not None and len(body) >= length


def _dechunked(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out


def post_bytes(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """An HTTP/1.1 POST of ``body`` to ``path`` (Content-Length from the body unless given)."""
    fields = {"Host": "127.0.0.1", "Content-Type": "text/xml", "Content-Length": str(len(body)), **(headers or {})}
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in fields.items()) + "\r\n"
    return head.encode("latin-1") + body


def fault_in(body: bytes) -> xmlrpc.client.Fault | None:
    try:
        xmlrpc.client.loads(body)
    except xmlrpc.client.Fault as fault:
        return fault
    except Exception:
        return None
    return None


def nothing_crashed(world: World, mark: int) -> list[str]:
    return ["server log: " + line for line in world.logs.since(mark)]
