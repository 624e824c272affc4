"""AM API v2 ListResources of a slice with no slivers here, over the real /am2 endpoint: an empty manifest, as AM
API v3 Describe answers and as the GENI acceptance tests (am_api_accept.py, ``-V 2 --more-strict``) require in
test_CreateSliver, test_CreateSliverWorkflow_fail_notexist and test_CreateSliverWorkflow_multiSlice: their
ListResources of a slice never given slivers, or whose slivers were deleted, must succeed with a well-formed
manifest that has no child element. SliverStatus of such a slice stays refused (SEARCHFAILED), as they also expect."""

from __future__ import annotations

import base64
import zlib
from pathlib import Path

import pytest

from sfa_omf.xmlsafe import parse_untrusted
from tests.am.test_api_v2_tls import Am2, alice2, other_slice_cred, serve_v2_and_v3
from tests.am.test_api_v3_tls import GENI_V3, ok, ol_request, refused, slot
from tests.conftest import DemoPki
from tests.tls_harness import Listener


@pytest.fixture
def am2(listener: Listener, pki: DemoPki, tmp_path: Path) -> Am2:
    return serve_v2_and_v3(listener, pki, tmp_path)


def assert_empty_manifest(manifest: str) -> None:
    """What the acceptance tests check: well-formed XML, a manifest, and no child element (rspec_util.has_child)."""
    root = parse_untrusted(manifest)
    assert root.get("type") == "manifest", manifest
    assert list(root) == [], manifest


def test_a_slice_never_booked_here_lists_an_empty_manifest(am2: Am2, pki: DemoPki) -> None:
    urn, slice_cred = other_slice_cred(pki, "alice", "neverhere")
    client = alice2(am2, pki)

    listed = client.ListResources([slice_cred], {"geni_rspec_version": GENI_V3, "geni_slice_urn": urn})

    assert_empty_manifest(ok(listed))
    # Compressed when asked, as a manifest with slivers is.
    compressed = ok(
        client.ListResources(
            [slice_cred], {"geni_rspec_version": GENI_V3, "geni_slice_urn": urn, "geni_compressed": True}
        )
    )
    assert_empty_manifest(zlib.decompress(base64.b64decode(compressed)).decode())
    # The other calls the acceptance tests make on it still say there is nothing here.
    refused(client.SliverStatus(urn, [slice_cred], {}), 12, urn, "no slivers")
    refused(client.DeleteSliver(urn, [slice_cred], {}), 12, "no slivers")


def test_a_slice_whose_slivers_were_deleted_lists_an_empty_manifest(am2: Am2, pki: DemoPki) -> None:
    urn, slice_cred = other_slice_cred(pki, "alice", "emptied")
    client = alice2(am2, pki)
    ok(client.CreateSliver(urn, [slice_cred], ol_request(("node2",), slot(6)), [], {}))
    assert ok(client.DeleteSliver(urn, [slice_cred], {})) is True

    listed = client.ListResources([slice_cred], {"geni_rspec_version": GENI_V3, "geni_slice_urn": urn})

    assert_empty_manifest(ok(listed))
    refused(client.SliverStatus(urn, [slice_cred], {}), 12, "no slivers")


def test_an_empty_slice_is_still_listed_only_with_its_own_credential(am2: Am2, pki: DemoPki) -> None:
    """The empty answer is no way around the credential check: alice's credential for another slice of hers does
    not list this (empty) slice; the answer is a refusal, not a manifest."""
    empty_urn, _ = other_slice_cred(pki, "alice", "emptyone")
    _, other_cred = other_slice_cred(pki, "alice", "otherone")

    answer = alice2(am2, pki).ListResources([other_cred], {"geni_rspec_version": GENI_V3, "geni_slice_urn": empty_urn})

    refused(answer, 22, "this credential is for urn:publicid:IDN+testbed+slice+otherone", empty_urn)
