"""Finding the testbed backend the configuration names (SFA_AGGREGATE_TYPE / [sfa_aggregate] type).

Built in: ``omf`` (the embedded default). Third-party backends register a factory (a callable taking the Settings
and returning a TestbedBackend) as a Python entry point in the group ``sfa_omf.testbeds``::

    [project.entry-points."sfa_omf.testbeds"]
    mylab = "mylab_backend:make_backend"
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from sfa_omf.errors import GeniError, Reason
from sfa_omf.testbed.base import TestbedBackend
from sfa_omf.testbed.embedded import EmbeddedTestbed

ENTRY_POINT_GROUP = "sfa_omf.testbeds"


def load_backend(name: str, settings: Any) -> TestbedBackend:
    """The backend called ``name``; UNSUPPORTED naming the known ones when there is none."""
    if name == "omf":
        return EmbeddedTestbed()
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name == name:
            factory = entry_point.load()
            backend: TestbedBackend = factory(settings)
            return backend
    known = ["omf", *sorted(entry_point.name for entry_point in entry_points(group=ENTRY_POINT_GROUP))]
    hint = " (the OAR backend arrives with its own issue)" if name == "oar" else ""
    raise GeniError(
        Reason.UNSUPPORTED, f"testbed backend {name!r} is not available{hint}; available: {', '.join(known)}"
    )
