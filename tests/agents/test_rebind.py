"""Re-binding an existing node to a new key: a token of another pool never does it (409, nothing written, the real
agent keeps its node); a token of the node's own pool does (a reinstalled machine), and the old key's VPN
certificate is revoked with its ccd/ entry, which the new key's own VPN certificate brings back."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509

from sfa_omf.agents.node import KEY, AgentCallError, Client, enrol, request_vpn
from tests.agents.conftest import Lab
from tests.agents.test_api import counts


def _client(lab: Lab, state: Path) -> Client:
    return Client(lab.url, str(state / "node.gid"), str(state / KEY), lab.root)


def test_a_token_of_another_pool_never_takes_over_a_node(lab: Lab, tmp_path: Path) -> None:
    lab.aggregate.inventory.create_pool("desktops", federated=False)
    first = enrol(lab.url, lab.invite("default"), lab.root, str(tmp_path / "real"), "pc1", "192.168.1.10")
    token = lab.invite("desktops")
    with pytest.raises(AgentCallError) as refused:
        enrol(lab.url, token, lab.root, str(tmp_path / "volunteer"), "pc1", "6.6.6.6")
    assert refused.value.status == 409, refused.value
    message = refused.value.message
    assert first.node in message and "pool 'default'" in message and "pool 'desktops'" in message, message
    # Nothing changed: the real agent still speaks for pc1, whose address and pool are as they were.
    assert _client(lab, tmp_path / "real").call("POST", "heartbeat", {})["node"] == first.node
    node = lab.aggregate.inventory.get_node(first.node)
    assert (node.pool, node.properties["local_address"]) == ("default", "192.168.1.10")
    assert counts(lab) == (1, 1)
    # The token was not spent: it enrols a node of its own pool under another name.
    other = enrol(lab.url, token, lab.root, str(tmp_path / "volunteer"), "pc2", "6.6.6.6")
    assert lab.aggregate.inventory.get_node(other.node).pool == "desktops"


def test_re_enrolment_in_the_pool_revokes_the_old_vpn_certificate(lab: Lab, tmp_path: Path) -> None:
    lab.settings = replace(lab.settings, agent_vpn_remote="127.0.0.1")
    lab.restart()
    vpn = lab.directory / "vpn"
    first = enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "old"), "pc1", "192.168.1.10")
    request_vpn(str(tmp_path / "old"))
    old_serial = x509.load_pem_x509_certificate((vpn / "issued" / "pc1.pem").read_bytes()).serial_number
    assert (vpn / "ccd" / "pc1").exists()

    # The machine was reinstalled: a new key enrols as pc1 with a new token of the node's own pool, made for pc1.
    again = enrol(lab.url, lab.invite(hostname="pc1"), lab.root, str(tmp_path / "new"), "pc1", "192.168.1.10")
    assert again.node == first.node
    crl = x509.load_pem_x509_crl((vpn / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(old_serial) is not None
    assert not (vpn / "ccd" / "pc1").exists()  # the old key's tunnel is refused (ccd-exclusive)
    with pytest.raises(AgentCallError) as refused:
        _client(lab, tmp_path / "old").call("POST", "heartbeat", {})
    assert refused.value.status == 403

    # The new key gets its own VPN certificate and the node's ccd/ entry back; the same key enrolling again with
    # another token keeps it.
    request_vpn(str(tmp_path / "new"))
    new_serial = x509.load_pem_x509_certificate((vpn / "issued" / "pc1.pem").read_bytes()).serial_number
    assert (vpn / "ccd" / "pc1").exists()
    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "new"), "pc1", "192.168.1.10")
    crl = x509.load_pem_x509_crl((vpn / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(new_serial) is None
    assert (vpn / "ccd" / "pc1").exists()
    assert _client(lab, tmp_path / "new").call("POST", "heartbeat", {})["node"] == first.node


def test_a_vpn_certificate_asked_by_the_old_key_while_the_node_is_re_bound_is_refused(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old key's request was authenticated, then the node was re-bound to a new key before its certificate was
    made: the old key gets none (it would open the tunnel for a year), on SQLite (one host, no records) as on
    PostgreSQL."""
    from sfa_omf.agents.service import key_sha256
    from sfa_omf.agents.vpn import VpnCa
    from sfa_omf.calendar.agents import Enrolment
    from sfa_omf.trust.pki import new_private_key

    lab.settings = replace(lab.settings, agent_vpn_remote="127.0.0.1")
    lab.restart()
    first = enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "old"), "pc1", "192.168.1.10")
    issue = VpnCa.issue

    def issue_after_a_re_binding(self: VpnCa, *args: object, **kwargs: object) -> object:
        """The re-binding commits between the request's authentication and its certificate."""
        new_key = key_sha256(new_private_key().public_key())
        token = lab.invite(hostname="pc1")
        lab.agents.register(Enrolment(token, "pc1", first.node, new_key), lambda _urn: ("", "f" * 64))
        return issue(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(VpnCa, "issue", issue_after_a_re_binding)
    with pytest.raises(AgentCallError) as refused:
        request_vpn(str(tmp_path / "old"))
    assert refused.value.status == 404 and "no VPN certificate is issued" in refused.value.message
    assert not (lab.directory / "vpn" / "issued" / "pc1.pem").exists()
    assert not (lab.directory / "vpn" / "ccd" / "pc1").exists()
