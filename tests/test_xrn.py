"""URN <-> HRN with SFA's rules: escaped dots, authority URNs, part-wise authority prefixes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfa_omf.errors import BadArgs, GeniCode
from sfa_omf.xrn import hrn_authority, hrn_to_urn, is_authority_for, join_hrn, parse_urn, split_hrn, urn_to_hrn


@pytest.mark.parametrize(
    ("urn", "hrn", "type_"),
    [
        ("urn:publicid:IDN+onelab:inria+user+alice", "onelab.inria.alice", "user"),
        ("urn:publicid:IDN+onelab+authority+sa", "onelab", "authority"),
        ("urn:publicid:IDN+onelab:inria+authority+sa", "onelab.inria", "authority"),
        ("urn:publicid:IDN+geni:gpo:gcf:am1+authority+am", "geni.gpo.gcf.am1", "authority"),
        (
            "urn:publicid:IDN+iotlab+node+m3-10.grenoble.iot-lab.info",
            "iotlab.m3-10\\.grenoble\\.iot-lab\\.info",
            "node",
        ),
        ("urn:publicid:IDN+ch.geni.net:proj+slice+s1", "ch\\.geni\\.net.proj.s1", "slice"),
        ("URN:PUBLICID:IDN+onelab+User+bob", "onelab.bob", "user"),
    ],
)
def test_urn_to_hrn(urn: str, hrn: str, type_: str) -> None:
    assert urn_to_hrn(urn) == (hrn, type_)


@pytest.mark.parametrize(
    ("hrn", "type_", "urn"),
    [
        ("onelab.inria.alice", "user", "urn:publicid:IDN+onelab:inria+user+alice"),
        ("onelab", "authority", "urn:publicid:IDN+onelab+authority+sa"),
        ("onelab.inria", "authority+am", "urn:publicid:IDN+onelab:inria+authority+am"),
        (
            "iotlab.m3-10\\.grenoble\\.iot-lab\\.info",
            "node",
            "urn:publicid:IDN+iotlab+node+m3-10.grenoble.iot-lab.info",
        ),
        ("ch\\.geni\\.net.proj.s1", "slice", "urn:publicid:IDN+ch.geni.net:proj+slice+s1"),
    ],
)
def test_hrn_to_urn(hrn: str, type_: str, urn: str) -> None:
    assert hrn_to_urn(hrn, type_) == urn


def test_authority_prefix_is_part_wise() -> None:
    assert is_authority_for("onelab", "onelab.inria.alice")
    assert is_authority_for("onelab.inria", "onelab.inria")
    assert not is_authority_for("onelab", "onelabx.bob")
    assert not is_authority_for("ch", "ch\\.geni\\.net.proj")
    assert not is_authority_for("onelab.inria.alice", "onelab.inria")
    assert is_authority_for("ch\\.geni\\.net", "ch\\.geni\\.net.proj.s1")


def test_hrn_authority() -> None:
    assert hrn_authority("onelab.inria.alice") == "onelab.inria"
    with pytest.raises(BadArgs):
        hrn_authority("onelab")


@pytest.mark.parametrize(
    "bad",
    ["", "urn:foo:bar", "urn:publicid:IDN+onelab+user", "urn:publicid:IDN++user+x", "urn:publicid:IDN+a::b+user+x"],
)
def test_bad_urns_are_badargs(bad: str) -> None:
    with pytest.raises(BadArgs) as refusal:
        parse_urn(bad)
    assert refusal.value.code == GeniCode.BADARGS
    assert "URN" in refusal.value.message or "authority" in refusal.value.message


@pytest.mark.parametrize("bad", ["", "a..b", ".a", "a."])
def test_bad_hrns_are_badargs(bad: str) -> None:
    with pytest.raises(BadArgs):
        split_hrn(bad)


def test_a_single_part_hrn_needs_authority_type() -> None:
    with pytest.raises(BadArgs):
        hrn_to_urn("alice", "user")


_part = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=12).filter(
    lambda text: not text.startswith(".") and not text.endswith(".") and ".." not in text
)


@given(st.lists(_part, min_size=2, max_size=5), st.sampled_from(["user", "slice", "node", "sliver"]))
def test_round_trip(parts: list[str], type_: str) -> None:
    hrn = join_hrn(parts)
    assert split_hrn(hrn) == tuple(parts)
    urn = hrn_to_urn(hrn, type_)
    assert urn_to_hrn(urn) == (hrn, type_)


def test_parsed_urns_are_kept_only_up_to_the_longest_a_caller_may_send() -> None:
    """A URN from a certificate inside a refused credential may be hundreds of kilobytes: parsed, never kept (a full
    cache of such would hold gigabytes); a usual one is kept and parsed once."""
    from sfa_omf import xrn

    xrn._parse_urn_kept.cache_clear()
    usual = "urn:publicid:IDN+testbed+slice+kept"
    assert xrn.parse_urn(usual) is xrn.parse_urn(usual)
    long_name = "x" * 380_000
    parsed = xrn.parse_urn(f"urn:publicid:IDN+testbed+user+{long_name}")
    assert parsed.name == long_name
    assert xrn._parse_urn_kept.cache_info().currsize == 1, "only the usual URN is kept"
    with pytest.raises(BadArgs):
        xrn.parse_urn("urn:publicid:IDN+" + "y" * (xrn.LONGEST_URN_KEPT + 1))  # refused whatever its length
