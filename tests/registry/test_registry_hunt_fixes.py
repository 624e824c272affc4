"""The Registry API's answers to the defects a defect hunt found, over real TLS on SQLite and a real PostgreSQL:
a removed user leaves nothing behind for whoever takes the name next and their old credential stops working; a name
that would collide with another's URN, name a subdirectory or not fit the database is refused (fault 1) before
anything is written; a URN's type is the type required; authority and node records cannot be removed."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfa_omf.registry.accounts import Accounts
from sfa_omf.trust.pki import create_gid, new_private_key, private_key_pem
from tests.registry.conftest import Registry
from tests.sshkeys import ssh_key
from tests.tls_harness import proxy


@pytest.mark.usefixtures("register_again_at_once")  # the name registered again at once
def test_a_removed_user_leaves_nothing_to_whoever_takes_the_name_next(registry: Registry, tmp_path: Path) -> None:
    """Remove takes bob out of every slice's researchers and every authority's PIs at once; a new bob (another
    person, another key) inherits neither, and the old bob's credential no longer acts as anyone."""
    old_bob_slice_cred = registry.bob.GetCredential(registry.bob_cred, "tb.demo", "slice")
    assert old_bob_slice_cred.startswith("<?xml")
    accounts = Accounts(registry.database)
    old_bob_login = accounts.login_for("urn:publicid:IDN+tb+user+bob", "urn:publicid:IDN+tb+slice+demo")
    assert (registry.directory / "users" / "bob" / "sfi" / "tb.bob.pkey").exists()
    assert registry.alice.Remove("tb.bob", [registry.auth_cred], "user") == 1
    assert not (registry.directory / "users" / "bob").exists(), "the sfi.py directory init wrote for bob is left"
    (authority,) = registry.alice.Resolve("tb", [registry.alice_cred])
    (demo,) = registry.alice.Resolve("tb.demo", [registry.alice_cred])
    assert authority["reg-pis"] == ["tb.alice"]
    assert demo["reg-researchers"] == ["tb.alice"]

    # A different person is registered as tb.bob, with their own key.
    new_key = new_private_key()
    (tmp_path / "newbob.pkey").write_bytes(private_key_pem(new_key))
    certificate = create_gid("urn:publicid:IDN+tb+user+bob", new_key.public_key(), new_key)
    gid = registry.alice.Register({"hrn": "tb.bob", "type": "user", "gid": certificate.pem()}, [registry.auth_cred])
    (tmp_path / "newbob.gid").write_text(gid)
    new_bob = proxy(registry.url, str(tmp_path / "newbob.gid"), str(tmp_path / "newbob.pkey"))
    new_bob_cred = new_bob.GetSelfCredential(gid, "tb.bob", "user")
    assert registry.fault(new_bob.GetCredential, new_bob_cred, "tb", "authority").faultCode == 3
    assert registry.fault(new_bob.GetCredential, new_bob_cred, "tb.demo", "slice").faultCode == 3

    # The old bob still holds his key and his (unexpired) user credential: it names tb.bob, but not the key of the
    # tb.bob registered now, so every call that relies on it is refused (22: the credential is not the caller's).
    old_bob, old_cred = registry.bob, registry.bob_cred
    assert registry.fault(old_bob.Resolve, "tb.bob", [old_cred]).faultCode == 22
    assert registry.fault(old_bob.GetCredential, old_cred, "tb.demo", "slice").faultCode == 22
    assert registry.fault(old_bob.GetCredential, old_cred, "tb", "authority").faultCode == 22
    assert registry.fault(old_bob.Update, {"hrn": "tb.bob", "reg-keys": [ssh_key("old@x")]}, [old_cred]).faultCode == 22
    assert registry.records.get("tb.bob").keys == ()  # type: ignore[union-attr]
    # The new bob, with the registered key, is served as usual.
    (me,) = new_bob.Resolve("tb.bob", [new_bob_cred])
    assert me["gid"] == gid
    # ...with a local login of his own, not the removed bob's (his Unix account, home directory and files).
    new_bob_login = accounts.login_for("urn:publicid:IDN+tb+user+bob", "urn:publicid:IDN+tb+slice+demo")
    assert new_bob_login != old_bob_login


#: Records Register must refuse (fault 1), and why.
REFUSED_RECORDS: list[tuple[dict[str, str], str]] = [
    ({"hrn": "tb.x:y.carol", "type": "user"}, "':' would give it the URN of tb.x.y.carol"),
    ({"hrn": "tb.a+b.c", "type": "user"}, "'+' is the URN's separator"),
    ({"hrn": "tb.a/b", "type": "user"}, "'/' would make a subdirectory of gids/"),
    ({"hrn": "tb.a\nb", "type": "user"}, "a control character"),
    ({"hrn": "tb.a b", "type": "slice"}, "white space"),
    ({"hrn": "tb." + "a" * 257, "type": "user"}, "longer than a GID file name can be"),
    ({"hrn": "tb." + "é" * 150, "type": "user"}, "over 64 bytes of UTF-8 in a CN, over 200 in a file name"),
    ({"hrn": "tb.mailer", "type": "user", "email": "a" * 60 + "@" + "b" * 240 + ".org"}, "over 200 characters"),
    ({"hrn": "tb.mailer", "type": "user", "email": "josé@example.org"}, "not ASCII before the @"),
    ({"hrn": "tb.clash", "urn": "urn:publicid:IDN+tb+user+other", "type": "user"}, "hrn and urn disagree"),
    ({"urn": "urn:publicid:IDN+tb+slice+clash", "type": "user"}, "the URN names a slice, not a user"),
]


def test_register_refuses_names_and_addresses_it_cannot_hold_and_writes_nothing(registry: Registry) -> None:
    before = registry.written()
    for record, why in REFUSED_RECORDS:
        fault = registry.fault(registry.alice.Register, record, [registry.auth_cred])
        assert fault.faultCode == 1, (why, fault.faultString)
        assert registry.written() == before, why


def test_a_name_is_refused_unless_it_maps_to_its_own_urn_and_back(registry: Registry) -> None:
    """tb.x.y.carol registers; tb.x:y.carol, which would share its URN (and so its identity), does not."""
    registry.alice.Register({"hrn": "tb.x.y.carol", "type": "user"}, [registry.auth_cred])
    assert registry.records.get("tb.x.y.carol").urn == "urn:publicid:IDN+tb:x:y+user+carol"  # type: ignore[union-attr]
    assert registry.fault(registry.alice.Register, {"hrn": "tb.x:y.carol", "type": "user"}, [registry.auth_cred])
    assert registry.records.get("tb.x:y.carol") is None


def test_update_refuses_a_long_email_and_a_past_expiry(registry: Registry) -> None:
    before = registry.written()
    long_email = {"hrn": "tb.alice", "email": "a" * 60 + "@" + "b" * 240 + ".org"}
    assert registry.fault(registry.alice.Update, long_email, [registry.alice_cred]).faultCode == 1
    past = {"hrn": "tb.demo", "type": "slice", "expires": "2020-01-01T00:00:00Z"}
    assert registry.fault(registry.alice.Update, past, [registry.auth_cred]).faultCode == 1
    assert registry.written() == before
    future = {"hrn": "tb.demo", "type": "slice", "expires": "2040-01-01T00:00:00Z"}
    assert registry.alice.Update(future, [registry.auth_cred]) == 1


def test_a_urn_names_a_record_of_its_own_type_only(registry: Registry) -> None:
    """urn:...+slice+bob names the slice tb.bob, which does not exist: not the user tb.bob."""
    before = registry.written()
    slice_urn = "urn:publicid:IDN+tb+slice+bob"
    assert registry.fault(registry.alice.Remove, slice_urn, [registry.auth_cred], "").faultCode == 12
    assert registry.fault(registry.alice.Remove, slice_urn, [registry.auth_cred], "user").faultCode == 1  # clash
    assert registry.fault(registry.alice.Resolve, slice_urn, [registry.alice_cred]).faultCode == 12
    assert registry.fault(registry.bob.GetCredential, registry.bob_cred, slice_urn, "").faultCode == 12
    assert registry.written() == before
    (bob,) = registry.alice.Resolve("urn:publicid:IDN+tb+user+bob", [registry.alice_cred])
    assert bob["hrn"] == "tb.bob"


def test_authority_and_node_records_cannot_be_removed(registry: Registry) -> None:
    """Removing the authority's record would take every PI's rights for good; nodes follow the inventory."""
    before = registry.written()
    refused = registry.fault(registry.alice.Remove, "tb", [registry.auth_cred], "authority")
    assert refused.faultCode == 1 and "reg-pis" in refused.faultString
    refused = registry.fault(registry.alice.Remove, "tb.node1", [registry.auth_cred], "node")
    assert refused.faultCode == 1 and "sfa-omf node remove" in refused.faultString
    assert registry.written() == before
    assert registry.alice.GetCredential(registry.alice_cred, "tb", "authority").startswith("<?xml")


@pytest.mark.usefixtures("register_again_at_once")  # the name registered again at once
def test_a_removed_pi_s_authority_credential_no_longer_changes_the_registry(registry: Registry) -> None:
    """bob, a PI, takes an authority credential, then is removed: his certificate and that credential (unexpired,
    never revoked) must not Register, Update or Remove anything (22), and nothing is written; nor once the name is
    registered again for someone else (am/caller_keys.py's rule, as for the AM API)."""
    old_bob_auth_cred = registry.bob.GetCredential(registry.bob_cred, "tb", "authority")
    assert registry.alice.Remove("tb.bob", [registry.auth_cred], "user") == 1
    before = registry.written()
    carol = {"hrn": "tb.carol", "type": "user"}
    assert registry.fault(registry.bob.Register, carol, [old_bob_auth_cred]).faultCode == 22
    assert registry.fault(registry.bob.Remove, "tb.alice", [old_bob_auth_cred], "user").faultCode == 22
    update = {"hrn": "tb.alice", "email": "x@example.org"}
    # (Update, refused as an authority's, then tries the caller's own record: there is none, 22 as for Resolve)
    assert registry.fault(registry.bob.Update, update, [old_bob_auth_cred]).faultCode == 22
    assert registry.written() == before

    # The name registered again (another person, another key): the old holder's key and credential still get nothing.
    new_key = new_private_key()
    certificate = create_gid("urn:publicid:IDN+tb+user+bob", new_key.public_key(), new_key)
    registry.alice.Register({"hrn": "tb.bob", "type": "user", "gid": certificate.pem()}, [registry.auth_cred])
    assert registry.fault(registry.bob.Register, carol, [old_bob_auth_cred]).faultCode == 22
    assert registry.records.get("tb.carol") is None
    assert registry.alice.Register(carol, [registry.auth_cred])  # a registered PI's own key and credential act


def test_register_refuses_a_certificate_whose_key_cannot_be_read_as_a_bad_argument(registry: Registry) -> None:
    """A record's certificate with a key of an algorithm nobody reads: BADARGS saying what the certificate must
    hold, nothing registered (was an internal error, fault 5, with a traceback in the log)."""
    from tests.trust.test_unreadable_key import _with_unknown_key_algorithm

    key = new_private_key()
    unreadable = _with_unknown_key_algorithm(create_gid("urn:publicid:IDN+tb+user+dave", key.public_key(), key).pem())

    fault = registry.fault(
        registry.alice.Register, {"hrn": "tb.dave", "type": "user", "gid": unreadable}, [registry.auth_cred]
    )

    assert fault.faultCode == 1, fault.faultString  # BADARGS
    assert "must hold an RSA key" in fault.faultString
    assert registry.records.get("tb.dave") is None
