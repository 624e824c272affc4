"""Delivering one message: e-mail over SMTP (STARTTLS and login when configured), or a webhook (an HTTP POST of JSON
signed with HMAC-SHA256). Each raises DeliveryError with the peer's words when the message was not accepted."""

from __future__ import annotations

import hashlib
import hmac
import json
import smtplib
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

SIGNATURE_HEADER = "X-SFA-OMF-Signature"
EVENT_HEADER = "X-SFA-OMF-Event"


class DeliveryError(Exception):
    """The channel did not take the message (server down, refused, HTTP error); try again later."""


@dataclass(frozen=True)
class SmtpSettings:
    host: str = "127.0.0.1"
    port: int = 25
    starttls: bool = False
    user: str = ""
    password: str = field(default="", repr=False)
    sender: str = "sfa-omf@localhost"
    timeout_s: float = 30


def sign(secret: str, body: bytes) -> str:
    """The webhook signature header's value: ``sha256=<hex HMAC-SHA256 of the body with the shared secret>``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def send_email(settings: SmtpSettings, to: str, key: str, subject: str, text: str) -> None:
    """Send one plain-text e-mail; its Message-ID derives from the outbox key, so a repeat is recognisable."""
    message = EmailMessage()
    message["From"] = settings.sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(idstring=hashlib.sha256(key.encode()).hexdigest()[:32], domain="sfa-omf")
    message[EVENT_HEADER] = key
    message.set_content(text)
    try:
        with smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout_s) as smtp:
            if settings.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.user:
                smtp.login(settings.user, settings.password)
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(f"SMTP {settings.host}:{settings.port}: {exc}") from exc


def post_webhook(url: str, key: str, payload: dict[str, Any], secret: str, timeout_s: float = 30) -> None:
    """POST the payload as JSON, signed; any answer but 2xx is a failure."""
    body = json.dumps(payload, sort_keys=True).encode("utf-8")
    headers = {"Content-Type": "application/json", EVENT_HEADER: key, "User-Agent": "sfa-omf"}
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, body)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            if not 200 <= response.status < 300:
                raise DeliveryError(f"webhook {url} answered {response.status}")
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"webhook {url} answered {exc.code} {exc.reason}") from exc
    except (OSError, urllib.error.URLError) as exc:
        raise DeliveryError(f"webhook {url}: {exc}") from exc
