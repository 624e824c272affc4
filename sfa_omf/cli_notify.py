"""Operator commands of notifications: ``sfa-omf notify test|subscribe|unsubscribe|secret|status``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from sfa_omf.calendar.records import CHANNELS
from sfa_omf.cli_common import command_database, command_group, command_settings
from sfa_omf.config import CONFIG_FILE_NAME
from sfa_omf.errors import BadArgs

if TYPE_CHECKING:
    from sfa_omf.calendar.database import Database


def add_notify_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds the ``notify`` command group."""
    config_option = argparse.ArgumentParser(add_help=False)
    config_option.add_argument("--config", help=f"configuration file (default $SFA_OMF_CONFIG or ./{CONFIG_FILE_NAME})")
    group = command_group(commands, "notify", "notifications by e-mail and webhooks")
    test = group.add_parser("test", parents=[config_option], help="send a test message to an address or URL now")
    test.add_argument("address", help="an e-mail address or a webhook URL")
    test.set_defaults(handler=_test)
    subscribe = group.add_parser("subscribe", parents=[config_option], help="opt a user in to a channel")
    subscribe.add_argument("user_urn")
    subscribe.add_argument("channel", choices=CHANNELS)
    subscribe.add_argument(
        "address", nargs="?", help="the e-mail address or webhook URL (e-mail: default the registry record's)"
    )
    subscribe.set_defaults(handler=_subscribe)
    unsubscribe = group.add_parser("unsubscribe", parents=[config_option], help="opt a user out of a channel")
    unsubscribe.add_argument("user_urn")
    unsubscribe.add_argument("channel", choices=CHANNELS)
    unsubscribe.set_defaults(handler=_unsubscribe)
    secret = group.add_parser(
        "secret",
        parents=[config_option],
        help="the secret a webhook's messages are signed with (a user's subscription, or an operator's URL)",
    )
    secret.add_argument("url", help="the webhook URL")
    secret.add_argument(
        "user_urn", nargs="?", help="the user whose webhook it is (none: a URL of [sfa_notify] operators)"
    )
    secret.set_defaults(handler=_secret)
    status = group.add_parser("status", parents=[config_option], help="messages pending, sent and given up")
    status.set_defaults(handler=_status)


def _test(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.outbox import check_address
    from sfa_omf.notify.channels import DeliveryError
    from sfa_omf.notify.notifier import Notifier, test_message
    from sfa_omf.server.app import notify_settings_of  # the configuration -> NotifySettings, in one place

    settings = command_settings(args)
    message = test_message(args.address)
    check_address(message.channel, args.address)
    database = command_database(settings)
    try:
        Notifier(database, notify_settings_of(settings)).send(message)
    except DeliveryError as exc:
        print(f"not delivered: {exc}")
        return 1
    finally:
        database.dispose()
    print(f"sent a test message to {_shown_address(message.channel, args.address)} ({message.channel})")
    return 0


def _subscribe(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.outbox import Outbox

    settings = command_settings(args)
    database = command_database(settings)
    try:
        address = args.address or _registered_email(database, args.user_urn, args.channel)
        Outbox(database).subscribe(args.user_urn, args.channel, address)
    finally:
        database.dispose()
    print(f"{args.user_urn} gets {args.channel} notifications at {_shown_address(args.channel, address)}")
    if args.channel == "webhook":
        print(_secret_line(settings.notify_webhook_key, args.user_urn, address))
    return 0


def _secret(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.outbox import check_address
    from sfa_omf.notify.channels import OPERATOR_SUBSCRIBER

    check_address("webhook", args.url)
    if args.user_urn and "+user+" not in args.user_urn:  # a typo would print a secret nobody's messages carry
        raise BadArgs(f"{args.user_urn!r} is not a user URN (urn:publicid:IDN+AUTHORITY+user+NAME)")
    settings = command_settings(args)
    print(_secret_line(settings.notify_webhook_key, args.user_urn or OPERATOR_SUBSCRIBER, args.url))
    return 0


def _secret_line(webhook_key: str, user_urn: str, url: str) -> str:
    """What the commands print of a subscription's secret (``subscription_secret``): to be given to that user (or,
    for an operator's URL, to whoever runs its receiver) only; each user's is their own."""
    from sfa_omf.notify.channels import subscription_secret

    if not webhook_key:
        return "webhooks are not signed: [sfa_notify] webhook_key is not set"
    return "signing secret (X-SFA-OMF-Signature; give it to this webhook's owner only): " + subscription_secret(
        webhook_key, user_urn, url
    )


def _shown_address(channel: str, address: str) -> str:
    """An address as the commands print it: a webhook by its origin and digest (its path and query often hold a
    token, and a terminal's output ends up in logs and bug reports), an e-mail address as it is."""
    from sfa_omf.notify.channels import shown_webhook

    return shown_webhook(address) if channel == "webhook" else address


def _registered_email(database: Database, user_urn: str, channel: str) -> str:
    from sfa_omf.registry.records import Records
    from sfa_omf.trust.gid import load_gid_chain
    from sfa_omf.xrn import urn_to_hrn

    """The e-mail address the local registry has for the user: its record's, else its GID's."""
    if channel != "email":
        raise BadArgs("a webhook needs its URL: sfa-omf notify subscribe USER_URN webhook https://...")
    hrn, _ = urn_to_hrn(user_urn)  # BadArgs naming what is wrong with a malformed URN
    record = Records(database).get(hrn)
    if record is not None and record.email:
        return record.email
    if record is not None and record.gid:
        email = load_gid_chain(record.gid)[0].email
        if email:
            return email
    raise BadArgs(f"the registry has no e-mail address for {user_urn}: give it (... email NAME@DOMAIN)")


def _unsubscribe(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.outbox import Outbox

    settings = command_settings(args)
    database = command_database(settings)
    try:
        outbox = Outbox(database)
        # A user mailed at the address on record (no address of their own) is unsubscribed too: an opt-out is kept.
        by_default = (
            args.channel == "email"
            and settings.notify_email_by_default
            and args.user_urn in outbox.email_defaults([args.user_urn])
        )
        removed = outbox.unsubscribe(args.user_urn, args.channel) or by_default
    finally:
        database.dispose()
    print(f"{args.user_urn}: no more {args.channel} notifications" if removed else "was not subscribed")
    return 0 if removed else 1


def _status(args: argparse.Namespace) -> int:
    from sfa_omf.calendar.outbox import Outbox

    database = command_database(command_settings(args))
    try:
        counts = Outbox(database).counts()
    finally:
        database.dispose()
    print(f"pending {counts.pending}  sent {counts.sent}  failed {counts.failed}")
    return 0
