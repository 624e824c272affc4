"""Image files get their modes from the store, never from the umask: a public image 0644 (OAR nodes read the store's
read-only export, their root squashed to "other"), a private (saved) image 0600 until it is published, and a lease
on an OAR node using a private image gets its own copy in that node's directory (no other node can read the store's
file). Without OAR: the plan the aggregate writes and the file it places are checked."""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from sfa_omf.images.node_plans import HANDED_MODE, image_on_node
from sfa_omf.images.store import ImageStore
from tests.calendar.conftest import NOW
from tests.conftest import DemoPki
from tests.images.conftest import database, image_file, store  # noqa: F401
from tests.images.plans_env import plan_file
from tests.images.test_node_side import PLAN, Site, provision, site  # noqa: F401

ALICE = "urn:publicid:IDN+lab+user+alice"


def mode_of(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@contextmanager
def umask(mask: int) -> Iterator[None]:
    before = os.umask(mask)
    try:
        yield
    finally:
        os.umask(before)


def test_a_private_image_is_stored_0600_whatever_the_umask(store: ImageStore, tmp_path: Path) -> None:  # noqa: F811
    source = image_file(tmp_path / "work.img", 10000)
    with umask(0):
        record = store.add(source, "alice-work", ALICE, NOW, private=True)
    assert mode_of(record.path) == 0o600


def test_a_public_image_is_0644_in_a_0755_folder_whatever_the_umask(store: ImageStore, tmp_path: Path) -> None:  # noqa: F811
    source = image_file(tmp_path / "deb.img", 10000)
    with umask(0o077):  # the store's folder does not exist yet: add makes it
        record = store.add(source, "deb12", "operator", NOW)
    assert (mode_of(record.path), mode_of(store.directory)) == (0o644, 0o755)


def test_publish_makes_a_private_image_readable_by_all(store: ImageStore, tmp_path: Path) -> None:  # noqa: F811
    source = image_file(tmp_path / "work.img", 10000)
    with umask(0o077):
        record = store.add(source, "alice-work", ALICE, NOW, private=True)
        assert mode_of(record.path) == 0o600
        published = store.publish("alice-work")
    assert not published.private and mode_of(published.path) == 0o644


def test_start_up_gives_the_files_of_an_older_store_the_mode_their_row_says(
    store: ImageStore,  # noqa: F811
    tmp_path: Path,
) -> None:
    private = store.add(image_file(tmp_path / "a.img", 1000), "alice-work", ALICE, NOW, private=True)
    public = store.add(image_file(tmp_path / "b.img", 1000, seed=2), "deb12", "operator", NOW)
    os.chmod(private.path, 0o644)  # as the umask left them before modes were set
    os.chmod(public.path, 0o640)  # (systemd's UMask=0027: no node could read it)
    assert store.secure_modes() == 2
    assert (mode_of(private.path), mode_of(public.path)) == (0o600, 0o644)
    assert store.secure_modes() == 0  # nothing left to change


# -- containers on OAR nodes: a private image is handed to the lease's node alone ------------------------------------
def container_image(path: Path) -> Path:
    with tarfile.open(path, "w"):
        pass
    return path


def test_a_lease_on_an_oar_node_gets_its_own_copy_of_a_private_image_until_it_ends(
    site: Site,  # noqa: F811
    pki: DemoPki,
    tmp_path: Path,
) -> None:
    owner = pki.users["alice"].chain[0].urn or ""
    saved = site.instances.images.add(
        container_image(tmp_path / "s.tar"), "mine", owner, datetime.now(UTC), private=True
    )
    lease_id = provision(site, pki, "mine")
    plan = plan_file(site.plans, lease_id)
    handed = Path(plan.containers[0].image)
    node_directory = site.plans.report_path(lease_id, "node1").parent
    assert {c.image for c in plan.containers} == {str(handed)} and handed.parent == node_directory
    assert handed.read_bytes() == Path(saved.path).read_bytes() and mode_of(handed) == HANDED_MODE == 0o600
    assert mode_of(saved.path) == 0o600  # the store's own file stays the aggregate's
    site.instances.destroy_lease(lease_id, datetime.now(UTC))  # the lease is over: the copy goes with its plan
    assert not handed.exists() and not site.plans.plan_path(lease_id).exists()
    assert Path(saved.path).is_file()


def test_the_run_reads_the_copy_in_its_own_nodes_directory(tmp_path: Path) -> None:
    plan_path = tmp_path / "leases" / f"{PLAN.lease_id}.plan.json"
    plan = replace(PLAN, nodes=("n1", "n2"))
    handed = tmp_path / "leases" / "nodes" / "n1" / f"{PLAN.lease_id}.image-mine.img"
    assert image_on_node(str(handed), plan_path, plan, "n2") == str(handed.parent.parent / "n2" / handed.name)
    assert image_on_node(str(handed), plan_path, plan, "n1") == str(handed)
    store_file = tmp_path / "mine-0123.img"  # a public image: the store's file, read on every node
    assert image_on_node(str(store_file), plan_path, plan, "n2") == str(store_file)
