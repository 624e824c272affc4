"""The web calendar's requests and answers, without I/O: server/web.py feeds it what Twisted received.

Routes under /calendar:
    /calendar/                         the Gantt view (?view=day|week&start=YYYY-MM-DD&pool=P&hw=T)
    /calendar/node/<name or URN>       a node: properties, next free windows (as advertised), bookings
    /calendar/node/<name or URN>/feed.ics  the node's iCal feed (the node page links it; no node's key can make
                                       it another address). The former <name or URN>.ics still answers the feed
                                       when the key names no node whole (a node cam.ics has its page there)
    /calendar/slice/<name or URN>.ics  the slice's iCal feed (its members and operators only)
    /calendar/feed/<token>.ics         a user's private feed (the token comes from ``sfa-omf calendar feed-url``
                                       or from /calendar/me)
    /calendar/me                       the certificate's user: notification channels and private feed (forms.py)
    POST /calendar/me/notify           opt in to a channel (or change its address), or opt out
    POST /calendar/me/feed             make a new private feed address (the old one stops working), or close it
    /calendar/static/<file>            the page's own script and style (no CDN)
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy.exc import InterfaceError, OperationalError

from sfa_omf.am.caller_keys import RegisteredKeys
from sfa_omf.calendar.availability import Availability
from sfa_omf.calendar.database import Database, TransientConflict
from sfa_omf.calendar.feeds import FeedTokens, LeaseRevisions
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.outbox import Outbox, check_address, check_self_service_webhook, unfit_character_problem
from sfa_omf.calendar.timeline import BookingRow, NodeRow, Timeline
from sfa_omf.errors import GeniError, Reason
from sfa_omf.notify.channels import subscription_secret
from sfa_omf.times import utcnow
from sfa_omf.trust.gid import GidChain
from sfa_omf.trust.verifier import CredentialVerifier
from sfa_omf.web import gantt
from sfa_omf.web.forms import FormOrigin, FormRefused, channel_field, check_form, form_token, unfit_field_problem
from sfa_omf.web.ical import EventCache, NodePlace, fingerprint, group_leases, placements, render_feed, short_name
from sfa_omf.web.viewer import Viewer, identify
from sfa_omf.xrn import shown_urn

log = logging.getLogger("sfa_omf.web")

#: Node properties the node page shows to operators only (the advertisement shows no property): where a node is
#: reached and how it is managed. The aggregate stores local_address and lan_group at an agent's enrolment (a
#: volunteer's LAN address and group name, calendar/agents.py); the others are the operator's (agents may not set
#: them: agents/service.py NOT_FROM_AGENTS).
OPERATOR_PROPERTIES = frozenset(
    {"local_address", "lan_group", "network_address", "hostname", "uuid", "cmc", "interfaces"}
)
#: Feeds show leases that ended at most this long ago (older ones are history, not schedule).
FEED_PAST = timedelta(days=30)
ICS = "text/calendar; charset=utf-8"
HTML = "text/html; charset=utf-8"
CHANNEL_LABELS = {"email": "e-mail", "webhook": "webhook"}
RETRY_AFTER_S = 30
INTERNAL_ERROR = "the calendar failed to answer; the operator's log has the details"
#: The days the Gantt page shows (start=...): the calendar's useful past and future, far from datetime's limits.
FIRST_DAY = datetime(2000, 1, 1, tzinfo=UTC)
LAST_DAY = datetime(2999, 12, 31, tzinfo=UTC)
STATIC_TYPES = {"calendar.js": "text/javascript; charset=utf-8", "calendar.css": "text/css; charset=utf-8"}
#: The last part of a node feed's address, node/<name or URN>/feed.ics: a third part, so no node's name or URN can
#: make it another node's address (the former <key>.ics: node cam's feed was node cam.ics's page).
NODE_FEED = "feed.ics"
#: The addresses of the forms of /calendar/me (POST only); every other address is read with GET (or HEAD).
FORM_PATHS = (["me", "notify"], ["me", "feed"])
#: Answers that depend on who asks (a certificate, a form, a private feed's token) must be kept by no cache; the
#: others (the public view) may be kept but asked again before each use: the calendar changes at any moment.
PRIVATE_CACHING = "no-store"
PUBLIC_CACHING = "no-cache"
#: The page's script and style are the same for everyone (also for a certificate's holder) and change only with an
#: upgrade: a browser may reuse them for 5 minutes.
STATIC_CACHING = "max-age=300"


@dataclass(frozen=True)
class WebRequest:
    """What the server received: the path below /calendar, the query (first value of each name), the TLS chain; for
    a POST, its form fields and where the browser says it comes from."""

    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    caller_chain: GidChain = ()
    method: str = "GET"
    form: Mapping[str, str] = field(default_factory=dict)
    came_from: FormOrigin = field(default_factory=FormOrigin)


@dataclass(frozen=True)
class WebResponse:
    """An answer: its status, type and body, and any headers of its own (e.g. Retry-After)."""

    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WebSettings:
    host: str  # the aggregate's host name: iCal UIDs end with it
    admins: frozenset[str] = frozenset()
    horizon: timedelta = timedelta(days=14)  # as advertised in ListResources
    free_windows: int = 10
    base_path: str = "/calendar"
    form_key: bytes = b""  # signs the forms' tokens (forms.py); empty: a random key of this process
    email_by_default: bool = False  # [sfa_notify] email_by_default: the page shows the address on record as on
    # [sfa_notify] enabled (the server passes it): when off, /calendar/me says that no notifications are sent now.
    notify_enabled: bool = True
    # [sfa_notify] webhook_key (the server passes it): /calendar/me shows the viewer their own webhook's secret,
    # derived from it (channels.subscription_secret); "": webhooks are not signed, and the page says so. Never shown
    # itself. None (not passed): the page says nothing of signatures rather than something wrong.
    webhook_key: str | None = field(default=None, repr=False)


@dataclass
class MyPageFacts:
    """What /calendar/me shows of a user: their channels, the address on record used by default, their slices."""

    channels: dict[str, str]  # channel -> the address they chose
    defaults: dict[str, str]  # {"email": the address on record} when lease e-mails go there by default
    slices: list[str]


class NotFound(Exception):
    """A page or feed that does not exist (404)."""


class BadRequest(Exception):
    """A query the page cannot use (400); the message says what would work."""


class Forbidden(Exception):
    """A feed this viewer may not read (403); the message says how to get one."""


class NotAllowed(Exception):
    """A method this address does not take (405); ``allow`` lists those it takes (the Allow header)."""

    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message)
        self.allow = allow


class WebCalendar:
    """Answers the web calendar's requests from the calendar database."""

    def __init__(
        self,
        database: Database,
        verifier: CredentialVerifier,
        settings: WebSettings,
        clock: Callable[[], datetime] = utcnow,
        registered_keys: RegisteredKeys | None = None,
    ) -> None:
        """``registered_keys``: the local registry's word on its users' keys (the aggregate's, so one cache)."""
        self.timeline = Timeline(database)
        self.inventory = Inventory(database)
        self.availability = Availability(database)
        self.revisions = LeaseRevisions(database, clock)
        self.tokens = FeedTokens(database, clock)
        self.outbox = Outbox(database, clock)
        self.form_key = settings.form_key or secrets.token_bytes(32)
        self.verifier = verifier
        self.registered_keys = registered_keys
        self.settings = settings
        self.event_texts = EventCache()
        self.clock = clock
        self.templates = Environment(
            loader=PackageLoader("sfa_omf.web"), autoescape=select_autoescape(["html"]), trim_blocks=True
        )

    # -- dispatch -------------------------------------------------------------------------------------------------
    def handle(self, request: WebRequest) -> WebResponse:
        """The answer to one request; errors are pages that say what went wrong and what to do."""
        try:
            return self._route(request)
        except NotFound as exc:
            return self.error_page(404, "Not found", str(exc))
        except BadRequest as exc:
            return self.error_page(400, "Bad request", str(exc))
        except (Forbidden, FormRefused) as exc:
            return self.error_page(403, "Forbidden", str(exc))
        except NotAllowed as exc:
            return self.error_page(405, "Method not allowed", str(exc), {"Allow": exc.allow})
        except TransientConflict as exc:  # concurrent writers collided (outside a retry): busy, try again
            return self._unavailable(request, exc)
        except GeniError as exc:
            if _cannot_answer_now(exc):
                return self._unavailable(request, exc)
            if exc.reason in (Reason.SERVER_ERROR, Reason.DATABASE):  # a fault of ours (a query, the schema)
                log.error("web calendar %s failed: %s", shown_path(request.path), exc, exc_info=exc)
                return self.error_page(500, "Internal error", INTERNAL_ERROR)
            if exc.reason is Reason.NOT_FOUND:  # (a node removed while the page was being made)
                return self.error_page(404, "Not found", exc.message)
            # The caller's input: the message says what to change.
            return self.error_page(400, "Bad request", exc.message)
        except Exception:
            log.exception("web calendar %s failed", shown_path(request.path))
            return self.error_page(500, "Internal error", INTERNAL_ERROR)

    def _route(self, request: WebRequest) -> WebResponse:
        parts = [part for part in request.path.split("/") if part]
        address = f"{self.settings.base_path}{request.path}"
        if parts in FORM_PATHS:
            if request.method != "POST":
                raise NotAllowed(f"{address} takes the form of {self.settings.base_path}/me (POST)", "POST")
            return self.my_form(request, parts[1])
        if request.method not in ("GET", "HEAD"):
            raise NotAllowed(f"{address} is read with GET", "GET, HEAD")
        if parts == ["me"]:
            return self.my_page(self.viewer(request))
        if not parts:
            return self.gantt_page(request)
        if parts[0] == "static" and len(parts) == 2 and parts[1] in STATIC_TYPES:
            body = resources.files("sfa_omf.web").joinpath("static", parts[1]).read_bytes()
            return WebResponse(200, STATIC_TYPES[parts[1]], body)
        if len(parts) == 3 and parts[0] == "node" and parts[2] == NODE_FEED:
            return self.node_feed(self.viewer(request), parts[1])
        if len(parts) == 2 and parts[0] == "node":
            # A key that names a node whole is its page, also a name ending in .ics (node cam.ics). The former feed
            # address <key>.ics (subscriptions made before node/<key>/feed.ics) still answers when the key names no
            # node whole; for node cam, cam.ics is node cam.ics's page when there is one: its feed is cam/feed.ics.
            viewer = self.viewer(request)
            if parts[1].endswith(".ics") and not self._names_a_node(parts[1], viewer):
                return self.node_feed(viewer, parts[1].removesuffix(".ics"))
            return self.node_page(viewer, parts[1])
        if len(parts) == 2 and parts[0] == "slice" and parts[1].endswith(".ics"):
            return self.slice_feed(request, parts[1].removesuffix(".ics"))
        if len(parts) == 2 and parts[0] == "feed" and parts[1].endswith(".ics"):
            return self.user_feed(parts[1].removesuffix(".ics"))
        base = self.settings.base_path
        raise NotFound(f"nothing at {base}{request.path}; the calendar is at {base}/")

    def viewer(self, request: WebRequest) -> Viewer:
        """Who is looking (see viewer.py)."""
        refusal = self.registered_keys.refusal if self.registered_keys is not None else None
        return identify(
            request.caller_chain,
            self.verifier,
            self.settings.admins,
            self.timeline.slices_of_user,
            self.clock(),
            key_refusal=refusal,
        )

    # -- pages ----------------------------------------------------------------------------------------------------
    def gantt_page(self, request: WebRequest) -> WebResponse:
        """Nodes (grouped by pool, filtered by pool and hardware type) x a day or a week; bookings as bars."""
        viewer = self.viewer(request)
        now = self.clock()
        view = request.query.get("view", "day")
        if view not in gantt.VIEWS:
            raise BadRequest(f"view={view!r}: use view=day or view=week")
        start = _day(request.query.get("start"), now)
        window = (start, start + gantt.VIEWS[view])
        all_nodes = self._visible_nodes(viewer)
        pool = request.query.get("pool", "")
        hardware = request.query.get("hw", "")
        pools = sorted({node.pool for node in all_nodes})
        hardware_types = sorted({node.hardware_type for node in all_nodes if node.hardware_type})
        if pool and pool not in pools:
            raise BadRequest(f"pool={pool!r} is not a pool here; pools: {', '.join(pools) or 'none'}")
        if hardware and hardware not in hardware_types:
            known = ", ".join(hardware_types) or "none"
            raise BadRequest(f"hw={hardware!r} is no node's hardware type; types: {known}")
        nodes = [n for n in all_nodes if (not pool or n.pool == pool) and (not hardware or n.hardware_type == hardware)]
        # Ended leases too: their time was taken (empty = free); cancelled and expired ones never were.
        rows = self.timeline.bookings(window[0], window[1], include_ended=True) if nodes else []
        users = self._users_for(viewer, rows)
        now_left = gantt.place(now, now, *window)[0] if window[0] <= now < window[1] else None
        step = gantt.VIEWS[view]
        groups = gantt.layout(nodes, rows, viewer, window, users)
        return self._page(
            "gantt.html",
            viewer=viewer,
            view=view,
            window=window,
            groups=groups,
            details={bar.lease_id: bar.details for group in groups for line in group.lines for bar in line.bars},
            ticks=gantt.ticks(window, view),
            now=now,
            now_left=now_left,
            pools=pools,
            hardware_types=hardware_types,
            pool=pool,
            hardware=hardware,
            previous=_gantt_query(view, start - step, pool, hardware),
            following=_gantt_query(view, start + step, pool, hardware),
            today=_gantt_query(view, now, pool, hardware),
            node_count=len(nodes),
            first_day=FIRST_DAY,
            last_day=LAST_DAY,
        )

    def node_page(self, viewer: Viewer, key: str) -> WebResponse:
        """A node: its properties, its next free windows (the advertisement's numbers) and its bookings."""
        node = self._find_node(key, viewer)
        record = self.inventory.get_node(node.component_id)
        now = self.clock()
        windows = self.availability.free_windows(
            now, now + self.settings.horizon, count=self.settings.free_windows, nodes=[node.component_id]
        )[node.component_id]
        rows = self.timeline.bookings(start=now, node=node.component_id)
        users = self._users_for(viewer, rows)
        window = (now, now + self.settings.horizon)
        bars = [gantt.bar_for(row, viewer, window, users) for row in rows]
        properties = {
            name: value for name, value in record.properties.items() if viewer.admin or name not in OPERATOR_PROPERTIES
        }
        return self._page(
            "node.html",
            viewer=viewer,
            node=node,
            record=record,
            properties=properties,
            windows=windows,
            bars=bars,
            now=now,
        )

    # -- the viewer's own page (forms.py) ------------------------------------------------------------------------
    def my_page(self, viewer: Viewer) -> WebResponse:
        """The certificate's user: their channels and slices' feeds, and the forms to change them."""
        return self._my_page_answer(viewer, self._my_page_facts(viewer))

    def _my_page_facts(self, viewer: Viewer) -> MyPageFacts:
        """What /calendar/me shows of this viewer, read from the database (Forbidden without a certificate)."""
        if viewer.urn is None:
            raise Forbidden(
                "this page is for users who present their GENI user certificate (import your GID and key into the "
                "browser as a PKCS#12 file); " + (viewer.refused or "your browser presented none")
            )
        return MyPageFacts(
            channels=dict(self.outbox.subscriptions([viewer.urn]).get(viewer.urn, [])),
            defaults=self._email_default(viewer.urn),
            # Their slices' feeds, and those of slices where they booked but are no member (their own leases only).
            slices=sorted(viewer.slices | self.timeline.slices_booked_by(viewer.urn, self.clock() - FEED_PAST)),
        )

    def _my_page_answer(self, viewer: Viewer, facts: MyPageFacts, notice: str = "", feed_url: str = "") -> WebResponse:
        """/calendar/me made from facts already read: no database read, so it cannot fail after a change."""
        assert viewer.urn is not None  # _my_page_facts refuses a viewer without a user
        return self._page(
            "me.html",
            viewer=viewer,
            channels=facts.channels,
            defaults=facts.defaults,
            all_channels=CHANNEL_LABELS,
            slices=facts.slices,
            token=form_token(self.form_key, viewer.urn),
            notice=notice,
            feed_url=feed_url,
            notify_enabled=self.settings.notify_enabled,
            webhook_secret=self._webhook_secret(viewer.urn, facts.channels.get("webhook")),
            webhook_signed=self.settings.webhook_key != "",
        )

    def _webhook_secret(self, user_urn: str, url: str | None) -> str:
        """The secret of the user's own webhook subscription (what its messages are signed with), "" if they have
        none or webhooks are not signed. Only ever the viewer's: each user checks their messages with their own."""
        return subscription_secret(self.settings.webhook_key or "", user_urn, url) if url else ""

    def my_form(self, request: WebRequest, form_name: str) -> WebResponse:
        """A form of /calendar/me: checked to come from our page for this user, then done (see forms.py).

        The page of the answer is read before the change: once the change is made, the answer says so (and shows a
        new feed address) whatever the database does next. A read after the write that failed would answer 503 with
        the old feed address already dead and the new one never shown. A change that fails leaves everything as it
        was."""
        problem = unfit_field_problem(request.form)  # before any query: a NUL would reach the database
        if problem is not None:
            raise BadRequest(f"{problem}: send the form again from the page, without it")
        viewer = self.viewer(request)
        check_form(self.form_key, viewer, request.came_from, request.form)
        assert viewer.urn is not None  # check_form refuses a viewer without a user
        action = request.form.get("action", "")
        if form_name == "feed":
            if action not in ("new", "close"):
                raise BadRequest(f"action={action!r}: new or close")
            facts = self._my_page_facts(viewer)
            if action == "new":
                token = self.tokens.issue(viewer.urn)
                url = f"https://{request.came_from.host}{self.settings.base_path}/feed/{token}.ics"
                notice = "A new address of your private feed (the previous one, if any, no longer works)."
                return self._my_page_answer(viewer, facts, notice, url)
            closed = self.tokens.revoke(viewer.urn)
            notice = "Your private feed is closed." if closed else "You had no private feed."
            return self._my_page_answer(viewer, facts, notice)
        try:
            channel = channel_field(request.form)
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        if action not in ("subscribe", "unsubscribe"):
            raise BadRequest(f"action={action!r}: subscribe or unsubscribe")
        address = request.form.get("address", "").strip()
        if action == "subscribe":  # the address is checked before anything is read: GeniError (400) says what is wrong
            if channel == "webhook":
                check_self_service_webhook(address)
            else:
                check_address(channel, address)
        facts = self._my_page_facts(viewer)
        if action == "subscribe":
            self.outbox.subscribe(viewer.urn, channel, address)
            facts.channels[channel] = address
            facts.defaults.pop(channel, None)  # their own address now, not the one on record
            return self._my_page_answer(viewer, facts, self._subscribed_notice(channel, address))
        by_default = channel in facts.defaults
        was_in = self.outbox.unsubscribe(viewer.urn, channel) or by_default
        facts.channels.pop(channel, None)
        facts.defaults.pop(channel, None)  # an e-mail opt-out holds for the address on record too
        said = "You will no longer be told by" if was_in else "You were not subscribed to"
        return self._my_page_answer(viewer, facts, f"{said} {CHANNEL_LABELS[channel]}.")

    def _subscribed_notice(self, channel: str, address: str) -> str:
        label = CHANNEL_LABELS[channel]
        if self.settings.notify_enabled:
            return f"You will be told by {label} at {address}."
        return (
            f"Your {label} address {address} is kept, but this aggregate does not send notifications now: you will "
            "be told there once its operator turns them on."
        )

    def _email_default(self, user_urn: str) -> dict[str, str]:
        """{"email": the address on record} when lease e-mails go there by default for this user, else {}."""
        if not self.settings.email_by_default:
            return {}
        found = self.outbox.email_defaults([user_urn])
        return {"email": found[user_urn]} if user_urn in found else {}

    # -- feeds ----------------------------------------------------------------------------------------------------
    def node_feed(self, viewer: Viewer, key: str) -> WebResponse:
        """Every lease of a node; slice details only for the viewer's own slices (or an operator)."""
        node = self._find_node(key, viewer)
        lease_ids = {row.lease_id for row in self._feed_rows(node=node.component_id)}
        rows = self._feed_rows(lease_ids=lease_ids) if lease_ids else []
        return self._feed(f"{node.component_name} ({self.settings.host})", rows, viewer)

    def slice_feed(self, request: WebRequest, key: str) -> WebResponse:
        """Every lease of a slice, for its members and operators; to a user who is no member (any more), the leases
        they booked in it themselves, if any."""
        problem = unfit_character_problem(key, "the slice's name or URN")
        refused = f"{problem}: give the slice's URN, urn:publicid:IDN+AUTHORITY+slice+NAME"
        if problem is not None and "\x00" in key:  # before any query: PostgreSQL fails on a NUL
            raise BadRequest(refused)
        viewer = self.viewer(request)
        # A slice of the viewer's own named before the aggregate refused such URNs (test_ical_names) keeps its feed.
        if problem is not None and key not in viewer.slices:
            raise BadRequest(refused)
        slice_urn = self._find_slice(key, viewer)
        own = self._feed_rows(slices=[slice_urn], owner=viewer.urn) if viewer.urn and not viewer.sees(slice_urn) else []
        if not viewer.sees(slice_urn) and not own:
            who = "without a certificate" if viewer.urn is None else f"as {viewer.urn}"
            raise Forbidden(
                f"the feed of {slice_urn} is for its members: you came {who}. Present your GENI user certificate, "
                "or subscribe to your private feed (its address: the page /calendar/me with your certificate, or "
                "sfa-omf calendar feed-url YOUR_URN)"
            )
        rows = self._feed_rows(slices=[slice_urn]) if viewer.sees(slice_urn) else own
        return self._feed(f"{short_name(slice_urn)} ({self.settings.host})", rows, viewer)

    def user_feed(self, token: str) -> WebResponse:
        """The leases of every slice the token's user is a member of, and the leases they booked themselves (in a
        slice they have left: those only): a private feed a calendar client can subscribe to."""
        user = self.tokens.user_of(token)
        if user is None:
            raise NotFound(
                "no feed has this address (it may have been replaced); ask for a new one on the page /calendar/me "
                "with your certificate, or with sfa-omf calendar feed-url YOUR_URN"
            )
        slices = self.timeline.slices_of_user(user)
        rows = self._feed_rows(slices=slices) if slices else []
        own = [row for row in self._feed_rows(owner=user) if row.slice_urn not in slices]
        if own:
            rows = sorted([*rows, *own], key=lambda row: (row.start, row.lease_id, row.node))
        owner = Viewer(urn=user, admin=user in self.settings.admins, slices=frozenset(slices))
        return self._feed(f"{short_name(user)} at {self.settings.host}", rows, owner)

    def _feed_rows(
        self,
        node: str | None = None,
        slices: Collection[str] | None = None,
        lease_ids: Collection[str] | None = None,
        owner: str | None = None,
    ) -> list[BookingRow]:
        return self.timeline.bookings(
            start=self.clock() - FEED_PAST,
            node=node,
            slice_urns=slices,
            lease_ids=lease_ids,
            owner_urn=owner,
            include_inactive=True,
        )

    def _feed(self, name: str, rows: Sequence[BookingRow], viewer: Viewer) -> WebResponse:
        """The feed of these rows as this viewer may see them: nodes of private pools only for operators and the
        members of the slice that booked them (their own lease is no secret to them). Each lease is decided by itself,
        as on the Gantt (gantt.layout): the viewer's own lease in a slice that does not list them shows whole, that
        slice's other leases as "booked" (Viewer.sees_booking); the member list only to members and operators."""
        all_nodes = self.timeline.nodes()
        visible = {node.component_id for node in all_nodes if viewer.admin or node.federated}
        whole = {row.lease_id for row in rows if viewer.sees_booking(row)}
        names = {node.component_id: node.component_name for node in all_nodes}
        events = group_leases([row for row in rows if row.node in visible or row.lease_id in whole], names)
        # Every node of each lease (also those this reader is not shown), named and placed: a renamed node or one
        # moved to or from a private pool is a new revision for every reader alike.
        places = {
            node.component_id: NodePlace(node.component_id, node.component_name, node.federated) for node in all_nodes
        }
        placed = placements(rows, places)
        # The members of every slice of the feed, in one query: a change of them is a new revision of the slice's
        # leases for every reader alike (else readers who are and are not shown them would each record their own).
        members = self.timeline.users_of_slices({event.slice_urn for event in events})
        revisions = self.revisions.observe(
            {
                event.lease_id: fingerprint(event, members.get(event.slice_urn, ()), placed.get(event.lease_id, ()))
                for event in events
            }
        )
        shown_members = {slice_urn: users for slice_urn, users in members.items() if viewer.sees(slice_urn)}
        return WebResponse(
            200,
            ICS,
            render_feed(
                name, events, revisions, whole.__contains__, self.settings.host, shown_members, self.event_texts
            ),
        )

    # -- helpers --------------------------------------------------------------------------------------------------
    def _users_for(self, viewer: Viewer, rows: Sequence[BookingRow]) -> dict[str, list[str]]:
        return self.timeline.users_of_slices({row.slice_urn for row in rows if viewer.sees(row.slice_urn)})

    def _visible_nodes(self, viewer: Viewer) -> list[NodeRow]:
        """Every node for an operator; the federated pools' nodes (those the advertisement lists) for others."""
        nodes = self.timeline.nodes()
        return nodes if viewer.admin else [node for node in nodes if node.federated]

    def _names_a_node(self, key: str, viewer: Viewer) -> bool:
        """Is ``key`` the URN or the name of a node this viewer sees?"""
        return any(key in (node.component_id, node.component_name) for node in self._visible_nodes(viewer))

    def _find_node(self, key: str, viewer: Viewer) -> NodeRow:
        nodes = self._visible_nodes(viewer)
        exact = [node for node in nodes if node.component_id == key]
        named = exact or [node for node in nodes if node.component_name == key]
        if len(named) == 1:
            return named[0]
        if named:
            raise BadRequest(f"several nodes are named {key!r}; use the component id (URN) instead")
        raise NotFound(f"no node {key!r} here; the calendar lists every node")

    def _find_slice(self, key: str, viewer: Viewer) -> str:
        if key.startswith("urn:publicid:IDN+"):
            return key
        mine = [urn for urn in viewer.slices if short_name(urn) == key]
        if len(mine) == 1:
            return mine[0]
        raise Forbidden(
            f"give the slice's URN (urn:publicid:IDN+AUTHORITY+slice+{key}) or present the certificate of one of its "
            "users"
        )

    def _page(self, template: str, **values: Any) -> WebResponse:
        values.setdefault("base", self.settings.base_path)
        values["quote"] = lambda text: quote(text, safe="")
        body = self.templates.get_template(template).render(**values)
        return WebResponse(200, HTML, body.encode("utf-8"))

    def _unavailable(self, request: WebRequest, exc: Exception) -> WebResponse:
        """503 with Retry-After: the database cannot answer now. Its own words (host, port, user) go to the log only."""
        log.warning("web calendar %s: the calendar database cannot answer: %s", shown_path(request.path), exc)
        return self.error_page(
            503,
            "Service unavailable",
            "the calendar cannot be read just now; try again in a minute",
            {"Retry-After": str(RETRY_AFTER_S)},
        )

    def error_page(
        self, status: int, title: str, message: str, headers: Mapping[str, str] | None = None
    ) -> WebResponse:
        """A page saying what went wrong and what to do, with a link back to the calendar."""
        body = self.templates.get_template("error.html").render(
            base=self.settings.base_path, status=status, title=title, message=message
        )
        return WebResponse(status, HTML, body.encode("utf-8"), headers or {})


def shown_path(path: str) -> str:
    """A request's path for a log line: as it is, or escaped and cut as xrn.shown_urn shows what a caller sent (a NUL,
    a line break or a bidi override in a path never reaches or forges a log line). A private feed's token is its
    owner's secret (the database keeps only its SHA-256): /feed/<token>.ics is logged as that, never the token."""
    parts = path.split("/")
    named = [index for index, part in enumerate(parts) if part]
    if len(named) >= 2 and parts[named[0]] == "feed":
        parts[named[1]] = "<token>.ics"
        path = "/".join(parts[: named[1] + 1])
    return shown_urn(path)


def cache_control(request: WebRequest) -> str:
    """Cache-Control of the answer to this request (server/web.py sends it with every answer): STATIC_CACHING for
    the page's script and style, whoever asks; PRIVATE_CACHING when it may depend on who asks (a certificate was
    presented, a form was sent, the viewer's own page, a private feed's token in the address), else PUBLIC_CACHING."""
    parts = [part for part in request.path.split("/") if part]
    if request.method in ("GET", "HEAD") and len(parts) == 2 and parts[0] == "static" and parts[1] in STATIC_TYPES:
        return STATIC_CACHING
    private = request.caller_chain or request.method != "GET" or parts[:1] in (["me"], ["feed"])
    return PRIVATE_CACHING if private else PUBLIC_CACHING


def _cannot_answer_now(exc: GeniError) -> bool:
    """True when the database cannot answer now but may soon: busy, or down, unreachable or locked (the driver's
    OperationalError or InterfaceError). A query or schema fault (ProgrammingError, DataError...) is not: retrying
    it changes nothing."""
    if exc.reason is Reason.BUSY:
        return True
    return exc.reason is Reason.DATABASE and isinstance(exc.__cause__, OperationalError | InterfaceError)


def _gantt_query(view: str, day: datetime, pool: str, hardware: str) -> str:
    """The query of the Gantt page of this view, day and filters, URL-encoded (names may hold &, +, #, %); "" for
    a day the page does not show (the link is left out)."""
    if not FIRST_DAY <= day.replace(hour=0, minute=0, second=0, microsecond=0) <= LAST_DAY:
        return ""
    return urlencode({"view": view, "start": f"{day:%Y-%m-%d}", "pool": pool, "hw": hardware})


def _day(text: str | None, now: datetime) -> datetime:
    """Midnight UTC of the day asked for (YYYY-MM-DD, within FIRST_DAY..LAST_DAY), or of today."""
    if not text:
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError as exc:
        raise BadRequest(f"start={text!r}: give a day as YYYY-MM-DD (UTC), e.g. start={now:%Y-%m-%d}") from exc
    # Far-off days are nobody's schedule, and the page's arithmetic (a week on, a step back) must stay in range.
    if not FIRST_DAY <= day <= LAST_DAY:
        raise BadRequest(f"start={text!r}: give a day from {FIRST_DAY:%Y-%m-%d} to {LAST_DAY:%Y-%m-%d}")
    return day
