"""Operator commands of the web calendar: ``sfa-omf calendar feed-url|feed-revoke USER_URN``.

A user's private iCal feed lives behind an unguessable token; the operator hands its address to the user (who can
paste it into any calendar client that subscribes to iCal over HTTPS).
"""

from __future__ import annotations

import argparse

from sfa_omf.cli_common import command_database, command_group, command_settings
from sfa_omf.config import CONFIG_FILE_NAME
from sfa_omf.errors import BadArgs


def add_web_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds the ``calendar`` command group."""
    config_option = argparse.ArgumentParser(add_help=False)
    config_option.add_argument("--config", help=f"configuration file (default $SFA_OMF_CONFIG or ./{CONFIG_FILE_NAME})")
    group = command_group(commands, "calendar", "the web calendar and iCal feeds")
    url = group.add_parser(
        "feed-url", parents=[config_option], help="make a user's private iCal feed; prints its address"
    )
    url.add_argument("user_urn", help="urn:publicid:IDN+AUTHORITY+user+NAME")
    url.set_defaults(handler=_feed_url)
    revoke = group.add_parser("feed-revoke", parents=[config_option], help="close a user's private iCal feed")
    revoke.add_argument("user_urn")
    revoke.set_defaults(handler=_feed_revoke)


def _feed_url(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.feeds import FeedTokens, check_user_urn

    settings = command_settings(args)
    if not settings.web_enabled:
        raise BadArgs("the web calendar is off ([sfa_web] enabled = no): no feed would be served")
    check_user_urn(args.user_urn)  # before the database is asked who it is
    database = command_database(settings)
    try:
        tokens = FeedTokens(database)
        if not tokens.known_user(args.user_urn):  # an address for nobody would be handed out as working
            raise BadArgs(
                f"{args.user_urn} is neither a user of this registry nor a member of a slice here, nor did they book "
                "here: no feed made; check the URN (sfa-omf user list lists this registry's users)"
            )
        token = tokens.issue(args.user_urn)
    finally:
        database.dispose()
    print(f"{settings.https_url(settings.aggregate_port)}/calendar/feed/{token}.ics")
    print("(a new address: the previous one, if any, no longer works)")
    return 0


def _feed_revoke(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.feeds import FeedTokens

    database = command_database(command_settings(args))
    try:
        closed = FeedTokens(database).revoke(args.user_urn)
    finally:
        database.dispose()
    print(f"closed the feed of {args.user_urn}" if closed else f"{args.user_urn} had no feed")
    return 0 if closed else 1
