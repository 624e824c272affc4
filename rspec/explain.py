"""What our RELAX NG schemas expect of an element, read from the .rng files themselves, to complete libxml2's
terse validation errors ("Element node failed to validate attributes") with what was expected.

It understands the constructs our schemas use (grammar, include with overrides, define with combine, start, ref,
element, attribute, interleave, group, choice, optional, zeroOrMore, oneOrMore, data, value, text, empty and name
classes). The schema stays the one source of truth: there is no second table of rules to keep in step.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from lxml import etree

from rspec.namespaces import display_name

RNG = "http://relaxng.org/ns/structure/1.0"
_NAME_CLASSES = {f"{{{RNG}}}{n}" for n in ("name", "anyName", "nsName", "choice")}
_NAMES = {f"{{{RNG}}}{n}" for n in ("name", "anyName", "nsName")}  # never patterns, unlike choice

# How messages describe the datatypes our schemas use.
_DATATYPES = {
    "dateTime": "an RFC 3339 time",
    "boolean": "true or false",
    "positiveInteger": "a whole number > 0",
    "nonNegativeInteger": "a whole number",
}


def _rng(local: str) -> str:
    return f"{{{RNG}}}{local}"


def _content(pattern: etree._Element) -> list[etree._Element]:
    """The content patterns of an <element> or <attribute>: its children without the name class that names it."""
    children = list(pattern)
    if pattern.get("name") is None and children and children[0].tag in _NAME_CLASSES:
        return children[1:]
    return children


class Grammar:
    """One schema (a top-level .rng and everything it includes), with the definitions resolved."""

    def __init__(self, path: Path) -> None:
        self._defines: dict[str, list[etree._Element]] = {}
        self._start: list[etree._Element] = []
        self._default_ns: dict[etree._Element, str] = {}
        self._load(path, "", frozenset())

    # -- loading --------------------------------------------------------------------------------------------

    def _load(self, path: Path, inherited_ns: str, overridden: frozenset[str]) -> None:
        root = etree.parse(str(path)).getroot()
        self._default_ns[root] = root.get("ns", inherited_ns)
        for child in root.iterchildren(_rng("include"), _rng("define"), _rng("start"), _rng("div")):
            self._component(child, path, overridden)

    def _component(self, child: etree._Element, path: Path, overridden: frozenset[str]) -> None:
        if child.tag == _rng("include"):
            names = frozenset(d.get("name", "") for d in child.iterchildren(_rng("define")))
            replaces_start = any(True for _ in child.iterchildren(_rng("start")))
            skip = overridden | names | ({"#start"} if replaces_start else set())
            self._load(path.parent / child.get("href", ""), self._ns_of(child), skip)
            for inner in child.iterchildren(_rng("define"), _rng("start")):
                self._component(inner, path, overridden)
        elif child.tag == _rng("div"):
            for inner in child.iterchildren(_rng("include"), _rng("define"), _rng("start"), _rng("div")):
                self._component(inner, path, overridden)
        elif child.tag == _rng("start"):
            if "#start" not in overridden:
                self._start.extend(child)
        else:
            name = child.get("name", "")
            if name not in overridden:
                self._defines.setdefault(name, []).extend(child)

    def _ns_of(self, pattern: etree._Element) -> str:
        """The namespace an unprefixed element name in ``pattern`` is in: the nearest ns attribute, else the one the
        grammar inherited from the include that brought it in."""
        for scope in (pattern, *pattern.iterancestors()):
            if scope.get("ns") is not None:
                return str(scope.get("ns"))
            if scope.getparent() is None:
                return self._default_ns.get(scope, "")
        return ""

    # -- finding the pattern of an element ------------------------------------------------------------------

    def element_pattern(self, path: list[str]) -> etree._Element | None:
        """The <element> pattern that describes the instance element at ``path`` (Clark tags from the root)."""
        patterns = self._start
        found = None
        for tag in path:
            candidates = [e for e in self._elements(patterns) if self._matches(e, tag)]
            named = [e for e in candidates if e.get("name") is not None]
            if not (named or candidates):
                return None
            found = (named or candidates)[0]
            patterns = _content(found)
        return found

    def _elements(self, patterns: list[etree._Element]) -> Iterator[etree._Element]:
        """The <element> patterns reachable from ``patterns`` without entering another element."""
        seen: set[str] = set()
        stack = list(reversed(patterns))
        while stack:
            pattern = stack.pop()
            if pattern.tag == _rng("element"):
                yield pattern
            elif pattern.tag == _rng("ref"):
                name = pattern.get("name", "")
                if name not in seen:
                    seen.add(name)
                    stack.extend(reversed(self._defines.get(name, [])))
            elif pattern.tag != _rng("attribute") and pattern.tag not in _NAMES:
                stack.extend(reversed(list(pattern)))

    def _matches(self, element: etree._Element, tag: str) -> bool:
        name = element.get("name")
        if name is not None:
            return self._clark(element, name) == tag
        name_class = next((c for c in element if c.tag in _NAME_CLASSES), None)
        return name_class is not None and self._in_class(name_class, tag)

    def _in_class(self, name_class: etree._Element, tag: str) -> bool:
        namespace = tag[1:].split("}", 1)[0] if tag.startswith("{") else ""
        if name_class.tag == _rng("name"):
            return self._clark(name_class, (name_class.text or "").strip()) == tag
        if name_class.tag == _rng("choice"):
            return any(self._in_class(c, tag) for c in name_class)
        excepted = any(self._in_class(c, tag) for e in name_class.iterchildren(_rng("except")) for c in e)
        if name_class.tag == _rng("nsName"):
            return namespace == name_class.get("ns", self._ns_of(name_class)) and not excepted
        return not excepted  # anyName

    def _clark(self, pattern: etree._Element, name: str) -> str:
        if ":" in name:
            prefix, local = name.split(":", 1)
            namespace = pattern.nsmap.get(prefix, "")
        else:
            local = name
            namespace = "" if pattern.tag == _rng("attribute") else self._ns_of(pattern)
        return f"{{{namespace}}}{local}" if namespace else local

    # -- describing ----------------------------------------------------------------------------------------

    def expected_attributes(self, element: etree._Element) -> str:
        """The attributes ``element`` (an <element> pattern) takes, e.g. "client_id, exclusive? (true or false)"."""
        described = self._attributes(_content(element), set())
        foreign = self._has_wildcard(_content(element), _rng("attribute"))
        text = described or "none"
        return text + (", and attributes of other namespaces" if foreign else "")

    def expected_children(self, element: etree._Element) -> str:
        """The child elements ``element`` (an <element> pattern) takes, by name."""
        names = []
        for child in self._elements(_content(element)):
            if child.get("name") is not None:
                shown = display_name(self._clark(child, child.get("name", "")))
                if shown not in names:
                    names.append(shown)
        foreign = any(child.get("name") is None for child in self._elements(_content(element)))
        if not names:
            return "only elements of other namespaces" if foreign else "no elements"
        return ", ".join(names) + (", and elements of other namespaces" if foreign else "")

    def _attributes(self, patterns: list[etree._Element], seen: set[str]) -> str:
        parts = [p for p in (self._attribute_part(p, seen) for p in patterns) if p]
        return ", ".join(parts)

    def _attribute_part(self, pattern: etree._Element, seen: set[str]) -> str:
        tag = pattern.tag
        if tag == _rng("attribute"):
            name = pattern.get("name")
            if name is None:
                return ""  # a wildcard, said separately
            return display_name(self._clark(pattern, name)) + self._value_hint(list(pattern), set())
        if tag == _rng("ref"):
            name = pattern.get("name", "")
            if name in seen:
                return ""
            return self._attributes(self._defines.get(name, []), seen | {name})
        if tag in (_rng("optional"), _rng("zeroOrMore")):
            inner = self._attributes(list(pattern), seen)
            if not inner:
                return ""
            return f"{inner}?" if "," not in inner and "|" not in inner else f"({inner})?"
        if tag == _rng("choice"):
            options = [self._attributes([p], seen) for p in pattern]
            shown = [o if "," not in o else f"({o})" for o in options if o]
            return f"({' | '.join(shown)})" if len(shown) > 1 else "".join(shown)
        if tag in (_rng("interleave"), _rng("group"), _rng("oneOrMore")):
            return self._attributes(list(pattern), seen)
        return ""

    def _value_hint(self, patterns: list[etree._Element], seen: set[str]) -> str:
        for pattern in patterns:
            if pattern.tag == _rng("data"):
                described = _DATATYPES.get(pattern.get("type", ""), pattern.get("type", ""))
                return f" ({described})"
            if pattern.tag == _rng("value"):
                return f'="{pattern.text or ""}"'
            if pattern.tag == _rng("choice"):
                hints = [self._value_hint([p], seen).strip(" ()=") for p in pattern]
                return f" ({' or '.join(h for h in hints if h)})"
            if pattern.tag == _rng("ref") and pattern.get("name", "") not in seen:
                name = pattern.get("name", "")
                return self._value_hint(self._defines.get(name, []), seen | {name})
        return ""

    def _has_wildcard(self, patterns: list[etree._Element], kind: str) -> bool:
        seen: set[str] = set()
        stack = list(patterns)
        while stack:
            pattern = stack.pop()
            if pattern.tag == kind and pattern.get("name") is None:
                return True
            if pattern.tag == _rng("ref"):
                name = pattern.get("name", "")
                if name not in seen:
                    seen.add(name)
                    stack.extend(self._defines.get(name, []))
            elif pattern.tag not in (_rng("element"), _rng("attribute")):
                stack.extend(pattern)
        return False
