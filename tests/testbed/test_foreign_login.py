"""A federation user of a foreign authority (../shared/vectors: alice of onelab.inria, made by SFA's own code) books
over TLS, gets a local Unix account under the mapped login with the SSH key she sent, and logs in to a real sshd on
127.0.0.1 — during her booking only; geni_update_users' complete list replaces her keys. A user of an untrusted
authority is refused. Needs root (useradd) and openssh-server; scripts/test.sh installs it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.am.api_v3 import ApiV3
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.registry.accounts import Accounts, derived_login
from sfa_omf.server.tls import ServerTls
from sfa_omf.server.xmlrpc import XmlRpcResource, make_site
from sfa_omf.testbed.unix_accounts import UnixAccounts
from sfa_omf.times import format_time, utcnow
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from tests.conftest import DemoPki
from tests.ports import free_port
from tests.tls_harness import Listener, proxy

ALICE = "urn:publicid:IDN+onelab:inria+user+alice"
BOB = "urn:publicid:IDN+onelab:inria+user+bob"
MYSLICE = "urn:publicid:IDN+onelab:inria+slice+myslice"
NODE = "urn:publicid:IDN+testbed+node+node1"


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[int]:
    """A real OpenSSH server on 127.0.0.1 that accepts public keys only."""
    binary = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(binary):
        pytest.fail("openssh-server is not installed: scripts/test.sh installs it (apt-get install openssh-server)")
    if os.geteuid() != 0:
        pytest.fail("creating Unix accounts needs root (scripts/test.sh runs as root in CI)")
    os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
    host_key = tmp_path / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    for _attempt in range(3):  # a port found free may be taken before sshd binds it (other tests run beside)
        port = free_port()
        config = tmp_path / "sshd_config"
        config.write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {tmp_path / 'sshd.pid'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nPubkeyAuthentication yes\n"
            "AuthorizedKeysFile .ssh/authorized_keys\nStrictModes yes\n"
        )
        server = subprocess.Popen([binary, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, text=True)
        said = _until_listening(server, port)
        if said is None:
            break
        if "already in use" not in said:
            pytest.fail(f"sshd never listened on 127.0.0.1:{port}: {said}")
    else:
        pytest.fail("sshd found its port taken three times")
    try:
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)


def _until_listening(server: subprocess.Popen[str], port: int) -> str | None:
    """None once ``server`` accepts connections on ``port``; else what it said on standard error when it exited
    (or was killed after a bound against a hang only: the machine may be loaded)."""
    deadline = time.monotonic() + 60
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return None
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            _, said = server.communicate(timeout=10)
            return said.strip() or f"no word (exit status {server.returncode})"
        time.sleep(0.05)


def ssh_as(login: str, key: Path, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "ssh",
            "-i",
            str(key),
            "-p",
            str(port),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            f"{login}@127.0.0.1",
            "id -un",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def user_key(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True)
    return path


def ok(answer: dict[str, Any]) -> Any:
    assert answer["code"]["geni_code"] == 0, answer["output"]
    return answer["value"]


def test_a_foreign_user_books_and_logs_in_under_the_mapped_account(
    listener: Listener, pki: DemoPki, vectors: Path, sshd: int, tmp_path: Path
) -> None:
    roots_dir = tmp_path / "trusted_roots"
    shutil.copytree(pki.directory / "trusted_roots", roots_dir)
    shutil.copy(vectors / "sfa" / "trusted_roots" / "onelab.gid", roots_dir / "onelab.gid")
    database = Database(sqlite_url(str(tmp_path / "am.sqlite")))
    database.upgrade()
    aggregate = Aggregate(
        AggregateSettings(authority_hrn="testbed", hostname="127.0.0.1"),
        database,
        CredentialVerifier(load_trusted_roots(str(roots_dir)), VerdictCache()),
        accounts=Accounts(database, "per-user"),
        unix_accounts=UnixAccounts(),
    )
    aggregate.inventory.add_node(NodeSpec(NODE, "node1", grain_s=60))
    site = make_site({}, XmlRpcResource(ApiV3(aggregate), listener.pool(4), reactor, 1 << 22), 1 << 22, 60)
    tls = ServerTls(str(pki.directory / "aggregate" / "am.pkey"), str(pki.directory / "aggregate" / "am.gid"))
    url = f"https://127.0.0.1:{listener.listen(site, tls)}/"
    sfa = vectors / "sfa"
    client = proxy(url, str(sfa / "gids" / "onelab.inria.alice.gid"), str(sfa / "keys" / "onelab.inria.alice.pkey"))
    slice_cred = (sfa / "creds" / "alice.myslice.slice.cred").read_text()
    login, bob_login = derived_login(ALICE), derived_login(BOB)
    first, second, bobs = user_key(tmp_path, "laptop"), user_key(tmp_path, "desktop"), user_key(tmp_path, "bob")
    for account in (login, bob_login):  # a previous run's accounts
        subprocess.run(["userdel", "-r", account], capture_output=True, check=False)
    try:
        start = utcnow().replace(second=0, microsecond=0)  # her slot is now
        request = (
            '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3">'
            f'<node client_id="n1" component_id="{NODE}" exclusive="true"/></rspec>'
        )
        users = {
            "geni_users": [
                {"urn": ALICE, "keys": [first.with_suffix(".pub").read_text().strip()]},
                {"urn": BOB, "keys": [bobs.with_suffix(".pub").read_text().strip()]},
            ]
        }
        window = {"geni_start_time": format_time(start), "geni_end_time": format_time(start + timedelta(hours=1))}
        ok(client.Allocate(MYSLICE, [slice_cred], request, {**users, **window}))
        assert ssh_as(login, first, sshd).returncode != 0, "no account, no login before Provision"
        manifest = ok(client.Provision([MYSLICE], [slice_cred], users))["geni_rspec"]
        assert f'username="{login}"' in manifest and 'hostname="node1"' in manifest
        logged_in = ssh_as(login, first, sshd)
        assert logged_in.returncode == 0, logged_in.stderr
        assert logged_in.stdout.strip() == login
        # alice cannot vouch for the key she sent for bob (no registry here holds it): it does not open his login...
        assert ssh_as(bob_login, bobs, sshd).returncode != 0, "a member's key for another's login is left out"
        # ...until bob sends it himself (omni sends every member again), with the credential alice delegated to him.
        bob = proxy(url, str(sfa / "gids" / "onelab.inria.bob.gid"), str(sfa / "keys" / "onelab.inria.bob.pkey"))
        bob_cred = (sfa / "creds" / "bob.myslice.delegated.cred").read_text()
        ok(bob.PerformOperationalAction([MYSLICE], [bob_cred], "geni_update_users", users))
        assert ssh_as(bob_login, bobs, sshd).returncode == 0, "each user under their own account"
        assert ssh_as(login, first, sshd).returncode == 0, "alice's key, recorded from her, stays"
        assert ssh_as(login, bobs, sshd).returncode != 0, "and not under another's"
        # geni_update_users carries the complete list: the laptop key is replaced by the desktop key.
        new_users = {"geni_users": [{"urn": ALICE, "keys": [second.with_suffix(".pub").read_text().strip()]}]}
        ok(client.PerformOperationalAction([MYSLICE], [slice_cred], "geni_update_users", new_users))
        assert ssh_as(login, second, sshd).returncode == 0
        assert ssh_as(login, first, sshd).returncode != 0, "a key removed from the slice stops working"
        assert ssh_as(bob_login, bobs, sshd).returncode != 0, "a user left out of the list loses access"
        no_list = client.PerformOperationalAction([MYSLICE], [slice_cred], "geni_update_users", {})
        assert no_list["code"]["geni_code"] == 1 and "complete list" in no_list["output"]
        assert ssh_as(login, second, sshd).returncode == 0, "an update without a list wipes nothing"
        ok(client.Delete([MYSLICE], [slice_cred], {}))
        assert ssh_as(login, second, sshd).returncode != 0, "after the booking, no login"
        # A user of an authority nobody trusts gets nothing, and is told why.
        mallory = proxy(url, str(sfa / "gids" / "evil.lab.mallory.gid"), str(sfa / "keys" / "evil.lab.mallory.pkey"))
        mallory_cred = (sfa / "creds" / "mallory.myslice.untrusted.cred").read_text()
        refused = mallory.Allocate("urn:publicid:IDN+evil:lab+slice+myslice", [mallory_cred], request, {})
        assert refused["code"]["geni_code"] == 3 and "trusted" in refused["output"], refused
    finally:
        for account in (login, bob_login):
            subprocess.run(["userdel", "-r", account], capture_output=True, check=False)


def test_keys_blocks_are_per_slice(tmp_path: Path) -> None:
    """Each slice owns its block of authorized_keys; lines the user wrote themselves are kept."""
    from sfa_omf.testbed.unix_accounts import replace_block

    own = "ssh-ed25519 AAAAown me@home\n"
    with_a = replace_block(own, "urn:a", ["ssh-ed25519 AAAA1 a"])
    with_both = replace_block(with_a, "urn:b", ["ssh-ed25519 AAAA2 b", "ssh-rsa AAAA3 b"])
    assert with_both.count("ssh-") == 4 and with_both.startswith(own)
    without_a = replace_block(with_both, "urn:a", [])
    assert "AAAA1" not in without_a and "AAAA2" in without_a and "AAAAown" in without_a
    assert replace_block(replace_block(without_a, "urn:b", []), "urn:b", []) == own
