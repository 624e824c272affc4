"""Checking what arrives over XML-RPC, argument by argument: the typed contract of a call boundary.

A checker takes a value as XML-RPC unmarshalled it and the place it came from (for the message); it returns the value
in the one form the code behind the boundary uses, or raises BadArgs naming the place and what was expected. The AM
API's signatures (am/contract.py) and the registry's (registry/api.py) are built from these.
"""

from __future__ import annotations

import re
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sfa_omf.errors import BadArgs
from sfa_omf.xrn import check_urn_characters, is_urn, parse_urn

MAX_URN_CHARS = 1024
MAX_TEXT_CHARS = 4096
_EMAIL = re.compile(r"^[^@\s<>\"']{1,64}@[A-Za-z0-9.-]{1,253}$")

Checker = Callable[[Any, str], Any]


@dataclass(frozen=True)
class Param:
    """One positional argument: its name (as messages say it), its checker, and whether it may be left out."""

    name: str
    check: Checker
    optional: bool = False


@dataclass(frozen=True)
class Signature:
    """A method's positional arguments, in order. ``extra_ignored``: arguments past the declared ones are ignored
    (GetVersion, which some clients call with credentials first) instead of refused."""

    params: tuple[Param, ...]
    extra_ignored: bool = False

    def check(self, args: tuple[Any, ...], method: str = "") -> tuple[Any, ...]:
        """The arguments checked and converted, or BadArgs naming the method and the first argument that is wrong."""
        prefix = f"{method[:80]}: " if method else ""
        if len(args) > len(self.params):
            if not self.extra_ignored:
                raise BadArgs(
                    f"{prefix}{len(args)} arguments sent, at most {len(self.params)} expected "
                    f"({', '.join(param.name for param in self.params)})"
                )
            args = args[: len(self.params)]
        checked = []
        for index, param in enumerate(self.params):
            where = f"argument {index + 1} ({param.name})"
            if index >= len(args):
                if not param.optional:
                    raise BadArgs(f"{prefix}missing argument {index + 1}: {param.name}")
                checked.append(param.check(None, where))
                continue
            checked.append(param.check(args[index], where))
        return tuple(checked)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else type(value).__name__
    return repr(text[:80]) if isinstance(value, str) else text


def urn_of_type(value: Any, where: str, kinds: tuple[str, ...]) -> str:
    """A URN string of one of ``kinds``, in its canonical form: prefix and type in lower case, authority and name
    as sent.

    The credential check compares URNs that way (prefix and type case-insensitively), so every other spelling is
    turned into the one the calendar and the slice table key on: ``URN:PUBLICID:IDN+a+SLICE+x`` is the slice
    ``urn:publicid:IDN+a+slice+x``, never a second one beside it.
    """
    expected = " or ".join(kinds)
    if not isinstance(value, str):
        raise BadArgs(f"{where} must be a {expected} URN string, not {type(value).__name__}")
    if len(value) > MAX_URN_CHARS:
        raise BadArgs(f"{where} is {len(value)} characters long: a URN has at most {MAX_URN_CHARS}")
    check_urn_characters(value, where)  # they would reach e-mails, feeds and RSpecs (a NUL, PostgreSQL too)
    parsed = None
    if is_urn(value):
        try:
            parsed = parse_urn(value)
        except BadArgs:
            parsed = None
    if parsed is None or parsed.type not in kinds:
        what = f"neither a {' nor a '.join(kinds)}" if len(kinds) > 1 else f"not a {expected}"
        raise BadArgs(f"{where}: {_short(value)} is {what} URN (urn:publicid:IDN+<authority>+{kinds[0]}+<name>)")
    return str(parsed)


def text(value: Any, where: str) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise BadArgs(f"{where} must be a non-empty string, not {_short(value) if value != '' else 'empty'}")
    if len(value) > MAX_TEXT_CHARS:
        raise BadArgs(f"{where} is {len(value)} characters long; at most {MAX_TEXT_CHARS}")
    return value


def time_value(value: Any, where: str) -> str | int | float | datetime:
    """A time as clients send it (RFC 3339 or epoch string, a number, an XML-RPC dateTime); parsed by the core
    against its clock."""
    if isinstance(value, xmlrpc.client.DateTime):
        return str(value.value)
    if isinstance(value, bool) or not isinstance(value, str | int | float | datetime):
        raise BadArgs(f"{where} must be a time string such as 2026-12-01T10:00:00Z, not {type(value).__name__}")
    if isinstance(value, str) and not value.strip():
        raise BadArgs(f"{where} is empty: give a time such as 2026-12-01T10:00:00Z")
    return value


def boolean(value: Any, where: str) -> bool:
    """XML-RPC boolean, or what clients send for one: 0/1, "true"/"false"."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise BadArgs(f"{where} must be a boolean (true or false), not {_short(value)}")


def struct(value: Any, where: str) -> dict[str, Any]:
    """An XML-RPC struct."""
    if not isinstance(value, dict):
        raise BadArgs(f"{where} must be a struct, not {type(value).__name__}")
    return dict(value)


def string_list(value: Any, where: str, limit: int = 10_000) -> list[str]:
    """A list of non-empty strings (nil is none)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadArgs(f"{where} must be a list of strings, not {type(value).__name__}")
    if len(value) > limit:
        raise BadArgs(f"{where} has {len(value)} items; at most {limit}")
    return [text(item, f"{where}[{index}]") for index, item in enumerate(value)]


def email(value: Any, where: str) -> str:
    """An e-mail address (empty: none)."""
    if not isinstance(value, str):
        raise BadArgs(f"{where} must be an e-mail address string, not {type(value).__name__}")
    address = value.strip()
    if address and not _EMAIL.match(address):
        raise BadArgs(f"{where}: {address[:80]!r} is not an e-mail address (name@example.org)")
    return address
