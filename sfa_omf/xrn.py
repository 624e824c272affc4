"""GENI URNs and SFA human-readable names (HRNs), and the naming-authority rule between them.

A URN is ``urn:publicid:IDN+<authority>+<type>+<name>``; the authority's parts are joined by ``:``
(``onelab:inria``). The HRN joins the authority parts and the name with ``.`` (``onelab.inria.alice``); a dot that
belongs *inside* a part is written ``\\.`` in the HRN (``iotlab.m3-10\\.grenoble\\.iot-lab\\.info``).
Authority URNs name the authority itself: ``urn:publicid:IDN+onelab:inria+authority+sa`` is the HRN ``onelab.inria``.

Authority prefixes are always compared part by part, never as strings: ``onelab`` is an authority over
``onelab.inria.alice`` but not over ``onelabx.bob`` nor over ``onelab\\.org.x``.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

from sfa_omf.errors import BadArgs

URN_PREFIX = "urn:publicid:IDN+"

#: The authority "names" that stand for the authority itself in an authority URN.
AUTHORITY_ROLES = ("sa", "am", "cm", "ma", "sm", "ca")

_UNESCAPED_DOT = re.compile(r"(?<!\\)\.")
#: What no URN holds: control characters (C0, DEL, C1) and the line and paragraph separators. They would reach
#: e-mails, iCal feeds and RSpecs (a line break starts a new header or property).
_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Characters shown as nothing that are not formatting ones (Unicode's Default_Ignorable_Code_Point outside Cf: the
# combining grapheme joiner, Hangul fillers, Mongolian and other variation selectors, the unassigned U+FFF0-FFF8 and
# U+E0000-E0FFF), and the braille blank.
_SHOWN_AS_NOTHING = re.compile(
    "[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u2800\u3164\ufe00-\ufe0f\uffa0\ufff0-\ufff8\U000e0000-\U000e0fff]"
)
_CONTROL_NAMES = {
    "\n": "a line feed",
    "\r": "a carriage return",
    "\t": "a tab",
    "\x00": "NUL",
    "\x1b": "ESC",
    "\u2028": "a line separator",
    "\u2029": "a paragraph separator",
}


@dataclass(frozen=True)
class Urn:
    """A parsed GENI URN. ``authority`` holds the authority's parts; ``type`` is lower case."""

    authority: tuple[str, ...]
    type: str
    name: str

    @property
    def is_authority(self) -> bool:
        return self.type == "authority"

    def __str__(self) -> str:
        return f"{URN_PREFIX}{':'.join(self.authority)}+{self.type}+{self.name}"

    @property
    def hrn_parts(self) -> tuple[str, ...]:
        """The HRN's parts (unescaped): the authority parts, then the name unless this names an authority."""
        if self.is_authority:
            return self.authority
        return (*self.authority, self.name)

    @property
    def hrn(self) -> str:
        return join_hrn(self.hrn_parts)


def is_urn(text: str) -> bool:
    """True when text starts like a GENI URN (the prefix is matched case-insensitively)."""
    return text[: len(URN_PREFIX)].lower() == URN_PREFIX.lower()


def check_urn_characters(text: str, where: str) -> None:
    """Raise BadArgs naming the first control character (line breaks included), blank or invisible character of a
    URN, which one, at which character, and ``where`` (the argument it came in). See urn_character_problem."""
    problem = urn_character_problem(text)
    if problem is not None:
        raise BadArgs(f"{where}: {problem}: send it without them")


def shown_urn(text: str | None) -> str:
    """A URN (or what a caller sent as one) for a log line: as it is when it is a URN's text, else escaped and cut
    (repr, at most 120 characters): a line break or a bidi override in a caller's certificate or argument never forges
    or reorders a log line. None or empty: "-"."""
    if not text:
        return "-"
    if len(text) <= 300 and urn_character_problem(text) is None:
        return text
    shown = repr(text)
    return shown if len(shown) <= 120 else f"{shown[:117]}... ({len(text)} characters)"


def urn_character_problem(text: str, what: str = "the URN") -> str | None:
    """The first character of ``text`` that no URN holds, said for a person ("character 36 of the URN is a line feed
    (U+000A); a URN holds no control characters or line breaks"); None when there is none. ``what`` is what the text
    is, when it is not the URN itself but what one is made from ("the CN", "the HRN"): the same rule holds for it.

    Control characters would reach e-mails, feeds and RSpecs (a NUL, PostgreSQL too). A formatting character (Unicode
    category Cf: bidi overrides and isolates, zero-width characters, the byte order mark, tags) is invisible or
    reorders what follows it: a slice named with U+202E RIGHT-TO-LEFT OVERRIDE shows reversed, so that its URN can
    read as another slice's. Blanks (spaces of every width) and the other characters Unicode says to show as nothing
    (a combining grapheme joiner, variation selectors, Hangul fillers) make one URN display as another too. None has
    a place in a URN: a GENI URN writes a blank as "+", and a certificate's URN is ASCII.
    """
    found = _CONTROL_CHARACTER.search(text)
    if found is not None:
        char = found.group()
        name = _CONTROL_NAMES.get(char, "a control character")
        return (
            f"character {found.start() + 1} of {what} is {name} (U+{ord(char):04X}); a URN holds no control "
            "characters or line breaks"
        )
    if text.isascii():  # the usual URN: only the space to look for
        index = text.find(" ")
        if index >= 0:
            return f"character {index + 1} of {what} is a space; a URN holds no spaces"
        return None
    for index, char in enumerate(text):
        category = unicodedata.category(char)
        if category in ("Cf", "Zs") or _SHOWN_AS_NOTHING.match(char):
            name = unicodedata.name(char, "an invisible character")
            kind = {"Cf": "an invisible formatting character", "Zs": "a blank"}.get(category, "an invisible character")
            return (
                f"character {index + 1} of {what} is {name} (U+{ord(char):04X}), {kind}; a URN holds none (it "
                "would display as another URN)"
            )
    return None


#: Characters no part of a registered HRN may hold: ':' and '+' are the URN's separators (tb.x:y.carol would get
#: tb.x.y.carol's URN, so their identity), '/' would make a subdirectory of gids/.
_FORBIDDEN_IN_PART = frozenset(":+/")


def hrn_part_problem(part: str) -> str | None:
    """Why the registry refuses ``part`` (one part of an HRN, unescaped) in a name it registers, said for a person;
    None when it takes it. No ':', '+', '/', white space, control characters or characters that are not ASCII (a
    GID's URI must be ASCII). The registry (registry/records.py new_record_urn) and ``authority_hrn_problem`` apply
    this one rule."""
    bad = sorted(
        {
            repr(char)
            for char in part
            if char in _FORBIDDEN_IN_PART
            or char.isspace()
            or unicodedata.category(char).startswith("C")
            or not char.isascii()
        }
    )
    if not bad:
        return None
    return (
        f"the HRN part {part[:60]!r} holds {', '.join(bad)}: parts of a registered name may not hold ':', "
        "'+', '/', white space, control characters or characters that are not ASCII (use letters, digits, "
        "'-' and '_')"
    )


def authority_hrn_problem(hrn: str) -> str | None:
    """Why ``hrn`` (an HRN split_hrn reads) cannot name a local authority, said for a person; None when it can. Its
    URN (hrn_to_urn(hrn, "authority")) is in the authority's root certificate and every certificate it issues, which
    the trust layer refuses when their URN holds a character no URN holds (urn_character_problem): the authority
    could not even trust its own root. The HRN is checked itself, so that the character's position is in what the
    operator wrote: its URN adds and drops none of those characters. Then each part passes the registry's rule
    (hrn_part_problem): the names of the authority's users, slices and nodes start with its parts, so under a part
    the registry refuses (onelab:mylab) none could be registered. A ':' is taken for the URN's level separator: the
    dotted form is suggested."""
    try:
        urn = hrn_to_urn(hrn, "authority")
    except BadArgs as exc:  # no HRN at all (an empty part)
        return exc.message
    problem = urn_character_problem(hrn, "the HRN")
    if problem is not None:
        return (
            f"{hrn!r}: {problem}; it would be in the authority's URN ({urn!r}) and so in every certificate the "
            "authority issues, and such certificates are refused"
        )
    for part in split_hrn(hrn):
        problem = hrn_part_problem(part)
        if problem is not None:
            break
    else:
        return None
    dotted = hrn.replace(":", ".")
    hint = ""
    if ":" in hrn and authority_hrn_problem(dotted) is None:  # (not for "a:": "a." has an empty part)
        hint = f" (an HRN's levels are separated by '.', a URN's by ':': write {dotted!r})"
    return (
        f"{hrn!r}: {problem}; no user, slice or node could be registered under the authority, whose names start "
        f"with its HRN{hint}"
    )


#: URNs parsed lately, kept parsed: a Status parses the same few URNs (the slice's, the caller's, the credential's
#: owner and target) seven times (about 6 % of the call's own work). Bounded in number and in size: a URN longer
#: than any a caller may send (arguments are cut at 1 024 characters; certificates inside credentials are not) is
#: parsed each time, never kept. A refusal is raised, never kept.
PARSED_URNS_KEPT = 4096
LONGEST_URN_KEPT = 1024


def parse_urn(text: str) -> Urn:
    """Parse a GENI URN; raise BadArgs naming what is wrong. The Urn is frozen, so one kept is shared."""
    if len(text) <= LONGEST_URN_KEPT:
        return _parse_urn_kept(text)
    return _parse_urn(text)


@functools.lru_cache(maxsize=PARSED_URNS_KEPT)
def _parse_urn_kept(text: str) -> Urn:
    return _parse_urn(text)


def _parse_urn(text: str) -> Urn:
    if not is_urn(text):
        raise BadArgs(f"{text!r} is not a GENI URN: it must start with {URN_PREFIX!r}")
    body = text[len(URN_PREFIX) :]
    pieces = body.split("+", 2)
    if len(pieces) != 3 or not all(pieces):
        raise BadArgs(f"{text!r} is not a GENI URN: expected {URN_PREFIX}<authority>+<type>+<name>")
    authority_text, type_, name = pieces
    authority = tuple(authority_text.split(":"))
    if any(not part for part in authority):
        raise BadArgs(f"{text!r} has an empty authority part")
    return Urn(authority=authority, type=type_.lower(), name=name)


def split_hrn(hrn: str) -> tuple[str, ...]:
    """Split an HRN into its parts at unescaped dots, unescaping ``\\.`` inside each part."""
    if not hrn:
        raise BadArgs("an empty HRN names nothing")
    parts = tuple(part.replace("\\.", ".") for part in _UNESCAPED_DOT.split(hrn))
    if any(not part for part in parts):
        raise BadArgs(f"HRN {hrn!r} has an empty part")
    return parts


def join_hrn(parts: tuple[str, ...] | list[str]) -> str:
    """Join HRN parts, escaping dots that belong inside a part."""
    return ".".join(part.replace(".", "\\.") for part in parts)


def urn_to_hrn(urn: str) -> tuple[str, str]:
    """Return (hrn, type) for a URN: urn:publicid:IDN+onelab:inria+user+alice -> ("onelab.inria.alice", "user")."""
    parsed = parse_urn(urn)
    return parsed.hrn, parsed.type


def hrn_to_urn(hrn: str, type_: str) -> str:
    """Return the URN for an HRN of a given type.

    For ``authority`` (or ``authority+sa``, ``authority+am`` ...) the whole HRN is the authority and the role
    defaults to ``sa``.
    """
    parts = split_hrn(hrn)
    kind, _, role = type_.lower().partition("+")
    if kind == "authority":
        return str(Urn(authority=parts, type="authority", name=role or "sa"))
    if len(parts) < 2:
        raise BadArgs(f"HRN {hrn!r} names no authority: a {kind} HRN needs at least <authority>.<name>")
    return str(Urn(authority=parts[:-1], type=kind, name=parts[-1]))


def hrn_authority(hrn: str) -> str:
    """The authority HRN of an HRN (everything but the last part)."""
    parts = split_hrn(hrn)
    if len(parts) < 2:
        raise BadArgs(f"HRN {hrn!r} is top level and has no authority above it")
    return join_hrn(parts[:-1])


def is_authority_for(authority_hrn: str, hrn: str) -> bool:
    """True when ``authority_hrn`` is ``hrn`` itself or a part-wise prefix of it (SFA's naming rule)."""
    auth_parts = split_hrn(authority_hrn)
    parts = split_hrn(hrn)
    return len(auth_parts) <= len(parts) and parts[: len(auth_parts)] == auth_parts


def is_authority_over_urn(authority_hrn: str, urn: Urn) -> bool:
    """True when the authority ``authority_hrn`` may name what ``urn`` names. An authority URN: the authority itself
    or one under it (is_authority_for). Anything else: the authority is over the URN's authority field, not merely
    over its HRN: ``fed.sub`` names ``urn:publicid:IDN+fed:sub+user+x``, but not ``urn:publicid:IDN+fed+user+sub``
    (a user of ``fed``), whose HRN is ``fed.sub`` too."""
    if urn.is_authority:
        return is_authority_for(authority_hrn, urn.hrn)
    auth_parts = split_hrn(authority_hrn)
    return len(auth_parts) <= len(urn.authority) and urn.authority[: len(auth_parts)] == auth_parts
