"""The settings every host of a PostgreSQL cluster must agree on, compared across hosts, and disagreement said loudly.

Several hosts (``sfa-omf serve`` processes) on one database each read their own configuration file. Some settings
change the answers of calls (a request accepted by one host and refused by another, one sliver's login named
differently) or the cluster's background work, which the one leader runs with its own values (history deleted after
its history_days, notifications queued or not, its takeover time): those must be the same everywhere
(``AGREED_FIELDS`` and the derived values of ``agreed_values``). Per-host things (ports, addresses, threads, workers,
logging, paths, secrets) are not compared.

Each serving process writes its values (JSON) with its host name and pid into table ``cluster_settings`` at start
(``SettingsAgreement.announce``), refreshes the row's time every ``REFRESH_S`` (``refresh``) and deletes it when it
stops (``withdraw``). A row not refreshed for ``STALE_S`` is a dead process's (killed, its host gone): ignored and
deleted, so that a configuration fixed and restarted stops being warned of. Times are the database's clock, so a host
whose clock is off is not taken for dead. The row also records the host's clock minus the database's, measured at
each write (``clock_offset_s``): the other hosts compare their clocks with it (``peer_clocks``, cluster/clock.py).
At start, and whenever a new disagreement appears, each differing setting is logged as a WARNING (this host's value,
the other host's value and name); the process that becomes leader logs the differences as an ERROR at each leadership
gain (it does not refuse the lead: a cluster without a leader would not retire leases at all). ``sfa-omf config
check`` reports the same (``live_disagreements``). SQLite: one host, nothing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, delete, insert, select, text, update

from sfa_omf.calendar.fence import fence_term
from sfa_omf.calendar.models import ClusterSettings
from sfa_omf.cluster.clock import DATABASE_CLOCK_SQL, PeerClock, read_database_clock
from sfa_omf.config import OPTIONS, Settings
from sfa_omf.trust.roots import TrustedRoots, load_trusted_roots

log = logging.getLogger("sfa_omf.cluster")

#: How often a serving process refreshes its row (and looks for new disagreements).
REFRESH_S = 60
#: A row not refreshed for this long is a dead process's: five refreshes missed (a loaded host may be late by some).
STALE_S = 5 * REFRESH_S

#: Settings compared as they are: each changes answers of calls or the background work the leader does for everyone.
AGREED_FIELDS: tuple[str, ...] = (
    "interface_hrn",
    "aggregate_type",
    "max_slice_renew_days",
    "grain_s",
    "default_duration_s",
    "allocation_ttl_s",
    "max_duration_s",
    "max_advance_s",
    "max_nodes_per_request",
    "max_leases_per_request",
    # Fair use: a user refused on one host would book the same on another.
    "max_hours_per_day_per_user",
    "max_concurrent_leases_per_slice",
    "max_node_hours_ahead_per_user",
    "horizon_days",
    "free_windows",
    "history_days",
    "leader_takeover_s",
    "account_policy",
    "shared_login",
    "web_enabled",
    "notify_enabled",
    "notify_lead_s",
    "notify_email_by_default",
    "provisioning_mode",
    "instance_network",
    "max_instances_per_node",
    "max_saved_images",
    "max_saved_image_bytes",
    "agent_heartbeat_s",
    "agent_timeout_s",
    "agent_stage_out_grace_s",
    "agent_dns_zone",
)
#: Labels of the derived values (the others are named as in the configuration file).
DERIVED_LABELS: dict[str, str] = {
    "web_admins": "[sfa_web] admins",
    "notify_operators": "[sfa_notify] operators",
    "notify_webhook_key": "[sfa_notify] webhook_key (a digest)",
    "instance_bridge_set": "[sfa_omf] instance_bridge set",
    "agent_vpn": "[sfa_agents] vpn_remote set (VPN for nodes)",
    "oar_zone": "[sfa_oar] timezone as resolved (empty: the host's own zone)",
    "oar_job_type": "[sfa_oar] job_type",
    "frcp_cm_factory_set": "[sfa_frcp] cm_factory set (nodes powered at slot boundaries)",
    "frcp_controllers": "[sfa_frcp] controllers",
    "trusted_roots": "trusted roots (digest of their certificates)",
}
_INI_NAMES = {option.field: option.ini_name for option in OPTIONS}


def label(key: str) -> str:
    """How a compared value is named in messages: ``[section] key`` as in the configuration file."""
    return DERIVED_LABELS.get(key) or _INI_NAMES.get(key, key)


def resolved_zone_name(name: str) -> str:
    """The OAR server's time zone as this host resolves ``[sfa_oar] timezone`` (testbed/oar/client.py server_zone):
    the IANA name given, else this host's own zone by name ($TZ, then /etc/localtime's target), else its UTC offsets
    in January and July (which tell two zones apart where it matters for OAR's reservation times)."""
    from sfa_omf.testbed.oar.client import server_zone  # the OAR client's own rule

    try:
        zone = server_zone(name or None)
    except ValueError:
        return f"unknown zone {name!r}"
    key = getattr(zone, "key", None) if isinstance(zone, ZoneInfo) else str(zone)
    if key and key != "localtime":
        return str(key)
    target = os.path.realpath("/etc/localtime")
    if "zoneinfo/" in target:
        return target.split("zoneinfo/", 1)[1]
    from datetime import UTC, datetime

    year = datetime.now(UTC).year
    offsets = [zone.utcoffset(datetime(year, month, 1)) for month in (1, 7)]
    return "local zone, UTC offsets " + " / ".join(str(offset) for offset in offsets)


@functools.lru_cache(maxsize=8)  # slow on purpose (0.1 s): once per key, not at every refresh
def _secret_digest(secret: str, salt: str) -> str:
    """A digest that tells whether two hosts hold the same secret without helping anyone who reads the database to
    find it: slow (PBKDF2, many rounds) and cut short (48 bits: a guess that matches is one of very many)."""
    if not secret:
        return ""
    derived = hashlib.pbkdf2_hmac("sha256", secret.encode(), b"sfa-omf settings agreement\0" + salt.encode(), 200_000)
    return derived.hex()[:12]


def _address_list(text_value: str) -> list[str]:
    return sorted(part for part in text_value.replace(",", " ").split() if part)


def agreed_values(settings: Settings, roots: TrustedRoots | None = None) -> dict[str, Any]:
    """This host's values of what every host must agree on (JSON-ready). ``roots``: the trusted roots in use (default:
    read from the trusted-roots directory; unreadable: said as such)."""
    values: dict[str, Any] = {name: getattr(settings, name) for name in AGREED_FIELDS}
    values["web_admins"] = sorted(settings.web_admin_urns)
    values["notify_operators"] = _address_list(settings.notify_operators)
    # Each webhook subscription's signing secret derives from it: hosts with different keys show users secrets that
    # the leader's deliveries do not sign with.
    values["notify_webhook_key"] = _secret_digest(settings.notify_webhook_key, settings.interface_hrn)
    values["instance_bridge_set"] = bool(settings.instance_bridge)
    values["agent_vpn"] = bool(settings.agent_vpn_remote)
    if settings.aggregate_type == "oar":
        values["oar_zone"] = resolved_zone_name(settings.oar_timezone)
        values["oar_job_type"] = settings.oar_job_type
    if settings.aggregate_type == "omf":
        values["frcp_cm_factory_set"] = bool(settings.frcp_cm_factory)
        values["frcp_controllers"] = sorted(settings.frcp_controller_urns)
    if roots is None:
        try:
            roots = load_trusted_roots(settings.trusted_roots_dir)
        except Exception as exc:  # a root file that cannot be read: start-up says so; here it is one more value
            values["trusted_roots"] = f"unreadable ({getattr(exc, 'message', exc)})"
    if roots is not None:
        values["trusted_roots"] = f"{roots.fingerprint[:16]} ({roots.names()})"
    return values


@dataclass(frozen=True)
class Disagreement:
    """One setting whose value here differs from another host's (``processes``: that host's processes, host:pid)."""

    key: str
    ours: Any
    theirs: Any
    host: str
    processes: tuple[str, ...]

    def __str__(self) -> str:
        return (
            f"{label(self.key)} is {json.dumps(self.ours)} here but {json.dumps(self.theirs)} on host {self.host} "
            f"(process {', '.join(self.processes)})"
        )


@dataclass(frozen=True)
class ProcessRow:
    """What another serving process runs with (a row of cluster_settings)."""

    process: str
    host: str
    values: Mapping[str, Any]


def compare(ours: Mapping[str, Any], others: Sequence[ProcessRow]) -> list[Disagreement]:
    """Each setting whose value differs between ``ours`` and another process's, one per host and setting (the
    workers of one host run one configuration: said once). A setting one side does not know (another version of
    sfa-omf) is not compared."""
    groups: dict[tuple[str, str], list[ProcessRow]] = {}
    for row in others:
        groups.setdefault((row.host, json.dumps(row.values, sort_keys=True)), []).append(row)
    found: list[Disagreement] = []
    for (host, _), rows in sorted(groups.items()):
        theirs = rows[0].values
        processes = tuple(sorted(row.process for row in rows))
        for key in sorted(ours):
            if key in theirs and theirs[key] != ours[key]:
                found.append(Disagreement(key, ours[key], theirs[key], host, processes))
    return found


def _database_now(connection: Any) -> int:
    # The database's clock for every row: a host whose own clock is off is neither taken for dead nor kept alive.
    return int(read_database_clock(connection)[0])


def _live_rows(connection: Any, now: int, but: str = "") -> list[ProcessRow]:
    table = ClusterSettings
    rows = connection.execute(
        select(table.process, table.host, table.settings).where(table.seen_s >= now - STALE_S, table.process != but)
    ).all()
    found = []
    for process, host, settings in rows:
        try:
            values = json.loads(settings)
        except ValueError:
            continue  # not ours to read: nothing to compare
        if isinstance(values, dict):
            found.append(ProcessRow(process, host, values))
    return found


class SettingsAgreement:
    """This process's row in cluster_settings and its comparisons with the other live processes' (PostgreSQL)."""

    def __init__(
        self,
        engine: Engine,
        values: Mapping[str, Any],
        host: str | None = None,
        pid: int | None = None,
        values_now: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        """``values_now``: this process's values at each refresh (the trusted roots may be reloaded meanwhile)."""
        self.engine = engine
        self.values = dict(values)
        self.host = host if host is not None else socket.gethostname()
        self.pid = pid if pid is not None else os.getpid()
        self.process = f"{self.host}:{self.pid}"
        self._values_now = values_now
        self._warned: set[tuple[str, str, str]] = set()  # (host, key, their value) already warned of
        self._led_term: object = object()  # the leadership term of the last leader check (none yet)
        self._errored: set[tuple[str, str, str]] = set()  # logged as an ERROR in that term

    def _write(self) -> list[ProcessRow]:
        """Write (or rewrite) this process's row (with its host's clock offset), delete dead processes' rows, and read
        the live others'."""
        table = ClusterSettings
        with self.engine.begin() as connection:
            # The database's time, which stamps the row, is also the measure of this host's clock (one statement).
            database_epoch, offset_s = read_database_clock(connection)
            now = int(database_epoch)
            connection.execute(delete(table).where(table.seen_s < now - STALE_S))
            updated = connection.execute(
                update(table)
                .where(table.process == self.process)
                .values(seen_s=now, settings=json.dumps(self.values, sort_keys=True), clock_offset_s=offset_s)
            ).rowcount
            if not updated:  # (another process deleted it, taking it for dead: this one was stopped that long)
                connection.execute(
                    insert(table).values(
                        process=self.process,
                        host=self.host[:255],
                        pid=self.pid,
                        started_s=now,
                        seen_s=now,
                        settings=json.dumps(self.values, sort_keys=True),
                        clock_offset_s=offset_s,
                    )
                )
            return _live_rows(connection, now, but=self.process)

    def announce(self) -> list[Disagreement]:
        """At start: write this process's row (a previous process of the same host and pid's is replaced) and warn
        of each setting another live host runs with a different value. Returns the disagreements."""
        table = ClusterSettings
        with self.engine.begin() as connection:
            connection.execute(delete(table).where(table.process == self.process))
        return self._warn(compare(self.values, self._write()))

    def refresh(self) -> list[Disagreement]:
        """Periodically: this row's time (and values) refreshed; disagreements not warned of yet are. Returns all."""
        if self._values_now is not None:
            self.values = dict(self._values_now())
        return self._warn(compare(self.values, self._write()))

    def withdraw(self) -> None:
        """At a stop: this process's row goes (the others compare with live processes only)."""
        table = ClusterSettings
        with self.engine.begin() as connection:
            connection.execute(delete(table).where(table.process == self.process))

    def disagreements(self) -> list[Disagreement]:
        """The live other processes' differences from this one (reads only)."""
        with self.engine.connect() as connection:
            return compare(self.values, _live_rows(connection, _database_now(connection), but=self.process))

    def leader_check(self) -> list[Disagreement]:
        """On the leader, at each leadership gain (a leader's periodic task that starts at once): the settings other
        live hosts run with otherwise are logged as an ERROR, since the cluster's background work now follows this
        host's values; later runs in the same term log only new differences. Returns the disagreements."""
        found = self.disagreements()
        term = fence_term()
        if term != self._led_term:
            self._led_term = term
            self._errored.clear()
        new = [item for item in found if _seen_key(item) not in self._errored]
        if new:
            self._errored.update(_seen_key(item) for item in new)
            log.error(
                "this process (%s) leads the background tasks with settings other live hosts do not share: %s; the "
                "cluster's background work (history retention, notifications, expiry, takeover time) follows this "
                "host's values: make the configurations agree (docs/operators.md)",
                self.process,
                "; ".join(str(item) for item in new),
            )
        return found

    def _warn(self, found: list[Disagreement]) -> list[Disagreement]:
        for item in found:
            if _seen_key(item) not in self._warned:
                self._warned.add(_seen_key(item))
                log.warning(
                    "settings differ between hosts of this cluster: %s; every host must run with the same value "
                    "(docs/operators.md)",
                    item,
                )
        # A difference fixed since may come back: warned of again then.
        self._warned &= {_seen_key(item) for item in found}
        return found


def _seen_key(item: Disagreement) -> tuple[str, str, str]:
    return (item.host, item.key, json.dumps(item.theirs, sort_keys=True))


def peer_clocks(connection: Any, but: str = "", table_known: bool = False) -> list[PeerClock]:
    """The clock offsets (host minus database) the live serving processes other than ``but`` (host:pid) recorded at
    their last write, on ``connection`` (PostgreSQL), in one statement. Unless ``table_known``, [] when the calendar
    has no cluster_settings table yet (an older migration: the schema check says so)."""
    if not table_known and not connection.execute(text("SELECT to_regclass('cluster_settings') IS NOT NULL")).scalar():
        return []
    table = ClusterSettings
    rows = connection.execute(
        select(table.process, table.host, table.clock_offset_s, table.seen_s).where(
            table.seen_s >= text(f"{DATABASE_CLOCK_SQL} - {STALE_S}"),
            table.process != but,
            table.clock_offset_s.is_not(None),
        )
    ).all()
    return [PeerClock(process, host, float(offset_s), int(seen_s)) for process, host, offset_s, seen_s in rows]


def live_disagreements(settings: Settings, connect_timeout_s: int = 5) -> list[Disagreement]:
    """For ``config check``: ``settings`` (as this host resolves them) compared with every live serving process's on
    the PostgreSQL database (this host's own serving processes included: a file edited since they started differs).
    Reads only; [] on SQLite, and when the database cannot be read (the other checks say why)."""
    url = settings.calendar_url
    if url.startswith("sqlite"):
        return []
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": connect_timeout_s})
    try:
        with engine.connect() as connection:
            rows = _live_rows(connection, _database_now(connection))
    except SQLAlchemyError:
        return []
    finally:
        engine.dispose()
    return compare(agreed_values(settings), rows)
