"""Our RELAX NG schemas (schemas/*.rng, generated from the .rnc sources by trang), compiled once per thread, and
their verdict on a document as Problems that say where and what was expected."""

from __future__ import annotations

import functools
import re
import sys
import threading
from enum import StrEnum
from pathlib import Path

from lxml import etree

from rspec.document import Document
from rspec.explain import Grammar
from rspec.namespaces import display_name
from rspec.problems import Problem


def _schema_dir() -> Path:
    """The schemas folder: beside rspec/ in a source tree or editable install, else where a wheel puts its data
    files (pyproject.toml: share/sfa-omf/schemas)."""
    source_tree = Path(__file__).resolve().parent.parent / "schemas"
    if source_tree.is_dir():
        return source_tree
    return Path(sys.prefix) / "share" / "sfa-omf" / "schemas"


SCHEMA_DIR = _schema_dir()


class Schema(StrEnum):
    """A top-level schema: sfa-omf's (GENI v3 plus the extensions as tools use them) or the GENI v3 base alone."""

    REQUEST = "request"
    ADVERTISEMENT = "advertisement"
    MANIFEST = "manifest"
    GENI_V3_REQUEST = "geni-v3-request"
    GENI_V3_AD = "geni-v3-ad"
    GENI_V3_MANIFEST = "geni-v3-manifest"

    @property
    def path(self) -> Path:
        """The compiled schema's file."""
        return SCHEMA_DIR / f"{self.value}.rng"


#: The RSpec type attribute -> sfa-omf's schema for it.
FOR_TYPE = {"request": Schema.REQUEST, "advertisement": Schema.ADVERTISEMENT, "manifest": Schema.MANIFEST}

# Each diagnosis round validates again: bounded, so that a large document full of errors stays cheap.
_MAX_ROUNDS = 10
# Top-level elements validated together (see _batch_is_valid).
_BATCH = 500

# A prefix in libxml2's error path: the name before the ":" of a step such as ol:lease_ref.
_PATH_PREFIX = re.compile(r"([^\W\d][\w.-]*):")

# A validator keeps its error log as its own state, so threads must not share one.
_local = threading.local()

# libxml2's error kinds, by what they are about. The cascade kinds repeat a failure on every ancestor, or say only
# that something in the element failed; they are used only when nothing more precise was said.
_CASCADE = {"RELAXNG_ERR_CONTENTVALID", "RELAXNG_ERR_INTERSEQ", "RELAXNG_ERR_INTEREXTRA", "RELAXNG_ERR_EXTRADATA"}
_ATTRIBUTES = {
    "RELAXNG_ERR_INVALIDATTR",
    "RELAXNG_ERR_DATATYPE",
    "RELAXNG_ERR_TYPEVAL",
    "RELAXNG_ERR_TYPE",
    "RELAXNG_ERR_VALUE",
    "RELAXNG_ERR_ATTRNAME",
    "RELAXNG_ERR_ATTRNONS",
    "RELAXNG_ERR_ATTRWRONGNS",
    "RELAXNG_ERR_ATTREXTRANS",
}
_GENERIC_ATTRIBUTES = "RELAXNG_ERR_ATTRVALID"  # "failed to validate attributes": used when nothing better was said
_CHILDREN = {
    "RELAXNG_ERR_EXTRACONTENT",
    "RELAXNG_ERR_ELEMWRONG",
    "RELAXNG_ERR_ELEMNAME",
    "RELAXNG_ERR_ELEMNONS",
    "RELAXNG_ERR_ELEMWRONGNS",
    "RELAXNG_ERR_ELEMEXTRANS",
}


def relaxng(schema: Schema) -> etree.RelaxNG:
    """The compiled schema for this thread."""
    validators: dict[Schema, etree.RelaxNG] | None = getattr(_local, "validators", None)
    if validators is None:
        validators = _local.validators = {}
    if schema not in validators:
        validators[schema] = etree.RelaxNG(etree.parse(str(schema.path)))
    return validators[schema]


@functools.cache
def grammar(schema: Schema) -> Grammar:
    """The schema read as patterns, to explain errors (read-only once built, so shared)."""
    return Grammar(schema.path)


def schema_problems(document: Document, schema: Schema, max_problems: int = 100) -> list[Problem]:
    """Problems with ``document`` according to ``schema``; empty when valid."""
    validator = relaxng(schema)
    root = document.root
    children = list(root)  # held, so that the same proxies come back
    batches = [children[i : i + _BATCH] for i in range(0, len(children), _BATCH)] or [[]]
    if len(batches) == 1:
        if validator.validate(root.getroottree()):
            return []
        document.position(root)  # index positions while the tree is whole
        return sorted(_diagnose(document, schema, validator, root, max_problems))
    own = _namespaces_of_its_own(root)  # once, not per batch
    failing = [batch for batch in batches if not _batch_is_valid(validator, root, own, batch)]
    if not failing:
        return []
    document.position(root)
    problems: list[Problem] = []
    for batch in failing:
        if len(problems) >= max_problems:
            break
        index = root.index(batch[0])
        wrapper = _wrapper(root, own)
        wrapper.extend(batch)
        try:
            found = _diagnose(document, schema, validator, wrapper, max_problems - len(problems))
            # Each batch's copy of the root has the root's attributes and text: say a problem of them once.
            problems.extend(p for p in found if p not in problems)
        finally:
            for offset, element in enumerate(batch):
                root.insert(index + offset, element)
    return sorted(problems)


def _wrapper(root: etree._Element, own: dict[str | None, str]) -> etree._Element:
    """A copy of the root element without its children (its attributes and the text before its first child), to
    validate some of its children on their own; ``own``: the root's _namespaces_of_its_own."""
    wrapper = etree.Element(root.tag, nsmap=own)  # type: ignore[arg-type]  # the stubs omit the None prefix
    for name, value in root.attrib.items():
        wrapper.set(name, value)
    wrapper.text = root.text
    return wrapper


def _namespaces_of_its_own(element: etree._Element) -> dict[str | None, str]:
    """The declarations an element's own name and attributes are written with, one prefix per namespace. Not all it
    has in scope: lxml declares a namespace map's entries one at a time, each checked against those before it, and a
    root declaring 50 000 prefixes cost 30 s per batch copy. The children put under a copy bring along the
    declarations they use (lxml copies them onto each), and lose them again when put back."""
    own: dict[str | None, str] = {}
    namespace = etree.QName(element).namespace
    if namespace is not None:
        own[element.prefix] = namespace
    wanted = {etree.QName(name).namespace for name in element.attrib} - {None, namespace}
    if wanted:
        for prefix, uri in element.nsmap.items():
            if prefix is not None and uri in wanted:
                own[prefix] = uri
                wanted.discard(uri)
    return own


def _batch_is_valid(
    validator: etree.RelaxNG, root: etree._Element, own: dict[str | None, str], batch: list[etree._Element]
) -> bool:
    """Validate ``batch`` (the first children of ``root``) under a copy of the root, then move it back to the end:
    taking the batches in order and moving each to the end leaves the children in their first order.

    libxml2 cannot compile content models with wildcards (GENI's extension rule puts one everywhere), and its
    fallback cost grows with the square of the number of siblings: a whole RSpec of 30 000 nodes takes seconds
    where batches of a few hundred take a fraction of a second. Every top-level item of an RSpec may repeat, so the
    document is valid exactly when each batch is (av:horizon, at most once, is the one exception: we write it).
    """
    wrapper = _wrapper(root, own)
    wrapper.extend(batch)
    try:
        return bool(validator.validate(wrapper.getroottree()))
    finally:
        root.extend(batch)


def _diagnose(
    document: Document, schema: Schema, validator: etree.RelaxNG, container: etree._Element, max_problems: int
) -> list[Problem]:
    """The problems in ``container`` (the root, or a copy of it holding some of its children), which is invalid.

    libxml2 stops at the first failing subtree and reports it again on each ancestor. We keep the deepest report,
    add what the schema expected there, then set aside the top-level element that failed and validate again, so that
    every failing node is reported, not only the first. What was set aside is put back before returning.
    """
    tree = container.getroottree()
    problems: list[Problem] = []
    set_aside: list[tuple[int, etree._Element]] = []
    try:
        for _ in range(_MAX_ROUNDS):
            if validator.validate(tree):  # the error log is that of the last validation
                break
            found, culprit = _round(document, schema, validator, tree)
            problems.extend(p for p in found if p not in problems)
            top = _top_level(container, culprit)
            if top is None or len(problems) >= max_problems:
                break
            set_aside.append((container.index(top), top))
            container.remove(top)
    finally:
        for index, element in reversed(set_aside):
            container.insert(index, element)
    return problems[:max_problems]


def _round(
    document: Document, schema: Schema, validator: etree.RelaxNG, tree: etree._ElementTree
) -> tuple[list[Problem], etree._Element | None]:
    """The problems of one failed validation of ``tree``, and the deepest element that failed."""
    kinds: dict[etree._Element, list[tuple[str, str]]] = {}
    for entry in validator.error_log:
        element = _element_at(document, tree, entry.path)
        if element is not None:
            kinds.setdefault(element, []).append((entry.type_name, entry.message))
    problems: list[Problem] = []
    culprit = None
    for element, said in kinds.items():
        precise = [(kind, message) for kind, message in said if kind not in _CASCADE]
        if any(kind in _ATTRIBUTES for kind, _ in precise):
            precise = [(kind, message) for kind, message in precise if kind != _GENERIC_ATTRIBUTES]
        if not precise:
            if any(other in kinds for other in element.iterdescendants()):
                continue  # an ancestor's echo of a deeper failure
            precise = [("", "")]
        if culprit is None or _depth(element) > _depth(culprit):
            culprit = element
        for kind, message in precise:
            problem = _explain(document, schema, kind, message, element)
            if problem not in problems:
                problems.append(problem)
    if not problems:  # nothing we could place: say what libxml2 said, at the root
        first = validator.error_log[0] if len(validator.error_log) else None
        message = first.message if first is not None else "does not match the schema"
        problems.append(document.problem(document.root, f"{message} (schema {schema.value})"))
    return problems, culprit


def _depth(element: etree._Element) -> int:
    return sum(1 for _ in element.iterancestors())


def _top_level(root: etree._Element, element: etree._Element | None) -> etree._Element | None:
    """The child of ``root`` that is or holds ``element``; None for the root itself."""
    while element is not None and element.getparent() is not None:
        if element.getparent() is root:
            return element
        element = element.getparent()
    return None


def _element_at(document: Document, tree: etree._ElementTree, path: str | None) -> etree._Element | None:
    """The element libxml2's error path (an XPath such as /*/*[2]/ol:lease_ref) points at."""
    if not path:
        return None
    try:
        found = tree.xpath(path, namespaces=path_namespaces(path, document.prefixes()))
    except etree.XPathError:
        return None
    if isinstance(found, list) and found and isinstance(found[0], etree._Element):
        return found[0]
    return None


def path_namespaces(path: str, declared: dict[str, str]) -> dict[str, str]:
    """The prefixes of ``declared`` that an error path names. Only those go to XPath, which registers every
    namespace it is given on each call: with all of a hostile document's tens of thousands of prefixes, each call
    took tens of milliseconds and one refusal half a minute."""
    return {prefix: declared[prefix] for prefix in _PATH_PREFIX.findall(path) if prefix in declared}


def _explain(document: Document, schema: Schema, kind: str, message: str, element: etree._Element) -> Problem:
    """libxml2's message about ``element`` (kind "" when it said nothing precise), with what the schema expects."""
    path = [e.tag for e in reversed(list(element.iterancestors()))] + [element.tag]
    rules = grammar(schema)
    parent = element.getparent()
    if kind == "RELAXNG_ERR_EXTRACONTENT" and message.rstrip(". ").endswith("extra content: text"):
        # Text inside the element (it is the element's content that is wrong, not the element where it stands).
        pattern = rules.element_pattern(path)
        detail = f"text inside <{display_name(element.tag)}> is not allowed: remove it"
        if pattern is not None:
            detail += f"; expected content: {rules.expected_children(pattern)}"
        return document.problem(element, detail)
    if kind in _CHILDREN and parent is not None:
        pattern = rules.element_pattern(path[:-1])
        detail = f"not allowed here, in <{display_name(parent.tag)}>"
        if pattern is not None:
            detail += f"; expected: {rules.expected_children(pattern)}"
        return document.problem(element, detail)
    if kind == "RELAXNG_ERR_NOELEM":
        return document.problem(element, message.replace("Expecting an element", "a required element is missing:"))
    pattern = rules.element_pattern(path)
    if kind in _ATTRIBUTES:
        detail = message.rstrip(".")
    elif kind == _GENERIC_ATTRIBUTES:
        detail = f"attributes {_attribute_list(element)} do not match"
    elif kind == "":
        detail = "its attributes or content do not match"
    else:
        detail = message.rstrip(".")
    if pattern is not None and kind in (*_ATTRIBUTES, _GENERIC_ATTRIBUTES, ""):
        detail += f"; expected attributes: {rules.expected_attributes(pattern)}"
    if pattern is not None and kind == "":
        detail += f"; expected content: {rules.expected_children(pattern)}"
    return document.problem(element, detail)


def _attribute_list(element: etree._Element) -> str:
    names = [display_name(str(name)) for name in element.attrib]
    return "(" + ", ".join(names) + ")" if names else "(none)"
