"""``sfa-omf image add|remove|publish|list|show`` as an operator runs them on the embedded default made by ``sfa-omf
init``; the group is checked on the Unix user running the tests."""

from __future__ import annotations

import grp
import json
import os
import pwd
from datetime import timedelta
from pathlib import Path

import pytest

from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.cli import main
from sfa_omf.config import read_config
from sfa_omf.images.store import ImageStore, store_directory
from sfa_omf.times import utcnow
from tests.images.conftest import image_file

NODE = "urn:publicid:IDN+testbed+node+node1"
SLICE = "urn:publicid:IDN+testbed+slice+exp"


@pytest.fixture
def config(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    assert main(["init", str(tmp_path / "tb")]) == 0
    capsys.readouterr()
    me = pwd.getpwuid(os.geteuid())
    monkeypatch.setenv("SFA_OMF_IMAGE_GROUP", grp.getgrgid(me.pw_gid).gr_name)  # the runner is an operator
    return str(tmp_path / "tb" / "sfa-omf.conf")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_add_list_show_remove(config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = image_file(tmp_path / "deb.img", 200_000)
    code, out, err = run(
        capsys, "image", "add", str(source), "--label", "deb12", "--os", "Debian", "--os-version", "12", "--json",
        "--config", config,
    )  # fmt: skip
    assert (code, err) == (0, "")
    added = json.loads(out)
    assert added["size"] == 200_000 and added["added_by"] == pwd.getpwuid(os.geteuid()).pw_name
    assert Path(added["path"]).parent == Path(read_config(config).data_dir) / "images"

    code, out, _ = run(capsys, "image", "list", "--config", config)
    assert code == 0
    assert out.splitlines()[0].split() == [
        "LABEL", "OS", "SIZE", "SHA256", "HARDWARE", "ADDED_BY", "ADDED", "ACCESS"
    ]  # fmt: skip
    assert out.splitlines()[1].split()[:5] == ["deb12", "Debian", "12", "200000", added["sha256"][:16]]

    code, out, _ = run(capsys, "image", "show", "deb12", "--json", "--config", config)
    assert code == 0
    assert json.loads(out) == {**added, "leases": []}

    code, out, _ = run(capsys, "image", "remove", "deb12", "--config", config)
    assert code == 0 and out.startswith("removed image deb12")
    assert json.loads(run(capsys, "image", "list", "--json", "--config", config)[1]) == []
    assert not Path(added["path"]).exists()


def test_a_user_outside_the_operator_group_changes_nothing(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = image_file(tmp_path / "deb.img", 1000)
    assert run(capsys, "image", "add", str(source), "--label", "keep", "--config", config)[0] == 0
    me = pwd.getpwuid(os.geteuid())
    other = next(g.gr_name for g in grp.getgrall() if g.gr_gid != me.pw_gid and me.pw_name not in g.gr_mem)
    monkeypatch.setenv("SFA_OMF_IMAGE_GROUP", other)

    code, _, err = run(capsys, "image", "add", str(source), "--label", "new", "--config", config)
    assert code == 2
    assert f"{me.pw_name} may not change the image repository: only members of the Unix group {other!r}" in err
    code, _, err = run(capsys, "image", "remove", "keep", "--config", config)
    assert code == 2 and "may not change the image repository" in err
    code, _, err = run(capsys, "image", "publish", "keep", "--config", config)
    assert code == 2 and "may not change the image repository" in err

    code, out, _ = run(capsys, "image", "list", "--json", "--config", config)  # everybody may list
    assert code == 0 and [image["label"] for image in json.loads(out)] == ["keep"]
    store = Path(read_config(config).data_dir) / "images"
    assert len(list(store.iterdir())) == 1  # no file of the refused add


def test_remove_refused_while_a_lease_uses_it_names_the_lease(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        run(capsys, "image", "add", str(image_file(tmp_path / "a.img", 10)), "--label", "base", "--config", config)[0]
        == 0
    )
    database = Database(read_config(config).calendar_url)
    Inventory(database).add_node(NodeSpec(NODE, "node1"))
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    lease = (
        Bookings(database, sliver_authority="testbed")
        .book(
            SLICE,
            start + timedelta(days=2),
            [BookingRequest(NODE, start, start + timedelta(hours=1), disk_image="base")],
        )
        .leases[0]
    )
    code, _, err = run(capsys, "image", "remove", "base", "--config", config)
    assert code == 2
    assert f"lease {lease.id} of {SLICE} (allocated" in err and "image_in_use" in err
    code, out, _ = run(capsys, "image", "show", "base", "--config", config)
    assert code == 0 and lease.id in out


def test_publish_makes_a_saved_image_public(config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = read_config(config)
    store = ImageStore(Database(settings.calendar_url), store_directory(settings.data_dir))
    saver = "urn:publicid:IDN+testbed+user+alice"
    store.add(image_file(tmp_path / "s.tar", 10), "saved", saver, utcnow(), private=True)  # as sfa_omf_save_image
    code, out, _ = run(capsys, "image", "list", "--config", config)
    assert code == 0 and out.splitlines()[1].split()[-1] == "private"
    bob = "urn:publicid:IDN+testbed+user+bob"
    private = store.show("saved")
    assert not private.usable_by(bob) and not private.usable_by(None) and private.usable_by(saver)

    code, out, err = run(capsys, "image", "publish", "nosuch", "--config", config)
    assert code != 0 and "no image labelled 'nosuch'" in err and "saved" in err
    code, out, _ = run(capsys, "image", "publish", "saved", "--config", config)
    assert code == 0 and out.startswith(f"published image saved (saved by {saver})")
    code, out, _ = run(capsys, "image", "show", "saved", "--json", "--config", config)
    assert code == 0 and json.loads(out)["private"] is False
    published = store.show("saved")
    assert published.usable_by(bob) and published.usable_by(None)
