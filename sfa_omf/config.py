"""sfa-omf's configuration, in the two forms of SFA's /etc/sfa/sfa_config, with environment overrides.

An operator who ran SFA recognises the names: ``[sfa] interface_hrn, data_dir``, ``[sfa_registry] host, port``,
``[sfa_aggregate] host, port, type``, ``[sfa_db] host, port, user, password, name``. sfa-omf's own settings live in
``[sfa_omf]``. The same file may be written in SFA's shell form, one ``NAME=value`` a line: the shell name of
``[section] key`` is ``SECTION_KEY`` upper-cased (``[sfa_aggregate] port`` is ``SFA_AGGREGATE_PORT``). The form is
detected from the first line that is not a comment: ``[section]`` means INI.

Precedence: defaults < the file < ``SFA_*`` environment variables. ``load_config`` tells, for every setting, where its
value came from, and lists the problems it found (it never raises for them); ``read_config`` returns the settings and
raises ValueError only for problems that leave no usable value. docs/configuration.md describes every setting.
"""

from __future__ import annotations

import configparser
import difflib
import ipaddress
import os
import re
import shlex
import urllib.parse
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from importlib.metadata import entry_points
from typing import Any

from sfa_omf.errors import BadArgs, GeniError
from sfa_omf.images.provisioning import PROVISIONING_MODES
from sfa_omf.xrn import authority_hrn_problem, split_hrn

# SQLAlchemy and the account rules are imported where they are used: reading the configuration must stay light
# (``sfa-omf --help`` and the trust commands do not need a database layer).

CONFIG_FILE_NAME = "sfa-omf.conf"
DEFAULT_AUTHORITY = "testbed"  # the authority of `sfa-omf init` and `quickstart` when none is named
DEFAULT_HOST = "127.0.0.1"
DEFAULT_REGISTRY_PORT = 12345  # SFA's registry port
DEFAULT_AGGREGATE_PORT = 12346  # SFA's aggregate port
DEFAULT_DB_PORT = 5432  # SFA's database port (PostgreSQL's)
SMTPS_PORT = 465  # SMTP over TLS from the first byte (RFC 8314): [sfa_notify] smtp_port's default with smtp_tls
DAY_S = 24 * 3600

#: Testbed backends sfa-omf ships; others register a Python entry point in TESTBED_ENTRY_POINT_GROUP.
BUILTIN_TESTBED_TYPES = ("embedded", "omf", "oar")
TESTBED_ENTRY_POINT_GROUP = "sfa_omf.testbeds"
#: noop: the nodes run nothing (the reservation is the booking); deploy: OAR installs the lease's disk image.
OAR_JOB_TYPES = ("noop", "deploy")

#: Environment variables that start like settings but are not settings (the file's path, script knobs); and every
#: SFA_OMF_TEST_* / SFA_OMF_BENCH_* variable, which the test and benchmark scripts set.
OTHER_ENVIRONMENT = frozenset(
    {"SFA_OMF_CONFIG", "SFA_OMF_VENV", "SFA_OMF_VECTORS", "SFA_OMF_RABBITMQ_PORT", "SFA_OMF_REINSTALL"}
)
OTHER_ENVIRONMENT_PREFIXES = ("SFA_OMF_TEST_", "SFA_OMF_BENCH_")


@dataclass(frozen=True)
class Settings:
    """Everything sfa-omf reads from its configuration; docs/configuration.md explains each field.

    ``hostname`` left empty becomes the aggregate host (filled in at construction, so ``dataclasses.replace`` of
    ``aggregate_host`` alone keeps the old hostname).
    """

    interface_hrn: str
    data_dir: str
    registry_host: str = DEFAULT_HOST
    registry_port: int = DEFAULT_REGISTRY_PORT
    # Days ahead a slice's researchers may renew it with its slice credential (registry Update; SFA's
    # SFA_MAX_SLICE_RENEW, days too): registry/api.py MAX_SLICE_RENEW, a slice credential's lifetime.
    max_slice_renew_days: int = 30
    aggregate_host: str = DEFAULT_HOST
    aggregate_port: int = DEFAULT_AGGREGATE_PORT
    aggregate_type: str = "embedded"
    backend_concurrency: int = 0  # testbed operations at once; 0 (auto): threads - 2, at least 1 (testbed/gate.py)
    backend_cooldown_s: int = 15  # a testbed that timed out or is unreachable is left alone this long, then doubling
    database_url: str = ""  # empty: [sfa_db] when it names a database, else the embedded SQLite in data_dir
    db_host: str = ""
    db_port: int = DEFAULT_DB_PORT
    db_user: str = ""
    db_password: str = field(default="", repr=False)
    db_name: str = ""
    trusted_roots: str = ""  # empty: data_dir/trusted_roots
    hostname: str = ""  # empty: the aggregate host
    grain_s: int = 1800
    default_duration_s: int = 3600
    allocation_ttl_s: int = 600
    max_duration_s: int = 7 * DAY_S
    max_advance_s: int = 90 * DAY_S
    max_nodes_per_request: int = 1000
    max_leases_per_request: int = 2000  # node x window pairs one request may book (bounds one Provision's work)
    # Fair use (0: no limit, the default): calendar/policy.py Policy, enforced on bookings and on renewals.
    max_hours_per_day_per_user: int = 0  # node-hours one user may book on one UTC day
    max_concurrent_leases_per_slice: int = 0  # leases one slice may hold at the same moment
    max_node_hours_ahead_per_user: int = 0  # node-hours of not yet ended leases one user may hold, all slices
    horizon_days: int = 14
    free_windows: int = 10
    # Days finished leases (and slices with none left) are kept after their end; 0: for ever (calendar/retention.py)
    history_days: int = 365
    max_request_bytes: int = 4 * 1024 * 1024
    threads: int = 8
    # PostgreSQL: Allocate, Delete and Status answered in the reactor thread, their statements awaited there
    # (server/reactor_calls.py); off: on the call threads as every other call. No effect on SQLite.
    calls_in_reactor: bool = True
    max_connections: int = 2048  # connections open at once on each listener (at most what the fd limit allows)
    max_connections_per_peer: int = 64  # connections open at once from one address, on each listener
    workers: int = 0  # serving processes; 0 (auto): the number of cores on PostgreSQL, 1 on SQLite
    leader_takeover_s: int = 15  # a standby takes the background tasks over this soon after the leader dies
    database_timeout_s: int = 30  # longest run of a serving process's statement on PostgreSQL, lock waits included
    log_file: str = ""  # empty: standard error (the journal, under systemd)
    log_level: str = "INFO"  # DEBUG, INFO, WARNING or ERROR
    account_policy: str = "per-user"  # per-user, per-slice or shared (sfa_omf/registry/accounts.py)
    shared_login: str = "federation"
    create_accounts: bool = False  # create Unix accounts (with the users' SSH keys) for mapped logins
    oar_api_url: str = "http://127.0.0.1:6668/oarapi"
    oar_timezone: str = ""  # empty: this host's local zone (OAR reads reservation times in its server's zone)
    oar_job_type: str = "noop"
    oar_deploy_command: str = "/usr/local/sbin/sfa-omf-deploy"
    oar_container_command: str = "/usr/local/sbin/sfa-omf-lease-containers"  # on the nodes, through sudo
    oar_timeout_s: int = 30
    oar_cache_s: int = 30
    oar_reconcile_s: int = 300
    frcp_amqp_url: str = field(default="", repr=False)  # empty: no user_factory (the operator manages accounts)
    frcp_user_factory: str = "user_factory"
    frcp_timeout_s: int = 30
    frcp_account: str = "root"
    frcp_cm_factory: str = "cm_factory"  # empty: nodes are not powered (nor images loaded) at slot boundaries
    frcp_frisbee_factory: str = "frisbee_factory"
    frcp_boot_timeout_s: int = 600
    # An error about a node that may be cm_factory refusing someone else's request waits this long for our success.
    frcp_foreign_error_grace_s: int = 5
    frcp_slot_period_s: int = 15
    frcp_controllers: str = ""  # certificate URNs (space or comma separated) of the controllers: they read every lease
    web_enabled: bool = True  # the web calendar and iCal feeds under /calendar on the aggregate's server
    web_admins: str = ""  # user URNs (space or comma separated) who see every booking and node state
    notify_enabled: bool = False  # notice lease events and deliver them (sfa_omf/notify)
    notify_smtp_host: str = "127.0.0.1"
    notify_smtp_port: int = 25
    notify_smtp_starttls: bool = False
    notify_smtp_tls: bool = False  # TLS from the first byte (SMTPS, port 465) instead of STARTTLS
    notify_smtp_user: str = ""
    notify_smtp_password: str = field(default="", repr=False)
    notify_from: str = "sfa-omf@localhost"
    notify_webhook_key: str = field(default="", repr=False)
    notify_lead_s: int = 900
    notify_operators: str = ""  # e-mail addresses / webhook URLs (space or comma separated) for operators' events
    notify_email_by_default: bool = True  # lease e-mails to the address on record unless the user opted out
    notify_webhook_timeout_s: int = 10  # a webhook's whole exchange ends by this
    notify_webhook_origin_budget_s: int = 10  # a delivery round waits this long on one webhook origin at most
    image_group: str = "sfa-omf-images"  # Unix group whose members may change the image repository
    provisioning_mode: str = "ondemand"  # perjob or ondemand (sfa_omf/images/provisioning.py)
    instance_bridge: str = ""  # containers inside bookings attach here (scripts/lxc.sh up); empty: no containers
    instance_network: str = "10.217.0.0/24"  # their addresses (the first host address is the bridge's own)
    instance_lxc_path: str = "/var/lib/lxc"  # where LXC keeps them
    max_instances_per_node: int = 16  # containers one sliver may ask for
    instance_action_timeout_s: int = 60  # OAR: how long an operational action on containers waits for the node
    max_saved_images: int = 10  # images one user saved from containers that are still private (published: not counted)
    max_saved_image_bytes: int = 10 * 1024**3  # their bytes together
    image_min_free_bytes: int = 1024**3  # a save that would leave less free on the image store's filesystem is refused
    plan_signing_key: str = ""  # OAR: the key signing lease plans and actions (empty: data_dir/plan-signing.key)
    agent_heartbeat_s: int = 30  # how often node agents report (sfa_omf/agents)
    agent_timeout_s: int = 120  # an agent silent this long is lost: its node leaves service
    agent_max_body_bytes: int = 64 * 1024
    agent_max_file_bytes: int = 1024 * 1024  # a staged file (its own limit: may exceed max_request_bytes)
    agent_stage_out_grace_s: int = 3600  # a lease's files are taken from its start until this long after its end
    agent_max_stage_out_files: int = 1000  # files staged out for one lease from one node
    agent_max_stage_out_bytes: int = 1024**3  # their bytes together
    agent_min_free_bytes: int = 1024**3  # a stage-out that would leave less free in the data directory is refused
    agent_vpn_remote: str = ""  # empty: no VPN for nodes; else the address agents reach OpenVPN at
    agent_vpn_port: int = 1194
    agent_dns_zone: str = ""  # empty: no DNS names for nodes; else the zone (bind9 views, sfa_omf/agents/dns.py)
    agent_dns_reload: str = "rndc reload"

    def __post_init__(self) -> None:
        if not self.hostname:
            object.__setattr__(self, "hostname", self.aggregate_host)

    @property
    def uses_sfa_db(self) -> bool:
        """True when the calendar lives in the PostgreSQL database named by ``[sfa_db]``."""
        return not self.database_url and bool(self.db_host or self.db_name)

    @property
    def calendar_url(self) -> str:
        if self.database_url:
            return self.database_url
        if self.uses_sfa_db:
            from sqlalchemy.engine import URL

            url = URL.create(
                "postgresql+psycopg",
                username=self.db_user or None,
                password=self.db_password or None,
                host=self.db_host or None,
                port=self.db_port,
                database=self.db_name or None,
            )
            return url.render_as_string(hide_password=False)
        return f"sqlite:///{os.path.join(os.path.abspath(self.data_dir), 'sfa-omf.sqlite')}"

    @property
    def plan_signing_key_path(self) -> str:
        """The Ed25519 key that signs lease plans and actions for the nodes (sfa_omf/images/plan_signing.py)."""
        return self.plan_signing_key or os.path.join(self.data_dir, "plan-signing.key")

    @property
    def trusted_roots_dir(self) -> str:
        return self.trusted_roots or os.path.join(self.data_dir, "trusted_roots")

    @property
    def registry_url(self) -> str:
        """The registry's URL for sfi_config: the advertised hostname (not the listening address, which may be
        0.0.0.0). sfi.py wants http:// here and speaks TLS anyway (it mangles https:// URLs)."""
        return f"http://{url_host(self.hostname)}:{self.registry_port}/"

    @property
    def web_admin_urns(self) -> frozenset[str]:
        """The operators of the web calendar (``[sfa_web] admins``, separated by spaces or commas)."""
        return frozenset(part for part in self.web_admins.replace(",", " ").split() if part)

    @property
    def frcp_controller_urns(self) -> frozenset[str]:
        """The certificates (URNs) of the testbed's controllers, which read every lease of the REST inventory
        (``[sfa_frcp] controllers``, separated by spaces or commas)."""
        return frozenset(part for part in self.frcp_controllers.replace(",", " ").split() if part)

    @property
    def notify_operator_addresses(self) -> tuple[str, ...]:
        """Where operators' events go besides the admins' own subscriptions (``[sfa_notify] operators``)."""
        return tuple(part for part in self.notify_operators.replace(",", " ").split() if part)

    @property
    def aggregate_url(self) -> str:
        """The aggregate's URL for sfi_config (see registry_url)."""
        return f"http://{url_host(self.hostname)}:{self.aggregate_port}/"

    def https_url(self, port: int, host: str = "") -> str:
        """https://HOST:PORT (no final slash) for the advertised hostname, or for ``host``: an IPv6 address in
        brackets, as URLs must write it (``https://2001:db8::1:12346`` names no port)."""
        return f"https://{url_host(host or self.hostname)}:{port}"


@dataclass(frozen=True)
class Option:
    """One setting: the Settings field, its INI section and key, the kind of value, and what it means."""

    field: str
    section: str
    key: str
    kind: str  # "text", "port" (1..65535), "count" (an integer >= 1), "flag" (yes/no), "policy", "login", "level",
    # "workers" (auto or a count), "auto_count" (auto or a count), "history_days" (0, or at least HISTORY_DAYS_MIN),
    # "limit" (0: no limit, or a count)
    help: str

    @property
    def ini_name(self) -> str:
        return f"[{self.section}] {self.key}"

    @property
    def shell_name(self) -> str:
        return f"{self.section}_{self.key}".upper()

    @property
    def default(self) -> Any:
        """The Settings default (MISSING for interface_hrn and data_dir, which have none of their own)."""
        return _FIELD_DEFAULTS[self.field]


OPTIONS: tuple[Option, ...] = (
    Option("interface_hrn", "sfa", "interface_hrn", "text", "the authority this testbed speaks for (an HRN); required"),
    Option("data_dir", "sfa", "data_dir", "text", "keys, GIDs, trusted roots and the embedded database live here"),
    Option("registry_host", "sfa_registry", "host", "text", "the registry's address"),
    Option("registry_port", "sfa_registry", "port", "port", "the registry's port"),
    Option(
        "max_slice_renew_days",
        "sfa",
        "max_slice_renew",
        "count",
        "days ahead a slice's researchers may renew it with its slice credential (registry Update)",
    ),
    Option("aggregate_host", "sfa_aggregate", "host", "text", "the aggregate manager's address"),
    Option("aggregate_port", "sfa_aggregate", "port", "port", "the aggregate manager's port"),
    Option("aggregate_type", "sfa_aggregate", "type", "text", "the testbed backend: embedded, omf, oar, or another"),
    Option(
        "backend_concurrency",
        "sfa_aggregate",
        "backend_concurrency",
        "auto_count",
        "testbed operations at once: auto (threads - 2) or N; more calls wait 2 s, then are refused BUSY",
    ),
    Option(
        "backend_cooldown_s",
        "sfa_aggregate",
        "backend_cooldown_s",
        "count",
        "seconds a testbed that timed out or is unreachable is not asked (doubling to 120 s while it fails)",
    ),
    Option("db_host", "sfa_db", "host", "text", "PostgreSQL host of the calendar when database_url is empty"),
    Option("db_port", "sfa_db", "port", "port", "PostgreSQL port"),
    Option("db_user", "sfa_db", "user", "text", "PostgreSQL user"),
    Option("db_password", "sfa_db", "password", "text", "PostgreSQL password"),
    Option("db_name", "sfa_db", "name", "text", "PostgreSQL database name"),
    Option("database_url", "sfa_omf", "database_url", "text", "the calendar's SQLAlchemy URL (wins over [sfa_db])"),
    Option("trusted_roots", "sfa_omf", "trusted_roots", "text", "directory of trusted root GIDs"),
    Option("hostname", "sfa_omf", "hostname", "text", "the host name GetVersion advertises"),
    Option("grain_s", "sfa_omf", "grain_s", "count", "booking slot length of new nodes, in seconds"),
    Option("default_duration_s", "sfa_omf", "default_duration_s", "count", "lease length when a request gives none"),
    Option("allocation_ttl_s", "sfa_omf", "allocation_ttl_s", "count", "an allocation not provisioned is freed after"),
    Option("max_duration_s", "sfa_omf", "max_duration_s", "count", "longest lease, in seconds"),
    Option("max_advance_s", "sfa_omf", "max_advance_s", "count", "how far ahead a lease may start, in seconds"),
    Option("max_nodes_per_request", "sfa_omf", "max_nodes_per_request", "count", "most nodes one request may name"),
    Option(
        "max_leases_per_request",
        "sfa_omf",
        "max_leases_per_request",
        "count",
        "most node x window pairs (slivers) one request may book",
    ),
    Option(
        "max_hours_per_day_per_user",
        "sfa_omf",
        "max_hours_per_day_per_user",
        "limit",
        "node-hours one user may book on one UTC day; 0: no limit",
    ),
    Option(
        "max_concurrent_leases_per_slice",
        "sfa_omf",
        "max_concurrent_leases_per_slice",
        "limit",
        "leases one slice may hold at the same moment; 0: no limit",
    ),
    Option(
        "max_node_hours_ahead_per_user",
        "sfa_omf",
        "max_node_hours_ahead_per_user",
        "limit",
        "node-hours of leases not yet ended one user may hold, in all their slices; 0: no limit",
    ),
    Option("horizon_days", "sfa_omf", "horizon_days", "count", "how many days of availability are advertised"),
    Option("free_windows", "sfa_omf", "free_windows", "count", "free windows advertised per node"),
    Option(
        "history_days",
        "sfa_omf",
        "history_days",
        "history_days",
        "days finished leases and expired slices are kept after their end; 0: for ever",
    ),
    Option("max_request_bytes", "sfa_omf", "max_request_bytes", "count", "largest XML-RPC request accepted"),
    Option("threads", "sfa_omf", "threads", "count", "worker threads serving requests (in each worker process)"),
    Option(
        "calls_in_reactor",
        "sfa_omf",
        "calls_in_reactor",
        "flag",
        "PostgreSQL: answer Allocate, Delete and Status in the reactor thread, awaiting the database there "
        "(no effect on SQLite)",
    ),
    Option("max_connections", "sfa_omf", "max_connections", "count", "connections open at once on each listener"),
    Option(
        "max_connections_per_peer",
        "sfa_omf",
        "max_connections_per_peer",
        "count",
        "connections open at once from one address, on each listener",
    ),
    Option("workers", "sfa_omf", "workers", "workers", "serving processes: auto (PostgreSQL: cores; SQLite: 1) or N"),
    Option(
        "leader_takeover_s",
        "sfa_omf",
        "leader_takeover_s",
        "count",
        "seconds within which another process takes the background tasks over when their leader dies",
    ),
    Option(
        "database_timeout_s",
        "sfa_omf",
        "database_timeout_s",
        "count",
        "seconds a serving process's statement may wait on PostgreSQL (locks included) before the call answers busy",
    ),
    Option("log_file", "sfa_omf", "log_file", "text", "log file; empty: standard error"),
    Option("log_level", "sfa_omf", "log_level", "level", "least important log lines kept: DEBUG, INFO, WARNING, ERROR"),
    Option("account_policy", "sfa_omf", "account_policy", "policy", "local accounts: per-user, per-slice or shared"),
    Option("shared_login", "sfa_omf", "shared_login", "login", "the one login of the shared account policy"),
    Option("create_accounts", "sfa_omf", "create_accounts", "flag", "create Unix accounts with the users' SSH keys"),
    Option("image_group", "sfa_omf", "image_group", "text", "Unix group whose members may add and remove images"),
    Option("provisioning_mode", "sfa_omf", "provisioning_mode", "text", "install images per lease: perjob or ondemand"),
    Option("instance_bridge", "sfa_omf", "instance_bridge", "text", "bridge of lease containers; empty: no containers"),
    Option("instance_network", "sfa_omf", "instance_network", "text", "lease containers' addresses (IPv4 CIDR)"),
    Option("instance_lxc_path", "sfa_omf", "instance_lxc_path", "text", "LXC's directory for lease containers"),
    Option("max_instances_per_node", "sfa_omf", "max_instances_per_node", "count", "most containers per sliver"),
    Option(
        "instance_action_timeout_s",
        "sfa_omf",
        "instance_action_timeout_s",
        "count",
        "seconds an action on OAR lease containers waits for the node's report",
    ),
    Option(
        "max_saved_images",
        "sfa_omf",
        "max_saved_images",
        "count",
        "most images one user may keep saved from containers and not yet published",
    ),
    Option(
        "max_saved_image_bytes",
        "sfa_omf",
        "max_saved_image_bytes",
        "count",
        "most bytes of images one user may keep saved from containers and not yet published",
    ),
    Option(
        "image_min_free_bytes",
        "sfa_omf",
        "image_min_free_bytes",
        "count",
        "bytes kept free on the image store's filesystem: a save that would leave less is refused",
    ),
    Option("plan_signing_key", "sfa_omf", "plan_signing_key", "text", "key signing OAR lease plans (made if missing)"),
    Option("oar_api_url", "sfa_oar", "api_url", "text", "OAR's REST API (the oar backend)"),
    Option("oar_timezone", "sfa_oar", "timezone", "text", "OAR server's time zone (IANA name); empty: this host's"),
    Option("oar_job_type", "sfa_oar", "job_type", "text", "OAR job type of reservations: noop or deploy"),
    Option("oar_deploy_command", "sfa_oar", "deploy_command", "text", "deploy jobs run: COMMAND IMAGE NODE,NODE..."),
    Option("oar_container_command", "sfa_oar", "container_command", "text", "lease containers' command on the nodes"),
    Option("oar_timeout_s", "sfa_oar", "timeout_s", "count", "seconds to wait for one OAR API answer"),
    Option("oar_cache_s", "sfa_oar", "cache_s", "count", "how long OAR's own reservations are cached, in seconds"),
    Option("oar_reconcile_s", "sfa_oar", "reconcile_s", "count", "seconds between calendar/OAR reconciliations"),
    Option("frcp_amqp_url", "sfa_frcp", "amqp_url", "text", "the OMF testbed's AMQP broker (omf backend)"),
    Option("frcp_user_factory", "sfa_frcp", "user_factory", "text", "the FRCP topic of the user_factory controller"),
    Option("frcp_timeout_s", "sfa_frcp", "timeout_s", "count", "seconds to wait for one FRCP answer"),
    Option("frcp_account", "sfa_frcp", "account", "text", "the account the aggregate signs FRCP messages as"),
    Option("frcp_cm_factory", "sfa_frcp", "cm_factory", "text", "FRCP topic of cm_factory (empty: no power control)"),
    Option("frcp_frisbee_factory", "sfa_frcp", "frisbee_factory", "text", "the FRCP topic of frisbee_factory"),
    Option("frcp_boot_timeout_s", "sfa_frcp", "boot_timeout_s", "count", "seconds a node may take to boot or load"),
    Option(
        "frcp_foreign_error_grace_s",
        "sfa_frcp",
        "foreign_error_grace_s",
        "count",
        "seconds a cm_factory error about a node (perhaps someone else's refusal) waits for our success",
    ),
    Option("frcp_slot_period_s", "sfa_frcp", "slot_period_s", "count", "seconds between slot-boundary passes"),
    Option("frcp_controllers", "sfa_frcp", "controllers", "text", "certificate URNs of the testbed's controllers"),
    Option("web_enabled", "sfa_web", "enabled", "flag", "serve the web calendar and iCal feeds under /calendar"),
    Option("web_admins", "sfa_web", "admins", "text", "user URNs who see every booking in the web calendar"),
    Option("notify_enabled", "sfa_notify", "enabled", "flag", "notice lease events and deliver them to subscribers"),
    Option("notify_smtp_host", "sfa_notify", "smtp_host", "text", "SMTP server for e-mail notifications"),
    Option("notify_smtp_port", "sfa_notify", "smtp_port", "port", "SMTP port"),
    Option("notify_smtp_starttls", "sfa_notify", "smtp_starttls", "flag", "use STARTTLS with the SMTP server"),
    Option("notify_smtp_tls", "sfa_notify", "smtp_tls", "flag", "TLS from the start with the SMTP server (port 465)"),
    Option("notify_smtp_user", "sfa_notify", "smtp_user", "text", "SMTP login (empty: no login)"),
    Option("notify_smtp_password", "sfa_notify", "smtp_password", "text", "SMTP password"),
    Option("notify_from", "sfa_notify", "from", "text", "sender address of e-mail notifications"),
    Option(
        "notify_webhook_key",
        "sfa_notify",
        "webhook_key",
        "text",
        "the key each webhook subscription's secret is made from",
    ),
    Option("notify_lead_s", "sfa_notify", "lead_s", "count", "seconds before a start or end to say it comes soon"),
    Option(
        "notify_email_by_default",
        "sfa_notify",
        "email_by_default",
        "flag",
        "users who chose no e-mail address get lease e-mails at the one on record (registry, else their GID)",
    ),
    Option(
        "notify_operators",
        "sfa_notify",
        "operators",
        "text",
        "e-mail addresses and webhook URLs told of node down, testbed down/recovered, reconciler repairs",
    ),
    Option("notify_webhook_timeout_s", "sfa_notify", "webhook_timeout_s", "count", "seconds a webhook's POST may take"),
    Option(
        "notify_webhook_origin_budget_s",
        "sfa_notify",
        "webhook_origin_budget_s",
        "count",
        "seconds a delivery round waits on one webhook origin; its other messages wait for the next round",
    ),
    Option("agent_heartbeat_s", "sfa_agents", "heartbeat_s", "count", "seconds between two heartbeats of a node agent"),
    Option("agent_timeout_s", "sfa_agents", "timeout_s", "count", "a node whose agent is silent this long is lost"),
    Option("agent_max_body_bytes", "sfa_agents", "max_body_bytes", "count", "largest request of a node agent"),
    Option("agent_max_file_bytes", "sfa_agents", "max_file_bytes", "count", "largest file staged in or out of a node"),
    Option(
        "agent_stage_out_grace_s",
        "sfa_agents",
        "stage_out_grace_s",
        "count",
        "a lease's staged-out files are taken from its start until this many seconds after its end",
    ),
    Option(
        "agent_max_stage_out_files",
        "sfa_agents",
        "max_stage_out_files",
        "count",
        "most files staged out for one lease from one node",
    ),
    Option(
        "agent_max_stage_out_bytes",
        "sfa_agents",
        "max_stage_out_bytes",
        "count",
        "most bytes staged out for one lease from one node",
    ),
    Option(
        "agent_min_free_bytes",
        "sfa_agents",
        "min_free_bytes",
        "count",
        "bytes kept free in the data directory: a stage-out that would leave less is refused",
    ),
    Option("agent_vpn_remote", "sfa_agents", "vpn_remote", "text", "address of the nodes' OpenVPN server; empty: none"),
    Option("agent_vpn_port", "sfa_agents", "vpn_port", "port", "UDP port of the nodes' OpenVPN server"),
    Option("agent_dns_zone", "sfa_agents", "dns_zone", "text", "DNS zone the nodes are named in; empty: none"),
    Option("agent_dns_reload", "sfa_agents", "dns_reload", "text", "command that makes the DNS server reload"),
)

_FIELD_DEFAULTS: dict[str, Any] = {
    item.name: MISSING if item.default is MISSING else item.default for item in fields(Settings)
}
_OPTIONS_BY_NAME = {(option.section, option.key): option for option in OPTIONS}

#: SFA settings sfa-omf accepts and does not use (so that SFA's own file passes); None: the whole section.
SFA_UNUSED: dict[str, frozenset[str] | None] = {
    "sfa": frozenset({"generic_flavour", "credential_schema", "api_loglevel", "session_key_path"}),
    "sfa_registry": frozenset({"enabled", "root_auth"}),
    "sfa_aggregate": frozenset({"enabled", "caching"}),
    "sfa_db": frozenset({"enabled"}),
    "sfa_sm": None,
    "sfa_cm": None,
    "sfa_flashpolicy": None,
    "sfa_plc": None,
    "sfa_dummy": None,
    "sfa_nova": None,
    "sfa_nitos": None,
    "sfa_federica": None,
}
_SECTIONS = frozenset({option.section for option in OPTIONS} | set(SFA_UNUSED))

# Problems that leave a setting without a usable value: read_config refuses the file for these.
BLOCKING_KINDS = frozenset({"syntax", "invalid", "missing"})
# Problems every command and the server say in a warning: a misspelt name or a setting given twice is otherwise a
# value silently not taken; "insecure" (an SMTP password that would cross the network in clear) is refused where it
# would be used (the notifier keeps the e-mails), the rest goes on.
WARNING_KINDS = frozenset({"unknown", "duplicate", "moved", "comment", "doubtful", "insecure"})
#: Settings that hold a password or a key, or a URL that may hold one: a comment cut from such a value is warned of
#: (``password = abc #def`` is the password ``abc``).
SECRET_FIELDS = frozenset(
    {
        "db_password",
        "notify_smtp_password",
        "notify_webhook_key",
        "database_url",
        "frcp_amqp_url",
        "oar_api_url",
        "notify_operators",
    }
)


@dataclass(frozen=True)
class Source:
    """Where a value came from: ``default``, ``file`` (detail ``path:line``) or ``environment`` (the variable)."""

    kind: str
    detail: str = ""

    def __str__(self) -> str:
        if self.kind == "default":
            return f"default ({self.detail})" if self.detail else "default"
        if self.kind == "environment":
            return f"environment {self.detail}"
        return self.detail


@dataclass(frozen=True)
class Problem:
    """Something wrong with the configuration. ``kind`` is one of syntax, invalid, missing, unknown, duplicate, moved,
    comment, doubtful, insecure, testbed, path, workers (only syntax, invalid and missing stop the server); ``where``
    is ``path:line``, ``environment NAME`` or the file's path."""

    kind: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


@dataclass(frozen=True)
class LoadedConfig:
    """The effective settings of one file plus the environment, where each came from, and what is wrong."""

    path: str
    form: str  # "ini" or "shell"
    settings: Settings
    sources: Mapping[str, Source]  # by Settings field name
    problems: tuple[Problem, ...]
    unused: tuple[str, ...]  # SFA settings sfa-omf does not use, as "where: name"
    data: bytes = field(default=b"", repr=False)  # the file as read: what a server runs (workers get these bytes)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class _Entry:
    """One ``name = value`` found in the file or the environment."""

    section: str
    key: str
    value: str
    source: Source
    spelled: str  # as the operator wrote it, for messages
    commented: bool = False  # a `` # comment`` was cut from its unquoted value


def known_testbed_types() -> list[str]:
    """The aggregate types sfa-omf can run: its own, then those installed packages declare as entry points."""
    installed = sorted(set(entry_points(group=TESTBED_ENTRY_POINT_GROUP).names) - set(BUILTIN_TESTBED_TYPES))
    return [*BUILTIN_TESTBED_TYPES, *installed]


def hide_password(url: str) -> str:
    """A database URL fit for printing: the password, if any, is replaced by ``***``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def detect_form(text: str) -> str:
    """``ini`` when the first line that is not blank or a comment is a ``[section]`` header, else ``shell``."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith(("#", ";")):
            return "ini" if stripped.startswith("[") else "shell"
    return "ini"


def shell_name_to_key(name: str) -> tuple[str, str] | None:
    """``SFA_AGGREGATE_PORT`` -> ``("sfa_aggregate", "port")``: the longest known section the name starts with (as
    SFA does). None when the name starts with no known section."""
    lowered = name.lower()
    best = ""
    for section in _SECTIONS:
        if lowered.startswith(section + "_") and len(section) > len(best):
            best = section
    if not best or len(lowered) == len(best) + 1:
        return None
    return best, lowered[len(best) + 1 :]


def load_config(path: str, environ: Mapping[str, str] | None = None, data: bytes | None = None) -> LoadedConfig:
    """Read a configuration file (INI or shell form) and apply ``SFA_*`` environment overrides.

    Returns the effective settings, the source of each and every problem found; problems never raise. Raises
    FileNotFoundError when the file does not exist, OSError when it cannot be read, ValueError when it is not UTF-8.
    Relative paths written in the file (data_dir, trusted_roots, log_file, an SQLite database_url...) are relative to
    the file's directory. ``data``: the file's bytes as read earlier (a workers' master hands its workers the file it
    read at its start), read instead of the file itself; ``path`` still names it in messages and relative paths.
    """
    environ = os.environ if environ is None else environ
    if data is None:
        if not os.path.exists(path):
            raise FileNotFoundError(f"cannot read configuration file {path}")
        with open(path, "rb") as handle:
            data = handle.read()
    raw = data
    # A file saved by an editor that starts it with a byte order mark reads as the same file without one.
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ValueError(
            f"cannot read configuration file {path}: line {line}: byte {data[exc.start]:#04x} is not UTF-8 text "
            "(save the file as UTF-8)"
        ) from exc
    form = detect_form(text)
    problems: list[Problem] = []
    entries = _parse_ini(path, text, problems) if form == "ini" else _parse_shell(path, text, problems)
    entries += _environment_entries(environ)
    by_field, unused = _sort_entries(entries, problems)
    values, sources = _resolve(by_field, problems)
    directory = os.path.dirname(os.path.abspath(path))
    _resolve_relative_paths(values, sources, directory, problems)
    _fill_derived_defaults(values, sources, directory)
    if not values["interface_hrn"]:
        problems.append(
            Problem(
                "missing",
                path,
                "[sfa] interface_hrn (SFA_INTERFACE_HRN) is required: the authority this testbed speaks for",
            )
        )
    settings = Settings(**values)
    problems += _check_values(settings, sources)
    return LoadedConfig(
        path=path,
        form=form,
        settings=settings,
        sources=sources,
        problems=tuple(sorted(problems, key=lambda problem: _problem_order(path, problem))),
        unused=tuple(unused),
        data=raw,
    )


#: Logged on SIGHUP (``systemctl reload``) when the file is no longer what the server runs.
CONFIG_CHANGED_WARNING = (
    "the configuration file %s changed; restart the service to apply it (a reload re-reads only the trusted roots)"
)


def file_changed(path: str, data: bytes) -> bool:
    """True when the file at ``path`` no longer holds ``data`` (what a server read at its start): edited, replaced,
    removed or unreadable."""
    try:
        with open(path, "rb") as handle:
            return handle.read() != data
    except OSError:
        return True


def read_config(path: str, environ: Mapping[str, str] | None = None) -> Settings:
    """The effective settings of a configuration file (INI as written by write_config, or SFA's shell form) with
    ``SFA_*`` environment overrides (``environ``, default os.environ).

    Raises FileNotFoundError when the file does not exist, ValueError when a setting has no usable value (a line that
    cannot be read, a value of the wrong type, no interface_hrn). Other problems (unknown names, an unknown testbed
    type, a missing directory) are left to ``sfa-omf config check`` and to the code that uses the setting.
    """
    return usable_settings(load_config(path, environ))


def usable_settings(loaded: LoadedConfig) -> Settings:
    """The settings of a loaded configuration; ValueError naming every problem that leaves a setting without a
    usable value (see read_config)."""
    blocking = [str(problem) for problem in loaded.problems if problem.kind in BLOCKING_KINDS]
    if blocking:
        raise ValueError("invalid configuration: " + "; ".join(blocking))
    return loaded.settings


def write_config(path: str, settings: Settings) -> None:
    """Write settings as an SFA-style INI file (refuses to overwrite an existing one).

    The file's mode is 0644, whatever the umask; 0600 when it holds a secret (a database password, any password or
    key in SECRET_FIELDS).
    """
    parser = configparser.ConfigParser(interpolation=None)
    parser["sfa"] = {"interface_hrn": settings.interface_hrn, "data_dir": settings.data_dir}
    parser["sfa_registry"] = {"host": settings.registry_host, "port": str(settings.registry_port)}
    parser["sfa_aggregate"] = {
        "host": settings.aggregate_host,
        "port": str(settings.aggregate_port),
        "type": settings.aggregate_type,
    }
    db_options = [option for option in OPTIONS if option.section == "sfa_db"]
    if any(getattr(settings, option.field) != option.default for option in db_options):
        parser["sfa_db"] = {option.key: str(getattr(settings, option.field)) for option in db_options}
    # Without [sfa_db], name the embedded database's file, so the operator sees where it is.
    database_url = settings.database_url or ("" if settings.uses_sfa_db else settings.calendar_url)
    own: dict[str, str] = {"trusted_roots": settings.trusted_roots_dir, "database_url": database_url}
    for option in OPTIONS:
        if option.section != "sfa_omf" or option.key in own:
            continue
        if option.field == "hostname" and settings.hostname == settings.aggregate_host:
            continue  # left out, it follows the aggregate host
        own[option.key] = format_value(option, getattr(settings, option.field))
    parser["sfa_omf"] = own
    secret = any(
        _is_secret(option.field, parser[option.section][option.key])
        for option in OPTIONS
        if parser.has_option(option.section, option.key)
    )
    # The mode is set explicitly, whatever the umask: the file names commands the server runs (dns_reload) and where
    # its keys and database are, so only its owner may change it; one holding a secret only its owner may read.
    mode = 0o600 if secret else 0o644
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(descriptor, mode)
    except BaseException:
        os.close(descriptor)
        raise
    with open(descriptor, "w", encoding="utf-8") as handle:
        handle.write("# sfa-omf configuration (SFA's sfa_config names; [sfa_omf] holds sfa-omf's own)\n")
        parser.write(handle)


def _is_secret(name: str, value: str) -> bool:
    """Whether a setting's value, as written, holds a secret: a password or a key, a URL with a password, a webhook
    URL (its path or query often holds a token)."""
    if name not in SECRET_FIELDS or not value:
        return False
    if name == "notify_operators":
        return "://" in value
    if name.endswith("_url"):
        return _has_password(value)
    return True


def _webhook_refusal(address: str) -> str:
    """Why the outbox would refuse this webhook URL (length, scheme, spaces: outbox.check_address, as for users'
    webhooks), or ""; an URL over its length would break the outbox's PostgreSQL column at every event."""
    from sfa_omf.calendar.outbox import check_address  # the calendar's models: only when an address is a URL

    try:
        check_address("webhook", address)
    except GeniError as exc:
        return exc.message.replace(repr(address), hide_webhooks(address))  # (its token not shown)
    return ""


def _has_password(url: str) -> bool:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return bool(url) and make_url(url).password is not None
    except (ArgumentError, ValueError):
        return "@" in url


def format_value(option: Option, value: Any) -> str:
    """A setting's value as the file writes it (``workers`` 0 is ``auto``)."""
    if option.kind in ("workers", "auto_count") and value == AUTO_WORKERS:
        return "auto"
    return str(value)


def _to_text(value: str) -> str:
    return value


def _to_int(value: str) -> int:
    if not re.fullmatch(r"[+-]?[0-9]+", value.strip()):
        raise ValueError("not a whole number")
    return int(value)


def _to_port(value: str) -> int:
    port = _to_int(value)
    if not 1 <= port <= 65535:
        raise ValueError("a port is a number from 1 to 65535")
    return port


def _to_count(value: str) -> int:
    number = _to_int(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def _to_limit(value: str) -> int:
    number = _to_int(value)
    if number < 0:
        raise ValueError("0 (no limit), or a number (at least 1)")
    return number


#: ``[sfa_omf] workers = auto``: as many as cores on PostgreSQL, one on SQLite (sfa_omf/cluster/workers.py decides).
AUTO_WORKERS = 0


def _to_workers(value: str) -> int:
    if value.strip().lower() == "auto":
        return AUTO_WORKERS
    try:
        return _to_count(value)
    except ValueError:
        raise ValueError("auto, or a number of processes (at least 1)") from None


def _to_auto_count(value: str) -> int:
    if value.strip().lower() == "auto":
        return 0
    try:
        return _to_count(value)
    except ValueError:
        raise ValueError("auto, or a number (at least 1)") from None


#: The shortest history kept (``[sfa_omf] history_days``, when not 0): the iCal feeds show leases that ended up to
#: 30 days ago (web/app.py FEED_PAST), which the calendar must still hold.
HISTORY_DAYS_MIN = 30


def _to_history_days(value: str) -> int:
    days = _to_int(value)
    if days != 0 and days < HISTORY_DAYS_MIN:
        raise ValueError(f"0 (keep for ever), or a number of days from {HISTORY_DAYS_MIN} (the feeds' past)")
    return days


def _to_flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("yes", "true", "on", "1"):
        return True
    if lowered in ("no", "false", "off", "0"):
        return False
    raise ValueError("say yes or no")


def _to_policy(value: str) -> str:
    from sfa_omf.registry.accounts import POLICIES as ACCOUNT_POLICIES

    policy = value.strip()
    if policy not in ACCOUNT_POLICIES:
        raise ValueError(f"one of {', '.join(ACCOUNT_POLICIES)}")
    return policy


def _to_login(value: str) -> str:
    from sfa_omf.registry.accounts import VALID_LOGIN, system_login_reason

    login = value.strip()
    if not VALID_LOGIN.fullmatch(login):
        raise ValueError("a Unix login: at most 32 of a-z 0-9 _ -, starting with a letter or _")
    reason = system_login_reason(login)
    if reason:
        raise ValueError(f"a login of the experimenters' own, not {login!r} ({reason}: their SSH keys would open it)")
    return login


#: Log levels an operator may choose, least verbose last.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _to_level(value: str) -> str:
    level = value.strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"one of {', '.join(LOG_LEVELS)}")
    return level


_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "text": _to_text,
    "port": _to_port,
    "count": _to_count,
    "flag": _to_flag,
    "policy": _to_policy,
    "login": _to_login,
    "level": _to_level,
    "workers": _to_workers,
    "auto_count": _to_auto_count,
    "history_days": _to_history_days,
    "limit": _to_limit,
}


def _unquote(value: str) -> tuple[str, bool, bool]:
    """An INI value without surrounding quotes and without a trailing `` # comment``: (value, closed, commented);
    closed is False when a quote is unclosed or text follows the closing quote, commented True when a comment was
    cut from an unquoted value. Only `` #`` begins a comment (docs/configuration.md): a ``;`` is part of the value."""
    value = value.strip()
    if value[:1] in ('"', "'"):
        closing = value.find(value[0], 1)
        if closing < 0:
            return value, False, False
        rest = value[closing + 1 :].strip()
        return value[1:closing], not rest or rest.startswith("#"), False
    parts = re.split(r"\s+#", value, maxsplit=1)
    return parts[0].strip(), True, len(parts) > 1


def _parse_ini(path: str, text: str, problems: list[Problem]) -> list[_Entry]:
    """The entries of an INI file. A line that cannot be read is named by its line number and key, never shown:
    it may hold a password, and the problem goes to the journal."""
    entries: list[_Entry] = []
    section = ""
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        where = f"{path}:{number}"
        if not stripped or stripped.startswith(("#", ";")):
            continue
        if stripped.startswith("["):
            if not stripped.endswith("]"):
                problems.append(
                    Problem("syntax", where, "cannot read this line: a section header is [name] on a line of its own")
                )
                section = ""
                continue
            section = stripped[1:-1].strip().lower()
            continue
        match = re.match(r"([^=:]+?)\s*[=:](.*)$", stripped)
        if not match:
            problems.append(
                Problem("syntax", where, "cannot read this line (not shown): expected key = value in a [section]")
            )
            continue
        key = match.group(1).strip().lower()
        if not section:
            problems.append(Problem("syntax", where, f"cannot read {key}: key = value must come after a [section]"))
            continue
        value, closed, commented = _unquote(match.group(2))
        if not closed:
            problems.append(
                Problem("syntax", where, f"cannot read [{section}] {key}: unbalanced quotes (the value is not shown)")
            )
            continue
        entries.append(_Entry(section, key, value, Source("file", where), f"[{section}] {key}", commented))
    return entries


def _shell_value(text: str) -> tuple[str, str] | None:
    """A shell-form value as a shell reads it: (the first word, quotes and backslashes removed as the shell removes
    them (shlex), the text after it); None when a quote is not closed."""
    text = text.strip()
    quote = ""
    index = 0
    while index < len(text):
        character = text[index]
        if quote == "'":
            quote = "" if character == "'" else quote
        elif character == "\\":
            index += 1  # the next character is taken as it is
        elif quote == '"':
            quote = "" if character == '"' else quote
        elif character in "'\"":
            quote = character
        elif character.isspace():
            break
        index += 1
    if quote:
        return None
    word = text[:index]
    try:
        words = shlex.split(word) if word else [""]
    except ValueError:  # a backslash at the very end
        return None
    return (words[0] if words else ""), text[index:].strip()


def _parse_shell(path: str, text: str, problems: list[Problem]) -> list[_Entry]:
    """The entries of a shell-form file, each value read as a shell reads it (``'it'\\''s'``, ``"a \\"b\\""``, a
    `` # comment`` after it). A line that cannot be read is named by its line number and name, never shown."""
    entries: list[_Entry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        where = f"{path}:{number}"
        if not stripped or stripped.startswith("#"):
            continue
        match = re.match(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)$", stripped)
        if not match:
            hint = " (an INI [section] must come first in the file)" if stripped.startswith("[") else ""
            problems.append(Problem("syntax", where, f"cannot read this line (not shown): expected NAME=value{hint}"))
            continue
        name = match.group(1).upper()
        read = _shell_value(match.group(2))
        if read is None:
            problems.append(Problem("syntax", where, f"cannot read {name}: unbalanced quotes (the value is not shown)"))
            continue
        value, rest = read
        if rest and not rest.startswith("#"):
            problems.append(
                Problem(
                    "syntax",
                    where,
                    f"cannot read {name}: text follows the value (not shown); a shell reads only the first word: "
                    'quote a value that holds spaces (NAME="...")',
                )
            )
            continue
        entries.append(_shell_entry(name, value, Source("file", where), commented=bool(rest)))
    return entries


def _shell_entry(name: str, value: str, source: Source, commented: bool = False) -> _Entry:
    """The entry of a shell name; its section is empty when the name starts with no SFA section."""
    section, key = shell_name_to_key(name) or ("", "")
    return _Entry(section, key, value, source, name, commented)


def _environment_entries(environ: Mapping[str, str]) -> list[_Entry]:
    return [
        _shell_entry(name, environ[name].strip(), Source("environment", name))
        for name in sorted(environ)
        if name.startswith("SFA_") and name not in OTHER_ENVIRONMENT and not name.startswith(OTHER_ENVIRONMENT_PREFIXES)
    ]


def _problem_order(path: str, problem: Problem) -> tuple[int, int]:
    """File problems by line, then those about the whole file or a default, then the environment's."""
    if problem.where.startswith("environment "):
        return 2, 0
    prefix = f"{path}:"
    if problem.where.startswith(prefix) and problem.where[len(prefix) :].isdigit():
        return 0, int(problem.where[len(prefix) :])
    return 1, 0


def _is_sfa_unused(section: str, key: str) -> bool:
    if section not in SFA_UNUSED:
        return False
    keys = SFA_UNUSED[section]
    return keys is None or key in keys


def _closest(spelled: str) -> str:
    """The known setting nearest to a name, in the form it was written in (shell name or INI name)."""
    shell_form = not spelled.startswith("[")
    candidates = {option.shell_name: option for option in OPTIONS}
    target = spelled.upper() if shell_form else spelled[1:].replace("] ", "_").upper()
    best = difflib.get_close_matches(target, list(candidates), n=1, cutoff=0.0)[0]
    option = candidates[best]
    return f"{option.shell_name} ({option.ini_name})" if shell_form else f"{option.ini_name} ({option.shell_name})"


def _sort_entries(entries: list[_Entry], problems: list[Problem]) -> tuple[dict[str, list[_Entry]], list[str]]:
    """Entries by Settings field, in order (file, then environment); SFA names sfa-omf does not use; unknown names
    become problems."""
    by_field: dict[str, list[_Entry]] = {}
    unused: list[str] = []
    for entry in entries:
        option = _OPTIONS_BY_NAME.get((entry.section, entry.key))
        if option is not None:
            by_field.setdefault(option.field, []).append(entry)
        elif _is_sfa_unused(entry.section, entry.key):
            from_environment = entry.source.kind == "environment"
            unused.append(str(entry.source) if from_environment else f"{entry.source}: {entry.spelled}")
        else:
            what = "is not a known setting" if entry.section else "is not an SFA setting"
            problems.append(
                Problem("unknown", str(entry.source), f"{entry.spelled} {what}; closest: {_closest(entry.spelled)}")
            )
    return by_field, unused


def _resolve(by_field: Mapping[str, list[_Entry]], problems: list[Problem]) -> tuple[dict[str, Any], dict[str, Source]]:
    """Each setting's value and source: the default, then each entry in turn; a value that does not convert is a
    problem and leaves the earlier one."""
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    for option in OPTIONS:
        values[option.field] = option.default
        sources[option.field] = Source("default")
        seen_in_file: Source | None = None
        for entry in by_field.get(option.field, []):
            if entry.source.kind == "file":
                if seen_in_file is not None:
                    problems.append(
                        Problem(
                            "duplicate",
                            str(entry.source),
                            f"{entry.spelled} is set again (first at {seen_in_file}); this later value wins",
                        )
                    )
                seen_in_file = entry.source
            if entry.commented and option.field in SECRET_FIELDS:
                problems.append(
                    Problem(
                        "comment",
                        str(entry.source),
                        f"{entry.spelled}: the text after ' #' is taken as a comment, not as part of the value; quote "
                        'the value ("...") if it is part of it, or put the comment on a line of its own',
                    )
                )
            try:
                values[option.field] = _CONVERTERS[option.kind](entry.value)
                sources[option.field] = entry.source
            except ValueError as exc:
                # (An INI line of SFA's Python 2 era may end in " ; comment": no comment here since ';' may be in a
                # password.)
                hint = "; ';' does not begin a comment here, ' #' does" if " ;" in entry.value else ""
                problems.append(
                    Problem("invalid", str(entry.source), f"{entry.spelled} = {entry.value!r}: {exc}{hint}")
                )
    return values, sources


#: Settings that name a file or directory: a relative one written in the file is relative to the file's directory.
PATH_FIELDS = ("data_dir", "trusted_roots", "log_file", "plan_signing_key", "instance_lxc_path")


def _resolve_relative_paths(
    values: dict[str, Any], sources: Mapping[str, Source], directory: str, problems: list[Problem]
) -> None:
    """Relative paths written in the file, made absolute against the file's directory: the file means the same
    wherever the command runs (systemd starts the server in /). Values from the environment keep the working
    directory, as a shell would. Before, they were relative to the working directory: a data directory or an SQLite
    calendar found there and not beside the file is named in a warning ("moved"), lest a site silently start on a
    new, empty calendar after the upgrade."""
    for name in PATH_FIELDS:
        value = values[name]
        if sources[name].kind == "file" and value and not os.path.isabs(value):
            values[name] = os.path.normpath(os.path.join(directory, value))
            if name == "data_dir":
                _warn_if_moved(value, values[name], sources[name], problems)
    url = values["database_url"]
    if sources["database_url"].kind == "file" and url.startswith("sqlite"):
        values["database_url"] = sqlite_url_against(url, directory)
        if values["database_url"] != url:
            try:
                before = _sqlite_file(sqlite_url_against(url, os.getcwd()))
            except FileNotFoundError:  # run from a directory since deleted: nothing can be there
                return
            _warn_if_moved(before, _sqlite_file(values["database_url"]), sources["database_url"], problems)


def _sqlite_file(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).database or ""


def _warn_if_moved(before: str, now: str, source: Source, problems: list[Problem]) -> None:
    """A warning when what a relative path named from the working directory exists and what it names now does not."""
    try:
        before = os.path.abspath(before)
    except FileNotFoundError:  # run from a directory since deleted: nothing can be there
        return
    if before != now and os.path.exists(before) and not os.path.exists(now):
        problems.append(
            Problem(
                "moved",
                str(source),
                f"{now} does not exist, but {before} does: relative paths in the file are now relative to the file's "
                "directory, not to where the command runs; write the absolute path you mean",
            )
        )


def sqlite_url_against(url: str, directory: str) -> str:
    """An SQLite URL whose relative file path is made absolute against ``directory`` (others unchanged)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return url  # _check_values names the URL that cannot be parsed
    database = parsed.database
    if not parsed.drivername.startswith("sqlite"):
        return url
    if not database or database == ":memory:" or database.startswith("file:") or os.path.isabs(database):
        return url
    return parsed.set(database=os.path.normpath(os.path.join(directory, database))).render_as_string(
        hide_password=False
    )


def _fill_derived_defaults(values: dict[str, Any], sources: dict[str, Source], directory: str) -> None:
    """Defaults that depend on other values: say so in their source."""
    if values["interface_hrn"] is MISSING:
        values["interface_hrn"] = ""
    if values["data_dir"] is MISSING:
        values["data_dir"] = directory
        sources["data_dir"] = Source("default", "the configuration file's directory")
    if sources["hostname"].kind == "default" or not values["hostname"]:
        sources["hostname"] = Source("default", "the aggregate host")
    if sources["trusted_roots"].kind == "default" or not values["trusted_roots"]:
        sources["trusted_roots"] = Source("default", "data_dir/trusted_roots")
    if values["notify_smtp_tls"] and sources["notify_smtp_port"].kind == "default":
        values["notify_smtp_port"] = SMTPS_PORT
        sources["notify_smtp_port"] = Source("default", f"{SMTPS_PORT} with smtp_tls")
    if not values["database_url"]:
        uses_db = bool(values["db_host"] or values["db_name"])
        sources["database_url"] = Source("default", "built from [sfa_db]" if uses_db else "SQLite in data_dir")


def _check_values(settings: Settings, sources: Mapping[str, Source]) -> list[Problem]:
    """The checks that look at a whole value: HRN, testbed type, directories, database URL, consistency."""
    problems: list[Problem] = []
    if settings.interface_hrn:
        try:
            split_hrn(settings.interface_hrn)
        except BadArgs as exc:
            problems.append(Problem("invalid", str(sources["interface_hrn"]), f"[sfa] interface_hrn: {exc.message}"))
        else:
            problem = authority_hrn_problem(settings.interface_hrn)
            if problem is not None:
                # (A site made before this was refused: its own root is refused now, so nothing would work.)
                advice = (
                    "an authority cannot be renamed: make the site again under a name without it (sfa-omf init DIR "
                    "--authority NAME: a new root for peers to trust, users and slices registered again)"
                )
                problems.append(
                    Problem("invalid", str(sources["interface_hrn"]), f"[sfa] interface_hrn {problem}: {advice}")
                )
    known = known_testbed_types()
    if settings.aggregate_type not in known:
        problems.append(
            Problem(
                "testbed",
                str(sources["aggregate_type"]),
                f"[sfa_aggregate] type {settings.aggregate_type!r} is not a known testbed; known: {', '.join(known)} "
                f"(other backends are packages declaring an entry point in group {TESTBED_ENTRY_POINT_GROUP})",
            )
        )
    if not os.path.isdir(settings.data_dir):
        problems.append(
            Problem("path", str(sources["data_dir"]), f"[sfa] data_dir {settings.data_dir} is not a directory")
        )
    log_dir = os.path.dirname(os.path.abspath(settings.log_file)) if settings.log_file else ""
    if log_dir and not os.path.isdir(log_dir):
        problems.append(
            Problem("path", str(sources["log_file"]), f"[sfa_omf] log_file: directory {log_dir} does not exist")
        )
    if settings.database_url:
        problem = database_url_problem(settings.database_url)
        if problem:
            problems.append(
                Problem(
                    "invalid",
                    str(sources["database_url"]),
                    f"[sfa_omf] database_url {hide_password(settings.database_url)!r}: {problem}",
                )
            )
    problems += _limit_problems(settings, sources)
    if settings.grain_s > settings.max_duration_s:
        problems.append(
            Problem(
                "invalid",
                str(sources["grain_s"]),
                f"[sfa_omf] grain_s {settings.grain_s} is longer than max_duration_s {settings.max_duration_s}: "
                "grain_s is also the shortest lease, so no lease could be booked; lower grain_s or raise "
                "max_duration_s",
            )
        )
    flush_s = min(AGENT_FLUSH_S, settings.agent_heartbeat_s)
    least_timeout_s = 2 * settings.agent_heartbeat_s + flush_s + AGENT_CONNECT_TIMEOUT_S
    if settings.agent_timeout_s < least_timeout_s:
        # A warning, not a refusal: a site without node agents never uses either, and one that raised heartbeat_s
        # served before this check. Named where the operator wrote one of the two.
        timeout_source = sources["agent_timeout_s"]
        written = timeout_source if timeout_source.kind != "default" else sources["agent_heartbeat_s"]
        problems.append(
            Problem(
                "doubtful",
                str(written),
                f"[sfa_agents] timeout_s {settings.agent_timeout_s} is shorter than twice heartbeat_s "
                f"({settings.agent_heartbeat_s}) plus the {flush_s} s in which heartbeats are written and the "
                f"{AGENT_CONNECT_TIMEOUT_S} s an agent may take to connect: a node whose agent misses one heartbeat, "
                "or is heard just after the check, "
                "would be lost and its running leases failed; make timeout_s at least "
                f"{least_timeout_s} (default 120 with heartbeat_s 30)",
            )
        )
    # Checked as the backend and the zone's writer use them: only on a site that uses them.
    oar_url_problem = http_url_problem(settings.oar_api_url) if settings.aggregate_type == "oar" else ""
    if oar_url_problem:
        problems.append(
            Problem(
                "invalid",
                str(sources["oar_api_url"]),
                f"[sfa_oar] api_url {hide_url_password(settings.oar_api_url)!r} {oar_url_problem} "
                "(e.g. http://127.0.0.1:6668/oarapi)",
            )
        )
    oar_credentials_problem = url_credentials_problem(settings.oar_api_url) if settings.aggregate_type == "oar" else ""
    if oar_credentials_problem and not oar_url_problem:
        # Refused as the client refuses it (OarClient): the backend could not start.
        problems.append(
            Problem(
                "invalid",
                str(sources["oar_api_url"]),
                f"[sfa_oar] api_url {hide_url_password(settings.oar_api_url)!r} {oar_credentials_problem}",
            )
        )
    # (Empty: no reload, the DNS server reads the zone files by itself.)
    reload_problem = command_problem(settings.agent_dns_reload) if settings.agent_dns_zone else ""
    if reload_problem:
        problems.append(
            Problem(
                "invalid",
                str(sources["agent_dns_reload"]),
                f"[sfa_agents] dns_reload {reload_problem}: it is the command run after each zone rewrite, split "
                "into words as a shell does (e.g. rndc reload)",
            )
        )
    if settings.default_duration_s > settings.max_duration_s:
        problems.append(
            Problem(
                "invalid",
                str(sources["default_duration_s"]),
                f"[sfa_omf] default_duration_s {settings.default_duration_s} is longer than max_duration_s "
                f"{settings.max_duration_s}",
            )
        )
    if settings.agent_dns_zone:
        from sfa_omf.agents.dns import zone_name_problem  # (the agents' modules load only with DNS names on)

        problem = zone_name_problem(settings.agent_dns_zone)
        if problem is not None:
            problems.append(
                Problem(
                    "invalid",
                    str(sources["agent_dns_zone"]),
                    f"[sfa_agents] dns_zone {settings.agent_dns_zone!r} {problem}: named would refuse the zone and "
                    "no node would be named; give a DNS name such as nodes.example.org",
                )
            )
    if settings.frcp_foreign_error_grace_s >= settings.frcp_boot_timeout_s:
        problems.append(
            Problem(
                "invalid",
                str(sources["frcp_foreign_error_grace_s"]),
                f"[sfa_frcp] foreign_error_grace_s {settings.frcp_foreign_error_grace_s} is not shorter than "
                f"boot_timeout_s {settings.frcp_boot_timeout_s}: a refusal would be held until the time-out; a few "
                "seconds are enough (default 5)",
            )
        )
    if settings.workers > 1 and settings.calendar_url.startswith("sqlite"):
        # Not blocking: serve runs with one worker and says so; config check tells the operator before that.
        problems.append(
            Problem(
                "workers",
                str(sources["workers"]),
                f"[sfa_omf] workers = {settings.workers} with the embedded SQLite database: serve runs 1 worker "
                "(SQLite takes one writing process at a time); use PostgreSQL ([sfa_db] or [sfa_omf] database_url) "
                "to serve with several, or set workers = auto",
            )
        )
    if settings.oar_timezone and not _known_zone(settings.oar_timezone):
        problems.append(
            Problem(
                "invalid",
                str(sources["oar_timezone"]),
                f"[sfa_oar] timezone {settings.oar_timezone!r} is not a time zone name (e.g. Europe/Paris, UTC)",
            )
        )
    if settings.frcp_amqp_url and not settings.frcp_amqp_url.startswith(("amqp://", "amqps://")):
        problems.append(
            Problem(
                "invalid",
                str(sources["frcp_amqp_url"]),
                f"[sfa_frcp] amqp_url {hide_password(settings.frcp_amqp_url)!r} is not an AMQP URL "
                "(amqp://user:password@host:5672/vhost, or amqps:// for TLS)",
            )
        )
    smtp_problem = smtp_credentials_problem(
        settings.notify_smtp_host,
        settings.notify_smtp_user,
        settings.notify_smtp_starttls,
        settings.notify_smtp_tls,
    )
    if smtp_problem:
        # Not blocking: the notifier refuses to log in so (the e-mails wait in the outbox, saying why), the rest runs.
        problems.append(Problem("insecure", str(sources["notify_smtp_user"]), f"[sfa_notify] {smtp_problem}"))
    if settings.notify_smtp_starttls and settings.notify_smtp_tls:
        problems.append(
            Problem(
                "invalid",
                str(sources["notify_smtp_tls"]),
                "[sfa_notify] smtp_tls and smtp_starttls are both yes: smtp_tls speaks TLS from the first byte (port "
                "465), smtp_starttls asks for it after a plain greeting (port 25 or 587); set the one the server "
                "offers",
            )
        )
    if settings.oar_job_type not in OAR_JOB_TYPES:
        problems.append(
            Problem(
                "invalid",
                str(sources["oar_job_type"]),
                f"[sfa_oar] job_type {settings.oar_job_type!r}: one of {', '.join(OAR_JOB_TYPES)}",
            )
        )
    for address in settings.notify_operator_addresses:
        local, _, domain = address.partition("@")
        if not address.startswith(("http://", "https://")) and not (local and "." in domain.strip(".")):
            problems.append(
                Problem(
                    "invalid",
                    str(sources["notify_operators"]),
                    f"[sfa_notify] operators: {hide_url_password(address)!r} is neither an e-mail address "
                    "(ops@example.org) nor a webhook URL (https://...)",
                )
            )
        elif address.startswith(("http://", "https://")):
            refusal = _webhook_refusal(address)
            if refusal:
                problems.append(
                    Problem(
                        "invalid",
                        str(sources["notify_operators"]),
                        f"[sfa_notify] operators: the webhook {hide_webhooks(address)} ({len(address)} characters): "
                        f"{refusal}",
                    )
                )
    hosts = (
        ("registry_host", "[sfa_registry] host", settings.registry_host),
        ("aggregate_host", "[sfa_aggregate] host", settings.aggregate_host),
        ("hostname", "[sfa_omf] hostname", settings.hostname if sources["hostname"].kind != "default" else ""),
    )
    for name, spelled, host in hosts:
        problem = host_problem(host) if host else None
        if problem is not None:
            problems.append(Problem("invalid", str(sources[name]), f"{spelled} {host!r} {problem}"))
    if not _ipv4_network(settings.instance_network):
        problems.append(
            Problem(
                "invalid",
                str(sources["instance_network"]),
                f"[sfa_omf] instance_network {settings.instance_network!r} is not an IPv4 network such as "
                "10.217.0.0/24 (the bridge's own address is its first host address)",
            )
        )
    if settings.provisioning_mode not in PROVISIONING_MODES:
        problems.append(
            Problem(
                "invalid",
                str(sources["provisioning_mode"]),
                f"[sfa_omf] provisioning_mode {settings.provisioning_mode!r}: one of {', '.join(PROVISIONING_MODES)} "
                "(perjob installs the image for every lease, ondemand only where the node runs another one)",
            )
        )
    return problems


#: Heartbeats of node agents are written to the database at most this often (sfa_omf/server/app.py AGENT_FLUSH_S):
#: part of how late a heartbeat may be seen.
AGENT_FLUSH_S = 5
#: A node agent's round may spend this long connecting before its heartbeat (sfa_omf/agents/node.py
#: CONNECT_TIMEOUT_S, the same value): also part of how late a heartbeat may be seen.
AGENT_CONNECT_TIMEOUT_S = 10
#: Durations of leases and of notices about them: at most ten years.
MAX_LEASE_SECONDS = 3650 * DAY_S
#: Time-outs and periods: at most a day.
MAX_PERIOD_SECONDS = DAY_S
#: The keepalive of the leadership's connections is a third of leader_takeover_s (sfa_omf/cluster/leadership.py) and
#: Linux takes at most 32767 s: a day keeps it well under.
MAX_LEADER_TAKEOVER_S = DAY_S
#: The largest value of each number setting (at least 1; 0 means auto or for ever): larger ones are refused by
#: config check and serve.
MAXIMA: dict[str, int] = {
    # A year: calendar/inventory.py MAX_GRAIN_S, the longest grain node add --grain and node import take. Not imported:
    # that module loads SQLAlchemy, which light commands do not (tests/test_setup_hunt_fixes.py keeps the two equal).
    "grain_s": 365 * DAY_S,
    "default_duration_s": MAX_LEASE_SECONDS,
    "allocation_ttl_s": MAX_LEASE_SECONDS,
    "max_duration_s": MAX_LEASE_SECONDS,
    "max_advance_s": MAX_LEASE_SECONDS,
    "max_nodes_per_request": 1_000_000,
    "max_leases_per_request": 1_000_000,
    "max_hours_per_day_per_user": 10**9,  # node-hours: a million nodes, all day
    "max_concurrent_leases_per_slice": 1_000_000,
    "max_node_hours_ahead_per_user": 10**12,
    "horizon_days": 3650,
    "max_slice_renew_days": 3650,  # ten years, as the longest lease
    "free_windows": 10_000,
    "history_days": 36500,  # a century: 0 keeps for ever
    "max_request_bytes": 1024**3,
    "threads": 1024,
    "backend_concurrency": 1024,
    "backend_cooldown_s": MAX_PERIOD_SECONDS,
    "max_connections": 1_000_000,
    "max_connections_per_peer": 1_000_000,
    "workers": 1024,
    "leader_takeover_s": MAX_LEADER_TAKEOVER_S,
    "database_timeout_s": MAX_PERIOD_SECONDS,
    "max_instances_per_node": 4096,
    "instance_action_timeout_s": MAX_PERIOD_SECONDS,
    "max_saved_images": 10**9,
    "max_saved_image_bytes": 1024**5,
    "image_min_free_bytes": 1024**5,
    "oar_timeout_s": MAX_PERIOD_SECONDS,
    "oar_cache_s": MAX_PERIOD_SECONDS,
    "oar_reconcile_s": MAX_PERIOD_SECONDS,
    "frcp_timeout_s": MAX_PERIOD_SECONDS,
    "frcp_boot_timeout_s": MAX_PERIOD_SECONDS,
    "frcp_foreign_error_grace_s": MAX_PERIOD_SECONDS,
    "frcp_slot_period_s": MAX_PERIOD_SECONDS,
    "notify_lead_s": MAX_LEASE_SECONDS,
    "notify_webhook_timeout_s": MAX_PERIOD_SECONDS,
    "notify_webhook_origin_budget_s": MAX_PERIOD_SECONDS,
    "agent_heartbeat_s": MAX_PERIOD_SECONDS,
    "agent_timeout_s": MAX_PERIOD_SECONDS,
    "agent_max_body_bytes": 1024**3,
    "agent_max_file_bytes": 1024**4,
    "agent_stage_out_grace_s": MAX_PERIOD_SECONDS,
    "agent_max_stage_out_files": 10**9,
    "agent_max_stage_out_bytes": 1024**5,
    "agent_min_free_bytes": 1024**5,
}


def _limit_problems(settings: Settings, sources: Mapping[str, Source]) -> list[Problem]:
    """A number above its maximum (MAXIMA): a horizon of a million days, a takeover no keepalive can wait for."""
    problems: list[Problem] = []
    for option in OPTIONS:
        maximum = MAXIMA.get(option.field)
        value = getattr(settings, option.field)
        if maximum is not None and value > maximum:
            problems.append(
                Problem(
                    "invalid",
                    str(sources[option.field]),
                    f"{option.ini_name} {value} is above its maximum, {maximum}",
                )
            )
    return problems


def http_url_problem(url: str) -> str:
    """Why ``url`` is not an http(s) URL with a host ("" when it is), said after the URL."""
    try:
        parsed = urllib.parse.urlsplit(url)
        host = parsed.hostname
        parsed.port  # noqa: B018  # (raises ValueError for a port that is not a number)
    except ValueError as exc:
        return f"cannot be read as a URL ({exc})"
    if parsed.scheme not in ("http", "https"):
        return "is not an http:// or https:// URL"
    if not host:
        return "names no host"
    return ""


def command_problem(command: str) -> str:
    """Why a command cannot be split into words as a shell does (shlex) ("" when it can), said after it."""
    try:
        shlex.split(command)
    except ValueError as exc:
        return f"cannot be split into words ({exc})"
    return ""


#: ``scheme://user:password@``: the password part of a URL (up to the last @ before the path).
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s,/?#@:]*:)[^\s,/?#]*@")


def hide_url_password(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***`` (``https://user:***@host/``)."""
    return _URL_PASSWORD.sub(r"\1***@", text)


#: An http(s) URL in a list of addresses (``[sfa_notify] operators`` separates them by spaces or commas).
_WEBHOOK_URL = re.compile(r"https?://[^\s,]+", re.IGNORECASE)


def hide_webhooks(text: str) -> str:
    """``text`` with every http(s) URL in it shown as the outbox shows a webhook (``notify.channels.shown_webhook``:
    its origin and a digest of the whole URL), since a webhook's path, query or user part often holds a token."""
    from sfa_omf.notify.channels import shown_webhook  # the notifier's form, in one place

    return _WEBHOOK_URL.sub(lambda match: shown_webhook(match.group(0)), text)


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names this machine's loopback: ``localhost`` or a loopback address written as one
    (127.0.0.0/8, ``::1``, an IPv4-mapped loopback); what goes there never crosses a network. Any other name, or an
    address in another form (``127.1``), is taken as a remote host."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


#: What ``smtp_credentials_problem`` asks for: either way the password goes inside TLS.
SMTP_TLS_FIX = "set [sfa_notify] smtp_starttls = yes (STARTTLS), or smtp_tls = yes (TLS from the start, port 465)"


def smtp_credentials_problem(host: str, user: str, starttls: bool, tls: bool) -> str:
    """Why the SMTP login would send the password in clear ("" when it would not): a login (``user`` set) to a host
    that is not this machine's loopback over a connection without TLS. The notifier refuses to send then (before it
    connects), and ``config check`` says so."""
    if not user or starttls or tls or is_loopback_host(host):
        return ""
    return (
        f"the SMTP login (smtp_user {user!r}) to {host} would send the password in clear: the connection is not "
        f"encrypted (smtp_starttls and smtp_tls are no) and {host} is not this machine (127.0.0.1, ::1, localhost); "
        f"{SMTP_TLS_FIX}"
    )


def url_credentials_problem(url: str) -> str:
    """Why the user and password in ``url`` would cross the network in clear ("" when they would not): an http://
    URL with a user part to a host that is not this machine's loopback. Said after the URL."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return ""  # http_url_problem names it
    if parts.scheme.lower() != "http" or (parts.username is None and parts.password is None):
        return ""
    host = parts.hostname or ""
    if is_loopback_host(host):
        return ""
    return (
        f"holds a user and password, which would cross the network to {host} in clear over http://: use https:// "
        "(OAR's apache with TLS, or a TLS proxy in front of it), or reach the API on this machine (127.0.0.1)"
    )


#: The database drivers sfa-omf installs and runs on: SQLite's (in Python) and psycopg 3 for PostgreSQL.
DATABASE_DRIVERS = ("sqlite", "sqlite+pysqlite", "postgresql+psycopg")
_URL_EXAMPLES = "expected e.g. postgresql+psycopg://user:password@host:5432/name or sqlite:///path"


def database_url_problem(url: str) -> str:
    """Why sfa-omf cannot use ``url`` as the calendar's database ("" when it can): SQLAlchemy cannot parse it, or it
    names a database or driver sfa-omf does not run on (``postgresql://`` alone means psycopg2, not installed)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        drivername = make_url(url).drivername
    except (ArgumentError, ValueError) as exc:
        return f"SQLAlchemy cannot parse it ({exc}); {_URL_EXAMPLES}"
    if drivername in DATABASE_DRIVERS:
        return ""
    backend = drivername.partition("+")[0]
    if backend in ("postgresql", "postgres"):
        return (
            f"sfa-omf reaches PostgreSQL with psycopg 3: write postgresql+psycopg://... (not {drivername}://); "
            f"{_URL_EXAMPLES}"
        )
    return f"the calendar is an SQLite or a PostgreSQL database, not {drivername}; {_URL_EXAMPLES}"


#: A DNS label: letters, digits and '-', not at either end, at most 63 characters.
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def url_host(host: str) -> str:
    """``host`` as the host part of a URL: an IPv6 address in brackets, anything else as it is."""
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def host_problem(text: str, ports: str = "the ports are settings of their own") -> str | None:
    """Why ``text`` is not a host (a DNS name such as am.example.org, or an IP address): said after the value, with
    what to write instead; None when it is one. A URL, a port or a path would end up inside every URL made from it
    (``http://https://x.org:12345/`` in each sfi_config)."""
    try:
        ipaddress.ip_address(text)
        return None
    except ValueError:
        pass
    scheme, separator, rest = text.partition("://")
    if separator:
        host = rest.split("/")[0].rsplit(":", 1)[0] if rest else ""
        return f"is a URL: write the host alone ({host or 'am.example.org'}), without {scheme}:// ({ports})"
    if any(character.isspace() for character in text):
        return "holds a space: write one DNS name (am.example.org) or IP address"
    if "/" in text:
        return "holds a '/': write the host alone, a DNS name (am.example.org) or an IP address, without a path"
    if ":" in text:
        return f"holds a ':': write the host alone, without a port ({ports})"
    name = text[:-1] if text.endswith(".") else text
    if len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in name.split(".")):
        return "is not a DNS name (letters, digits, '-' and '.') nor an IP address: write one such as am.example.org"
    return None


def _ipv4_network(text: str) -> bool:
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return network.version == 4 and network.num_addresses >= 4


def _known_zone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True
