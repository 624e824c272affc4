"""The image settings in the configuration: defaults, a bad provisioning mode reported by config check, and the
backends built from the configuration receiving the mode."""

from __future__ import annotations

from pathlib import Path

from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.config import load_config
from sfa_omf.images.instances import instances_of
from sfa_omf.images.store import ImageStore
from sfa_omf.testbed.embedded import EmbeddedTestbed
from sfa_omf.testbed.oar.backend import make_oar_backend
from sfa_omf.testbed.registry import load_backend
from tests.test_config import minimal, problems_of


def test_defaults(tmp_path: Path) -> None:
    settings = load_config(minimal(tmp_path), environ={}).settings
    assert (settings.image_group, settings.provisioning_mode) == ("sfa-omf-images", "ondemand")


def test_a_bad_provisioning_mode_is_reported_with_the_choices(tmp_path: Path) -> None:
    path = minimal(tmp_path, "[sfa_omf]", "provisioning_mode = always")
    assert problems_of(path) == [
        f"{path}:5: [sfa_omf] provisioning_mode 'always': one of perjob, ondemand (perjob installs the image for every "
        "lease, ondemand only where the node runs another one)"
    ]


def test_the_backends_receive_the_mode(tmp_path: Path) -> None:
    settings = load_config(minimal(tmp_path, "[sfa_omf]", "provisioning_mode = perjob"), environ={}).settings
    database = Database(sqlite_url(str(tmp_path / "c.sqlite")))
    embedded = load_backend("embedded", settings, database)
    assert isinstance(embedded, EmbeddedTestbed) and embedded.provisioning_mode == "perjob"
    assert make_oar_backend(settings, database).provisioning_mode == "perjob"


def test_a_bad_instance_network_is_reported(tmp_path: Path) -> None:
    for bad in ("10.217.0.0/31", "fd00::/64", "nonsense"):
        path = minimal(tmp_path, "[sfa_omf]", f"instance_network = {bad}")
        assert problems_of(path) == [
            f"{path}:5: [sfa_omf] instance_network {bad!r} is not an IPv4 network such as 10.217.0.0/24 (the bridge's "
            "own address is its first host address)"
        ]


def test_containers_only_with_a_bridge(tmp_path: Path) -> None:
    database = Database(sqlite_url(str(tmp_path / "c.sqlite")))
    store = ImageStore(database, tmp_path / "images")
    assert instances_of(load_config(minimal(tmp_path), environ={}).settings, database, store) is None
    settings = load_config(
        minimal(tmp_path, "[sfa_omf]", "instance_bridge = br-x", "instance_network = 10.9.0.0/16"), environ={}
    ).settings
    instances = instances_of(settings, database, store)
    assert instances is not None and instances.host is not None
    assert (instances.host.bridge, str(instances.network), str(instances.host.lxc_path)) == (
        "br-x",
        "10.9.0.0/16",
        "/var/lib/lxc",
    )
