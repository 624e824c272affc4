"""The end of a lease on a node never deletes a home other hosts may share.

Before: an account the agent made went with ``userdel --remove`` whatever its home was on. Where the nodes mount
/home from a file server, the slice's login has one home on all of them, and the first node whose lease ended deleted
it, with the files of the slice's leases still running on the other nodes. Now a home on a network, cluster or FUSE
file system is kept (``userdel`` without ``--remove``) and the agent logs it; a local home still goes.

Real accounts (useradd; the tests run as root; tests/agents/conftest.py's ``login``). The shared home is a real FUSE
mount made by ``bindfs`` (Debian's), which reports the type ``fuse`` as sshfs's mounts report ``fuse.sshfs``: the file
server itself (NFS) cannot be mounted on this machine (its kernel has no NFS client), and the agent tells them apart
by the type alone.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sfa_omf.agents.host import UnixHost, shared_file_system
from tests.requirements import missing
from tests.sshkeys import ssh_key

LEASE = "33333333-3333-3333-3333-333333333333"


def _mount_line(point: str, fstype: str, number: int) -> str:
    """A /proc/self/mountinfo line (proc(5)) for a mount at ``point`` of type ``fstype``."""
    return f"{number} 1 0:{number} / {point} rw,relatime shared:{number} - {fstype} source rw"


@pytest.fixture
def mounted_home(login: str, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """/home/LOGIN as a FUSE mount (bindfs) of a directory standing for the file server's export: (home, export)."""
    if shutil.which("bindfs") is None or shutil.which("fusermount") is None:
        missing(
            "bindfs is not installed (scripts/test.sh installs it), and every test must run here",
            "bindfs is not installed: apt-get install bindfs",
        )
    export, home = tmp_path / "export", Path("/home") / login
    export.mkdir()
    home.mkdir()
    subprocess.run(["bindfs", str(export), str(home)], check=True, capture_output=True)
    try:
        yield home, export
    finally:
        subprocess.run(["fusermount", "-u", str(home)], check=False, capture_output=True)
        home.rmdir()


def test_a_home_on_a_shared_file_system_outlives_the_account(
    login: str, mounted_home: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The slice's login on this node has its home on the file server; another node's lease of the slice wrote its
    results there. This node's lease ends: its keys and the account go, the home and the results stay."""
    home, export = mounted_home
    assert shared_file_system(str(home)) == "fuse"
    host = UnixHost(str(tmp_path / "state"))
    host.apply(LEASE, {login: [ssh_key("user@laptop")]})
    assert "user@laptop" in (export / ".ssh" / "authorized_keys").read_text()  # (written through the mount)
    account = pwd.getpwnam(login)
    os.chown(home, account.pw_uid, account.pw_gid)  # the login's, as the useradd of the node that made it left it
    (export / "results.csv").write_text("another node's lease is still writing this\n")

    with caplog.at_level(logging.INFO, logger="sfa_omf.agent"):
        host.remove(LEASE, [login])

    assert subprocess.run(["id", login], capture_output=True, check=False).returncode != 0  # the account is gone
    assert (export / "results.csv").read_text() == "another node's lease is still writing this\n"
    assert "user@laptop" not in (export / ".ssh" / "authorized_keys").read_text()  # the lease's keys are gone
    assert f"{login}'s home {home} is on a fuse file system other hosts may share: kept" in caplog.text


def test_a_local_home_goes_with_the_account(login: str, tmp_path: Path) -> None:
    """The home useradd made on the node's own disk goes with the account, as before."""
    host = UnixHost(str(tmp_path / "state"))
    host.apply(LEASE, {login: [ssh_key("user@laptop")]})
    home = Path("/home") / login
    assert home.is_dir() and shared_file_system(str(home)) is None

    host.remove(LEASE, [login])

    assert not home.exists()


def test_the_file_system_of_a_path_is_that_of_its_deepest_mount(tmp_path: Path) -> None:
    """The mount table is read as the kernel writes it: the deepest mount holding the path decides (the last of two
    at one point, the one on top), escapes in mount points are read, an autofs trigger counts as shared, and
    "fuseblk" (a local disk through FUSE) does not. A path that does not exist, or a table that cannot be read,
    tells nothing: None."""
    homes = tmp_path / "srv homes"
    (homes / "ann").mkdir(parents=True)
    (tmp_path / "disk").mkdir()
    escaped = str(homes).replace(" ", "\\040")
    table = tmp_path / "mountinfo"
    table.write_text(
        "\n".join(
            [
                _mount_line("/", "ext4", 1),
                _mount_line(str(tmp_path), "tmpfs", 2),
                _mount_line(escaped, "ext4", 3),
                _mount_line(escaped, "nfs4", 4),
                _mount_line(str(tmp_path / "disk"), "fuseblk", 5),
                _mount_line(str(tmp_path / "dis"), "fuse.sshfs", 6),
                "a line the kernel never writes",
            ]
        )
        + "\n"
    )

    assert shared_file_system(str(homes / "ann"), str(table)) == "nfs4"
    assert shared_file_system(str(homes), str(table)) == "nfs4"
    assert shared_file_system(str(tmp_path / "disk"), str(table)) is None  # (not under .../dis's sshfs mount)
    assert shared_file_system(str(tmp_path), str(table)) is None
    table.write_text(_mount_line(str(tmp_path), "fuse.sshfs", 1) + "\n")
    assert shared_file_system(str(homes / "ann"), str(table)) == "fuse.sshfs"
    table.write_text(_mount_line(f"{escaped}/ann", "autofs", 1) + "\n")  # (an NFS home, mounted when first used)
    assert shared_file_system(str(homes / "ann"), str(table)) == "autofs"
    assert shared_file_system(str(homes / "nobody"), str(table)) is None
    assert shared_file_system(str(homes / "ann"), str(tmp_path / "no such table")) is None
