"""What the LXC hunt found, fixed: an image holding a link where the template has a directory (Debian's var/run ->
/run, tmp -> var/tmp) is laid out as the archive says and its lease starts; a container's files keep the image's modes
(/tmp's sticky bit, setuid programs, group-writable directories) and no image reaches a host directory through a
link laid over a place it laid, however spelled (tarfile set directories' owner and mode at the end, by name); one
container's launch failing in a way nothing foresaw fails that container only, saying what happened, on the
aggregate and on a node, and never leaves rows starting; a container that stops by itself (a poweroff inside it) is
shown stopped, saying so, and geni_start starts it again. LXC is real where the finding needs it."""

from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sfa_omf.am.containers import health, ssh_answering
from sfa_omf.am.states import Operational
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.records import BookingRequest, LeaseRecord
from sfa_omf.errors import GeniError
from sfa_omf.images import lxc, node_containers
from sfa_omf.images.instances import FAILED, RUNNING, STOPPED, InstanceRequest, Instances
from sfa_omf.images.lxc import LxcHost
from sfa_omf.images.node_plans import (
    ACTION_START,
    LeasePlan,
    LeasePlans,
    PlannedContainer,
    read_states,
    report_path_of,
)
from sfa_omf.images.plan_signing import PlanSigner
from sfa_omf.images.store import ImageStore
from tests.calendar.conftest import Calendar, at, node_urn
from tests.images.lxc_env import bridge, bridge_network, key_pair, needs_lxc, ssh
from tests.images.plans_env import node_script

SLICE = "urn:publicid:IDN+testbed+slice+exp"


def member(
    name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, target: str = "", data: bytes = b""
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.size = kind, mode, target, len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def archive(path: Path, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- laying an image over the template's root file system (no LXC needed) -----------------------------------------
def test_an_images_links_replace_the_directories_and_files_the_template_made_there(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    for directory in ("var/run", "tmp", "etc"):  # as the busybox template makes them
        (rootfs / directory).mkdir(parents=True)
    (rootfs / "var" / "run" / "syslogd.pid").write_text("12\n")
    (rootfs / "etc" / "mtab").write_text("the template's\n")
    image = archive(
        tmp_path / "image.tar",
        member("run", tarfile.DIRTYPE, 0o755),
        member("var/run", tarfile.SYMTYPE, target="/run"),  # absolute: the container's own /run, never the host's
        member("var/tmp", tarfile.DIRTYPE, 0o1777),
        member("tmp", tarfile.SYMTYPE, target="var/tmp"),  # relative: kept a link, not made a directory
        member("etc/mtab", tarfile.SYMTYPE, target="/proc/mounts"),  # over a file of the template
    )
    lxc._extract(str(image), rootfs, "c1")
    assert os.readlink(rootfs / "var" / "run") == "/run"
    assert os.readlink(rootfs / "tmp") == "var/tmp"
    assert os.readlink(rootfs / "etc" / "mtab") == "/proc/mounts"
    assert mode_of(rootfs / "var" / "tmp") == 0o1777


def test_a_file_of_the_image_replaces_the_templates_link_instead_of_writing_through_it(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin" / "busybox").write_bytes(b"busybox\n")
    os.symlink("busybox", rootfs / "bin" / "sh")  # what the template makes of every applet
    image = archive(tmp_path / "image.tar", member("bin/sh", mode=0o755, data=b"#!/bin/busybox ash\n"))
    lxc._extract(str(image), rootfs, "c1")
    assert not os.path.islink(rootfs / "bin" / "sh") and (rootfs / "bin" / "sh").read_bytes() == b"#!/bin/busybox ash\n"
    assert (rootfs / "bin" / "busybox").read_bytes() == b"busybox\n"  # every other applet still works


@pytest.mark.parametrize(
    "members",
    [
        # A directory of the archive (its owner and mode are set at the end, through its name) made a link after.
        [member("a", tarfile.DIRTYPE, 0o777), member("a", tarfile.SYMTYPE, target="/etc")],
        [member("a/b", tarfile.DIRTYPE, 0o777), member("a", tarfile.SYMTYPE, target="/etc")],
        [member("a/f", data=b"x"), member("a", tarfile.SYMTYPE, target="/etc")],
        [member(".", tarfile.SYMTYPE, target="/etc")],  # the root file system itself
    ],
    ids=["over a directory of the archive", "above one", "above a file of it", "the root"],
)
def test_a_link_where_the_archive_itself_laid_files_is_refused(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]]
) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "kept").write_text("the template's\n")
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o755)
    for info, _ in members:
        if info.issym():
            info.linkname = str(outside)
    with pytest.raises(GeniError, match="was refused"):
        lxc._extract(str(archive(tmp_path / "image.tar", *members)), rootfs, "c1")
    assert (rootfs / "kept").read_text() == "the template's\n" and mode_of(outside) == 0o755
    assert list(outside.iterdir()) == []


def test_unpacking_keeps_the_archives_modes_and_still_refuses_names_leading_out(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    laid = [
        member("tmp", tarfile.DIRTYPE, 0o1777),  # sticky: anyone may write, only owners remove
        member("var/mail", tarfile.DIRTYPE, 0o2775),  # setgid, group-writable
        member("shared", tarfile.DIRTYPE, 0o777),
        member("usr/bin/passwd", mode=0o4755, data=b"#!/bin/sh\n"),  # setuid
        member("srv/log", mode=0o664),
    ]
    lxc._extract(str(archive(tmp_path / "image.tar", *laid)), rootfs, "c1")
    assert {info.name: mode_of(rootfs / info.name) for info, _ in laid} == {info.name: info.mode for info, _ in laid}
    climbing = archive(tmp_path / "climbing.tar", member("../escaped", mode=0o4755, data=b"x"))
    with pytest.raises(GeniError, match="was refused"):
        lxc._extract(str(climbing), rootfs, "c1")
    assert not (tmp_path / "escaped").exists()


# -- an image reaching out of the root file system through a link laid over a place it went through ---------------
def beside_the_root(tmp_path: Path) -> tuple[Path, Path]:
    """The root file system and a host directory next to it (``outside``, with ``outside/x``), mode 0700, owned by
    4321:4321, which no image may change."""
    rootfs, outside = tmp_path / "rootfs", tmp_path / "outside"
    (rootfs / "usr" / "bin").mkdir(parents=True)
    (outside / "inner").mkdir(parents=True)
    (outside / "x").mkdir()
    for directory in (outside, outside / "x"):
        os.chmod(directory, 0o700)
        os.chown(directory, 4321, 4321)
    return rootfs, outside


def untouched(outside: Path) -> bool:
    return all(
        (mode_of(directory), os.lstat(directory).st_uid, os.lstat(directory).st_gid) == (0o700, 4321, 4321)
        for directory in (outside, outside / "x")
    )


@pytest.mark.parametrize(
    "members",
    [
        # The template's bin -> usr/bin (merged /usr): bin/x is the place of usr/bin/x, a directory of the archive.
        [member("usr/bin/x", tarfile.DIRTYPE, 0o4777), member("bin/x", tarfile.SYMTYPE, target="OUTSIDE")],
        # A link of the archive itself: alias/x is usr/x.
        [
            member("alias", tarfile.SYMTYPE, target="usr"),
            member("usr/x", tarfile.DIRTYPE, 0o777),
            member("alias/x", tarfile.SYMTYPE, target="OUTSIDE"),
        ],
        # Above a directory of the archive, spelled through the template's link.
        [member("usr/bin/x/y", tarfile.DIRTYPE, 0o777), member("bin/x", tarfile.SYMTYPE, target="OUTSIDE")],
        # The template's link the archive's names went through, replaced after.
        [member("bin/x", tarfile.DIRTYPE, 0o777), member("bin", tarfile.SYMTYPE, target="OUTSIDE")],
        # A hard link at a directory of the archive, spelled another way.
        [member("usr/bin/x", tarfile.DIRTYPE, 0o777), member("bin/x", tarfile.LNKTYPE, target="usr/bin/f")],
    ],
    ids=["template link", "archive link", "above, through the template link", "the link gone through", "hard link"],
)
def test_a_link_over_a_place_the_archive_laid_is_refused_however_it_is_spelled(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]]
) -> None:
    """tarfile sets archived directories' owner and mode at the end, by name through links: a link laid over a
    directory of the archive, named another way, made the image chmod and chown any host directory."""
    rootfs, outside = beside_the_root(tmp_path)
    os.symlink("usr/bin", rootfs / "bin")  # as Debian 12's template makes it
    (rootfs / "usr" / "bin" / "f").write_text("the template's\n")
    for info, _ in members:
        if info.linkname == "OUTSIDE":
            info.linkname = str(outside)
    refusal = ""
    try:
        lxc._extract(str(archive(tmp_path / "image.tar", *members)), rootfs, "c1")
    except GeniError as exc:
        refusal = str(exc)
    assert untouched(outside) and sorted(path.name for path in outside.iterdir()) == ["inner", "x"]
    assert "was refused" in refusal


def test_a_template_link_replaced_after_the_archives_names_went_through_it_changes_nothing_outside(
    tmp_path: Path,
) -> None:
    """a -> bin/.. is usr (through the template's bin -> usr/bin), a/x the directory usr/x; bin, a link of the
    template no member's own name went through, may be replaced (as Debian's var/run), here by a link to a host
    directory: a/x then named outside/x, whose owner and mode tarfile set at the end. They are set on usr/x."""
    rootfs, outside = beside_the_root(tmp_path)
    os.symlink("usr/bin", rootfs / "bin")
    image = archive(
        tmp_path / "image.tar",
        member("usr/bin/d", tarfile.DIRTYPE, 0o755),
        member("a", tarfile.SYMTYPE, target="bin/.."),
        member("a/x", tarfile.DIRTYPE, 0o4777),
        member("bin", tarfile.SYMTYPE, target=str(outside / "inner")),
    )
    lxc._extract(str(image), rootfs, "c1")
    assert untouched(outside)
    assert mode_of(rootfs / "usr" / "x") == 0o4777 and os.readlink(rootfs / "bin") == str(outside / "inner")


@pytest.mark.parametrize(
    "members",
    [
        # A hard link to a directory: tarfile copies the archive's member instead (here a link climbing out).
        [member("a/b/s", tarfile.SYMTYPE, target="../.."), member("h", tarfile.LNKTYPE, target="a/b/s")],
        [member("d", tarfile.DIRTYPE, 0o755), member("h", tarfile.LNKTYPE, target="d")],
        # '..' after a link: bin/../f is usr/f, not f.
        [member("usr/f", data=b"the archive's\n"), member("bin/../f", tarfile.SYMTYPE, target="/etc/passwd")],
        # A file where the archive laid a link its later names went through.
        [
            member("alias", tarfile.SYMTYPE, target="usr"),
            member("alias/x", tarfile.DIRTYPE, 0o755),
            member("alias", data=b"a file\n"),
        ],
        # Links Linux cannot make (a target, a name longer than it allows): tarfile then lays another member of the
        # archive in their place, unfiltered, from link to link (RecursionError, found by the second review).
        [
            member("victim", tarfile.SYMTYPE, target="a/" * 2100 + "x"),
            member("a/" * 2100 + "x", tarfile.LNKTYPE, target="victim"),
        ],
        [member("h", data=b"h\n"), member("s", tarfile.SYMTYPE, target="x" * 5000)],
        [member("h", data=b"h\n"), member("sub/" + "x" * 300, tarfile.LNKTYPE, target="h")],
    ],
    ids=[
        "hard link to a link to a directory",
        "hard link to a directory",
        "dot-dot after a link",
        "file over link",
        "links too long, in a loop",
        "link target too long",
        "name too long",
    ],
)
def test_members_that_would_land_elsewhere_than_checked_or_replace_the_archives_own_are_refused(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]]
) -> None:
    rootfs, _ = beside_the_root(tmp_path)
    os.symlink("usr/bin", rootfs / "bin")
    with pytest.raises(GeniError, match="was refused"):
        lxc._extract(str(archive(tmp_path / "image.tar", *members)), rootfs, "c1")
    assert not os.path.islink(rootfs / "h")


def test_directories_owner_and_mode_are_never_set_through_a_link(tmp_path: Path) -> None:
    """The last pass opens each directory laid from the root without following links: one replaced by a link since
    (whatever let it) refuses the image, the link's target untouched."""
    rootfs, outside = beside_the_root(tmp_path)
    image_filter = lxc._ImageFilter(str(rootfs))
    laid = image_filter(member("d", tarfile.DIRTYPE, 0o777)[0], str(rootfs))
    (rootfs / "d").mkdir()
    image_filter.set_directory_attributes()
    assert mode_of(rootfs / "d") == laid.mode == 0o777
    (rootfs / "d").rmdir()
    os.symlink(outside / "x", rootfs / "d")
    with pytest.raises(tarfile.FilterError, match="replaced before its mode was set"):
        image_filter.set_directory_attributes()
    assert untouched(outside)


# -- a start whose launch fails in a way nothing foresaw (no LXC command runs) --------------------------------------
def provisioned(calendar: Calendar, instances: Instances, count: int, image: str = "") -> LeaseRecord:
    (lease,) = calendar.bookings.book(SLICE, at(100), [BookingRequest(node_urn("n1"), at(1), at(2))]).leases
    lease = calendar.bookings.mark_provisioned(lease.id)
    instances.plan(lease.id, [InstanceRequest(lease.slivers[0].urn, node_urn("n1"), image, count)], calendar.now)
    return lease


def test_a_start_that_raises_leaves_no_row_starting(
    calendar: Calendar, database: Database, store: ImageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    instances = Instances(database, LxcHost("sfaomf-nobridge", lxc_path=str(tmp_path / "lxc")), "10.0.9.0/24", store)
    lease = provisioned(calendar, instances, 2)

    def broken(self: Instances, spec: object, image: str) -> tuple[str, str, str]:
        raise RuntimeError("a bug in the launch")

    monkeypatch.setattr(Instances, "_launch", broken)
    with pytest.raises(RuntimeError):
        instances.start_lease(lease.id, [], at(1.1))
    rows = instances.of_lease(lease.id)
    assert {row.state for row in rows} == {FAILED}  # not starting until the stale-start recovery, 600 s later
    assert all("unexpected RuntimeError: a bug in the launch" in row.error for row in rows)
    assert all("geni_start tries again" in row.error for row in rows)


# -- real LXC ----------------------------------------------------------------------------------------------------
@pytest.fixture
def host(tmp_path: Path) -> Iterator[LxcHost]:
    lxc_host = LxcHost(bridge(), lxc_path=str(tmp_path / "lxc"))
    yield lxc_host
    for record in lxc_host.instances():
        lxc_host.destroy(record.name)


def on_the_bridge(database: Database, host: LxcHost, store: ImageStore) -> Instances:
    return Instances(database, host, str(bridge_network().network), store, ssh_timeout_s=30)


@needs_lxc
def test_a_lease_of_an_image_with_var_run_a_link_to_run_starts_with_the_images_modes(
    calendar: Calendar, database: Database, store: ImageStore, host: LxcHost, tmp_path: Path
) -> None:
    """Debian's layout (var/run -> /run), as a save of such a container makes it: extraction crashed (RecursionError)
    and the lease's rows stayed starting, its Status geni_configuring for ever."""
    key, public = key_pair(tmp_path, "alice")
    image = archive(
        tmp_path / "debianish.tar",
        member("run", tarfile.DIRTYPE, 0o755),
        member("var/run", tarfile.SYMTYPE, target="/run"),
        member("tmp", tarfile.DIRTYPE, 0o1777),
        member("usr/bin/tool", mode=0o4755, data=b"#!/bin/sh\n"),
    )
    store.add(image, "debianish", "urn:publicid:IDN+testbed+user+alice", calendar.now)
    instances = on_the_bridge(database, host, store)
    lease = provisioned(calendar, instances, 2, "debianish")
    started, _ = instances.tick(at(1.1), lambda _slice: [public])
    rows = instances.of_lease(lease.id)
    assert sorted(started) == [row.name for row in rows] and {row.state for row in rows} == {RUNNING}, rows
    rootfs = host.lxc_path / rows[0].name / "rootfs"
    assert os.readlink(rootfs / "var" / "run") == "/run"
    assert (mode_of(rootfs / "tmp"), mode_of(rootfs / "usr" / "bin" / "tool")) == (0o1777, 0o4755)
    login = ssh(key, rows[0].host, "ls -ld /tmp; readlink /var/run")
    assert login.returncode == 0, login.stderr
    assert login.stdout.split()[0] == "drwxrwxrwt" and login.stdout.splitlines()[-1] == "/run"


@needs_lxc
def test_one_launch_failing_unexpectedly_fails_that_container_only_and_geni_start_retries_it(
    calendar: Calendar,
    database: Database,
    store: ImageStore,
    host: LxcHost,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, public = key_pair(tmp_path, "alice")
    store.add(archive(tmp_path / "tools.tar", member("etc/sfa-image", data=b"tools\n")), "tools", "root", calendar.now)
    instances = on_the_bridge(database, host, store)
    lease = provisioned(calendar, instances, 2, "tools")
    first = host.name_for(lease.id, 0)
    extract: Callable[[str, Path, str], None] = lxc._extract

    def failing_for_the_first(image: str, rootfs: Path, name: str) -> None:
        if name == first:
            raise RuntimeError("maximum recursion depth exceeded")  # what tarfile raised on a var/run link
        extract(image, rootfs, name)

    monkeypatch.setattr(lxc, "_extract", failing_for_the_first)
    started, _ = instances.tick(at(1.1), lambda _slice: [public])
    broken, fine = instances.of_lease(lease.id)
    assert (broken.name, broken.state, fine.state, started) == (first, FAILED, RUNNING, [fine.name])
    assert f"container {first} failed: unexpected RuntimeError: maximum recursion depth exceeded" in broken.error
    said = health(broken, lease, at(1.2), set())
    assert (said.operational_state, said.error) == (Operational.FAILED, broken.error)
    assert [record.name for record in host.instances()] == [fine.name]  # the failed one left nothing

    monkeypatch.undo()
    rows = instances.start_lease(lease.id, [public], at(1.3))  # geni_start
    assert {row.state for row in rows} == {RUNNING}, rows


@needs_lxc
def test_a_container_that_stops_by_itself_is_shown_stopped_and_geni_start_starts_it_again(
    calendar: Calendar, database: Database, store: ImageStore, host: LxcHost, tmp_path: Path
) -> None:
    key, public = key_pair(tmp_path, "alice")
    instances = on_the_bridge(database, host, store)
    lease = provisioned(calendar, instances, 1)
    instances.tick(at(1.1), lambda _slice: [public])
    (row,) = instances.of_lease(lease.id)
    assert row.state == RUNNING and ssh(key, row.host, "touch /root/kept").returncode == 0

    def power_off() -> None:
        ssh(key, row.host, "poweroff -f")  # the connection drops with the container
        deadline = time.monotonic() + 60
        while host.state(row.name) != "STOPPED" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert host.state(row.name) == "STOPPED"

    # geni_start right after, the row still saying running: it starts the container (it did nothing).
    power_off()
    (row,) = instances.start_lease(lease.id, [public], at(1.2))
    assert (row.state, host.state(row.name)) == (RUNNING, "RUNNING")
    # The round finds it stopped: recorded so, and Status says it, and what to do.
    power_off()
    instances.tick(at(1.3), lambda _slice: [public])
    (row,) = instances.of_lease(lease.id)
    assert row.state == STOPPED and f"container {row.name} stopped by itself" in row.error
    said = health(row, lease, at(1.3), ssh_answering([row]))
    assert said.operational_state == Operational.NOTREADY and "geni_start starts it again" in said.error
    (row,) = instances.start_lease(lease.id, [public], at(1.4))  # geni_start
    assert (row.state, row.error, host.state(row.name)) == (RUNNING, "", "RUNNING")
    assert ssh(key, row.host, "ls /root/kept").returncode == 0  # its disk as it was left


# -- the node side ------------------------------------------------------------------------------------------------
def test_the_node_command_fails_a_container_whose_launch_raises_unexpectedly_and_reports_it(
    plan_signer: PlanSigner, tmp_path: Path
) -> None:
    """No LXC command runs: the launch itself raises (a bug, an image tarfile cannot lay out)."""
    names = ("sfaomf-0f94abcf-0", "sfaomf-0f94abcf-1")
    plan = LeasePlan(
        lease_id="0f94abcf",
        user="alice",
        bridge="sfaomf-nobridge",
        lxc_path=str(tmp_path / "lxc"),
        ssh_timeout_s=30.0,
        keys=(),
        containers=tuple(PlannedContainer(name, f"10.0.9.{n + 2}/24", "") for n, name in enumerate(names)),
        slot_start_s=int(time.time()) - 3600,
        slot_end_s=int(time.time()) + 86400,
        nodes=("127.0.0.1",),
    )
    path = LeasePlans(tmp_path / "leases", plan_signer).write(plan)
    setup = "lxc.LxcHost.launch = lambda self, spec, *a, **k: (_ for _ in ()).throw(RuntimeError('a bug'))"
    script = node_script(tmp_path / "runs", node_containers.SIGNERS_FILE, setup)
    command = subprocess.Popen(
        [sys.executable, "-c", script, "run", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        lines = [command.stdout.readline().strip() for _ in names] if command.stdout else []  # once all are tried
        reported = read_states(report_path_of(path, "127.0.0.1").read_text())
        command.send_signal(signal.SIGTERM)
        _, stderr = command.communicate(timeout=60)
    finally:
        if command.poll() is None:
            command.kill()
            command.wait()
    said = "could not be launched: unexpected RuntimeError: a bug"
    for name, line in zip(names, lines, strict=True):
        assert line.startswith(f"container {name}: failed (container {name} {said}"), (line, stderr)
        assert reported[name][0] == FAILED and f"container {name} {said}" in reported[name][1]
    assert command.returncode == 1 and "Traceback" in stderr  # the details, for the operator


@needs_lxc
def test_the_node_command_reports_a_container_that_stopped_by_itself_and_starts_it_on_geni_start(
    plan_signer: PlanSigner, tmp_path: Path
) -> None:
    key, public = key_pair(tmp_path, "alice")
    name = "sfaomf-0f94abd0-0"
    here = f"{bridge_network().network.network_address + 233}"
    plan = LeasePlan(
        lease_id="0f94abd0",
        user="alice",
        bridge=bridge(),
        lxc_path=str(tmp_path / "lxc"),
        ssh_timeout_s=30.0,
        keys=(public,),
        containers=(PlannedContainer(name, f"{here}/{bridge_network().network.prefixlen}", ""),),
        slot_start_s=int(time.time()) - 3600,
        slot_end_s=int(time.time()) + 86400,
        nodes=("127.0.0.1",),
    )
    plans = LeasePlans(tmp_path / "leases", plan_signer)
    path = plans.write(plan)
    report = report_path_of(path, "127.0.0.1")
    node = LxcHost(bridge(), lxc_path=plan.lxc_path)
    script = node_script(tmp_path / "runs", node_containers.SIGNERS_FILE)
    command = subprocess.Popen([sys.executable, "-c", script, "run", str(path)], stdout=subprocess.PIPE, text=True)

    def reported_when(wanted: Callable[[tuple[str, str]], bool]) -> tuple[str, str]:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if report.exists() and wanted(state := read_states(report.read_text())[name]):
                return state
            time.sleep(0.2)
        return read_states(report.read_text())[name]

    try:
        line = command.stdout.readline() if command.stdout else ""
        assert line.strip() == f"container {name}: running"
        ssh(key, here, "poweroff -f")
        state, error = reported_when(lambda said: said[0] != "running")
        assert (state, node.state(name)) == (STOPPED, "STOPPED")
        assert f"container {name} stopped by itself" in error and "geni_start starts it again" in error
        plans.hand_action(plan.lease_id, plan.plan_id, ACTION_START)  # geni_start, as the aggregate hands it
        assert reported_when(lambda said: said[0] != STOPPED) == (RUNNING, "")
        assert ssh(key, here, "true").returncode == 0
        command.send_signal(signal.SIGTERM)
        assert command.wait(timeout=60) == 0
    finally:
        if command.poll() is None:
            command.kill()
            command.wait()
        for record in node.instances():
            node.destroy(record.name)
