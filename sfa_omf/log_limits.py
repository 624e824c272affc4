"""How often the same failure is logged: a flood of it (a full disk under a busy aggregate) is one line a period,
which says how many were not logged since the last."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class OncePerPeriod:
    """Whether an event is logged now: the first, then at most one every ``period_s`` seconds. Thread-safe;
    ``clock`` (monotonic seconds) is a seam for tests."""

    def __init__(self, period_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period_s = period_s
        self.clock = clock
        self._lock = threading.Lock()
        self._last: float | None = None  # the clock at the last line
        self._missed = 0

    def due(self) -> int | None:
        """None when the event is not logged now; else how many were not logged since the last line (0 the
        first time)."""
        with self._lock:
            now = self.clock()
            if self._last is not None and now - self._last < self.period_s:
                self._missed += 1
                return None
            missed, self._missed, self._last = self._missed, 0, now
            return missed
