"""Putting the aggregate together from the configuration and serving it: ``sfa-omf serve`` and ``sfa-omf quickstart``.

Only this module and the rest of server/ know Twisted. It builds the synchronous core (database, verifier, calendar,
Aggregate) from Settings, serves AM API v3 over TLS at ``/`` (where clients with no path land; ``/RPC2`` too) and
v2 at ``/am2``, runs the calls in a bounded thread pool, and releases allocations never provisioned, once a minute.

Start-up never lies: what would stop the server is checked first (sfa_omf/preflight.py), the servers listen before
any thread starts, and any failure is a one-line StartupError with nothing left running; once both listen, systemd
hears READY=1. While serving, the trusted-roots directory is watched (and re-read at once on SIGHUP).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from twisted.internet import reactor as _reactor
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
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
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.policy import Policy
from sfa_omf.config import Settings
from sfa_omf.images.store import ImageStore, store_directory
from sfa_omf.notify.notifier import Notifier, NotifySettings, notify_settings
from sfa_omf.preflight import StartupError, check_startup, listen_message
from sfa_omf.registry.accounts import Accounts
from sfa_omf.registry.api import RegistryApi
from sfa_omf.registry.authority import AuthorityError, LocalAuthority
from sfa_omf.registry.nodes import record_nodes
from sfa_omf.registry.records import Records
from sfa_omf.server.agent_http import AgentResource
from sfa_omf.server.tls import ServerTls
from sfa_omf.server.web import WebCalendarResource
from sfa_omf.server.xmlrpc import XmlRpcResource, make_site
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
REQUEST_TIMEOUT_S = 120
NOTIFY_PERIOD_S = 30
#: How often the trusted-roots directory is looked at for roots added or removed (SIGHUP: at once).
ROOTS_CHECK_PERIOD_S = 5
AGENT_FLUSH_S = 5  # heartbeats are written to the database together at most this often


def build_aggregate(settings: Settings, upgrade: bool = True) -> Aggregate:
    """The synchronous core, ready for calls. ``upgrade``: bring the database schema up to date first (quickstart,
    tests); ``serve`` does not, it refuses to start on an old schema (check_startup)."""
    database = Database(settings.calendar_url)
    if upgrade:
        database.upgrade()
    policy = Policy(
        default_grain_s=settings.grain_s,
        min_duration_s=settings.grain_s,
        max_duration_s=settings.max_duration_s,
        max_advance_s=settings.max_advance_s,
        max_nodes_per_request=settings.max_nodes_per_request,
        allocation_ttl_s=settings.allocation_ttl_s,
    )
    verifier = CredentialVerifier(load_trusted_roots(settings.trusted_roots_dir), VerdictCache())
    url = f"https://{settings.hostname}:{settings.aggregate_port}/"
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
        images=ImageStore(database, store_directory(settings.data_dir)),
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
    expiry: LoopingCall
    loops: list[LoopingCall] = field(default_factory=list)  # other periodic tasks (notifications, agents)

    @property
    def port_number(self) -> int:
        return int(self.port.getHost().port)

    def abandon(self) -> None:
        """Stop the threads and loops of a server whose reactor will never run (start-up failed)."""
        for loop in [self.expiry, *self.loops]:
            if loop.running:
                loop.stop()
        self.port.stopListening()
        self.pool.stop()

    def stop(self) -> Any:
        """Stop listening, the expiry loop and the threads (call in the reactor thread)."""
        for loop in [self.expiry, *self.loops]:
            if loop.running:
                loop.stop()
        deferred = self.port.stopListening()

        def stop_pool(result: Any) -> Any:
            self.pool.stop()
            return result

        deferred.addBoth(stop_pool)
        return deferred


def start_aggregate(settings: Settings, aggregate: Aggregate, port: int | None = None) -> RunningServer:
    """Listen for AM API calls over TLS (call in the reactor thread). ``port`` 0 picks a free one (tests).

    Listens first and starts threads only once listening worked: a port that is taken raises CannotListenError and
    leaves no thread behind (a thread pool left running would keep the process alive with nothing listening).
    """
    pool = ThreadPool(minthreads=1, maxthreads=settings.threads, name="sfa-omf-am")
    v3 = XmlRpcResource(ApiV3(aggregate), pool, reactor, settings.max_request_bytes)
    v2 = XmlRpcResource(ApiV2(aggregate), pool, reactor, settings.max_request_bytes)
    routes: dict[bytes, Any] = {b"am2": v2}
    if aggregate.backend.name == "omf":  # omf_sfa's REST inventory, for the testbed's controllers and tools
        from sfa_omf.testbed.omf.rest import inventory_resource

        base_url = f"https://{settings.hostname}:{settings.aggregate_port}"
        routes[b"resources"] = inventory_resource(aggregate, base_url, pool, reactor)
    agents = _agent_api(settings, aggregate)
    if agents is not None:
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
    )
    tls = ServerTls(
        os.path.join(settings.data_dir, "aggregate", "am.pkey"),
        os.path.join(settings.data_dir, "aggregate", "am.gid"),
        # Browsers without a GENI certificate get the calendar's public view; XML-RPC still refuses them.
        require_client_certificate=not settings.web_enabled,
    )
    listening = reactor.listenSSL(
        settings.aggregate_port if port is None else port, site, tls, interface=settings.aggregate_host
    )
    pool.start()
    expiry = LoopingCall(lambda: reactor.callInThread(_expire, aggregate))
    expiry.start(EXPIRY_PERIOD_S, now=True)
    loops = []
    if settings.notify_enabled:
        notifier = build_notifier(settings, aggregate)
        notify_loop = LoopingCall(lambda: reactor.callInThread(_notify, notifier))
        notify_loop.start(NOTIFY_PERIOD_S, now=True)
        loops.append(notify_loop)
    for task in aggregate.backend.background_tasks():
        LoopingCall(lambda task=task: reactor.callInThread(_background, task)).start(task.period_s, now=True)
    if agents is not None:
        # Checked several times per timeout, so a silent node is lost at most a third of the timeout late.
        lost = BackgroundTask("lost node agents", max(1, settings.agent_timeout_s // 3), lambda: _sweep(agents))
        sweep = LoopingCall(lambda: reactor.callInThread(_background, lost))
        sweep.start(lost.period_s, now=False)
        loops.append(sweep)
        heard = BackgroundTask("heartbeats", min(AGENT_FLUSH_S, settings.agent_heartbeat_s), agents.flush_heartbeats)
        flush = LoopingCall(lambda: reactor.callInThread(_background, heard))
        flush.start(heard.period_s, now=False)
        loops.append(flush)
    return RunningServer(port=listening, pool=pool, expiry=expiry, loops=loops)


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
        ),
        FileStore(os.path.join(settings.data_dir, "agent_files"), settings.agent_max_file_bytes),
        VpnCa(os.path.join(settings.data_dir, "vpn"), settings.interface_hrn) if settings.agent_vpn_remote else None,
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
    )


def _notify(notifier: Notifier) -> None:
    try:
        notifier.notice()
        notifier.deliver()
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
        ),
        clock=aggregate.clock,
    )
    return WebCalendarResource(calendar, pool, reactor)


def start_registry(
    settings: Settings, database: Database, port: int | None = None, verifier: CredentialVerifier | None = None
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
    pool = ThreadPool(minthreads=1, maxthreads=settings.threads, name="sfa-omf-registry")
    endpoint = XmlRpcResource(RegistryApi(authority, records, verifier), pool, reactor, settings.max_request_bytes)
    site = make_site({}, endpoint, max_body_bytes=settings.max_request_bytes, timeout_s=REQUEST_TIMEOUT_S)
    tls = ServerTls(
        LocalAuthority.key_path(settings.data_dir, settings.interface_hrn),
        LocalAuthority.gid_path(settings.data_dir, settings.interface_hrn),
    )
    listening = reactor.listenSSL(
        settings.registry_port if port is None else port, site, tls, interface=settings.registry_host
    )
    pool.start()
    reactor.addSystemEventTrigger("before", "shutdown", pool.stop)
    return listening


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

    LoopingCall(check).start(period_s, now=False)
    if threading.current_thread() is threading.main_thread():  # signals can only be set there (not in tests)
        signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(check))
    return watcher


def notify_systemd(state: str) -> bool:
    """Tell systemd (Type=notify units) our state, e.g. ``READY=1``; False when not started by systemd."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode("utf-8"))
    return True


def _background(task: BackgroundTask) -> None:
    try:
        task.run()
    except Exception as exc:  # a testbed that is down must not stop the next run
        log.warning("%s failed (%s); will try again in %d s", task.name, exc, task.period_s)


def _expire(aggregate: Aggregate) -> None:
    try:
        released = aggregate.bookings.expire_unprovisioned()
        if released:
            log.info("released %d allocation(s) that were not provisioned in time", len(released))
        ended = aggregate.retire_ended()
        if ended:
            log.info("%d lease(s) reached the end of their slot", ended)
    except Exception:
        log.exception("releasing unprovisioned allocations failed; will try again")


def serve_forever(settings: Settings, checked: bool = False) -> int:
    """Run until interrupted (SIGINT/SIGTERM), then shut down cleanly.

    Raises StartupError (one line: the problem and the fix) when the server cannot start: identity files, trusted
    roots, the database (unreachable or not at the newest migration), an address it cannot listen on. Nothing is
    left running then. ``checked``: the caller ran check_startup already.
    """
    if not checked:
        check_startup(settings)
    aggregate = build_aggregate(settings, upgrade=False)
    running = _listen("aggregate", settings, lambda: start_aggregate(settings, aggregate))
    try:
        registry = _listen(
            "registry", settings, lambda: start_registry(settings, aggregate.database, verifier=aggregate.verifier)
        )
    except StartupError:
        running.abandon()
        raise
    watch_trusted_roots(aggregate.verifier)
    log.info(
        "registry %s serving the SFA Registry API on https://%s:%d/",
        settings.interface_hrn,
        settings.registry_host,
        registry.getHost().port,
    )
    log.info(
        "aggregate %s serving AM API v3 on https://%s:%d/ (advertised as %s); trusting %s",
        aggregate.settings.urn,
        settings.aggregate_host,
        running.port_number,
        settings.hostname,
        aggregate.verifier.roots.names(),
    )

    def stop(*_: Any) -> None:
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, stop)
    reactor.addSystemEventTrigger("before", "shutdown", running.stop)
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
