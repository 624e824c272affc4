"""What one experimenter may keep of the images they save from containers: at most ``[sfa_omf] max_saved_images``
private images of ``max_saved_image_bytes`` together (a published image no longer counts), and no save under
``image_min_free_bytes`` free on the image store's filesystem. A refused save leaves neither file nor row, says what
the user keeps, the limit and how to make room. The saves on this host archive a directory made by the test (no
container runs: the freezing is tests/images/test_lxc_save.py's); the OAR ones take a node's archive from a stand-in
for the lease's run (tests/images/test_node_actions.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sfa_omf.calendar.database import Database
from sfa_omf.config import load_config
from sfa_omf.errors import GeniCode, GeniError
from sfa_omf.images import instances as instances_module
from sfa_omf.images import store as store_module
from sfa_omf.images.instances import RUNNING, Instance, Instances, instances_of
from sfa_omf.images.lxc import LxcHost
from sfa_omf.images.plan_signing import PlanSigner
from sfa_omf.images.store import ImageStore, SaveQuota, free_bytes
from tests.calendar.conftest import at
from tests.conftest import DemoPki
from tests.images.conftest import image_file
from tests.images.test_node_actions import Site, good_archive, operate, provisioned, running, saver
from tests.test_config import minimal

ALICE = "urn:publicid:IDN+testbed+user+alice"
BOB = "urn:publicid:IDN+testbed+user+bob"
NAME = "sfaomf-q-0"
ROOMY = 1 << 40  # a quota of bytes no test reaches


@pytest.fixture
def saving(database: Database, tmp_path: Path) -> tuple[Instances, ImageStore, Path]:
    """Instances of this host (SQLite and PostgreSQL), and the root file system of its container NAME."""
    store = ImageStore(database, tmp_path / "images")
    instances = Instances(database, LxcHost("none", lxc_path=str(tmp_path / "lxc")), "10.217.0.0/24", store)
    rootfs = tmp_path / "lxc" / NAME / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "motd").write_text("saved\n")
    return instances, store, rootfs


def container() -> Instance:
    return Instance(NAME, "x", "urn:s", "n", 0, "", "", RUNNING, "")


def files_in(store: ImageStore) -> list[str]:
    """What the image store's directory holds (a refused save's scratch directory included)."""
    return sorted(path.name for path in store.directory.iterdir()) if store.directory.exists() else []


def bounds_archived(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The bound of every archive a save writes from now on (the real save_rootfs does the writing)."""
    bounds: list[int] = []
    archive = instances_module.save_rootfs

    def watched(rootfs: Path, into: Path, max_bytes: int) -> None:
        bounds.append(max_bytes)
        archive(rootfs, into, max_bytes)

    monkeypatch.setattr(instances_module, "save_rootfs", watched)
    return bounds


def refused_save(instances: Instances, label: str, owner: str = ALICE) -> GeniError:
    with pytest.raises(GeniError) as refused:
        instances.save(container(), label, owner, at(0))
    return refused.value


# -- the number of images ----------------------------------------------------------------------------------------------
def test_a_save_over_the_users_count_is_refused_before_anything_is_written(
    saving: tuple[Instances, ImageStore, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    instances, store, _ = saving
    instances.quota = SaveQuota(max_images=2, max_bytes=ROOMY, min_free_bytes=1)
    for label in ("first", "second"):
        instances.save(container(), label, ALICE, at(0))
    used = sum(record.size for record in store.saved_by(ALICE))
    kept = files_in(store)
    archived = bounds_archived(monkeypatch)

    refused = refused_save(instances, "third")
    assert refused.code == GeniCode.TOOBIG
    assert f"{ALICE} keeps 2 saved private image(s) (first, second; {used} bytes together)" in refused.message
    assert "([sfa_omf] max_saved_images 2). Nothing was saved" in refused.message
    assert "sfa-omf image remove LABEL" in refused.message and "sfa-omf image publish LABEL" in refused.message
    assert archived == [] and store.get("third") is None and files_in(store) == kept  # nothing written

    instances.save(container(), "bobs", BOB, at(0))  # the quota is each user's own
    assert [record.label for record in store.saved_by(BOB)] == ["bobs"]


# -- the bytes ---------------------------------------------------------------------------------------------------------
def test_a_save_over_the_users_bytes_stops_at_what_is_left_and_leaves_nothing(
    saving: tuple[Instances, ImageStore, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    instances, store, rootfs = saving
    instances.quota = SaveQuota(max_images=10, max_bytes=ROOMY, min_free_bytes=1)
    instances.save(container(), "small", ALICE, at(0))
    small = store.show("small").size
    kept = files_in(store)
    left = 100_000
    instances.quota = SaveQuota(max_images=10, max_bytes=small + left, min_free_bytes=1)
    (rootfs / "big").write_bytes(b"x" * (1 << 20))  # its archive is over what is left
    archived = bounds_archived(monkeypatch)

    refused = refused_save(instances, "big")
    assert refused.code == GeniCode.TOOBIG
    assert (
        f"the saved private images of {ALICE} (small) hold {small} bytes and this one, of at least {left + 1} bytes, "
        f"would make at least {small + left + 1}, over the {small + left} one user may keep ([sfa_omf] "
        "max_saved_image_bytes). Nothing was saved" in refused.message
    ), refused.message
    assert "sfa-omf image remove LABEL" in refused.message
    assert archived == [left]  # the archive stopped at what the quota left, never the 4 GiB a save may be
    assert store.get("big") is None and files_in(store) == kept  # and it is gone

    instances.quota = SaveQuota(max_images=10, max_bytes=small, min_free_bytes=1)  # nothing left at all
    refused = refused_save(instances, "again")
    assert refused.code == GeniCode.TOOBIG and f"hold {small} bytes and no byte is left" in refused.message
    assert archived == [left] and files_in(store) == kept  # refused before it was archived


# -- the free space of the store's filesystem ------------------------------------------------------------------------
def test_no_save_goes_under_the_stores_free_space_reserve(
    saving: tuple[Instances, ImageStore, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    instances, store, rootfs = saving
    archived = bounds_archived(monkeypatch)
    instances.quota = SaveQuota(max_images=10, max_bytes=ROOMY, min_free_bytes=free_bytes(store.directory) + (1 << 30))
    refused = refused_save(instances, "full")
    assert refused.code == GeniCode.UNAVAILABLE
    assert "the image store's filesystem has" in refused.message and "bytes free, and a save would leave less" in (
        refused.message
    )
    assert f"its reserve of {instances.quota.min_free_bytes} bytes ([sfa_omf] image_min_free_bytes)" in refused.message
    assert archived == [] and store.get("full") is None and files_in(store) == []

    # A reserve the archive reaches as it is written: it stops there and is removed. (Others share this disk: should
    # they fill the 8 MiB meanwhile, the save is refused before it is archived, as above.)
    with open(rootfs / "big", "wb") as sparse:  # in the container: truncate -s 256M /big (no disk used)
        sparse.truncate(256 << 20)
    instances.quota = SaveQuota(max_images=10, max_bytes=ROOMY, min_free_bytes=free_bytes(store.directory) - (8 << 20))
    refused = refused_save(instances, "big")
    assert refused.code == GeniCode.UNAVAILABLE and "([sfa_omf] image_min_free_bytes)" in refused.message
    assert all(bound < 256 << 20 for bound in archived)
    assert store.get("big") is None and files_in(store) == []


# -- publishing -----------------------------------------------------------------------------------------------------
def test_a_published_image_no_longer_counts_against_its_saver(saving: tuple[Instances, ImageStore, Path]) -> None:
    instances, store, _ = saving
    instances.save(container(), "mine", ALICE, at(0))
    size = store.show("mine").size
    instances.quota = SaveQuota(max_images=1, max_bytes=size, min_free_bytes=1)  # full by count and by bytes
    assert refused_save(instances, "next").code == GeniCode.TOOBIG

    store.publish("mine")  # an operator: sfa-omf image publish mine
    assert store.saved_by(ALICE) == []
    instances.save(container(), "next", ALICE, at(0))
    assert [record.label for record in store.saved_by(ALICE)] == ["next"] and not store.show("mine").private


# -- two saves of one user at once ------------------------------------------------------------------------------------
def test_a_save_whose_room_was_taken_while_it_was_copied_is_refused_and_leaves_nothing(
    store: ImageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked again when the row is recorded (one save of a user at a time): a stand-in for the timing of two saves
    (the real copy, during which the user's other save lands)."""
    quota = SaveQuota(max_images=1, max_bytes=ROOMY, min_free_bytes=1)
    now = datetime(2026, 5, 1, tzinfo=UTC)
    copy = store_module._copy_hashing

    def copying_while_another_save_lands(source: Path, target: Path) -> tuple[str, int]:
        monkeypatch.setattr(store_module, "_copy_hashing", copy)
        store.add(image_file(tmp_path / "other.bin", 1000, seed=2), "other", ALICE, now, private=True, quota=quota)
        return copy(source, target)

    monkeypatch.setattr(store_module, "_copy_hashing", copying_while_another_save_lands)
    with pytest.raises(GeniError) as refused:
        store.add(image_file(tmp_path / "mine.bin", 1000), "mine", ALICE, now, private=True, quota=quota)
    assert refused.value.code == GeniCode.TOOBIG and "keeps 1 saved private image(s) (other;" in refused.value.message
    assert store.get("mine") is None and [record.label for record in store.saved_by(ALICE)] == ["other"]
    assert len(files_in(store)) == 1


# -- on OAR: the node archives it -------------------------------------------------------------------------------------
def oar_site(
    plan_signer: PlanSigner, pki: DemoPki, tmp_path: Path, quota: SaveQuota
) -> tuple[Site, Callable[[str], GeniError]]:
    """An aggregate whose lease's job runs two containers, with this quota, and its refused save of one of them."""
    site = provisioned(plan_signer, pki, tmp_path)
    running(site)
    site.instances.action_timeout_s = 30
    site.instances.quota = quota

    def save(label: str) -> GeniError:
        with saver(site, good_archive), pytest.raises(GeniError) as refused:
            operate(site, pki, "sfa_omf_save_image", {"sfa_omf_label": label, "sfa_omf_instance": site.names[0]})
        return refused.value

    return site, save


def test_on_oar_a_save_over_quota_is_refused_before_the_node_is_asked(
    plan_signer: PlanSigner, pki: DemoPki, tmp_path: Path
) -> None:
    site, save = oar_site(plan_signer, pki, tmp_path, SaveQuota(max_images=1, max_bytes=ROOMY, min_free_bytes=1))
    earlier = tmp_path / "earlier.tar"
    good_archive(earlier)
    site.instances.images.add(earlier, "earlier", pki.users["alice"].chain[0].urn, at(0), private=True)
    refused = save("next")
    assert refused.code == GeniCode.TOOBIG and "max_saved_images 1" in refused.message
    assert site.plans.action(site.lease_id) is None  # the node was never asked to write an archive
    assert site.instances.images.get("next") is None


def test_on_oar_a_nodes_archive_over_what_is_left_is_removed_and_nothing_recorded(
    plan_signer: PlanSigner, pki: DemoPki, tmp_path: Path
) -> None:
    site, save = oar_site(plan_signer, pki, tmp_path, SaveQuota(max_images=10, max_bytes=5000, min_free_bytes=1))
    refused = save("big")  # good_archive is 10240 bytes
    assert refused.code == GeniCode.TOOBIG and "over the 5000 one user may keep" in refused.message
    assert "([sfa_omf] max_saved_image_bytes)" in refused.message
    assert site.instances.images.get("big") is None
    assert [path.name for path in site.instances.images.directory.iterdir()] == ["leases"]  # no copy left
    assert not site.plans.archive_path(site.lease_id, "node1", 1).exists()  # nor the node's archive


# -- the configuration ----------------------------------------------------------------------------------------------
def test_the_quota_comes_from_the_configuration(tmp_path: Path) -> None:
    assert SaveQuota.of(load_config(minimal(tmp_path), environ={}).settings) == SaveQuota()  # one set of defaults
    path = minimal(
        tmp_path,
        "[sfa_omf]",
        "instance_bridge = br-x",
        "max_saved_images = 3",
        "max_saved_image_bytes = 5000",
        "image_min_free_bytes = 7",
    )
    loaded = load_config(path, environ={})
    assert loaded.problems == ()
    database = Database(f"sqlite:///{tmp_path / 'c.sqlite'}")
    instances = instances_of(loaded.settings, database, ImageStore(database, tmp_path / "images"))
    assert instances is not None and instances.quota == SaveQuota(max_images=3, max_bytes=5000, min_free_bytes=7)
