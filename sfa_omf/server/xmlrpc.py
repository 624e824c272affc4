"""XML-RPC over HTTPS with Twisted: limits, the caller's chain, and a bounded thread pool for the synchronous core.

The transport knows nothing of GENI: it unmarshals the call, hands (caller chain, method, params) to a handler in a
worker thread, and marshals what comes back. A handler's answer is plain Python data; a handler that raises is a bug,
answered with an XML-RPC fault and logged with its traceback, and the server keeps serving.

Limits: a request whose declared body is larger than ``max_body_bytes`` is answered at once (fault 6) and the
connection closed, without reading the body (a route with limits of its own, the node agents' JSON API, is held to
those instead, and answers its own 413 in its own form); a body Twisted keeps in the temporary directory (100 000
bytes or more, or chunked) that cannot be written there (the directory full) is answered at once as the server's
error (fault 5; a 503 at the JSON routes), nothing run, and the connection closed; a header line or header block over
16 KiB is answered 431 and the connection closed; XML with a DOCTYPE or entity declaration is refused before it is
parsed; values nested deeper than ``MAX_DEPTH`` are refused while unmarshalling; any body that is not a well-formed
methodCall is a clean fault 1 (never an HTTP 500) saying what was wrong and in which <param>; a method name that is
no name (over 64 characters, or other characters than letters, digits, '_' and '.') is refused before any handler
runs, and shown only as a bounded repr; at most ``pool`` threads run calls at once and the rest wait their turn,
while the reactor keeps accepting and answering (a slow client only holds its own connection). Any HTTP method but
POST is answered 405 (``Allow: POST``).

A refusal of the transport's own once a call is read (a method name that is no name, a caller without a client
certificate) goes to the handler's ``refuse`` when it has one (the AM API answers with its envelope), else it is an
XML-RPC fault with the GENI code of its reason.

Time: no client holds a connection for ever by sending a byte now and then. A TLS handshake must end within
``handshake_deadline_s`` of the accept (30 s), a request arrive whole within ``request_deadline_s`` of its first byte
(408), a connection sending nothing is closed after the idle timeout, and a connection the server closes is cut off
once ``close_grace_s`` (15 s) has passed with no byte of the answer leaving and the client not closing its side of
TLS: the grace counts from when the answer has reached the client, never while a slow reader is still taking it. A
request's line and headers must arrive within ``header_deadline_s`` (20 s) of its first byte.

Space: a listener keeps at most ``max_connections`` open, ``max_connections_per_peer`` from one address (beyond,
closed at once). Pipelined requests wait while over ``max_unsent_bytes`` of the answers before them are unsent (1 MiB),
over ``max_pipelined`` (16) waiting close the connection, and a client taking no byte of its waiting answers for
``stall_deadline_s`` (60 s) is cut off. A call is parsed in a call thread, never in the reactor thread; a caller
without a client certificate is refused before its body is read.

Except: a method its handler declares inline (``inline_methods``: GetVersion, which reads no database and blocks on
nothing) is parsed and answered in the reactor thread when its body is small (INLINE_MAX_BODY_BYTES), so that it
answers while every call thread waits for the database (one locked table made GetVersion, and the monitoring probe
calling it, wait half a minute). The certificate check, the refusals and the handler's log line are the same.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import struct
import tempfile
import termios
import time
import traceback
import xmlrpc.client
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable
from urllib.parse import unquote_to_bytes
from xml.parsers import expat
from xml.parsers.expat import ExpatError

from dateutil import parser as dateutil_parser
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import connectionDone
from twisted.internet.threads import deferToThreadPool
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web import http, resource, server
from zope.interface import implementer  # type: ignore[import-untyped]  # Twisted's interfaces are zope's

from sfa_omf.errors import GeniError, Reason
from sfa_omf.log_limits import OncePerPeriod
from sfa_omf.server.reactor_calls import REACTOR_MAX_BODY_BYTES, REACTOR_METHODS, ReactorCalls
from sfa_omf.server.tls import peer_chain
from sfa_omf.trust.gid import GidChain
from sfa_omf.xmlsafe import UnsafeXml, XmlLimits, refuse_declarations

log = logging.getLogger("sfa_omf.server")

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_HANDSHAKE_DEADLINE_S = 30.0  # a TLS handshake is a few round trips, even from the other side of the world
DEFAULT_CLOSE_GRACE_S = 15.0  # as long as Twisted itself waits for a client after an idle timeout (abortTimeout)
#: Linux's SIOCOUTQ (linux/sockios.h, equal to TIOCOUTQ): the bytes of a TCP socket the peer has not acknowledged yet.
SIOCOUTQ = termios.TIOCOUTQ
DEFAULT_REQUEST_DEADLINE_S = 120.0  # honest clients send a request in one go...
#: A request's line and headers (a few hundred bytes, at most MAX_HEADER_BYTES) must come within this of their first
#: byte: only a body may take the longer request deadline.
DEFAULT_HEADER_DEADLINE_S = 20.0
#: A pipelined request is not started while this much of the answers before it is still unsent: a client pipelining
#: requests and reading nothing made the server render them all and buffer their answers (gigabytes).
DEFAULT_MAX_UNSENT_BYTES = 1024 * 1024
#: The most requests a client may have pipelined behind the one in progress (their heads received, not yet started);
#: beyond, the connection is closed after the answer in progress. No XML-RPC client or browser pipelines this deep.
DEFAULT_MAX_PIPELINED = 16
#: A connection whose client takes no byte of the answers waiting for it for this long is cut off.
DEFAULT_STALL_DEADLINE_S = 60.0
#: Connections a listener keeps open at once, in all and from one peer address; beyond, a new one is closed at once.
DEFAULT_MAX_CONNECTIONS = 2048
DEFAULT_MAX_CONNECTIONS_PER_PEER = 64
REFUSAL_LOG_PERIOD_S = 60.0  # a peer turned away is logged at most this often
#: Twisted keeps a request body of this many bytes or more, or a chunked one, in a file of the temporary directory
#: ($TMPDIR; twisted.web.http._getContentFile), not in memory.
SPOOLED_BODY_BYTES = 100_000
#: What the caller is told when its body cannot be kept there (the directory full): the server's trouble.
SPOOL_FULL_MESSAGE = (
    "the aggregate has no room to take in this request (its temporary directory is full): nothing was done; try "
    "again later, and tell the testbed's operator if it lasts"
)
SLOWEST_UPLOAD_BYTES_PER_S = 32 * 1024  # ...and a body of the largest size taken at this rate has the time it needs
#: A closed connection's answer is let go on for as long as it takes at this rate (plus a grace), however slowly its
#: client keeps taking it: a client taking a byte per grace must not hold a connection for hours.
SLOWEST_DOWNLOAD_BYTES_PER_S = SLOWEST_UPLOAD_BYTES_PER_S
TEXT_BUFFER_BYTES = 64 * 1024  # expat hands text over in pieces of at most this (a credential: one or two)
FAULT_TOOBIG = 6
FAULT_BADARGS = 1
FAULT_SERVERERROR = 5
#: How deep XML-RPC values may nest (arrays in structs in arrays...). The AM API needs 4; 32 leaves room.
MAX_DEPTH = 32
#: A header line, or all the headers of a request, may be this long (Twisted's own limit for the header block).
MAX_HEADER_BYTES = 16 * 1024
#: What a method name may be: every method of the AM API and the registry is a short word.
METHOD_NAME = re.compile(r"[A-Za-z0-9_.]{1,64}")
#: Caller text quoted in a message or a log line is cut to this many characters before its repr.
SHOWN_CHARS = 80
#: A call of an inline method (a handler's ``inline_methods``) is read in the reactor thread when its body is at most
#: this long (GetVersion with its options: a few hundred bytes); a larger one is read and run in a call thread. Kept
#: small: what the reactor parses holds every connection, and 64 KiB of dateTime values took 30 ms to parse (three
#: clients sending them made a plain GetVersion 4.5 times slower for everyone).
INLINE_MAX_BODY_BYTES = 4 * 1024


#: Request bodies that could not be kept in the temporary directory (at most a line a minute, whichever listener).
_UNSPOOLED_LOG = OncePerPeriod(REFUSAL_LOG_PERIOD_S)
#: Connections cut off because reading them raised (a bug): at most a line with its traceback a minute.
_READ_FAILURE_LOG = OncePerPeriod(REFUSAL_LOG_PERIOD_S)


def shown_method(method: str) -> str:
    """A method name as a log line or a message may show it: a valid name as it is, anything else as the repr of its
    first SHOWN_CHARS characters (never a raw newline, never megabytes)."""
    if METHOD_NAME.fullmatch(method):
        return method
    return repr(method[:SHOWN_CHARS]) + (f" ({len(method)} characters)" if len(method) > SHOWN_CHARS else "")


class BadCall(ValueError):
    """A methodCall the transport refuses; its text is what the caller is told."""


class TooDeep(BadCall):
    """An XML-RPC value nested deeper than MAX_DEPTH."""


#: What a value of each XML-RPC type must be, for the message when the stdlib cannot convert one.
_EXPECTED = {
    **dict.fromkeys(
        ("int", "i1", "i2", "i4", "i8", "biginteger"),
        "must be a whole number of at most 4300 digits",  # 4300: Python's bound on int() of a string
    ),
    "boolean": "must be 0 or 1",
    "double": "must be a number such as 1.5",
    "float": "must be a number such as 1.5",
    "bigdecimal": "must be a decimal number such as 1.5",
    "base64": "must hold base64 data",
    "struct": "must hold <member>s of a <name> and a <value> each",
}


def _checked_datetime(unmarshaller: Any, data: str) -> None:
    """<dateTime.iso8601> must hold a time (the stdlib keeps any text): ISO 8601 in any of its forms, basic or
    extended (20261201T10:00:00, 2026-12-01T10:00:00Z, 20261201T100000, an offset, a fraction of a second). A time
    with an offset is converted to UTC; one without is UTC already. The value is kept in the stdlib's form
    (20261201T10:00:00, with the fraction when there is one), so that whoever reads it reads UTC."""
    text = data.strip()
    try:
        moment = dateutil_parser.isoparse(text)
    except ValueError as exc:
        raise BadCall(
            f"<dateTime.iso8601> {text[:40]!r} is not a time such as 20261201T10:00:00 or 2026-12-01T10:00:00Z"
        ) from exc
    if moment.tzinfo is not None:
        try:
            moment = moment.astimezone(UTC).replace(tzinfo=None)
        except OverflowError as exc:  # year 1 or 9999 moved out of the calendar by its offset
            raise BadCall(
                f"<dateTime.iso8601> {text[:40]!r} is out of range once converted to UTC (times from 1970 to before "
                "9000 are accepted)"
            ) from exc
    xmlrpc.client.Unmarshaller.end_dateTime(unmarshaller, _stdlib_datetime_text(moment))


def _stdlib_datetime_text(moment: datetime) -> str:
    """A naive UTC datetime as the stdlib writes a dateTime (20261201T10:00:00), with its fraction if any; the year
    always in four digits (strftime writes year 1 as "1")."""
    text = (
        f"{moment.year:04d}{moment.month:02d}{moment.day:02d}T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
    return text + (f".{moment.microsecond:06d}" if moment.microsecond else "")


class _BoundedUnmarshaller(xmlrpc.client.Unmarshaller):
    """The standard unmarshaller, refusing values nested deeper than MAX_DEPTH as soon as it meets them, an <array>
    without its <data>, and a dateTime that is no time (the stdlib accepts both silently). Every refusal is a BadCall
    naming the <param> (counted from 1) it was found in and what was expected."""

    dispatch = {**xmlrpc.client.Unmarshaller.dispatch, "dateTime.iso8601": _checked_datetime}  # noqa: RUF012

    def __init__(self, use_builtin_types: bool = False) -> None:
        super().__init__(use_builtin_types=use_builtin_types)
        self._arrays: list[bool] = []  # for each open <array>: has its <data> begun?
        self._params_begun = 0  # the <param> elements begun so far: the last is where a value is being read

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        local = tag.rpartition(":")[2]  # the stdlib reads <x:array> as <array>: so do the bounds
        if local in ("array", "struct") and len(self._marks) >= MAX_DEPTH:
            raise TooDeep(self._where(f"values are nested deeper than {MAX_DEPTH} levels"))
        if local == "param":
            self._params_begun += 1
        elif local == "array":
            self._arrays.append(False)
        elif local == "data" and self._arrays:
            self._arrays[-1] = True
        super().start(tag, attrs)

    def end(self, tag: str) -> None:
        local = tag.rpartition(":")[2]
        if local == "array" and not (self._arrays and self._arrays.pop()):
            raise BadCall(self._where("an <array> without <data>"))
        try:
            super().end(tag)
        except BadCall as exc:  # ours (a dateTime): the text says what; add where
            raise BadCall(self._where(str(exc))) from exc
        except (ValueError, TypeError, IndexError, ArithmeticError) as exc:  # the stdlib's conversions
            expected = _EXPECTED.get(local, "could not be read")
            text = "".join(self._data)  # the element's own text (start() clears it, end() leaves it)
            value = "" if local == "struct" else f", not {text[:40]!r}"
            raise BadCall(self._where(f"<{local}> {expected}{value}")) from exc

    def _where(self, message: str) -> str:
        return f"param {self._params_begun}: {message}" if self._params_begun else message


def loads(body: bytes) -> tuple[tuple[Any, ...], str | None]:
    """(params, method name) of a methodCall, with the depth bound; ValueError (or another parse error) if it is
    not one."""
    unmarshaller = _BoundedUnmarshaller(use_builtin_types=False)
    # The stdlib's ExpatParser, but with expat's text buffered: unbuffered, expat hands character data over at every
    # line end and every entity, and an escaped credential (its XML as a string, each '<' an '&lt;') came as about
    # 470 calls of the unmarshaller's data() per call of ours, a third of reading the request. The text is the same.
    parser = expat.ParserCreate(None, None)
    parser.buffer_text = True
    parser.buffer_size = TEXT_BUFFER_BYTES
    parser.StartElementHandler = unmarshaller.start
    parser.EndElementHandler = unmarshaller.end
    parser.CharacterDataHandler = unmarshaller.data
    unmarshaller.xml(None, None)  # type: ignore[arg-type]  # as ExpatParser does: no decoding, expat gives str
    parser.Parse(body, True)
    return unmarshaller.close(), unmarshaller.getmethodname()


def refuse_and_close(
    channel: Any,
    status: bytes,
    body: bytes = b"",
    content_type: str = "text/xml; charset=utf-8",
    headers: Mapping[bytes, bytes] | None = None,
) -> None:
    """Answer ``status`` (with these ``headers``) and close the connection now, without reading what the client still
    sends (refusing an oversized body or header must not wait for it)."""
    if getattr(channel, "_sfa_omf_refused", False) or channel.transport is None:
        return
    channel._sfa_omf_refused = True
    head = f"HTTP/1.1 {status.decode('ascii')}\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
    content_header = f"Content-Type: {content_type}\r\n" if body else ""
    extra = "".join(f"{name.decode('ascii')}: {value.decode('ascii')}\r\n" for name, value in (headers or {}).items())
    channel.transport.write((head + content_header + extra + "\r\n").encode("ascii") + body)
    channel.loseConnection()


def _kernel_unacknowledged_bytes(connection: socket.socket) -> int:
    """The bytes written to ``connection`` that its peer has not acknowledged yet (the kernel's send queue); 0 where
    the kernel does not tell (not Linux, or a socket already closed)."""
    try:
        answer = fcntl.ioctl(connection.fileno(), SIOCOUTQ, struct.pack("i", 0))
    except (OSError, ValueError):
        return 0
    return int(struct.unpack("i", answer)[0])


def _cancel(call: Any) -> None:
    """Cancel a pending callLater; None, or one that ran already, is fine."""
    if call is not None and call.active():
        call.cancel()


@implementer(IHandshakeListener)
class GuardedChannel(http.HTTPChannel):
    """Twisted's HTTP channel, answering a header line over the limit with 431 and closing (the default drops the
    line and may leave a TLS connection waiting), and a request that does not arrive whole within
    ``request_deadline_s`` of its first byte with 408 and closing; cutting off a TLS handshake not done within
    ``handshake_deadline_s`` of the accept, and a connection being closed whose client neither closes its side nor
    takes a byte of the answer for ``close_grace_s``."""

    MAX_LENGTH = MAX_HEADER_BYTES
    totalHeadersSize = MAX_HEADER_BYTES
    #: Twisted's idle timeout restarts at every byte received, so a client sending a byte now and then held a
    #: connection (and its buffers) for ever; this bounds a request's arrival as a whole. make_site sets it.
    request_deadline_s: float = DEFAULT_REQUEST_DEADLINE_S
    #: From the accept to the end of the TLS handshake. Twisted's TLS layer hands no handshake byte to the channel,
    #: so only the idle timeout (120 s) bounded a handshake before; a deadline of its own is shorter and says so.
    handshake_deadline_s: float = DEFAULT_HANDSHAKE_DEADLINE_S
    #: The grace after the server closes: TLS waits for the client's close_notify, which a client may never send
    #: while it goes on sending bytes (every closing path: 408/431/400/413, idle timeout, Connection: close). It
    #: counts while no byte of the answer leaves: an HTTP/1.0 or ``Connection: close`` answer is closed as soon as it
    #: is buffered, and a slow reader may take it for minutes.
    close_grace_s: float = DEFAULT_CLOSE_GRACE_S
    #: Twisted's own abort after an idle timeout counts from the close, and so cut off a kept-alive slow reader
    #: still taking its answer; None (Twisted's documented "no abort") leaves that close to the close grace too.
    abortTimeout = None  # type: ignore[assignment]  # Twisted's stub says int; its docs allow None
    #: From a request's first byte to the end of its headers (408 after): a request line or headers dripped a byte at
    #: a time held a connection for the whole request deadline. make_site sets it.
    header_deadline_s: float = DEFAULT_HEADER_DEADLINE_S
    #: Pipelined requests wait while this many bytes of the answers before them are unsent. make_site sets it.
    max_unsent_bytes: int = DEFAULT_MAX_UNSENT_BYTES
    #: Requests pipelined behind the one in progress beyond this close the connection. make_site sets it.
    max_pipelined: int = DEFAULT_MAX_PIPELINED
    #: A client taking no byte of its waiting answers for this long is cut off. make_site sets it.
    stall_deadline_s: float = DEFAULT_STALL_DEADLINE_S
    _request_deadline: Any = None
    _header_deadline: Any = None
    _held = False  # a request is done and the next pipelined one waits for the client to take the answers
    _stall_watch: Any = None
    _last_unsent = 0  # the unsent bytes at the stall watch's last look
    _last_progress = 0.0  # time.monotonic() when the client last took a byte of an answer (as the watch saw)
    _turned_away = False  # over the listener's connection limits: closed as soon as it is made
    _counted_peer: str | None = None  # the peer address this connection counts against (the site's limits)
    _request_begun = False  # a byte other than CR or LF has come since the last request was received whole
    _handshake_deadline: Any = None
    _close_deadline: Any = None
    _fewest_unsent_bytes = 0  # since the close: the fewest bytes of the answer seen not yet taken by the client
    _let_go_until = 0.0  # time.monotonic() after which a closed connection is cut off, progress or not
    _closing = False  # loseConnection was called: what still comes is not read
    _last_answer = False  # close_after_answer was called: the answer in progress is the connection's last
    _lost = False  # connectionLost was called
    _sfa_omf_refused = False

    def connectionMade(self) -> None:
        super().connectionMade()
        if self._turned_away:  # closed at once: the fd is back within a reactor turn, before any TLS work
            self._abort()
            return
        if isinstance(self.transport, TLSMemoryBIOProtocol):  # the project's listeners are all TLS
            self._handshake_deadline = self.callLater(self.handshake_deadline_s, self._handshake_too_slow)

    def handshakeCompleted(self) -> None:
        """Twisted's TLS layer says the handshake is done: the handshake deadline no longer applies."""
        _cancel(self._handshake_deadline)
        self._handshake_deadline = None

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return  # nothing more is read (no request starts), and a byte must not restart the idle timeout
        if not self._handlingRequest and not self._request_begun:
            if data.strip(b"\r\n"):
                self._request_begun = True
                self._start_request_deadline()  # from the request's first byte
            elif self._request_deadline is None:
                # Blank lines between kept-alive requests (HTTP allows them) start no request, yet lone CRs or LFs
                # never make a line (up to 16 KiB) and each restarts the idle timeout: they are bounded too.
                self._start_request_deadline()
        try:
            super().dataReceived(data)
        except Exception:
            # Nothing foreseen raises here (a temporary directory too full for a body is answered by LimitedRequest).
            # Should anything, Twisted's TLS layer hands the same bytes again at the close, which raises again, and
            # connectionLost never runs: the connection's descriptor and its count against its peer were never
            # released (64 such locked an address out until a restart). Read nothing more, and cut it off.
            self._closing = True
            missed = _READ_FAILURE_LOG.due()
            if missed is not None:
                log.error(
                    "reading a request from %s failed: connection cut off (logged at most once a minute; %d more "
                    "since the last line): %s",
                    self._peer(),
                    missed,
                    traceback.format_exc(),
                )
            self._abort()

    def allHeadersReceived(self) -> None:
        _cancel(self._header_deadline)
        self._header_deadline = None
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        if self._closing:
            # The connection is being closed (a refusal answered while the body came, a stop): the request is not
            # run, even when the rest of its body came in the same read as the refusal.
            return
        _cancel(self._request_deadline)
        _cancel(self._header_deadline)
        self._request_deadline = self._header_deadline = None
        self._request_begun = False
        super().allContentReceived()

    def loseConnection(self) -> None:
        first_close = not self._closing
        self._closing = True
        super().loseConnection()  # the TLS layer queues its close_notify after the rest of the answer
        if first_close and not self._lost:
            self._fewest_unsent_bytes = self.unsent_bytes()
            taking_s = self._fewest_unsent_bytes / SLOWEST_DOWNLOAD_BYTES_PER_S
            self._let_go_until = time.monotonic() + self.close_grace_s + taking_s
            self._close_deadline = self.callLater(self.close_grace_s, self._check_close)

    def close_after_answer(self) -> None:
        """Serve no further request on this connection (a stop): close it now when no request is in progress, else
        right after the answer to the one in progress, which says ``Connection: close``. A request the client
        pipelined behind that one is never read, so never run: the close tells its client to send it again."""
        if self._closing:
            return
        if not self._handlingRequest or self._held:  # held: answered, the next request not started
            self.loseConnection()  # flushes what was written, then closes
            return
        self._last_answer = True

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        if self._last_answer:
            headers.setRawHeaders(b"connection", [b"close"])
            self.persistent = False
        super().writeHeaders(version, code, reason, headers)

    def requestDone(self, request: http.Request) -> None:
        """Twisted starts the next pipelined request at once, whether or not the client takes the answers (its pause
        only stops reading from the network): here the next waits while over ``max_unsent_bytes`` are unsent, and a
        client with over ``max_pipelined`` requests waiting has its connection closed after this answer."""
        if self._last_answer:
            self.persistent = False  # the answer's head may have left before the stop: close all the same
        # What the client sent behind this request: buffered by the channel while the request was in progress, or
        # still in the line parser's buffer when the request was answered at once (a refusal, a 405).
        unparsed: bytes = self._buffer
        buffered = b"".join(self._dataBuffer)
        self._dataBuffer = [buffered] if buffered else []
        if not self.persistent or not (buffered or unparsed):  # nothing waits: nothing to hold
            super().requestDone(request)
            return
        # The heads of the requests pipelined behind this one (one split between the two buffers is missed).
        waiting = buffered.count(b"\r\n\r\n") + unparsed.count(b"\r\n\r\n")
        if waiting > self.max_pipelined:
            log.info(
                "%s pipelined %d requests or more behind the one answered (at most %d): connection closed",
                self._peer(),
                waiting,
                self.max_pipelined,
            )
            self.persistent = False
            super().requestDone(request)
            return
        if self.unsent_bytes() <= self.max_unsent_bytes:
            super().requestDone(request)
            return
        # Hold the next request: as Twisted's requestDone, but the channel stays "handling a request", so that what
        # comes is buffered (and reading pauses past 16 KiB); resumeProducing or the stall watch starts it.
        if request is not self.requests[0]:
            raise TypeError("a request finished out of order")
        del self.requests[0]
        self._held = True
        self._watch_stall()

    def _release(self) -> None:
        """Start the held pipelined request: the rest of Twisted's requestDone."""
        self._held = False
        if not self._waitingForTransport:
            producer: Any = self._networkProducer
            producer.resumeProducing()
        self._handlingRequest = False
        if self._savedTimeOut:
            self.setTimeout(self._savedTimeOut)
        data = b"".join(self._dataBuffer)
        self._dataBuffer = []
        self.setLineMode(data)

    def pauseProducing(self) -> None:
        """The transport's buffer is full: the client is not taking the answers as fast as they come; watch it."""
        super().pauseProducing()
        self._watch_stall()

    def resumeProducing(self) -> None:
        """The transport's buffer has drained: a held request may start."""
        super().resumeProducing()
        if self._held and not self._lost and self.unsent_bytes() <= self.max_unsent_bytes:
            self._release()

    def _watch_stall(self) -> None:
        if self._stall_watch is None and not self._lost:
            self._last_unsent = self.unsent_bytes()
            self._last_progress = time.monotonic()
            self._stall_watch = self.callLater(self._stall_period_s(), self._check_stall)

    def _stall_period_s(self) -> float:
        return min(1.0, self.stall_deadline_s / 4)

    def _check_stall(self) -> None:
        """Has the client taken bytes of its answers since the last look? A held request starts once the unsent
        bytes are few enough (the transport tells of a drained buffer only, not of the kernel's); a client taking
        nothing for ``stall_deadline_s`` is cut off; nothing unsent and nothing held ends the watch."""
        self._stall_watch = None
        if self._lost:
            return
        unsent = self.unsent_bytes()
        now = time.monotonic()
        if unsent < self._last_unsent:
            self._last_progress = now
        self._last_unsent = unsent
        if self._held and unsent <= self.max_unsent_bytes:
            self._release()  # may hold again and watch anew
        if self._stall_watch is not None or self._lost or (unsent == 0 and not self._held):
            return
        if now - self._last_progress >= self.stall_deadline_s:
            log.info(
                "%s took no byte of its answers for %g s (%d bytes unsent): connection cut off",
                self._peer(),
                self.stall_deadline_s,
                unsent,
            )
            self._abort()
            return
        self._stall_watch = self.callLater(self._stall_period_s(), self._check_stall)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        for call in (
            self._request_deadline,
            self._handshake_deadline,
            self._close_deadline,
            self._header_deadline,
            self._stall_watch,
        ):
            _cancel(call)
        self._request_deadline = self._handshake_deadline = self._close_deadline = None
        self._header_deadline = self._stall_watch = None
        self._lost = True
        if self._counted_peer is not None:
            site: Any = self.factory
            site.connection_closed(self._counted_peer)
            self._counted_peer = None
        super().connectionLost(reason)

    def _start_request_deadline(self) -> None:
        _cancel(self._request_deadline)
        _cancel(self._header_deadline)
        self._request_deadline = self.callLater(self.request_deadline_s, self._request_too_slow)
        self._header_deadline = self.callLater(self.header_deadline_s, self._headers_too_slow)

    def _request_too_slow(self) -> None:
        self._request_deadline = None
        log.info("a request not received whole within %g s: connection closed", self.request_deadline_s)
        refuse_and_close(self, b"408 Request Timeout")

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        log.info(
            "a request line and headers not received within %g s (%s): connection closed",
            self.header_deadline_s,
            self._peer(),
        )
        refuse_and_close(self, b"408 Request Timeout")

    def _handshake_too_slow(self) -> None:
        self._handshake_deadline = None
        log.info(
            "no TLS handshake within %g s of connecting (%s): connection cut off",
            self.handshake_deadline_s,
            self._peer(),
        )
        self._abort()  # nothing can be said to a client without TLS

    def unsent_bytes(self) -> int:
        """The bytes written to this connection that the client has not taken yet: what Twisted's TLS layer holds
        back, what its TCP transport still buffers, and what the kernel has not had acknowledged."""
        transport: Any = self.transport
        held_back = 0
        if isinstance(transport, TLSMemoryBIOProtocol):
            held_back = sum(len(piece) for piece in transport._appSendBuffer)
            transport = transport.transport
        if transport is None:
            return held_back
        buffered: int = len(transport.dataBuffer) - transport.offset + transport._tempDataLen  # its FileDescriptor
        try:
            handle = transport.getHandle()
        except AttributeError:  # its socket is closed and gone already (the kernel holds nothing of it)
            return held_back + buffered
        return held_back + buffered + _kernel_unacknowledged_bytes(handle)

    def _check_close(self) -> None:
        """A close grace has passed since the close or the last check: wait another one if the client has taken
        bytes of the answer since (fewer are unsent than ever before), else cut the connection off. Only bytes of
        the answer reaching the client make a new low, so a client cannot hold the connection by other means."""
        self._close_deadline = None
        unsent = self.unsent_bytes()
        if unsent < self._fewest_unsent_bytes and time.monotonic() < self._let_go_until:
            self._fewest_unsent_bytes = unsent
            self._close_deadline = self.callLater(self.close_grace_s, self._check_close)
            return
        log.info(
            "a connection closed by the server (%s), its client neither closing its side nor taking a byte of the "
            "answer for %g s (%d bytes unsent): cut off",
            self._peer(),
            self.close_grace_s,
            unsent,
        )
        self._abort()

    def _abort(self) -> None:
        transport: Any = self.transport  # TLSMemoryBIOProtocol (or a TCP transport): both can abort
        if transport is not None:
            transport.abortConnection()

    def _peer(self) -> str:
        transport: Any = self.transport
        return str(transport.getPeer()) if transport is not None else "gone"

    def lineLengthExceeded(self, line: bytes) -> None:
        refuse_and_close(self, b"431 Request Header Fields Too Large")

    def _respondToBadRequestAndDisconnect(self) -> None:
        refuse_and_close(self, b"400 Bad Request")


@dataclass(frozen=True)
class CallContext:
    """Who is calling, as plain data: the TLS client chain (leaf first), the peer address and the URL path."""

    caller_chain: GidChain
    peer: str
    path: str


Handler = Callable[[CallContext, str, tuple[Any, ...]], Any]


@runtime_checkable
class RefusingHandler(Protocol):
    """A handler with its own form for the transport's refusals (the AM API's envelope, the registry's fault)."""

    def __call__(self, context: CallContext, method: str, params: tuple[Any, ...]) -> Any: ...

    def refuse(self, context: CallContext, method: str, error: GeniError) -> Any:
        """The answer to a call refused before it reached the handler (or raise xmlrpc.client.Fault); ``method`` is
        already shown_method()'s, safe to log."""
        ...


@runtime_checkable
class OwnBodyLimits(Protocol):
    """A route (a first path segment's resource) with body limits of its own and its own 413 answer, such as the
    node agents' JSON API: its requests are held to its limits instead of the XML-RPC one, as soon as their length
    is known, and are never answered with an XML-RPC fault."""

    def body_limit(self, segments: list[bytes]) -> int:
        """The largest body taken at the path whose segments after the route's own are ``segments`` (unquoted, as
        Twisted's postpath)."""
        ...

    def largest_body_limit(self) -> int:
        """The largest body_limit of any path of the route (for the time a request may take to arrive)."""
        ...

    def too_big_answer(self, segments: list[bytes], what: str) -> tuple[bytes, str]:
        """(body, content type) of the 413 for a body over body_limit(segments); ``what`` says what was too big."""
        ...


def _temporary_directory() -> str:
    """The directory Twisted keeps large request bodies in, for a log line; never raises (gettempdir does when no
    directory is usable: then the one asked for)."""
    try:
        return tempfile.gettempdir()
    except OSError:
        return os.environ.get("TMPDIR") or "/tmp"


class LimitedRequest(server.Request):
    """Refuses a body over the site's limit as soon as its length is known (or as chunks exceed it), and one that
    cannot be kept in the temporary directory (full) as soon as a write there fails."""

    max_body_bytes = DEFAULT_MAX_BODY_BYTES
    #: The routes (by their first path segment) holding requests to their own limits; make_site sets it.
    own_limits: Mapping[bytes, OwnBodyLimits] = MappingProxyType({})
    #: Path prefixes answered in JSON (the OMF backend's REST inventory), not with an XML-RPC fault.
    json_prefixes: tuple[bytes, ...] = ()
    #: The web calendar's first path segment (make_site's route): what is sent there is a form, refused over the web's
    #: own limit (web/forms.py MAX_FORM_BYTES) in HTML with the web's headers, not with an XML-RPC fault.
    web_segment = b"calendar"
    _received = 0
    _too_big = False
    _unspooled = False  # the body could not be written to its temporary file: refused
    _known_limit: int | None = None  # the limit of this request's path, once worked out (a path does not change)

    def __init__(self, channel: http.HTTPChannel, *args: Any, **kwargs: Any) -> None:
        # No endpoint takes a form from request.args (the web calendar parses its own forms from the body): Twisted
        # would parse every POST's content type with the email package first (0.1 ms, a tenth of a Status) and a
        # multipart body into memory.
        super().__init__(channel, *args, parsePOSTFormSubmission=False, **kwargs)

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self._limit():
            super().gotLength(0)  # buffer nothing of what is refused
            self._refuse_too_big(f"the request declares {length} bytes")
            return
        try:
            super().gotLength(length)  # a body of SPOOLED_BODY_BYTES or more, or chunked: a temporary file
        except OSError as error:  # none can be made there (no room, the directory gone)
            self.content = BytesIO()
            self._refuse_unspooled(error)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._too_big or self._unspooled:
            return
        if self._received > self._limit():  # chunked: no length was declared
            self._refuse_too_big("the request body")
            return
        try:
            super().handleContentChunk(data)
            if self.content is not None and not isinstance(self.content, BytesIO):
                # Written through at once, so that a full disk shows here, where the call is answered; what Twisted's
                # buffer kept failed at its seek once the body had come, raising through the TLS layer, which left
                # the connection open for ever.
                self.content.flush()
        except OSError as error:
            spooled, self.content = self.content, BytesIO()
            if spooled is not None:
                with contextlib.suppress(OSError, ValueError):
                    spooled.close()  # its flush fails again; the file is closed all the same
            self._refuse_unspooled(error)

    def _path(self) -> bytes:
        """The path of the request line (known before the body; ``self.path`` is set only once it has come)."""
        return getattr(self.channel, "_path", None) or b""

    def _to_the_web(self) -> bool:
        """Does this request go to the web calendar? Its first segment as Twisted's Site routes it (unquoted)."""
        segments = self._path().split(b"?", 1)[0].split(b"/")
        return len(segments) > 1 and unquote_to_bytes(segments[1]) == self.web_segment

    def _own_limits(self) -> tuple[OwnBodyLimits, list[bytes]] | None:
        """The route with its own limits this request goes to, and the path's segments after the route's, split and
        unquoted as Twisted's Site routes them; None for any other route."""
        if not self.own_limits:
            return None
        segments = [unquote_to_bytes(part) for part in self._path().split(b"?", 1)[0][1:].split(b"/")]
        route = self.own_limits.get(segments[0])
        return None if route is None else (route, segments[1:])

    def _limit(self) -> int:
        if self._known_limit is None:
            self._known_limit = self._work_out_limit()
        return self._known_limit

    def _work_out_limit(self) -> int:
        if self._to_the_web():
            from sfa_omf.web.forms import MAX_FORM_BYTES  # loaded by then: server/web.py serves /calendar

            return min(MAX_FORM_BYTES, self.max_body_bytes)
        own = self._own_limits()
        if own is not None:
            route, segments = own
            return route.body_limit(segments)
        return self.max_body_bytes

    def _refuse_too_big(self, what: str) -> None:
        self._too_big = True
        limit = self._limit()
        self._refuse_unread(
            b"413 Request Entity Too Large",
            GeniError(Reason.TOO_BIG, f"{what}: over the limit of {limit} bytes"),
            ("413 Request entity too large", f"{what}: a form is at most {limit} bytes."),
            lambda route, segments: route.too_big_answer(segments, what),
        )

    def _refuse_unspooled(self, error: OSError) -> None:
        """The body cannot be kept in the temporary directory: refused at once as the server's trouble (nothing is
        done; the caller may try again later), and the operator told which directory is full, at most once a
        minute. Bodies are not kept in memory instead: that would be up to max_body_bytes per connection."""
        self._unspooled = True
        missed = _UNSPOOLED_LOG.due()
        if missed is not None:
            log.warning(
                "cannot keep a request body in the temporary directory %s ($TMPDIR): %s; requests with a body of %d "
                "bytes or more, or chunked, are refused until it has room (logged at most once a minute; %d more "
                "since the last line)",
                _temporary_directory(),
                error.strerror or error,
                SPOOLED_BODY_BYTES,
                missed,
            )
        refusal = GeniError(Reason.SERVER_ERROR, SPOOL_FULL_MESSAGE)
        self._refuse_unread(
            b"503 Service Unavailable",
            refusal,
            ("503 Service unavailable", f"{SPOOL_FULL_MESSAGE}."),
            # The node agents' API's own form ({"error", "message"}, agent_http.py): a 503 its agents try again.
            lambda route, segments: (
                json.dumps({"error": str(refusal.reason), "message": refusal.message}).encode("utf-8"),
                "application/json",
            ),
        )

    def _refuse_unread(
        self,
        status: bytes,
        error: GeniError,
        page: tuple[str, str],
        own_answer: Callable[[OwnBodyLimits, list[bytes]], tuple[bytes, str]],
    ) -> None:
        """Answer ``error`` before the body is read whole, in the form of the route the request goes to, and close
        the connection: the web calendar's HTML page (``page``: its title and text), a route with its own limits its
        ``own_answer``, the JSON routes their JSON, any other an XML-RPC fault with the error's GENI code."""
        code = int(status.split(b" ", 1)[0])
        if self._to_the_web():
            from sfa_omf.server.web import SECURITY_HEADERS

            title, text = page
            html = (
                f"<!doctype html>\n<title>{title}</title>\n<h1>{title}</h1>\n<p>{text}</p>\n"
                f'<p><a href="/{self.web_segment.decode("ascii")}/">Back to the calendar</a></p>\n'
            )
            headers = {**SECURITY_HEADERS, b"cache-control": b"no-store"}
            refuse_and_close(self.channel, status, html.encode("utf-8"), "text/html; charset=utf-8", headers)
            return
        own = self._own_limits()
        if own is not None:
            body, content_type = own_answer(*own)
            refuse_and_close(self.channel, status, body, content_type)
            return
        if self.json_prefixes and self._path().startswith(self.json_prefixes):
            exception = {
                "code": code,
                "reason": error.message,
                "geni_code": int(error.code),
                "geni_reason": str(error.reason),
            }
            body = json.dumps({"exception": exception}).encode("utf-8")
            refuse_and_close(self.channel, status, body, "application/json")
            return
        fault = xmlrpc.client.Fault(int(error.code), error.message)
        # 200 with the fault, as XML-RPC clients (sfi.py, omni) show a fault to their users but only a bare
        # status line for other codes.
        refuse_and_close(self.channel, b"200 OK", xmlrpc.client.dumps(fault, methodresponse=True).encode("utf-8"))


class XmlRpcResource(resource.Resource):
    """One XML-RPC endpoint (path). POST only."""

    isLeaf = True

    def __init__(
        self,
        handler: Handler,
        pool: ThreadPool,
        reactor: Any,
        max_body_bytes: int,
        reactor_calls: ReactorCalls | None = None,
    ) -> None:
        """``reactor_calls``: the calls answered in greenlets of the reactor thread (server/reactor_calls.py);
        None: every call but the inline ones on the call threads."""
        super().__init__()
        self.handler = handler
        self.pool = pool
        self.reactor = reactor
        self.limits = XmlLimits(max_bytes=max_body_bytes)
        # The methods the handler declares pure (GetVersion): answered in the reactor thread, never queued behind
        # calls waiting for the database in every call thread.
        self.inline_methods: frozenset[str] = frozenset(getattr(handler, "inline_methods", ()))
        self.reactor_calls = reactor_calls

    def render(self, request: server.Request) -> Any:
        """POST a call; any other HTTP method is told so (Twisted would answer PUT, OPTIONS... with "501 Huh?")."""
        if request.method != b"POST":
            return self.render_GET(request)
        return super().render(request)

    def render_GET(self, request: server.Request) -> bytes:
        request.setResponseCode(http.NOT_ALLOWED)
        request.setHeader(b"allow", b"POST")
        return b"This is an XML-RPC endpoint: POST a methodCall.\n"

    def render_POST(self, request: server.Request) -> Any:
        """Refuse a caller without a client certificate at once, reading nothing of its body; hand any other call to
        the pool, where it is parsed, checked and run (parsing a body of megabytes took the reactor thread, and every
        other client with it, for seconds), but a small call of an inline method, answered here."""
        if getattr(request, "_too_big", False):
            return _fault(request, FAULT_TOOBIG, f"request body over the limit of {self.limits.max_bytes} bytes")
        context = CallContext(
            caller_chain=_caller_chain(request),
            peer=str(request.getClientAddress()),
            path=request.path.decode("latin-1"),
        )
        if not context.caller_chain:  # possible when the listener also serves browsers (the web calendar)
            message = (
                "no client certificate: call with your GID and its key as the TLS client certificate "
                "(sfi.py and omni do this)"
            )
            method = _declared_method(request)
            return self._refuse(request, context, method, GeniError(Reason.CALLER_UNTRUSTED, message))
        body = request.content.read() if request.content is not None else b""
        if self._read_here(body):
            # A small call naming an inline method (GetVersion), or one answered in the reactor (reactor_calls.py),
            # is read here; it runs here only when it really is one, anything else (a body naming another method
            # further on, or the reactor's calls all taken) goes to the pool as every call does.
            parsed = self._parsed(context, body)
            if isinstance(parsed, str) or parsed[0] in self.inline_methods:
                _respond(request, parsed if isinstance(parsed, str) else self._answer(context, *parsed))
                return server.NOT_DONE_YET
            if self.reactor_calls is not None and parsed[0] in REACTOR_METHODS:
                answered = self.reactor_calls.start(self._answer, (context, *parsed), lambda a: _respond(request, a))
                if answered is not None:
                    answered.addErrback(lambda failure: _internal_error(request, parsed[0], failure))
                    return server.NOT_DONE_YET
            deferred = deferToThreadPool(self.reactor, self.pool, self._answer, context, *parsed)
        else:
            deferred = deferToThreadPool(self.reactor, self.pool, self._call, context, body)
        deferred.addCallback(lambda answer: _respond(request, answer))
        deferred.addErrback(lambda failure: _internal_error(request, "(unread)", failure))  # a bug of _call's own
        return server.NOT_DONE_YET

    def _read_here(self, body: bytes) -> bool:
        """Whether ``body`` may be a call of an inline method, or of one answered in the reactor: small enough to
        read in the reactor thread, and naming one at its start (parsing decides)."""
        if self._names_early(body, self.inline_methods, INLINE_MAX_BODY_BYTES):
            return True
        return self.reactor_calls is not None and self._names_early(body, REACTOR_METHODS, REACTOR_MAX_BODY_BYTES)

    @staticmethod
    def _names_early(body: bytes, methods: frozenset[str], max_bytes: int) -> bool:
        """Whether ``body``, at most ``max_bytes``, names one of ``methods`` at its start (parsing decides)."""
        if not methods or len(body) > max_bytes:
            return False
        found = _DECLARED_METHOD.search(body[:_DECLARED_METHOD_WINDOW])
        return found is not None and found.group(1).decode("ascii") in methods

    def _call(self, context: CallContext, body: bytes) -> str:
        """In a call thread: the answer (a methodResponse) to the methodCall ``body``, a fault when it is no call."""
        parsed = self._parsed(context, body)
        return parsed if isinstance(parsed, str) else self._answer(context, *parsed)

    def _parsed(self, context: CallContext, body: bytes) -> str | tuple[str, tuple[Any, ...]]:
        """(method, params) of the methodCall ``body``, or the answer to it when it is no call (a fault, or the
        refusal of a method name that is no name)."""
        try:
            refuse_declarations(body, self.limits, what="XML-RPC request")
            params, method = loads(body)
        except (UnsafeXml, BadCall) as exc:
            return _fault_text(FAULT_BADARGS, str(exc))
        except ExpatError as exc:
            return _fault_text(FAULT_BADARGS, f"not an XML-RPC methodCall: {exc}")
        except Exception as exc:  # whatever else the stdlib raises on a malformed call (an unknown encoding...):
            # the caller's mistake, not ours.
            return _fault_text(FAULT_BADARGS, f"not a well-formed XML-RPC methodCall ({type(exc).__name__})")
        if not isinstance(method, str) or not method:
            return _fault_text(FAULT_BADARGS, "the XML-RPC call names no method")
        if not METHOD_NAME.fullmatch(method):  # checked once here: no handler logs or echoes it raw
            shown = shown_method(method)
            message = (
                f"{shown} is not a method: a method name has at most 64 letters, digits, '_' or '.' "
                "(GetVersion, ListResources, Resolve...)"
            )
            return self._refusal(context, shown, GeniError(Reason.UNSUPPORTED, message))
        return method, params

    def _answer(self, context: CallContext, method: str, params: tuple[Any, ...]) -> str:
        """The handler's answer to a parsed call, as a methodResponse (a fault for a handler's bug)."""
        try:
            result = self.handler(context, method, params)
            # Marshalled here too: a result that cannot be marshalled is an internal error as well, never a hang.
            return xmlrpc.client.dumps((result,), methodresponse=True, allow_none=True)
        except xmlrpc.client.Fault as fault:  # a handler's deliberate refusal (the SFA registry's way)
            return xmlrpc.client.dumps(fault, methodresponse=True)
        except Exception:
            shown = shown_method(method)
            log.error("%s failed: %s", shown, traceback.format_exc())
            return _fault_text(FAULT_SERVERERROR, f"internal error in {shown}; the operator's log has the details")

    def _refuse(self, request: server.Request, context: CallContext, method: str, error: GeniError) -> bytes:
        """The transport's refusal of a call, answered at once (in the reactor thread: a refusal does no work)."""
        request.setHeader(b"content-type", b"text/xml; charset=utf-8")
        return self._refusal(context, method, error).encode("utf-8")

    def _refusal(self, context: CallContext, method: str, error: GeniError) -> str:
        """The transport's refusal of a call as a methodResponse: in the handler's form when it has one, else as a
        fault with the code of its reason."""
        if not isinstance(self.handler, RefusingHandler):
            return _fault_text(int(error.code), error.message)
        try:
            answer = self.handler.refuse(context, method, error)
        except xmlrpc.client.Fault as fault:
            return _fault_text(fault.faultCode, fault.faultString)
        except Exception:  # a handler's bug: a fault 5 as for any call, never Twisted's bare 500
            log.exception("refusing a call to %s failed", method)
            return _fault_text(FAULT_SERVERERROR, f"internal error in {method}; the operator's log has the details")
        return xmlrpc.client.dumps((answer,), methodresponse=True, allow_none=True)


#: Where a methodCall names its method, looked for only at its start: what a refusal before parsing logs.
_DECLARED_METHOD = re.compile(rb"<methodName>\s*([A-Za-z0-9_.]{1,64})\s*</methodName>")
_DECLARED_METHOD_WINDOW = 1024


def _declared_method(request: server.Request) -> str:
    """The method a call refused before its body is parsed names, for the log line only: looked for in the first KiB
    of the body (never parsed); "(unread)" when it is not there as a plain name."""
    content = request.content
    if content is None:
        return "(unread)"
    content.seek(0)
    found = _DECLARED_METHOD.search(content.read(_DECLARED_METHOD_WINDOW))
    return found.group(1).decode("ascii") if found else "(unread)"


def _caller_chain(request: server.Request) -> GidChain:
    """The TLS client's chain, read from the connection at its first call and kept on the channel (one per
    connection) for the next calls of a kept-alive client: reading and parsing it cost about as much as a Status."""
    channel: Any = request.channel
    known: GidChain | None = getattr(channel, "_sfa_omf_caller_chain", None)
    if known is None:
        known = channel._sfa_omf_caller_chain = peer_chain(request.transport.getHandle())  # type: ignore[union-attr]
    return known


def _respond(request: server.Request, body: str) -> None:
    if request.finished or request.channel is None:
        return  # the client went away
    request.setHeader(b"content-type", b"text/xml; charset=utf-8")
    request.write(body.encode("utf-8"))
    request.finish()


def _fault(request: server.Request, code: int, message: str) -> bytes:
    request.setHeader(b"content-type", b"text/xml; charset=utf-8")
    return _fault_text(code, message).encode("utf-8")


def _fault_text(code: int, message: str) -> str:
    return xmlrpc.client.dumps(xmlrpc.client.Fault(code, message), methodresponse=True)


def _internal_error(request: server.Request, method: str, failure: Failure) -> None:
    if request.finished or request.channel is None:
        return
    if isinstance(failure.value, xmlrpc.client.Fault):  # a handler's deliberate refusal (the SFA registry's way)
        _respond(request, xmlrpc.client.dumps(failure.value, methodresponse=True))
        return
    shown = shown_method(method)
    log.error("%s failed: %s", shown, failure.getTraceback())
    fault = xmlrpc.client.Fault(FAULT_SERVERERROR, f"internal error in {shown}; the operator's log has the details")
    _respond(request, xmlrpc.client.dumps(fault, methodresponse=True))


class _Site(server.Site):
    """A site counting its open connections: a connection over ``max_connections`` in all, or over
    ``max_connections_per_peer`` from its peer's address, is closed as soon as it is made (each held a file
    descriptor: about a thousand idle connections left none for anyone else). make_site sets the limits."""

    max_connections = DEFAULT_MAX_CONNECTIONS
    max_connections_per_peer = DEFAULT_MAX_CONNECTIONS_PER_PEER

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_connections = 0
        self.open_by_peer: dict[str, int] = {}
        self._turned_away_logged: dict[str, float] = {}  # peer -> time.monotonic() of its last log line

    def buildProtocol(self, addr: Any) -> Any:
        channel: Any = super().buildProtocol(addr)
        peer = str(getattr(addr, "host", addr))
        if self.open_connections >= self.max_connections:
            self._turn_away(channel, peer, f"the listener's {self.max_connections} connections are open")
        elif self.open_by_peer.get(peer, 0) >= self.max_connections_per_peer:
            self._turn_away(channel, peer, f"its {self.max_connections_per_peer} connections are open")
        else:
            self.open_connections += 1
            self.open_by_peer[peer] = self.open_by_peer.get(peer, 0) + 1
            channel._counted_peer = peer
        return channel

    def connection_closed(self, peer: str) -> None:
        """A connection counted against ``peer`` is closed (GuardedChannel.connectionLost)."""
        self.open_connections -= 1
        left = self.open_by_peer.get(peer, 0) - 1
        if left > 0:
            self.open_by_peer[peer] = left
        else:
            self.open_by_peer.pop(peer, None)

    def _turn_away(self, channel: Any, peer: str, why: str) -> None:
        channel._turned_away = True
        now = time.monotonic()
        if now - self._turned_away_logged.get(peer, -REFUSAL_LOG_PERIOD_S) < REFUSAL_LOG_PERIOD_S:
            return  # once a minute per peer: a flood of connections is not a flood of log lines
        if len(self._turned_away_logged) > 10_000:  # many peers: forget those logged over a minute ago
            self._turned_away_logged = {
                known: when for known, when in self._turned_away_logged.items() if now - when < REFUSAL_LOG_PERIOD_S
            }
        self._turned_away_logged[peer] = now
        log.warning("connections from %s closed at once: %s (logged at most once a minute per peer)", peer, why)

    def log(self, request: http.Request) -> None:
        """No combined-log line per request: the API's dispatch logs every call itself (method, caller, outcome),
        and Twisted's line went to its global log, which nothing reads here (0.03 ms a call, formatted for nothing)."""


def make_site(
    routes: Mapping[bytes, resource.Resource],
    default: XmlRpcResource,
    max_body_bytes: int,
    timeout_s: float,
    json_prefixes: tuple[bytes, ...] = (),
    request_deadline_s: float | None = None,
    handshake_deadline_s: float = DEFAULT_HANDSHAKE_DEADLINE_S,
    close_grace_s: float = DEFAULT_CLOSE_GRACE_S,
    header_deadline_s: float = DEFAULT_HEADER_DEADLINE_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    max_connections_per_peer: int = DEFAULT_MAX_CONNECTIONS_PER_PEER,
    max_unsent_bytes: int = DEFAULT_MAX_UNSENT_BYTES,
    max_pipelined: int = DEFAULT_MAX_PIPELINED,
    stall_deadline_s: float = DEFAULT_STALL_DEADLINE_S,
) -> server.Site:
    """A Site serving ``routes`` by their first path segment (``am2``; ``resources``, the OMF backend's REST
    inventory; ``calendar``, the web calendar, ``agents``, the node agents' API); any other path (``/``, ``/RPC2``)
    goes to ``default``. Every TLS listener of the project serves one of these, so its bounds hold for all:

    - a TLS handshake not done within ``handshake_deadline_s`` of the accept is cut off (a client sending nothing,
      or its handshake a byte at a time);
    - a connection idle for ``timeout_s`` is closed;
    - a request that does not arrive whole within ``request_deadline_s`` of its first byte is answered 408 and
      closed (by default 120 s, or the time the largest body taken takes at 32 KiB/s when that is longer: that of
      ``max_body_bytes``, or of a route's own limit (OwnBodyLimits) when it is higher);
    - a body over its limit is refused as soon as its length is known: over ``max_body_bytes`` with an XML-RPC fault
      (JSON under ``json_prefixes``), over a route's own limit with the route's own 413;
    - a body the temporary directory has no room for is refused as the server's error as soon as a write fails;
    - a connection the server closes is cut off once ``close_grace_s`` passes with the client neither closing its
      side nor taking a byte of the answer (the grace counts from when the answer has reached the client);
    - a request's line and headers must arrive within ``header_deadline_s`` of its first byte (408);
    - a connection over ``max_connections`` open on the listener, or over ``max_connections_per_peer`` from one
      address, is closed as soon as it is made;
    - a pipelined request waits while over ``max_unsent_bytes`` of the answers before it are unsent; over
      ``max_pipelined`` requests waiting close the connection after the answer in progress; a client taking no byte
      of its waiting answers for ``stall_deadline_s`` is cut off.
    """

    class Root(resource.Resource):
        def getChild(self, path: bytes, request: server.Request) -> resource.Resource:
            return routes.get(path, default)

        def render(self, request: server.Request) -> Any:
            return default.render(request)

    class Request(LimitedRequest):
        pass

    Request.max_body_bytes = max_body_bytes
    Request.json_prefixes = json_prefixes
    Request.own_limits = {segment: route for segment, route in routes.items() if isinstance(route, OwnBodyLimits)}
    # A request may take the time its largest body takes: a route's own limit may be above the XML-RPC one.
    largest_body = max([max_body_bytes, *(route.largest_body_limit() for route in Request.own_limits.values())])

    class Channel(GuardedChannel):
        pass

    Channel.request_deadline_s = (
        max(DEFAULT_REQUEST_DEADLINE_S, largest_body / SLOWEST_UPLOAD_BYTES_PER_S)
        if request_deadline_s is None
        else request_deadline_s
    )
    Channel.handshake_deadline_s = handshake_deadline_s
    Channel.close_grace_s = close_grace_s
    Channel.header_deadline_s = header_deadline_s
    Channel.max_unsent_bytes = max_unsent_bytes
    Channel.max_pipelined = max_pipelined
    Channel.stall_deadline_s = stall_deadline_s
    site = _Site(Root(), timeout=timeout_s)
    site.max_connections = max_connections
    site.max_connections_per_peer = max_connections_per_peer
    site.protocol = Channel  # type: ignore[assignment,method-assign]
    site.requestFactory = Request
    site.displayTracebacks = False
    return site
