"""File descriptors: ``serve`` raises its soft limit to the hard one, and each listener keeps its connections within
what the limit leaves (every connection holds a descriptor; with systemd's default soft limit of 1024, about a
thousand idle connections left the aggregate and the registry none to accept anyone else's)."""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("sfa_omf.server")

#: Descriptors kept for everything but the listeners' connections: database connections, log files, the trusted
#: roots read on a reload, LXC and OAR clients, the listening sockets themselves.
RESERVED_DESCRIPTORS = 128
#: The TLS listeners sharing the process's descriptors (the aggregate's and the registry's).
LISTENERS = 2
#: However low the descriptor limit, a listener takes at least this many connections.
FEWEST_CONNECTIONS = 16


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (systemd starts services with a soft limit of 1024); returns the
    limit served with (serve logs it in its start line)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1024 * 1024)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:  # e.g. above the kernel's nr_open: serve with what there is
            log.warning("open files limit left at %d (raising it to %d failed: %s)", soft, wanted, exc)
    return soft


def connections_allowed(soft_limit: int | None = None) -> int:
    """The connections one listener may keep open under the descriptor limit (the current soft one by default)."""
    if soft_limit is None:
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_limit == resource.RLIM_INFINITY:
        return 1 << 30
    return max(FEWEST_CONNECTIONS, (soft_limit - RESERVED_DESCRIPTORS) // LISTENERS)


def connection_limit(configured: int) -> int:
    """A listener's connection limit: ``[sfa_omf] max_connections``, or less when the descriptor limit is lower."""
    return min(configured, connections_allowed())
