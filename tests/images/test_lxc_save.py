"""Saving a real container (LXC on the project's bridge) on this host: it is frozen while its root file system is
archived (its root cannot change the tree under the walk), and the image saved, whose /etc/init.d/rcS the
container's root made a link to a host file's path, starts a container whose configuration replaced that link
instead of writing through it (the host file untouched)."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.images import instances as instances_module
from sfa_omf.images.instances import RUNNING, Instance, Instances
from sfa_omf.images.lxc import InstanceSpec, LxcHost
from sfa_omf.images.store import ImageStore
from sfa_omf.times import utcnow
from tests.images.lxc_env import address, bridge, bridge_network, key_pair, needs_lxc, ssh

pytestmark = needs_lxc
LEASE = "0f4b1d2e-aaaa-bbbb-cccc-000000000031"
OWNER = "urn:publicid:IDN+testbed+user+mallory"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Instances, ImageStore, LxcHost]]:
    database = Database(sqlite_url(str(tmp_path / "am.sqlite")))
    database.upgrade()
    store = ImageStore(database, tmp_path / "images")
    host = LxcHost(bridge(), lxc_path=str(tmp_path / "lxc"))  # containers of this test only
    yield Instances(database, host, str(bridge_network().network), store), store, host
    for record in host.instances():  # nothing outlives the test, whatever happened
        host.destroy(record.name)
    database.dispose()


def test_a_container_is_frozen_while_saved_and_its_image_links_are_never_written_through(
    site: tuple[Instances, ImageStore, LxcHost], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    instances, store, host = site
    key, public = key_pair(tmp_path, "mallory")
    name, where = host.name_for(LEASE, 0), address(131)
    host.launch(InstanceSpec(name, where, (public,)))
    here = where.split("/")[0]
    host_file = tmp_path / "host-file"  # a file of the aggregate's host
    host_file.write_text("host secret\n")
    host_file.chmod(0o600)
    # Root in the container makes the file the next launch writes as root a link to the host file's path.
    made = ssh(key, here, f"ln -sf {host_file} /etc/init.d/rcS && echo mine > /etc/mine")
    assert made.returncode == 0, made.stderr

    seen: list[str] = []  # the container's state while its root file system is archived
    archive = instances_module.save_rootfs

    def watched(rootfs: Path, into: Path, max_bytes: int) -> None:
        seen.append(host.state(name))
        archive(rootfs, into, max_bytes)

    monkeypatch.setattr(instances_module, "save_rootfs", watched)
    instances.save(Instance(name, LEASE, "urn:s", "n", 0, "", where, RUNNING, ""), "evil", OWNER, utcnow())
    assert seen == ["FROZEN"] and host.state(name) == "RUNNING"  # frozen for the save only
    saved = store.get("evil")
    assert saved is not None

    # The image's rcS is that link (an absolute one: the container's own path); the next launch writes its own rcS,
    # its dropbear and its keys in its place, never through it.
    second, there = host.name_for(LEASE, 1), address(132)
    try:
        host.launch(InstanceSpec(second, there, (public,)), image=saved.path)
    finally:  # looked at first: written through the link, the container then has no rcS of its own and fails to boot
        assert host_file.read_text() == "host secret\n" and stat.S_IMODE(host_file.stat().st_mode) == 0o600
    shown = ssh(key, there.split("/")[0], "cat /etc/mine && ls -l /etc/init.d/rcS")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("mine\n") and "->" not in shown.stdout
