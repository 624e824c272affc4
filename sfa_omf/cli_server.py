"""``sfa-omf serve`` and ``sfa-omf quickstart``: run the aggregate in the foreground until interrupted.

Twisted and the server are imported by the commands that run them, not by ``sfa-omf --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import logging
import logging.handlers
import math
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sfa_omf.cli_common import command_config, command_settings, config_warnings
from sfa_omf.config import (
    CONFIG_CHANGED_WARNING,
    CONFIG_FILE_NAME,
    DEFAULT_AUTHORITY,
    LOG_LEVELS,
    LoadedConfig,
    file_changed,
    load_config,
    read_config,
    usable_settings,
)
from sfa_omf.errors import BadArgs, GeniError
from sfa_omf.files import open_append
from sfa_omf.log_limits import OncePerPeriod
from sfa_omf.times import UtcLogFormatter, format_time

if TYPE_CHECKING:
    from sfa_omf.config import Settings

DEMO_NODES = 5


def add_server_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = commands.add_parser("serve", help="serve the aggregate (AM API v3 over TLS) until interrupted")
    serve.add_argument("--config", help=f"configuration file (default $SFA_OMF_CONFIG or ./{CONFIG_FILE_NAME})")
    serve.add_argument(
        "--log-level", type=str.upper, choices=LOG_LEVELS, help="default: [sfa_omf] log_level (INFO: a line per call)"
    )
    serve.add_argument(
        "--workers",
        type=_worker_count,
        help="processes serving the same ports (default: [sfa_omf] workers; auto: the cores with PostgreSQL, 1 with "
        "SQLite)",
    )
    # Set by the workers' master for the processes it starts (sfa_omf/cluster/workers.py), not by operators.
    serve.add_argument("--worker-sockets", type=_descriptors, help=argparse.SUPPRESS)
    serve.add_argument("--worker-number", type=int, default=0, help=argparse.SUPPRESS)
    serve.add_argument("--worker-of", type=int, default=0, help=argparse.SUPPRESS)  # the master's pid
    # The configuration file as the master read it (an inherited descriptor): every worker serves the same settings.
    serve.add_argument("--worker-config", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(handler=_serve)
    probe = commands.add_parser(
        "probe",
        help="call GetVersion on the registry and the aggregate as a federation peer would (at the advertised "
        "hostname); one line each; exit 0 when both answer (for monitoring)",
    )
    probe.add_argument("--config", help=f"configuration file (default $SFA_OMF_CONFIG or ./{CONFIG_FILE_NAME})")
    probe.add_argument("--timeout", type=_seconds, default=10.0, help="seconds to wait for each answer (default 10)")
    probe.set_defaults(handler=_probe)
    quick = commands.add_parser(
        "quickstart", help="init DIR if needed, add a demo inventory, and serve it on 127.0.0.1 (the embedded default)"
    )
    quick.add_argument("directory", nargs="?", default="demo")
    quick.add_argument(
        "--authority", help=f"authority HRN of a new DIR (default {DEFAULT_AUTHORITY}; an existing DIR keeps its own)"
    )
    quick.set_defaults(handler=_quickstart)


def configure_logging(log_file: str, level: str, worker: int = 0) -> None:
    """One line per event, at ``level`` and above, to ``log_file`` or standard error. Under systemd (JOURNAL_STREAM
    is set) the journal adds the time itself, so the line has none; elsewhere it begins with the time in UTC
    (2026-12-02T20:08:59.746Z). Alembic's INFO lines are left out: the calendar
    logs its own line when a migration really runs. ``worker``: the number of a worker process of ``serve
    --workers``, named in its lines (as ``worker 2``) to tell them from the others'. A log file is opened again when
    it is renamed or removed (logrotate), rather than written on into the rotated file."""
    handler: logging.Handler = _LogFile(log_file) if log_file else logging.StreamHandler(sys.stderr)
    journal = not log_file and bool(os.environ.get("JOURNAL_STREAM"))
    name = f"%(name)s[worker {worker}]" if worker else "%(name)s"
    line = f"%(levelname)s {name} %(message)s" if journal else f"%(asctime)s %(levelname)s {name} %(message)s"
    # UTC with a Z, as every time in the messages: a server-local stamp beside "...Z" times misleads the reader.
    handler.setFormatter(UtcLogFormatter(line))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("alembic").setLevel(logging.WARNING)


#: A log file serve makes: the service user writes it, its group (adm, for logrotate and readers) reads it.
LOG_FILE_MODE = 0o640
#: A log file that cannot be written is said on standard error at most this often.
LOG_FAILURE_REPORT_PERIOD_S = 60.0


class _LogFile(logging.handlers.WatchedFileHandler):
    """A log file opened again when renamed or removed; one it makes (at the start, or after logrotate moved the old
    one) is LOG_FILE_MODE whatever the umask: under a umask of 000 any local user could write lines into it. A file
    that exists keeps its mode (logrotate's ``create`` may set one).

    A file that cannot be written (its disk full) loses its lines, quietly: Python's own handling wrote a traceback
    of some 77 lines to standard error for every line lost (231 842 lines for 3 000 calls). Standard error gets one
    short line at most every LOG_FAILURE_REPORT_PERIOD_S, and once the file takes lines again a line in it says how
    many were lost."""

    _lost_lines = 0  # lines lost since the file last took one
    _first_lost = 0.0  # time.time() of the first of them
    _lost_because = ""  # the system's words for the last failure
    _reports: OncePerPeriod | None = None  # lines on standard error, made at the first loss

    def _open(self) -> io.TextIOWrapper:
        descriptor = open_append(self.baseFilename, LOG_FILE_MODE)
        return os.fdopen(descriptor, "a", encoding=self.encoding, errors=self.errors)

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record``; a file that cannot be opened again (after logrotate) or written loses it (handleError)."""
        try:
            self._ready()
        except OSError as error:  # raised to the caller of the log call before: a failed call for a full disk
            self._lose(record, error)
            return
        logging.StreamHandler.emit(self, record)  # a write that fails goes to handleError

    def handleError(self, record: logging.LogRecord) -> None:
        """A line the file could not take is counted as lost (see the class); any other failure (a log call's own
        mistake, such as a bad format) is Python's traceback, which names the call."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            self._lose(record, error)
            return
        super().handleError(record)

    def _ready(self) -> None:
        """The file open to write in (again, after a failure or logrotate), and the lines lost said in it first;
        OSError when it cannot be."""
        self.reopenIfNeeded()
        if self.stream is None:
            self.stream = self._open()
            self._statstream()
        if self._lost_lines:
            since = format_time(datetime.fromtimestamp(self._first_lost, UTC))
            note = logging.LogRecord(
                "sfa_omf.server",
                logging.WARNING,
                __file__,
                0,
                "%d log lines were lost since %s: the log file could not be written (%s)",
                (self._lost_lines, since, self._lost_because),
                None,
            )
            self.stream.write(self._line_break_if_cut() + self.format(note) + self.terminator)
            self.stream.flush()
            self._lost_lines = 0

    def _lose(self, record: logging.LogRecord, error: OSError) -> None:
        """``record`` is lost: counted, the file closed (what it kept of the line is dropped: it is opened again for
        the next), and standard error told (at most once a period)."""
        if not self._lost_lines:
            self._first_lost = record.created
        self._lost_lines += 1
        self._lost_because = error.strerror or str(error)
        stream, self.stream = self.stream, None
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.close()  # its flush fails again; the descriptor is closed all the same
        if self._reports is None:
            self._reports = OncePerPeriod(LOG_FAILURE_REPORT_PERIOD_S)
        if self._reports.due() is None:
            return
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(
                f"sfa-omf: cannot write the log file {self.baseFilename}: {self._lost_because}; log lines are being "
                f"lost (said at most once a minute)\n"
            )
            sys.stderr.flush()

    def _line_break_if_cut(self) -> str:
        """A line break when the file ends within a line (the full disk took part of one), else nothing."""
        try:
            with open(self.baseFilename, "rb") as written:
                if written.seek(0, os.SEEK_END) == 0:
                    return ""
                written.seek(-1, os.SEEK_END)
                return "" if written.read(1) == b"\n" else self.terminator
        except OSError:
            return ""


def _worker_count(text: str) -> int:
    """``--workers``: auto (0) or a number of processes."""
    from sfa_omf.config import AUTO_WORKERS

    if text.strip().lower() == "auto":
        return AUTO_WORKERS
    try:
        number = int(text)
    except ValueError:
        number = -1
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: auto, or a number of processes (at least 1)")
    return number


def _seconds(text: str) -> float:
    """``probe --timeout``: a number of seconds above 0 (0 would not wait at all, and say the server is down)."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise argparse.ArgumentTypeError(f"{text!r}: a number of seconds above 0")
    return seconds


def _descriptors(text: str) -> tuple[int, int]:
    aggregate, registry = (int(part) for part in text.split(","))
    return aggregate, registry


def _serve(args: argparse.Namespace) -> int:
    from sfa_omf.preflight import Finding, StartupError, check_startup

    worker = args.worker_sockets is not None
    # A worker serves what its master read at its start, not the file as it may have been edited since.
    loaded = _master_config(args) if worker and args.worker_config is not None else command_config(args)
    settings = loaded.settings
    if worker and args.worker_of:
        from sfa_omf.cluster.workers import die_with_master

        die_with_master(args.worker_of)
    warnings: list[Finding] = []
    if not worker:
        # Checked before Twisted is imported, so that a failure is reported at once (a port taken is checked again
        # when listening: another program may take it meanwhile). A worker's master checked all this.
        warnings = check_startup(settings, ports=True)
    try:
        configure_logging(settings.log_file, args.log_level or settings.log_level, args.worker_number)
    except OSError as exc:
        raise StartupError(
            f"cannot write the log file {settings.log_file}: {exc.strerror}; fix [sfa_omf] log_file or the "
            "permissions of its directory (or leave it empty: standard error, the journal under systemd)"
        ) from exc
    if not worker:
        from sfa_omf.cluster.workers import worker_count

        for warning in config_warnings(loaded):  # in the log (the journal), once: not again by each worker
            logging.getLogger("sfa_omf.server").warning("configuration: %s", warning)
        for finding in warnings:  # a certificate that ends soon, a peer's root that ended: the server starts
            logging.getLogger("sfa_omf.server").warning("%s: %s", finding.check, finding.message)
        count, why = worker_count(settings, args.workers)
        if why:
            logging.getLogger("sfa_omf.server").warning(why)
        if count > 1:
            return _serve_with_workers(loaded, args, count)
    if settings.calls_in_reactor and not settings.calendar_url.startswith("sqlite"):
        from sfa_omf.server.reactor_calls import install_asyncio_reactor

        install_asyncio_reactor()  # before the server's modules import Twisted's reactor
    from sfa_omf.server.app import RELOAD_HOOKS, serve_forever

    if worker:
        return _serve_as_worker(settings, args.worker_sockets)
    hook = functools.partial(_warn_if_changed, loaded)
    RELOAD_HOOKS.append(hook)
    try:
        return serve_forever(settings, checked=True)
    finally:
        RELOAD_HOOKS.remove(hook)


def _master_config(args: argparse.Namespace) -> LoadedConfig:
    """A worker's configuration: the file as its master read it at its start (``--worker-config``), not as it may
    have been edited since; ``--config`` names it (messages, relative paths)."""
    from sfa_omf.cluster.workers import read_config_descriptor

    path = args.config or os.environ.get("SFA_OMF_CONFIG") or CONFIG_FILE_NAME
    loaded = load_config(path, data=read_config_descriptor(args.worker_config))
    usable_settings(loaded)
    return loaded


def _warn_if_changed(loaded: LoadedConfig) -> None:
    """On SIGHUP: a reload applies only the trusted roots; say so when the file is no longer what is served."""
    if file_changed(loaded.path, loaded.data):
        logging.getLogger("sfa_omf.server").warning(CONFIG_CHANGED_WARNING, loaded.path)


def _serve_as_worker(settings: Settings, sockets: tuple[int, int]) -> int:
    """A worker of ``serve --workers``: serve the master's sockets. A worker that cannot start also tells the master
    why (STATUS=, on the notification socket, before its one line on standard error), so that the master's line
    about it says it: a replacement started while the database refuses connections, for example."""
    from sfa_omf.preflight import StartupError, one_line
    from sfa_omf.server.app import reactor, serve_forever
    from sfa_omf.server.systemd import notify_systemd

    # Twisted serves a copy (dup) of each inherited socket and closes that copy when the stop begins; the inherited
    # descriptor would keep the port listening until this process exits, so that, while it finishes its calls, new
    # connections queue where nobody accepts them. Closed once the reactor runs: serve_forever listens on both before.
    inherited = {fd: os.fstat(fd).st_ino for fd in sockets}
    reactor.callWhenRunning(_close_inherited, inherited)
    try:
        return serve_forever(settings, checked=True, sockets=sockets)
    except (StartupError, GeniError) as exc:
        reason = exc.message if isinstance(exc, GeniError) else str(exc)
        with contextlib.suppress(OSError):  # the master is gone: nobody to tell
            notify_systemd(f"STATUS={one_line(reason)}")
        raise


def _close_inherited(inherited: dict[int, int]) -> None:
    """Close each inherited descriptor (``inherited``: descriptor -> its socket's inode) that is still that socket."""
    for fd, inode in inherited.items():
        try:
            still_it = os.fstat(fd).st_ino == inode
        except OSError:  # closed already
            continue
        if still_it:
            os.close(fd)


def _serve_with_workers(loaded: LoadedConfig, args: argparse.Namespace, count: int) -> int:
    """Bind both ports here, then let ``count`` worker processes serve them (sfa_omf/cluster/workers.py), each with
    the configuration read here."""
    from sfa_omf.cluster.workers import Supervisor, bind_listening, worker_command
    from sfa_omf.preflight import StartupError, listen_message

    settings = loaded.settings
    sockets = []
    for service, host, port, setting in (
        ("aggregate", settings.aggregate_host, settings.aggregate_port, "[sfa_aggregate] port"),
        ("registry", settings.registry_host, settings.registry_port, "[sfa_registry] port"),
    ):
        try:
            sockets.append(bind_listening(host, port))
        except OSError as exc:
            for listening in sockets:
                listening.close()
            reason = (exc.strerror or str(exc)).lower()
            raise StartupError(listen_message(service, host, port, reason, setting)) from exc
    try:
        command = worker_command(loaded.path, args.log_level)
        return Supervisor(command, count, sockets, config_path=loaded.path, config_data=loaded.data).run()
    finally:
        for listening in sockets:
            listening.close()


def _probe(args: argparse.Namespace) -> int:
    """GetVersion over TLS on both servers, presenting the aggregate's own certificate (the servers want a client
    certificate) and, like sfi.py and omni, not checking the server's chain; then the validity of the certificate
    each serves: an expired one (or one not yet valid) is a failure, as clients that check it (curl, jFed, browsers)
    refuse the server; one ending within 30 days is said."""
    import ssl
    import xmlrpc.client

    settings = command_settings(args)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    aggregate_dir = os.path.join(settings.data_dir, "aggregate")
    gid_path, key_path = os.path.join(aggregate_dir, "am.gid"), os.path.join(aggregate_dir, "am.pkey")
    try:
        context.load_cert_chain(gid_path, key_path)
    except (OSError, ssl.SSLError) as exc:  # ssl says neither which file nor what to do
        from sfa_omf.preflight import identity_findings

        findings = identity_findings(settings)
        reason = findings[0].message if findings else f"cannot use {gid_path} with {key_path}: {exc}"
        raise BadArgs(f"probe presents the aggregate's certificate, and {reason}") from exc
    failures = 0
    for service, port in (("registry", settings.registry_port), ("aggregate", settings.aggregate_port)):
        url = f"{settings.https_url(port)}/"
        server = xmlrpc.client.ServerProxy(url, context=context, allow_none=True)
        started = time.monotonic()
        try:
            answer = _with_timeout(args.timeout, server.GetVersion)
        except TimeoutError:  # nothing in time: not the refusal of a stopped server, maybe a busy one
            failures += 1
            print(
                f"{service} {url}: answered nothing within --timeout ({args.timeout:g} s): it may be busy (or "
                "stuck, or a firewall drops the connection); try again with a longer --timeout, and see its log "
                "(journalctl -u sfa-omf)"
            )
            continue
        except (OSError, xmlrpc.client.Error) as exc:
            failures += 1
            print(f"{service} {url}: no answer ({exc}); is sfa-omf serve running? (systemctl status sfa-omf)")
            continue
        elapsed_ms = (time.monotonic() - started) * 1000
        value = answer.get("value", answer) if isinstance(answer, dict) else {}
        identity = value.get("urn") or value.get("hrn") or "?"
        api = value.get("geni_api") or answer.get("geni_api") or value.get("sfa")
        print(f"{service} {url} answers GetVersion in {elapsed_ms:.0f} ms: {identity} (API {api})")
        fatal, problem = _served_certificate_problem(settings.hostname, port, context, args.timeout)
        failures += fatal
        if problem:
            print(f"{service} {url}: {problem}")
    return 1 if failures else 0


def _served_certificate_problem(host: str, port: int, context: Any, timeout_s: float) -> tuple[bool, str]:
    """What is wrong with the certificate the server at host:port serves, and whether it is a failure (expired, not
    yet valid) or a warning (ending within EXPIRY_WARNING); (False, "") when nothing is, or it cannot be read
    (GetVersion answered already)."""
    import socket
    import ssl

    from cryptography import x509

    from sfa_omf.preflight import EXPIRY_WARNING, validity_problem
    from sfa_omf.times import format_time, utcnow

    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw, context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return False, ""
    if not der:
        return False, ""
    certificate = x509.load_der_x509_certificate(der)
    now, fix = utcnow(), "run sfa-omf authority renew, then restart sfa-omf serve"
    not_before, not_after = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    problem = validity_problem(not_before, not_after, now)  # (config check's word for the same dates)
    if problem == "expired":
        return (
            True,
            f"its certificate expired on {format_time(not_after)}: clients that check it refuse the server; {fix}",
        )
    if problem:
        return (
            True,
            f"its certificate is not valid before {format_time(not_before)}: is this machine's clock right (date -u)?",
        )
    if not_after - now <= EXPIRY_WARNING:
        return False, f"its certificate expires on {format_time(not_after)}; {fix}"
    return False, ""


def _with_timeout(timeout_s: float, call: Any) -> Any:
    """Run an XML-RPC call with a socket timeout (xmlrpc.client has no timeout of its own)."""
    import socket

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        return call()
    finally:
        socket.setdefaulttimeout(previous)


def _quickstart(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from sfa_omf.calendar.records import NodeSpec
    from sfa_omf.registry.authority import LocalAuthority
    from sfa_omf.registry.bootstrap import existing_authority, init_directory, register_demo, write_example_requests
    from sfa_omf.registry.nodes import record_nodes
    from sfa_omf.registry.records import Records
    from sfa_omf.server.app import build_aggregate, serve_forever
    from sfa_omf.xrn import hrn_to_urn, split_hrn

    authority = args.authority or existing_authority(args.directory) or DEFAULT_AUTHORITY
    split_hrn(authority)  # before the directory is made: a refused name leaves nothing behind
    report = init_directory(args.directory, authority, ("alice", "bob"))
    settings = read_config(os.path.join(report.directory, CONFIG_FILE_NAME))
    configure_logging(settings.log_file, settings.log_level)
    aggregate = build_aggregate(settings)
    register_demo(report, aggregate.database)
    if not aggregate.inventory.list_nodes():
        for number in range(1, DEMO_NODES + 1):
            name = f"node{number}"
            aggregate.inventory.add_node(
                NodeSpec(hrn_to_urn(f"{settings.interface_hrn}.{name}", "node"), name, hardware_type="demo")
            )
    # The nodes are registry records too (sfi.py list -t node AUTH); serve would record them, this says so now.
    authority = LocalAuthority.load(report.directory, settings.interface_hrn)
    record_nodes(authority, Records(aggregate.database), aggregate.inventory.list_nodes())
    requests = write_example_requests(
        report.directory,
        [node.component_id for node in aggregate.inventory.list_nodes(federated_only=True)],
        aggregate.clock(),
        timedelta(seconds=settings.grain_s),
        timedelta(seconds=settings.default_duration_s),
    )
    print(first_steps(report.directory, settings, report.sfi_dirs["alice"], requests))
    sys.stdout.flush()
    return serve_forever(settings)


def first_steps(directory: str, settings: Settings, sfi: str, requests: Sequence[str]) -> str:
    """What quickstart prints: where things are and the whole flow, with absolute paths (sfi.py reads a relative
    RSpec path from its -d folder, so a bare request.xml would not be found)."""
    from sfa_omf.registry.bootstrap import DEMO_SLICE, OMNI_CONFIG_NAME, SSH_KEY_NAME
    from sfa_omf.xrn import hrn_to_urn

    auth = settings.interface_hrn
    slice_hrn = f"{auth}.{DEMO_SLICE}"
    url = f"{settings.https_url(settings.aggregate_port, settings.aggregate_host)}/"
    sfi_py = f"sfi.py -d {sfi}"
    request = requests[0] if requests else "REQUEST.xml"
    lines = [
        f"sfa-omf aggregate {hrn_to_urn(auth, 'authority+am')} on {url} (AM API v3; v2 at {url}am2)",
        f"  registry of {auth} on {settings.https_url(settings.registry_port, settings.registry_host)}/",
        f"  authority directory: {directory} (sfa-omf node list --config {os.path.join(directory, CONFIG_FILE_NAME)})",
        "  example requests (rewritten at each start, their times ahead):",
        *(f"    {path}" for path in requests),
        "  try, with the public sfi.py (Python 3 port); a tutorial is in docs/experimenters.md:",
        f"    {sfi_py} version",
        f"    {sfi_py} list -t node {auth}",
        f"    {sfi_py} resources",
        f"    {sfi_py} resources -l all",
        f"    {sfi_py} allocate {slice_hrn} {request}",
        f"    {sfi_py} describe {slice_hrn}",
        f"    {sfi_py} provision {slice_hrn}",
        f"    {sfi_py} status {slice_hrn}",
        f"    {sfi_py} renew {slice_hrn} +2h",
        f"    {sfi_py} delete {slice_hrn}",
        f"  log in as the manifest's <login> says, with {os.path.join(sfi, SSH_KEY_NAME)}",
        "  or with omni (geni-tools), whose omni_config holds the same certificate and key (docs/experimenters.md):",
        f"    omni -c {os.path.join(sfi, OMNI_CONFIG_NAME)} -V3 -a {url} getversion",
        "  Stop with Ctrl-C.",
    ]
    return "\n".join(lines)
