"""Update with a user's keys re-issues their GID only when it follows their SSH key, writes gids/ and the record
together or neither, and two at once end with gids/ as the record; over real TLS, on SQLite and a real PostgreSQL.

Before: a user whose certificate is their own (a gid given at Register with reg-keys, sfa-omf user add --public-key
PEM --ssh-key x.pub) was re-keyed to their first ssh-rsa login key by an Update sending their record back as Resolve
shows it, or rotating a login key, and could call no more (22). A re-keying Update on a full gids/ answered an
internal error yet re-keyed the record (gids/ still held the earlier key), and two re-keys at once could leave gids/
with the other key than the record (its file was re-read and written after the commit, with no lock)."""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
import xmlrpc.client
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from sfa_omf.config import read_config
from sfa_omf.registry import admin as admin_module
from sfa_omf.registry.admin import RegistryAdmin
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.trust.gid import GidChain, load_gid_chain
from sfa_omf.trust.pki import create_gid
from sfa_omf.xrn import hrn_to_urn
from tests.full_disk import fill, small_tmpfs
from tests.registry.conftest import Registry
from tests.registry.test_register_user_keys import Holder
from tests.sshkeys import ssh_key
from tests.tls_harness import proxy

#: How long a step waits for another thread at most: never reached unless the test is broken (no timing is measured).
STUCK_S = 120


def _gid_file(registry: Registry, hrn: str) -> str:
    """What gids/ holds for ``hrn`` (what a start imports and authority renew re-issues)."""
    return (registry.directory / "gids" / f"{hrn}.gid").read_text()


def _locked(directory: Path) -> bool:
    """Whether another holds the lock of ``directory`` (flock, as issued_lock takes it in every process)."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)
    return False


def _gid(registry: Registry, hrn: str) -> str:
    record = registry.records.get(hrn)
    assert record is not None
    return record.gid


def test_a_user_whose_certificate_is_their_own_keeps_it_whatever_login_keys_an_update_gives(
    registry: Registry,
    tmp_path: Path,
) -> None:
    """gina is registered with her certificate (gid) and an ssh-rsa login key, hal by sfa-omf user add --public-key
    PEM --ssh-key x.pub: their GIDs certify keys they hold that are not their first ssh-rsa key. Their record sent back
    as Resolve shows it, and sfi.py update -k with a rotated login key (by them, by a PI), change the keys alone: the
    GID and gids/ stay, and they still call with their key. (Before: re-keyed to the login key, then 22.)"""
    auth = [registry.auth_cred]
    gina, login, rotated = Holder(tmp_path, "gina"), Holder(tmp_path, "gina_ssh"), Holder(tmp_path, "gina_new")
    certificate = create_gid(hrn_to_urn("tb.gina", "user"), gina.key.public_key(), gina.key).pem()
    registry.alice.Register(
        {"hrn": "tb.gina", "type": "user", "email": "g@example.org", "gid": certificate, "reg-keys": [login.line]},
        auth,
    )
    hal, hal_login = Holder(tmp_path, "hal"), Holder(tmp_path, "hal_ssh")
    directory = str(registry.directory)
    admin = RegistryAdmin(
        LocalAuthority.load(directory, "tb"), registry.records, read_config(f"{directory}/sfa-omf.conf")
    )
    admin.add_user("hal", "hal@example.org", ssh_keys=[hal_login.line], public_key=hal.key.public_key())

    for holder, hrn, other in ((gina, "tb.gina", login), (hal, "tb.hal", hal_login)):
        gid = _gid(registry, hrn)
        assert holder.certifies(gid) and not other.certifies(gid)
        user, credential, _ = holder.bootstrap(registry.url, hrn)
        (shown,) = user.Resolve(hrn, [credential])
        assert shown["reg-keys"] == [other.line]

        assert user.Update(shown, [credential]) == 1  # sent back as shown (sfi.py update with the record it read)
        assert user.Update({"hrn": hrn, "reg-keys": [rotated.line]}, [credential]) == 1  # sfi.py update -k new.pub
        assert registry.alice.Update({"hrn": hrn, "type": "user", "reg-keys": [other.line, rotated.line]}, auth) == 1

        assert _gid(registry, hrn) == gid and _gid_file(registry, hrn) == gid
        (me,) = user.Resolve(hrn, [credential])  # the same key, the same credential: still theirs
        assert me["gid"] == gid and me["reg-keys"] == [other.line, rotated.line]
        assert user.GetCredential(credential, hrn, "user").startswith("<?xml")


def test_a_user_registered_from_their_ssh_key_who_rotates_it_gets_the_gid_of_the_new_key(
    registry: Registry,
    tmp_path: Path,
) -> None:
    """sfi.py register -k dave.pub, then sfi.py update -k laptop.pub: the GID followed the first ssh-rsa key, so it
    follows it again (SFA's Update); the earlier key is refused (22), the new one calls, gids/ holds the new GID."""
    dave, laptop = Holder(tmp_path, "dave"), Holder(tmp_path, "laptop")
    registry.alice.Register({"hrn": "tb.dave", "type": "user", "reg-keys": [dave.line]}, [registry.auth_cred])
    user, credential, _ = dave.bootstrap(registry.url, "tb.dave")

    assert user.Update({"hrn": "tb.dave", "reg-keys": [laptop.line]}, [credential]) == 1

    assert laptop.certifies(_gid(registry, "tb.dave")) and _gid_file(registry, "tb.dave") == _gid(registry, "tb.dave")
    assert registry.fault(user.Resolve, "tb.dave", [credential]).faultCode == 22
    laptop.bootstrap(registry.url, "tb.dave")


def test_a_user_who_holds_their_key_pair_keeps_their_gid_when_given_a_first_ssh_rsa_key(
    registry: Registry,
    tmp_path: Path,
) -> None:
    """Users with no ssh-rsa key on record who hold the key their GID certifies: bob (sfa-omf init's demo user: his key
    pair in his sfi.py folder, an ed25519 login key), ivy (registered with her certificate and no key), jo (sfa-omf
    user add --public-key PEM with an ed25519 login key). An Update giving each an ssh-rsa key, by a PI or by
    themselves, stores it as a login key: the GID and gids/ stay, and they still call with their key. (Before: their
    GID was re-issued for that key and their own key refused, 22: nothing told them from a user registered without a
    key, whom the same Update repairs.) A record stored before the registry kept whether its key is held (migration
    0036: None) follows the earlier rule, re-keyed."""
    auth = [registry.auth_cred]
    desk, ivy, jo = Holder(tmp_path, "desk"), Holder(tmp_path, "ivy"), Holder(tmp_path, "jo")
    certificate = create_gid(hrn_to_urn("tb.ivy", "user"), ivy.key.public_key(), ivy.key).pem()
    registry.alice.Register({"hrn": "tb.ivy", "type": "user", "gid": certificate}, auth)
    directory = str(registry.directory)
    admin = RegistryAdmin(
        LocalAuthority.load(directory, "tb"), registry.records, read_config(f"{directory}/sfa-omf.conf")
    )
    admin.add_user("jo", ssh_keys=[ssh_key("jo@laptop")], public_key=jo.key.public_key())
    bob_gid = _gid(registry, "tb.bob")
    assert registry.records.get("tb.bob").keys[0].startswith("ssh-ed25519 ")  # type: ignore[union-attr]

    assert registry.alice.Update({"hrn": "tb.bob", "type": "user", "reg-keys": [desk.line]}, auth) == 1
    assert _gid(registry, "tb.bob") == bob_gid and _gid_file(registry, "tb.bob") == bob_gid
    (me,) = registry.bob.Resolve("tb.bob", [registry.bob_cred])
    assert me["reg-keys"] == [desk.line]
    for holder, hrn in ((ivy, "tb.ivy"), (jo, "tb.jo")):
        user, credential, gid = holder.bootstrap(registry.url, hrn)
        assert holder.certifies(gid)
        assert user.Update({"hrn": hrn, "reg-keys": [desk.line]}, [credential]) == 1  # sfi.py update -k desk.pub
        assert _gid(registry, hrn) == gid and _gid_file(registry, hrn) == gid
        (me,) = user.Resolve(hrn, [credential])  # the same key, the same credential: still theirs
        assert me["reg-keys"] == [desk.line]

    # A user recorded before (key_held None): re-keyed by the first Update giving an ssh-rsa key, as before.
    kim = Holder(tmp_path, "kim")
    certificate = create_gid(hrn_to_urn("tb.kim", "user"), kim.key.public_key(), kim.key).pem()
    registry.alice.Register({"hrn": "tb.kim", "type": "user", "gid": certificate}, auth)
    with registry.records.database.write() as session:
        session.execute(text("UPDATE registry_record SET key_held = NULL WHERE hrn = 'tb.kim'"))
    assert registry.alice.Update({"hrn": "tb.kim", "type": "user", "reg-keys": [desk.line]}, auth) == 1
    assert desk.certifies(_gid(registry, "tb.kim")) and registry.records.get("tb.kim").key_held  # type: ignore[union-attr]
    assert registry.fault(kim.bootstrap, registry.url, "tb.kim").faultCode == 22


class _GidsOnFullDisk(AbstractContextManager["_GidsOnFullDisk"]):
    """The registry's gids/ moved onto a small tmpfs, filled up (the kernel answers ENOSPC); put back after."""

    def __init__(self, registry: Registry, tmp_path: Path) -> None:
        self.gids = registry.directory / "gids"
        self.tmp_path = tmp_path

    def __enter__(self) -> _GidsOnFullDisk:
        self._mount = small_tmpfs(self.tmp_path / "gids-mount", size_kib=1024, inodes=256)
        self.mounted = self._mount.__enter__()
        shutil.copytree(self.gids, self.mounted / "gids")
        shutil.rmtree(self.gids)
        self.gids.symlink_to(self.mounted / "gids")
        self.filler = fill(self.mounted)
        return self

    def __exit__(self, *exc: object) -> None:
        self.gids.unlink()
        shutil.copytree(self.mounted / "gids", self.gids)
        self._mount.__exit__(None, None, None)


def test_a_re_key_on_a_full_gids_directory_changes_nothing(registry: Registry, tmp_path: Path) -> None:
    """gids/ on a full file system: the re-keying Update answers 5 saying nothing was changed; the record, its keys and
    gids/ are as they were, and dave still calls with his key. With room again the same Update re-keys him. (Before:
    an internal error, yet the record re-keyed, dave refused, and gids/ still holding his earlier key.)"""
    dave, laptop = Holder(tmp_path, "dave"), Holder(tmp_path, "laptop")
    auth = [registry.auth_cred]
    registry.alice.Register({"hrn": "tb.dave", "type": "user", "reg-keys": [dave.line]}, auth)
    user, credential, gid = dave.bootstrap(registry.url, "tb.dave")
    update = {"hrn": "tb.dave", "type": "user", "reg-keys": [laptop.line], "email": "dave@new.example.org"}

    with _GidsOnFullDisk(registry, tmp_path) as full:
        before = registry.written()

        fault = registry.fault(registry.alice.Update, update, auth)

        assert fault.faultCode == 5, fault.faultString
        assert "could not store the new certificate of tb.dave" in fault.faultString
        assert "nothing was changed" in fault.faultString
        assert registry.written() == before  # (no temporary file left in gids/ either)
        assert _gid_file(registry, "tb.dave") == gid
        (me,) = user.Resolve("tb.dave", [credential])
        assert me["gid"] == gid and me["reg-keys"] == [dave.line] and me["email"] == ""

        full.filler.unlink()  # room again
        assert registry.alice.Update(update, auth) == 1
    assert laptop.certifies(_gid(registry, "tb.dave")) and _gid_file(registry, "tb.dave") == _gid(registry, "tb.dave")
    assert registry.fault(user.Resolve, "tb.dave", [credential]).faultCode == 22


@pytest.fixture
def refused_record_writes(registry: Registry) -> Iterator[Callable[[str], None]]:
    """A real trigger of the database refusing every change to one record (as a failing commit would): the function
    installs it for an HRN; dropped after."""
    engine = registry.database.engine

    def refuse(hrn: str) -> None:
        assert "'" not in hrn
        with engine.begin() as connection:
            if registry.database.is_sqlite:
                connection.execute(
                    text(
                        "CREATE TRIGGER refuse_update BEFORE UPDATE ON registry_record "
                        f"WHEN OLD.hrn = '{hrn}' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                    )
                )
            else:
                connection.execute(
                    text(
                        "CREATE FUNCTION refuse_update() RETURNS trigger LANGUAGE plpgsql AS "
                        "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$"
                    )
                )
                connection.execute(
                    text(
                        "CREATE TRIGGER refuse_update BEFORE UPDATE ON registry_record FOR EACH ROW "
                        f"WHEN (OLD.hrn = '{hrn}') EXECUTE FUNCTION refuse_update()"
                    )
                )

    yield refuse
    with engine.begin() as connection:
        if registry.database.is_sqlite:
            connection.execute(text("DROP TRIGGER IF EXISTS refuse_update"))
        else:
            connection.execute(text("DROP TRIGGER IF EXISTS refuse_update ON registry_record"))
            connection.execute(text("DROP FUNCTION IF EXISTS refuse_update()"))


def test_a_re_key_the_database_refuses_leaves_gids_as_it_was(
    registry: Registry,
    tmp_path: Path,
    refused_record_writes: Callable[[str], None],
) -> None:
    """The record's write fails after gids/ was written (the database refuses it): the GID file is put back, so the
    failing call leaves gids/ and the record as they were, and dave still calls."""
    dave, laptop = Holder(tmp_path, "dave"), Holder(tmp_path, "laptop")
    auth = [registry.auth_cred]
    registry.alice.Register({"hrn": "tb.dave", "type": "user", "reg-keys": [dave.line]}, auth)
    user, credential, gid = dave.bootstrap(registry.url, "tb.dave")
    refused_record_writes("tb.dave")
    before = registry.written()

    registry.fault(registry.alice.Update, {"hrn": "tb.dave", "type": "user", "reg-keys": [laptop.line]}, auth)

    assert registry.written() == before
    assert _gid_file(registry, "tb.dave") == gid
    assert user.Resolve("tb.dave", [credential])[0]["gid"] == gid


@pytest.mark.parametrize("held", ["before", "after"])
def test_two_re_keys_at_once_end_with_gids_as_the_record(
    registry: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    held: str,
) -> None:
    """Two Updates re-keying dave at once (two connections, two server threads), the first held just ``held`` its
    write of gids/ until the second has come as far as it may: answered, or waiting for the lock of gids/ the first
    holds while it writes gids/ and the record. gids/ ends certifying the key the record does, the second's.
    (Before: the first, held before its write of gids/ (made after its commit), wrote its key there after the second
    had written the record and gids/; and with gids/ written before the commit but no lock, the first held after its
    write committed its key after the second had written gids/.)"""
    a, b, c = Holder(tmp_path, "a"), Holder(tmp_path, "b"), Holder(tmp_path, "c")
    auth = [registry.auth_cred]
    registry.alice.Register({"hrn": "tb.dave", "type": "user", "reg-keys": [c.line]}, auth)
    first_in, second_came = threading.Event(), threading.Event()
    replace_issued = LocalAuthority.replace_issued
    issued_lock = getattr(LocalAuthority, "issued_lock", None)

    def held_replace_issued(self: LocalAuthority, hrn: str, chain: GidChain) -> Any:
        if first_in.is_set():
            return replace_issued(self, hrn, chain)
        first_in.set()
        if held == "before":
            assert second_came.wait(STUCK_S), "the second Update never came"
            return replace_issued(self, hrn, chain)
        done = replace_issued(self, hrn, chain)
        assert second_came.wait(STUCK_S), "the second Update never came"
        return done

    def observed_issued_lock(self: LocalAuthority) -> Any:
        assert issued_lock is not None
        if first_in.is_set() and _locked(registry.directory / "gids"):
            second_came.set()  # (it waits here for the lock the first holds)
        return issued_lock(self)

    monkeypatch.setattr(LocalAuthority, "replace_issued", held_replace_issued)
    monkeypatch.setattr(LocalAuthority, "issued_lock", observed_issued_lock, raising=False)
    sfi = registry.directory / "users" / "alice" / "sfi"
    alice2: Any = proxy(registry.url, str(sfi / "tb.alice.user.gid"), str(sfi / "tb.alice.pkey"))
    answers: dict[str, Any] = {}

    def update(caller: Any, holder: Holder) -> None:
        try:
            answers[holder.name] = caller.Update({"hrn": "tb.dave", "type": "user", "reg-keys": [holder.line]}, auth)
        except xmlrpc.client.Fault as fault:
            answers[holder.name] = fault
        finally:
            if holder is b:
                second_came.set()

    first = threading.Thread(target=update, args=(registry.alice, a))
    first.start()
    assert first_in.wait(STUCK_S), "the first Update never wrote gids/"
    second = threading.Thread(target=update, args=(alice2, b))
    second.start()
    first.join(STUCK_S)
    second.join(STUCK_S)

    assert answers == {"a": 1, "b": 1}
    record, issued = _gid(registry, "tb.dave"), _gid_file(registry, "tb.dave")
    assert load_gid_chain(issued)[0].key_id == load_gid_chain(record)[0].key_id
    assert b.certifies(record)  # the second wrote last, the record and gids/ alike


def test_a_user_renewal_racing_a_re_key_does_not_put_the_earlier_key_back(
    registry: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`sfa-omf user renew dave` (the earlier key, read) while dave's Update gives him another ssh-rsa key: the
    renewal holds the lock of gids/ from its read to its writes, so the Update's re-key comes after it and stands.
    (Before: the renewal, held between its read and its writes, wrote the earlier key's GID over the record and gids/
    the Update had just re-keyed: dave's new key refused, the earlier one back.)"""
    dave, laptop = Holder(tmp_path, "dave"), Holder(tmp_path, "laptop")
    registry.alice.Register({"hrn": "tb.dave", "type": "user", "reg-keys": [dave.line]}, [registry.auth_cred])
    user, credential, _ = dave.bootstrap(registry.url, "tb.dave")
    directory = str(registry.directory)
    admin = RegistryAdmin(
        LocalAuthority.load(directory, "tb"), registry.records, read_config(f"{directory}/sfa-omf.conf")
    )
    renewal_read, update_came = threading.Event(), threading.Event()
    real_renew_gid = admin_module.renew_gid

    def held_renew_gid(*args: Any, **kwargs: Any) -> Any:
        renewal_read.set()  # (its record read: the earlier key)
        # With the lock held, the Update waits for it and never comes meanwhile: the wait ends at STUCK_S/40.
        update_came.wait(STUCK_S / 40)
        return real_renew_gid(*args, **kwargs)

    monkeypatch.setattr(admin_module, "renew_gid", held_renew_gid)
    renewal = threading.Thread(target=admin.renew_user, args=("dave",))
    renewal.start()
    assert renewal_read.wait(STUCK_S), "the renewal never read dave's record"
    answers: list[Any] = []

    def update() -> None:
        answers.append(user.Update({"hrn": "tb.dave", "reg-keys": [laptop.line]}, [credential]))
        update_came.set()

    updating = threading.Thread(target=update)
    updating.start()
    renewal.join(STUCK_S)
    updating.join(STUCK_S)

    assert answers == [1]
    record = _gid(registry, "tb.dave")
    assert laptop.certifies(record), "the renewal put the earlier key back"
    assert _gid_file(registry, "tb.dave") == record
    laptop.bootstrap(registry.url, "tb.dave")
