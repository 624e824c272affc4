"""Start-up objects frozen out of the collector's walks; garbage made later is still collected (in a subprocess:
freezing the test process would keep every later test's start-up objects)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import gc, weakref
from sfa_omf.server.gc_tuning import freeze_start_up_objects

class Node:
    pass

kept = [Node() for _ in range(1000)]
frozen = freeze_start_up_objects()
assert frozen >= 1000, frozen
assert gc.get_freeze_count() == frozen
cycle = Node(); cycle.self = cycle
probe = weakref.ref(cycle)
del cycle
gc.collect()
assert probe() is None, "a cycle made after the freeze must still be collected"
print(frozen)
"""


def test_freeze_keeps_start_up_objects_and_still_collects_later_garbage() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) >= 1000
