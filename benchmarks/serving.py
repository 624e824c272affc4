"""What the benchmarks that start their own ``sfa-omf`` server share: a free port and the command to run.

Imported as ``from serving import ...``: a benchmark run as a script has benchmarks/ first on sys.path.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys


def free_port() -> int:
    """A port nothing listens on now, on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sfa_omf_command() -> str:
    """The ``sfa-omf`` of this virtualenv (beside the running python), else the one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "sfa-omf")
    found = beside if os.access(beside, os.X_OK) else shutil.which("sfa-omf")
    if not found:
        raise SystemExit("sfa-omf is not installed in this virtualenv (pip install -e .)")
    return found
