"""A gate and a circuit breaker between the aggregate's calls and its testbed: a testbed that hangs or is down slows
only the calls that need it.

Why: the server answers every caller (AM API v2 and v3, the web calendar, the node agents) from one pool of
``[sfa_omf] threads`` threads. A testbed that accepts connections and never answers held each call that needed it for
the testbed's whole time-out (OAR: ``[sfa_oar] timeout_s``), so a handful of Provisions took every thread and a
GetVersion from anybody else waited as long.

- **The gate** (``GatedBackend``): at most ``slots`` backend operations run at once (by default two threads fewer
  than the pool has, so GetVersion, ListResources, the web pages and the agents' heartbeats always find a thread). A
  call that gets no slot within ``wait_s`` is refused BUSY (14) before the backend is asked: the aggregate's own
  failure path then undoes what the call wrote (Provision's hold on its allocations, Renew's new end), so the call
  writes nothing. A backend's ``local_operations`` (OMF's renew and release, which only touch the calendar's
  database) take no slot. Status and Describe are not refused: a sliver whose testbed state cannot be read in time
  is shown with the calendar's state and says why, as when the testbed does not answer.
- **The breaker** (``CircuitBreaker``): fed by the testbed's client (OAR's: a request that timed out, or could not
  reach OAR's API), it opens for a cool-down (``cooldown_s``, doubling while the testbed keeps failing, at most
  ``MAX_COOLDOWN_S``); meanwhile calls that need the testbed are refused at once, UNAVAILABLE (11): no request is
  sent, so nothing can have been made and nothing is written. Once the cool-down is over, one request at a time
  tries the testbed again (the probe); its answer closes the breaker, its failure opens it for twice as long. The
  opening and the closing are logged once each.
- **Background tasks** (OAR's mirror and reconciler, OMF's slot boundaries) run on the reactor's own threads, never
  the calls' pool, and they do not take the calls' slots: a reconcile round lasts up to many time-outs, and counting
  it against the slots would turn calls BUSY while it runs. They are bounded by the breaker instead (a round during
  the cool-down fails at its first request, without waiting), so they neither starve calls nor pile up on a hung
  testbed. (The aggregate's sweep of ended leases calls ``release`` like a call, through the gate: one refused is
  logged, and the testbed ends the reservation at its end itself.)
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sfa_omf.am.states import Operational
from sfa_omf.calendar.records import LeaseRecord, SliverRecord
from sfa_omf.errors import GeniError, Reason
from sfa_omf.testbed.base import BackgroundTask, SliverHealth, TestbedBackend
from sfa_omf.testbed.unix_accounts import LocalAccount
from sfa_omf.times import format_time, utcnow

log = logging.getLogger(__name__)

# How long a call waits for a backend slot before it is refused BUSY: a few seconds cover a burst of calls on a
# healthy testbed (OAR: 0.3 to 1.5 s per request), and a caller refused then is not held for a testbed time-out.
SLOT_WAIT_S = 2.0
# The breaker's first cool-down, and its longest once it has doubled while the testbed keeps failing.
COOLDOWN_S = 15
MAX_COOLDOWN_S = 120


def default_slots(threads: int) -> int:
    """The backend operations that may run at once with ``threads`` call threads: all but two, at least one."""
    return max(1, threads - 2)


class CircuitOpen(Exception):
    """The breaker refuses a request to the testbed: it failed recently (``message`` says when, why, and when it is
    tried again). The request was not sent."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CircuitBreaker:
    """Whether the testbed (``testbed``: how messages name it, e.g. "OAR at http://...") may be asked now.

    Its client calls ``admit()`` before each request (CircuitOpen when it may not; True when this request is the
    probe), then ``failed(why, probe)`` when the request timed out or could not reach the testbed, else
    ``worked(probe)``. ``clock`` is monotonic seconds (a test passes its own), ``wall`` the time messages show."""

    def __init__(
        self,
        testbed: str,
        cooldown_s: float = COOLDOWN_S,
        max_cooldown_s: float = MAX_COOLDOWN_S,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = utcnow,
    ) -> None:
        if cooldown_s <= 0:
            raise ValueError("the cool-down must be positive")
        self.testbed = testbed
        self.cooldown_s = float(cooldown_s)
        self.max_cooldown_s = max(float(max_cooldown_s), self.cooldown_s)
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._open = False
        self._probing = False  # a probe's request is on its way
        self._current_s = self.cooldown_s  # the cool-down now (it doubles while the probes fail)
        self._retry_at = 0.0  # (clock) when the probe may go
        self._failed_at = self._wall()
        self._why = ""

    @property
    def is_open(self) -> bool:
        """Whether the testbed failed and has not answered since."""
        with self._lock:
            return self._open

    def check(self) -> None:
        """CircuitOpen when a request now would be refused (open, and in its cool-down or probing); claims nothing.
        The gate asks this before a call touches anything."""
        with self._lock:
            if self._open and (self._probing or self._clock() < self._retry_at):
                raise CircuitOpen(self._refusal())

    def admit(self) -> bool:
        """Before a request: CircuitOpen when it may not be sent; True when it is the probe (the cool-down is over:
        this one request tries the testbed again, the others are refused until it is answered)."""
        with self._lock:
            if not self._open:
                return False
            if self._probing or self._clock() < self._retry_at:
                raise CircuitOpen(self._refusal())
            self._probing = True
            return True

    def failed(self, why: str, probe: bool) -> None:
        """A request timed out or could not reach the testbed (``why``: its words). Opens the breaker; a failed
        probe doubles the cool-down. A request sent before the breaker opened that fails after changes nothing (a
        burst of hung calls timing out together is one failure, not many doublings)."""
        with self._lock:
            if self._open and not probe:
                return
            now = self._clock()
            if self._open:
                self._current_s = min(self._current_s * 2, self.max_cooldown_s)
            else:
                self._open = True
                self._current_s = self.cooldown_s
            self._probing = False
            self._retry_at = now + self._current_s
            self._failed_at = self._wall()
            self._why = why
            if not probe:  # logged once when it opens; the failed probes are told by the calls' own refusals
                log.warning(
                    "%s failed (%s): calls that need it are refused at once for %g s, then it is tried again",
                    self.testbed,
                    why,
                    self._current_s,
                )

    def worked(self, probe: bool) -> None:
        """The testbed answered a request (whatever it said): it is reachable, the breaker closes."""
        with self._lock:
            if probe:
                self._probing = False
            if not self._open:
                return
            self._open = False
            self._current_s = self.cooldown_s
            log.warning("%s answers again: calls go to it again", self.testbed)

    def abandoned(self, probe: bool) -> None:
        """A request ended with neither an answer nor a failure of the testbed (an error of this process): a probe
        lets another request try."""
        if probe:
            with self._lock:
                self._probing = False

    def _refusal(self) -> str:
        retry = self._wall() + timedelta(seconds=max(0.0, self._retry_at - self._clock()))
        when = "now, by another call" if self._probing else f"at {format_time(retry)}"
        return (
            f"{self.testbed} failed at {format_time(self._failed_at)} ({self._why}), so it is not asked until it has "
            f"rested {self._current_s:g} s; it is tried again {when}. Nothing was changed: call again then"
        )


class BackendGate:
    """At most ``slots`` backend operations at once; a call that gets no slot within ``wait_s`` is refused BUSY.
    ``breaker``: the testbed's (refuses a call at once while it is open)."""

    def __init__(
        self, slots: int, testbed: str, wait_s: float = SLOT_WAIT_S, breaker: CircuitBreaker | None = None
    ) -> None:
        if slots < 1:
            raise ValueError("a backend gate needs at least one slot")
        self.slots = slots
        self.testbed = testbed
        self.wait_s = wait_s
        self.breaker = breaker
        self._free = threading.BoundedSemaphore(slots)
        self._count_lock = threading.Lock()
        self._in_use = 0

    @property
    def in_use(self) -> int:
        """The slots held now (operations on the testbed)."""
        with self._count_lock:
            return self._in_use

    def _held(self, change: int) -> None:
        with self._count_lock:
            self._in_use += change

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a slot while the block runs; GeniError UNAVAILABLE (the breaker is open) or BUSY (no slot in time)
        before the block runs, so a refused call has asked the backend nothing."""
        if self.breaker is not None:
            try:
                self.breaker.check()
            except CircuitOpen as refused:
                raise GeniError(Reason.UNAVAILABLE, refused.message) from None
        if not self._free.acquire(timeout=self.wait_s):
            raise GeniError(Reason.BUSY, self.busy_message())
        self._held(1)
        try:
            yield
        finally:
            self._held(-1)
            self._free.release()

    @contextmanager
    def slot_or_none(self) -> Iterator[bool]:
        """A slot if one is free now (True), else False at once; never refuses and never waits: Status and Describe
        ask the backend once per provisioned sliver, and a wait for each would add up over a slice (they show the
        calendar's state instead)."""
        got = self._free.acquire(blocking=False)
        if got:
            self._held(1)
        try:
            yield got
        finally:
            if got:
                self._held(-1)
                self._free.release()

    def busy_message(self) -> str:
        """What a call refused for want of a slot is told."""
        return (
            f"{self.slots} calls are waiting on the testbed ({self.testbed}); nothing was changed, try again in a "
            "minute"
        )


class GatedBackend:
    """A testbed backend whose operations pass through a BackendGate. Everything else (its name, settings, client,
    ``isinstance`` checks) is the wrapped backend's: the rest of sfa-omf keeps seeing the backend it loaded."""

    inner: TestbedBackend
    gate: BackendGate
    name: str
    _OWN = frozenset({"inner", "gate", "name"})

    def __init__(self, inner: TestbedBackend, gate: BackendGate) -> None:
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "gate", gate)
        object.__setattr__(self, "name", inner.name)

    def __setattr__(self, name: str, value: Any) -> None:
        # A setting changed on the backend (its client, its cache time) is the wrapped backend's.
        if name in self._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.inner, name, value)

    # isinstance(gated, OarTestbed) holds (as for a transparent proxy): callers that look for a backend's own
    # features (the server's agent nodes on OAR) keep finding them.
    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return type(self.inner)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.inner, name)
        if name == "operate":  # PerformOperationalAction on the testbed (OMF's power switching): gated too
            return self._gated(value)
        return value

    def _gated(self, operation: Callable[..., Any]) -> Callable[..., Any]:
        def gated(*arguments: Any, **keywords: Any) -> Any:
            with self.gate.slot():
                return operation(*arguments, **keywords)

        return gated

    def provision(self, lease: LeaseRecord, owner: str, accounts: Sequence[LocalAccount]) -> None:
        """The backend's provision, once a slot is free."""
        with self.gate.slot():
            self.inner.provision(lease, owner, accounts)

    def renew(self, lease: LeaseRecord, new_end: datetime) -> None:
        """The backend's renew, once a slot is free (at once when the backend's renew talks to no testbed)."""
        with self._slot_for("renew"):
            self.inner.renew(lease, new_end)

    def release(self, lease: LeaseRecord) -> None:
        """The backend's release, once a slot is free (at once when the backend's release talks to no testbed)."""
        with self._slot_for("release"):
            self.inner.release(lease)

    def _slot_for(self, operation: str) -> contextlib.AbstractContextManager[None]:
        # A backend names the operations that talk to no testbed (OMF's renew and release only touch the calendar's
        # database): they cannot hang on the testbed, so a gate full of hung Provisions must not refuse them BUSY.
        if operation in getattr(self.inner, "local_operations", ()):
            return contextlib.nullcontext()
        return self.gate.slot()

    def update_users(self, lease: LeaseRecord, accounts: Sequence[LocalAccount]) -> None:
        """The backend's update_users, once a slot is free."""
        with self.gate.slot():
            self.inner.update_users(lease, accounts)

    def health(self, sliver: SliverRecord, lease: LeaseRecord, now: datetime) -> SliverHealth:
        """The backend's health when a slot is free; else the calendar's view at once, saying why (never a refusal:
        Status, Describe and every sliver answer, a Provision's included, show it)."""
        with self.gate.slot_or_none() as got:
            if got:
                return self.inner.health(sliver, lease, now)
        if sliver.operational_state == Operational.NOTREADY:  # the experimenter stopped it
            return SliverHealth(Operational.NOTREADY)
        state = Operational.READY if lease.start <= now < lease.end else Operational.NOTREADY
        return SliverHealth(state, f"{self.gate.busy_message()}; state from the calendar")

    def background_tasks(self) -> Sequence[BackgroundTask]:
        """The backend's own: they take no slot (the module's docstring says why); the breaker bounds them."""
        return self.inner.background_tasks()


def gated(backend: TestbedBackend, slots: int, testbed: str, breaker: CircuitBreaker | None = None) -> TestbedBackend:
    """``backend`` behind a gate of ``slots`` operations at once (``testbed``: how BUSY names it)."""
    return GatedBackend(backend, BackendGate(slots, testbed, breaker=breaker))
