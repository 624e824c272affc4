"""A small typed client for OAR's REST API (OAR 2.5.9: oarapi.pl, a CGI under apache2), standard library only.

What OAR does that shapes this client (measured against a real OAR 2.5.9, see scripts/oar.sh):

- Reservation times go in as strings in the OAR server's *local* time (``YYYY-MM-DD hh:mm:ss``) and OAR does not
  check them (``25:00:00`` becomes 01:00 the next day); answers carry epoch seconds. Every datetime in and out of this
  client is aware UTC (a naive one is taken as UTC).
- The API hands the job's fields to oarsub through a shell, and takes the user as the leading word characters of the
  ``X-Remote-Ident`` header (``bob-x`` acts as ``bob``). So every string sent is checked against a strict pattern
  first, and refused with ValueError before OAR sees it.
- An overlapping advance reservation is refused, never moved: OAR consumes a job id for it and leaves it in Error.
- A job holds the closed interval [start, start + walltime] (with SCHEDULER_JOB_SECURITY_TIME=0): for back-to-back
  slots, ask for walltime = duration - 1 s.
- The API believes ``X-Remote-Ident`` blindly: only the aggregate may be able to reach it (loopback, private network).
- Each call runs a fresh Perl CGI: 0.3 s (a GET) to 1.5 s (a reservation). Keep OAR off latency-sensitive paths;
  ``reservations()`` lists a whole window with its nodes in one request.
- Whatever answers at the URL is not trusted to be OAR: each request has a deadline (``timeout_s``, for the whole
  answer, not each read) and a size cap, a listing a page cap, and an answer that does not read as OAR's is
  OarUnavailable, never another exception.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import math
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sfa_omf.config import hide_url_password, url_credentials_problem
from sfa_omf.testbed.gate import CircuitBreaker, CircuitOpen
from sfa_omf.times import as_utc

_Parsed = TypeVar("_Parsed")

# The event OAR records when somebody asks it to delete a job (oardel, the API's DELETE).
FRAG_EVENT = "FRAG_JOB_REQUEST"
# The states of a job that holds (or will hold) its nodes; Error and Terminated jobs hold nothing.
ACTIVE_STATES = (
    "Waiting",
    "Hold",
    "toLaunch",
    "toAckReservation",
    "Launching",
    "Running",
    "Finishing",
    "Suspended",
    "Resuming",
)
SERVER_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
# /jobs/details costs OAR ~35 ms per job (a few SQL queries each, measured): 100 jobs is a ~4 s request, well inside
# a 10 s timeout, where OAR's own cap of 500 would take ~17 s.
DETAILED_JOBS_PAGE = 100
# A listing of more pages than this is not OAR's (a server that ignores offsets, or pages that never end): refused.
# 1000 pages are 100 000 detailed jobs, far beyond any testbed's horizon.
MAX_LISTING_PAGES = 1000
# The largest answer read: a detailed job is ~3 KB plus ~2 KB per resource it holds (measured on OAR 2.5.9), so a page
# of DETAILED_JOBS_PAGE jobs of 100 resources each is ~20 MB. A longer answer is refused rather than held in memory.
MAX_ANSWER_BYTES = 32 * 1024 * 1024
_READ_CHUNK = 64 * 1024

# What may be sent. OAR keeps only the leading \w+ of the identity, so a login with '-' or '.' would act as another
# user: refuse it. Node names are put inside a quoted SQL string in the resource request; the other fields are put
# inside double quotes on a shell command line by the API.
_LOGIN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")
_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:+@=,/-]{0,254}")
_COMMAND = re.compile(r"[A-Za-z0-9_./][A-Za-z0-9_.:+@=,/ -]{0,999}")
_OPTION = re.compile(r"[a-z][a-z0-9_-]{0,63}")
# A resource's property (a column of OAR's resources table) and its value, put inside single quotes in SQL by OAR.
_PROPERTY = re.compile(r"[a-z][a-z0-9_]{0,63}")
# (no quote, backslash or space in a value)
_VALUE = re.compile(r"[A-Za-z0-9_.:/@+-]{1,255}")
RESOURCE_STATES = ("Alive", "Absent", "Dead")
# Fields the client sets itself, or that would let a caller run things or write files as the user.
_RESERVED_OPTIONS = frozenset(
    {
        "resource",
        "resources",
        "reservation",
        "type",
        "name",
        "command",
        "script",
        "script_path",
        "workdir",
        "param_file",
    }
)

_REFUSED = "Reservation not valid --> KO"
_COULD_RUN_AT = re.compile(r"could run at (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")
_OAR_JOB_ID = re.compile(r"OAR_JOB_ID=(\d+)")
# OAR's error messages end with the oarsub/oardel command line it ran: not the user's business.
_ECHOED_COMMAND = re.compile(r"\s*(\n\s*Cmd:\n.*|\(Command was: .*)$", re.DOTALL)


class OarError(Exception):
    """OAR answered with an error; .status (HTTP status or 0) and .message (OAR's own words)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class OarUnavailable(OarError):
    """OAR's API cannot be reached (connection refused, DNS, 5xx from apache when the CGI is missing), or what answers
    is not OAR: an answer that does not read as OAR's (not its JSON, malformed fields, too long). ``.not_sent``: the
    connection could not be made or the request not sent whole (urllib's URLError, before any answer): OAR never had
    the request, so it made nothing."""

    def __init__(self, message: str, status: int = 0, *, not_sent: bool = False) -> None:
        super().__init__(message, status)
        self.not_sent = not_sent


class OarTimeout(OarError):
    """OAR did not answer within the client's timeout."""


class OarCircuitOpen(OarUnavailable):
    """Not sent: OAR timed out or could not be reached moments ago, and its breaker (sfa_omf/testbed/gate.py) keeps
    requests from it for a cool-down; ``message`` says when it failed, why, and when it is tried again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, not_sent=True)


class OarRefused(OarError):
    """OAR refused a reservation; .could_run_at: datetime | None (UTC, parsed from 'This reservation could run at ...'
    in OAR's server-local time) and .job_id: int | None (the consumed OAR_JOB_ID if present)."""

    def __init__(
        self, message: str, status: int = 0, *, could_run_at: datetime | None = None, job_id: int | None = None
    ) -> None:
        super().__init__(message, status)
        self.could_run_at = could_run_at
        self.job_id = job_id


class _Unreachable(OarUnavailable):
    """No answer came (no connection, or it broke off): the breaker counts it, as a time-out."""


class _NotFound(OarError):
    """OAR itself said 404 (as opposed to a web server that has no OAR behind the URL)."""


@dataclass(frozen=True)
class OarResource:
    """One OAR resource (a node here) with all its properties as strings (None becomes "")."""

    id: int
    network_address: str
    state: str
    properties: dict[str, str]


@dataclass(frozen=True)
class OarJob:
    """An OAR job. start_time is aware UTC: when it starts (or started), else when OAR plans to start it
    (scheduled_start), else None. nodes: the network addresses it holds, sorted, where the call says so."""

    id: int
    state: str
    reservation: str
    owner: str
    name: str
    start_time: datetime | None
    walltime_s: int
    types: tuple[str, ...]
    message: str
    nodes: tuple[str, ...] = ()
    command: str = ""
    exit_code: int | None = None  # the job's command's wait status (exit status * 256 + signal), once it ended
    stderr_file: str = ""  # the command's stderr, in launching_directory on the job's first node
    launching_directory: str = ""
    # Somebody asked OAR to delete it (its FRAG_JOB_REQUEST event): OAR deletes asynchronously, and lists the job as it
    # was (Waiting, its nodes) for up to a few seconds more, still refusing other reservations of them meanwhile.
    deleting: bool = False


# --- time conversions (pure) ----------------------------------------------------------------------------------------


def server_zone(name: str | None) -> tzinfo:
    """The OAR server's time zone: the IANA name given, else this host's local zone ($TZ, then /etc/localtime, else
    UTC). ValueError for an unknown name."""
    if name is not None:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {name!r} (expected an IANA name such as 'Europe/Paris')") from exc
    tz = os.environ.get("TZ", "").removeprefix(":")
    if tz:
        try:
            return ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            pass  # a POSIX TZ string or a path: fall back to the system's zone
    try:
        with open("/etc/localtime", "rb") as localtime:
            return ZoneInfo.from_file(localtime, key="localtime")
    except (OSError, ValueError):
        return UTC


def to_server_time(moment: datetime, zone: tzinfo) -> str:
    """The string OAR expects for the instant ``moment`` (naive = UTC): its wall-clock time in the server's zone.

    ValueError for an instant with a fraction of a second (OAR has none: the slot would move) and for one whose
    wall-clock time occurs twice there (the hour repeated when clocks go back): OAR could book either instant.
    """
    utc = as_utc(moment)
    if utc.microsecond:
        raise ValueError(f"{utc.isoformat()}: OAR reservations start on a whole second")
    local = utc.astimezone(zone)
    if local.replace(fold=1 - local.fold).utcoffset() != local.utcoffset():
        raise ValueError(
            f"{utc.isoformat()} is {local:%Y-%m-%d %H:%M:%S} in the OAR server's time zone, a time that occurs twice "
            "there (clocks go back): OAR cannot be told which one"
        )
    return local.strftime(SERVER_TIME_FORMAT)


def from_server_time(text: str, zone: tzinfo) -> datetime:
    """The UTC instant of a server-local ``YYYY-MM-DD hh:mm:ss`` (the earlier one when it occurs twice)."""
    return datetime.strptime(text, SERVER_TIME_FORMAT).replace(tzinfo=zone).astimezone(UTC)


def walltime_text(seconds: int) -> str:
    """OAR's walltime notation H:MM:SS (hours unbounded)."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def refusal(message: str, status: int, zone: tzinfo) -> OarRefused:
    """The OarRefused for OAR's 'Reservation not valid --> KO (...)' message."""
    could_run_at = None
    hint = _COULD_RUN_AT.search(message)
    if hint:
        try:
            could_run_at = from_server_time(hint.group(1), zone)
        except ValueError:
            could_run_at = None  # OAR wrote a date we cannot read: the refusal stands without the hint
    job_id = _OAR_JOB_ID.search(message)
    return OarRefused(message, status, could_run_at=could_run_at, job_id=int(job_id.group(1)) if job_id else None)


# --- the client -----------------------------------------------------------------------------------------------------


class OarClient:
    """OAR's REST API at ``base_url`` (e.g. ``http://127.0.0.1:6668/oarapi``).

    A ``user:password@`` in the URL (an apache or a proxy that asks for HTTP Basic authentication) is sent as an
    ``Authorization: Basic`` header, percent-decoded, and never to where a redirect points; over ``http://`` only to
    this machine's loopback (ValueError otherwise: the password would cross the network in clear).

    Every call is one or a few HTTP requests, each given ``timeout_s`` to answer in full (OarTimeout) and at most
    ``max_answer_bytes`` of answer (OarUnavailable); errors are OarError and its subclasses.
    ``server_timezone`` is the IANA name of the OAR server's local zone (reservation strings are server-local); None
    means this host's local zone. ``admin_user`` is the identity for reads that need one (OAR's admin is ``oar``).
    ``page_size`` is how many new items a listing asks for per request (OAR's default cap is 500), each request
    after the first one more: the last item read, again, and after the listing shifted, up to a page more
    (``_paged``); detailed job listings ask for at most ``DETAILED_JOBS_PAGE`` (OAR spends ~35 ms per job on them).
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 10.0,
        server_timezone: str | None = None,
        admin_user: str = "oar",
        page_size: int = 500,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"{hide_url_password(base_url)!r} is not an http(s) URL of OAR's API")
        if timeout_s <= 0 or page_size <= 0 or max_answer_bytes <= 0:
            raise ValueError("timeout_s, page_size and max_answer_bytes must be positive")
        insecure = url_credentials_problem(base_url)
        if insecure:
            raise ValueError(f"OAR's API URL {hide_url_password(base_url)!r} {insecure}")
        self.shown_url = hide_url_password(base_url.rstrip("/"))  # in messages: the password of user:password@ hidden
        # A user and password in the URL go in an Authorization header (HTTP Basic), never in the host part: urllib
        # would take "user:password@host" for the host's name (and send the password to the resolver).
        self._authorization = _basic_authorization(parsed)
        host_and_port = parsed.netloc.rpartition("@")[2]
        self.base_url = urllib.parse.urlunsplit(parsed._replace(netloc=host_and_port)).rstrip("/")
        self.timeout_s = timeout_s
        self.zone = server_zone(server_timezone)
        self.admin_user = _checked(_LOGIN, admin_user, "admin user")
        self.page_size = page_size
        self.max_answer_bytes = max_answer_bytes
        # The aggregate's (make_oar_backend): while OAR is down or hung, requests are refused without being sent.
        self.breaker = breaker
        # Talk to OAR directly: an http_proxy in the environment is for the outside world, not for the testbed.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- calls --

    def version(self) -> dict[str, Any]:
        """OAR's /version: oar_version, api_version, api_timezone (the server's zone abbreviation), api_timestamp."""
        answer = self._call("GET", "/version.json")
        if not isinstance(answer, dict):
            raise OarUnavailable(f"unexpected answer to /version: {answer!r}")
        return answer

    def resources(self, *, full: bool = True) -> list[OarResource]:
        """Every resource with all its properties (/resources/full), page after page; ``full=False`` lists only each
        one's id, network address and state (/resources: a cheaper query)."""
        path = "/resources/full.json" if full else "/resources.json"
        return [_resource(item) for item in self._paged(path, {}, page_size=self.page_size)]

    def add_resource(self, properties: Mapping[str, str]) -> int:
        """Create one resource (as OAR's admin) with these properties, ``network_address`` among them; its id. Each
        property must exist in OAR already (``oarproperty -a NAME``); OAR puts the values into SQL as they are, so
        names and values are checked against strict patterns first (ValueError)."""
        if "network_address" not in properties:
            raise ValueError("a resource needs a network_address")
        body = {
            _checked(_PROPERTY, name, "property name"): _checked(_VALUE, value, f"value of {name}")
            for name, value in properties.items()
        }
        _checked(_NODE, body["network_address"], "network address")
        answer = self._call("POST", "/resources.json", user=self.admin_user, body=body)
        items = answer.get("items") if isinstance(answer, dict) else None
        if (
            not isinstance(items, list)
            or len(items) != 1
            or not isinstance(items[0], dict)
            or not isinstance(items[0].get("id"), int)
        ):
            raise OarError(f"OAR created the resource but gave no id: {answer!r}")
        return int(items[0]["id"])

    def set_resource_state(self, resource_id: int, state: str) -> None:
        """Put a resource Alive, Absent or Dead (as OAR's admin). A Dead resource is given no new job."""
        if state not in RESOURCE_STATES:
            raise ValueError(f"a resource's state is set to one of {', '.join(RESOURCE_STATES)}, not {state!r}")
        self._call(
            "POST",
            f"/resources/{_job_id(resource_id, 'resource')}/state.json",
            user=self.admin_user,
            body={"state": state},
        )

    def delete_resource(self, resource_id: int) -> None:
        """Remove a resource for good (OAR removes only Dead ones: it is set Dead first). Gone already is not an
        error."""
        self.set_resource_state(resource_id, "Dead")
        try:
            self._call("DELETE", f"/resources/{_job_id(resource_id, 'resource')}.json", user=self.admin_user)
        except _NotFound:
            return

    def submit_reservation(
        self,
        *,
        user: str,
        nodes: Sequence[str],
        start: datetime,
        walltime_s: int,
        job_type: str,
        name: str,
        command: str = "",
        extra: Mapping[str, str] | None = None,
    ) -> int:
        """Reserve exactly ``nodes`` from ``start`` for ``walltime_s`` seconds, as the Unix user ``user``; return the
        job id.

        ``job_type`` is OAR's job type (``noop`` for nodes OAR must not touch, ``deploy``...; "" for none: an
        ordinary job, whose command runs on its first node). ``command`` "" submits
        no command: OAR then holds the nodes for the whole walltime. ``extra`` adds oarsub long options
        (``{"project": "x"}`` -> ``--project=x``). Raises ValueError for input OAR would misread, OarRefused when OAR
        refuses the slot ('Reservation not valid --> KO': overlap, too old), OarError for anything else (unknown node,
        unknown user...). OarTimeout means the outcome is unknown: OAR may still have booked the slot.
        """
        _checked(_LOGIN, user, "user")
        if isinstance(nodes, str) or not nodes:
            raise ValueError("nodes must be a non-empty list of network addresses")
        for node in nodes:
            _checked(_NODE, node, "node name")
        if len(set(nodes)) != len(nodes):
            raise ValueError(f"duplicate nodes in {list(nodes)}")
        if isinstance(walltime_s, bool) or not isinstance(walltime_s, int) or walltime_s <= 0:
            raise ValueError(f"walltime_s must be a positive number of seconds, not {walltime_s!r}")
        if job_type:
            _checked(_WORD, job_type, "job type")
        _checked(_WORD, name, "job name")
        if command:
            _checked(_COMMAND, command, "command")
        pinned = ",".join(f"'{node}'" for node in nodes)
        body: dict[str, str] = {
            "resource": f"{{network_address in ({pinned})}}/nodes={len(nodes)},walltime={walltime_text(walltime_s)}",
            "reservation": to_server_time(start, self.zone),
            "name": name,
        }
        if job_type:
            body["type"] = job_type
        if command:
            body["command"] = command
        for option, value in (extra or {}).items():
            _checked(_OPTION, option, "oarsub option")
            if option in _RESERVED_OPTIONS:
                raise ValueError(f"extra option {option!r} is set by the client itself or not allowed")
            body[option] = _checked(_WORD, value, f"value of {option}")
        answer = self._call("POST", "/jobs.json", user=user, body=body)
        job_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(job_id, int) or job_id <= 0:
            raise OarError(f"OAR accepted the reservation but gave no job id: {answer!r}")
        return job_id

    def job(self, job_id: int, *, with_nodes: bool = False) -> OarJob | None:
        """The job, None when OAR does not know it. ``with_nodes`` adds its nodes (same single request)."""
        path = f"/jobs/{_job_id(job_id)}/details.json" if with_nodes else f"/jobs/{_job_id(job_id)}.json"
        try:
            answer = self._call("GET", path, user=self.admin_user)
        except _NotFound:
            return None
        if not isinstance(answer, dict):
            raise OarUnavailable(f"unexpected answer for job {job_id}: {answer!r}")
        return _job(answer, with_nodes=with_nodes)

    def delete_job(self, job_id: int, *, user: str) -> None:
        """Ask OAR to delete the job as ``user`` (its owner, or ``oar``). Deleting a job already deleted, or one OAR
        does not know, is not an error: OAR ends the job within seconds (state Error, or Terminated for a running
        noop job)."""
        _checked(_LOGIN, user, "user")
        try:
            self._call("DELETE", f"/jobs/{_job_id(job_id)}.json", user=user)
        except _NotFound:
            return
        except OarError as exc:
            if "already killed" in exc.message:
                return
            # OAR answers "not the right user" for a job that does not exist too: tell the two apart.
            if "not the right user" in exc.message and self.job(job_id) is None:
                return
            raise

    def reservations(self, start: datetime, end: datetime, *, unplaced: bool = False) -> list[OarJob]:
        """Every job that holds nodes in [start, end) and is not finished (advance reservations, but also running or
        planned batch jobs), with its nodes, by id: /jobs/details?from=&to=&state=, one request per 100 jobs in the
        window (OAR lists future reservations with their nodes nowhere else).

        ``unplaced``: also the jobs listed with no nodes yet. OAR lists a reservation it has scheduled but whose
        oarsub has not acknowledged it yet (toAckReservation, about 0.3 s, longer on a loaded server) with no nodes,
        while it already refuses any other reservation of them."""
        start, end = as_utc(start), as_utc(end)
        if end <= start:
            raise ValueError(f"empty window: {start.isoformat()} .. {end.isoformat()}")
        query = {
            "from": str(math.floor(start.timestamp())),
            "to": str(math.ceil(end.timestamp())),
            "state": ",".join(ACTIVE_STATES),
        }
        jobs = []
        page_size = min(self.page_size, DETAILED_JOBS_PAGE)
        for item in self._paged("/jobs/details.json", query, user=self.admin_user, page_size=page_size):
            job = _job(item, with_nodes=True)
            # OAR's window test is loose (its third branch lists unscheduled jobs by submission time): be exact. A job
            # holds [start_time, start_time + walltime] inclusive, so it is in the window when that meets [start, end).
            if job.start_time is None or (not job.nodes and not unplaced) or job.state not in ACTIVE_STATES:
                continue
            if job.start_time < end and job.start_time.timestamp() + job.walltime_s >= start.timestamp():
                jobs.append(job)
        return sorted(jobs, key=lambda job: job.id)

    # -- HTTP --

    def _paged(
        self, path: str, query: Mapping[str, str], *, page_size: int, user: str | None = None
    ) -> list[dict[str, Any]]:
        """All items of a paginated listing ({"items", "offset", "total"}), following offset/limit. OarUnavailable
        for an answer that is not such a listing, or one of more than MAX_LISTING_PAGES pages.

        OAR sorts its listings by id, and an item that leaves it (a job deleted, or ended) shifts the later ones
        under the offsets, so each page after the first starts again where the last item read was: when the page's
        first item is no later than it, nothing was skipped, and only the items after it are new; when it is later
        (or there is none), items before the offset left meanwhile, and the reading steps back 1, 2, 4... places (at
        most a page at a time) until a page starts no later than it again. So an item listed during the whole
        listing is never missed (one that left meanwhile may be in it, as in a listing read a moment earlier).

        The listing ends at the first page shorter than asked for that needed no step back: a page is one SQL query
        (ORDER BY id LIMIT/OFFSET), so nothing after it was listed when it ran. Never at ``total``: OAR counts it in
        another query, which also counts Running jobs that the page leaves out (one that ends before the window, or
        has overrun its walltime), so it may never be reached."""
        # The invariant: a page accepted (it starts at offset 0, or with an id no later than last_id) holds, up to its
        # end, every item after last_id that OAR listed when it ran, since the listing is sorted by id. The items
        # before its end are then read; the next page starts at its last item, so it too is accepted if nothing
        # before that item left meanwhile.
        items: list[dict[str, Any]] = []
        last_id: int | None = None  # the largest id read so far
        offset = 0  # where the next page starts: the last item of the page read last, unless items left since
        back = 0  # how many places the reading stepped back since the last page accepted
        for _page in range(MAX_LISTING_PAGES):
            # After the first page: the item at the offset (read already), the places stepped back over (up to a page
            # of them: OAR's time is per item), and a page of new ones, so a page accepted after stepping back goes on
            # as far as one that had not needed to.
            limit = page_size if last_id is None else page_size + min(back, page_size) + 1
            page = self._call("GET", path, query={**query, "offset": str(offset), "limit": str(limit)}, user=user)
            batch = page.get("items") if isinstance(page, dict) else None
            total = page.get("total") if isinstance(page, dict) else None
            if not isinstance(batch, list) or isinstance(total, bool) or not isinstance(total, int):
                raise OarUnavailable(f"unexpected answer to {path}: not a listing")
            ids = [_listed_id(path, item) for item in batch]
            if any(later <= earlier for earlier, later in itertools.pairwise(ids)):
                raise OarUnavailable(f"unexpected answer to {path}: a page not sorted by id")
            if last_id is not None and offset > 0 and (not ids or ids[0] > last_id):
                # Items before the offset left meanwhile: the last item read, and those after it, moved before it.
                # (At offset 0 the page starts the listing: nothing can be before it.) The step doubles, so a reading
                # catches up with departures in a few pages, however many left.
                step = min(back + 1, page_size, offset)
                offset -= step
                back += step
                continue
            items.extend(item for item, item_id in zip(batch, ids, strict=True) if last_id is None or item_id > last_id)
            if ids:  # (sorted: the last is the largest)
                last_id = ids[-1] if last_id is None else max(last_id, ids[-1])
            if len(batch) < limit:
                return items
            offset += len(batch) - 1
            back = 0
        raise OarUnavailable(
            f"OAR's listing {path} did not end within {MAX_LISTING_PAGES} pages: either the server at {self.shown_url} "
            "is not OAR's API (it ignores offsets), or jobs leave the listing faster than it can be read; check the "
            "URL (sfa_oar api_url), and call again once the testbed is calmer"
        )

    def _call(
        self,
        method: str,
        path: str,
        *,
        user: str | None = None,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, str] | None = None,
    ) -> Any:
        """One request; OAR's decoded JSON answer, or the matching OarError. The whole answer must arrive within
        ``timeout_s`` (each read is also bounded by it, so the call ends at most one read's timeout after the
        deadline): a server that drips its answer is an OarTimeout, one that sends too much OarUnavailable."""
        deadline = time.monotonic() + self.timeout_s
        query_text = "?" + urllib.parse.urlencode(query) if query else ""
        request = urllib.request.Request(
            self.base_url + path + query_text, method=method, headers={"Accept": "application/json"}
        )
        url = self.shown_url + path + query_text  # for messages only
        if self._authorization:
            # Not sent on to where a redirect points (urllib copies the other headers): another host, or http://.
            request.add_unredirected_header("Authorization", self._authorization)
        if user is not None:
            request.add_header("X-Remote-Ident", user)
        if body is not None:
            request.data = json.dumps(body).encode()
            request.add_header("Content-Type", "application/json")
        probe = False
        if self.breaker is not None:
            try:
                probe = self.breaker.admit()
            except CircuitOpen as refused:
                raise OarCircuitOpen(refused.message) from None
        try:
            status, raw = self._exchange(request, deadline, method, url)
        except (OarTimeout, _Unreachable) as exc:
            if self.breaker is not None:
                self.breaker.failed(exc.message, probe)
            raise
        except OarError:  # OAR answered (a refusal, an answer that is not OAR's): it is reachable
            if self.breaker is not None:
                self.breaker.worked(probe)
            raise
        except BaseException:
            if self.breaker is not None:
                self.breaker.abandoned(probe)
            raise
        if self.breaker is not None:
            self.breaker.worked(probe)
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):  # (RecursionError: nested deeper than the parser goes)
            raise OarUnavailable(
                f"{url} answered HTTP {status} with something that is not OAR's JSON: is this OAR's API URL?", status
            ) from None

    def _exchange(self, request: urllib.request.Request, deadline: float, method: str, url: str) -> tuple[int, bytes]:
        """Send ``request``: the status and body of the answer; OarTimeout, _Unreachable (no answer: the breaker
        counts it), or the OarError of OAR's error answer."""
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                return response.status, self._read_answer(response, deadline, method, url)
        except urllib.error.HTTPError as exc:
            try:
                raw = self._read_answer(exc, deadline, method, url)
            except (OSError, http.client.HTTPException):
                raw = b""
            raise self._error(exc.code, raw, method, url) from None
        except TimeoutError:
            raise OarTimeout(f"OAR did not answer {method} {url} within {self.timeout_s:g} s") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise OarTimeout(f"OAR did not answer {method} {url} within {self.timeout_s:g} s") from None
            raise _Unreachable(
                f"cannot reach OAR's API at {url} ({exc.reason}): is OAR's API (apache2) running?", not_sent=True
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise _Unreachable(f"OAR's API at {url} broke off ({exc}): is OAR's API (apache2) running?") from None

    def _read_answer(self, response: Any, deadline: float, method: str, url: str) -> bytes:
        """The answer's body, read a chunk at a time (read1: one socket read each) so that neither the deadline nor
        ``max_answer_bytes`` can be outrun."""
        chunks: list[bytes] = []
        size = 0
        while chunk := response.read1(_READ_CHUNK):
            size += len(chunk)
            if size > self.max_answer_bytes:
                raise OarUnavailable(f"{method} {url}: the answer is over {self.max_answer_bytes} bytes: not OAR's")
            if time.monotonic() > deadline:
                raise OarTimeout(f"OAR did not finish answering {method} {url} within {self.timeout_s:g} s")
            chunks.append(chunk)
        return b"".join(chunks)

    def _error(self, status: int, raw: bytes, method: str, url: str) -> OarError:
        try:
            answer = json.loads(raw)
        except (ValueError, RecursionError):
            answer = None
        if not isinstance(answer, dict):
            # Not OAR's words: apache answering for a missing or broken CGI, or a URL that is not OAR's API.
            return OarUnavailable(
                f"{method} {url}: HTTP {status} from the web server, not from OAR: is OAR's API installed at this URL?",
                status,
            )
        message = _ECHOED_COMMAND.sub("", str(answer.get("message") or answer.get("title") or "")).strip()
        message = message or f"HTTP {status}"
        if status >= 500:
            return OarUnavailable(f"OAR failed on {method} {url}: {message}", status)
        if status == 404:
            return _NotFound(message, status)
        if _REFUSED in message:
            return refusal(message, status, self.zone)
        return OarError(message, status)


def _basic_authorization(parsed: urllib.parse.SplitResult) -> str:
    """The ``Authorization: Basic`` header's value for the URL's ``user:password@`` ("" without one), the user and
    password percent-decoded (``p%40ss`` is ``p@ss``) as RFC 3986 writes them in a URL."""
    if parsed.username is None and parsed.password is None:
        return ""
    user = urllib.parse.unquote(parsed.username or "")
    password = urllib.parse.unquote(parsed.password or "")
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


# --- parsing --------------------------------------------------------------------------------------------------------


def _checked(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not allowed (expected {pattern.pattern})")
    return value


def _listed_id(path: str, item: Any) -> int:
    """The id of an item of a listing (every OAR listing sorts its items by it)."""
    if not isinstance(item, dict):
        raise OarUnavailable(f"unexpected answer to {path}: a listed item is not an object")
    item_id = item.get("id")
    if isinstance(item_id, bool) or not isinstance(item_id, int):
        raise OarUnavailable(f"unexpected answer to {path}: a listed item has no numeric id: {str(item)[:200]}")
    return item_id


def _job_id(job_id: int, what: str = "job") -> int:
    if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id <= 0:
        raise ValueError(f"OAR {what} ids are positive integers, not {job_id!r}")
    return job_id


def _epoch(value: Any) -> datetime | None:
    """An epoch-seconds field; OAR says 0 or null for "none". ValueError for an instant no datetime holds."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError) as exc:
        raise ValueError(f"{value!r} is not an instant") from exc


def _parsed(what: str, item: Any, parse: Callable[[Mapping[str, Any]], _Parsed]) -> _Parsed:
    """``parse(item)``, any fault in the item (not an object, a field missing or of the wrong kind) as OarUnavailable:
    an answer that does not read as OAR's is OAR (or what stands at its URL) failing, not this program."""
    try:
        if not isinstance(item, dict):
            raise TypeError("not an object")
        return parse(item)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise OarUnavailable(f"unexpected {what} in OAR's answer ({exc}): {str(item)[:200]}") from None


def _resource(item: Any) -> OarResource:
    return _parsed("resource", item, _read_resource)


def _read_resource(item: Mapping[str, Any]) -> OarResource:
    properties = {
        key: "" if value is None else str(value) for key, value in item.items() if key not in ("links", "api_timestamp")
    }
    return OarResource(
        id=int(item["id"]),
        network_address=str(item.get("network_address") or ""),
        state=str(item.get("state") or ""),
        properties=properties,
    )


def _job(item: Any, *, with_nodes: bool) -> OarJob:
    return _parsed("job", item, lambda fields: _read_job(fields, with_nodes=with_nodes))


def _read_job(item: Mapping[str, Any], *, with_nodes: bool) -> OarJob:
    nodes: tuple[str, ...] = ()
    if with_nodes:
        addresses = {str(node.get("network_address")) for node in item.get("nodes") or () if isinstance(node, dict)}
        nodes = tuple(sorted(addresses - {"None", ""}))
    return OarJob(
        id=int(item["id"]),
        state=str(item.get("state") or ""),
        reservation=str(item.get("reservation") or ""),
        owner=str(item.get("owner") or ""),
        name=str(item.get("name") or ""),
        start_time=_epoch(item.get("start_time")) or _epoch(item.get("scheduled_start")),
        walltime_s=int(item.get("walltime") or 0),
        types=tuple(str(job_type) for job_type in item.get("types") or ()),
        message=str(item.get("message") or ""),
        nodes=nodes,
        command=str(item.get("command") or ""),
        exit_code=item["exit_code"] if isinstance(item.get("exit_code"), int) else None,
        stderr_file=str(item.get("stderr_file") or ""),
        launching_directory=str(item.get("launching_directory") or ""),
        deleting=any(isinstance(event, dict) and event.get("type") == FRAG_EVENT for event in item.get("events") or ()),
    )
