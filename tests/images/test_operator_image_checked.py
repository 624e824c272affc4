"""``sfa-omf image add`` checks a tar archive as a container's image when it is added (archives.check_archive, what
a save's archive is checked with): a hostile one is refused, saying why, and nothing is recorded, instead of being
kept and refused at the start of some lease's container. Compressed archives are read as extraction reads them, and
a file that is no tar archive (a disk image a site's deploy command installs) is added as before."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from sfa_omf.config import read_config
from sfa_omf.errors import GeniCode, GeniError
from sfa_omf.images.store import ImageStore
from sfa_omf.times import utcnow
from tests.images.conftest import image_file
from tests.images.test_cli_images import config, run
from tests.images.test_image_safety import archive_with, link, regular
from tests.images.test_node_actions import good_archive, hostile

__all__ = ["config"]  # the fixture: an initialised site whose operator group is the runner's

HOSTILE = ["absolute", "dotdot", "device", "through a link", "hard link out", "hard link to a symbolic link"]
HOSTILE += ["a name twice"]


def store_files(config: str) -> list[str]:
    directory = Path(read_config(config).data_dir) / "images"
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []


def listed(capsys: pytest.CaptureFixture[str], config: str) -> list[str]:
    code, out, _ = run(capsys, "image", "list", "--json", "--config", config)
    assert code == 0
    return [image["label"] for image in json.loads(out)]


@pytest.mark.parametrize("kind", HOSTILE)
def test_an_operator_adding_a_hostile_archive_is_refused_and_nothing_is_recorded(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    source = tmp_path / "rootfs.tar"
    hostile(kind)(source)  # what a node could write instead of a container's root file system
    code, out, err = run(capsys, "image", "add", str(source), "--label", "bad", "--config", config)
    assert (code, out) == (2, "")
    assert f"{source} was not added as image 'bad': it is a tar archive no container could start from: " in err
    assert "fix the archive and add it again. Nothing was added" in err
    assert listed(capsys, config) == [] and store_files(config) == []


def test_a_compressed_archive_is_read_as_extraction_reads_it_and_disk_images_are_added_as_before(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "rootfs.tar.gz"
    with tarfile.open(source, "w:gz") as tar:  # extraction reads compressed archives: so does the check
        for member in (regular("./bin/busybox"), link("./etc/init.d/rcS", "../../../outside")):
            tar.addfile(member, io.BytesIO(b"x") if member.isfile() else None)
    code, _, err = run(capsys, "image", "add", str(source), "--label", "bad", "--config", config)
    assert code == 2 and "symbolic link './etc/init.d/rcS' leads out of the root file system" in err, err
    assert listed(capsys, config) == [] and store_files(config) == []

    plain = tmp_path / "rootfs.tar"
    good_archive(plain)
    busybox = archive_with(tmp_path / "busybox.tar", regular("./bin/busybox"), link("./bin/sh", "busybox"))
    with tarfile.open(tmp_path / "busybox.tar.xz", "w:xz") as tar, tarfile.open(busybox) as members:
        for member in members:
            tar.addfile(member, members.extractfile(member) if member.isfile() else None)
    disk = image_file(tmp_path / "deb12.img", 300_000)  # no tar archive: installed by the site's deploy command
    for path, label in ((plain, "tools"), (tmp_path / "busybox.tar.xz", "busybox"), (disk, "deb12")):
        code, out, err = run(capsys, "image", "add", str(path), "--label", label, "--config", config)
        assert (code, err) == (0, "") and out.startswith(f"added image {label}:")
    assert listed(capsys, config) == ["busybox", "deb12", "tools"] and len(store_files(config)) == 3


def test_the_store_refuses_a_hostile_archive_whoever_adds_it(store: ImageStore, tmp_path: Path) -> None:
    source = archive_with(tmp_path / "image.tar", link("./etc/x", "./../y/../../z"))
    with pytest.raises(GeniError) as refused:
        store.add(source, "bad", "root", utcnow())
    assert refused.value.code == GeniCode.BADARGS and "leads out of the root file system" in refused.value.message
    assert store.images() == [] and (not store.directory.exists() or list(store.directory.iterdir()) == [])
