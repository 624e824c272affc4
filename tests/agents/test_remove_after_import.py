"""``sfa-omf node remove`` of an agent's node goes by the node's agent row (its host name as the agent registered it),
not by the node's hardware type and name, which ``node import --from-file`` may have changed since (docs/operators.md
tells operators to mend nodes that way). It used to skip the VPN revocation and the DNS names of a node imported as
``pc``, and to revoke the certificate of whichever agent had the node's new name. A zone serial file that holds no
number no longer ends the removal half done with "invalid literal for int()" (agents/dns.py reads past it).

Real parts: the aggregate over TLS, the agents' enrolment and VPN requests, its VPN CA and CRL, a real named serving
the nodes' zone (tests/agents/named.py), SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from sfa_omf.agents.node import enrol, request_vpn
from sfa_omf.agents.staging import FileStore
from sfa_omf.cli import main
from sfa_omf.config import read_config
from tests.agents.conftest import Lab
from tests.agents.named import Named
from tests.agents.test_cli import named_zone

LEASE = "0" * 8 + "-0000-4000-8000-" + "0" * 12


@contextlib.contextmanager
def vpn_and_dns(lab: Lab, tmp_path: Path) -> Iterator[Named]:
    """The lab serving the nodes' zone with a real named, and giving VPN certificates (the server issues them only
    with [sfa_agents] vpn_remote set), both in the configuration file the commands read."""
    with named_zone(lab, tmp_path) as named:
        config = Path(lab.settings_path)
        config.write_text(config.read_text() + "vpn_remote = 127.0.0.1\n")  # named_zone's [sfa_agents] is last
        lab.settings = read_config(lab.settings_path)
        lab.restart()
        yield named


def _join_with_vpn(lab: Lab, tmp_path: Path, hostname: str, address: str) -> tuple[str, int]:
    """Enrol ``hostname`` and get its VPN certificate as an agent does: (node URN, certificate serial)."""
    state = str(tmp_path / hostname)
    enrolled = enrol(lab.url, lab.invite(), lab.root, state, hostname, address)
    request_vpn(state)
    issued = (lab.directory / "vpn" / "issued" / f"{hostname}.pem").read_bytes()
    return enrolled.node, x509.load_pem_x509_certificate(issued).serial_number


def _import(lab: Lab, tmp_path: Path, entries: list[dict[str, Any]]) -> None:
    """`sfa-omf node import --from-file` as docs/operators.md has operators mend a node."""
    fix = tmp_path / "fix.json"
    fix.write_text(json.dumps(entries))
    assert main(["node", "import", "--from-file", str(fix), "--config", lab.settings_path]) == 0


def _revoked(lab: Lab, serial: int) -> bool:
    crl = x509.load_pem_x509_crl((lab.directory / "vpn" / "crl.pem").read_bytes())
    return crl.get_revoked_certificate_by_serial_number(serial) is not None


@pytest.mark.parametrize(
    "change",
    [{"hardware_type": "pc"}, {"component_name": "pc7-renamed"}, {"hardware_type": "pc", "component_name": "x"}],
    ids=["hardware_type", "name", "both"],
)
def test_an_agent_s_node_imported_anew_is_removed_with_its_vpn_certificate_and_dns_name(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, str]
) -> None:
    with vpn_and_dns(lab, tmp_path) as named:
        node, serial = _join_with_vpn(lab, tmp_path, "pc7", "192.0.2.7")
        assert named.resolve(["pc7"]) == ["192.0.2.7"] and (lab.directory / "vpn" / "ccd" / "pc7").exists()
        _import(lab, tmp_path, [{"component_id": node, **change}])
        assert {key: getattr(lab.aggregate.inventory.get_node(node), key) for key in change} == change
        capsys.readouterr()

        code = main(["node", "remove", node, "--config", lab.settings_path])

        out, err = capsys.readouterr()
        assert code == 0, (out, err)
        assert "revoked the VPN certificate of pc7" in out and "removed its DNS names" in out, out
        assert _revoked(lab, serial)
        assert not (lab.directory / "vpn" / "ccd" / "pc7").exists()  # its tunnel refused (ccd-exclusive)
        assert named.resolve(["pc7"]) == [""]
        assert lab.agents.list_agents() == []


def test_a_node_renamed_to_another_agent_s_name_is_removed_without_touching_that_agent(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The node's new name is another agent's host name: that agent keeps its certificate, tunnel and DNS name; the
    removed node's own are the ones that go."""
    with vpn_and_dns(lab, tmp_path) as named:
        pc7, pc7_serial = _join_with_vpn(lab, tmp_path, "pc7", "192.0.2.7")
        _, pc8_serial = _join_with_vpn(lab, tmp_path, "pc8", "192.0.2.8")
        _import(lab, tmp_path, [{"component_id": pc7, "component_name": "pc8"}])
        capsys.readouterr()

        code = main(["node", "remove", pc7, "--config", lab.settings_path])

        out, err = capsys.readouterr()
        assert code == 0, (out, err)
        assert "revoked the VPN certificate of pc7" in out and "pc8" not in out + err, (out, err)
        assert _revoked(lab, pc7_serial) and not _revoked(lab, pc8_serial)
        vpn = lab.directory / "vpn"
        assert not (vpn / "ccd" / "pc7").exists() and (vpn / "ccd" / "pc8").exists()
        assert named.resolve(["pc7"]) == [""] and named.resolve(["pc8"]) == ["192.0.2.8"]
        assert [agent.hostname for agent in lab.agents.list_agents()] == ["pc8"]


def test_an_unreadable_zone_serial_does_not_end_the_removal_half_done(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """DATA_DIR/dns/serial holding no number (a hand edit, a disk fault) used to end `node remove` after the node was
    gone with "invalid literal for int()" alone (exit 2), its staged files and registry record left, its DNS name
    served. Now the zone is rewritten past the bad serial and the whole removal is done."""
    from sfa_omf.registry.authority import LocalAuthority
    from sfa_omf.registry.nodes import record_nodes
    from sfa_omf.registry.records import Records

    with vpn_and_dns(lab, tmp_path) as named:
        node, serial = _join_with_vpn(lab, tmp_path, "pc7", "192.0.2.7")
        records = Records(lab.aggregate.database)
        record_nodes(LocalAuthority.load(str(lab.directory), "lab"), records, lab.aggregate.inventory.list_nodes())
        assert records.get("lab.pc7") is not None
        store = FileStore(str(lab.directory / "agent_files"), 1024)
        store.put(LEASE, "pc7", "out", "result.txt", b"42\n", hashlib.sha256(b"42\n").hexdigest())
        serial_file = lab.directory / "dns" / "serial"
        zone_serial = serial_file.read_text().strip()
        serial_file.write_text(f"{zone_serial} # edited\n")  # the fault
        capsys.readouterr()

        code = main(["node", "remove", node, "--config", lab.settings_path])

        out, err = capsys.readouterr()
        assert lab.aggregate.inventory.list_nodes() == []
        assert _revoked(lab, serial) and "revoked the VPN certificate of pc7" in out, out
        assert not (lab.directory / "agent_files" / LEASE / "pc7").exists()
        assert records.get("lab.pc7") is None and "removed its record from the registry of lab" in out, out
        assert code == 0, (out, err)
        assert "removed its DNS names" in out and named.resolve(["pc7"]) == [""], (out, err)

        # Mended as the line says: the next registration of any node rewrites the zone without pc7.
        serial_file.write_text(f"{zone_serial}\n")
        enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a8"), "pc8", "192.0.2.8")
        assert named.resolve(["pc7"]) == [""] and named.resolve(["pc8"]) == ["192.0.2.8"]
