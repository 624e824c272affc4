"""Untrusted RSpec bytes -> an lxml tree to validate and read, refusing hostile input first; and where each element
is in the text, so that every problem can name its line and column.

Everything here stays inside rspec/: callers get plain data or a Problem, never an element.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from lxml import etree

from rspec.namespaces import display_name, geni
from rspec.problems import Problem, RSpecError
from sfa_omf.errors import Reason
from sfa_omf.xmlsafe import DEFAULT_MAX_BYTES, DEFAULT_MAX_DEPTH, UnsafeXml, XmlLimits, parse_untrusted


@dataclass(frozen=True)
class RSpecLimits:
    """What one RSpec may cost us. The defaults fit a request or manifest for thousands of nodes."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH
    # Longer than any URN, name or time; short enough that no attribute can carry a payload.
    max_attribute_chars: int = 64 * 1024
    # Past this many, more problems only hide the first ones.
    max_problems: int = 100
    # Real RSpecs write a handful per element (GENI's node: five; jFed adds a few of its own). libxml2's schema
    # validation and lxml's attribute access cost the square of an element's attribute count: one element with
    # 16 000 foreign attributes (190 KB) took 18 s to read.
    max_attributes_per_element: int = 256
    # In the whole document: about one per 20 bytes of a 4 MB document (ours write one per 60 or more).
    max_attributes: int = 200_000
    # libxml2 validates an element's children (GENI's extension wildcard is allowed everywhere) in the square of
    # their number: a node with 40 000 children took 4 s, 60 nodes of 10 000 (3.6 MB) 19 s, 120 of 5 000 5 s (3 s
    # of it what 600 000 elements cost anyway). The root's are validated in batches, so it has no limit; a node
    # holds a few interfaces, images and lease references, an SFA lease its nodes (1000 at most by default policy).
    max_children_per_element: int = 5_000
    # Real RSpecs declare a dozen namespaces on the root. The root's children are validated in batches under a copy
    # of it, and each one lent and put back is matched against the root's declarations: 20 000 declarations and as
    # many nodes (1 MB) took 8 s.
    max_namespaces_on_root: int = 256

    def xml(self) -> XmlLimits:
        """The limits sfa_omf.xmlsafe enforces."""
        return XmlLimits(max_bytes=self.max_bytes, max_depth=self.max_depth)


# Markup that is not a start tag, and the "<" that opens one. Attribute values cannot hold "<", so outside comments,
# CDATA sections and processing instructions every "<" followed by a name starts an element, in document order.
_MARKUP = re.compile(r"<!--.*?-->|<!\[CDATA\[.*?\]\]>|<\?.*?\?>|<![^>]*>|</[^>]*>|<(?=[^\s/!?])", re.DOTALL)
_DECLARATIONS = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)
# The encoding in an XML declaration at the very start of a text (after a byte order mark, if any).
_DECLARED_ENCODING = re.compile(r"""^(\ufeff?<\?xml\s[^>]*?)(\bencoding\s*=\s*(["'])[^"'>]*\3)""")


class Document:
    """A parsed RSpec and its text. Positions are computed on the first problem only: valid documents pay nothing."""

    def __init__(self, root: etree._Element, text: str) -> None:
        self.root = root
        self._text = text
        self._elements: dict[etree._Element, int] | None = None
        self._starts: list[int] = []
        self._lines: list[int] = []
        self._prefixes: dict[str, str] = {}

    def position(self, element: etree._Element) -> tuple[int, int]:
        """1-based line and column of the "<" that opens ``element``."""
        if self._elements is None:
            self._index()
        assert self._elements is not None
        index = self._elements.get(element)
        if index is None or index >= len(self._starts):
            line: object = element.sourceline  # the stubs type it oddly
            return (line if isinstance(line, int) else 1, 1)
        offset = self._starts[index]
        line = bisect.bisect_right(self._lines, offset)
        return line, offset - self._lines[line - 1] + 1

    def prefixes(self) -> dict[str, str]:
        """The namespace prefixes the document's elements are written with (for XPaths libxml2 writes with them)."""
        if self._elements is None:
            self._index()
        return self._prefixes

    def problem(self, element: etree._Element, message: str) -> Problem:
        """A problem located at ``element``."""
        line, column = self.position(element)
        return Problem(line, column, display_name(element.tag), message)

    def _index(self) -> None:
        # Holding the elements keeps lxml's proxies alive, so the same element is the same dictionary key later.
        elements = [e for e in self.root.iter() if isinstance(e.tag, str)]
        self._elements = {e: i for i, e in enumerate(elements)}
        # The prefixes elements are written with (libxml2's error paths name elements only). Not element.nsmap: it
        # holds every declaration in scope, and a root declaring thousands of prefixes made that cost minutes.
        for element in elements:
            if element.prefix:
                self._prefixes[element.prefix] = etree.QName(element).namespace or ""
        self._starts = [m.start() for m in _MARKUP.finditer(self._text) if m.group() == "<"]
        self._lines = [0] + [m.end() for m in re.finditer("\n", self._text)]
        # Text before the root (XML declaration, comments) holds no start tag, so index 0 is the root.


def load(data: bytes | str, limits: RSpecLimits | None = None, what: str = "RSpec") -> Document:
    """Parse untrusted RSpec text. Refuse (RSpecError) what is too big, deep, entity-laden or not well-formed."""
    limits = limits or RSpecLimits()
    raw = _utf8(data, what) if isinstance(data, str) else data
    if len(raw) > limits.max_bytes:
        # Checked before parse_untrusted (which checks too) so that the message names our limit plainly.
        problem = Problem(1, 1, "", f"the {what} is {len(raw)} bytes, more than the limit of {limits.max_bytes}")
        raise RSpecError([problem], what, reason=Reason.TOO_BIG)
    # Positions are counted in the text as the client wrote it (its declaration not rewritten).
    text = data if isinstance(data, str) else raw.decode("utf-8", errors="replace")
    try:
        root = parse_untrusted(raw, limits.xml(), what)
    except UnsafeXml as exc:
        line, column = _declaration_position(raw)
        raise RSpecError([Problem(line, column, "", str(exc))], what) from exc
    except etree.XMLSyntaxError as exc:
        line, column = exc.position
        message = str(exc.msg).split(", line ")[0]
        raise RSpecError([Problem(line or 1, column or 1, "", f"not well-formed XML: {message}")], what) from exc
    document = Document(root, text)
    _check_counts(document, limits, what)
    problems = _long_attributes(document, limits.max_attribute_chars)
    if problems:
        raise RSpecError(problems[: limits.max_problems], what)
    _adopt_unqualified(root)
    return document


def _utf8(text: str, what: str) -> bytes:
    """Text (an RSpec as XML-RPC hands it over) as the UTF-8 bytes the parser reads. Its XML declaration's encoding
    named the bytes of the file it was read from, which are gone: left as it is, encoding="ISO-8859-1" would have
    the UTF-8 bytes read as Latin-1 (garbled names) and encoding="UTF-16" would make the document unreadable."""
    try:
        # Blanked with as many spaces (UTF-8 is what is read without one), so every position stays where it was.
        blanked = _DECLARED_ENCODING.sub(lambda found: found[1] + " " * len(found[2]), text, count=1)
        return blanked.encode("utf-8")
    except UnicodeEncodeError as exc:
        # A lone surrogate, which no XML document can hold: say where, in the text as sent.
        start = next(i for i, char in enumerate(text) if "\ud800" <= char <= "\udfff")
        before = text[:start]
        line, column = before.count("\n") + 1, start - (before.rfind("\n") + 1) + 1
        message = f"the {what} is not valid Unicode text: it holds U+{ord(text[start]):04X}, a lone surrogate"
        raise RSpecError([Problem(line, column, "", message)], what) from exc


def _declaration_position(raw: bytes) -> tuple[int, int]:
    found = _DECLARATIONS.search(raw)
    if not found:
        return 1, 1
    before = raw[: found.start()]
    return before.count(b"\n") + 1, found.start() - (before.rfind(b"\n") + 1) + 1


def _check_counts(document: Document, limits: RSpecLimits, what: str) -> None:
    """Refuse a root declaring more namespaces than ``max_namespaces_on_root``, an element with more attributes than
    ``max_attributes_per_element`` or (the root apart) more children than ``max_children_per_element`` (the first
    such element, with its line), or a document with more than ``max_attributes`` attributes in all. One pass: lxml
    counts an element's attributes and children without building them."""
    declared = len(document.root.nsmap)  # the root's own declarations: it has no ancestors
    if declared > limits.max_namespaces_on_root:
        message = f"declares {declared} namespaces, more than the limit of {limits.max_namespaces_on_root} on the root"
        raise RSpecError([document.problem(document.root, message)], what)
    total = 0
    for element in document.root.iter(etree.Element):
        count = len(element.attrib)
        if count > limits.max_attributes_per_element:
            message = f"has {count} attributes, more than the limit of {limits.max_attributes_per_element} per element"
            raise RSpecError([document.problem(element, message)], what)
        children = len(element)
        if children > limits.max_children_per_element and element is not document.root:
            message = (
                f"has {children} child elements, more than the limit of {limits.max_children_per_element} per element"
            )
            raise RSpecError([document.problem(element, message)], what)
        total += count
        if total > limits.max_attributes:
            problem = Problem(1, 1, "", f"the {what} has more than {limits.max_attributes} attributes, the limit")
            raise RSpecError([problem], what)


def _long_attributes(document: Document, max_chars: int) -> list[Problem]:
    problems = []
    for element in document.root.iter():
        for name, value in element.attrib.items():
            if len(value) > max_chars:
                problems.append(
                    document.problem(
                        element,
                        f"attribute {display_name(str(name))} is {len(value)} characters long, "
                        f"more than the limit of {max_chars}",
                    )
                )
    return problems


def _adopt_unqualified(root: etree._Element) -> None:
    """Read unqualified RSpec elements as GENI v3 ones, as SFA does.

    A document with no namespace at all (hand-written requests) is read as GENI v3 throughout, except inside
    elements of other namespaces. In a GENI v3 document, SFA's <lease> written with xmlns="" is moved to GENI's
    namespace with its <node> children. Elements keep their line numbers, so problems still point at the text.
    """
    if root.tag == "rspec":
        stack = [root]
        while stack:
            element = stack.pop()
            if isinstance(element.tag, str) and not element.tag.startswith("{"):
                element.tag = geni(element.tag)
                stack.extend(element)
    elif root.tag == geni("rspec"):
        for lease in root.iterchildren("lease"):
            lease.tag = geni("lease")
            for node in lease.iterchildren("node"):
                node.tag = geni("node")
