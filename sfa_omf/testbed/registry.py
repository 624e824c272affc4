"""Finding the testbed backend the configuration names (SFA_AGGREGATE_TYPE / [sfa_aggregate] type).

Built in: ``embedded`` (the default, no external system), ``omf`` (an OMF 6 testbed, sfa_omf/testbed/omf) and
``oar`` (sfa_omf/testbed/oar). Third-party backends register a factory
(a callable taking the Settings and returning a TestbedBackend) as a Python entry point in the group
``sfa_omf.testbeds``::

    [project.entry-points."sfa_omf.testbeds"]
    mylab = "mylab_backend:make_backend"
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from sfa_omf.calendar.database import Database
from sfa_omf.errors import GeniError, Reason
from sfa_omf.images.provisioning import ONDEMAND
from sfa_omf.testbed.base import TestbedBackend
from sfa_omf.testbed.embedded import EmbeddedTestbed
from sfa_omf.testbed.gate import CircuitBreaker, default_slots, gated

ENTRY_POINT_GROUP = "sfa_omf.testbeds"


def load_backend(name: str, settings: Any, database: Database | None = None) -> TestbedBackend:
    """The backend called ``name``; UNSUPPORTED naming the known ones when there is none. The built-in OAR backend
    keeps its job table in the calendar's ``database``.

    A backend that talks to a testbed is returned behind a gate (sfa_omf/testbed/gate.py): at most
    ``[sfa_aggregate] backend_concurrency`` of its operations at once (auto: two fewer than ``[sfa_omf] threads``),
    and, with its client's breaker, none while the testbed is known to be down. The embedded backend talks to nothing
    that can hang: it is not gated."""
    if name == "embedded":
        # The provisioning mode decides which nodes a lease's image is installed on (sfa_omf/images/provisioning.py).
        return EmbeddedTestbed(database, getattr(settings, "provisioning_mode", ONDEMAND))
    backend = _testbed_backend(name, settings, database)
    slots = getattr(settings, "backend_concurrency", 0) or default_slots(getattr(settings, "threads", 8))
    client = getattr(backend, "client", None)
    breaker = getattr(client, "breaker", None)
    testbed = getattr(backend, "testbed_words", None) or f"the {backend.name} testbed"
    return gated(backend, slots, testbed, breaker if isinstance(breaker, CircuitBreaker) else None)


def _testbed_backend(name: str, settings: Any, database: Database | None) -> TestbedBackend:
    """The backend called ``name``, not gated."""
    if name == "omf":
        from sfa_omf.testbed.omf.backend import make_omf_backend

        return make_omf_backend(settings, database)
    if name == "oar":
        from sfa_omf.testbed.oar.backend import make_oar_backend  # only an OAR site pays for importing it

        if database is None:
            raise GeniError(Reason.UNSUPPORTED, "the OAR backend needs the calendar database")
        return make_oar_backend(settings, database)
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name == name:
            factory = entry_point.load()
            backend: TestbedBackend = factory(settings)
            return backend
    installed = sorted(entry_point.name for entry_point in entry_points(group=ENTRY_POINT_GROUP))
    known = ["embedded", "omf", "oar", *installed]
    raise GeniError(Reason.UNSUPPORTED, f"testbed backend {name!r} is not available; available: {', '.join(known)}")
