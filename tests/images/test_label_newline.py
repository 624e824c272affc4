"""A name with a trailing newline is no name: an image label (``sfa-omf image add --label``, and an experimenter's
sfa_omf_save_image, which goes through the same check) and the names of a node plan (a lease id, a container, a
node) are checked whole, not up to a final newline (a regex "$" matches before one)."""

from __future__ import annotations

import grp
import json
import os
import pwd
from pathlib import Path

import pytest

from sfa_omf.cli import main
from sfa_omf.config import read_config
from sfa_omf.errors import GeniCode, GeniError
from sfa_omf.images.node_plans import (
    LeaseAction,
    LeasePlan,
    LeasePlans,
    PlanError,
    PlannedContainer,
    is_node_name,
    report_path_of,
)
from sfa_omf.images.plan_signing import PlanSigner
from sfa_omf.images.store import ImageStore, check_label
from tests.calendar.conftest import NOW
from tests.images.conftest import image_file


def test_the_cli_refuses_a_label_with_a_trailing_newline_and_stores_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["init", str(tmp_path / "tb")]) == 0
    config = str(tmp_path / "tb" / "sfa-omf.conf")
    me = pwd.getpwuid(os.geteuid())
    monkeypatch.setenv("SFA_OMF_IMAGE_GROUP", grp.getgrgid(me.pw_gid).gr_name)  # the runner is an operator
    capsys.readouterr()

    code = main(["image", "add", str(image_file(tmp_path / "f.img", 1000)), "--label", "img\n", "--config", config])
    _, err = capsys.readouterr()
    assert code != 0
    assert "image label 'img\\n' is not valid" in err and "letters, digits" in err

    assert main(["image", "list", "--json", "--config", config]) == 0
    assert json.loads(capsys.readouterr().out) == []
    images = Path(read_config(config).data_dir) / "images"
    assert not images.exists() or not [path.name for path in images.iterdir() if path.suffix != ""]


def test_the_store_refuses_a_label_with_a_trailing_newline(store: ImageStore, tmp_path: Path) -> None:
    """On SQLite and on PostgreSQL: nothing written, neither row nor file."""
    with pytest.raises(GeniError) as refused:
        store.add(image_file(tmp_path / "a.img", 100), "img\n", added_by="alice", now=NOW)
    assert refused.value.code == GeniCode.BADARGS
    assert store.images() == []
    assert not store.directory.exists()
    with pytest.raises(GeniError):
        check_label("saved\n")  # what sfa_omf_save_image's label goes through
    assert check_label("saved") == "saved"


def test_node_plan_names_with_a_trailing_newline_are_refused(plan_signer: PlanSigner, tmp_path: Path) -> None:
    plans = LeasePlans(tmp_path / "leases", plan_signer)
    with pytest.raises(ValueError, match="is not a plain name"):
        plans.plan_path("0f94abcd\n")
    assert plans.plan_path("0f94abcd").name.startswith("0f94abcd")

    assert not is_node_name("pc1\n") and is_node_name("pc1")
    with pytest.raises(ValueError, match="is not a node name"):
        report_path_of(plans.plan_path("0f94abcd"), "pc1\n")

    action = {"seq": 1, "action": "save", "containers": ["sfaomf-0f94abcd-0\n"], "plan_id": "p1"}
    with pytest.raises(PlanError, match="containers must be a list of container names"):
        LeaseAction.from_json(json.dumps(action))
    assert LeaseAction.from_json(json.dumps({**action, "containers": ["sfaomf-0f94abcd-0"]})).containers == (
        "sfaomf-0f94abcd-0",
    )

    plan = LeasePlan(
        lease_id="0f94abcd",
        user="alice",
        bridge="sfaomf-lxc0",
        lxc_path="/var/lib/lxc",
        ssh_timeout_s=30.0,
        keys=("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9Kz0test ann@laptop",),
        containers=(PlannedContainer("sfaomf-0f94abcd-0", "10.217.0.2/24", "/srv/images/tools.tar"),),
        slot_start_s=1_800_000_000,
        slot_end_s=1_800_003_600,
        nodes=("pc1",),
    )
    assert LeasePlan.from_json(plan.to_json()).nodes == ("pc1",)
    with pytest.raises(PlanError, match="nodes"):
        LeasePlan.from_json(json.dumps({**json.loads(plan.to_json()), "nodes": ["pc1\n"]}))
