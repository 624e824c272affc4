"""The omf_sfa-compatible REST inventory of the OMF backend, over real HTTPS with client certificates on the
aggregate's own TLS server (built from an init directory, type = omf): what the OMF controllers ask, what operator
tools write, and every refusal in omf_sfa's error shape with nothing written."""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.calendar.records import NodeSpec
from sfa_omf.config import read_config
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.registry.records import Records
from sfa_omf.server.app import build_aggregate, start_aggregate
from sfa_omf.testbed.omf.inventory import lease_status
from sfa_omf.times import format_time, parse_time, utcnow
from tests.calendar.conftest import fresh_database
from tests.tls_harness import client_context, proxy

N1 = "urn:publicid:IDN+lab+node+node1"
N2 = "urn:publicid:IDN+lab+node+node2"
SLICE = "urn:publicid:IDN+lab+slice+demo"
INTERFACES = [
    {"role": "control", "mac": "00:03:1d:0c:23:46", "ip": {"address": "10.0.0.1", "netmask": "255.255.255.0"}}
]
CMC = {"ip": "10.1.0.1", "mac": "00:03:1d:0c:23:99"}
NODE2_UUID = "6a1c3e0e-3b1f-4f5e-9d2a-2f0d7c9b1e42"  # recorded by the operator (omf_sfa's own uuid of the node)


@dataclass
class Identity:
    chain: str
    key: str


@dataclass
class Site:
    base: str
    xmlrpc: str
    ann: Identity  # an experimenter
    bob: Identity  # a PI of the authority "lab": an operator
    authority: Identity  # the authority's own certificate
    stranger: Identity  # trusted by nobody here
    slice_cred: str
    aggregate: Any


def call(
    site: Site, who: Identity, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    """One HTTPS request with ``who``'s client certificate; (status, JSON answer)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(site.base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    context: ssl.SSLContext = client_context(who.chain, who.key)
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def slot_now() -> tuple[str, str]:
    """Two 30-minute slots starting with the current one: a lease that is running now."""
    now = utcnow()
    start = now.replace(minute=0 if now.minute < 30 else 30, second=0, microsecond=0)
    return format_time(start), format_time(start + timedelta(hours=1))


def later(hours: int) -> tuple[str, str]:
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=hours)
    return format_time(start), format_time(start + timedelta(hours=1))


def rspec(node: str, window: tuple[str, str]) -> str:
    return (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        'xmlns:ol="http://nitlab.inf.uth.gr/schema/sfa/rspec/1">'
        f'<ol:lease client_id="l" valid_from="{window[0]}" valid_until="{window[1]}"/>'
        f'<node client_id="n" component_id="{node}" exclusive="true"><ol:lease_ref id_ref="l"/></node></rspec>'
    )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def site(
    request: pytest.FixtureRequest, running_reactor: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    """The whole aggregate (type = omf) on each database: the inventory's column queries run on both."""
    directory = tmp_path_factory.mktemp("omf") / "lab"
    calendar = fresh_database(request.param, tmp_path_factory.mktemp("calendar"))
    calendar_url = calendar.engine.url.render_as_string(hide_password=False)
    calendar.dispose()
    report = init_directory(str(directory), "lab", ("ann", "bob"))
    other = tmp_path_factory.mktemp("other") / "elsewhere"
    other_report = init_directory(str(other), "elsewhere", ("eve",))
    settings = replace(read_config(str(directory / "sfa-omf.conf")), aggregate_type="omf", database_url=calendar_url)
    aggregate = build_aggregate(settings)
    aggregate.inventory.add_node(
        NodeSpec(N1, "node1", hardware_type="icarus", properties={"interfaces": INTERFACES, "cmc": CMC})
    )
    aggregate.inventory.add_node(NodeSpec(N2, "node2", properties={"uuid": NODE2_UUID}))
    records = Records(aggregate.database)
    records.import_authority(LocalAuthority.load(str(directory), "lab"))
    records.update("lab", pis=["lab.bob"])
    server = blockingCallFromThread(running_reactor, start_aggregate, settings, aggregate, 0)

    def user(sfi_dirs: dict[str, str], hrn: str) -> Identity:
        sfi = Path(sfi_dirs[hrn.split(".")[-1]])
        return Identity(str(sfi / f"{hrn}.user.gid"), str(sfi / f"{hrn}.pkey"))

    ann = user(report.sfi_dirs, "lab.ann")
    try:
        yield Site(
            base=f"https://127.0.0.1:{server.port_number}",
            xmlrpc=f"https://127.0.0.1:{server.port_number}/",
            ann=ann,
            bob=user(report.sfi_dirs, "lab.bob"),
            authority=Identity(
                LocalAuthority.gid_path(str(directory), "lab"), LocalAuthority.key_path(str(directory), "lab")
            ),
            stranger=user(other_report.sfi_dirs, "elsewhere.eve"),
            slice_cred=(Path(report.sfi_dirs["ann"]) / "lab.ann-lab.demo.slice.cred").read_text(),
            aggregate=aggregate,
        )
    finally:
        blockingCallFromThread(running_reactor, server.stop)
        aggregate.database.dispose()


def controller_accepts(node: dict[str, Any], account: str, now: datetime) -> bool:
    """The question cm_factory and frisbee_factory ask of the broker's answer for one node: does ``account`` (the
    signer certificate's emailAddress name) hold an active lease on it now?"""
    return any(
        lease["account"]["name"] == account
        and lease["status"] == "active"
        and parse_time(lease["valid_from"]) <= now <= parse_time(lease["valid_until"])
        for lease in node["leases"]
    )


def ann_login(site: Site) -> str:
    return str(site.aggregate.accounts.login_for("urn:publicid:IDN+lab+user+ann", SLICE))


def test_a_node_as_omf_sfa_shows_it(site: Site) -> None:
    status, answer = call(site, site.ann, "GET", "/resources/nodes?name=node1")
    assert status == 200
    node = answer["resource_response"]["resource"]
    assert answer["resource_response"]["about"] == "/resources/nodes"
    assert (node["name"], node["urn"], node["hardware_type"]) == ("node1", N1, "icarus")
    assert node["interfaces"] == INTERFACES and node["cmc"] == CMC
    # The same node by its uuid, in the query or in the path.
    assert call(site, site.ann, "GET", f"/resources/nodes?uuid={node['uuid']}")[1] == answer
    assert call(site, site.ann, "GET", f"/resources/nodes/{node['uuid']}")[1]["resource_response"]["resource"] == node
    everything = call(site, site.ann, "GET", "/resources/nodes")[1]["resource_response"]["resources"]
    assert [each["name"] for each in everything] == ["node1", "node2"]


def test_the_controllers_question_follows_the_am_api(site: Site) -> None:
    """A lease booked with the AM API: pending while only allocated (the controllers refuse), active once
    provisioned during its slot (they accept the account that holds it, and only that account, on that node)."""
    window = slot_now()
    am = proxy(site.xmlrpc, site.ann.chain, site.ann.key)
    assert am.Allocate(SLICE, [site.slice_cred], rspec(N1, window), {})["code"]["geni_code"] == 0
    node = call(site, site.ann, "GET", "/resources/nodes?name=node1")[1]["resource_response"]["resource"]
    assert [lease["status"] for lease in node["leases"]] == ["pending"]
    assert not controller_accepts(node, ann_login(site), utcnow())

    assert am.Provision([SLICE], [site.slice_cred], {})["code"]["geni_code"] == 0
    node = call(site, site.ann, "GET", "/resources/nodes?name=node1")[1]["resource_response"]["resource"]
    (lease,) = node["leases"]
    assert (lease["valid_from"], lease["valid_until"], lease["status"]) == (*window, "active")
    assert lease["account"]["urn"] == SLICE and lease["account"]["name"] == ann_login(site)
    now = utcnow()
    assert controller_accepts(node, ann_login(site), now)
    assert not controller_accepts(node, "bob", now)
    node2 = call(site, site.ann, "GET", "/resources/nodes?name=node2")[1]["resource_response"]["resource"]
    assert not controller_accepts(node2, ann_login(site), now)

    leases = call(site, site.ann, "GET", f"/resources/leases?status=active&account_urn={quote(SLICE)}")[1]
    (listed,) = leases["resource_response"]["resources"]
    assert listed["uuid"] == lease["uuid"] and listed["components"][0]["urn"] == N1
    assert call(site, site.ann, "GET", "/resources/leases?status=past")[1]["resource_response"]["resources"] == []
    accounts = call(site, site.ann, "GET", "/resources/accounts")[1]["resource_response"]["resources"]
    assert [(account["name"], account["urn"]) for account in accounts] == [(ann_login(site), SLICE)]


def test_an_operator_posts_renews_and_deletes_a_lease(site: Site) -> None:
    window = later(5)
    body = {
        "name": "maintenance",
        "valid_from": window[0],
        "valid_until": window[1],
        "account_attributes": {"name": "opsteam"},
        "components": [{"name": "node2"}],
    }
    status, answer = call(site, site.bob, "POST", "/resources/leases", body)
    assert status == 200, answer
    lease = answer["resource_response"]["resource"]
    assert (lease["name"], lease["status"], lease["valid_from"]) == ("maintenance", "accepted", window[0])
    assert lease["account"] == {
        "uuid": lease["account"]["uuid"],
        "name": "opsteam",
        "urn": "urn:publicid:IDN+lab+slice+opsteam",
    }
    node = call(site, site.ann, "GET", "/resources/nodes?name=node2")[1]["resource_response"]["resource"]
    assert [each["uuid"] for each in node["leases"]] == [lease["uuid"]]
    # A node's recorded uuid is the one everything shows and takes.
    assert node["uuid"] == NODE2_UUID and lease["components"] == [{"uuid": NODE2_UUID, "name": "node2", "urn": N2}]
    by_uuid = {**body, "name": "by-uuid", "components": [{"uuid": NODE2_UUID}]}
    by_uuid["valid_from"], by_uuid["valid_until"] = later(7)
    status, answer = call(site, site.bob, "POST", "/resources/leases", by_uuid)
    assert status == 200 and answer["resource_response"]["resource"]["components"][0]["urn"] == N2
    assert (
        call(site, site.bob, "DELETE", f"/resources/leases?uuid={answer['resource_response']['resource']['uuid']}")[0]
        == 200
    )

    new_end = format_time(parse_time(window[1]) + timedelta(hours=1))
    status, answer = call(
        site, site.authority, "PUT", "/resources/leases", {"uuid": lease["uuid"], "valid_until": new_end}
    )
    assert status == 200 and answer["resource_response"]["resource"]["valid_until"] == new_end

    status, answer = call(site, site.bob, "DELETE", f"/resources/leases/{lease['uuid']}")
    assert status == 200 and answer["resource_response"]["resource"]["status"] == "cancelled"
    cancelled = call(site, site.bob, "GET", "/resources/leases?status=cancelled&name=maintenance")[1]
    assert cancelled["resource_response"]["resource"]["uuid"] == lease["uuid"]


def lease_count(site: Site) -> int:
    return len(call(site, site.bob, "GET", "/resources/leases")[1]["resource_response"]["resources"])


def test_a_conflict_is_refused_with_its_reason_and_writes_nothing(site: Site) -> None:
    window = later(9)
    first = {
        "valid_from": window[0],
        "valid_until": window[1],
        "account_attributes": {"name": "first"},
        "components": [{"urn": N1}],
    }
    assert call(site, site.bob, "POST", "/resources/leases", first)[0] == 200
    before = lease_count(site)
    clash = {**first, "account_attributes": {"name": "second"}, "components": [{"urn": N2}, {"urn": N1}]}
    status, answer = call(site, site.bob, "POST", "/resources/leases", clash)
    assert status == 409
    assert answer["exception"]["code"] == 409 and answer["exception"]["geni_code"] == 7
    assert (
        f"{N1} is booked during {window[0]}..{window[1]}" in answer["exception"]["reason"]
        and "free for the same duration from" in (answer["exception"]["reason"])
    )
    assert lease_count(site) == before  # not even node2 was booked


@pytest.mark.parametrize(
    ("who", "method", "path", "body", "status", "geni_code", "words"),
    [
        ("ann", "POST", "/resources/leases", {"valid_from": "x"}, 403, 3, "not change leases"),
        ("ann", "PUT", "/resources/leases", {"uuid": "x", "valid_until": "+3h"}, 403, 3, "not change leases"),
        ("ann", "DELETE", "/resources/leases", {"uuid": "x"}, 403, 3, "not change leases"),
        ("stranger", "POST", "/resources/leases", {}, 403, 3, "not one of our"),
        ("stranger", "GET", "/resources/nodes", None, 403, 3, "not one of our"),
        ("ann", "GET", "/resources/nodes?name=nope", None, 404, 12, "no node with name='nope'"),
        ("ann", "GET", "/resources/nodes?colour=red", None, 400, 1, "unknown parameter 'colour'"),
        ("ann", "GET", "/resources/leases?status=soon", None, 400, 1, "pending, accepted, active, past, cancelled"),
        ("ann", "GET", "/resources/channels", None, 404, 12, "is not served here"),
        ("bob", "POST", "/resources/nodes", {}, 405, 13, "read-only"),
        ("bob", "POST", "/resources/leases", {"valid_from": "2026-13-01"}, 400, 1, "valid_from"),
        ("bob", "POST", "/resources/leases", {"valid_from": "+1h", "valid_until": "+2h"}, 400, 1, "names no account"),
        (
            "bob",
            "POST",
            "/resources/leases",
            {"valid_from": "+1h", "valid_until": "+2h", "account": {"name": "x"}, "components": [{"name": "node9"}]},
            404,
            12,
            "no node with name node9",
        ),
        ("bob", "POST", "/resources/leases", {"colour": "red"}, 400, 1, "unknown lease field(s) colour"),
        ("bob", "PUT", "/resources/leases", {"uuid": "nope", "valid_until": "+3h"}, 404, 12, "no lease nope"),
        ("bob", "DELETE", "/resources/leases", {}, 400, 1, "give its uuid"),
    ],
)
def test_refusals(
    site: Site,
    who: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    status: int,
    geni_code: int,
    words: str,
) -> None:
    before = lease_count(site)
    got, answer = call(site, getattr(site, who), method, path, body)
    assert (got, answer["exception"]["code"], answer["exception"]["geni_code"]) == (status, status, geni_code)
    assert words in answer["exception"]["reason"]
    assert lease_count(site) == before


def test_lease_status_table() -> None:
    start, end = parse_time("2026-12-01T10:00:00Z"), parse_time("2026-12-01T11:00:00Z")
    before, during, after = start - timedelta(seconds=1), start, end
    assert [lease_status("allocated", start, end, moment) for moment in (before, during)] == ["pending", "pending"]
    assert [lease_status("provisioned", start, end, moment) for moment in (before, during, after)] == [
        "accepted",
        "active",
        "past",
    ]
    assert [lease_status(state, start, end, during) for state in ("ended", "cancelled", "expired")] == [
        "past",
        "cancelled",
        "cancelled",
    ]


def test_two_operators_racing_for_one_slot_get_one_lease(site: Site) -> None:
    """Both POSTs go through the calendar at once: one is booked, the other refused with the winner as the reason."""
    window = later(13)
    bodies = [
        {
            "valid_from": window[0],
            "valid_until": window[1],
            "account_attributes": {"name": f"racer{index}"},
            "components": [{"urn": N1}],
        }
        for index in range(2)
    ]
    before = lease_count(site)
    barrier = threading.Barrier(2)
    answers: list[tuple[int, dict[str, Any]]] = []

    def post(body: dict[str, Any]) -> None:
        barrier.wait()
        answers.append(call(site, site.bob, "POST", "/resources/leases", body))

    racers = [threading.Thread(target=post, args=(body,)) for body in bodies]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert sorted(status for status, _ in answers) == [200, 409]
    refused = next(answer for status, answer in answers if status == 409)
    assert f"{N1} is booked during {window[0]}..{window[1]}" in refused["exception"]["reason"]
    assert lease_count(site) == before + 1


def test_extending_a_lease_into_another_is_refused_and_changes_nothing(site: Site) -> None:
    first, second = later(17), later(18)  # back to back on node2
    leases = []
    for index, window in enumerate((first, second)):
        body = {
            "valid_from": window[0],
            "valid_until": window[1],
            "account_attributes": {"name": f"neighbour{index}"},
            "components": [{"urn": N2}],
        }
        status, answer = call(site, site.bob, "POST", "/resources/leases", body)
        assert status == 200, answer
        leases.append(answer["resource_response"]["resource"])
    status, answer = call(
        site, site.bob, "PUT", "/resources/leases", {"uuid": leases[0]["uuid"], "valid_until": second[1]}
    )
    assert (status, answer["exception"]["geni_code"]) == (409, 7)
    assert f"{N2} is booked during {second[0]}..{second[1]}" in answer["exception"]["reason"]
    unchanged = call(site, site.bob, "GET", f"/resources/leases/{leases[0]['uuid']}")[1]["resource_response"][
        "resource"
    ]
    assert unchanged["valid_until"] == first[1] and unchanged["status"] == "accepted"
    # Its start cannot move: delete and post again.
    moved = {"uuid": leases[0]["uuid"], "valid_from": later(16)[0], "valid_until": first[1]}
    status, answer = call(site, site.bob, "PUT", "/resources/leases", moved)
    assert status == 400 and "valid_from cannot change" in answer["exception"]["reason"]


def test_a_body_over_the_limit_is_refused_in_omf_sfas_shape_before_it_is_read(site: Site) -> None:
    connection = http.client.HTTPSConnection(
        "127.0.0.1", int(site.base.rsplit(":", 1)[1]), context=client_context(site.bob.chain, site.bob.key)
    )
    connection.putrequest("POST", "/resources/leases")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(10**10))
    connection.endheaders()  # no body is sent: the answer comes from the declared length
    answer = connection.getresponse()
    error = json.loads(answer.read())["exception"]
    connection.close()
    assert (answer.status, answer.getheader("Content-Type"), error["code"], error["geni_code"]) == (
        413,
        "application/json",
        413,
        6,
    )
    assert "over the limit of" in error["reason"]
