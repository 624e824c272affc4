"""Real LXC containers (scripts/lxc.sh installs LXC and makes the project's bridge; CI sets SFA_OMF_TEST_LXC_BRIDGE):
a container launched with a user's key answers SSH with that key and not with another, is listed with its lease,
and is gone after destroy; a container that cannot start is refused with LXC's reason and leaves nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sfa_omf.cli import main
from sfa_omf.errors import GeniCode, GeniError
from sfa_omf.images.lxc import InstanceSpec, LxcHost
from tests.images.lxc_env import address, bridge, key_pair, needs_lxc, own_lxc_host, ssh

LEASE = "0f4b1d2e-aaaa-bbbb-cccc-000000000017"

pytestmark = needs_lxc


@pytest.fixture
def host(tmp_path: Path) -> Iterator[LxcHost]:
    yield from own_lxc_host(tmp_path)  # containers of this test only, none outliving it


def test_a_container_answers_ssh_with_the_users_key_and_is_gone_after(
    host: LxcHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", str(tmp_path / "tb")]) == 0  # a configuration (and its calendar) for instance list
    where = address(117)
    here = where.split("/")[0]
    alice_key, alice_public = key_pair(tmp_path, "alice")
    mallory_key, _ = key_pair(tmp_path, "mallory")
    name = host.name_for(LEASE, 0)
    record = host.launch(InstanceSpec(name, where, (alice_public,)))
    assert (record.state, record.lease_id) == ("RUNNING", LEASE)

    login = ssh(alice_key, here, "hostname")
    assert login.returncode == 0, login.stderr
    assert login.stdout.strip() == name
    refused = ssh(mallory_key, here, "hostname")
    assert refused.returncode != 0 and "Permission denied" in refused.stderr

    assert [(r.name, r.state, r.address, r.lease_id) for r in host.instances()] == [(name, "RUNNING", where, LEASE)]
    capsys.readouterr()
    config = str(tmp_path / "tb" / "sfa-omf.conf")
    assert main(["instance", "list", "--config", config, "--lxc-path", str(host.lxc_path)]) == 0  # an operator's view
    # No lease of the calendar has it (launched by hand here): listed as unrecorded, with what LXC says.
    assert capsys.readouterr().out.splitlines()[1].split() == [name, LEASE, "-", "unrecorded", "RUNNING", where]

    assert host.destroy_lease(LEASE) == [name]
    assert host.instances() == [] and host.state(name) == ""
    assert not (Path(host.lxc_path) / name).exists()
    assert ssh(alice_key, here, "true").returncode != 0  # nothing answers there any more


def test_a_container_that_cannot_start_is_refused_with_the_reason_and_leaves_nothing(tmp_path: Path) -> None:
    bridge()
    host = LxcHost("sfaomf-nobridge", lxc_path=str(tmp_path / "lxc"))  # a bridge that does not exist
    _, public = key_pair(tmp_path, "alice")
    with pytest.raises(GeniError) as failed:
        host.launch(InstanceSpec(host.name_for(LEASE, 1), address(118), (public,)))
    assert failed.value.code == GeniCode.ERROR
    assert f"container {host.name_for(LEASE, 1)} could not start" in failed.value.message
    assert 'bridge "sfaomf-nobridge", bridge interface doesn\'t exist' in failed.value.message  # LXC's own words
    assert host.instances() == []
