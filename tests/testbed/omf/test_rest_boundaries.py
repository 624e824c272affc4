"""The REST inventory's boundaries, over real HTTPS with client certificates on the aggregate's own TLS server, on
SQLite and PostgreSQL: who reads what (a federation peer's user nothing; a local experimenter the federated nodes
and their own slices' accounts; operators and the testbed's controllers everything), strings the calendar cannot
store (control characters, over-long names, JSON nested too deeply) refused with 400 and nothing written, and the
operator's lease writes (a testbed account's certificate named like a PI is not that PI; a booking in an
experimenter's slice keeps the slice's expiry and account)."""

from __future__ import annotations

import http.client
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import func, select
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.calendar.models import AccountMapping, Lease, Slice
from sfa_omf.calendar.queries import from_s
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.config import read_config
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.registry.records import Records
from sfa_omf.server.app import build_aggregate, start_aggregate
from sfa_omf.testbed.omf.accounts import AccountCertificates
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.gid import chain_pem
from tests.calendar.conftest import fresh_database
from tests.testbed.omf.test_rest import Identity, later, rspec
from tests.tls_harness import client_context, proxy

N1 = "urn:publicid:IDN+lab+node+node1"
SECRET = "urn:publicid:IDN+lab+node+secret3"  # in the private pool "staff"
SLICE = "urn:publicid:IDN+lab+slice+demo"  # ann's, booked through the AM API
CONTROLLER = "urn:publicid:IDN+elsewhere+user+cm"  # a controller's certificate from the testbed's old CA


@dataclass
class Site:
    port: int
    ann: Identity  # an experimenter of this testbed
    bob: Identity  # a PI of "lab": an operator
    carl: Identity  # another experimenter of this testbed, in no slice
    dana: Identity  # one of the web calendar's admins ([sfa_web] admins)
    authority: Identity  # the authority's certificate: what the controllers' stand-ins sign with
    eve: Identity  # a user of a trusted federation peer
    controller: Identity  # a certificate of the peer named in [sfa_frcp] controllers
    slice_cred: str
    aggregate: Any
    directory: Path


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def site(
    request: pytest.FixtureRequest, running_reactor: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    """The whole aggregate (type = omf) trusting a peer authority, with a federated node and a private one."""
    directory = tmp_path_factory.mktemp("omf") / "lab"
    calendar = fresh_database(request.param, tmp_path_factory.mktemp("calendar"))
    calendar_url = calendar.engine.url.render_as_string(hide_password=False)
    calendar.dispose()
    report = init_directory(str(directory), "lab", ("ann", "bob", "carl", "dana"))
    other = tmp_path_factory.mktemp("other") / "elsewhere"
    other_report = init_directory(str(other), "elsewhere", ("eve", "cm"))
    settings = replace(
        read_config(str(directory / "sfa-omf.conf")),
        aggregate_type="omf",
        database_url=calendar_url,
        frcp_controllers=CONTROLLER,
        web_admins="urn:publicid:IDN+lab+user+dana",
    )
    # Federation: the peer authority "elsewhere" is trusted (its users' AM API calls are believed).
    shutil.copy(LocalAuthority.gid_path(str(other), "elsewhere"), Path(settings.trusted_roots_dir) / "elsewhere.gid")
    aggregate = build_aggregate(settings)
    aggregate.inventory.add_node(NodeSpec(N1, "node1"))
    aggregate.inventory.create_pool("staff", federated=False)
    aggregate.inventory.add_node(NodeSpec(SECRET, "secret3", pool="staff"))
    records = Records(aggregate.database)
    records.import_authority(LocalAuthority.load(str(directory), "lab"))
    records.update("lab", pis=["lab.bob"])
    server = blockingCallFromThread(running_reactor, start_aggregate, settings, aggregate, 0)

    def user(sfi_dirs: dict[str, str], hrn: str) -> Identity:
        sfi = Path(sfi_dirs[hrn.split(".")[-1]])
        return Identity(str(sfi / f"{hrn}.user.gid"), str(sfi / f"{hrn}.pkey"))

    try:
        yield Site(
            port=server.port_number,
            ann=user(report.sfi_dirs, "lab.ann"),
            bob=user(report.sfi_dirs, "lab.bob"),
            carl=user(report.sfi_dirs, "lab.carl"),
            dana=user(report.sfi_dirs, "lab.dana"),
            authority=Identity(
                LocalAuthority.gid_path(str(directory), "lab"), LocalAuthority.key_path(str(directory), "lab")
            ),
            eve=user(other_report.sfi_dirs, "elsewhere.eve"),
            controller=user(other_report.sfi_dirs, "elsewhere.cm"),
            slice_cred=(Path(report.sfi_dirs["ann"]) / "lab.ann-lab.demo.slice.cred").read_text(),
            aggregate=aggregate,
            directory=directory,
        )
    finally:
        blockingCallFromThread(running_reactor, server.stop)
        aggregate.database.dispose()


def call(site: Site, who: Identity, method: str, path: str, body: bytes | dict[str, Any] | None = None) -> Any:
    """One HTTPS request with ``who``'s certificate, the path sent as given (raw bytes in the body allowed);
    (status, JSON answer)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    connection = http.client.HTTPSConnection(
        "127.0.0.1", site.port, context=client_context(who.chain, who.key), timeout=60
    )
    try:
        connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


def resources(site: Site, who: Identity, path: str) -> list[dict[str, Any]]:
    status, answer = call(site, who, "GET", path)
    assert status == 200, answer
    return list(answer["resource_response"]["resources"])


def written(site: Site) -> tuple[int, int, int]:
    """What a refused call must leave as it was: the leases, the slices and the account mappings, counted."""
    with site.aggregate.database.read() as session:
        return tuple(  # type: ignore[return-value]
            int(session.scalar(select(func.count()).select_from(table)) or 0)
            for table in (Lease, Slice, AccountMapping)
        )


@pytest.fixture(scope="module")
def booked(site: Site) -> dict[str, str]:
    """ann's AM API lease on node1; an operator's lease on the private node (slice staffer) and one on node1 (slice
    ops) labelled "secret-plan". Their lease uuids, by who holds them."""
    am = proxy(f"https://127.0.0.1:{site.port}/", site.ann.chain, site.ann.key)
    allocated = am.Allocate(SLICE, [site.slice_cred], rspec(N1, later(3)), {})
    assert allocated["code"]["geni_code"] == 0, allocated
    ann_lease = resources(site, site.bob, f"/resources/leases?account_urn={quote(SLICE)}")[0]["uuid"]
    uuids = {"ann": ann_lease}
    for account, node, hours, label in (("staffer", "secret3", 4, "staff-only"), ("ops", "node1", 5, "secret-plan")):
        window = later(hours)
        body = {
            "name": label,
            "valid_from": window[0],
            "valid_until": window[1],
            "account_attributes": {"name": account},
            "components": [{"name": node}],
        }
        status, answer = call(site, site.bob, "POST", "/resources/leases", body)
        assert status == 200, answer
        uuids[account] = answer["resource_response"]["resource"]["uuid"]
    return uuids


# -- who reads what ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("collection", ["nodes", "leases", "accounts", "nodes?name=node1"])
def test_a_federation_peers_user_reads_nothing(site: Site, booked: dict[str, str], collection: str) -> None:
    status, answer = call(site, site.eve, "GET", f"/resources/{collection}")
    assert (status, answer["exception"]["geni_code"]) == (403, 3)
    assert "not under this testbed's authority lab" in answer["exception"]["reason"]


def test_a_local_experimenter_sees_federated_nodes_and_their_own_accounts_only(
    site: Site, booked: dict[str, str]
) -> None:
    ann_login = str(site.aggregate.accounts.login_for("urn:publicid:IDN+lab+user+ann", SLICE))
    nodes = resources(site, site.ann, "/resources/nodes")
    assert [node["name"] for node in nodes] == ["node1"]  # the private pool's secret3 is left out
    assert call(site, site.ann, "GET", "/resources/nodes?name=secret3")[0] == 404
    by_lease = {lease["uuid"]: lease for lease in nodes[0]["leases"]}
    assert by_lease[booked["ann"]]["account"] == {
        "uuid": by_lease[booked["ann"]]["account"]["uuid"],
        "name": ann_login,
        "urn": SLICE,
    }
    # Another slice's lease: its window and status, its uuid as its name, no account.
    ops = by_lease[booked["ops"]]
    assert (ops["account"], ops["name"], ops["status"]) == (None, booked["ops"], "accepted")

    leases = {lease["uuid"]: lease for lease in resources(site, site.ann, "/resources/leases")}
    assert set(leases) == {booked["ann"], booked["ops"]}  # the lease on the private node alone is not listed
    assert leases[booked["ops"]]["account"] is None and leases[booked["ops"]]["name"] == booked["ops"]
    assert resources(site, site.ann, "/resources/leases?account_urn=urn:publicid:IDN%2Blab%2Bslice%2Bops") == []
    assert call(site, site.ann, "GET", "/resources/leases?name=secret-plan")[0] == 404
    accounts = resources(site, site.ann, "/resources/accounts")
    assert [(account["name"], account["urn"]) for account in accounts] == [(ann_login, SLICE)]

    # carl, of this testbed too but in no slice: no account at all, ann's lease without hers.
    assert resources(site, site.carl, "/resources/accounts") == []
    carls = {lease["uuid"]: lease for lease in resources(site, site.carl, "/resources/leases")}
    assert carls[booked["ann"]]["account"] is None


@pytest.mark.parametrize("who", ["authority", "bob", "controller", "dana"])
def test_operators_and_the_controllers_read_everything(site: Site, booked: dict[str, str], who: str) -> None:
    """The controllers' stand-ins sign with the authority's certificate; a controller whose certificate comes from
    another root is named in [sfa_frcp] controllers; the web calendar's admins are operators too. All see every
    node and every lease's account, as the controllers need to compare it with the signer's."""
    identity = getattr(site, who)
    assert [node["name"] for node in resources(site, identity, "/resources/nodes")] == ["node1", "secret3"]
    secret = call(site, identity, "GET", "/resources/nodes?name=secret3")[1]["resource_response"]["resource"]
    assert [lease["account"]["name"] for lease in secret["leases"]] == ["staffer"]
    leases = {lease["uuid"]: lease for lease in resources(site, identity, "/resources/leases")}
    assert set(booked.values()) <= set(leases)
    assert leases[booked["ops"]]["name"] == "secret-plan" and leases[booked["ops"]]["account"]["name"] == "ops"
    urns = {account["urn"] for account in resources(site, identity, "/resources/accounts")}
    assert {SLICE, "urn:publicid:IDN+lab+slice+staffer", "urn:publicid:IDN+lab+slice+ops"} <= urns


# -- strings the calendar cannot store --------------------------------------------------------------------------------


def post_body(account: Any = None, **fields: Any) -> dict[str, Any]:
    window = later(30)
    return {
        "valid_from": window[0],
        "valid_until": window[1],
        "account_attributes": {"name": "plain"} if account is None else account,
        "components": [{"name": "node1"}],
        **fields,
    }


@pytest.mark.parametrize(
    ("method", "path", "body", "words"),
    [
        ("GET", "/resources/nodes?name=%00", None, "the query string"),
        ("GET", "/resources/leases?account_urn=%00", None, "the query string"),
        ("GET", "/resources/nodes?name=node%0A1", None, "the query string"),
        ("GET", "/resources/leases/%00", None, "the path"),
        ("GET", "/resources/leases/%ff", None, "the path is not UTF-8"),
        ("DELETE", "/resources/leases", {"uuid": "\u0000"}, "the body"),
        ("PUT", "/resources/leases", {"uuid": "x\u001b", "valid_until": "+3h"}, "the body"),
        ("POST", "/resources/leases", post_body({"name": "a.b\u0000c.d"}), "control character"),
        ("POST", "/resources/leases", post_body(name="x\u0000"), "control character"),
        ("POST", "/resources/leases", post_body(components=[{"name": "node1\u0000"}]), "control character"),
        ("POST", "/resources/leases", post_body({"urn": "urn:publicid:IDN+lab+slice+x\u0000"}), "control character"),
        ("POST", "/resources/leases", {**post_body(), "\u0000": 1}, "a key"),
        ("POST", "/resources/leases", post_body({"name": "lab.\ud800"}), "control character"),
        ("POST", "/resources/leases", post_body({"name": "a.b+x.c"}), "not a slice HRN"),
        ("POST", "/resources/leases", post_body({"name": "a.b:c.d"}), "not a slice HRN"),
        ("POST", "/resources/leases", post_body({"name": "a..b"}), "empty part"),
        ("POST", "/resources/leases", post_body({"name": "a.b c.d"}), "not a slice HRN"),
        ("POST", "/resources/leases", post_body({"urn": "urn:publicid:IDN+lab+slice+" + "x" * 300}), "at most 300"),
        ("POST", "/resources/leases", post_body(name="x" * 201), "at most 200"),
        ("POST", "/resources/leases", b"[" * 200000, "nested too deeply"),
        ("POST", "/resources/leases", b'{"a":' * 200000, "nested too deeply"),
    ],
)
def test_strings_the_calendar_cannot_store_are_refused_and_write_nothing(
    site: Site, method: str, path: str, body: Any, words: str
) -> None:
    before = written(site)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    status, answer = call(site, site.bob, method, path, data)
    assert (status, answer["exception"]["code"], answer["exception"]["geni_code"]) == (400, 400, 1), answer
    assert words in answer["exception"]["reason"]
    assert written(site) == before


def test_a_lease_name_of_200_characters_is_kept_whole(site: Site) -> None:
    body = post_body({"name": "longname"}, name="n" * 200)
    body["valid_from"], body["valid_until"] = later(31)
    status, answer = call(site, site.bob, "POST", "/resources/leases", body)
    assert status == 200, answer
    assert answer["resource_response"]["resource"]["name"] == "n" * 200


# -- operators' writes ------------------------------------------------------------------------------------------------


def test_a_testbed_account_certificate_named_like_a_pi_is_not_that_pi(site: Site, tmp_path: Path) -> None:
    """user_factory's account "bob" gets a certificate from the local authority for lab.bob, with a key the account's
    users can read: it is not the PI lab.bob, whose key the registry holds."""
    authority = LocalAuthority.load(str(site.directory), "lab")
    certificates = AccountCertificates(authority.key, authority.chain, "lab", "lab.example.org")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certificate = certificates.certificate("bob", key.public_key(), "urn:publicid:IDN+lab+user+bob")
    chain = tmp_path / "account.gid"
    chain.write_text(certificate.public_bytes(serialization.Encoding.PEM).decode() + chain_pem(authority.chain))
    key_file = tmp_path / "account.pkey"
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    impostor = Identity(str(chain), str(key_file))
    before = written(site)
    body = post_body({"name": "impostor"})
    body["valid_from"], body["valid_until"] = later(33)
    status, answer = call(site, impostor, "POST", "/resources/leases", body)
    assert (status, answer["exception"]["geni_code"]) == (403, 3)
    assert "with the key registered for them" in answer["exception"]["reason"]
    assert written(site) == before
    # Nor does it read as an operator: another slice's lease shows no account.
    assert all(lease["account"] is None for lease in resources(site, impostor, "/resources/leases"))
    # The PI with the registered key still writes.
    status, answer = call(site, site.bob, "POST", "/resources/leases", body)
    assert status == 200, answer


def slice_expiry(site: Site, slice_urn: str) -> str:
    with site.aggregate.database.read() as session:
        return format_time(from_s(int(session.scalar(select(Slice.expires_s).where(Slice.urn == slice_urn)))))


def test_an_operator_lease_in_an_experimenters_slice_keeps_its_expiry(site: Site, booked: dict[str, str]) -> None:
    expires = slice_expiry(site, SLICE)
    body = post_body({"urn": SLICE})
    body["valid_from"], body["valid_until"] = later(35)
    status, answer = call(site, site.bob, "POST", "/resources/leases", body)
    assert status == 200, answer
    assert slice_expiry(site, SLICE) == expires  # not now + max_advance + max_duration

    # A lease past the slice's expiry is refused (its users renew the slice first), and writes nothing.
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(days=40)
    assert format_time(start) > expires
    before = written(site)
    late = {**body, "valid_from": format_time(start), "valid_until": format_time(start + timedelta(hours=1))}
    status, answer = call(site, site.bob, "POST", "/resources/leases", late)
    assert (status, answer["exception"]["geni_code"]) == (409, 7)
    assert f"expires at {expires}" in answer["exception"]["reason"]
    assert written(site) == before and slice_expiry(site, SLICE) == expires


def test_an_operator_lease_provisions_the_login_it_shows(site: Site) -> None:
    """A slice mapped to a login already: a lease naming another login is refused (the testbed would provision one
    login while the lease shows another); one naming the slice by URN gets the mapped login."""
    first = post_body({"name": "teamx"})
    first["valid_from"], first["valid_until"] = later(37)
    status, answer = call(site, site.bob, "POST", "/resources/leases", first)
    assert status == 200 and answer["resource_response"]["resource"]["account"]["name"] == "teamx"
    teamx = "urn:publicid:IDN+lab+slice+teamx"

    before = written(site)
    other = post_body({"urn": teamx, "name": "someone"})
    other["valid_from"], other["valid_until"] = later(38)
    status, answer = call(site, site.bob, "POST", "/resources/leases", other)
    assert (status, answer["exception"]["geni_code"]) == (400, 1)
    assert "uses the account 'teamx' already, not 'someone'" in answer["exception"]["reason"]
    assert written(site) == before

    by_urn = post_body({"urn": teamx.replace("+slice+", "+SLICE+")})  # the same slice, however spelt
    by_urn["valid_from"], by_urn["valid_until"] = later(38)
    status, answer = call(site, site.bob, "POST", "/resources/leases", by_urn)
    assert status == 200, answer
    assert answer["resource_response"]["resource"]["account"] == {
        "uuid": answer["resource_response"]["resource"]["account"]["uuid"],
        "name": "teamx",
        "urn": teamx,
    }


def test_a_slice_named_by_its_hrn_gets_its_own_login(site: Site) -> None:
    """R2Lab's tools name the account by the slice's HRN: that names the slice, whose login may differ from its last
    part (an AM-API slice's is derived, demo_1a2b3c); the lease gets the slice's login, it is not refused."""
    first = post_body({"urn": "urn:publicid:IDN+lab+slice+proj", "name": "projlogin"})
    first["valid_from"], first["valid_until"] = later(40)
    status, answer = call(site, site.bob, "POST", "/resources/leases", first)
    assert status == 200 and answer["resource_response"]["resource"]["account"]["name"] == "projlogin", answer

    by_hrn = post_body({"name": "lab.proj"})
    by_hrn["valid_from"], by_hrn["valid_until"] = later(41)
    status, answer = call(site, site.bob, "POST", "/resources/leases", by_hrn)
    assert status == 200, answer
    assert answer["resource_response"]["resource"]["account"]["name"] == "projlogin"
