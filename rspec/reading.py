"""Reading attribute values of an RSpec, collecting a precise problem for each one that is wrong.

A reader never raises on bad input: it records a Problem (where, which element, what was expected) and returns None,
so one pass reports everything wrong with a document.
"""

from __future__ import annotations

import re
from datetime import datetime

from lxml import etree

from rspec.document import Document
from rspec.problems import Problem
from sfa_omf.errors import BadArgs
from sfa_omf.times import parse_time

# xsd:dateTime, the lexical form of RFC 3339 times in RSpecs. No offset means UTC.
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?$")
_INTEGER = re.compile(r"^\+?\d{1,18}$")
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
_EXAMPLE_TIME = "2026-12-01T10:00:00Z"


class Reader:
    """Reads one document's values; ``problems`` holds what was wrong."""

    def __init__(self, document: Document, max_problems: int = 100) -> None:
        self.document = document
        self.problems: list[Problem] = []
        self.max_problems = max_problems

    @property
    def full(self) -> bool:
        """Enough problems found: more would only hide the first ones, so a long document need not be read on."""
        return len(self.problems) >= self.max_problems

    def report(self, element: etree._Element, message: str) -> None:
        """Record a problem at ``element`` (none once ``full``: a long list is cut there anyway)."""
        if not self.full:
            self.problems.append(self.document.problem(element, message))

    def text(self, element: etree._Element, name: str, required: bool = False) -> str | None:
        """An attribute's value, stripped; None (and a problem if required) when absent or empty."""
        value = element.get(name)
        if value is not None and value.strip():
            return value.strip()
        if required:
            self.report(element, f"attribute {name} is required" if value is None else f"attribute {name} is empty")
        return None

    def boolean(self, element: etree._Element, name: str) -> bool | None:
        """An xsd:boolean attribute (true, false, 1, 0)."""
        value = self.text(element, name)
        if value is None:
            return None
        if value not in _BOOLEANS:
            self.report(element, f"{name}={value!r} is not a boolean; expected true or false")
        return _BOOLEANS.get(value)

    def positive_int(
        self, element: etree._Element, name: str, unit: str, required: bool = False, maximum: int | None = None
    ) -> int | None:
        """A whole number greater than zero and at most ``maximum``, counted in ``unit`` (for the message)."""
        value = self.text(element, name, required)
        if value is None:
            return None
        if not _INTEGER.match(value) or len(value) > 30 or int(value) <= 0:
            self.report(element, f"{name}={value[:40]!r} is not a whole number of {unit} greater than zero")
            return None
        if maximum is not None and int(value) > maximum:
            self.report(element, f"{name}={value[:40]} is out of range: at most {maximum} {unit} (ten years)")
            return None
        return int(value)

    def rfc3339(self, element: etree._Element, name: str, required: bool = False) -> datetime | None:
        """An RFC 3339 time (xsd:dateTime): 2026-12-01T10:00:00Z; without an offset it is UTC."""
        value = self.text(element, name, required)
        if value is None:
            return None
        unreadable = f"{name}={value[:40]!r} is not an RFC 3339 time; expected e.g. {_EXAMPLE_TIME}"
        if _DATETIME.match(value):
            return self._parse(element, name, value, unreadable)
        self.report(element, unreadable)
        return None

    def epoch_or_rfc3339(self, element: etree._Element, name: str) -> datetime | None:
        """Epoch seconds (SFA's form: "1795316400") or an RFC 3339 time."""
        value = self.text(element, name)
        if value is None:
            return None
        unreadable = f"{name}={value[:40]!r} is neither epoch seconds nor an RFC 3339 time; expected e.g. 1795316400"
        if (_INTEGER.match(value) and not value.startswith("+") and len(value) <= 12) or _DATETIME.match(value):
            return self._parse(element, name, value, unreadable)
        self.report(element, unreadable)
        return None

    def _parse(self, element: etree._Element, name: str, value: str, unreadable: str) -> datetime | None:
        try:
            return parse_time(value)
        except BadArgs as exc:  # well-formed but impossible (month 13), or out of range (year 9999 with an offset)
            self.report(element, exc.message if "out of range" in exc.message else unreadable)
            return None
