"""AM API v2 end to end over real TLS on loopback, served at /am2 beside AM API v3 at / on the same aggregate: the
calls omni -V2 and older sfi.py make, with bare XML credentials (and structs), and the refusals with their codes."""

from __future__ import annotations

import base64
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.am.api_v2 import overall_status
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.errors import GeniError, Reason
from sfa_omf.times import utcnow
from sfa_omf.trust.gid import load_gid_chain_file
from sfa_omf.trust.pki import create_gid, load_private_key_file, new_private_key
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from tests.am.conftest import listen_v2_and_v3
from tests.am.test_api_v3_tls import GENI_V3, NODES, cred, node_urn, ok, ol_request, refused, slot
from tests.conftest import DemoPki
from tests.sshkeys import ssh_key
from tests.tls_harness import Listener, proxy


@dataclass
class Am2:
    base: str  # https://127.0.0.1:port
    v3_url: str
    v2_url: str
    aggregate: Aggregate

    def client(self, chain: Path | str, key: Path | str, url: str | None = None) -> Any:
        return proxy(url or self.v2_url, str(chain), str(key))


@pytest.fixture
def am2(listener: Listener, pki: DemoPki, tmp_path: Path) -> Am2:
    return serve_v2_and_v3(listener, pki, tmp_path)


def serve_v2_and_v3(listener: Listener, pki: DemoPki, tmp_path: Path, clock: Callable[[], datetime] = utcnow) -> Am2:
    """An aggregate (nodes node1..3, the demo authority's roots) serving AM API v3 at / and v2 at /am2 over TLS;
    ``clock`` is the aggregate's (and its calendar's) idea of now."""
    roots_dir = tmp_path / "trusted_roots"
    shutil.copytree(pki.directory / "trusted_roots", roots_dir)
    database = Database(sqlite_url(str(tmp_path / "am.sqlite")))
    database.upgrade()
    verifier = CredentialVerifier(load_trusted_roots(str(roots_dir)), VerdictCache())
    aggregate = Aggregate(
        AggregateSettings(authority_hrn="testbed", api_urls={"2": "https://127.0.0.1/am2", "3": "https://127.0.0.1/"}),
        database,
        verifier,
        identity=(
            load_private_key_file(str(pki.directory / "aggregate" / "am.pkey")),
            load_gid_chain_file(str(pki.directory / "aggregate" / "am.gid")),
        ),
        clock=clock,
    )
    for name in NODES:
        aggregate.inventory.add_node(NodeSpec(node_urn(name), name, hardware_type="icarus"))
    base = listen_v2_and_v3(listener, aggregate, pki, 8)
    return Am2(base=base, v3_url=f"{base}/", v2_url=f"{base}/am2", aggregate=aggregate)


def alice2(am2: Am2, pki: DemoPki, url: str | None = None) -> Any:
    sfi = pki.users["alice"].sfi_dir
    return am2.client(sfi / "testbed.alice.user.gid", sfi / "testbed.alice.pkey", url)


def other_slice_cred(pki: DemoPki, user: str, name: str) -> tuple[str, str]:
    """A slice ``name`` of the testbed authority with ``user`` as owner (made in memory, the session PKI is shared)."""
    urn = f"urn:publicid:IDN+testbed+slice+{name}"
    slice_gid = create_gid(urn, new_private_key().public_key(), pki.authority.key, pki.authority.chain[0])
    return urn, pki.authority.credential(pki.users[user].chain, (slice_gid, *pki.authority.chain))


def test_get_version(am2: Am2, pki: DemoPki) -> None:
    answer = alice2(am2, pki).GetVersion()
    version = ok(answer)
    assert answer["geni_api"] == 2 and version["geni_api"] == 2
    assert version["geni_api_versions"] == {"2": "https://127.0.0.1/am2", "3": "https://127.0.0.1/"}
    assert version["urn"] == "urn:publicid:IDN+testbed+authority+am"
    assert {"type": "GENI", "version": "3"}.items() <= version["geni_ad_rspec_versions"][0].items()
    # v3 is still served at / by the same site.
    v3 = alice2(am2, pki, am2.v3_url).GetVersion()
    assert v3["geni_api"] == 3


def test_the_whole_life_of_a_v2_sliver(am2: Am2, pki: DemoPki) -> None:
    client = alice2(am2, pki)
    user = pki.users["alice"]
    advertisement = ok(client.ListResources([user.user_cred], {"geni_rspec_version": GENI_V3}))
    assert all(node_urn(name) in advertisement for name in NODES)
    window = slot(2)
    manifest = ok(
        client.CreateSliver(
            pki.slice_urn,
            [user.slice_cred],  # v2: bare XML strings
            ol_request(("node1", "node2"), window),
            [{"urn": user.chain[0].urn, "keys": [ssh_key("alice@laptop")]}],
            {},
        )
    )
    assert isinstance(manifest, str) and 'type="manifest"' in manifest
    assert 'client_id="node1"' in manifest and 'client_id="l1"' in manifest
    assert 'username="alice_' in manifest, "the users argument reached the slice (mapped to a local login)"
    # ListResources with geni_slice_urn answers the slice's manifest, compressed when asked.
    listed = ok(
        client.ListResources(
            [user.slice_cred], {"geni_rspec_version": GENI_V3, "geni_slice_urn": pki.slice_urn, "geni_compressed": True}
        )
    )
    listed_manifest = zlib.decompress(base64.b64decode(listed)).decode()
    assert 'type="manifest"' in listed_manifest and node_urn("node2") in listed_manifest
    # SliverStatus: provisioned, the slot is ahead, so not ready yet.
    status = ok(client.SliverStatus(pki.slice_urn, [user.slice_cred], {}))
    assert status["geni_urn"] == pki.slice_urn
    assert status["geni_status"] == "notready"
    assert len(status["geni_resources"]) == 2
    assert {r["geni_status"] for r in status["geni_resources"]} == {"notready"}
    assert all(r["geni_urn"].startswith("urn:publicid:IDN+testbed+sliver+") for r in status["geni_resources"])
    assert {r["geni_error"] for r in status["geni_resources"]} == {""}
    assert status["geni_expires"] == window[1]
    # The same slivers are provisioned in v3's view.
    v3_status = ok(alice2(am2, pki, am2.v3_url).Status([pki.slice_urn], [cred(user.slice_cred)], {}))
    assert {s["geni_allocation_status"] for s in v3_status["geni_slivers"]} == {"geni_provisioned"}
    # RenewSliver: the slot now ends later; credential structs are accepted too.
    new_end = slot(2, hours=3)[1]
    assert ok(client.RenewSliver(pki.slice_urn, [cred(user.slice_cred)], new_end, {})) is True
    assert ok(client.SliverStatus(pki.slice_urn, [user.slice_cred], {}))["geni_expires"] == new_end
    # ListSlices with alice's user credential (info -> listslices).
    assert ok(client.ListSlices([user.user_cred], {})) == [pki.slice_urn]
    # DeleteSliver, then the slice has nothing here.
    assert ok(client.DeleteSliver(pki.slice_urn, [user.slice_cred], {})) is True
    refused(client.SliverStatus(pki.slice_urn, [user.slice_cred], {}), 12, pki.slice_urn, "no slivers")
    refused(client.DeleteSliver(pki.slice_urn, [user.slice_cred], {}), 12, "no slivers")
    refused(client.RenewSliver(pki.slice_urn, [user.slice_cred], new_end, {}), 12, "no slivers")
    # ListResources of the emptied slice: an empty manifest (tests/am/test_v2_empty_slice.py).
    emptied = ok(
        client.ListResources([user.slice_cred], {"geni_rspec_version": GENI_V3, "geni_slice_urn": pki.slice_urn})
    )
    assert 'type="manifest"' in emptied and node_urn("node2") not in emptied
    assert ok(client.ListSlices([user.user_cred], {})) == []


def test_a_conflict_names_the_next_free_start(am2: Am2, pki: DemoPki) -> None:
    user = pki.users["alice"]
    window = slot(3)
    ok(alice2(am2, pki).CreateSliver(pki.slice_urn, [user.slice_cred], ol_request(("node1",), window), [], {}))
    bobs_urn, bobs_cred = other_slice_cred(pki, "bob", "bobsv2")
    bob = pki.users["bob"]
    client = am2.client(bob.sfi_dir / "testbed.bob.user.gid", bob.sfi_dir / "testbed.bob.pkey")
    output = refused(
        client.CreateSliver(bobs_urn, [bobs_cred], ol_request(("node1", "node2"), window), [], {}),
        7,
        node_urn("node1"),
        window[0],
        f"free for the same duration from {window[1]}",
    )
    assert node_urn("node2") not in output
    refused(client.SliverStatus(bobs_urn, [bobs_cred], {}), 12)
    # ListSlices shows only the slice that booked; bob's user credential may list.
    assert ok(client.ListSlices([bob.user_cred], {})) == [pki.slice_urn]


def test_shutdown(am2: Am2, pki: DemoPki) -> None:
    user = pki.users["alice"]
    urn, slice_cred = other_slice_cred(pki, "alice", "shutv2")
    client = alice2(am2, pki)
    ok(client.CreateSliver(urn, [slice_cred], ol_request(("node3",), slot(4)), None, {}))
    assert ok(client.Shutdown(urn, [slice_cred], {})) is True
    assert ok(client.SliverStatus(urn, [slice_cred], {}))["geni_status"] == "shutdown"
    assert ok(client.ListSlices([user.user_cred], {})) == []


def test_get_ticket_is_a_signed_promise_of_the_booked_slots(am2: Am2, pki: DemoPki, tmp_path: Path) -> None:
    """The ticket books the slots and is signed by the aggregate: our verifier and Debian's xmlsec1 both accept its
    signature against the authority's root; the slots stay allocated until provisioned."""
    import shutil as shell_tools
    import subprocess

    from sfa_omf.trust.credential import XML_ID
    from sfa_omf.trust.verifier import signature_reference, verify_signature_element
    from sfa_omf.xmlsafe import parse_untrusted

    user = pki.users["alice"]
    window = slot(5)
    ticket = ok(alice2(am2, pki).GetTicket(pki.slice_urn, [user.slice_cred], ol_request(("node1",), window), [], {}))
    root = parse_untrusted(ticket)
    credential = root.find("credential")
    assert credential is not None and credential.findtext("type") == "ticket"
    assert credential.findtext("owner_urn") == user.chain[0].urn and credential.findtext("target_urn") == pki.slice_urn
    (slot_element,) = credential.findall("ticket/slot")
    assert (slot_element.get("component_id"), slot_element.get("start"), slot_element.get("end")) == (
        node_urn("node1"),
        *window,
    )
    (signature,) = root.findall("signatures/{http://www.w3.org/2000/09/xmldsig#}Signature")
    assert signature_reference(signature) == credential.get(XML_ID)
    signer = verify_signature_element(signature, "ref0")
    assert signer[0].urn == "urn:publicid:IDN+testbed+authority+am"
    xmlsec1 = shell_tools.which("xmlsec1")
    if xmlsec1 is None:
        pytest.fail("xmlsec1 is not installed: scripts/test.sh installs it")
    path = tmp_path / "ticket.xml"
    path.write_text(ticket)
    root_gid = str(pki.directory / "trusted_roots" / "testbed.gid")
    checked = subprocess.run(
        [xmlsec1, "--verify", "--trusted-pem", root_gid, "--node-id", "Sig_ref0", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    status = ok(alice2(am2, pki).SliverStatus(pki.slice_urn, [user.slice_cred], {}))
    # What the ticket promised is an allocation, not yet provisioned: not something a v2 client waits on.
    assert [resource["geni_status"] for resource in status["geni_resources"]] == ["unknown"]
    assert "not provisioned" in status["geni_resources"][0]["geni_error"], status


def test_refusals(am2: Am2, pki: DemoPki) -> None:
    client = alice2(am2, pki)
    user = pki.users["alice"]
    request = ol_request(("node3",), slot(5))
    refused(client.CreateSliver(pki.slice_urn, [user.slice_cred]), 1, "missing argument 3")
    refused(client.CreateSliver(pki.slice_urn, [user.slice_cred], "", [], {}), 1, "rspec")
    refused(client.CreateSliver("not-a-urn", [user.slice_cred], request, [], {}), 1, "not a slice URN")
    refused(client.CreateSliver(node_urn("node1"), [user.slice_cred], request, [], {}), 1, "not a slice URN")
    refused(client.CreateSliver(pki.slice_urn, [user.slice_cred], request, "alice", {}), 1, "users")
    refused(client.CreateSliver(pki.slice_urn, [user.slice_cred], request, [], "options"), 1, "options")
    refused(client.SliverStatus("not-a-urn", [user.slice_cred], {}), 1, "not a slice URN")
    refused(client.SliverStatus(), 1, "missing argument 1")
    refused(client.RenewSliver(pki.slice_urn, [user.slice_cred], "next tuesday", {}), 1, "RFC 3339")
    refused(client.DeleteSliver(42, [user.slice_cred], {}), 1, "slice URN")
    refused(client.ListResources([user.user_cred], {}), 1, "geni_rspec_version")
    refused(
        client.ListResources([user.user_cred], {"geni_rspec_version": GENI_V3, "geni_slice_urn": "nope"}),
        1,
        "not a slice URN",
    )
    refused(client.Allocate(pki.slice_urn, [user.slice_cred], request, {}), 13, "not an AM API v2 method")
    # Credentials: a user credential is not for the slice; none at all is forbidden; garbage is invalid.
    refused(client.CreateSliver(pki.slice_urn, [user.user_cred], request, [], {}), 22)
    refused(client.CreateSliver(pki.slice_urn, [], request, [], {}), 3, "carried none")
    refused(client.ListSlices([], {}), 3, "carried none")
    refused(client.ListSlices(["<garbage"], {}), 20)
    assert ok(client.ListSlices([user.user_cred], {})) == [], "nothing was booked by the refused calls"


def test_a_failed_provision_gives_back_only_the_new_slots(
    am2: Am2, pki: DemoPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = pki.users["alice"]
    client = alice2(am2, pki)
    ok(client.CreateSliver(pki.slice_urn, [user.slice_cred], ol_request(("node1",), slot(2)), [], {}))

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise GeniError(Reason.DATABASE, "the database went away")

    monkeypatch.setattr(am2.aggregate, "provision", broken)
    refused(client.CreateSliver(pki.slice_urn, [user.slice_cred], ol_request(("node2",), slot(2)), [], {}), 9)
    leases = am2.aggregate.bookings.leases(slice_urn=pki.slice_urn)
    assert [lease.nodes for lease in leases] == [(node_urn("node1"),)], "the earlier booking stays, the new one went"


@pytest.mark.parametrize(
    ("statuses", "overall"),
    [
        (["ready", "ready"], "ready"),
        (["ready", "failed", "configuring"], "failed"),
        (["ready", "configuring", "notready"], "configuring"),
        (["ready", "notready"], "notready"),
        (["unknown", "ready"], "unknown"),
    ],
)
def test_overall_status(statuses: list[str], overall: str) -> None:
    assert overall_status(statuses) == overall
