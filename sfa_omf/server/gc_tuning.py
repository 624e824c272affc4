"""The garbage collector of a long-running server: what start-up built is frozen out of every later collection.

A serving process holds about 100 000 objects from start-up (modules, Twisted, SQLAlchemy's mappers and compiled
statements, lxml, schemas) that live as long as it does. CPython's full collections walk all of them: measured on
``sfa-omf serve`` under benchmarks/throughput_bench.py, collections took about a fifth of the server's CPU time, and
about 2 % once the start-up objects were frozen (docs/benchmarks.md, "Garbage collector"). Raising the thresholds
as well brought nothing more, so they stay CPython's.
"""

from __future__ import annotations

import gc


def freeze_start_up_objects() -> int:
    """Collect the garbage start-up left, then move every object alive now to the permanent generation, which no
    collection walks (they are still freed by reference counting when released). Returns how many were frozen.
    Call once, when the server is up and before it serves."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
