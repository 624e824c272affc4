"""The agent API over real TLS on loopback: enrolment with join tokens (CSR in, certificate out), idempotent
re-registration, refusals that write nothing, heartbeats and lost nodes."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from sfa_omf.agents.node import KEY, AgentCallError, Client, enrol
from sfa_omf.calendar.agents import Agents
from sfa_omf.calendar.outbox import NotifyEvents
from sfa_omf.errors import GeniError, Reason
from sfa_omf.times import utcnow
from sfa_omf.trust.pki import create_gid, new_private_key, private_key_pem
from tests.agents.conftest import Lab


def counts(lab: Lab) -> tuple[int, int]:
    return len(lab.aggregate.inventory.list_nodes()), len(lab.agents.list_agents())


def test_enrol_creates_a_bookable_node_with_a_certificate_of_our_authority(lab: Lab, tmp_path: Path) -> None:
    token = lab.invite()
    enrolled = enrol(lab.url, token, lab.root, str(tmp_path / "a1"), "pc1", "192.168.7.11", "lan-a", {"cpu": "4"})
    assert enrolled.node == "urn:publicid:IDN+lab+node+pc1"
    node = lab.aggregate.inventory.get_node(enrolled.node)
    assert (node.state, node.pool, node.component_name) == ("usable", "default", "pc1")
    assert node.properties == {"cpu": "4", "local_address": "192.168.7.11", "lan_group": "lan-a"}
    # openssl, independently: the certificate chains to our root and holds the node's own key.
    cert = tmp_path / "a1" / "node.gid"
    leaf = tmp_path / "leaf.pem"
    leaf.write_text(cert.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n")
    verified = subprocess.run(["openssl", "verify", "-CAfile", lab.root, str(leaf)], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    issued = x509.load_pem_x509_certificate(leaf.read_bytes())
    key = serialization.load_pem_private_key((tmp_path / "a1" / KEY).read_bytes(), None)
    assert issued.public_key() == key.public_key()
    san = issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert enrolled.node in san.get_values_for_type(x509.UniformResourceIdentifier)


def test_register_again_with_the_same_token_and_key_is_the_same_answer(lab: Lab, tmp_path: Path) -> None:
    token = lab.invite()
    enrol(lab.url, token, lab.root, str(tmp_path / "a1"), "pc1")
    first = (tmp_path / "a1" / "node.gid").read_text()
    enrol(lab.url, token, lab.root, str(tmp_path / "a1"), "pc1")  # the same key: kept in the state directory
    assert (tmp_path / "a1" / "node.gid").read_text() == first
    assert counts(lab) == (1, 1)


@pytest.mark.parametrize("case", ["unknown", "wrong secret", "used by another key", "expired", "not a token"])
def test_bad_tokens_are_refused_and_nothing_is_written(lab: Lab, tmp_path: Path, case: str) -> None:
    token = lab.invite()
    if case == "used by another key":
        enrol(lab.url, token, lab.root, str(tmp_path / "first"), "pc1")
    elif case == "unknown":
        token = "0123456789ab." + token.split(".")[1]
    elif case == "wrong secret":
        token = token.split(".")[0] + ".x" * 15
    elif case == "expired":
        token = Agents(lab.aggregate.database, clock=lambda: utcnow() - timedelta(hours=2)).create_token("default", 60)[
            0
        ]
    elif case == "not a token":
        token = "let me in"
    before = counts(lab)
    with pytest.raises(AgentCallError) as refused:
        enrol(lab.url, token, lab.root, str(tmp_path / "second"), "pc2")
    assert refused.value.status == 403
    assert "token" in refused.value.message
    assert counts(lab) == before
    if case == "expired":
        assert "expired" in refused.value.message


def test_token_for_a_pool_that_does_not_exist_is_not_made(lab: Lab) -> None:
    with pytest.raises(GeniError, match="no pool 'edge'") as refused:  # an answer, not a crash (a KeyError)
        lab.invite(pool="edge")
    assert refused.value.reason is Reason.NOT_FOUND
    lab.aggregate.inventory.create_pool("edge", federated=False)
    token = lab.invite(pool="edge")
    assert token.count(".") == 1


def _register_raw(lab: Lab, tmp_path: Path, body: dict[str, object], tls_key: object | None = None) -> AgentCallError:
    """POST register with a self-signed TLS certificate of ``tls_key`` (a new key when None)."""
    key = tls_key or new_private_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    now = utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(1)
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(minutes=10))
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    (tmp_path / "raw.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "raw.key").write_bytes(private_key_pem(key))  # type: ignore[arg-type]
    client = Client(lab.url, str(tmp_path / "raw.pem"), str(tmp_path / "raw.key"), lab.root)
    with pytest.raises(AgentCallError) as refused:
        client.call("POST", "register", body)
    return refused.value


def _csr(key: object) -> str:
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def test_bad_registrations_say_what_is_wrong_and_write_nothing(lab: Lab, tmp_path: Path) -> None:
    key = new_private_key()
    good = {"token": lab.invite(), "hostname": "pc1", "csr": _csr(key), "local_address": "10.0.0.1"}
    cases = [
        ({**good, "hostname": "Not a name!"}, key, 400, "DNS label"),
        # '$' matched before a last newline: it went into the node's name and URN, and into a DNS zone line.
        ({**good, "hostname": "pc1\n"}, key, 400, "must be one DNS label"),
        ({**good, "lan_group": "lan-a\n"}, key, 400, "may hold letters, digits"),
        ({**good, "properties": {"room\n": "b1"}}, key, 400, "property name 'room\\n' is not allowed"),
        ({**good, "local_address": "somewhere"}, key, 400, "not an IP address"),
        ({**good, "local_address": "fe80::1%eth0"}, key, 400, "has a scope"),  # named would refuse the zone
        ({**good, "local_address": "fe80::1%a b\nc"}, key, 400, "has a scope"),
        ({**good, "csr": "garbage"}, key, 400, "not a PEM certificate signing request"),
        ({**good, "properties": {"x": [1]}}, key, 400, "string or number"),
        ({**good, "properties": {"uuid": "6ba7b811-9dad-11d1-80b4-00c04fd430c8"}}, key, 400, "set by the aggregate"),
        ({**good, "properties": {"hostname": "node1.lab"}}, key, 400, "set by the aggregate"),
        ({**good, "properties": {"network_address": "10.0.0.9"}}, key, 400, "set by the aggregate"),
        # What the OMF controllers read to switch the node (its CM card) and reach it: never the agent's word.
        ({**good, "properties": {"cmc": "10.0.0.200"}}, key, 400, "set by the aggregate or its operator"),
        ({**good, "properties": {"interfaces": "eth0"}}, key, 400, "set by the aggregate or its operator"),
        # A control character would make every ListResources fail (lxml refuses it in the advertisement).
        ({**good, "properties": {"room": "b\x07"}}, key, 400, "control character U+0007"),
        ({**good, "properties": {"load": float("nan")}}, key, 400, "give a finite number"),
        ({k: v for k, v in good.items() if k != "token"}, key, 400, "'token' is missing"),
        (good, new_private_key(), 403, "not the key presented at the TLS handshake"),
    ]
    for body, tls_key, status, words in cases:
        refused = _register_raw(lab, tmp_path, body, tls_key)
        assert (refused.status, words in refused.message) == (status, True), refused
    assert counts(lab) == (0, 0)
    # The token was not spent by any of them: the agent holding the key enrols with it.
    enrolled_key = tmp_path / "ok"
    enrolled_key.mkdir()
    (enrolled_key / KEY).write_bytes(private_key_pem(key))
    assert enrol(lab.url, str(good["token"]), lab.root, str(enrolled_key), "pc1").node.endswith("+pc1")


def test_oversized_and_malformed_bodies_are_refused(lab: Lab, tmp_path: Path) -> None:
    huge = {"token": lab.invite(), "hostname": "pc1", "csr": "x", "pad": "y" * (lab.settings.agent_max_body_bytes + 1)}
    assert _register_raw(lab, tmp_path, huge).status == 413
    assert counts(lab) == (0, 0)


def _post_raw(lab: Lab, state: Path, path: str, payload: bytes) -> tuple[int, dict[str, object]]:
    """POST ``payload`` as it is (not made by json.dumps) with the agent's certificate; (status, JSON answer)."""
    import http.client
    import json
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(lab.root)
    context.load_cert_chain(str(state / "node.gid"), str(state / KEY))
    connection = http.client.HTTPSConnection("127.0.0.1", lab.server.port_number, context=context, timeout=30)
    try:
        connection.request("POST", f"/agents/v1/{path}", body=payload, headers={"content-type": "application/json"})
        response = connection.getresponse()
        raw = response.read()
        # A server error's page is not JSON: keep its start, for the assertion's message.
        return response.status, json.loads(raw) if raw.startswith(b"{") else {"error": "", "message": raw[:300]}
    finally:
        connection.close()


def test_deeply_nested_json_is_a_bad_request(lab: Lab, tmp_path: Path) -> None:
    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1")
    for path, payload in (("heartbeat", b"[" * 60000), ("register", b'{"a":' * 10000 + b"1" + b"}" * 10000)):
        assert len(payload) <= lab.settings.agent_max_body_bytes  # under the size limit: parsed
        status, answer = _post_raw(lab, tmp_path / "a1", path, payload)
        assert (status, answer["error"]) == (400, "bad_args"), answer
        assert "nested too deeply" in str(answer["message"])
    assert counts(lab) == (1, 1)


def test_forged_certificates_are_refused(lab: Lab, tmp_path: Path) -> None:
    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1")
    # Same URN, same key, but signed by another authority: not the certificate we issued.
    own_key = serialization.load_pem_private_key((tmp_path / "a1" / KEY).read_bytes(), None)
    rogue_root_key = new_private_key()
    rogue_root = create_gid("urn:publicid:IDN+lab+authority+sa", rogue_root_key.public_key(), rogue_root_key)
    forged = create_gid(
        "urn:publicid:IDN+lab+node+pc1",
        own_key.public_key(),  # type: ignore[arg-type]
        rogue_root_key,
        issuer=rogue_root,
    )
    (tmp_path / "forged.gid").write_text(forged.pem() + rogue_root.pem())
    client = Client(lab.url, str(tmp_path / "forged.gid"), str(tmp_path / "a1" / KEY), lab.root)
    for method, path in (("POST", "heartbeat"), ("GET", "work")):
        with pytest.raises(AgentCallError) as refused:
            client.call(method, path, {} if method == "POST" else None)
        assert refused.value.status == 403 and "not issued to an enrolled agent" in refused.value.message
    # The real one works.
    real = Client(lab.url, str(tmp_path / "a1" / "node.gid"), str(tmp_path / "a1" / KEY), lab.root)
    assert real.call("POST", "heartbeat", {})["node"] == "urn:publicid:IDN+lab+node+pc1"


def test_wrong_method_and_unknown_path(lab: Lab, tmp_path: Path) -> None:
    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1")
    client = Client(lab.url, str(tmp_path / "a1" / "node.gid"), str(tmp_path / "a1" / KEY), lab.root)
    with pytest.raises(AgentCallError) as refused:
        client.call("GET", "heartbeat")
    assert refused.value.status == 405 and "use POST" in refused.value.message
    with pytest.raises(AgentCallError) as refused:
        client.call("GET", "nothing-here")
    assert refused.value.status == 404
    with pytest.raises(AgentCallError) as refused:
        client.call("PUT", "work/not-a-lease", {"state": "started"})
    assert refused.value.status == 400


def test_silent_agent_is_lost_and_comes_back(lab: Lab, tmp_path: Path) -> None:
    enrolled = enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1")
    later = Agents(lab.aggregate.database, clock=lambda: utcnow() + timedelta(seconds=lab.settings.agent_timeout_s + 1))
    assert later.sweep_lost(lab.settings.agent_timeout_s) == [enrolled.node]
    assert later.sweep_lost(lab.settings.agent_timeout_s) == []  # once
    # The operators' "node down" event was recorded with the loss, once (notify/alerts.py).
    (down,) = NotifyEvents(lab.aggregate.database).since(utcnow() - timedelta(hours=1))
    assert down.event == "node_down" and down.slice_urn is None and down.payload["node"] == enrolled.node
    assert lab.aggregate.inventory.get_node(enrolled.node).state == "lost"
    assert [a.lost for a in lab.agents.list_agents()] == [True]
    client = Client(lab.url, str(tmp_path / "a1" / "node.gid"), str(tmp_path / "a1" / KEY), lab.root)
    client.call("POST", "heartbeat", {})
    assert lab.aggregate.inventory.get_node(enrolled.node).state == "usable"
    assert [a.lost for a in lab.agents.list_agents()] == [False]


def test_maintenance_is_not_undone_by_heartbeats(lab: Lab, tmp_path: Path) -> None:
    enrolled = enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1")
    lab.aggregate.inventory.set_state(enrolled.node, "maintenance")
    later = Agents(lab.aggregate.database, clock=lambda: utcnow() + timedelta(seconds=lab.settings.agent_timeout_s + 1))
    later.sweep_lost(lab.settings.agent_timeout_s)
    Client(lab.url, str(tmp_path / "a1" / "node.gid"), str(tmp_path / "a1" / KEY), lab.root).call(
        "POST", "heartbeat", {}
    )
    assert lab.aggregate.inventory.get_node(enrolled.node).state == "maintenance"


class BrokenHost:
    """A host whose account creation fails (a fault we cannot cause on this test machine without breaking it)."""

    def apply(self, lease_id: str, accounts: object) -> None:
        raise OSError("useradd: /etc/passwd is read-only")

    def remove(self, lease_id: str, logins: object) -> None:
        """Nothing was made."""

    def write_file(self, login: str, folder: str, name: str, data: bytes) -> None:
        """Never reached: apply failed."""

    def read_files(self, login: str, folder: str) -> list[tuple[str, bytes]]:
        return []


def test_a_failure_on_the_node_is_the_lease_failure_in_the_agents_words(lab: Lab, tmp_path: Path) -> None:
    from sfa_omf.agents.node import Agent
    from tests.agents.test_agent_process import SLICE, book_now, sliver_status
    from tests.sshkeys import ssh_key

    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1")
    book_now(lab, ssh_key("ann@laptop"))
    agent = Agent(str(tmp_path / "a1"), BrokenHost())
    (item,) = agent.run_once()["active"]
    assert item["slice"] == SLICE
    state, error = sliver_status(lab)
    assert state == "geni_failed"
    assert "useradd: /etc/passwd is read-only" in error
    # Reported once: the next round does not try again nor report again.
    (item,) = agent.run_once()["active"]
    assert item["reported"] == "failed"
    # The slice's users are told once, with the agent's words (notify: a recorded "failed" of the lease).
    (news,) = [
        e for e in NotifyEvents(lab.aggregate.database).since(utcnow() - timedelta(hours=1)) if e.event == "failed"
    ]
    assert news.slice_urn == SLICE and "useradd: /etc/passwd is read-only" in news.payload["reason"]


def test_heartbeats_are_written_together_and_a_sweep_writes_them_first(lab: Lab, tmp_path: Path) -> None:
    from sfa_omf.agents.service import AgentService, AgentSettings
    from sfa_omf.registry.authority import LocalAuthority
    from sfa_omf.trust.gid import load_gid_chain_file

    enrolled = enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1")
    chain = load_gid_chain_file(str(tmp_path / "a1" / "node.gid"))
    (before,) = lab.agents.list_agents()
    # From the registration's recorded second, not from the wall clock: under load a second may pass in between.
    now = [before.last_seen + timedelta(seconds=100)]
    service = AgentService(
        Agents(lab.aggregate.database, clock=lambda: now[0]),
        LocalAuthority.load(str(lab.directory), "lab"),
        lambda _slice: [],
        AgentSettings(heartbeat_s=30, timeout_s=120),
    )
    assert service.heartbeat(chain)["node"] == enrolled.node
    assert lab.agents.list_agents()[0].last_seen == before.last_seen  # gathered, not written yet
    now[0] += timedelta(seconds=100)  # 200 s after registration: lost unless the heartbeat at 100 s counts
    assert service.sweep_lost() == []
    assert lab.agents.list_agents()[0].last_seen == before.last_seen + timedelta(seconds=100)
    now[0] += timedelta(seconds=121)
    assert service.sweep_lost() == [enrolled.node]
    # A lost agent's heartbeat is written at once: its node is back before any flush.
    service.heartbeat(chain)
    assert lab.aggregate.inventory.get_node(enrolled.node).state == "usable"
    assert service.flush_heartbeats() == 0


def test_a_removed_node_s_agent_is_refused_until_it_enrols_again(lab: Lab, tmp_path: Path) -> None:
    enrolled = enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1")
    lab.aggregate.inventory.remove_node(enrolled.node)
    assert counts(lab) == (0, 0)
    client = Client(lab.url, str(tmp_path / "a1" / "node.gid"), str(tmp_path / "a1" / KEY), lab.root)
    with pytest.raises(AgentCallError) as refused:
        client.call("POST", "heartbeat", {})
    assert refused.value.status == 403 and "enrol with a join token" in refused.value.message
    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1")
    renewed = Client(lab.url, str(tmp_path / "a1" / "node.gid"), str(tmp_path / "a1" / KEY), lab.root)
    assert renewed.call("POST", "heartbeat", {})["node"] == enrolled.node


def test_an_agent_never_takes_over_a_node_the_operator_added(lab: Lab, tmp_path: Path) -> None:
    from sfa_omf.calendar.records import NodeSpec

    lab.aggregate.inventory.add_node(NodeSpec("urn:publicid:IDN+lab+node+node1", "node1", hardware_type="pc"))
    token = lab.invite()
    with pytest.raises(AgentCallError) as refused:
        enrol(lab.url, token, lab.root, str(tmp_path / "a1"), "node1")
    assert refused.value.status == 409 and "enrol under another host name" in refused.value.message
    assert counts(lab) == (1, 0)
    assert lab.aggregate.inventory.get_node("urn:publicid:IDN+lab+node+node1").properties == {}
    enrol(lab.url, token, lab.root, str(tmp_path / "a1"), "pc1")  # the token was not used up
    assert counts(lab) == (2, 1)


def test_agents_registering_at_once_on_a_fresh_calendar_all_get_in(lab: Lab, tmp_path: Path) -> None:
    import threading

    tokens = [lab.invite() for _ in range(8)]  # the default pool is made here, not by the racing registrations
    barrier = threading.Barrier(len(tokens))
    failures: list[str] = []

    def one(number: int) -> None:
        barrier.wait()
        try:
            enrol(lab.url, tokens[number], lab.root, str(tmp_path / f"a{number}"), f"pc{number}")
        except AgentCallError as exc:
            failures.append(f"pc{number}: {exc}")

    racers = [threading.Thread(target=one, args=(number,)) for number in range(len(tokens))]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert failures == []
    assert counts(lab) == (8, 8)
