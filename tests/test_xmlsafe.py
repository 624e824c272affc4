"""parse_untrusted's checks after libxml2 has parsed: nesting depth (level by level) and entity references."""

from __future__ import annotations

import pytest
from lxml import etree

from sfa_omf.xmlsafe import UnsafeXml, XmlLimits, _check_depth_and_entities, parse_untrusted


def nested(levels: int) -> bytes:
    return b"<a>" * levels + b"x" + b"</a>" * levels


def test_depth_up_to_the_limit_is_accepted_and_one_more_level_refused() -> None:
    limits = XmlLimits(max_depth=5)
    assert parse_untrusted(nested(5), limits).tag == "a"
    with pytest.raises(UnsafeXml, match="deeper than 5 levels"):
        parse_untrusted(nested(6), limits)


def test_a_deep_branch_beside_shallow_ones_is_found() -> None:
    document = b"<r>" + b"<b/>" * 50 + b"<c>" + nested(4) + b"</c><d/></r>"  # depth 6 in the middle
    assert parse_untrusted(document, XmlLimits(max_depth=6)).tag == "r"
    with pytest.raises(UnsafeXml, match="deeper than 5 levels"):
        parse_untrusted(document, XmlLimits(max_depth=5))


def test_an_entity_reference_anywhere_is_refused() -> None:
    root = etree.fromstring(b"<r><a><b/></a></r>")
    _check_depth_and_entities(root, 10, "doc")  # no entity: accepted
    root[0][0].append(etree.Entity("leak"))
    with pytest.raises(UnsafeXml, match=r"entity reference \(&leak;\)"):
        _check_depth_and_entities(root, 10, "doc")


def test_a_declaration_is_refused_before_parsing_whichever_comes_first() -> None:
    with pytest.raises(UnsafeXml, match="declares entities"):
        parse_untrusted(b'<!DOCTYPE r [<!ENTITY e "x">]><r>&e;</r>')
    with pytest.raises(UnsafeXml, match="DTDs are refused"):
        parse_untrusted(b"<!doctype r><r/>")
