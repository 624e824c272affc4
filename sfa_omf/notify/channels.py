"""Delivering one message: e-mail over SMTP (STARTTLS or TLS from the start, and login, when configured), or a webhook
(an HTTP POST of JSON signed with HMAC-SHA256 over a timestamp and the body, with the secret of each subscription of
its URL: ``subscription_secret``). Each raises DeliveryError with the peer's words when the message was
not accepted."""

from __future__ import annotations

import functools
import hashlib
import hmac
import http.client
import io
import ipaddress
import json
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from typing import Any
from urllib.parse import quote, urlsplit

from sfa_omf.addresses import is_public_address
from sfa_omf.config import smtp_credentials_problem

SIGNATURE_HEADER = "X-SFA-OMF-Signature"
TIMESTAMP_HEADER = "X-SFA-OMF-Timestamp"
EVENT_HEADER = "X-SFA-OMF-Event"


class DeliveryError(Exception):
    """The channel did not take the message (server down, refused, HTTP error); try again later."""


class SmtpUnavailable(DeliveryError):
    """The SMTP server could not be reached or did not answer in time (not a refusal of this message): the next
    e-mails would fare no better now."""


class WebhookUnavailable(DeliveryError):
    """A webhook's host could not be resolved or reached, or did not answer in time (not an HTTP answer refusing
    this message): the next messages to the same origin would fare no better now."""


class SmtpInsecure(SmtpUnavailable):
    """The configuration would send the SMTP password in clear (a login without TLS to a host that is not this
    machine's loopback): nothing was sent, no connection made; every e-mail would be refused alike until the operator
    turns TLS on."""


@dataclass(frozen=True)
class SmtpSettings:
    host: str = "127.0.0.1"
    port: int = 25
    starttls: bool = False
    user: str = ""
    password: str = field(default="", repr=False)
    sender: str = "sfa-omf@localhost"
    timeout_s: float = 30
    tls: bool = False  # TLS from the first byte (SMTPS, port 465) instead of STARTTLS


#: What a subscription's secret is derived for (``subscription_secret``): a key of its own use, whatever else the
#: site's webhook_key might ever sign.
SECRET_LABEL = b"sfa-omf webhook subscription secret v1\0"
#: The "user" of the webhooks of ``[sfa_notify] operators`` (and of a ``notify test`` to a URL nobody subscribed):
#: they belong to no user; their secret is the operator's (``sfa-omf notify secret URL``).
OPERATOR_SUBSCRIBER = ""


def subscription_secret(webhook_key: str, user_urn: str, url: str) -> str:
    """The secret of one subscription, a user's (``user_urn``) webhook at ``url``: 64 hex digits of HMAC-SHA256 with
    the site's ``[sfa_notify] webhook_key`` over a fixed label, the URN and the URL. Each user is shown the secret of
    their own subscriptions only, so what one user holds signs nothing another user's receiver accepts (the one
    site-wide key let any user who checked signatures forge messages to anyone's webhook). Derived, so nothing is
    stored and every process agrees; it changes with the URL (a new URL, a new secret) and with the site's key. Empty
    without a webhook_key (webhooks are then not signed)."""
    if not webhook_key:
        return ""
    data = SECRET_LABEL + user_urn.encode("utf-8") + b"\0" + url.encode("utf-8")
    return hmac.new(webhook_key.encode("utf-8"), data, hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """One signature of a webhook POST: ``sha256=<hex HMAC-SHA256 with the subscription's secret of
    "<timestamp>." + body>``. The timestamp (X-SFA-OMF-Timestamp, Unix seconds) is signed with the body, so a
    receiver that refuses old timestamps cannot be sent a captured message again later."""
    signed = f"{timestamp}.".encode("ascii") + body
    return "sha256=" + hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def header_text(key: str) -> str:
    """A message key as a header's value (X-SFA-OMF-Event): visible ASCII as it is, anything else (space too) and ``%``
    percent-encoded (UTF-8). A key may hold a slice's name: a line break in it must not start a header of its own (the
    libraries refuse it, so the message would never go) nor a letter outside Latin-1 stop an HTTP header; distinct
    keys stay distinct."""
    return "".join(char if "!" <= char <= "~" and char != "%" else quote(char, safe="") for char in key)


def send_email(settings: SmtpSettings, to: str, key: str, subject: str, text: str) -> None:
    """Send one plain-text e-mail; its Message-ID derives from the outbox key, so a repeat is recognisable. The whole
    exchange ends by ``settings.timeout_s`` (the notifier's claim on the message counts on it). A login that would
    send the password in clear (``smtp_credentials_problem``) is SmtpInsecure, before any connection."""
    message = EmailMessage()
    message["From"] = settings.sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = message_id(key, settings.sender)
    message[EVENT_HEADER] = header_text(key)
    message.set_content(text)
    # Decided before connecting: a password must not cross the network in clear, however the server offers AUTH.
    insecure = smtp_credentials_problem(settings.host, settings.user, settings.starttls, settings.tls)
    if insecure:
        raise SmtpInsecure(f"SMTP {settings.host}:{settings.port}: not sent: {insecure}")
    client = _DeadlineSMTPS if settings.tls else _DeadlineSMTP
    try:
        with client(settings.host, settings.port, time.monotonic() + settings.timeout_s) as smtp:
            if settings.starttls and not settings.tls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.user:
                smtp.login(settings.user, settings.password)
            smtp.send_message(message)
    except (smtplib.SMTPConnectError, smtplib.SMTPServerDisconnected) as exc:
        raise SmtpUnavailable(f"SMTP {settings.host}:{settings.port}: {exc}") from exc
    except smtplib.SMTPException as exc:  # a refusal of this message (before OSError: SMTPException is one)
        raise DeliveryError(f"SMTP {settings.host}:{settings.port}: {exc}") from exc
    except OSError as exc:  # the server cannot be reached, or stays silent past the deadline
        raise SmtpUnavailable(f"SMTP {settings.host}:{settings.port}: {exc}") from exc


#: What may stand as a Message-ID's domain part unquoted (a dot-atom of letters, digits and hyphens).
_MESSAGE_ID_DOMAIN = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*")


def message_id(key: str, sender: str) -> str:
    """The e-mail's Message-ID for an outbox key: ``<first 40 hex digits of sha256(key)@domain>``, the domain being
    that of the sender address (``[sfa_notify] from``), else ``sfa-omf``. The same on every send and in every process,
    so a repeat of a message (see the outbox) can be recognised by it."""
    domain = parseaddr(sender)[1].rpartition("@")[2]
    if not _MESSAGE_ID_DOMAIN.fullmatch(domain):
        domain = "sfa-omf"
    return f"<{hashlib.sha256(key.encode('utf-8')).hexdigest()[:40]}@{domain}>"


class _DeadlineSMTP(smtplib.SMTP):
    """An SMTP client whose whole exchange (connect, STARTTLS, every command and reply) ends by a deadline: a server
    that answers a byte now and then would otherwise hold the notifier for ever (smtplib's timeout bounds each read),
    and outlast the notifier's claim on its messages (another notifier would then send them again)."""

    def __init__(self, host: str, port: int, deadline: float) -> None:
        self.deadline = deadline
        super().__init__(host, port, timeout=max(deadline - time.monotonic(), 0.001))

    def _time_left(self) -> float:
        # At least a little: smtplib turns the timeout of a send or read into SMTPServerDisconnected.
        return max(self.deadline - time.monotonic(), 0.001)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return socket.create_connection((host, port), self._time_left(), self.source_address)

    def send(self, s: Any) -> None:  # str or bytes, as smtplib sends them
        if self.sock is not None:
            self.sock.settimeout(self._time_left())  # sendall's timeout bounds the whole send
        super().send(s)

    def getreply(self) -> tuple[int, bytes]:
        if self.file is None and self.sock is not None:  # after connect and after STARTTLS (a new socket)
            self.file = io.BufferedReader(_DeadlineReader(self.sock, self.deadline))
        return super().getreply()

    def starttls(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        if self.sock is not None:
            self.sock.settimeout(self._time_left())
        return super().starttls(*args, **kwargs)


class _DeadlineSMTPS(_DeadlineSMTP):
    """The same over TLS from the first byte (SMTPS, port 465), the server's certificate verified against the host
    name."""

    default_port = smtplib.SMTP_SSL_PORT

    def __init__(self, host: str, port: int, deadline: float) -> None:
        self.context = ssl.create_default_context()
        super().__init__(host, port, deadline)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = super()._get_socket(host, port, timeout)  # its timeout is the time left: the handshake is bounded
        return self.context.wrap_socket(sock, server_hostname=host)


def origin(url: str) -> str:
    """The URL without its path and query (``scheme://host[:port]``): what may be logged or shown of a webhook, whose
    path and query often hold a bearer token. A URL too malformed to split is shown as ``<malformed URL>``."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket: it cannot be sent either (post_webhook says so)
        return "<malformed URL>"
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def shown_webhook(url: str) -> str:
    """A webhook as it may be shown (logs, keys, ``config check``): its origin, ``#`` and the first 12 hex digits of
    the whole URL's SHA-256 (``https://hooks.example.org:8443#5d41402abc4b``): its path and query, which often hold a
    token, are not shown, and two webhooks at one origin stay distinct."""
    return f"{origin(url)}#{hashlib.sha256(url.encode('utf-8')).hexdigest()[:12]}"


def post_webhook(
    url: str,
    key: str,
    payload: dict[str, Any],
    secrets: str | Sequence[str],
    timeout_s: float = 30,
    public_only: bool = False,
    timestamp: int | None = None,
) -> None:
    """POST the payload as JSON, signed; any answer but 2xx is a failure, redirects included (not followed).

    ``secrets``: the secrets of the URL's subscriptions (``subscription_secret``; one, unless several users chose the
    same URL); X-SFA-OMF-Timestamp is ``timestamp`` (default now, Unix seconds) and X-SFA-OMF-Signature holds one
    ``sign`` value per secret, separated by ", " (a receiver accepts the message if one of them is made with its
    own secret). No secret (no webhook_key): neither header.

    ``public_only`` (webhooks users set themselves): the host's addresses are resolved here and the POST is refused
    unless every one is public (``is_public_address``); the connection then goes to that checked address, so a DNS
    answer that changes in between cannot send it elsewhere (TLS still verifies the URL's host name). ``timeout_s``
    bounds the whole exchange, not each read: a receiver that drips its answer cannot hold the notifier. The answer's
    body is never read. Messages name only ``origin(url)``. WebhookUnavailable when the host cannot be resolved or
    reached or does not answer in time, DeliveryError for any other failure."""
    where = origin(url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise DeliveryError(f"webhook {where}: not a URL: {exc}") from exc
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise DeliveryError(f"webhook {where}: bad port") from exc
    if parts.scheme not in ("http", "https") or not host:
        raise DeliveryError(f"webhook {where}: not an http(s) URL")
    deadline = time.monotonic() + timeout_s
    body = json.dumps(payload, sort_keys=True).encode("utf-8")
    headers = {"Content-Type": "application/json", EVENT_HEADER: header_text(key), "User-Agent": "sfa-omf"}
    keys = [secrets] if isinstance(secrets, str) else list(secrets)
    keys = [secret for secret in keys if secret]
    if keys:
        # Now, on every try: a retry is signed afresh (see Notifier.send).
        when = int(time.time()) if timestamp is None else timestamp
        headers[TIMESTAMP_HEADER] = str(when)
        headers[SIGNATURE_HEADER] = ", ".join(sign(secret, when, body) for secret in keys)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        addresses = _addresses_to_use(host, port, public_only, where)
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            connection = _PinnedHTTPSConnection(host, port, addresses, deadline)
        else:
            connection = _PinnedHTTPConnection(host, port, addresses, deadline)
        try:
            connection.request("POST", target, body=body, headers=headers)
            response = connection.getresponse()  # status line and headers only: the body is never read
            status, reason = response.status, response.reason
        finally:
            connection.close()
    except OSError as exc:  # refused, reset, TLS failed, or no answer by the deadline: the origin is unreachable now
        why = f"{type(exc).__name__}: {_unshown(exc, url, target)}"
        if isinstance(exc, TimeoutError):  # (the whole exchange's deadline, not one read's)
            why += f" (no whole answer within the exchange's deadline of {timeout_s:g} s)"
        raise WebhookUnavailable(f"webhook {where}: {why}") from exc
    except http.client.HTTPException as exc:
        # A malformed answer (bad status line, header line too long ...): the receiver answered; worth trying again.
        raise DeliveryError(f"webhook {where}: {type(exc).__name__}: {_unshown(exc, url, target)}") from exc
    if 300 <= status < 400:
        raise DeliveryError(f"webhook {where} answered {status} {reason}: redirects are not followed")
    if not 200 <= status < 300:
        raise DeliveryError(f"webhook {where} answered {status} {reason}")


def _unshown(exc: Exception, url: str, target: str) -> str:
    """An error's words without the webhook's URL or path and query (http.client quotes a path it refuses): they go
    to the log and the outbox, and often hold a token."""
    text = str(exc)
    # As they are, and as repr() writes them inside quotes (a control character escaped).
    for shown in (url, repr(url)[1:-1], target, repr(target)[1:-1]):
        text = text.replace(shown, "<path not shown>")
    return text


def _addresses_to_use(host: str, port: int, public_only: bool, where: str) -> list[str]:
    """The addresses to connect to, in the resolver's order; with ``public_only`` every resolved address must be
    public (a name with one internal address among public ones is refused too)."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise WebhookUnavailable(f"webhook {where}: cannot resolve the host: {exc}") from exc
    addresses = [str(sockaddr[0]) for _, _, _, _, sockaddr in found]
    if not addresses:
        raise DeliveryError(f"webhook {where}: the host has no address")
    if public_only:
        for address in addresses:
            if not is_public_address(ipaddress.ip_address(address.split("%", 1)[0])):
                raise DeliveryError(f"webhook {where}: refused, the host resolves to a non-public address {address}")
    return addresses


class _DeadlineReader(io.RawIOBase):
    """Reads from a socket until a deadline: each read may wait only for the time left (a per-read timeout would let
    a receiver sending a byte now and then keep the exchange going for ever)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self.sock = sock
        self.deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer in time")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class _DeadlineResponse(http.client.HTTPResponse):
    """An HTTP response whose status line and headers are read through a _DeadlineReader."""

    def __init__(self, sock: socket.socket, deadline: float, **kwargs: Any) -> None:
        super().__init__(sock, **kwargs)
        self.fp.close()  # the plain reader made by HTTPResponse: replaced
        self.fp = io.BufferedReader(_DeadlineReader(sock, deadline))


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to addresses already resolved (and checked), the first that answers, with the time left
    until a deadline."""

    def __init__(self, host: str, port: int, addresses: list[str], deadline: float) -> None:
        super().__init__(host, port, timeout=max(deadline - time.monotonic(), 0.001))
        self.addresses = addresses
        self.deadline = deadline

    def connect(self) -> None:
        for address in self.addresses[:-1]:
            try:
                self.sock = socket.create_connection((address, self.port), self._time_left())
                return
            except OSError:
                continue  # e.g. an IPv6 address this host cannot reach: the next one
        self.sock = socket.create_connection((self.addresses[-1], self.port), self._time_left())

    def _time_left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the webhook did not answer in time")
        return left

    def getresponse(self) -> http.client.HTTPResponse:
        self.response_class = functools.partial(_DeadlineResponse, deadline=self.deadline)  # type: ignore[assignment]
        return super().getresponse()

    def send(self, data: Any) -> None:
        if self.sock is not None:
            self.sock.settimeout(self._time_left())  # sendall's timeout bounds the whole send
        super().send(data)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """The same over TLS, verifying the certificate against the URL's host name (not the address)."""

    default_port = 443

    def __init__(self, host: str, port: int, addresses: list[str], deadline: float) -> None:
        super().__init__(host, port, addresses, deadline)
        self.context = ssl.create_default_context()

    def connect(self) -> None:
        super().connect()
        self.sock.settimeout(self._time_left())
        self.sock = self.context.wrap_socket(self.sock, server_hostname=self.host)
