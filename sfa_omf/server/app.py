"""Putting the aggregate together from the configuration and serving it: ``sfa-omf serve`` and ``sfa-omf quickstart``.

Only this module and the rest of server/ know Twisted. It builds the synchronous core (database, verifier, calendar,
Aggregate) from Settings, serves AM API v3 over TLS at ``/`` (where clients with no path land; ``/RPC2`` too) and
v2 at ``/am2``, runs the calls in a bounded thread pool, and registers the background tasks (allocations never
provisioned, leases ended, notifications, the testbed's reconcilers, lost node agents) with the process's Leadership,
which runs them only on the one process that leads the cluster (sfa_omf/cluster/leadership.py). With ``--workers N``
each worker runs ``serve_forever`` on listening sockets its master bound (sfa_omf/cluster/workers.py).

Start-up never lies: what would stop the server is checked first (sfa_omf/preflight.py), the servers listen before
any thread starts, and any failure is a one-line StartupError with nothing left running; once both listen, systemd
hears READY=1. While serving, the trusted-roots directory is watched (and re-read at once on SIGHUP).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from twisted.internet import reactor as _reactor
from twisted.internet import tcp
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from sfa_omf.agents.dns import DnsZones
from sfa_omf.agents.health import agent_health
from sfa_omf.agents.service import AgentService, AgentSettings
from sfa_omf.agents.staging import FileStore
from sfa_omf.agents.vpn import VpnCa
from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.am.api_v2 import ApiV2
from sfa_omf.am.api_v3 import ApiV3
from sfa_omf.calendar.agents import Agents
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.fence import fence_term, terms_for
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.policy import Policy
from sfa_omf.calendar.retention import HistoryRetention
from sfa_omf.calendar.vpn_records import VpnRecords
from sfa_omf.cluster.agreement import REFRESH_S as AGREEMENT_REFRESH_S
from sfa_omf.cluster.agreement import SettingsAgreement, agreed_values
from sfa_omf.cluster.leadership import Leadership, LeadershipLost, PeriodicTask, lock_for, startup_writes
from sfa_omf.config import Settings
from sfa_omf.images.instances import instances_of
from sfa_omf.images.store import ImageStore, store_directory
from sfa_omf.notify.notifier import Notifier, NotifySettings, notify_settings
from sfa_omf.preflight import StartupError, check_startup, listen_message, one_line
from sfa_omf.registry.accounts import Accounts
from sfa_omf.registry.api import RegistryApi
from sfa_omf.registry.authority import AuthorityError, LocalAuthority
from sfa_omf.registry.nodes import record_nodes
from sfa_omf.registry.records import Records
from sfa_omf.server.agent_http import AgentResource
from sfa_omf.server.call_threads import CallThreads
from sfa_omf.server.fd_limits import connection_limit, raise_open_file_limit
from sfa_omf.server.gc_tuning import freeze_start_up_objects
from sfa_omf.server.reactor_calls import IN_REACTOR_WORDS, ReactorCalls, asyncio_reactor_running_here
from sfa_omf.server.systemd import notify_systemd
from sfa_omf.server.tls import ServerTls
from sfa_omf.server.web import WebCalendarResource
from sfa_omf.server.xmlrpc import GuardedChannel, XmlRpcResource, make_site
from sfa_omf.testbed.base import BackgroundTask, TestbedNodes
from sfa_omf.testbed.registry import load_backend
from sfa_omf.testbed.unix_accounts import UnixAccounts
from sfa_omf.trust.gid import load_gid_chain_file
from sfa_omf.trust.pki import load_private_key_file
from sfa_omf.trust.roots import TrustedRootsWatcher, load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from sfa_omf.web.app import WebCalendar, WebSettings

log = logging.getLogger("sfa_omf.server")
reactor: Any = _reactor
EXPIRY_PERIOD_S = 60
INSTANCES_PERIOD_S = 5  # how often lease containers are started and destroyed at slot boundaries
REQUEST_TIMEOUT_S = 120
NOTIFY_PERIOD_S = 30
HISTORY_PERIOD_S = 3600  # finished leases older than [sfa_omf] history_days are deleted hourly
#: How often the trusted-roots directory is looked at for roots added or removed (SIGHUP: at once).
ROOTS_CHECK_PERIOD_S = 5
AGENT_FLUSH_S = 5  # heartbeats are written to the database together at most this often
BACKGROUND_CONNECTIONS = 4  # database connections kept for the background tasks, beside one per call thread


def database_connections(settings: Settings) -> int:
    """The database connections a serving process keeps open: one per call thread of the aggregate's and of the
    registry's pools, and a few for the background tasks. Fewer, and the calls beyond them each opened and closed a
    connection of their own (measured: Allocate with 8 clients spent a tenth of its time connecting to SQLite)."""
    return 2 * settings.threads + BACKGROUND_CONNECTIONS


def build_aggregate(settings: Settings, upgrade: bool = True, serving: bool = True) -> Aggregate:
    """The synchronous core, ready for calls. ``upgrade``: bring the database schema up to date first (quickstart,
    tests); ``serve`` does not, it refuses to start on an old schema (check_startup). ``serving``: its statements
    are bounded by ``database_timeout_s`` (a command's, e.g. node import --from-omf, are not: an operator can
    interrupt it, and a long import must not be cut halfway)."""
    database = Database(
        settings.calendar_url,
        connections=database_connections(settings),
        statement_timeout_s=settings.database_timeout_s if serving else None,
    )
    if upgrade:
        database.upgrade()
    images = ImageStore(database, store_directory(settings.data_dir))
    policy = Policy(
        default_grain_s=settings.grain_s,
        min_duration_s=settings.grain_s,
        max_duration_s=settings.max_duration_s,
        max_advance_s=settings.max_advance_s,
        max_nodes_per_request=settings.max_nodes_per_request,
        max_leases_per_request=settings.max_leases_per_request,
        max_instances_per_node=settings.max_instances_per_node,
        allocation_ttl_s=settings.allocation_ttl_s,
        # Fair use: 0 in the configuration is no limit (None to the policy).
        max_hours_per_day_per_user=settings.max_hours_per_day_per_user or None,
        max_concurrent_leases_per_slice=settings.max_concurrent_leases_per_slice or None,
        max_node_hours_ahead_per_user=settings.max_node_hours_ahead_per_user or None,
    )
    verifier = CredentialVerifier(load_trusted_roots(settings.trusted_roots_dir), VerdictCache())
    url = f"{settings.https_url(settings.aggregate_port)}/"
    aggregate = Aggregate(
        AggregateSettings(
            authority_hrn=settings.interface_hrn,
            hostname=settings.hostname,
            api_urls={"2": url + "am2", "3": url},
            default_duration=timedelta(seconds=settings.default_duration_s),
            horizon=timedelta(days=settings.horizon_days),
            free_windows=settings.free_windows,
            max_request_bytes=settings.max_request_bytes,
        ),
        database,
        verifier,
        policy,
        backend=load_backend(settings.aggregate_type, settings, database),
        accounts=Accounts(database, settings.account_policy, settings.shared_login),
        unix_accounts=UnixAccounts() if settings.create_accounts else None,
        images=images,
        instances=instances_of(settings, database, images),
        identity=(
            load_private_key_file(os.path.join(settings.data_dir, "aggregate", "am.pkey")),
            load_gid_chain_file(os.path.join(settings.data_dir, "aggregate", "am.gid")),
        ),
    )
    aggregate.node_health = agent_health(Agents(database, policy))
    return aggregate


@dataclass
class RunningServer:
    port: Any
    pool: ThreadPool
    leadership: Leadership  # the cluster-wide background tasks, run while this process leads
    loops: list[LoopingCall] = field(default_factory=list)  # this process's own periodic work (heartbeat flushes)
    reactor_calls: ReactorCalls | None = None  # the calls answered in the reactor thread (reactor_calls.py)

    @property
    def port_number(self) -> int:
        return int(self.port.getHost().port)

    def _stop_loops(self) -> None:
        for loop in self.loops:
            if loop.running:
                loop.stop()
        # Waits (bounded) for a task that runs, then lets another process lead at once; a task still running keeps
        # the lock held until this process exits, so that no other process runs it meanwhile.
        self.leadership.stop()

    def abandon(self) -> None:
        """Stop the threads and loops of a server whose reactor will never run (start-up failed)."""
        self._stop_loops()
        self.port.stopListening()
        self.pool.stop()

    def stop(self) -> Deferred[None]:
        """Stop serving without losing an answer (call in the reactor thread; see stop_serving), and the background
        tasks meanwhile. The Deferred fires once the calls are answered and the tasks stopped."""
        for loop in self.loops:
            if loop.running:
                loop.stop()
        # The leadership's stop waits (bounded) for a task that runs: in a thread too, beside the calls.
        stops = [self.pool.stop, self.leadership.stop]
        in_progress = _in_progress(self.pool)
        if self.reactor_calls is not None:
            stops.append(self.reactor_calls.wait_until_idle)
            in_progress += self.reactor_calls.running
        return stop_serving("aggregate", [self.port], stops, in_progress)


#: At a stop, once the last call is answered: how long the answers may still take to reach their clients before the
#: connections are cut. Bounded, so that a client that takes nothing cannot hold the stop.
STOP_FLUSH_S = 3.0
STOP_CHECK_S = 0.05  # how often a stop looks at its connections


def stop_serving(
    name: str,
    ports: Sequence[Any],
    stops: Sequence[Callable[[], None]],
    calls_in_progress: int = 0,
    flush_s: float = STOP_FLUSH_S,
) -> Deferred[None]:
    """Stop serving on ``ports`` without losing an answer (call in the reactor thread); the Deferred fires when done.

    Listening stops at once: a new connection is refused (or, of a worker, taken by the other workers). A connection
    with no call in progress is closed at once, so a kept-alive client's next call goes elsewhere instead of into a
    server that no longer takes calls. A connection with a call in progress is closed right after its answer, which
    says ``Connection: close``: a call its client pipelined behind that one is never read, never run (it used to be
    read and handed to call threads that no longer took calls: no answer, and no sign whether it ran), and its client
    may send it again. ``stops`` (the call threads' ``stop``, which lets the calls handed over
    finish) each run in a thread of their own: the reactor thread goes on meanwhile, writing each answer as its call
    ends and then closing its connection. Once all have returned, the answers have up to ``flush_s`` to reach their
    clients; Twisted's shutdown then cuts what is left. ``calls_in_progress``, when any, are logged as the stop
    begins, with ``name``, once listening has stopped. (The reactor thread used to wait in the threads' stop itself:
    the answers queued behind it, and the shutdown closed every connection before writing them, though the calls'
    work, a booking, was done.)"""
    listening = gatherResults([maybeDeferred(port.stopListening) for port in ports], consumeErrors=True)
    if calls_in_progress:  # why this stop takes a while
        listening.addBoth(
            lambda _: log.info(
                "%s stopping: listening no more; answering the %d call(s) in progress first", name, calls_in_progress
            )
        )
    stopped: list[bool] = []  # every stop returned: no answer is to come any more
    flush_until: list[float] = []

    def check() -> None:
        channels = _channels_of(ports)
        for channel in channels:
            channel.close_after_answer()
        if not stopped:
            return
        if not flush_until:
            flush_until.append(time.monotonic() + flush_s)
        if all(channel.unsent_bytes() == 0 for channel in channels) or time.monotonic() >= flush_until[0]:
            checks.stop()

    def all_stopped(result: object) -> None:
        if isinstance(result, Failure):  # a bug: log it, and end the stop all the same
            log.error("stopping the server failed: %s", result.getTraceback())
        stopped.append(True)
        if checks.running:
            check()  # at once: the answers written last are closed and flushed from now

    checks = LoopingCall(check)
    done = checks.start(STOP_CHECK_S, now=True)
    # Each stop's end reaches the reactor thread after the answers its threads handed over (callFromThread keeps
    # their order), so by then every answer is written.
    gatherResults([deferToThread(stop) for stop in stops], consumeErrors=True).addBoth(all_stopped)
    return done.addCallback(lambda _: None)


def _in_progress(pool: ThreadPool) -> int:
    return pool.in_progress() if isinstance(pool, CallThreads) else 0


def _channels_of(ports: Sequence[Any]) -> list[GuardedChannel]:
    """The HTTP channels of the connections accepted on ``ports`` and still open: those its TLS factory keeps (a
    WrappingFactory's ``protocols``), watched by the reactor or not. (The reactor's readers missed a connection whose
    call was in progress while Twisted had stopped reading it: a client pipelining over 16 KiB behind that call.)"""
    channels: list[GuardedChannel] = []
    for port in ports:
        for wrapper in list(getattr(port.factory, "protocols", {})):
            protocol: Any = wrapper
            while not isinstance(protocol, GuardedChannel) and hasattr(protocol, "wrappedProtocol"):
                protocol = protocol.wrappedProtocol  # the TLS layer's
            if isinstance(protocol, GuardedChannel):
                channels.append(protocol)
    return channels


class _SharedPort(tcp.Port):
    """A listening socket shared with other worker processes: one accept() per wake-up, so that connections spread
    over the workers (Twisted's own Port accepts up to a hundred at once: the first worker awake would take them all).
    """

    def doRead(self) -> Any:
        self.numberAccepts = 1
        return super().doRead()


def listen_tls(port: int, site: Any, tls: Any, interface: str, listening_fd: int | None = None) -> Any:
    """Serve ``site`` over TLS: on ``port`` (listenSSL), or on an inherited listening socket (``listening_fd``, a
    worker of ``serve --workers``). Call in the reactor thread."""
    if listening_fd is None:
        return reactor.listenSSL(port, site, tls, interface=interface)
    from twisted.protocols.tls import TLSMemoryBIOFactory

    probe = socket.socket(fileno=listening_fd)  # only to learn the address family; the fd stays open
    family = probe.family
    probe.detach()
    shared = _SharedPort._fromListeningDescriptor(reactor, listening_fd, family, TLSMemoryBIOFactory(tls, False, site))
    shared.startListening()
    return shared


def start_aggregate(
    settings: Settings, aggregate: Aggregate, port: int | None = None, listening_fd: int | None = None
) -> RunningServer:
    """Listen for AM API calls over TLS (call in the reactor thread). ``port`` 0 picks a free one (tests);
    ``listening_fd``: serve a socket the workers' master bound instead.

    Listens first and starts threads only once listening worked: a port that is taken raises CannotListenError and
    leaves no thread behind (a thread pool left running would keep the process alive with nothing listening).
    """
    pool = CallThreads(settings.threads, name="sfa-omf-am")
    reactor_calls = _reactor_calls(settings)
    v3 = XmlRpcResource(ApiV3(aggregate), pool, reactor, settings.max_request_bytes, reactor_calls)
    v2 = XmlRpcResource(ApiV2(aggregate), pool, reactor, settings.max_request_bytes)
    routes: dict[bytes, Any] = {b"am2": v2}
    if aggregate.backend.name == "omf":  # omf_sfa's REST inventory, for the testbed's controllers and tools
        from sfa_omf.testbed.omf.rest import inventory_resource

        base_url = settings.https_url(settings.aggregate_port)
        routes[b"resources"] = inventory_resource(aggregate, base_url, pool, reactor, settings)
    agents = _agent_api(settings, aggregate)
    if agents is not None:
        agents.write_names()  # the nodes' zone files, for a DNS server yet to start (or reload)
        routes[b"agents"] = AgentResource(
            agents, pool, reactor, settings.agent_max_body_bytes, settings.agent_max_file_bytes
        )
    if settings.web_enabled:
        routes[b"calendar"] = web_calendar_resource(settings, aggregate, pool)
    site = make_site(
        routes,
        v3,
        max_body_bytes=settings.max_request_bytes,
        timeout_s=REQUEST_TIMEOUT_S,
        json_prefixes=(b"/resources/",) if b"resources" in routes else (),
        max_connections=connection_limit(settings.max_connections),
        max_connections_per_peer=settings.max_connections_per_peer,
    )
    tls = ServerTls(
        os.path.join(settings.data_dir, "aggregate", "am.pkey"),
        os.path.join(settings.data_dir, "aggregate", "am.gid"),
        # Browsers without a GENI certificate get the calendar's public view; XML-RPC still refuses them.
        require_client_certificate=not settings.web_enabled,
    )
    listening = listen_tls(
        settings.aggregate_port if port is None else port, site, tls, settings.aggregate_host, listening_fd
    )
    pool.start()
    # PostgreSQL: the tasks' writes are fenced by the cluster's durable leadership term (calendar/fence.py).
    leadership = Leadership(
        lock_for(settings.calendar_url, settings.leader_takeover_s),
        settings.leader_takeover_s,
        terms_for(settings.calendar_url, settings.leader_takeover_s),
    )
    for task in background_tasks(settings, aggregate, agents):
        leadership.register(task)
    loops = []
    agreement = _settings_agreement(settings, aggregate)
    if agreement is not None:
        # At each leadership gain (and then each period), an ERROR for the settings other live hosts run otherwise.
        leadership.register(PeriodicTask("settings agreement", AGREEMENT_REFRESH_S, agreement.leader_check))
        refresh = LoopingCall(lambda: reactor.callInThread(_refresh_agreement, agreement))
        refresh.start(AGREEMENT_REFRESH_S, now=False)
        loops.append(refresh)
        reactor.addSystemEventTrigger("before", "shutdown", lambda: deferToThread(_withdraw_agreement, agreement))
    leadership.start()
    if agents is not None:
        # Each process buffers the heartbeats it receives: each writes its own (not a cluster-wide task).
        heard = PeriodicTask("heartbeats", min(AGENT_FLUSH_S, settings.agent_heartbeat_s), agents.flush_heartbeats)
        flush = LoopingCall(lambda: reactor.callInThread(_background, heard))
        flush.start(heard.period_s, now=False)
        loops.append(flush)
    return RunningServer(port=listening, pool=pool, leadership=leadership, loops=loops, reactor_calls=reactor_calls)


def _reactor_calls(settings: Settings) -> ReactorCalls | None:
    """The calls answered in the reactor thread ([sfa_omf] calls_in_reactor, on by default): on PostgreSQL, with the
    asyncio reactor (``serve`` installs it); None otherwise (SQLite has no asynchronous driver), the calls then on the
    call threads as every other. ``serve``'s line "serving AM API v3" says which."""
    if (
        not settings.calls_in_reactor
        or settings.calendar_url.startswith("sqlite")
        or not asyncio_reactor_running_here()
    ):
        return None
    return ReactorCalls(settings.threads, reactor._asyncioEventloop)


def _settings_agreement(settings: Settings, aggregate: Aggregate) -> SettingsAgreement | None:
    """PostgreSQL: this process's values of the settings every host must agree on, written for the other hosts, and
    a WARNING for each that another live host runs otherwise (sfa_omf/cluster/agreement.py). SQLite: one host, None.
    A failure is logged and serving goes on (the next refresh tries again)."""
    if aggregate.database.is_sqlite:
        return None

    def values_now() -> dict[str, Any]:
        return agreed_values(settings, aggregate.verifier.roots)  # the roots in use (reloaded while serving)

    agreement = SettingsAgreement(aggregate.database.engine, values_now(), values_now=values_now)
    try:
        agreement.announce()
    except Exception as exc:  # never stops a start; if the database is down, the start's own check says so once
        log.debug("settings not compared with the other hosts' yet (%s); the next refresh tries", one_line(str(exc)))
    return agreement


def _refresh_agreement(agreement: SettingsAgreement) -> None:
    try:
        agreement.refresh()
    except Exception as exc:  # a database hiccup: the next refresh tries again
        log.warning(
            "settings not compared with the other hosts' (%s); trying again in %d s",
            one_line(str(exc)),
            AGREEMENT_REFRESH_S,
        )


def _withdraw_agreement(agreement: SettingsAgreement) -> None:
    try:
        agreement.withdraw()
    except Exception as exc:  # the row is then a dead process's once it is not refreshed any more
        log.debug("this process's settings row not deleted at the stop (%s)", exc)


def background_tasks(settings: Settings, aggregate: Aggregate, agents: AgentService | None) -> list[PeriodicTask]:
    """The work done on one process of the cluster (the leader): what changes the calendar as time passes."""
    tasks = [PeriodicTask("expiry of allocations and leases", EXPIRY_PERIOD_S, lambda: _expire(aggregate))]
    if settings.notify_enabled:
        notifier = build_notifier(settings, aggregate)
        tasks.append(PeriodicTask("notifications", NOTIFY_PERIOD_S, lambda: _notify(notifier)))
    if aggregate.instances is not None:  # containers start within seconds of their slot's start
        tasks.append(PeriodicTask("lease containers", INSTANCES_PERIOD_S, aggregate.run_instances))
    for task in aggregate.backend.background_tasks():  # e.g. OAR's mirror and reconciler, OMF's slot boundaries
        tasks.append(PeriodicTask(task.name, task.period_s, functools.partial(_backend_task, aggregate, task)))
    if agents is not None:
        # Checked several times per timeout, so a silent node is lost at most a third of the timeout late. A term's
        # first sweep (at its start) loses nobody: silence counts from then on (_lost_agents_sweep).
        period = max(1, settings.agent_timeout_s // 3)
        tasks.append(PeriodicTask("lost node agents", period, _lost_agents_sweep(agents)))
    if settings.history_days > 0:  # 0: the calendar keeps everything
        retention = HistoryRetention(aggregate.database, settings.history_days)
        tasks.append(PeriodicTask("history retention", HISTORY_PERIOD_S, lambda: _prune_history(retention)))
    return tasks


def _agent_api(settings: Settings, aggregate: Aggregate) -> AgentService | None:
    """The node agents' API, which signs with the local authority's key; absent (and said so) without one."""
    try:
        authority = LocalAuthority.load(settings.data_dir, settings.interface_hrn)
    except AuthorityError as exc:
        log.warning("node agent API disabled: %s", exc)
        return None
    return AgentService(
        Agents(aggregate.database, aggregate.policy, clock=aggregate.clock),
        authority,
        aggregate.local_accounts,
        AgentSettings(
            heartbeat_s=settings.agent_heartbeat_s,
            timeout_s=settings.agent_timeout_s,
            vpn_remote=settings.agent_vpn_remote,
            vpn_port=settings.agent_vpn_port,
            stage_out_grace_s=settings.agent_stage_out_grace_s,
        ),
        FileStore(
            os.path.join(settings.data_dir, "agent_files"),
            settings.agent_max_file_bytes,
            max_out_files=settings.agent_max_stage_out_files,
            max_out_bytes=settings.agent_max_stage_out_bytes,
            min_free_bytes=settings.agent_min_free_bytes,
        ),
        (
            # On PostgreSQL (one or several hosts) the cluster's one CA, refused when this host holds another, and
            # the CRL and ccd/ from the database; SQLite is served by one process of one host: its files suffice.
            VpnCa(
                os.path.join(settings.data_dir, "vpn"),
                settings.interface_hrn,
                None if aggregate.database.is_sqlite else VpnRecords(aggregate.database),
            )
            if settings.agent_vpn_remote
            else None
        ),
        (
            DnsZones.from_settings(
                os.path.join(settings.data_dir, "dns"), settings.agent_dns_zone, settings.agent_dns_reload
            )
            if settings.agent_dns_zone
            else None
        ),
        _testbed_nodes(aggregate),
    )


def _testbed_nodes(aggregate: Aggregate) -> TestbedNodes | None:
    """The testbed's own list of nodes that agents' nodes join: OAR's resources with the OAR backend."""
    from sfa_omf.testbed.oar.backend import OarTestbed

    if isinstance(aggregate.backend, OarTestbed):
        from sfa_omf.testbed.oar.agent_nodes import OarAgentNodes

        return OarAgentNodes(aggregate.backend.client)
    return None


def _lost_agents_sweep(service: AgentService) -> Callable[[], None]:
    """The sweep of lost agents, run by the leader. In a new term the agents' heartbeats may have gone unrecorded
    until now: the database was away (which ended the previous term, the agents' heartbeats answered 503), or every
    process restarted. So the term's first sweep tells the calendar (Agents.heartbeats_unrecorded): no agent's
    silence counts before the database answered this term, and an outage of our own database loses no node."""
    terms: list[int | None] = []  # the durable term of the last sweep (None on SQLite: one process, one term)

    def sweep() -> None:
        term = fence_term()
        if terms != [term]:
            terms[:] = [term]
            service.agents.heartbeats_unrecorded()
        _sweep(service)

    return sweep


def _sweep(service: AgentService) -> None:
    lost = service.sweep_lost()
    if lost:
        log.warning("node agent(s) lost contact, their nodes leave service: %s", ", ".join(lost))


def build_notifier(settings: Settings, aggregate: Aggregate) -> Notifier:
    """The notifier over the aggregate's database, from [sfa_notify]."""
    return Notifier(aggregate.database, notify_settings_of(settings), clock=aggregate.clock)


def notify_settings_of(settings: Settings) -> NotifySettings:
    """[sfa_notify] as the notifier's settings."""
    return notify_settings(
        settings.notify_smtp_host,
        settings.notify_smtp_port,
        settings.notify_smtp_starttls,
        settings.notify_smtp_user,
        settings.notify_smtp_password,
        settings.notify_from,
        settings.notify_webhook_key,
        settings.notify_lead_s,
        operator_urns=settings.web_admin_urns,
        operator_addresses=settings.notify_operator_addresses,
        email_by_default=settings.notify_email_by_default,
        tls=settings.notify_smtp_tls,
        webhook_timeout_s=settings.notify_webhook_timeout_s,
        webhook_origin_budget_s=settings.notify_webhook_origin_budget_s,
    )


def _notify(notifier: Notifier) -> None:
    try:
        notifier.notice()
        notifier.deliver()
    except LeadershipLost:  # another process leads: Leadership says so once and stops leading
        raise
    except Exception:  # a database hiccup must not stop the next round
        log.exception("notifications failed; will try again")


def web_calendar_resource(settings: Settings, aggregate: Aggregate, pool: ThreadPool) -> WebCalendarResource:
    """The web calendar and iCal feeds over the aggregate's database and trusted roots (mounted at /calendar)."""
    calendar = WebCalendar(
        aggregate.database,
        aggregate.verifier,
        WebSettings(
            host=settings.hostname,
            admins=settings.web_admin_urns,
            horizon=aggregate.settings.horizon,
            free_windows=aggregate.settings.free_windows,
            form_key=web_form_key(settings),
            email_by_default=settings.notify_email_by_default,
            notify_enabled=settings.notify_enabled,
            webhook_key=settings.notify_webhook_key,
        ),
        clock=aggregate.clock,
        registered_keys=aggregate.registered_keys,
    )
    return WebCalendarResource(calendar, pool, reactor)


def web_form_key(settings: Settings) -> bytes:
    """The key of the web forms' tokens (web/forms.py): derived from the aggregate's private key, so every worker
    and every restart of this aggregate agrees, and nobody without that key can make one."""
    with open(os.path.join(settings.data_dir, "aggregate", "am.pkey"), "rb") as key_file:
        return hashlib.sha256(b"sfa-omf web forms\0" + key_file.read()).digest()


def start_registry(
    settings: Settings,
    database: Database,
    port: int | None = None,
    verifier: CredentialVerifier | None = None,
    listening_fd: int | None = None,
) -> Any:
    """Serve the local authority's SFA Registry API over TLS with the authority's own key (call in the reactor
    thread). The authority's issued GIDs and the inventory's nodes are recorded first (idempotent). ``verifier``:
    share the aggregate's (so that reloaded trusted roots reach both); default: a verifier of its own. Listens before
    starting threads."""
    authority = LocalAuthority.load(settings.data_dir, settings.interface_hrn)
    records = Records(database)
    records.import_authority(authority)
    record_nodes(authority, records, Inventory(database).list_nodes())  # nodes added since, e.g. by an import
    if verifier is None:
        verifier = CredentialVerifier(load_trusted_roots(settings.trusted_roots_dir), VerdictCache())
    pool = CallThreads(settings.threads, name="sfa-omf-registry")
    api = RegistryApi(authority, records, verifier, timedelta(days=settings.max_slice_renew_days))
    endpoint = XmlRpcResource(api, pool, reactor, settings.max_request_bytes)
    site = make_site(
        {},
        endpoint,
        max_body_bytes=settings.max_request_bytes,
        timeout_s=REQUEST_TIMEOUT_S,
        max_connections=connection_limit(settings.max_connections),
        max_connections_per_peer=settings.max_connections_per_peer,
    )
    tls = ServerTls(
        LocalAuthority.key_path(settings.data_dir, settings.interface_hrn),
        LocalAuthority.gid_path(settings.data_dir, settings.interface_hrn),
    )
    listening = listen_tls(
        settings.registry_port if port is None else port, site, tls, settings.registry_host, listening_fd
    )
    pool.start()
    # Not pool.stop itself: it would hold the reactor thread, and the answers with it (stop_serving).
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: stop_serving("registry", [listening], [pool.stop], pool.in_progress())
    )
    return listening


#: Called on SIGHUP before the trusted roots are looked at, in the reactor thread: ``serve`` adds its check of the
#: configuration file (a reload does not apply it: it warns when the file differs from what is served).
RELOAD_HOOKS: list[Callable[[], None]] = []


def watch_trusted_roots(verifier: CredentialVerifier, period_s: float = ROOTS_CHECK_PERIOD_S) -> TrustedRootsWatcher:
    """Keep ``verifier``'s trusted roots in step with its directory (call in the reactor thread): the directory is
    looked at every ``period_s`` and on SIGHUP; each change is logged, and a directory that cannot be read leaves the
    roots in use as they were (logged too)."""
    watcher = TrustedRootsWatcher(verifier.roots.source, verifier.roots)

    def check() -> None:
        try:
            change = watcher.check()
        except Exception as exc:  # a root file half-copied, unreadable: keep serving with the roots we have
            log.warning(
                "trusted roots in %s not reloaded (%s); still trusting %s",
                watcher.directory,
                getattr(exc, "message", exc),  # a GeniError's message, without its reason code
                watcher.roots.names(),
            )
            return
        if change is not None:
            verifier.roots = change.roots
            log.info("trusted roots reloaded from %s: %s", watcher.directory, change.describe())

    def reload() -> None:
        for hook in RELOAD_HOOKS:
            hook()
        check()

    LoopingCall(check).start(period_s, now=True)  # at once too: the roots were loaded before the start-up wait
    if threading.current_thread() is threading.main_thread():  # signals can only be set there (not in tests)
        signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(reload))
    return watcher


def _background(task: PeriodicTask) -> None:
    try:
        task.run()
    except LeadershipLost:  # another process leads: Leadership says so once and stops leading
        raise
    except Exception as exc:  # a testbed that is down must not stop the next run
        log.warning("%s failed (%s); will try again in %d s", task.name, exc, task.period_s)


def _backend_task(aggregate: Aggregate, task: BackgroundTask) -> None:
    """Run a testbed's periodic task; its failing or working again, and its repairs, are operators' events. Leases
    its result says it cancelled (``cancelled``) are finished by the aggregate (containers, keys)."""
    backend = aggregate.backend.name
    try:
        result = task.run()
    except LeadershipLost:  # another process leads: Leadership says so once and stops leading
        raise
    except Exception as exc:  # a testbed that is down must not stop the next run
        log.warning("%s failed (%s); will try again in %d s", task.name, exc, task.period_s)
        aggregate.alerts.backend_failed(backend, task.name, str(exc))
        return
    aggregate.alerts.backend_worked(backend, task.name)
    cancelled = getattr(result, "cancelled", None)  # leases the testbed's reconciler cancelled in the calendar itself
    if cancelled:
        # What Delete does after the calendar (containers, the slice's keys): the backend knows no aggregate.
        aggregate.finish_testbed_cancellations(list(cancelled))
    if task.repairs and getattr(result, "changed", False):
        alert = getattr(result, "alert", None)  # a report that tells its repairs as data (the OAR reconciler's)
        details = alert() if callable(alert) else {"report": str(result)}
        aggregate.alerts.repaired(backend, task.name, details)


def _prune_history(retention: HistoryRetention) -> None:
    counts = retention.prune()
    if counts.total:
        deleted = ", ".join(f"{count} {kind}" for kind, count in counts.rows.items() if count)
        log.info("deleted history older than %d days: %s", retention.history_days, deleted)


def _expire(aggregate: Aggregate) -> None:
    try:
        released = aggregate.bookings.expire_unprovisioned()
        if released:
            log.info("released %d allocation(s) that were not provisioned in time", len(released))
        ended = aggregate.retire_ended()
        if ended:
            log.info("%d lease(s) reached the end of their slot", ended)
    except LeadershipLost:  # another process leads: Leadership says so once and stops leading
        raise
    except Exception:
        log.exception("releasing unprovisioned allocations failed; will try again")


def serve_forever(settings: Settings, checked: bool = False, sockets: Sequence[int] = ()) -> int:
    """Run until interrupted (SIGINT/SIGTERM), then shut down cleanly.

    Raises StartupError (one line: the problem and the fix) when the server cannot start: identity files, trusted
    roots, the database (unreachable or not at the newest migration), an address it cannot listen on. Nothing is
    left running then. ``checked``: the caller ran check_startup already. ``sockets``: the listening sockets
    (aggregate, registry) a workers' master bound, served instead of listening here.
    """
    if not checked:
        check_startup(settings)
    aggregate_fd, registry_fd = sockets if sockets else (None, None)
    open_files = raise_open_file_limit()  # before the listeners: their connection limits follow from it
    aggregate = build_aggregate(settings, upgrade=False)
    running = _listen("aggregate", settings, lambda: start_aggregate(settings, aggregate, listening_fd=aggregate_fd))
    try:
        # The registry records the authority's GIDs and the nodes at start: one process of the cluster at a time
        # (two hosts or two workers starting together would both insert the same records).
        with startup_writes(settings.calendar_url):
            registry = _listen(
                "registry",
                settings,
                lambda: start_registry(
                    settings, aggregate.database, verifier=aggregate.verifier, listening_fd=registry_fd
                ),
            )
    except Exception:  # whatever stopped the start, nothing may be left running (its threads would keep us alive)
        running.abandon()
        raise
    watch_trusted_roots(aggregate.verifier)
    log.info(
        "registry %s serving the SFA Registry API on https://%s:%d/ (open files limit %d: at most %d connections "
        "per listener, %d per address)",
        settings.interface_hrn,
        settings.registry_host,
        registry.getHost().port,
        open_files,
        connection_limit(settings.max_connections),
        settings.max_connections_per_peer,
    )
    log.info(
        "aggregate %s serving AM API v3 on https://%s:%d/ (advertised as %s); trusting %s%s",
        aggregate.settings.urn,
        settings.aggregate_host,
        running.port_number,
        settings.hostname,
        aggregate.verifier.roots.names(),
        f"; {IN_REACTOR_WORDS}" if running.reactor_calls is not None else "",
    )

    stopping: list[bool] = []

    def stop_once() -> None:
        # Twice is possible (a worker hears SIGTERM from its master, and from systemd too without KillMode=mixed).
        if not stopping:
            stopping.append(True)
            reactor.stop()

    def stop(*_: Any) -> None:
        reactor.callFromThread(stop_once)

    # Once running: reactor.run() installs Twisted's own SIGTERM handler, which would replace one set before.
    reactor.callWhenRunning(signal.signal, signal.SIGTERM, stop)
    reactor.addSystemEventTrigger("before", "shutdown", running.stop)
    reactor.callWhenRunning(freeze_start_up_objects)  # issue 15: start-up's objects out of every GC walk
    reactor.callWhenRunning(notify_systemd, "READY=1")
    reactor.run()
    log.info("stopped")
    return 0


T = TypeVar("T")


def _listen(service: str, settings: Settings, start: Callable[[], T]) -> T:
    """Run a start function; an address it cannot listen on becomes a StartupError naming the fix."""
    try:
        return start()
    except CannotListenError as exc:
        host, port = (
            (settings.registry_host, settings.registry_port)
            if service == "registry"
            else (settings.aggregate_host, settings.aggregate_port)
        )
        reason = exc.socketError.strerror if isinstance(exc.socketError, OSError) else str(exc.socketError)
        setting = "[sfa_registry] port" if service == "registry" else "[sfa_aggregate] port"
        raise StartupError(listen_message(service, host, port, (reason or "").lower(), setting)) from exc
