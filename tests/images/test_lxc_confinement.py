"""What root inside a container cannot do to the aggregate's host (real LXC; docs/images-and-instances.md, "What a
container's root can and cannot do"): make device nodes, use one an image or anybody put in its root file system
(the devices cgroup refuses all but the standard ones), remount the host's read-only library binds, read the
host's kernel log. The container still works: SSH with a terminal, /dev/null, /dev/urandom."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sfa_omf.images.lxc import InstanceSpec, LxcHost
from tests.images.lxc_env import address, key_pair, needs_lxc, own_lxc_host, ssh

pytestmark = needs_lxc
LEASE = "0f4b1d2e-aaaa-bbbb-cccc-000000000019"
KMSG = (1, 11)  # /dev/kmsg: what is written there lands in the host's kernel log


@pytest.fixture
def host(tmp_path: Path) -> Iterator[LxcHost]:
    yield from own_lxc_host(tmp_path)  # containers of this test only, none outliving it


def host_kernel_log() -> str:
    return subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout


def test_a_containers_root_cannot_reach_the_hosts_devices_mounts_or_kernel_log(host: LxcHost, tmp_path: Path) -> None:
    where = address(119)
    here = where.split("/")[0]
    key, public = key_pair(tmp_path, "alice")
    name = host.name_for(LEASE, 0)
    host.launch(InstanceSpec(name, where, (public,)))
    mark = f"sfa-omf confinement test {os.getpid()}-{name}"

    made = ssh(key, here, f"mknod /tmp/kmsg c {KMSG[0]} {KMSG[1]} && echo '{mark} (made)' > /tmp/kmsg")
    assert made.returncode != 0 and "mknod: /tmp/kmsg: Operation not permitted" in made.stderr, made

    # A device node already there (an image's tar may carry one; the host's root makes it here) is refused too.
    os.mknod(host.lxc_path / name / "rootfs" / "tmp" / "found", 0o600 | 0o020000, os.makedev(*KMSG))
    found = ssh(key, here, f"echo '{mark} (found)' > /tmp/found")
    assert found.returncode != 0 and "Operation not permitted" in found.stderr, found
    assert mark not in host_kernel_log()

    remount = ssh(key, here, "mount -o remount,rw,bind /lib")  # the host's /lib, bound read-only
    assert remount.returncode != 0, remount
    assert ssh(key, here, "dmesg").returncode != 0  # the host's kernel log is not the container's to read

    works = ssh(key, here, "echo x > /dev/null && head -c 16 /dev/urandom | wc -c && hostname")
    assert (works.returncode, works.stdout.split()) == (0, ["16", name]), works.stderr
    terminal = subprocess.run(
        ["ssh", "-tt", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "BatchMode=yes", f"root@{here}", "tty"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert terminal.returncode == 0 and terminal.stdout.strip().startswith("/dev/pts/"), terminal
