"""geni_update_users reaches the containers the aggregate's host runs (real LXC, the AM API over TLS on loopback): a
key left out is refused at once by the running containers and by stopped ones when they start again, the new set
logs in, and root's authorized_keys is replaced without following a link the container's root put there."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.errors import GeniError
from sfa_omf.images.instances import RUNNING, STOPPED
from sfa_omf.images.lxc import LxcHost
from sfa_omf.registry.records import Record
from tests.conftest import DemoPki
from tests.images.container_site import GENI_V3, Site, cred, ok, request, site_on_the_bridge
from tests.images.lxc_env import key_pair, needs_lxc, ssh
from tests.tls_harness import Listener

pytestmark = needs_lxc
ALICE = "urn:publicid:IDN+testbed+user+alice"
BOB = "urn:publicid:IDN+testbed+user+bob"


@pytest.fixture
def site(listener: Listener, pki: DemoPki, tmp_path: Path) -> Iterator[Site]:
    yield from site_on_the_bridge(listener, pki, tmp_path)  # no container outlives the test


def users(**keys: str) -> dict[str, Any]:
    """geni_users of alice and/or bob, each with one key."""
    urns = {"alice": ALICE, "bob": BOB}
    return {"geni_users": [{"urn": urns[name], "keys": [key]} for name, key in keys.items()]}


def logs_in(key: Path, host: str) -> bool:
    return ssh(key, host, "true").returncode == 0


def test_update_users_takes_a_left_out_key_out_of_running_and_stopped_containers(
    site: Site, pki: DemoPki, tmp_path: Path
) -> None:
    alice_key, alice_public = key_pair(tmp_path, "alice")
    bob_key, bob_public = key_pair(tmp_path, "bob")
    client = site.alice(pki)
    slice_cred = [cred(pki.users["alice"].slice_cred)]
    ok(client.Allocate(pki.slice_urn, slice_cred, request(), {}))
    ok(client.Provision([pki.slice_urn], slice_cred, {"geni_rspec_version": GENI_V3, **users(alice=alice_public)}))
    site.aggregate.run_instances()
    first, second = site.instances.listing()
    assert {first.state, second.state} == {RUNNING}
    assert logs_in(alice_key, first.host) and not logs_in(bob_key, first.host)

    # Alice, root in the first container, makes its authorized_keys a link to an absolute path: the same path on
    # the host is a file of the host's, which the aggregate (root on the host) must never write through it.
    host_file = tmp_path / "host-file"
    host_file.write_text("the host's own\n")
    planted = ssh(
        alice_key, first.host,
        f"mkdir -p {host_file.parent} && cp /root/.ssh/authorized_keys {host_file} && "
        f"ln -sf {host_file} /root/.ssh/authorized_keys",
    )  # fmt: skip
    assert planted.returncode == 0 and logs_in(alice_key, first.host), planted.stderr

    # The slice's users become bob alone: alice's key stops working in both running containers, bob's works. (alice
    # may send bob's key because the local registry holds it for him: tests/am/test_users_keys.py.)
    site.aggregate.records.add(Record("testbed.bob", "user", BOB, "", keys=(bob_public,)))
    ok(client.PerformOperationalAction([pki.slice_urn], slice_cred, "geni_update_users", users(bob=bob_public)))
    for container in (first, second):
        assert logs_in(bob_key, container.host) and not logs_in(alice_key, container.host), container.name
    assert host_file.read_text() == "the host's own\n"  # the link was replaced, not followed
    replaced = ssh(bob_key, first.host, "test -L /root/.ssh/authorized_keys || cat /root/.ssh/authorized_keys")
    assert replaced.stdout == f"{bob_public}\n", replaced

    # Stopped containers get the new set too: at their next start the key left out is refused.
    ok(client.PerformOperationalAction([pki.slice_urn], slice_cred, "geni_stop", {}))
    assert {record.state for record in site.instances.listing()} == {STOPPED}
    ok(client.PerformOperationalAction([pki.slice_urn], slice_cred, "geni_update_users", users(alice=alice_public)))
    ok(client.PerformOperationalAction([pki.slice_urn], slice_cred, "geni_start", {}))
    for container in (first, second):
        assert logs_in(alice_key, container.host) and not logs_in(bob_key, container.host), container.name


def test_keys_are_not_written_through_a_link_to_the_ssh_directory(tmp_path: Path) -> None:
    """root's .ssh made a link (to a directory of the host's, seen from the host): refused, nothing written there."""
    host = LxcHost("unused", lxc_path=str(tmp_path / "lxc"))
    rootfs = tmp_path / "lxc" / "sfaomf-x-0" / "rootfs"
    (rootfs / "root").mkdir(parents=True)
    elsewhere = tmp_path / "host-directory"
    elsewhere.mkdir()
    (rootfs / "root" / ".ssh").symlink_to(elsewhere)
    with pytest.raises(GeniError, match="root's authorized_keys could not be rewritten"):
        host.write_keys("sfaomf-x-0", ["ssh-ed25519 AAAA bob"])
    assert list(elsewhere.iterdir()) == []
    (rootfs / "root" / ".ssh").unlink()
    host.write_keys("sfaomf-x-0", ["ssh-ed25519 AAAA bob", " "])
    written = rootfs / "root" / ".ssh" / "authorized_keys"
    assert written.read_text() == "ssh-ed25519 AAAA bob\n" and written.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in written.parent.iterdir()) == ["authorized_keys"]  # no temporary file left
