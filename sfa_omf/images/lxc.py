"""Containers on this host with real LXC (Debian's lxc, the offline busybox template): the building block of
instances inside a booking (docs/images-and-instances.md).

Each container is privileged, built offline from the host's static busybox, attached to a bridge of the project's
own (scripts/lxc.sh makes it, with a private range) at a fixed address, and runs dropbear (the host's binary; the
template bind-mounts the host's libraries read-only) with the slice users' keys in ``root``'s authorized_keys. Its
name says which lease it belongs to (``<prefix><lease id>-<n>``), so ``sfa-omf instance list`` and cleanups find it.
Every failure is a GeniError (TESTBED) with LXC's own words, and a container that fails to launch is destroyed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sfa_omf.errors import GeniError, Reason

log = logging.getLogger("sfa_omf.lxc")
DEFAULT_PREFIX = "sfaomf-"
DROPBEAR = "/usr/sbin/dropbear"
VALID_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MADE_MARK = "sfa-omf-made"  # beside the container's config, once create() has finished it
# How long each LXC command may take before it is killed and the action fails (TESTBED, saying so): one that hangs
# must not hold a start (and its rows' claim) for ever. lxc-create builds a root file system, lxc-start boots.
LXC_TIMEOUTS_S = {
    "lxc-create": 300.0,
    "lxc-start": 120.0,
    "lxc-stop": 60.0,
    "lxc-destroy": 120.0,
    "lxc-info": 30.0,
}


UNKNOWN_STATE = "UNKNOWN"  # what state() says of a container lxc-info did not answer for


class LxcTimedOut(GeniError):
    """An LXC command outlasted its time-out (LXC_TIMEOUTS_S) and was killed."""


@dataclass(frozen=True)
class InstanceSpec:
    """One container to launch: its name, its address on the bridge (``10.217.0.10/24``) and who may log in."""

    name: str
    address: str
    authorized_keys: tuple[str, ...]
    login: str = "root"

    @property
    def host(self) -> str:
        return self.address.split("/", 1)[0]


@dataclass(frozen=True)
class InstanceRecord:
    """A container of ours on this host, as LXC sees it."""

    name: str
    state: str  # RUNNING, STOPPED, ... (lxc-info's words)
    address: str  # as configured, "" if unknown
    lease_id: str  # from the name; "" for a name without a lease part


class LxcHost:
    """Launch, list and destroy containers on this host. Needs root (privileged containers)."""

    def __init__(self, bridge: str, prefix: str = DEFAULT_PREFIX, lxc_path: str = "/var/lib/lxc") -> None:
        self.bridge = bridge
        self.prefix = prefix
        self.lxc_path = Path(lxc_path)

    def name_for(self, lease_id: str, index: int) -> str:
        """The container name of the ``index``-th container of a lease."""
        return f"{self.prefix}{lease_id}-{index}"

    def launch(self, spec: InstanceSpec, ssh_timeout_s: float = 30.0, image: str = "") -> InstanceRecord:
        """Create (with ``image``, a tar of files laid over the base, if given), start and wait until the container
        answers SSH; on any failure destroy it and raise TESTBED. A container of that name that exists already is
        somebody else's: the launch fails and leaves it alone."""
        self.create(spec, image)
        try:
            self.start(spec.name)
            if not wait_for_ssh(spec.host, ssh_timeout_s):
                raise GeniError(
                    Reason.TESTBED,
                    f"container {spec.name} started but its SSH server at {spec.host}:22 did not answer within "
                    f"{ssh_timeout_s:g} s",
                )
        except BaseException:
            self._discard(spec.name)
            raise
        return InstanceRecord(spec.name, "RUNNING", spec.address, self._lease_of(spec.name))

    def create(self, spec: InstanceSpec, image: str = "") -> None:
        """Build the container's root file system offline, lay the image's files over it (a repository image is a
        tar archive of a root file system, as ``sfa_omf_save_image`` makes them) and configure its address, SSH
        server and keys (after the image, so that an image never removes the way in). lxc-create refuses a name that
        exists (nothing is touched then); past it, a failure destroys the container this call made."""
        if not VALID_NAME.match(spec.name):
            raise GeniError(Reason.BAD_ARGS, f"container name {spec.name!r} is not valid for LXC")
        if not os.path.exists(DROPBEAR):
            raise GeniError(Reason.TESTBED, f"{DROPBEAR} is missing on this host: run scripts/lxc.sh up")
        with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as conf:
            conf.write(
                f"lxc.net.0.type = veth\nlxc.net.0.link = {self.bridge}\nlxc.net.0.flags = up\n"
                f"lxc.net.0.ipv4.address = {spec.address}\n"
                f"lxc.net.0.hwaddr = {hardware_address(spec.name)}\n"
            )
        existed = (self.lxc_path / spec.name).exists()
        try:
            _run(["lxc-create", "-P", str(self.lxc_path), "-t", "busybox", "-n", spec.name, "-f", conf.name])
        except LxcTimedOut:
            if not existed:  # what the killed lxc-create left half made is ours
                self._discard(spec.name)
            raise
        finally:
            os.unlink(conf.name)
        try:
            self._configure(spec, image)
            (self.lxc_path / spec.name / MADE_MARK).touch()  # last: a container without it was left half made
        except OSError as exc:  # e.g. the container destroyed meanwhile (its lease deleted): LXC's kind of failure
            self._discard(spec.name)
            raise GeniError(Reason.TESTBED, f"container {spec.name} could not be configured: {exc}") from exc
        except BaseException:
            self._discard(spec.name)
            raise

    def _configure(self, spec: InstanceSpec, image: str) -> None:
        rootfs = self.lxc_path / spec.name / "rootfs"
        if image:
            _extract(image, rootfs, spec.name)
        # The template's rcS asks DHCP for an address (there is no DHCP server on our bridge: LXC sets the address);
        # ours starts the SSH server instead.
        rcs = rootfs / "etc" / "init.d" / "rcS"
        # -s: keys only, never a password (an image may carry any /etc/shadow); -R: host keys made at first login.
        rcs.write_text("#!/bin/sh\n/bin/syslogd\n/bin/mount -a\n/usr/sbin/dropbear -R -s -p 22\n")
        rcs.chmod(0o755)
        (rootfs / "usr" / "sbin").mkdir(parents=True, exist_ok=True)
        shutil.copy2(DROPBEAR, rootfs / "usr" / "sbin" / "dropbear")
        (rootfs / "etc" / "dropbear").mkdir(parents=True, exist_ok=True)
        ssh_dir = rootfs / "root" / ".ssh"
        ssh_dir.mkdir(parents=True, exist_ok=True)
        ssh_dir.chmod(0o700)
        keys = ssh_dir / "authorized_keys"
        keys.write_text("".join(f"{key.strip()}\n" for key in spec.authorized_keys))
        keys.chmod(0o600)

    def _discard(self, name: str) -> None:
        """Destroy a container this process made and failed to finish; the failure itself is the one to report."""
        try:
            self.destroy(name)
        except GeniError as cleanup:
            log.warning("container %s could not be destroyed after a failed launch: %s", name, cleanup)
        directory = self.lxc_path / name
        if directory.exists() and not (directory / "config").exists():
            # A killed lxc-create leaves a directory without its config, which lxc-destroy does not know as a
            # container (and which cannot run): removed as the plain directory it is.
            shutil.rmtree(directory, ignore_errors=True)

    def start(self, name: str) -> None:
        """Start the container; on failure the reason is LXC's own error lines (its log), not just "failed"."""
        log = self.lxc_path / name / "start.log"
        log.unlink(missing_ok=True)
        try:
            _run(["lxc-start", "-P", str(self.lxc_path), "-n", name, "-l", "ERROR", "-o", str(log)])
        except LxcTimedOut:
            raise  # its own words: the time-out, whatever LXC logged meanwhile
        except GeniError as exc:
            lines = log.read_text(errors="replace").splitlines() if log.exists() else []
            reasons = [line.split(" - ", 1)[-1] for line in lines if " ERROR " in line][:3]
            if reasons:
                raise GeniError(Reason.TESTBED, f"container {name} could not start: {' / '.join(reasons)}") from exc
            raise

    def stop(self, name: str) -> None:
        _run(["lxc-stop", "-P", str(self.lxc_path), "-k", "-n", name])

    def destroy(self, name: str) -> None:
        """Stop (killing it) and delete the container; nothing to do when it does not exist."""
        if not (self.lxc_path / name).exists():
            return
        _run(["lxc-stop", "-P", str(self.lxc_path), "-k", "-n", name], check=False)
        _run(["lxc-destroy", "-P", str(self.lxc_path), "-n", name])

    def state(self, name: str) -> str:
        """RUNNING, STOPPED, ... or "" when there is no such container; UNKNOWN when lxc-info did not answer in
        time (the container exists, and is not known to run: its callers act on it as on a stopped one, and their
        own LXC commands fail it if it is wedged). Never raises: rounds and starts go on for the other containers."""
        if not (self.lxc_path / name).exists():
            return ""
        try:
            return _run(["lxc-info", "-P", str(self.lxc_path), "-s", "-H", "-n", name], check=False).strip()
        except LxcTimedOut as exc:
            log.warning("container %s: %s", name, exc.message)
            return UNKNOWN_STATE

    def made(self, name: str) -> bool:
        """The container exists and create() finished it (a process that died while creating it left it half made)."""
        return (self.lxc_path / name / MADE_MARK).exists()

    def instances(self) -> list[InstanceRecord]:
        """Our containers on this host (names starting with the prefix), by name."""
        if not self.lxc_path.is_dir():
            return []
        found = []
        for entry in sorted(self.lxc_path.iterdir()):
            if entry.name.startswith(self.prefix) and (entry / "config").exists():
                found.append(
                    InstanceRecord(
                        entry.name, self.state(entry.name), _address(entry / "config"), self._lease_of(entry.name)
                    )
                )
        return found

    def destroy_lease(self, lease_id: str) -> list[str]:
        """Destroy every container of a lease (its slot ended, or it was deleted); returns their names."""
        gone = [record.name for record in self.instances() if record.lease_id == lease_id]
        for name in gone:
            self.destroy(name)
        return gone

    def _lease_of(self, name: str) -> str:
        rest = name[len(self.prefix) :] if name.startswith(self.prefix) else ""
        return rest.rsplit("-", 1)[0] if "-" in rest else ""


def hardware_address(name: str) -> str:
    """The container's own MAC address, the same at every start (a locally administered one derived from its name):
    with a new random one at each start, hosts that still cache the old one for its address (ARP) cannot reach it
    for up to a minute after a restart."""
    digest = hashlib.sha256(name.encode()).digest()
    return ":".join(f"{byte:02x}" for byte in (0x02, *digest[:5]))


def wait_for_ssh(host: str, timeout_s: float, port: int = 22) -> bool:
    """True once an SSH server at host:port sends its banner, False if none does within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=2) as connection:
                connection.settimeout(2)
                if connection.recv(4).startswith(b"SSH-"):
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def answering_ssh(endpoints: Iterable[tuple[str, int]], budget_s: float, workers: int = 8) -> set[tuple[str, int]]:
    """The (host, port) endpoints whose SSH server sends its banner within ``budget_s``, one budget for the whole
    call: the endpoints are probed at once (``workers`` threads), each connect and read bounded by the time left, so
    the call returns after about ``budget_s`` at most, whatever the number of endpoints or how they fail."""
    deadline = time.monotonic() + budget_s
    wanted = sorted(set(endpoints))
    if not wanted:
        return set()

    def answers(endpoint: tuple[str, int]) -> bool:
        try:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with socket.create_connection(endpoint, timeout=left) as connection:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                connection.settimeout(left)
                return connection.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    with ThreadPoolExecutor(max_workers=min(workers, len(wanted))) as pool:
        return {endpoint for endpoint, up in zip(wanted, pool.map(answers, wanted), strict=True) if up}


def _extract(image: str, rootfs: Path, name: str) -> None:
    try:
        with tarfile.open(image) as tar:
            tar.extractall(rootfs, filter="tar")  # "tar": no member lands outside the root file system
    except (OSError, tarfile.TarError) as exc:
        raise GeniError(
            Reason.TESTBED, f"container {name}: image {image} is not a readable tar archive: {exc}"
        ) from exc


def _address(config: Path) -> str:
    for line in config.read_text(errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "lxc.net.0.ipv4.address":
            return value.strip()
    return ""


def _run(argv: Sequence[str], check: bool = True) -> str:
    """Run an LXC command; its stdout. TESTBED when it fails (with ``check``) or outlasts its LXC_TIMEOUTS_S (then it
    is killed, with whatever it started in its session)."""
    name = argv[argv.index("-n") + 1] if "-n" in argv else "?"
    timeout_s = LXC_TIMEOUTS_S.get(argv[0], max(LXC_TIMEOUTS_S.values()))
    with subprocess.Popen(
        list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, process_group=0
    ) as process:
        try:
            out, err = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise LxcTimedOut(
                Reason.TESTBED,
                f"{argv[0]} for {name} did not finish within {timeout_s:g} s and was killed (LXC on the host may be "
                "stuck: an operator can look with lxc-ls -f)",
            ) from None
    if check and process.returncode != 0:
        words = (err or out).strip().splitlines()
        raise GeniError(
            Reason.TESTBED,
            f"{argv[0]} failed for {name}: {' / '.join(words[-3:]) or f'exit status {process.returncode}'}",
        )
    return out
