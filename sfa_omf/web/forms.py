"""The viewer's own page, /calendar/me: their notification channels (opt in, change the address, opt out) and their
private iCal feed's address, for a browser that presents a GENI user certificate.

The TLS client certificate is the identity, and browsers present it on *any* request to this server, also one that
another site's page makes them send: a form POST must therefore prove it comes from our own page. Two checks, both
required (OWASP's "verify the origin with standard headers" plus a synchronizer token):

- the browser's ``Sec-Fetch-Site`` says ``same-origin``, or, from a browser that does not send it, ``Origin`` is this
  server's own origin; a POST with neither is refused. (Our pages are served with ``Referrer-Policy: no-referrer``,
  under which browsers send ``Origin: null`` even from our own page: Sec-Fetch-Site, which every current browser
  sends, is what decides; a browser without it and with ``Origin: null`` is refused.)
- the form carries ``token``, an HMAC of the viewer's URN under the server's form key (derived from the aggregate's
  private key: the same in every worker and after restarts), which another site cannot read or make.

No cookies, no session: nothing is stored but the subscriptions and the feed token themselves.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from sfa_omf.calendar.outbox import unfit_character_problem
from sfa_omf.calendar.records import CHANNELS
from sfa_omf.web.viewer import Viewer

#: The largest form body the server reads (an e-mail address or a URL and a few fields).
MAX_FORM_BYTES = 8 * 1024
FORM_TYPE = "application/x-www-form-urlencoded"


class FormRefused(Exception):
    """A POST that does not come from our own page for this viewer (403); the message says why."""


@dataclass(frozen=True)
class FormOrigin:
    """What the browser said about where the POST comes from."""

    fetch_site: str = ""  # Sec-Fetch-Site
    origin: str = ""  # Origin
    host: str = ""  # Host: our own origin is https://<host>


def form_token(key: bytes, user_urn: str) -> str:
    """The token our own forms carry for this user."""
    return hmac.new(key, f"sfa-omf form\0{user_urn}".encode(), hashlib.sha256).hexdigest()


def check_form(key: bytes, viewer: Viewer, came_from: FormOrigin, form: Mapping[str, str]) -> None:
    """FormRefused unless the POST comes from our page for this certificate's user (see the module docstring)."""
    if viewer.urn is None:
        raise FormRefused(
            "this form is for users who present their GENI user certificate; "
            + (viewer.refused or "your browser presented none")
        )
    own = f"https://{came_from.host}"
    if came_from.fetch_site:  # set by the browser itself, never by a page: it decides
        if came_from.fetch_site != "same-origin":
            raise FormRefused(f"a form sent from another site ({came_from.fetch_site}) is refused: use this page's own")
    elif not came_from.origin:
        raise FormRefused("the browser said neither where the form comes from (Origin) nor Sec-Fetch-Site; refused")
    elif came_from.origin != own:
        raise FormRefused(f"a form sent from {came_from.origin} is refused: use the page at {own}")
    if not hmac.compare_digest(form.get("token", ""), form_token(key, viewer.urn)):
        raise FormRefused("the form's token is missing or not yours: reload the page and send the form again")


def channel_field(form: Mapping[str, str]) -> str:
    """The form's channel, one of CHANNELS (ValueError naming them otherwise)."""
    channel = form.get("channel", "")
    if channel not in CHANNELS:
        raise ValueError(f"channel={channel!r}: one of {', '.join(CHANNELS)}")
    return channel


def unfit_field_problem(form: Mapping[str, str]) -> str | None:
    """What is wrong with the first form field holding a control or formatting character (outbox's
    unfit_character_problem), or None: such a character is never part of an address or a token, and a NUL would reach
    the database (PostgreSQL refuses it as a failure of its own, SQLite stores it)."""
    for name, value in form.items():
        problem = unfit_character_problem(name, "a field's name") or unfit_character_problem(value, f"the {name}")
        if problem is not None:
            return problem
    return None
