"""Putting the aggregate together from the configuration and serving it: ``sfa-omf serve`` and ``sfa-omf quickstart``.

Only this module and the rest of server/ know Twisted. It builds the synchronous core (database, verifier, calendar,
Aggregate) from Settings, serves AM API v3 over TLS at ``/`` (where clients with no path land; ``/RPC2`` too) and
v2 at ``/am2``, runs the calls in a bounded thread pool, and releases allocations never provisioned, once a minute.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from twisted.internet import reactor as _reactor
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
from sfa_omf.calendar.policy import Policy
from sfa_omf.config import Settings
from sfa_omf.registry.accounts import Accounts
from sfa_omf.registry.api import RegistryApi
from sfa_omf.registry.authority import AuthorityError, LocalAuthority
from sfa_omf.registry.records import Records
from sfa_omf.server.agent_http import AgentResource
from sfa_omf.server.tls import ServerTls
from sfa_omf.server.xmlrpc import XmlRpcResource, make_site
from sfa_omf.testbed.base import BackgroundTask
from sfa_omf.testbed.registry import load_backend
from sfa_omf.testbed.unix_accounts import UnixAccounts
from sfa_omf.trust.gid import load_gid_chain_file
from sfa_omf.trust.pki import load_private_key_file
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache

log = logging.getLogger("sfa_omf.server")
reactor: Any = _reactor
EXPIRY_PERIOD_S = 60
REQUEST_TIMEOUT_S = 120
AGENT_FLUSH_S = 5  # heartbeats are written to the database together at most this often


def build_aggregate(settings: Settings) -> Aggregate:
    """The synchronous core, ready for calls (the database schema is brought up to date)."""
    database = Database(settings.calendar_url)
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
    agent_sweep: LoopingCall | None = None
    agent_flush: LoopingCall | None = None

    @property
    def port_number(self) -> int:
        return int(self.port.getHost().port)

    def stop(self) -> Any:
        """Stop listening, the expiry loop and the threads (call in the reactor thread)."""
        for loop in (self.expiry, self.agent_sweep, self.agent_flush):
            if loop is not None and loop.running:
                loop.stop()
        deferred = self.port.stopListening()

        def stop_pool(result: Any) -> Any:
            self.pool.stop()
            return result

        deferred.addBoth(stop_pool)
        return deferred


def start_aggregate(settings: Settings, aggregate: Aggregate, port: int | None = None) -> RunningServer:
    """Listen for AM API calls over TLS (call in the reactor thread). ``port`` 0 picks a free one (tests)."""
    pool = ThreadPool(minthreads=1, maxthreads=settings.threads, name="sfa-omf-am")
    pool.start()
    v3 = XmlRpcResource(ApiV3(aggregate), pool, reactor, settings.max_request_bytes)
    v2 = XmlRpcResource(ApiV2(aggregate), pool, reactor, settings.max_request_bytes)
    routes: dict[bytes, Any] = {b"am2": v2}
    agents = _agent_api(settings, aggregate)
    if agents is not None:
        routes[b"agents"] = AgentResource(
            agents, pool, reactor, settings.agent_max_body_bytes, settings.agent_max_file_bytes
        )
    site = make_site(routes, v3, max_body_bytes=settings.max_request_bytes, timeout_s=REQUEST_TIMEOUT_S)
    tls = ServerTls(
        os.path.join(settings.data_dir, "aggregate", "am.pkey"), os.path.join(settings.data_dir, "aggregate", "am.gid")
    )
    listening = reactor.listenSSL(
        settings.aggregate_port if port is None else port, site, tls, interface=settings.aggregate_host
    )
    expiry = LoopingCall(lambda: reactor.callInThread(_expire, aggregate))
    expiry.start(EXPIRY_PERIOD_S, now=True)
    for task in aggregate.backend.background_tasks():
        LoopingCall(lambda task=task: reactor.callInThread(_background, task)).start(task.period_s, now=True)
    sweep = flush = None
    if agents is not None:
        # Checked several times per timeout, so a silent node is lost at most a third of the timeout late.
        lost = BackgroundTask("lost node agents", max(1, settings.agent_timeout_s // 3), lambda: _sweep(agents))
        sweep = LoopingCall(lambda: reactor.callInThread(_background, lost))
        sweep.start(lost.period_s, now=False)
        heard = BackgroundTask("heartbeats", min(AGENT_FLUSH_S, settings.agent_heartbeat_s), agents.flush_heartbeats)
        flush = LoopingCall(lambda: reactor.callInThread(_background, heard))
        flush.start(heard.period_s, now=False)
    return RunningServer(port=listening, pool=pool, expiry=expiry, agent_sweep=sweep, agent_flush=flush)


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
    )


def _sweep(service: AgentService) -> None:
    lost = service.sweep_lost()
    if lost:
        log.warning("node agent(s) lost contact, their nodes leave service: %s", ", ".join(lost))


def start_registry(settings: Settings, database: Database, port: int | None = None) -> Any:
    """Serve the local authority's SFA Registry API over TLS with the authority's own key (call in the reactor
    thread). The authority's issued GIDs are recorded first (idempotent)."""
    authority = LocalAuthority.load(settings.data_dir, settings.interface_hrn)
    records = Records(database)
    records.import_authority(authority)
    verifier = CredentialVerifier(load_trusted_roots(settings.trusted_roots_dir), VerdictCache())
    pool = ThreadPool(minthreads=1, maxthreads=settings.threads, name="sfa-omf-registry")
    pool.start()
    endpoint = XmlRpcResource(RegistryApi(authority, records, verifier), pool, reactor, settings.max_request_bytes)
    site = make_site({}, endpoint, max_body_bytes=settings.max_request_bytes, timeout_s=REQUEST_TIMEOUT_S)
    tls = ServerTls(
        LocalAuthority.key_path(settings.data_dir, settings.interface_hrn),
        LocalAuthority.gid_path(settings.data_dir, settings.interface_hrn),
    )
    listening = reactor.listenSSL(
        settings.registry_port if port is None else port, site, tls, interface=settings.registry_host
    )
    reactor.addSystemEventTrigger("before", "shutdown", pool.stop)
    return listening


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


def serve_forever(settings: Settings) -> int:
    """Run until interrupted (SIGINT/SIGTERM), then shut down cleanly."""
    aggregate = build_aggregate(settings)
    running = start_aggregate(settings, aggregate)
    registry = start_registry(settings, aggregate.database)
    log.info(
        "registry %s serving the SFA Registry API on https://%s:%d/",
        settings.interface_hrn,
        settings.registry_host,
        registry.getHost().port,
    )
    log.info(
        "aggregate %s serving AM API v3 on https://%s:%d/",
        aggregate.settings.urn,
        settings.aggregate_host,
        running.port_number,
    )

    def stop(*_: Any) -> None:
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, stop)
    reactor.addSystemEventTrigger("before", "shutdown", running.stop)
    reactor.run()
    log.info("stopped")
    return 0
