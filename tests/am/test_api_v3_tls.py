"""AM API v3 end to end over real TLS on loopback: the calls sfi.py and omni make, with credentials from the local
authority and from a foreign authority (../shared/vectors) whose root is trusted; and the refusals, each with its
GENI code and a message a person can act on."""

from __future__ import annotations

import shutil
import xmlrpc.client
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.am.api_v3 import ApiV3
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.server.tls import ServerTls
from sfa_omf.server.xmlrpc import XmlRpcResource, make_site
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from tests.conftest import DemoPki
from tests.sshkeys import ssh_key
from tests.tls_harness import Listener, proxy, reactor

NODES = ("node1", "node2", "node3")
GENI_V3 = {"type": "GENI", "version": "3"}


def node_urn(name: str) -> str:
    return f"urn:publicid:IDN+testbed+node+{name}"


def slot(hours_from_now: int, hours: int = 1) -> tuple[str, str]:
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=hours_from_now)
    return format_time(start), format_time(start + timedelta(hours=hours))


def ol_request(nodes: tuple[str, ...], window: tuple[str, str]) -> str:
    node_xml = "".join(
        f'<node client_id="{name}" component_id="{node_urn(name)}" exclusive="true"><ol:lease_ref id_ref="l1"/></node>'
        for name in nodes
    )
    return (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        'xmlns:ol="http://nitlab.inf.uth.gr/schema/sfa/rspec/1">'
        f'<ol:lease client_id="l1" valid_from="{window[0]}" valid_until="{window[1]}"/>{node_xml}</rspec>'
    )


def cred(xml: str) -> dict[str, str]:
    return {"geni_type": "geni_sfa", "geni_version": "3", "geni_value": xml}


@dataclass
class Am:
    url: str
    directory: Path

    def client(self, chain: Path | str, key: Path | str) -> Any:
        return proxy(self.url, str(chain), str(key))


@pytest.fixture
def am(listener: Listener, pki: DemoPki, tmp_path: Path) -> Am:
    roots_dir = tmp_path / "trusted_roots"
    shutil.copytree(pki.directory / "trusted_roots", roots_dir)
    vectors_root = Path(__file__).resolve().parents[2].parent / "shared" / "vectors" / "sfa" / "trusted_roots"
    if vectors_root.exists():
        shutil.copy(vectors_root / "onelab.gid", roots_dir / "onelab.gid")  # trusting a foreign authority
    database = Database(sqlite_url(str(tmp_path / "am.sqlite")))
    database.upgrade()
    verifier = CredentialVerifier(load_trusted_roots(str(roots_dir)), VerdictCache())
    aggregate = Aggregate(
        AggregateSettings(authority_hrn="testbed", api_urls={"3": "https://127.0.0.1/"}), database, verifier
    )
    for name in NODES:
        aggregate.inventory.add_node(NodeSpec(node_urn(name), name, hardware_type="icarus"))
    site = make_site(
        {}, XmlRpcResource(ApiV3(aggregate), listener.pool(8), reactor, 4 * 1024 * 1024), 4 * 1024 * 1024, 60
    )
    tls = ServerTls(str(pki.directory / "aggregate" / "am.pkey"), str(pki.directory / "aggregate" / "am.gid"))
    return Am(url=f"https://127.0.0.1:{listener.listen(site, tls)}/", directory=tmp_path)


def alice(am: Am, pki: DemoPki) -> Any:
    sfi = pki.users["alice"].sfi_dir
    return am.client(sfi / "testbed.alice.user.gid", sfi / "testbed.alice.pkey")


def ok(answer: dict[str, Any]) -> Any:
    assert answer["code"]["geni_code"] == 0, answer["output"]
    assert answer["output"] == ""
    return answer["value"]


def refused(answer: dict[str, Any], code: int, *words: str) -> str:
    assert answer["code"]["geni_code"] == code, answer
    assert answer["output"], "a refusal says why"
    for word in words:
        assert word in answer["output"], answer["output"]
    return str(answer["output"])


def test_get_version(am: Am, pki: DemoPki) -> None:
    answer = alice(am, pki).GetVersion()
    version = ok(answer)
    assert answer["geni_api"] == 3 and version["geni_api"] == 3
    assert version["urn"] == "urn:publicid:IDN+testbed+authority+am"
    assert version["geni_single_allocation"] == 0 and version["geni_allocate"] == "geni_many"
    assert {"type": "GENI", "version": "3"}.items() <= version["geni_ad_rspec_versions"][0].items()


def test_the_whole_life_of_a_booking(am: Am, pki: DemoPki) -> None:
    client = alice(am, pki)
    user = pki.users["alice"]
    advertisement = ok(client.ListResources([user.user_cred], {"geni_rspec_version": GENI_V3}))
    assert all(node_urn(name) in advertisement for name in NODES)
    window = slot(2)
    allocated = ok(
        client.Allocate(
            pki.slice_urn,
            [cred(user.slice_cred)],
            ol_request(("node1", "node2"), window),
            {
                "geni_users": [{"urn": user.chain[0].urn, "keys": [ssh_key("alice@laptop")]}],
            },
        )
    )
    slivers = allocated["geni_slivers"]
    assert len(slivers) == 2
    assert {s["geni_allocation_status"] for s in slivers} == {"geni_allocated"}
    assert {(s["geni_start_time"], s["geni_end_time"]) for s in slivers} == {window}
    assert 'client_id="node1"' in allocated["geni_rspec"] and 'client_id="l1"' in allocated["geni_rspec"]
    provisioned = ok(client.Provision([pki.slice_urn], [cred(user.slice_cred)], {"geni_rspec_version": GENI_V3}))
    assert {s["geni_allocation_status"] for s in provisioned["geni_slivers"]} == {"geni_provisioned"}
    assert {s["geni_operational_status"] for s in provisioned["geni_slivers"]} == {"geni_notready"}  # slot ahead
    assert 'username="alice_' in provisioned["geni_rspec"]  # the per-user local login (registry/accounts.py)
    status = ok(client.Status([pki.slice_urn], [cred(user.slice_cred)], {}))
    assert status["geni_urn"] == pki.slice_urn and len(status["geni_slivers"]) == 2
    one = slivers[0]["geni_sliver_urn"]
    described = ok(client.Describe([one], [cred(user.slice_cred)], {"geni_rspec_version": GENI_V3}))
    assert [s["geni_sliver_urn"] for s in described["geni_slivers"]] == [one]
    new_end = slot(2, hours=3)[1]
    renewed = ok(client.Renew([pki.slice_urn], [cred(user.slice_cred)], new_end, {}))
    assert {s["geni_end_time"] for s in renewed} == {new_end}
    # The slot is ahead: nodes are switched during it only (another slice may hold them now).
    refused(
        client.PerformOperationalAction([pki.slice_urn], [cred(user.slice_cred)], "geni_stop", {}),
        1,
        "geni_start/stop/restart act during the slot",
        window[0],
    )
    deleted = ok(client.Delete([pki.slice_urn], [cred(user.slice_cred)], {}))
    assert {s["geni_allocation_status"] for s in deleted} == {"geni_unallocated"}
    assert ok(client.Status([pki.slice_urn], [cred(user.slice_cred)], {}))["geni_slivers"] == []


def test_a_conflict_names_node_window_and_next_free_start(am: Am, pki: DemoPki) -> None:
    user = pki.users["alice"]
    window = slot(3)
    ok(alice(am, pki).Allocate(pki.slice_urn, [cred(user.slice_cred)], ol_request(("node1",), window), {}))
    bob = pki.users["bob"]
    other_chain, _ = (
        pki.authority.issue_gid("testbed.bobs", "slice")
        if not (pki.directory / "gids" / "testbed.bobs.gid").exists()
        else (pki.authority.issued_chain("testbed.bobs"), None)
    )
    bob_slice_cred = pki.authority.credential(bob.chain, other_chain)
    client = am.client(bob.sfi_dir / "testbed.bob.user.gid", bob.sfi_dir / "testbed.bob.pkey")
    output = refused(
        client.Allocate(
            "urn:publicid:IDN+testbed+slice+bobs", [bob_slice_cred], ol_request(("node1", "node2"), window), {}
        ),
        7,
        node_urn("node1"),
        window[0],
        f"free for the same duration from {window[1]}",
    )
    assert node_urn("node2") not in output, "only the node that clashes is named"
    assert ok(client.Status(["urn:publicid:IDN+testbed+slice+bobs"], [bob_slice_cred], {}))["geni_slivers"] == []


def test_credential_refusals(am: Am, pki: DemoPki) -> None:
    client = alice(am, pki)
    user, bob = pki.users["alice"], pki.users["bob"]
    request = ol_request(("node3",), slot(5))
    refused(
        client.Allocate(pki.slice_urn, [bob.slice_cred], request, {}), 22, "issued to urn:publicid:IDN+testbed+user+bob"
    )
    refused(
        client.Allocate(pki.slice_urn, [user.user_cred], request, {}), 22, "not for urn:publicid:IDN+testbed+slice+demo"
    )
    refused(client.Allocate(pki.slice_urn, [], request, {}), 3, "carried none")
    refused(client.Allocate(pki.slice_urn, ["<garbage"], request, {}), 20, "not well-formed")
    refused(client.ListResources(["<!DOCTYPE x [<!ENTITY a 'b'>]><x/>"], {"geni_rspec_version": GENI_V3}), 20, "entit")
    tampered = user.slice_cred.replace("<name>info</name>", "<name>authority</name>")
    refused(client.Allocate(pki.slice_urn, [tampered], request, {}), 20, "does not verify")


def test_argument_refusals(am: Am, pki: DemoPki) -> None:
    client = alice(am, pki)
    user = pki.users["alice"]
    refused(client.ListResources([user.user_cred], {}), 1, "geni_rspec_version")
    refused(client.ListResources([user.user_cred], {"geni_rspec_version": {"type": "ProtoGENI", "version": "2"}}), 4)
    refused(client.Allocate("not-a-urn", [cred(user.slice_cred)], "<rspec/>", {}), 1, "not a slice URN")
    refused(client.Allocate(pki.slice_urn, [cred(user.slice_cred)], "<rspec type='request'", {}), 1, "1:")
    refused(
        client.PerformOperationalAction([pki.slice_urn], [cred(user.slice_cred)], "geni_explode", {}), 1, "geni_start"
    )
    refused(client.NoSuchMethod(), 13, "not an AM API v3 method")
    laughs = (
        '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3">&b;</rspec>'
    )
    refused(client.Allocate(pki.slice_urn, [cred(user.slice_cred)], laughs, {}), 1, "entit")
    wrong_namespace = ol_request(("node3",), slot(4)).replace("http://www.geni.net/resources/rspec/3", "urn:other")
    refused(client.Allocate(pki.slice_urn, [cred(user.slice_cred)], wrong_namespace, {}), 1, "1:")
    # An oversized payload is refused by the transport before it is read: TOOBIG (6) as an XML-RPC fault.
    with pytest.raises(xmlrpc.client.Fault) as too_big:
        client.Allocate(pki.slice_urn, [cred(user.slice_cred)], "<rspec>" + "x" * (5 * 1024 * 1024), {})
    assert too_big.value.faultCode == 6 and "over the limit" in too_big.value.faultString
    assert ok(client.GetVersion())["geni_api"] == 3
    # An impossible time: the slot ends before it starts.
    start, end = slot(4)
    refused(client.Allocate(pki.slice_urn, [cred(user.slice_cred)], ol_request(("node3",), (end, start)), {}), 1)


def test_an_untrusted_caller_is_forbidden(am: Am, pki: DemoPki, vectors: Path) -> None:
    mallory = am.client(
        vectors / "sfa" / "gids" / "evil.lab.mallory.gid", vectors / "sfa" / "keys" / "evil.lab.mallory.pkey"
    )
    output = refused(
        mallory.ListResources(
            [(vectors / "sfa" / "creds" / "mallory.myslice.untrusted.cred").read_text()],
            {"geni_rspec_version": GENI_V3},
        ),
        3,
    )
    assert "trusted" in output
    assert ok(alice(am, pki).GetVersion())["geni_api"] == 3, "the server keeps serving"


def test_a_user_of_a_foreign_authority_books(am: Am, vectors: Path) -> None:
    """alice of onelab.inria (made by the real SFA code): her authority's root is in trusted_roots."""
    sfa = vectors / "sfa"
    client = am.client(sfa / "gids" / "onelab.inria.alice.gid", sfa / "keys" / "onelab.inria.alice.pkey")
    slice_cred = (sfa / "creds" / "alice.myslice.slice.cred").read_text()
    myslice = "urn:publicid:IDN+onelab:inria+slice+myslice"
    allocated = ok(client.Allocate(myslice, [slice_cred], ol_request(("node2",), slot(6)), {}))
    assert len(allocated["geni_slivers"]) == 1
    expired = (sfa / "creds" / "alice.myslice.expired.cred").read_text()
    refused(client.Allocate(myslice, [expired], ol_request(("node3",), slot(6)), {}), 21, "expired")
    info_only = (sfa / "creds" / "alice.myslice.infoonly.cred").read_text()
    refused(client.Allocate(myslice, [info_only], ol_request(("node3",), slot(6)), {}), 3, "do not allow")
    assert ok(client.Delete([myslice], [slice_cred], {}))


def test_compressed_advertisement(am: Am, pki: DemoPki) -> None:
    import base64
    import zlib

    value = ok(
        alice(am, pki).ListResources(
            [cred(pki.users["alice"].user_cred)],
            {
                "geni_rspec_version": GENI_V3,
                "geni_compressed": True,
                "geni_available": True,
            },
        )
    )
    document = zlib.decompress(base64.b64decode(value)).decode()
    assert node_urn("node1") in document and 'available now="true"' in document


def test_xmlrpc_transport_still_answers_faults_for_garbage(am: Am, pki: DemoPki) -> None:
    with pytest.raises(xmlrpc.client.Fault):
        alice(am, pki).__getattr__("")()


def test_32_clients_race_for_one_node(am: Am, pki: DemoPki) -> None:
    """32 slices ask for the same node and slot at once: exactly one wins; every other gets 7 with the next free
    start; meanwhile the server keeps answering GetVersion."""
    import threading

    from sfa_omf.trust.pki import create_gid, new_private_key

    user = pki.users["alice"]
    window = slot(8)
    credentials = []
    for number in range(32):
        key = new_private_key()
        slice_gid = create_gid(
            f"urn:publicid:IDN+testbed+slice+race{number}", key.public_key(), pki.authority.key, pki.authority.chain[0]
        )
        credentials.append(pki.authority.credential(user.chain, (slice_gid, *pki.authority.chain)))
    barrier = threading.Barrier(33)
    answers: list[dict[str, Any]] = [{} for _ in range(32)]

    def race(number: int) -> None:
        client = alice(am, pki)
        barrier.wait(timeout=60)
        answers[number] = client.Allocate(
            f"urn:publicid:IDN+testbed+slice+race{number}", [credentials[number]], ol_request(("node3",), window), {}
        )

    threads = [threading.Thread(target=race, args=(number,)) for number in range(32)]
    for thread in threads:
        thread.start()
    barrier.wait(timeout=60)
    assert ok(alice(am, pki).GetVersion())["geni_api"] == 3
    for thread in threads:
        thread.join(timeout=120)
    codes = sorted(answer["code"]["geni_code"] for answer in answers)
    assert codes == [0] + [7] * 31
    for answer in answers:
        if answer["code"]["geni_code"] == 7:
            assert f"free for the same duration from {window[1]}" in answer["output"]


def test_best_effort_reports_what_could_not_be_booked(am: Am, pki: DemoPki) -> None:
    user = pki.users["alice"]
    window = slot(10)
    client = alice(am, pki)
    ok(client.Allocate(pki.slice_urn, [cred(user.slice_cred)], ol_request(("node1",), window), {}))
    bob = pki.users["bob"]
    from sfa_omf.trust.pki import create_gid, new_private_key

    key = new_private_key()
    slice_gid = create_gid(
        "urn:publicid:IDN+testbed+slice+be", key.public_key(), pki.authority.key, pki.authority.chain[0]
    )
    bob_cred = pki.authority.credential(bob.chain, (slice_gid, *pki.authority.chain))
    bob_client = am.client(bob.sfi_dir / "testbed.bob.user.gid", bob.sfi_dir / "testbed.bob.pkey")
    answer = ok(
        bob_client.Allocate(
            "urn:publicid:IDN+testbed+slice+be",
            [bob_cred],
            ol_request(("node1", "node2"), window),
            {"geni_best_effort": True},
        )
    )
    booked = [s for s in answer["geni_slivers"] if s["geni_sliver_urn"]]
    failed = [s for s in answer["geni_slivers"] if not s["geni_sliver_urn"]]
    assert [s["geni_allocation_status"] for s in booked] == ["geni_allocated"]
    assert [s["geni_component_id"] for s in failed] == [node_urn("node1")]
    assert f"free for the same duration from {window[1]}" in failed[0]["geni_error"]


def test_renew_as_sfi_sends_it(am: Am, pki: DemoPki) -> None:
    """sfi passes the user's string verbatim ("+1d"); "as long as possible" caps at the credential's expiry. Both end
    on a slot boundary; Delete then reports the renewed times; a second Delete finds nothing."""
    from sfa_omf.trust.credential import read_credential

    client = alice(am, pki)
    user = pki.users["alice"]
    credentials = [cred(user.slice_cred)]
    ok(client.Allocate(pki.slice_urn, credentials, ol_request(("node2",), slot(12)), {}))
    ok(client.Provision([pki.slice_urn], credentials, {}))
    renewed = ok(client.Renew([pki.slice_urn], credentials, "+1d", {}))
    end = renewed[0]["geni_end_time"]
    assert end[14:] in ("00:00Z", "30:00Z") and renewed[0]["geni_expires"] == end
    refused(client.Renew([pki.slice_urn], credentials, "+8w", {}), 7, "geni_extend_alap")
    longest = ok(client.Renew([pki.slice_urn], credentials, "+8w", {"geni_extend_alap": True}))
    credential_expiry = format_time(read_credential(user.slice_cred).credential.expires)
    assert longest[0]["geni_end_time"] <= credential_expiry and longest[0]["geni_end_time"][14:] in ("00:00Z", "30:00Z")
    deleted = ok(client.Delete([pki.slice_urn], credentials, {}))
    assert deleted[0]["geni_end_time"] == longest[0]["geni_end_time"] == deleted[0]["geni_expires"]
    refused(client.Delete([pki.slice_urn], credentials, {}), 12, "no slivers here")
    refused(client.Renew([pki.slice_urn], credentials, "+1d", {}), 12, "no slivers here")


def test_conformance_details(am: Am, pki: DemoPki) -> None:
    """Details the GENI acceptance tests check: the ad names ad.xsd; unknown sliver and node URNs get a struct with
    a code, never a fault; the slice owner's own credential may Shutdown (sfi sends no options), after which the
    slice books nothing."""
    client = alice(am, pki)
    user = pki.users["alice"]
    credentials = [cred(user.slice_cred)]
    ad = ok(client.ListResources([user.user_cred], {"geni_rspec_version": GENI_V3}))
    assert "http://www.geni.net/resources/rspec/3/ad.xsd" in ad
    refused(client.Describe(["urn:publicid:IDN+testbed+sliver+nope"], credentials, {}), 12, "no such sliver")
    refused(client.Describe([node_urn("node1")], credentials, {}), 1, "neither a slice nor a sliver")
    assert ok(client.Shutdown(pki.slice_urn, credentials)) is True
    refused(client.Allocate(pki.slice_urn, credentials, ol_request(("node1",), slot(14)), {}), 7, "shut down")
