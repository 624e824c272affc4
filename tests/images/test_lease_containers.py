"""Containers tied to a lease, for real (LXC on the project's bridge, the AM API over TLS on loopback): started at
the slot's start with the slice users' keys and the repository image, listed as slivers with their logins, stopped,
started and saved by PerformOperationalAction, and gone after the slot, after Delete, and after a server restart;
a container that cannot start reads geni_failed with LXC's reason."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from sfa_omf.cli import main
from sfa_omf.errors import GeniCode, GeniError
from sfa_omf.images.instances import DESTROYED, PLANNED, RUNNING, STARTING, STOPPED
from sfa_omf.images.lxc import MADE_MARK, InstanceSpec
from tests.conftest import DemoPki
from tests.images.container_site import GENI_V3, IMAGE_TEXT, Site, cred, make_site, ok, request, site_on_the_bridge
from tests.images.lxc_env import address, bridge, bridge_network, key_pair, needs_lxc, ssh
from tests.tls_harness import Listener

pytestmark = needs_lxc
GENI = "{http://www.geni.net/resources/rspec/3}"
ALICE = "urn:publicid:IDN+testbed+user+alice"
ONE = '<sliver_type name="lxc"><disk_image name="tools"/></sliver_type>'


@pytest.fixture
def site(listener: Listener, pki: DemoPki, tmp_path: Path) -> Iterator[Site]:
    yield from site_on_the_bridge(listener, pki, tmp_path)  # no container outlives the test


def users(public_key: str, pki: DemoPki) -> dict[str, Any]:
    return {"geni_users": [{"urn": ALICE, "keys": [public_key]}]}


def allocate_and_provision(site: Site, pki: DemoPki, options: dict[str, Any], sliver_type: str | None = None) -> Any:
    client = site.alice(pki)
    slice_cred = [cred(pki.users["alice"].slice_cred)]
    ok(client.Allocate(pki.slice_urn, slice_cred, request() if sliver_type is None else request(sliver_type), options))
    return ok(client.Provision([pki.slice_urn], slice_cred, {"geni_rspec_version": GENI_V3, **options}))


def containers_of(slivers: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """container sliver URN -> (operational state, error)."""
    return {
        s["geni_sliver_urn"]: (s["geni_operational_status"], s["geni_error"])
        for s in slivers
        if "-c" in s["geni_sliver_urn"].rsplit("+", 1)[-1]
    }


def logins(manifest: str) -> dict[str, tuple[str, str, str, str]]:
    """client_id -> (sliver type, image, login host, login user) of each container node in a manifest."""
    found = {}
    for node in etree.fromstring(manifest.encode()).iter(f"{GENI}node"):
        kind = node.find(f"{GENI}sliver_type")
        login = node.find(f"{GENI}services/{GENI}login")
        if kind is not None and login is not None and login.get("username") == "root":
            image = kind.find(f"{GENI}disk_image")
            found[node.get("client_id", "")] = (
                kind.get("name", ""), image.get("name", "") if image is not None else "", login.get("hostname", ""),
                login.get("port", ""),
            )  # fmt: skip
    return found


def test_containers_run_for_the_lease_answer_ssh_with_the_users_key_and_are_gone_after_the_slot(
    site: Site, pki: DemoPki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, public = key_pair(tmp_path, "alice")
    other_key, _ = key_pair(tmp_path, "mallory")
    client = site.alice(pki)
    slice_cred = [cred(pki.users["alice"].slice_cred)]
    provisioned = allocate_and_provision(site, pki, users(public, pki))
    assert set(containers_of(provisioned["geni_slivers"]).values()) == {("geni_configuring", "")}  # the slot began

    started, destroyed = site.aggregate.run_instances()  # the server's task at the slot's start
    assert len(started) == 2 and destroyed == []
    status = ok(client.Status([pki.slice_urn], slice_cred, {}))
    assert set(containers_of(status["geni_slivers"]).values()) == {("geni_ready", "")}
    described = ok(client.Describe([pki.slice_urn], slice_cred, {"geni_rspec_version": GENI_V3}))
    seen = logins(described["geni_rspec"])
    assert sorted(seen) == ["n1-c0", "n1-c1"]
    hosts = [host for _, _, host, _ in seen.values()]
    assert {(kind, image, port) for kind, image, _, port in seen.values()} == {("lxc", "tools", "22")}
    assert len(set(hosts)) == 2 and all(ipaddress.ip_address(host) in bridge_network().network for host in hosts)
    for host in hosts:
        login = ssh(key, host, "cat /etc/sfa-image")
        assert (login.returncode, login.stdout) == (0, IMAGE_TEXT), login.stderr  # the image's files are there
        assert ssh(other_key, host, "true").returncode != 0  # somebody else's key is refused

    capsys.readouterr()
    assert main(["init", str(tmp_path / "tb")]) == 0
    capsys.readouterr()
    # What an operator sees (the test's calendar, through the configuration's options).
    config = tmp_path / "tb" / "sfa-omf.conf"
    lines = config.read_text().splitlines()
    config.write_text(
        "\n".join(f"database_url = {site.database.url}" if line.startswith("database_url") else line for line in lines)
    )
    assert main(["instance", "list", "--config", str(config), "--lxc-path", str(site.host.lxc_path)]) == 0
    listed = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert {(row[2], row[3], row[4]) for row in listed} == {("urn:publicid:IDN+testbed+node+node1", RUNNING, "RUNNING")}
    assert sorted(row[5].split("/")[0] for row in listed) == sorted(hosts)

    site.clock.advance(timedelta(hours=2))  # past the slot's end
    assert site.aggregate.retire_ended() == 1
    assert site.host.instances() == []
    assert {i.state for i in site.instances.listing(live_only=False)} == {DESTROYED}
    assert all(ssh(key, host, "true").returncode != 0 for host in hosts)


def test_stop_start_and_save_act_on_the_containers(site: Site, pki: DemoPki, tmp_path: Path) -> None:
    key, public = key_pair(tmp_path, "alice")
    client = site.alice(pki)
    slice_cred = [cred(pki.users["alice"].slice_cred)]
    allocate_and_provision(
        site, pki, users(public, pki), '<sliver_type name="lxc"><disk_image name="tools"/></sliver_type>'
    )
    site.aggregate.run_instances()
    (container,) = site.instances.listing()
    secrets = "echo s > /etc/shadow && echo k > /root/.ssh/id_ed25519 && ls /etc/dropbear/dropbear_*_host_key"
    assert ssh(key, container.host, f"echo changed > /etc/sfa-saved && {secrets}").returncode == 0
    nobody, _ = key_pair(tmp_path, "nobody")
    refused = subprocess.run(
        ["ssh", "-v", "-i", str(nobody), "-o", "StrictHostKeyChecking=no", "-o",
         "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", f"root@{container.host}", "true"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert "Authentications that can continue: publickey\n" in refused.stderr  # never a password

    stopped = ok(client.PerformOperationalAction([pki.slice_urn], slice_cred, "geni_stop", {}))
    assert containers_of(stopped) == {container.urn: ("geni_notready", "")}
    assert site.host.state(container.name) == "STOPPED" and site.instances.listing()[0].state == STOPPED
    started = ok(client.PerformOperationalAction([pki.slice_urn], slice_cred, "geni_start", {}))
    assert containers_of(started) == {container.urn: ("geni_ready", "")}
    assert ssh(key, container.host, "cat /etc/sfa-saved").stdout == "changed\n"  # its disk was kept

    # Saving: the label is checked first; a refused save writes nothing.
    for options, code in (
        ({}, GeniCode.BADARGS),
        ({"sfa_omf_label": "bad label!"}, GeniCode.BADARGS),
        ({"sfa_omf_label": "tools"}, GeniCode.ALREADYEXISTS),
        ({"sfa_omf_label": "mine", "sfa_omf_instance": "nosuch"}, GeniCode.BADARGS),
        ({"sfa_omf_label": 17}, GeniCode.BADARGS),
    ):
        refused = client.PerformOperationalAction([pki.slice_urn], slice_cred, "sfa_omf_save_image", options)
        assert refused["code"]["geni_code"] == code, (options, refused)
    assert site.store.labels() == ["tools"] and sorted(p.name for p in site.store.directory.iterdir()) == sorted(
        Path(site.store.get("tools").path).name
        for _ in [0]  # type: ignore[union-attr]
    )
    # A container named by its own URN: Status answers for its node's sliver and its containers; the save takes it.
    named = ok(client.Status([container.urn], slice_cred, {}))
    assert [s["geni_sliver_urn"] for s in named["geni_slivers"]] == [container.sliver_urn, container.urn]
    ok(client.PerformOperationalAction([container.urn], slice_cred, "sfa_omf_save_image", {"sfa_omf_label": "mine"}))
    saved = site.store.get("mine")
    assert saved is not None and saved.added_by == ALICE and saved.private
    with tarfile.open(saved.path) as tar:
        archived = {os.path.normpath(name) for name in tar.getnames()}
    assert {"etc/sfa-saved", "etc/sfa-image", "etc", "root"} <= archived
    assert [name for name in archived if name.startswith(("etc/shadow", "etc/dropbear", "root/.ssh"))] == []
    # Private: advertised to nobody, and refused to anybody but its owner until an operator publishes it.
    advertised = ok(client.ListResources([cred(pki.users["alice"].user_cred)], {"geni_rspec_version": GENI_V3}))
    assert '<disk_image name="tools"' in advertised and 'name="mine"' not in advertised

    # The saved image starts the next lease's containers with the change in it, and nobody's keys.
    ok(client.Delete([pki.slice_urn], slice_cred, {}))
    assert site.host.instances() == []
    bob = site.client(pki, "bob")
    bob_cred = [cred(pki.users["bob"].slice_cred)]
    mine = request('<sliver_type name="lxc"><disk_image name="mine"/></sliver_type>')
    refused = bob.Allocate(pki.slice_urn, bob_cred, mine, {})
    assert refused["code"]["geni_code"] == GeniCode.BADARGS
    assert "image 'mine' is private to the user who saved it" in refused["output"]
    assert "sfa-omf image publish mine" in refused["output"] and site.instances.listing() == []
    allocate_and_provision(
        site, pki, users(public, pki), '<sliver_type name="lxc"><disk_image name="mine"/></sliver_type>'
    )
    site.aggregate.run_instances()
    (again,) = site.instances.listing()
    assert ssh(key, again.host, "cat /etc/sfa-saved /etc/sfa-image").stdout == "changed\n" + IMAGE_TEXT
    assert ssh(key, again.host, "cat /root/.ssh/id_ed25519 /etc/shadow").stdout == ""  # none of the secrets came

    ok(client.Delete([pki.slice_urn], slice_cred, {}))
    site.store.publish("mine")  # what sfa-omf image publish does: now everybody's
    ok(bob.Allocate(pki.slice_urn, bob_cred, mine, {}))
    advertised = ok(client.ListResources([cred(pki.users["alice"].user_cred)], {"geni_rspec_version": GENI_V3}))
    assert '<disk_image name="mine"' in advertised


def test_a_restarted_server_still_destroys_the_containers_and_any_it_does_not_know(
    site: Site, pki: DemoPki, tmp_path: Path
) -> None:
    _, public = key_pair(tmp_path, "alice")
    allocate_and_provision(site, pki, users(public, pki))
    site.aggregate.run_instances()
    assert len(site.host.instances()) == 2
    stray = site.host.name_for("00000000-0000-0000-0000-00000000dead", 0)  # left by a crash: no row names it
    site.host.create(InstanceSpec(stray, address(250), (public,)))

    after_restart = site.restarted()  # nothing in memory: only the calendar's rows
    site.clock.advance(timedelta(hours=2))
    started, destroyed = after_restart.run_instances()  # before any retire_ended: the rows' lease has ended
    assert started == [] and len(destroyed) == 3 and stray in destroyed
    assert site.host.instances() == []


def test_delete_destroys_the_containers_at_once(site: Site, pki: DemoPki, tmp_path: Path) -> None:
    _, public = key_pair(tmp_path, "alice")
    allocate_and_provision(site, pki, users(public, pki))
    site.aggregate.run_instances()
    assert len(site.host.instances()) == 2
    ok(site.alice(pki).Delete([pki.slice_urn], [cred(pki.users["alice"].slice_cred)], {}))
    assert site.host.instances() == []
    assert {i.state for i in site.instances.listing(live_only=False)} == {DESTROYED}


def test_a_container_that_cannot_start_reads_geni_failed_with_the_reason(
    listener: Listener, pki: DemoPki, tmp_path: Path
) -> None:
    bridge()
    broken = make_site(listener, pki, tmp_path, "sfaomf-nobridge", str(bridge_network().network))
    _, public = key_pair(tmp_path, "alice")
    allocate_and_provision(broken, pki, users(public, pki), '<sliver_type name="lxc"/>')
    started, _ = broken.aggregate.run_instances()
    assert started == []
    status = ok(broken.alice(pki).Status([pki.slice_urn], [cred(pki.users["alice"].slice_cred)], {}))
    states = containers_of(status["geni_slivers"])
    ((state, error),) = states.values()
    assert state == "geni_failed"
    assert 'bridge "sfaomf-nobridge", bridge interface doesn\'t exist' in error  # LXC's own words
    node = next(s for s in status["geni_slivers"] if s["geni_sliver_urn"] not in states)
    assert node["geni_operational_status"] == "geni_failed" and "could not start" in node["geni_error"]
    assert broken.host.instances() == []  # a failed launch leaves nothing


def test_two_starts_at_once_launch_each_container_once_and_a_delete_meanwhile_wins(
    site: Site, pki: DemoPki, tmp_path: Path
) -> None:
    key, public = key_pair(tmp_path, "alice")
    allocate_and_provision(site, pki, users(public, pki), ONE)
    (planned,) = site.instances.listing()
    # The leader's round and a geni_start at the same moment: one launches, the other leaves the row alone.
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda _: site.instances.start_lease(planned.lease_id, [public], site.clock()), range(2)))
    (running,) = site.instances.listing()
    assert (running.state, running.error, site.host.state(running.name)) == (RUNNING, "", "RUNNING")
    assert ssh(key, running.host, "true").returncode == 0  # nobody destroyed it

    # A Delete while a start is under way: the start finishing later does not bring the row (or a container) back.
    ok(site.alice(pki).Delete([pki.slice_urn], [cred(pki.users["alice"].slice_cred)], {}))
    allocate_and_provision(site, pki, users(public, pki), ONE)
    (again,) = site.instances.listing()
    with ThreadPoolExecutor(max_workers=1) as pool:
        starting = pool.submit(site.instances.start_lease, again.lease_id, [public], site.clock())
        while not site.instances.of_lease(again.lease_id)[0].address:  # claimed and addressed: launching now
            time.sleep(0.05)
        deadline = time.monotonic() + 60  # a bound against a hang only: the machine may be loaded
        while True:  # as the server's rounds would: LXC may refuse while the container is being made
            try:
                site.instances.destroy_lease(again.lease_id, site.clock())
                break
            except GeniError as refused:
                if time.monotonic() > deadline:
                    pytest.fail(f"the lease's containers could never be destroyed: {refused.message}")
                time.sleep(0.5)
        starting.result()
    (row,) = site.instances.of_lease(again.lease_id)
    assert (row.state, row.address) == (DESTROYED, "")
    assert site.host.instances() == []


def test_containers_a_dead_start_left_starting_are_started_by_a_later_round(
    site: Site, pki: DemoPki, tmp_path: Path
) -> None:
    key, public = key_pair(tmp_path, "alice")
    allocate_and_provision(site, pki, users(public, pki))
    planned = site.instances.listing()
    assert [row.state for row in planned] == [PLANNED, PLANNED]
    # What a server killed in the middle of start_lease leaves: both rows claimed and addressed, the first
    # container half made (lxc-create done, never configured), the second made whole but never started.
    died_at = site.clock() - timedelta(minutes=5)
    assert site.instances._claim(planned, died_at) == {row.name for row in planned}
    half, whole = site.instances._assign_addresses(planned, died_at)
    site.host.create(InstanceSpec(half.name, half.address, ()))
    (site.host.lxc_path / half.name / MADE_MARK).unlink()
    site.host.create(InstanceSpec(whole.name, whole.address, (public,)))
    (site.host.lxc_path / whole.name / "rootfs" / "root" / "kept").write_text("the disk is kept\n")

    assert site.aggregate.run_instances() == ([], [])  # renewed 5 minutes ago: it may still be starting somewhere
    assert {row.state for row in site.instances.listing()} == {STARTING}

    site.clock.advance(timedelta(minutes=10))  # a live start renews its claim every minute: its process is gone
    started, destroyed = site.aggregate.run_instances()
    assert sorted(started) == sorted(row.name for row in planned) and destroyed == []
    rows = {row.name: row for row in site.instances.listing()}
    assert {(row.state, row.error) for row in rows.values()} == {(RUNNING, "")}
    for row in rows.values():
        assert ssh(key, row.host, "true").returncode == 0, row.name  # the half-made one was made again, with keys
    kept = ssh(key, rows[whole.name].host, "cat /root/kept")
    assert (kept.returncode, kept.stdout) == (0, "the disk is kept\n")  # the whole one was started, not remade


def test_a_stopped_container_whose_start_failed_starts_as_it_is_on_geni_start(
    site: Site, pki: DemoPki, tmp_path: Path
) -> None:
    key, public = key_pair(tmp_path, "alice")
    allocate_and_provision(site, pki, users(public, pki), ONE)
    site.aggregate.run_instances()
    (running,) = site.instances.listing()
    ssh(key, running.host, "echo mine > /root/kept")
    site.instances.stop_lease(running.lease_id, site.clock())
    # Its start fails (LXC refuses: its configuration is broken for a moment), the row reads failed...
    config = site.host.lxc_path / running.name / "config"
    good = config.read_text()
    config.write_text(good + "lxc.net.0.link = sfaomf-nobridge\n")
    (failed,) = site.instances.start_lease(running.lease_id, [public], site.clock())
    assert failed.state == "failed" and "could not start" in failed.error
    # ...and once LXC can, geni_start starts the same container (it was never made again from the image).
    config.write_text(good)
    (again,) = site.instances.start_lease(running.lease_id, [public], site.clock())
    assert (again.state, again.error) == (RUNNING, "")
    kept = ssh(key, again.host, "cat /root/kept")
    assert (kept.returncode, kept.stdout) == (0, "mine\n")
