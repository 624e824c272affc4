"""The hosts' clocks: several hosts on one PostgreSQL must agree on the time.

The calendar's background tasks compare rows with the clock of the process that runs them (allocations not provisioned
in time, leases past their end): a leader whose clock is ahead of the other hosts' would release their fresh
allocations and end running leases early, and its node could then be booked twice. What matters is the hosts
disagreeing with each other: the database's clock is used for nothing but measuring (a single host whose clock is off
the database's harms no one, and a database whose clock is wrong must not stop every correct host from leading).

Each process measures its host's clock against PostgreSQL's (``measure_offset_s``: ``clock_timestamp()`` against
``time.time()``, half the round trip counted), the common reference through which the hosts' clocks are compared:
when ``serve`` starts, at each leadership check (in the lock's own statement) and at each refresh of its row in
``cluster_settings`` (cluster/agreement.py), which records it for the other hosts. Above WARN_OFFSET_S it is logged
(this host's clock or the database's is wrong). A process refuses to start, does not take the lead, and a leader
steps down, only when another live serving process's clock differs from its own by more than MAX_OFFSET_S and its own
is the further from the database's (``clashing_peer``): with one wrong host, it is that host; with a wrong database
clock, hosts that agree with each other have equal offsets and none refuses. A single host: warnings only. SQLite:
one host, one clock.

Like with like: a peer's recorded offset is up to a refresh old, and when the database's clock is stepped (its NTP
correcting it) every host's live offset moves by the step at once while the peers' rows still hold the old ones. So
a process remembers the database's clock against its own monotonic clock at each measurement (``ClockFrames``, for
STALE_S): a step of the database's clock is a new frame, a step of this host's own wall clock is not (its monotonic
clock does not move with it). A peer's row is compared in the frame(s) it can have been written in (by its stamp,
the database's clock): after a database step, a row not yet rewritten in the old frame, a rewritten one in the new,
and no host refuses; a host whose own clock jumps clashes in every frame at once (all are re-read through its wall
clock now), at its next check. The one blind spot: after the database's clock is stepped back by N s, a row stamped
in the N s after the step fits both frames and must clash in both (a jump of a host's own clock is then seen once the
peer's next row is stamped later: N s and a refresh at most). At start (preflight.clock_findings), with no frames
yet, a clash is judged again on the clashing processes' next rows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: An offset above this is logged as a warning (NTP is not doing its job, here or on the database's host).
WARN_OFFSET_S = 2.0
#: Two hosts' clocks further apart than this: the one further from the database's does not lead, nor start.
MAX_OFFSET_S = 30.0
#: The statement whose answer is the database's clock (seconds since the epoch, a float): clock_timestamp(), not
#: now(), which is the start of the transaction.
DATABASE_CLOCK_SQL = "extract(epoch FROM clock_timestamp())"
#: Two measurements of the database's clock against this host's monotonic clock closer than this are one frame (the
#: round trip's jitter); further apart, the database's clock was stepped between them.
FRAME_TOLERANCE_S = 1.0


@dataclass(frozen=True)
class PeerClock:
    """Another live serving process's clock offset to the database's (recorded in its cluster_settings row)."""

    process: str
    host: str
    offset_s: float
    #: When its row was written (the database's clock, seconds): tells a row rewritten since from the same one.
    seen_s: int = 0


class ClockFrames:
    """This process's recent measurements of the database's clock, each as its offset to this host's monotonic clock
    (which no step of the wall clock moves): one frame per step of the database's clock seen in the last ``keep_s``,
    with when it was first and last seen (this host's monotonic clock)."""

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        # (monotonic minus the database's clock, monotonic when first seen, when last seen), oldest first.
        self._frames: list[tuple[float, float, float]] = []

    def note(self, offset_s: float) -> None:
        """Remember a measurement (``offset_s``: this host's wall clock minus the database's, just measured)."""
        now = time.monotonic()
        base = offset_s - (time.time() - now)
        if self._frames and abs(self._frames[-1][0] - base) <= FRAME_TOLERANCE_S:
            self._frames[-1] = (self._frames[-1][0], self._frames[-1][1], now)  # the same frame, seen again
            return
        self._frames = [
            frame
            for frame in self._frames
            if now - frame[2] <= self.keep_s and abs(frame[0] - base) > FRAME_TOLERANCE_S
        ] + [(base, now, now)]

    def offsets_for(self, seen_s: float) -> list[float]:
        """This host's clock now minus the database's in each frame remembered in which a row stamped ``seen_s`` (the
        database's clock) can have been written, the newest last: this host's own clock's steps count in all of them,
        the database's only in the frames after it. Each frame's span, in its own database clock, runs from the last
        sight of the frame before it to the first sight of the one after (a row older than all: the oldest frame's;
        after a step back, a row can fit two)."""
        wall_minus_monotonic = time.time() - time.monotonic()
        slack = FRAME_TOLERANCE_S + 1  # (rows are stamped in whole seconds)
        found = []
        for index, (base, _, _) in enumerate(self._frames):
            after = -math.inf if index == 0 else self._frames[index - 1][2] - base - slack
            before = math.inf if index == len(self._frames) - 1 else self._frames[index + 1][1] - base + slack
            if after <= seen_s <= before:
                found.append(base + wall_minus_monotonic)
        return found


def offset_from(sent_at: float, database_epoch: float, answered_at: float) -> float:
    """This host's clock minus the database's: the database read its clock about half-way through the round trip
    (``sent_at`` and ``answered_at``: ``time.time()`` before and after)."""
    return (sent_at + answered_at) / 2 - database_epoch


def read_database_clock(connection: Any) -> tuple[float, float]:
    """(the database's clock in seconds since the epoch, this host's clock minus it), read once on ``connection``
    (a SQLAlchemy connection to PostgreSQL)."""
    from sqlalchemy import text

    sent_at = time.time()
    database_epoch = float(connection.execute(text(f"SELECT {DATABASE_CLOCK_SQL}")).scalar_one())
    return database_epoch, offset_from(sent_at, database_epoch, time.time())


def measure_offset_s(connection: Any) -> float:
    """This host's clock minus the database's, on ``connection`` (a SQLAlchemy connection to PostgreSQL)."""
    return read_database_clock(connection)[1]


def may_clash(offset_s: float) -> bool:
    """Whether any other host can make this one refuse: its offset must be further from the database's than this
    host's and differ from it by more than MAX_OFFSET_S, which needs this host's above MAX_OFFSET_S / 2. Below, the
    other hosts' offsets need not even be read."""
    return abs(offset_s) > MAX_OFFSET_S / 2


def clashing_peer(offset_s: float, peers: Iterable[PeerClock], frames: ClockFrames | None = None) -> PeerClock | None:
    """The other live process that makes this one (offset ``offset_s``) the likelier wrong clock: theirs differs from
    this host's by more than MAX_OFFSET_S and is nearer the database's (the database's clock breaks the tie between
    two hosts); with ``frames`` (``offset_s`` noted in them), in every frame of the database's clock its row can have
    been written in (ClockFrames.offsets_for) rather than against ``offset_s``. Of several, the nearest the database's.
    None: this process may start and lead."""

    def clashes(peer: PeerClock) -> bool:
        offsets = frames.offsets_for(peer.seen_s) if frames is not None else [offset_s]
        return bool(offsets) and all(
            abs(offset - peer.offset_s) > MAX_OFFSET_S and abs(offset) > abs(peer.offset_s) for offset in offsets
        )

    return min(filter(clashes, peers), key=lambda peer: abs(peer.offset_s), default=None)


def wrong_peers(offset_s: float, peers: Iterable[PeerClock]) -> list[PeerClock]:
    """The other live processes that are the likelier wrong clocks against this host's: they do not lead."""
    return [
        peer for peer in peers if abs(offset_s - peer.offset_s) > MAX_OFFSET_S and abs(peer.offset_s) > abs(offset_s)
    ]


def describe(offset_s: float) -> str:
    """The offset in words: how far, and which way."""
    return f"this host's clock is {abs(offset_s):.1f} s {'ahead of' if offset_s > 0 else 'behind'} the database's"


def warning_text(offset_s: float) -> str:
    """The warning of an offset above WARN_OFFSET_S: which clock is wrong, this host's or the database's, cannot be
    told from here."""
    return (
        f"{describe(offset_s)}: this host's clock or the database's is wrong; fix the time synchronisation of this "
        "host and the database's (NTP: chrony or systemd-timesyncd); a host whose clock differs from another live "
        f"host's by more than {MAX_OFFSET_S:g} s, and is further from the database's, will not lead the background "
        "tasks"
    )


def refusal_text(offset_s: float, peer: PeerClock) -> str:
    """Why a process does not lead, or start: ``peer``'s clock (see clashing_peer) is too far from this host's."""
    apart = offset_s - peer.offset_s
    return (
        f"this host's clock is {abs(apart):.1f} s {'ahead of' if apart > 0 else 'behind'} that of host {peer.host} "
        f"(process {peer.process}), more than the {MAX_OFFSET_S:g} s allowed between hosts, and further from the "
        f"database's ({describe(offset_s)}, {peer.host}'s {abs(peer.offset_s):.1f} s): its background tasks would "
        "release allocations and end leases at the wrong time for the other hosts; fix the time synchronisation of "
        "this host (NTP: chrony or systemd-timesyncd)"
    )


def peer_warning_text(offset_s: float, peer: PeerClock) -> str:
    """The warning, on a host whose clock is right, of another live process whose clock is too far off (it does not
    lead)."""
    apart = peer.offset_s - offset_s
    return (
        f"the clock of host {peer.host} (process {peer.process}) is {abs(apart):.1f} s "
        f"{'ahead of' if apart > 0 else 'behind'} this host's, more than the {MAX_OFFSET_S:g} s allowed between "
        f"hosts, and further from the database's: it will not lead the background tasks; fix its time "
        "synchronisation (NTP: chrony or systemd-timesyncd)"
    )
