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
import grp
import hashlib
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sfa_omf.errors import GeniError, Reason
from sfa_omf.images.archives import link_climbs_out

log = logging.getLogger("sfa_omf.lxc")
DEFAULT_PREFIX = "sfaomf-"
DROPBEAR = "/usr/sbin/dropbear"
VALID_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")  # fullmatch: "$" lets a final line break through
MADE_MARK = "sfa-omf-made"  # beside the container's config, once create() has finished it
SECCOMP_PROFILE = "/usr/share/lxc/config/common.seccomp"  # Debian's lxc: no kernel modules, kexec, open_by_handle_at
# The devices a container may read or write: null, zero, full, random, urandom, tty, console, ptmx and the pty
# slaves (136:*), the nodes LXC itself makes in its /dev. Any other (the host's disks, /dev/kmsg, /dev/mem...) is
# refused by the devices cgroup, even to a node a container's root made or found.
ALLOWED_DEVICES = ("c 1:3", "c 1:5", "c 1:7", "c 1:8", "c 1:9", "c 5:0", "c 5:1", "c 5:2", "c 136:*")
# Capabilities root inside a container does not have (beyond the busybox template's sys_module mac_admin
# mac_override sys_time): mknod (no new device nodes), sys_rawio (no raw I/O ports or memory), sys_admin (no mount,
# remount of the host's read-only /lib binds, nor changing its own devices cgroup) and syslog (the host's kernel log).
DROPPED_CAPABILITIES = ("mknod", "sys_rawio", "sys_admin", "syslog")
# How long each LXC command may take before it is killed and the action fails (TESTBED, saying so): one that hangs
# must not hold a start (and its rows' claim) for ever. lxc-create builds a root file system, lxc-start boots.
LXC_TIMEOUTS_S = {
    "lxc-create": 300.0,
    "lxc-start": 120.0,
    "lxc-stop": 60.0,
    "lxc-destroy": 120.0,
    "lxc-info": 30.0,
    "lxc-freeze": 30.0,
    "lxc-unfreeze": 30.0,
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
        if not VALID_NAME.fullmatch(spec.name):
            raise GeniError(Reason.BAD_ARGS, f"container name {spec.name!r} is not valid for LXC")
        if not os.path.exists(DROPBEAR):
            raise GeniError(Reason.TESTBED, f"{DROPBEAR} is missing on this host: run scripts/lxc.sh up")
        if not os.path.exists(SECCOMP_PROFILE):  # a container without it would be less confined: none is made
            raise GeniError(Reason.TESTBED, f"{SECCOMP_PROFILE} is missing on this host: install Debian's lxc")
        with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as conf:
            conf.write(
                f"lxc.net.0.type = veth\nlxc.net.0.link = {self.bridge}\nlxc.net.0.flags = up\n"
                f"lxc.net.0.ipv4.address = {spec.address}\n"
                f"lxc.net.0.hwaddr = {hardware_address(spec.name)}\n"
                f"{confinement()}"
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
        # Everything below is written as root into a tree the image (the experimenter's) laid out: through
        # descriptors, never following a link (an image's /etc/init.d/rcS or /root/.ssh may be one to a host path).
        root = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            # -s: keys only, never a password (an image may carry any /etc/shadow); -R: host keys made at first login.
            rcs = b"#!/bin/sh\n/bin/syslogd\n/bin/mount -a\n/usr/sbin/dropbear -R -s -p 22\n"
            _write_new(root, ("etc", "init.d"), "rcS", rcs, 0o755)
            with open(DROPBEAR, "rb") as dropbear:
                _write_new(root, ("usr", "sbin"), "dropbear", dropbear.read(), 0o755)
            os.close(_open_directory(root, ("etc", "dropbear")))
            ssh_dir = _open_directory(root, ("root", ".ssh"))
            try:
                os.fchmod(ssh_dir, 0o700)
            finally:
                os.close(ssh_dir)
            keys = "".join(f"{key.strip()}\n" for key in spec.authorized_keys).encode()
            _write_new(root, ("root", ".ssh"), "authorized_keys", keys, 0o600)
        finally:
            os.close(root)

    def _discard(self, name: str) -> None:
        """Destroy a container this process made and failed to finish; the failure itself is the one to report."""
        try:
            self.destroy(name)  # a directory a killed lxc-create left without its config too
        except GeniError as cleanup:
            log.warning("container %s could not be destroyed after a failed launch: %s", name, cleanup)

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

    def freeze(self, name: str) -> None:
        """Freeze every process of the running container (lxc-freeze): nothing in it changes its files until
        unfreeze."""
        _run(["lxc-freeze", "-P", str(self.lxc_path), "-n", name])

    def unfreeze(self, name: str) -> None:
        """Let a frozen container's processes run again (lxc-unfreeze)."""
        _run(["lxc-unfreeze", "-P", str(self.lxc_path), "-n", name])

    @contextlib.contextmanager
    def frozen(self, name: str) -> Iterator[None]:
        """The container frozen while the block runs, if it runs (a stopped one has no process to freeze), and
        unfrozen after, whatever happened in the block. A save archives a root file system as root while the
        container's root may act: frozen, it cannot swap a directory for a link under the walk. A freeze that fails
        raises (TESTBED) before the block runs."""
        running = self.state(name) == "RUNNING"
        if running:
            self.freeze(name)
        try:
            yield
        finally:
            if running:
                self.unfreeze(name)

    def destroy(self, name: str) -> None:
        """Stop (killing it) and delete the container; nothing to do when it does not exist. A directory without
        LXC's config (a container left half made) is removed as a plain directory."""
        directory = self.lxc_path / name
        if not directory.exists():
            return
        if not (directory / "config").exists():
            # Left half made (a killed lxc-create): LXC does not know it as a container (lxc-destroy fails on it,
            # every time) and it cannot run: removed as the plain directory it is.
            try:
                shutil.rmtree(directory)
            except OSError as exc:
                raise GeniError(Reason.TESTBED, f"container {name} (half made) could not be removed: {exc}") from exc
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

    def write_keys(self, name: str, keys: Sequence[str]) -> None:
        """Make ``keys`` the whole of root's authorized_keys in the container, running or stopped (dropbear reads the
        file at each login: a key left out is refused from the next one on). The container's root owns that tree and
        may have put links in it: each directory is opened relative to the one above without following links, and
        the file is replaced by renaming a new one over it, never written through what was there. TESTBED when it
        cannot be done (e.g. root's .ssh made a link)."""
        content = "".join(f"{key.strip()}\n" for key in keys if key.strip()).encode()
        try:
            root = os.open(self.lxc_path / name / "rootfs", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                _write_new(root, ("root", ".ssh"), "authorized_keys", content, 0o600, directory_mode=0o700)
            finally:
                os.close(root)
        except OSError as exc:
            raise GeniError(
                Reason.TESTBED, f"container {name}: root's authorized_keys could not be rewritten: {exc}"
            ) from exc

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


def confinement() -> str:
    """The configuration lines that keep a container's root away from the host (the busybox template adds none of
    them; LXC's common.conf is not included: it would also allow mknod of any node and change the template's ttys
    and mounts). Rules for both cgroup versions, as common.conf has them: LXC applies those of the hierarchy that
    holds the host's devices controller and ignores the others."""
    lines = []
    for version in ("cgroup", "cgroup2"):
        lines.append(f"lxc.{version}.devices.deny = a")
        lines.extend(f"lxc.{version}.devices.allow = {device} rwm" for device in ALLOWED_DEVICES)
    lines.append(f"lxc.cap.drop = {' '.join(DROPPED_CAPABILITIES)}")
    lines.append(f"lxc.seccomp.profile = {SECCOMP_PROFILE}")
    return "".join(f"{line}\n" for line in lines)


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


#: Linux's longest file name and path (NAME_MAX, PATH_MAX less its NUL), in bytes.
NAME_MAX_BYTES = 255
PATH_MAX_BYTES = 4095


class LinkOverArchiveMember(tarfile.FilterError):
    """A member other than a directory (a symbolic or hard link, a file...) laid where the archive already laid a
    member, above one, or at a link its names went through, wherever it is spelled from (the place is resolved):
    laying it would remove or replace what the archive laid, or put a link where a directory it set up was."""

    def __init__(self, tarinfo: tarfile.TarInfo) -> None:
        self.tarinfo = tarinfo
        super().__init__(f"{tarinfo.name!r} would replace what the archive already laid out there")


class ImageMemberRefused(tarfile.FilterError):
    """A member laying which could go somewhere other than where its name was checked: a name (or a hard link's
    target) with '..', a hard link to anything but a file, a member whose name goes through what it replaces, a
    directory the archive laid that is no longer where it was when its owner and mode are set."""

    def __init__(self, tarinfo: tarfile.TarInfo, why: str) -> None:
        self.tarinfo = tarinfo
        super().__init__(f"{tarinfo.name!r}: {why}")


def _extract(image: str, rootfs: Path, name: str) -> None:
    """Lay the image's files over the root file system (_ImageFilter: modes kept, nothing written outside it, every
    directory's owner and mode set at the end without following any link); TESTBED saying why when it cannot be
    done."""
    try:
        with tarfile.open(image) as tar:
            image_filter = _ImageFilter(str(rootfs))
            for member in tar:  # not extractall: it sets directories' owner and mode at the end by name, through links
                tar.extract(member, str(rootfs), set_attrs=not member.isdir(), filter=image_filter)
            image_filter.set_directory_attributes()
    except tarfile.FilterError as exc:
        raise GeniError(
            Reason.TESTBED,
            f"container {name}: image {image} was refused: {exc} (every member of an image, and every link's target, "
            "must stay inside the root file system, and an image names each path once)",
        ) from exc
    except (OSError, tarfile.TarError) as exc:
        raise GeniError(
            Reason.TESTBED, f"container {name}: image {image} is not a readable tar archive: {exc}"
        ) from exc
    except RecursionError as exc:  # tarfile's fallback from link to link, should a case the filter misses reach it
        raise GeniError(
            Reason.TESTBED, f"container {name}: image {image} was refused: its links lead to one another ({exc})"
        ) from exc


class _ImageFilter:
    """The extraction filter of one image (tarfile calls it on each member just before laying it): _inside_root,
    and the place of a link made free. The template made the root file system the image is laid over, and an image
    may hold a link where the template has a directory or a file (Debian's var/run -> /run, tmp -> var/tmp): that
    directory (all it holds) or file is removed, and the link laid; a file replaces a template's link.

    Only a template's: every place the archive lays something at is recorded as it is resolved on this host (the
    directory above resolved, ``bin/x`` is ``usr/bin/x`` through the template's ``bin -> usr/bin``), with every
    directory above it and the place of every name above it (the links its name went through); a member other than a
    directory at a recorded place, however spelled, is refused (LinkOverArchiveMember), and nothing recorded is ever
    removed (a place not recorded has nothing recorded below it). The directories' owners, modes and times are set
    at the end (set_directory_attributes) on the directory laid, reached from the root without following any link."""

    def __init__(self, rootfs: str) -> None:
        self.root = os.path.realpath(rootfs)
        self.recorded: set[str] = {self.root}  # absolute, resolved: what the archive laid, went through or is above
        self.directories: list[tuple[str, tarfile.TarInfo]] = []  # (the directory laid, resolved; its member)
        self.names_above: set[str] = set()  # the names whose place is recorded already (each resolved once)

    def __call__(self, member: tarfile.TarInfo, rootfs: str) -> tarfile.TarInfo:
        member = _inside_root(member, rootfs)
        if ".." in member.name.split("/") or (member.islnk() and ".." in member.linkname.split("/")):
            raise ImageMemberRefused(member, "a name with '..' (resolved through links it may lead elsewhere)")
        for text in (member.name, member.linkname):
            # Linux's limits: a link os.symlink or os.link cannot make sends tarfile to lay another member of the
            # archive in its place, unfiltered (and, from link to link, in a loop).
            if len(os.fsencode(text)) > PATH_MAX_BYTES or any(
                len(os.fsencode(part)) > NAME_MAX_BYTES for part in text.split("/")
            ):
                raise ImageMemberRefused(
                    member,
                    f"a name or link target longer than Linux allows ({NAME_MAX_BYTES} bytes a name, "
                    f"{PATH_MAX_BYTES} a path)",
                )
        name = os.path.normpath(member.name)
        above = [self._place(prefix) for prefix in _names_above(name) if prefix not in self.names_above]
        self.names_above.update(_names_above(name))
        place = self._place(name)
        if member.isdir():
            target = os.path.realpath(place)  # a directory, or a template's link to one (_inside_root: inside)
            self.directories.append((target, member))
        else:
            if place in self.recorded:
                raise LinkOverArchiveMember(member)
            if member.islnk():
                self._check_hard_link(member)
            _free_place(place, directory_too=member.issym() or member.islnk())
            if self._place(name) != place:  # what was freed was on the way to it
                raise ImageMemberRefused(member, "its name goes through what it replaces")
            target = place
        for laid in (*above, place, target):
            self._record(laid)
        return member

    def _place(self, name: str) -> str:
        """Where ``name`` (normalised, relative) is laid on this host now: the directory above resolved, the name
        itself not."""
        if name == ".":
            return self.root
        parent = os.path.realpath(os.path.join(self.root, os.path.dirname(name)))
        if os.path.commonpath([parent, self.root]) != self.root:  # (_inside_root refused it already)
            raise tarfile.OutsideDestinationError(tarfile.TarInfo(name), parent)
        return os.path.join(parent, os.path.basename(name))

    def _record(self, place: str) -> None:
        while place not in self.recorded and os.path.commonpath([place, self.root]) == self.root:
            self.recorded.add(place)
            place = os.path.dirname(place)

    def _check_hard_link(self, member: tarfile.TarInfo) -> None:
        """A hard link names a file already there: never a directory (tarfile would copy the archive's member
        instead, unchecked), a symbolic link (os.link follows it) or nothing."""
        target = self._place(os.path.normpath(member.linkname))
        if os.path.islink(target) or not os.path.lexists(target) or os.path.isdir(target):
            raise ImageMemberRefused(member, f"a hard link to {member.linkname!r}, which is not a file laid before it")

    def set_directory_attributes(self) -> None:
        """Set each directory member's owner, times and mode (as tarfile would: names mapped on this host when
        root), deepest first, on the directory laid: opened from the root one name at a time, never through a link
        (ImageMemberRefused if one is no longer a directory)."""
        root = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for target, member in sorted(self.directories, key=lambda laid: laid[0], reverse=True):
                parts = os.path.relpath(target, self.root).split(os.sep)
                try:
                    directory = _open_directory(root, [part for part in parts if part != "."], make=False)
                except OSError as exc:
                    why = f"the directory laid was replaced before its mode was set: {exc}"
                    raise ImageMemberRefused(member, why) from exc
                try:
                    _set_attributes(directory, member)
                finally:
                    os.close(directory)
        finally:
            os.close(root)


def _names_above(name: str) -> list[str]:
    """``a``, ``a/b`` for ``a/b/c``."""
    parts = name.split("/")
    return ["/".join(parts[:count]) for count in range(1, len(parts))] if name != "." else []


def _set_attributes(directory: int, member: tarfile.TarInfo) -> None:
    """tarfile's chown, utime and chmod of a directory, on its descriptor; a failure is logged (tarfile's too)."""
    try:
        if os.geteuid() == 0:
            uid, gid = member.uid, member.gid
            with contextlib.suppress(KeyError):
                if member.gname:
                    gid = grp.getgrnam(member.gname).gr_gid
            with contextlib.suppress(KeyError):
                if member.uname:
                    uid = pwd.getpwnam(member.uname).pw_uid
            os.fchown(directory, uid, gid)
        if member.mtime is not None:
            os.utime(directory, (member.mtime, member.mtime))
        if member.mode is not None:
            os.fchmod(directory, member.mode)
    except (OSError, OverflowError) as exc:
        log.warning("image directory %s: owner, time or mode not set: %s", member.name, exc)


def _free_place(place: str, directory_too: bool) -> None:
    """Remove what is at ``place`` (absolute, inside the root file system, its directory resolved: _ImageFilter
    found it recorded by no member of the archive) before a member is laid there: a file or a link, and with
    ``directory_too`` (a link's place) a directory with all it holds. Nothing is followed (shutil.rmtree does not
    follow links, os.unlink removes a link itself)."""
    if os.path.isdir(place) and not os.path.islink(place):
        if directory_too:
            shutil.rmtree(place)
    elif os.path.lexists(place):
        os.unlink(place)


def _inside_root(member: tarfile.TarInfo, rootfs: str) -> tarfile.TarInfo:
    """tarfile's "tar" filter for the names (no absolute name, none with '..', no member written through a link to
    outside the root file system), owners and the archive's modes kept whole (a root file system needs /tmp's
    sticky bit, setuid programs, group-writable directories: the "tar" filter would mask them with 0o755), and no
    link leading out, which "tar" lets through:
    - a symbolic link whose relative target climbs out of the root, read by name (archives.link_climbs_out): in the
      container every target resolves inside its root, and on this host no link of the tree is followed
      (_configure, write_keys and save_rootfs open nothing through one; "tar" refuses a member written through
      one). Resolving it on the host instead would follow the image's absolute links to the host's own paths and
      refuse ordinary images (/etc/ssl/certs/*.0 -> ../../../usr/share/... through an absolute link). An absolute
      target is the container's own path: kept;
    - a hard link to a file outside: os.link does resolve its target on this host, through any link the image
      already laid out, so it is checked as the host resolves it (and an absolute one is a host path: refused)."""
    filtered = tarfile.tar_filter(member, rootfs)
    if filtered.mode != member.mode:  # the names as "tar" made them, the modes as archived
        filtered = filtered.replace(mode=member.mode, deep=False)
    member = filtered
    if member.issym():
        if link_climbs_out(os.path.dirname(os.path.normpath(member.name)), member.linkname):
            raise tarfile.LinkOutsideDestinationError(member, member.linkname)
        return member
    if member.islnk():
        if os.path.isabs(member.linkname):
            raise tarfile.AbsoluteLinkError(member)
        root = os.path.realpath(rootfs)
        target = os.path.realpath(os.path.join(root, member.linkname))  # (a hard link names a member from the root)
        if os.path.commonpath([target, root]) != root:
            raise tarfile.LinkOutsideDestinationError(member, target)
    return member


def _open_directory(root: int, parts: Sequence[str], mode: int = 0o755, make: bool = True) -> int:
    """A descriptor of the directory ``parts`` under the open directory ``root``, made (``mode``) where missing
    unless not ``make``; OSError (ELOOP, ENOTDIR, ENOENT) when one of them is a link, not a directory or (not
    ``make``) missing: never followed out of the root file system."""
    current = os.dup(root)
    try:
        for part in parts:
            if make:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, mode, dir_fd=current)
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current)
            os.close(current)
            current = child
    except BaseException:
        os.close(current)
        raise
    return current


def _write_new(
    root: int, parents: Sequence[str], name: str, content: bytes, mode: int, directory_mode: int = 0o755
) -> None:
    """Make ``content`` the file ``name`` (mode ``mode``) in directory ``parents`` under the open ``root`` (made,
    ``directory_mode``, where missing): a new file, O_EXCL|O_NOFOLLOW under a random name, renamed over whatever had
    that name (a file, a link), so nothing existing is written to and nothing outside the root file system is ever
    reached; readers see the old file or the new one, whole."""
    directory = _open_directory(root, parents, directory_mode)
    try:
        temporary = f".{name}.sfa-omf-{os.urandom(6).hex()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            with os.fdopen(os.open(temporary, flags, mode, dir_fd=directory), "wb") as out:
                out.write(content)
                os.fchmod(out.fileno(), mode)  # the mode asked, whatever the umask
            os.rename(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
        except BaseException:  # no half-written file left behind
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=directory)
            raise
    finally:
        os.close(directory)


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
