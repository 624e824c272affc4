"""The AM API's call boundary as a typed contract: one declared signature per method (v3 and v2), checked by the
dispatcher before any work is done.

Every argument and every option this aggregate reads has a checker here. A checker takes the value as XML-RPC
unmarshalled it and returns it in the one form the core uses (a list of URNs, a bool, users with valid keys), or
raises BadArgs naming the argument and what was expected. The core then never meets a wrong type: nothing it does
can crash on input, and nothing is written for a call whose input is wrong.

Options this aggregate does not know are passed through untouched (clients send many); the known ones are checked.
"""

from __future__ import annotations

import logging
import xmlrpc.client
from collections.abc import Mapping
from typing import Any

from sfa_omf.am.credentials import split_credentials
from sfa_omf.arguments import Checker, Param, Signature, boolean, struct, text, time_value, urn_of_type
from sfa_omf.errors import BadArgs
from sfa_omf.sshkeys import usable_ssh_public_keys

log = logging.getLogger("sfa_omf.am")

#: Bounds that no honest client reaches: a list of URNs, a users list.
MAX_URNS = 10_000
MAX_USERS = 1_000
MAX_ACTION_CHARS = 128
MAX_RSPEC_VERSION_CHARS = 64  # geni_rspec_version's type and version: "GENI", "3", "ProtoGENI", "OpenFlow"...


# -- checkers of arguments -----------------------------------------------------------------------------------------
def slice_urn(value: Any, where: str) -> str:
    """A slice URN."""
    return urn_of_type(value, where, ("slice",))


def urn_list(value: Any, where: str) -> list[str]:
    """Slice or sliver URNs: a list of strings (one bare string is taken as a list of one, as clients send it)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise BadArgs(f"{where} must be a list of slice or sliver URNs, not {type(value).__name__}")
    if not value:
        raise BadArgs(f"{where} is empty: name a slice URN or sliver URNs")
    if len(value) > MAX_URNS:
        raise BadArgs(f"{where} names {len(value)} URNs; at most {MAX_URNS} per call")
    return [urn_of_type(item, f"{where}[{index}]", ("slice", "sliver")) for index, item in enumerate(value)]


def credentials(value: Any, where: str) -> Any:
    """The credentials list: strings (sfi.py) or {geni_type, geni_version, geni_value} structs (omni)."""
    if value is not None and not isinstance(value, list | str | dict):
        raise BadArgs(f"{where} must be a list of credentials, not {type(value).__name__}")
    split_credentials(value)  # the same reader the core uses; its refusals name what was expected
    return value


def action(value: Any, where: str) -> str:
    """An operational action's name (geni_start, geni_stop, ...)."""
    name = text(value, where)
    if len(name) > MAX_ACTION_CHARS:
        raise BadArgs(f"{where} is {len(name)} characters long; an action name has at most {MAX_ACTION_CHARS}")
    return name


def rspec_document(value: Any, where: str) -> str:
    """A request RSpec: a string (the AM API's type). Base64 is refused rather than guessed at: decoding it as
    Latin-1 would book what the client never wrote."""
    if isinstance(value, xmlrpc.client.Binary):
        raise BadArgs(f"{where} is base64 (binary) data: send the request RSpec as an XML string")
    if not isinstance(value, str):
        raise BadArgs(f"{where} must be the request RSpec as a string, not {type(value).__name__}")
    if not value.strip():
        raise BadArgs(f"{where} is empty: send a request RSpec")
    return value


def users(value: Any, where: str) -> list[dict[str, Any]]:
    """geni_users / sfa_users: [{urn: user URN, keys: [SSH public key, ...]}, ...]; nil is none.

    Other members of a user's struct (email, person_hrn ...) are kept as sent; keys are checked one by one, so a
    string is never read one character per key and a key with options or a second line never reaches an account
    (BADARGS). A harmless key sshd would not use (DSA, RSA under 1024 bits, a certificate, an unknown type:
    sshkeys.key_problem) is left out, logged with the user and why, and fails nothing: clients (omni, jFed) send
    every key the clearinghouse holds for every member, and one member's old key must not fail the caller's call.
    """
    if value is None or value == "":  # AM API v2 clients send "" for no users
        return []
    if not isinstance(value, list):
        raise BadArgs(f"{where} must be a list of structs {{urn, keys}}, not {type(value).__name__}")
    if len(value) > MAX_USERS:
        raise BadArgs(f"{where} lists {len(value)} users; at most {MAX_USERS}")
    checked = []
    for index, user in enumerate(value):
        place = f"{where}[{index}]"
        if not isinstance(user, dict):
            raise BadArgs(f"{place} must be a struct {{urn, keys}}, not {type(user).__name__}")
        urn = urn_of_type(user.get("urn"), f"{place}.urn", ("user",))
        keys, unusable = usable_ssh_public_keys(user.get("keys"), f"{place}.keys")
        for key, problem in unusable:
            log.warning(
                "%s: a key of %s is left out (not written to authorized_keys): %s: %r", where, urn, problem, key[:40]
            )
        checked.append({**user, "urn": urn, "keys": keys})
    return checked


def rspec_version(value: Any, where: str) -> dict[str, Any]:
    """geni_rspec_version: a struct {type, version}, each at most MAX_RSPEC_VERSION_CHARS characters (so a refusal
    quoting them stays short)."""
    version = struct(value, where)
    for member in ("type", "version"):
        if not isinstance(version.get(member), str | int | float) or isinstance(version.get(member), bool):
            raise BadArgs(f"{where} needs a {member}, e.g. {{type: GENI, version: 3}}")
        length = len(str(version[member]))
        if length > MAX_RSPEC_VERSION_CHARS:
            raise BadArgs(
                f"{where}.{member} is {length} characters long; at most {MAX_RSPEC_VERSION_CHARS}, "
                "e.g. {type: GENI, version: 3}"
            )
    return version


def user_urn(value: Any, where: str) -> str:
    """A user URN (geni_speaking_for)."""
    return urn_of_type(value, where, ("user",))


#: The options this aggregate reads, and how each is checked. The one table: add an option here when it is used.
OPTION_CHECKERS: dict[str, Checker] = {
    "geni_rspec_version": rspec_version,
    "geni_available": boolean,
    "geni_compressed": boolean,
    "geni_best_effort": boolean,
    "geni_extend_alap": boolean,
    "geni_users": users,
    "sfa_users": users,
    "geni_start_time": time_value,
    "geni_end_time": time_value,
    "geni_speaking_for": user_urn,
    "geni_slice_urn": slice_urn,
    "list_leases": text,
    "sfa_omf_label": text,  # sfa_omf_save_image: the new image's label
    "sfa_omf_instance": text,  # sfa_omf_save_image: which container (name or sliver URN)
}


def options(value: Any, where: str) -> dict[str, Any]:
    """The options struct (nil or absent: none), each known option checked; unknown ones are kept as sent."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise BadArgs(f"{where} must be the options struct, not {type(value).__name__}")
    checked = dict(value)
    for name, check in OPTION_CHECKERS.items():
        if checked.get(name) is not None:
            checked[name] = check(checked[name], f"option {name}")
    return checked


# -- the signatures --------------------------------------------------------------------------------------------------
def _params(*params: Param) -> Signature:
    return Signature(params)


#: GetVersion reads no argument: whatever a client sends with it (options, credentials) is ignored.
ANYTHING = Signature((), extra_ignored=True)


CREDENTIALS = Param("credentials", credentials)
OPTIONS = Param("options", options, optional=True)
URNS = Param("urns", urn_list)
SLICE = Param("slice URN", slice_urn)

V3: dict[str, Signature] = {
    "GetVersion": ANYTHING,
    "ListResources": _params(CREDENTIALS, OPTIONS),
    "Describe": _params(URNS, CREDENTIALS, OPTIONS),
    "Allocate": _params(SLICE, CREDENTIALS, Param("rspec", rspec_document), OPTIONS),
    "Provision": _params(URNS, CREDENTIALS, OPTIONS),
    "Status": _params(URNS, CREDENTIALS, OPTIONS),
    "Renew": _params(URNS, CREDENTIALS, Param("expiration time", time_value), OPTIONS),
    "Delete": _params(URNS, CREDENTIALS, OPTIONS),
    "PerformOperationalAction": _params(URNS, CREDENTIALS, Param("action", action), OPTIONS),
    "Shutdown": _params(SLICE, CREDENTIALS, OPTIONS),
}

V2_USERS = Param("users", users, optional=True)
V2: dict[str, Signature] = {
    "GetVersion": ANYTHING,
    "ListResources": _params(CREDENTIALS, OPTIONS),
    "CreateSliver": _params(SLICE, CREDENTIALS, Param("request rspec", rspec_document), V2_USERS, OPTIONS),
    "SliverStatus": _params(SLICE, CREDENTIALS, OPTIONS),
    "RenewSliver": _params(SLICE, CREDENTIALS, Param("expiration time", time_value), OPTIONS),
    "DeleteSliver": _params(SLICE, CREDENTIALS, OPTIONS),
    "Shutdown": _params(SLICE, CREDENTIALS, OPTIONS),
    "ListSlices": _params(CREDENTIALS, OPTIONS),
    "GetTicket": _params(SLICE, CREDENTIALS, Param("request rspec", rspec_document), V2_USERS, OPTIONS),
}
