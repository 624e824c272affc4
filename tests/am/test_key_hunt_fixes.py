"""Fixes of the SSH key hunt (session 28): what a key may hold, what an authorized_keys rewrite reads, what sshd takes.

- A key whose comment holds a character Python's str.splitlines breaks a line at (U+001C ... U+2029), but sshd does
  not, was taken: the next rewrite of authorized_keys (split with splitlines) made the rest of the comment lines of
  their own, so a member put a fake end marker and their own key outside the slice's block of another member's
  login, where it opened that login and outlived Delete. Such keys (any control character) are refused with
  geni_code 1 naming the character, and the file is split at line feeds only, as sshd splits it.
- A member's own authorized_keys holding bytes that are not UTF-8 (a Latin-1 comment) failed every later rewrite:
  other members' geni_update_users answered 5, and at the lease's end the slice's keys stayed in every login. The
  file is read and written as bytes kept as they are; a login whose file cannot be rewritten is logged and left,
  never failing another member's call or keeping the keys of the other logins.
- ssh-dss keys, RSA keys under 1024 bits, certificates and made-up key types with hand-made blobs were written to
  authorized_keys and never worked (OpenSSH 9 refuses them): the registry refuses them, saying what was sent and what
  is taken; the AM API leaves them out of what it writes (logged), failing nothing: omni and jFed send every key the
  clearinghouse holds for every member, and one member's old DSA key refused the caller's whole Provision.
- A tab between a key's type, blob and comment (OpenSSH takes it) was refused as a control character: taken, written.

Real parts as tests/am/test_users_keys.py: useradd accounts (``akh_*``, this file's own), a real sshd on 127.0.0.1,
the calendar on SQLite and PostgreSQL. Needs root and openssh-server.
"""

from __future__ import annotations

import base64
import logging
import pwd
import secrets
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sfa_omf.am import contract
from sfa_omf.am.aggregate import Aggregate
from sfa_omf.errors import BadArgs
from sfa_omf.registry.api import record_fields
from sfa_omf.registry.records import Record
from sfa_omf.sshkeys import LINE_BREAKS, is_ssh_public_key, ssh_public_key
from sfa_omf.testbed.unix_accounts import (
    END,
    LOCK_DIR,
    LocalAccount,
    UnixAccounts,
    WrittenKeys,
    block_keys,
    replace_block,
)
from sfa_omf.times import utcnow
from tests.am.test_users_keys import GENI_V3, Member, pinned_aggregate, public, urn_of
from tests.conftest import DemoPki
from tests.sshkeys import ssh_key
from tests.testbed.test_foreign_login import ssh_as, sshd, user_key

__all__ = ["sshd"]  # the real sshd fixture, used below

#: Logins of this file's own (not tests/am/test_users_keys.py's ``amk_*``: that file may run at the same time).
LOGINS = {"alice": "akh_alice", "bob": "akh_bob", "carol": "akh_carol"}
SLICE_A, SLICE_B = "urn:publicid:IDN+testbed+slice+a", "urn:publicid:IDN+testbed+slice+b"
USER = "urn:publicid:IDN+testbed+user+alice"
BADARGS = 1


def _string(data: bytes) -> bytes:
    """An SSH wire string: uint32 length, then the bytes."""
    return struct.pack(">I", len(data)) + data


def _mpint(number: int) -> bytes:
    return _string(number.to_bytes(number.bit_length() // 8 + 1, "big"))


def _line(kind: str, blob: bytes, comment: str = "made by hand") -> str:
    return f"{kind} {base64.b64encode(blob).decode('ascii')} {comment}"


def rsa_key_of(bits: int) -> str:
    """An ssh-rsa line of ``bits`` bits made by hand (ssh-keygen and cryptography make none under 1024)."""
    modulus = secrets.randbits(bits) | (1 << (bits - 1)) | 1
    return _line("ssh-rsa", _string(b"ssh-rsa") + _mpint(65537) + _mpint(modulus))


def dsa_key() -> str:
    """An ssh-dss line (p, q, g, y), made by hand as old ssh-keygen wrote them."""
    numbers = [secrets.randbits(1024) | 1, secrets.randbits(160) | 1, secrets.randbits(1024), secrets.randbits(1024)]
    return _line("ssh-dss", _string(b"ssh-dss") + b"".join(_mpint(number) for number in numbers))


def sk_ed25519_key(trailing: bytes = b"") -> str:
    """A FIDO ed25519 key line (a security key is needed to make one with ssh-keygen; its blob is made here)."""
    kind = b"sk-ssh-ed25519@openssh.com"
    return _line(kind.decode(), _string(kind) + _string(secrets.token_bytes(32)) + _string(b"ssh:") + trailing)


def sk_ecdsa_key(point: bytes | None = None) -> str:
    """A FIDO ECDSA P-256 key line (blob made here)."""
    kind = b"sk-ecdsa-sha2-nistp256@openssh.com"
    if point is None:
        public_key = ec.generate_private_key(ec.SECP256R1()).public_key()
        point = public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return _line(kind.decode(), _string(kind) + _string(b"nistp256") + _string(point) + _string(b"ssh:"))


def keygen(tmp_path: Path, kind: str, bits: int | None = None) -> str:
    """A public key line made by ssh-keygen."""
    path = tmp_path / f"{kind}{bits or ''}"
    size = ["-b", str(bits)] if bits else []
    subprocess.run(["ssh-keygen", "-q", "-t", kind, *size, "-N", "", "-f", str(path)], check=True)
    return Path(f"{path}.pub").read_text().strip()


def openssh_reads(tmp_path: Path, key: str) -> bool:
    """ssh-keygen (OpenSSH's own parser) reads the line as a public key."""
    path = tmp_path / "probe.pub"
    path.write_text(key + "\n")
    return subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True).returncode == 0


def refusal_of(users: list[dict[str, Any]]) -> str:
    with pytest.raises(BadArgs) as refusal:
        contract.options({"geni_users": users}, "argument 3 (options)")
    return refusal.value.message


@pytest.fixture(params=["sqlite", "postgresql"])
def aggregate(request: pytest.FixtureRequest, tmp_path: Path, pki: DemoPki) -> Iterator[Aggregate]:
    """Per-user accounts, real Unix accounts; alice, bob and carol on logins of this file's own."""
    try:
        yield from pinned_aggregate(request.param, tmp_path, pki, LOGINS)
    finally:
        for login in LOGINS.values():
            (LOCK_DIR / f"{login}.lock").unlink(missing_ok=True)


# -- 1. line breaks Python sees and sshd does not ----------------------------------------------------------------------
CONTROL = sorted(LINE_BREAKS | {"\x00", "\x01", "\x1b", "\x1f", "\x7f", "\x80", "\x9f", "\udcf6"})


@pytest.mark.parametrize("character", CONTROL, ids=[f"U+{ord(character):04X}" for character in CONTROL])
def test_a_key_holding_a_control_or_line_break_character_is_refused_naming_it(character: str) -> None:
    key = ssh_key("alice") + character + END.format(slice_urn=SLICE_A) + character + ssh_key("carol")
    assert not is_ssh_public_key(key)
    message = refusal_of([{"urn": USER, "keys": [key]}])
    assert "geni_users[0].keys[0] is not an SSH public key" in message
    assert f"U+{ord(character):04X}" in message
    with pytest.raises(BadArgs, match=f"U\\+{ord(character):04X}"):
        record_fields({"hrn": "testbed.alice", "type": "user", "keys": [key]}, "record")


def test_a_comment_of_printable_characters_is_kept() -> None:
    key = ssh_key("Björn’s laptop\u00a0(2026) ☃")
    assert ssh_public_key(" " + key + "\n") == key


def test_authorized_keys_is_split_at_line_feeds_only() -> None:
    """A file holding a key with U+001C in its block (a key taken before the fix): the whole line is in the block,
    and goes with it; the user's own lines (one ending in CR LF) stay."""
    smuggled = ssh_key("alice") + "\x1c" + END.format(slice_urn=SLICE_A) + "\x1c" + ssh_key("carol")
    text = replace_block(ssh_key("own") + "\r\n", SLICE_A, [smuggled])
    text = replace_block(text, SLICE_B, [ssh_key("bob")])  # another slice's write reads and writes the file again
    assert block_keys(text, SLICE_A) == (smuggled,)
    left = replace_block(text, SLICE_A, [])
    assert "carol" not in left
    assert left.split("\n")[0] == ssh_key("own")
    assert block_keys(left, SLICE_B) == (ssh_key("bob"),)


@pytest.mark.parametrize("call", ["Provision", "geni_update_users"])
def test_a_member_cannot_smuggle_a_key_into_another_members_login_with_a_line_break(
    call: str, aggregate: Aggregate, pki: DemoPki, sshd: int, tmp_path: Path
) -> None:
    """carol sends alice's registered key with carol's own after a U+001C and a fake end marker: refused (1), and
    carol's key never opens alice's login (it did after two geni_update_users, and stayed after Delete)."""
    alices, carols = user_key(tmp_path, "alice"), user_key(tmp_path, "carol")
    Member(aggregate, pki, "alice").allocate_and_provision([{"urn": urn_of(pki, "alice"), "keys": [public(alices)]}])
    smuggled = " ".join(public(alices).split()[:2]) + " alice\x1c" + END.format(slice_urn=pki.slice_urn)
    smuggled += "\x1c" + public(carols)
    everyone = [
        {"urn": urn_of(pki, "alice"), "keys": [smuggled]},
        {"urn": urn_of(pki, "carol"), "keys": [public(carols)]},
    ]
    carol = Member(aggregate, pki, "carol")
    for _ in range(2):
        if call == "Provision":
            options = {"geni_rspec_version": GENI_V3, "geni_users": everyone}
            answer = carol.v3(carol.context, "Provision", ([pki.slice_urn], carol.credentials, options))
        else:
            options = {"geni_users": everyone}
            answer = carol.v3(
                carol.context,
                "PerformOperationalAction",
                ([pki.slice_urn], carol.credentials, "geni_update_users", options),
            )
        assert answer["code"]["geni_code"] == BADARGS, answer["output"]
        assert "U+001C" in answer["output"]
    assert ssh_as("akh_alice", carols, sshd).returncode != 0, "carol's key opens alice's login"
    assert ssh_as("akh_alice", alices, sshd).returncode == 0
    keys_file = Path(pwd.getpwnam("akh_alice").pw_dir) / ".ssh" / "authorized_keys"
    assert "carol" not in keys_file.read_text()


# -- 2. bytes that are not UTF-8 in a member's own file ---------------------------------------------------------------
class Clock:
    """The aggregate's clock, moved ahead by the test (the lease ends without waiting)."""

    def __init__(self) -> None:
        self.ahead = timedelta()

    def __call__(self) -> datetime:
        return utcnow() + self.ahead


def test_a_members_own_latin1_comment_fails_no_call_and_the_lease_end_takes_every_key(
    aggregate: Aggregate, pki: DemoPki, sshd: int, tmp_path: Path
) -> None:
    """bob's own authorized_keys holds a Latin-1 comment: alice's geni_update_users goes through (it answered 5), and
    at the lease's end the slice's keys leave every login (they stayed in all of them); bob's line is kept byte for
    byte."""
    clock = Clock()
    aggregate.clock = aggregate.bookings.clock = clock
    alices, alices2, bobs = user_key(tmp_path, "alice"), user_key(tmp_path, "alice2"), user_key(tmp_path, "bob")
    aggregate.records.add(Record(pki.users["bob"].hrn, "user", urn_of(pki, "bob"), "", keys=(public(bobs),)))
    alice = Member(aggregate, pki, "alice")
    everyone = [
        {"urn": urn_of(pki, "alice"), "keys": [public(alices)]},
        {"urn": urn_of(pki, "bob"), "keys": [public(bobs)]},
    ]
    alice.allocate_and_provision(everyone)
    bobs_file = Path(pwd.getpwnam("akh_bob").pw_dir) / ".ssh" / "authorized_keys"
    own_line = " ".join(public(bobs).split()[:2]).encode() + b" Bj\xf6rn's laptop\n"
    with open(bobs_file, "ab") as out:  # (bob's own file: what he writes there is his business)
        out.write(own_line)
    everyone[0]["keys"].append(public(alices2))
    alice.update_users(everyone)
    assert ssh_as("akh_alice", alices2, sshd).returncode == 0
    assert own_line in bobs_file.read_bytes()
    (lease,) = aggregate.bookings.leases(slice_urn=pki.slice_urn)
    clock.ahead = lease.end - utcnow() + timedelta(minutes=5)
    assert aggregate.retire_ended() == 1
    assert ssh_as("akh_alice", alices, sshd).returncode != 0, "alice's key outlived the lease"
    assert UnixAccounts().slice_keys("akh_alice", pki.slice_urn) == []
    assert UnixAccounts().slice_keys("akh_bob", pki.slice_urn) == []
    assert bobs_file.read_bytes() == own_line, "bob's own line was changed"
    assert ssh_as("akh_bob", bobs, sshd).returncode == 0, "bob's own key, his own line, still opens his login"


@pytest.fixture
def two_logins() -> Iterator[UnixAccounts]:
    """akh_alice and akh_bob, real accounts with a block of slice A each; removed at the end."""
    logins = ["akh_alice", "akh_bob"]
    for login in logins:
        subprocess.run(["userdel", "-r", login], capture_output=True, check=False)
    accounts = UnixAccounts()
    accounts.set_slice_keys([LocalAccount(login, (), (ssh_key(login),)) for login in logins], SLICE_A)
    try:
        yield accounts
    finally:
        for login in logins:
            subprocess.run(["userdel", "-r", login], capture_output=True, check=False)
            (LOCK_DIR / f"{login}.lock").unlink(missing_ok=True)


def test_a_login_that_cannot_be_rewritten_keeps_no_key_in_the_others_at_the_lease_end(
    two_logins: UnixAccounts, caplog: pytest.LogCaptureFixture
) -> None:
    """bob's home is gone (a failure of his login alone): the end of the slice still takes alice's keys, logs bob's
    (it raised at bob, before alice was reached, and a lease's end does not come again)."""
    shutil.rmtree(pwd.getpwnam("akh_bob").pw_dir)
    caplog.set_level(logging.ERROR, logger="sfa_omf.testbed.unix_accounts")
    two_logins.remove_slice_keys(["akh_bob", "akh_alice"], SLICE_A)
    assert two_logins.slice_keys("akh_alice", SLICE_A) == []
    assert any("akh_bob keeps its block" in record.getMessage() for record in caplog.records)


def test_a_login_that_cannot_be_rewritten_fails_only_the_calls_that_require_it(two_logins: UnixAccounts) -> None:
    shutil.rmtree(pwd.getpwnam("akh_bob").pw_dir)
    accounts = [LocalAccount(login, (), (ssh_key(login), ssh_key("new"))) for login in ("akh_bob", "akh_alice")]
    two_logins.set_slice_keys(accounts, SLICE_A, required_logins={"akh_alice"})
    assert two_logins.slice_keys("akh_alice", SLICE_A) == [ssh_key("akh_alice"), ssh_key("new")]
    with pytest.raises(FileNotFoundError):
        two_logins.set_slice_keys(accounts, SLICE_A, required_logins={"akh_bob"})


def test_putting_keys_back_never_raises(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """restore_slice_keys runs while a call fails (its error is the one to report): any failure is logged."""

    def undecodable(*args: Any, **kwargs: Any) -> Any:
        raise UnicodeDecodeError("utf-8", b"\xf6", 0, 1, "invalid start byte")

    monkeypatch.setattr(UnixAccounts, "_rewrite", undecodable)
    caplog.set_level(logging.WARNING, logger="sfa_omf.testbed.unix_accounts")
    UnixAccounts().restore_slice_keys([WrittenKeys("nobody", (), (ssh_key("x"),))], SLICE_A)
    assert any("nobody keeps the keys of a failed call" in record.getMessage() for record in caplog.records)


# -- 3. key types sshd refuses ----------------------------------------------------------------------------------------
def certificate(tmp_path: Path) -> str:
    """An ed25519 user certificate made by ssh-keygen (-s): OpenSSH reads it, sshd takes none in authorized_keys."""
    ca, user = tmp_path / "ca", tmp_path / "certified"
    for path in (ca, user):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    subprocess.run(["ssh-keygen", "-q", "-s", str(ca), "-I", "alice", "-n", "alice", f"{user}.pub"], check=True)
    return Path(f"{user}-cert.pub").read_text().strip()


UNUSABLE: list[tuple[Callable[[Path], str], str]] = [
    (lambda tmp_path: dsa_key(), "DSA (ssh-dss) key, which OpenSSH 9 refuses"),
    (lambda tmp_path: rsa_key_of(768), "RSA key of 768 bits"),
    (lambda tmp_path: rsa_key_of(1023), "RSA key of 1023 bits"),
    (certificate, "is an OpenSSH certificate"),
    (lambda tmp_path: _line("ssh-foo", _string(b"ssh-foo") + _string(b"x")), "its type 'ssh-foo' is a type"),
    (
        lambda tmp_path: _line("ecdsa-sha2-nistp999", _string(b"ecdsa-sha2-nistp999")),
        "its type 'ecdsa-sha2-nistp999' is a type",
    ),
    (lambda tmp_path: _line("ssh-ed25519", _string(b"ssh-ed25519") + _string(b"short")), "not a well-formed key"),
    (lambda tmp_path: sk_ed25519_key(trailing=b"more"), "not a well-formed key of the type sk-ssh-ed25519"),
    (lambda tmp_path: sk_ecdsa_key(point=b"\x04" + bytes(64)), "not a well-formed key of the type sk-ecdsa"),
]
UNUSABLE_IDS = [
    "dsa",
    "rsa768",
    "rsa1023",
    "certificate",
    "made-up",
    "made-up-curve",
    "bad-ed25519",
    "sk-ed25519-trailing",
    "sk-ecdsa-point",
]


@pytest.mark.parametrize(("make", "words"), UNUSABLE, ids=UNUSABLE_IDS)
def test_the_registry_refuses_keys_sshd_refuses_saying_what_is_taken(
    make: Callable[[Path], str], words: str, tmp_path: Path
) -> None:
    """A person registering a key can act on the refusal: it names what is wrong and what to send instead."""
    with pytest.raises(BadArgs) as refusal:
        record_fields({"hrn": "testbed.alice", "type": "user", "keys": [ssh_key("good"), make(tmp_path)]}, "record")
    assert "keys[1] is not an SSH public key" in refusal.value.message and words in refusal.value.message
    assert "ssh-ed25519" in refusal.value.message  # what to send instead


@pytest.mark.parametrize(("make", "words"), UNUSABLE, ids=UNUSABLE_IDS)
def test_the_am_api_leaves_keys_sshd_refuses_out_saying_whose_and_why(
    make: Callable[[Path], str], words: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """geni_users with such a key next to a good one: the call's users keep the good key only, and the log names the
    user, the key's place and why (the whole call was refused, 1)."""
    caplog.set_level(logging.WARNING, logger="sfa_omf.am")
    unusable = make(tmp_path)
    checked = contract.options({"geni_users": [{"urn": USER, "keys": [ssh_key("good"), unusable]}]}, "options")
    assert checked["geni_users"] == [{"urn": USER, "keys": [ssh_key("good")]}]
    (record,) = [record for record in caplog.records if "left out" in record.getMessage()]
    assert USER in record.getMessage() and "geni_users[0].keys[1]" in record.getMessage()
    assert words in record.getMessage()


@pytest.mark.parametrize(
    "key",
    [
        'command="/bin/sh" ' + ssh_key("x"),
        "restrict " + ssh_key("x"),
        "no-pty,no-port-forwarding " + ssh_key("x"),
        'from="*" ' + ssh_key("x"),
        "ssh-ed25519 not-base64",
        "ssh-ed25519 " + base64.b64encode(_string(b"ssh-rsa") + _string(b"x")).decode(),
        "ssh-dss",
    ],
    ids=["command", "restrict", "no-pty", "from", "not-base64", "other-type-blob", "no-blob"],
)
def test_the_am_api_still_refuses_what_is_not_a_key_of_one_line(key: str) -> None:
    """Options or text that is no key at all are refused (1) even next to a good key: only harmless keys sshd would
    not use are left out."""
    assert "keys[1] is not an SSH public key" in refusal_of([{"urn": USER, "keys": [ssh_key("good"), key]}])


@pytest.mark.parametrize(
    ("kind", "bits"),
    [("ed25519", None), ("ecdsa", 256), ("ecdsa", 384), ("ecdsa", 521), ("rsa", 1024), ("rsa", 2048)],
)
def test_keys_sshd_takes_are_taken(kind: str, bits: int | None, tmp_path: Path) -> None:
    key = keygen(tmp_path, kind, bits)
    assert ssh_public_key(key) == key


@pytest.mark.parametrize("make", [sk_ed25519_key, sk_ecdsa_key], ids=["sk-ed25519", "sk-ecdsa"])
def test_security_key_keys_are_taken(make: Any, tmp_path: Path) -> None:
    key = make()
    assert openssh_reads(tmp_path, key), "the hand-made blob is not what OpenSSH reads"
    assert ssh_public_key(key) == key


def test_a_members_dsa_key_next_to_the_callers_ed25519_key_fails_nothing(
    aggregate: Aggregate, pki: DemoPki, sshd: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """omni sends every key the clearinghouse holds: alice's old DSA key next to her ed25519 one, bob's DSA key only.
    Provision succeeds (it answered 1, BADARGS, and provisioned nothing); alice's ed25519 key opens her login, no DSA
    key is written anywhere, and the log says whose keys were left out."""
    caplog.set_level(logging.WARNING, logger="sfa_omf.am")
    alices, alices_dsa, bobs_dsa = user_key(tmp_path, "alice"), tmp_path / "alice_dsa", tmp_path / "bob_dsa"
    for dsa in (alices_dsa, bobs_dsa):
        subprocess.run(["ssh-keygen", "-q", "-t", "dsa", "-N", "", "-f", str(dsa)], check=True)
    alice = Member(aggregate, pki, "alice")
    alice.allocate_and_provision(
        [
            {"urn": urn_of(pki, "alice"), "keys": [public(alices_dsa), public(alices)]},
            {"urn": urn_of(pki, "bob"), "keys": [public(bobs_dsa)]},
        ]
    )
    assert {lease.state for lease in aggregate.bookings.leases(slice_urn=pki.slice_urn)} == {"provisioned"}
    assert ssh_as("akh_alice", alices, sshd).returncode == 0
    keys_file = Path(pwd.getpwnam("akh_alice").pw_dir) / ".ssh" / "authorized_keys"
    assert public(alices) in keys_file.read_text() and "ssh-dss" not in keys_file.read_text()
    try:
        bobs_file: Path | None = Path(pwd.getpwnam("akh_bob").pw_dir) / ".ssh" / "authorized_keys"
    except KeyError:
        bobs_file = None  # no key of bob's to write: no login made for him
    assert bobs_file is None or not bobs_file.exists() or "ssh-dss" not in bobs_file.read_text()
    left_out = [record.getMessage() for record in caplog.records if "left out" in record.getMessage()]
    assert any(urn_of(pki, "alice") in message and "DSA" in message for message in left_out)
    assert any(urn_of(pki, "bob") in message and "DSA" in message for message in left_out)


# -- 4. tabs between a key's parts ------------------------------------------------------------------------------------
def test_a_key_separated_by_tabs_is_taken_by_the_registry_and_the_am_api() -> None:
    kind, blob, _ = ssh_key("x").split(" ")
    for key in (f"{kind}\t{blob}\tlaptop", f"{kind} {blob} alice\tat\twork", f"{kind}\t\t{blob}"):
        assert ssh_public_key(key) == key
        checked = contract.options({"geni_users": [{"urn": USER, "keys": [key]}]}, "options")
        assert checked["geni_users"][0]["keys"] == [key]
        assert record_fields({"hrn": "testbed.alice", "type": "user", "keys": [key]}, "record")["keys"] == [key]


def test_a_key_separated_by_tabs_is_written_and_opens_the_login(
    aggregate: Aggregate, pki: DemoPki, sshd: int, tmp_path: Path
) -> None:
    """ "ssh-ed25519<TAB>AAAA...<TAB>alice<TAB>laptop": Provision writes it as sent and sshd takes it (it was refused,
    U+0009)."""
    alices = user_key(tmp_path, "alice")
    kind, blob = public(alices).split()[:2]
    tabbed = f"{kind}\t{blob}\talice\tlaptop"
    Member(aggregate, pki, "alice").allocate_and_provision([{"urn": urn_of(pki, "alice"), "keys": [tabbed]}])
    keys_file = Path(pwd.getpwnam("akh_alice").pw_dir) / ".ssh" / "authorized_keys"
    assert tabbed + "\n" in keys_file.read_text()
    assert ssh_as("akh_alice", alices, sshd).returncode == 0
