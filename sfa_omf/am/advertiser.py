"""ListResources' advertisement: built from one calendar snapshot (calendar/snapshot.py), cached per calendar
generation, and answered from the cache while nothing it shows can have changed.

What an advertisement shows depends on the calendar (its generation says whether that changed, in any process) and
on the second of "now": the ``generated`` stamp and the horizon's ends are "now" and "now + horizon"; everything else
(which bookings are live, which nodes are available now, each node's free windows) changes only when "now" crosses
the start or end of a booking or of another held window (an external reservation), a grain boundary, or the point
where one enters the horizon. So a cached document is kept as a template with those two stamps left out, with the
span of seconds ``[built_s, until_s)`` in which nothing else can change; a call inside it costs a generation read
and a string join.
"""

from __future__ import annotations

import base64
import gc
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from rspec.advertisement import write_advertisement
from rspec.model import AdvertisedNode, Advertisement, Booking, FreeWindow, Horizon, LeaseView
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.generation import read_generation
from sfa_omf.calendar.intervals import align_down, align_up
from sfa_omf.calendar.queries import from_s, to_s
from sfa_omf.calendar.records import NodeRecord
from sfa_omf.calendar.snapshot import CalendarSnapshot, read_snapshot
from sfa_omf.times import format_time


@dataclass(frozen=True)
class _Cached:
    """A built advertisement: ``parts`` joined with "now" and "now + horizon" between them (``stamps``) give the
    document for any second in [built_s, until_s) at ``generation``."""

    generation: int
    built_s: int
    until_s: int
    parts: tuple[str, ...]
    stamps: tuple[int, ...]  # for each gap between parts: 0 = now, 1 = now + horizon

    def render(self, now: datetime, horizon_end: datetime) -> str:
        texts = (format_time(now), format_time(horizon_end))
        pieces = [self.parts[0]]
        for stamp, part in zip(self.stamps, self.parts[1:], strict=True):
            pieces.append(texts[stamp])
            pieces.append(part)
        return "".join(pieces)


# zlib's stream header for deflate with a 32 KiB window (as zlib.compress writes it at its default level).
_ZLIB_HEADER = b"\x78\x9c"
_ADLER_BASE = 65521


def deflate_segment(data: bytes, final: bool = False) -> bytes:
    """``data`` as raw deflate blocks that refer to nothing before them and end byte-aligned (a sync flush), so that
    segments can be concatenated into one deflate stream; ``final`` closes the stream."""
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)


def adler32_combine(first: int, second: int, second_length: int) -> int:
    """The Adler-32 of A + B from those of A and B and B's length (zlib's adler32_combine)."""
    remainder = second_length % _ADLER_BASE
    sum1 = first & 0xFFFF
    sum2 = (remainder * sum1) % _ADLER_BASE
    sum1 = (sum1 + (second & 0xFFFF) + _ADLER_BASE - 1) % _ADLER_BASE
    sum2 = (sum2 + (first >> 16) + (second >> 16) + _ADLER_BASE - remainder) % _ADLER_BASE
    return sum1 | (sum2 << 16)


@dataclass(frozen=True)
class _Deflated:
    """A cached advertisement's parts, each deflated once, with its Adler-32 and length: a geni_compressed answer
    is then the parts and the stamps (deflated per call: a few bytes) joined into one zlib stream, instead of
    compressing the whole document on every call."""

    cached: _Cached
    parts: tuple[tuple[bytes, int, int], ...]  # (raw deflate segment, adler32, length) per part

    @staticmethod
    def of(cached: _Cached) -> _Deflated:
        parts = []
        for part in cached.parts:
            data = part.encode("utf-8")
            parts.append((deflate_segment(data), zlib.adler32(data), len(data)))
        return _Deflated(cached, tuple(parts))

    def render(self, now: datetime, horizon_end: datetime) -> str:
        """base64(zlib stream) of the document at ``now``: what ``zlib.compress`` of it decompresses to."""
        texts = (format_time(now).encode("ascii"), format_time(horizon_end).encode("ascii"))
        segment, checksum, _ = self.parts[0]
        pieces = [_ZLIB_HEADER, segment]
        for stamp, (segment, adler, length) in zip(self.cached.stamps, self.parts[1:], strict=True):
            text = texts[stamp]
            pieces.append(deflate_segment(text))
            checksum = adler32_combine(checksum, zlib.adler32(text), len(text))
            pieces.append(segment)
            checksum = adler32_combine(checksum, adler, length)
        pieces.append(deflate_segment(b"", final=True))
        pieces.append(checksum.to_bytes(4, "big"))
        return base64.b64encode(b"".join(pieces)).decode("ascii")


class Advertiser:
    """Builds and caches ListResources' advertisement. Thread-safe; one per Aggregate (one per process)."""

    def __init__(
        self,
        database: Database,
        horizon: timedelta,
        free_windows: int,
        default_grain_s: int,
        advertised: Callable[[Sequence[NodeRecord]], tuple[AdvertisedNode, ...]],
    ) -> None:
        self.database = database
        self.horizon = horizon
        self.free_windows = free_windows
        self.default_grain_s = default_grain_s
        self.advertised = advertised
        self._cache: dict[tuple[LeaseView, bool], _Cached] = {}
        self._deflated: dict[tuple[LeaseView, bool], _Deflated] = {}  # made on the first compressed call
        self._building = threading.Lock()  # one build at a time: concurrent misses wait and then hit
        self.builds = 0  # how many documents were written (the rest of the calls were answered from the cache)

    def document(self, now: datetime, view: LeaseView, available_only: bool, compressed: bool = False) -> str:
        """The advertisement at ``now`` (its federated nodes; with ``available_only`` only those usable and free now),
        exactly as ``build`` writes it, from the cache when the calendar and the second allow. ``compressed``
        (geni_compressed): base64 of a zlib stream of it, made from parts deflated once per cached document."""
        key = (view, available_only)
        now_s = to_s(now)
        horizon_end = now + self.horizon
        with self.database.read() as session:
            generation = read_generation(session)
        cached = self._cache.get(key)
        if cached is None or not self._usable(cached, generation, now_s):
            with self._building:
                cached = self._cache.get(key)
                if cached is None or not self._usable(cached, generation, now_s):
                    cached = self._build_cached(now, view, available_only)
                    self._cache[key] = cached
        # Here the entry is either usable at this second or was just built at it (maybe at a newer generation).
        if not compressed:
            return cached.render(now, horizon_end)
        deflated = self._deflated.get(key)
        if deflated is None or deflated.cached is not cached:
            with self._building:  # deflating 25 MB takes a while: once, not once per waiting thread
                deflated = self._deflated.get(key)
                if deflated is None or deflated.cached is not cached:
                    deflated = self._deflated[key] = _Deflated.of(cached)
        return deflated.render(now, horizon_end)

    @staticmethod
    def _usable(cached: _Cached, generation: int, now_s: int) -> bool:
        return cached.generation == generation and cached.built_s <= now_s < cached.until_s

    def _build_cached(self, now: datetime, view: LeaseView, available_only: bool) -> _Cached:
        now_s = to_s(now)
        horizon_end = now + self.horizon
        with gc_paused():
            snapshot = read_snapshot(self.database, now_s)
            document = self.build(snapshot, now, view, available_only)
        self.builds += 1
        parts, stamps = _template(document, format_time(now), format_time(horizon_end), view)
        if self.horizon.microseconds or parts is None:
            # "now + horizon" would not move by whole seconds with "now" (or the stamps were not found): the
            # document is right for this second only.
            return _Cached(snapshot.generation, now_s, now_s + 1, (document,), ())
        until_s = valid_until(snapshot, now_s, to_s(horizon_end) - now_s)
        return _Cached(snapshot.generation, now_s, until_s, parts, stamps)

    def build(self, snapshot: CalendarSnapshot, now: datetime, view: LeaseView, available_only: bool) -> str:
        """The advertisement written from a snapshot read at ``now`` (no cache). "Available now" is false on every
        node held now, by a booking or an external reservation: the set geni_available leaves out."""
        busy_now = snapshot.busy_at(to_s(now))
        ad = self.advertisement(snapshot, now, available_only, busy_now)
        return write_advertisement(ad, view, held_now=busy_now).decode("utf-8")

    def advertisement(
        self, snapshot: CalendarSnapshot, now: datetime, available_only: bool, busy_now: set[str] | None = None
    ) -> Advertisement:
        """What the advertisement says at ``now``, as plain data: the nodes (all federated ones, or those usable and
        free now), their bookings and next free windows. ``busy_now``: ``snapshot.busy_at(now)`` when the caller has
        it already (the writer's ``held_now``, which this record does not carry)."""
        now_s = to_s(now)
        horizon_end = now + self.horizon
        nodes = snapshot.nodes
        if available_only:
            busy = snapshot.busy_at(now_s) if busy_now is None else busy_now
            nodes = tuple(node for node in nodes if node.state == "usable" and node.component_id not in busy)
        windows = snapshot.free_windows(nodes, now_s, to_s(horizon_end), self.free_windows)
        advertised = {node.component_id for node in nodes}
        times = _Times()
        bookings = []
        for lease in snapshot.leases:
            shown = tuple(node for node in lease.nodes if node in advertised)
            if shown:
                bookings.append(
                    Booking(lease.id, times[lease.start_s], times[lease.end_s], shown, slice_urn=lease.slice_urn)
                )
        return Advertisement(
            nodes=self.advertised(nodes),
            bookings=tuple(bookings),
            now=now,
            grain=timedelta(seconds=self.default_grain_s),
            horizon=Horizon(now, horizon_end, self.free_windows),
            free_windows={
                name: tuple(FreeWindow(times[start], times[end]) for start, end in found)
                for name, found in windows.items()
            },
        )


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector paused for a build. Why: a build allocates a few objects per lease, window and
    node (hundreds of thousands for 10 000 nodes) that all stay alive until it ends, so the collector's passes over
    them free nothing, yet they doubled the build's time (benchmarks/list_resources_bench.py, "uncached, gc on").
    Reference counting still frees everything else; the collector resumes after the build (it is process-wide: a
    build at a time per Advertiser keeps the pause short)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Times(dict[int, datetime]):
    """Epoch seconds -> aware datetime, each converted once (slot boundaries repeat across nodes and leases)."""

    def __missing__(self, seconds: int) -> datetime:
        moment = self[seconds] = from_s(seconds)
        return moment


def valid_until(snapshot: CalendarSnapshot, now_s: int, horizon_s: int) -> int:
    """The first second after ``now_s`` at which an advertisement of ``snapshot`` could differ other than by its
    "now" stamps: a booking or held window starts or ends, one enters the horizon (``start - horizon`` + 1: the
    window query and the gap search compare starts with now + horizon), or a grain boundary moves the first free
    window's start (align_up(now)) or the horizon's aligned end (align_down(now + horizon))."""
    candidates: list[int] = []
    for grain in {node.grain_s for node in snapshot.nodes}:
        candidates.append(align_up(now_s, grain) + 1)
        candidates.append(align_down(now_s + horizon_s, grain) + grain - horizon_s)
    # The earliest moment after now_s, kept as the boundaries go by (no list of 300 000 candidates).
    earliest = min(candidates, default=None)
    boundaries: Iterable[Iterable[tuple[int, int]]] = (
        ((lease.start_s, lease.end_s) for lease in snapshot.leases),
        *snapshot.held.values(),
    )
    for windows in boundaries:
        for start, end in windows:
            for moment in (start, end, start - horizon_s + 1):
                if now_s < moment and (earliest is None or moment < earliest):
                    earliest = moment
    return now_s + 1 if earliest is None else earliest


def _template(
    document: str, now_text: str, horizon_text: str, view: LeaseView
) -> tuple[tuple[str, ...], tuple[int, ...]] | tuple[None, tuple[()]]:
    """Split the document where the "now" stamps are: the root's ``generated`` attribute (first in the document)
    and the av:horizon element's ``start`` and ``end`` (written before any node; absent in SFA's leases view)."""
    generated = f' generated="{now_text}"'
    cut = document.find(generated)
    if cut < 0:
        return None, ()
    head = cut + len(' generated="')
    parts = [document[:head]]
    stamps = [0]
    rest_at = head + len(now_text)
    if view is not LeaseView.SFA_LEASES:
        horizon = f'<av:horizon start="{now_text}" end="{horizon_text}"'
        found = document.find(horizon, rest_at)
        if found < 0:
            return None, ()
        start_at = found + len('<av:horizon start="')
        end_at = start_at + len(now_text) + len('" end="')
        parts += [document[rest_at:start_at], document[start_at + len(now_text) : end_at]]
        stamps += [0, 1]
        rest_at = end_at + len(horizon_text)
    parts.append(document[rest_at:])
    return tuple(parts), tuple(stamps)
