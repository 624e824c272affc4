"""A user registered with SSH keys holds the GID of their first ssh-rsa key, as SFA's registry issues it, over real
TLS on SQLite and a real PostgreSQL.

sfi.py register -k KEY.pub sent the user's key, and the registry issued the GID for a new key pair whose private half
it threw away: the user, running sfi.py with the private key of KEY.pub as HRN.pkey, was refused with 22 on every
call, and sfi.py update -k did not repair it. Now Register issues the GID for the first ssh-rsa key given (a string
or a list), refusing keys of which none is RSA (1, nothing written); Update with keys re-issues it for the first
ssh-rsa key when it certifies another, after which the earlier key is refused at once and the new one acts; a
delegate may not re-key a PI; key text that is no key is refused (1, nothing written)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.trust.gid import load_gid_chain, load_gid_chain_file
from sfa_omf.trust.pki import create_gid, new_private_key, private_key_pem
from sfa_omf.xrn import hrn_to_urn
from tests.registry.conftest import Registry, Site
from tests.sshkeys import ssh_key
from tests.tls_harness import proxy


class Holder:
    """Someone holding an RSA key pair as ssh-keygen -t rsa makes it: its OpenSSH public line (KEY.pub) and its
    private key in a file, as sfi.py reads its HRN.pkey."""

    def __init__(self, tmp_path: Path, name: str) -> None:
        self.name = name
        self.key: rsa.RSAPrivateKey = new_private_key()
        public = self.key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode("ascii")
        self.line = f"{public} {name}@laptop"
        self.directory = tmp_path / name
        self.directory.mkdir()
        self.key_path = self.directory / "user.pkey"
        self.key_path.write_bytes(private_key_pem(self.key))

    def bootstrap(self, url: str, hrn: str) -> tuple[Any, str, str]:
        """What sfi.py does with nothing but its private key: a self-signed certificate of it, GetSelfCredential,
        then its GID (Resolve); (a proxy connecting with that GID as its TLS client certificate, the credential,
        the GID). Faults as the registry answers them."""
        self_signed = create_gid(hrn_to_urn(hrn, "user"), self.key.public_key(), self.key)
        (self.directory / "self.pem").write_text(self_signed.pem())
        boot: Any = proxy(url, str(self.directory / "self.pem"), str(self.key_path))
        credential = boot.GetSelfCredential(self_signed.pem(), hrn, "user")
        (me,) = boot.Resolve(hrn, [credential])
        (self.directory / "user.gid").write_text(me["gid"])
        user: Any = proxy(url, str(self.directory / "user.gid"), str(self.key_path))
        assert user.GetSelfCredential(me["gid"], hrn, "user").startswith("<?xml")
        return user, credential, me["gid"]

    def certifies(self, gid: str) -> bool:
        """Whether ``gid`` certifies this holder's key."""
        public = self.key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return load_gid_chain(gid)[0].public_key_der == public


def _issued_file(registry: Registry, hrn: str) -> str:
    """The GID the authority keeps in gids/ for ``hrn`` (what a start imports and authority renew re-issues)."""
    return load_gid_chain_file(str(registry.directory / "gids" / f"{hrn}.gid"))[0].key_id


def test_a_user_registered_with_an_ssh_rsa_key_calls_with_its_private_key(
    registry: Registry,
    tmp_path: Path,
) -> None:
    """sfi.py register -t user -x tb.dave -e ... -k dave_rsa.pub; then dave, with dave_rsa as tb.dave.pkey, gets his
    credential and calls (before: 22, the GID certified a key nobody held). The first ssh-rsa key is taken when an
    ed25519 key comes first; one key sent as a string (not a list) is read as one key."""
    dave, erin = Holder(tmp_path, "dave"), Holder(tmp_path, "erin")
    auth = [registry.auth_cred]

    gid = registry.alice.Register(
        {"hrn": "tb.dave", "type": "user", "email": "dave@example.org", "reg-keys": [dave.line]}, auth
    )

    assert dave.certifies(gid)
    user, credential, shown_gid = dave.bootstrap(registry.url, "tb.dave")
    assert dave.certifies(shown_gid) and load_gid_chain(shown_gid)[0].email == "dave@example.org"
    (me,) = user.Resolve("tb.dave", [credential])
    assert me["reg-keys"] == [dave.line] and me["email"] == "dave@example.org"
    assert user.GetCredential(credential, "tb.dave", "user").startswith("<?xml")
    assert _issued_file(registry, "tb.dave") == load_gid_chain(gid)[0].key_id

    # An ed25519 key first (SFA would take it and fail): the GID certifies the first ssh-rsa key among them.
    first = ssh_key("erin@desk")
    gid = registry.alice.Register({"hrn": "tb.erin", "type": "user", "keys": [first, erin.line]}, auth)
    assert erin.certifies(gid)
    assert registry.records.get("tb.erin").keys == (first, erin.line)  # type: ignore[union-attr]
    erin.bootstrap(registry.url, "tb.erin")

    # One key as a string, as some clients send it (SFA's registry reads it as one key).
    frank = Holder(tmp_path, "frank")
    gid = registry.alice.Register({"hrn": "tb.frank", "type": "user", "reg-keys": frank.line}, auth)
    assert frank.certifies(gid)
    assert registry.records.get("tb.frank").keys == (frank.line,)  # type: ignore[union-attr]
    frank.bootstrap(registry.url, "tb.frank")


def test_update_with_another_key_re_issues_the_gid_and_refuses_the_earlier_key(
    registry: Registry,
    tmp_path: Path,
) -> None:
    """A user registered without a key (a GID of a key pair nobody holds, as SFA issues it) is repaired by
    sfi.py update -k KEY.pub; a later Update with another key (the user's own, with their credential) re-issues the
    GID again: the earlier key and the credential issued to it are refused at once, the new key acts. A record sent
    back as Resolve shows it leaves the GID as it is."""
    dave, laptop, desk = Holder(tmp_path, "dave"), Holder(tmp_path, "laptop"), Holder(tmp_path, "desk")
    auth = [registry.auth_cred]
    registered = registry.alice.Register({"hrn": "tb.dave", "type": "user", "email": "dave@example.org"}, auth)
    assert not dave.certifies(registered)
    refused = registry.fault(dave.bootstrap, registry.url, "tb.dave")
    assert refused.faultCode == 22 and "not the key registered for tb.dave" in refused.faultString

    # sfi.py update -t user -x tb.dave -k dave_rsa.pub (a PI, with the authority credential).
    assert registry.alice.Update({"hrn": "tb.dave", "type": "user", "reg-keys": [dave.line]}, auth) == 1
    user, credential, gid = dave.bootstrap(registry.url, "tb.dave")
    assert dave.certifies(gid) and load_gid_chain(gid)[0].email == "dave@example.org"
    assert _issued_file(registry, "tb.dave") == load_gid_chain(gid)[0].key_id
    # Sent back whole as shown (its first ssh-rsa key the one certified): the GID stays.
    (shown,) = user.Resolve("tb.dave", [credential])
    assert user.Update(shown, [credential]) == 1
    assert registry.records.get("tb.dave").gid == gid  # type: ignore[union-attr]

    # dave changes his key himself, with his user credential (and his address with it).
    change = {"hrn": "tb.dave", "reg-keys": [ssh_key("dave@phone"), laptop.line], "email": "dave@new.example.org"}
    assert user.Update(change, [credential]) == 1
    # The earlier key and what was issued to it are refused at once, everywhere the registry checks the caller.
    assert registry.fault(user.Resolve, "tb.dave", [credential]).faultCode == 22
    assert registry.fault(user.GetCredential, credential, "tb.dave", "user").faultCode == 22
    assert registry.fault(dave.bootstrap, registry.url, "tb.dave").faultCode == 22
    assert registry.fault(user.Update, {"hrn": "tb.dave", "reg-keys": [dave.line]}, [credential]).faultCode == 22
    new_user, new_credential, new_gid = laptop.bootstrap(registry.url, "tb.dave")
    assert laptop.certifies(new_gid) and load_gid_chain(new_gid)[0].email == "dave@new.example.org"
    (me,) = new_user.Resolve("tb.dave", [new_credential])
    assert me["reg-keys"] == [ssh_key("dave@phone"), laptop.line]
    assert _issued_file(registry, "tb.dave") == load_gid_chain(new_gid)[0].key_id

    # Keys of which none is RSA (new SSH keys for the nodes) are stored and leave the GID as it is.
    assert new_user.Update({"hrn": "tb.dave", "reg-keys": [ssh_key("dave@tablet")]}, [new_credential]) == 1
    assert registry.records.get("tb.dave").gid == new_gid  # type: ignore[union-attr]
    assert new_user.Resolve("tb.dave", [new_credential])[0]["reg-keys"] == [ssh_key("dave@tablet")]

    # A PI re-keys a PI with their own authority credential: erin (registered without a key, then made a PI) gets the
    # GID of desk's key, and her earlier one (held by nobody) is gone.
    registry.alice.Register({"hrn": "tb.erin", "type": "user"}, auth)
    assert registry.alice.Update({"hrn": "tb", "type": "authority", "reg-pis": ["tb.alice", "tb.erin"]}, auth) == 1
    assert registry.alice.Update({"hrn": "tb.erin", "type": "user", "reg-keys": [desk.line]}, auth) == 1
    desk.bootstrap(registry.url, "tb.erin")


def test_a_delegate_may_not_re_key_a_pi(site: Site, tmp_path: Path) -> None:
    """dave (of fed) holds tb's authority credential, delegated by alice: giving pat (a PI whose GID follows his SSH
    key) an ssh-rsa key of his would re-issue pat's GID for his key, and GetCredential would give him a fresh,
    undelegated authority credential. Refused (3), nothing written; a user who is no PI he may re-key, as he may
    register one. alice, a PI who holds the key pair of her GID (sfa-omf init's), is not re-keyed by such an Update:
    it changes her login keys alone, as it does for any user who holds theirs."""
    mallory, pat = Holder(tmp_path, "mallory"), Holder(tmp_path, "pat")
    auth = [site.alice_auth_cred]
    site.alice.Register({"hrn": "tb.pat", "type": "user", "reg-keys": [pat.line]}, auth)
    site.alice.Register({"hrn": "tb.quinn", "type": "user"}, auth)  # (a GID of a key pair nobody holds)
    assert site.alice.Update({"hrn": "tb", "type": "authority", "reg-pis": ["tb.alice", "tb.pat"]}, auth) == 1
    before = site.written()

    fault = site.fault(site.dave.Update, {"hrn": "tb.pat", "reg-keys": [mallory.line]}, [site.dave_tb_auth_cred])

    assert fault.faultCode == 3, fault.faultString
    assert "tb.pat is a PI of tb" in fault.faultString and "not a delegated one" in fault.faultString
    assert site.written() == before
    assert site.dave.Update({"hrn": "tb.quinn", "reg-keys": [mallory.line]}, [site.dave_tb_auth_cred]) == 1
    assert mallory.certifies(site.records.get("tb.quinn").gid)  # type: ignore[union-attr]
    alice_gid = site.records.get("tb.alice").gid  # type: ignore[union-attr]
    assert site.dave.Update({"hrn": "tb.alice", "reg-keys": [mallory.line]}, [site.dave_tb_auth_cred]) == 1
    assert site.records.get("tb.alice").gid == alice_gid  # type: ignore[union-attr]
    pat.bootstrap(site.url, "tb.pat")  # (still his)


def test_keys_of_which_none_is_rsa_are_refused_for_a_new_user(registry: Registry) -> None:
    """sfi.py signs with an RSA key and a GID certifies one: a user registered with ed25519 keys only would get the
    GID of a key pair nobody holds. Refused (1) saying an ssh-rsa key is needed, nothing written."""
    before = registry.written()
    for field, keys in (("reg-keys", [ssh_key("carol@laptop")]), ("keys", [ssh_key("c@1"), ssh_key("c@2")])):
        record = {"hrn": "tb.carol", "type": "user", field: keys}

        fault = registry.fault(registry.alice.Register, record, [registry.auth_cred])

        assert fault.faultCode == 1, fault.faultString
        assert f"none of the keys given in {field!r} for tb.carol is an ssh-rsa key" in fault.faultString
        assert "sfi.py" in fault.faultString and "ssh-keygen -t rsa" in fault.faultString
    assert registry.written() == before
    assert registry.records.get("tb.carol") is None
    assert not LocalAuthority.load(str(registry.directory), "tb").has_issued("tb.carol")


def test_key_text_that_is_no_key_is_refused(registry: Registry, tmp_path: Path) -> None:
    """A malformed key, as a string (the form SFA reads as one key) or in a list, is refused (1) saying what is
    wrong with it, by Register and Update, and nothing is written."""
    good = Holder(tmp_path, "good").line
    kind, blob, _ = good.split(" ", 2)
    malformed = [
        "ssh-rsa not-base64!",  # no base64 blob
        f"{kind} {blob[:-40]}",  # cut short: no RSA key
        f"ssh-ed25519 {blob}",  # an RSA blob under another type
    ]
    before = registry.written()
    auth = [registry.auth_cred]
    for key in malformed:
        for call, record in (
            (registry.alice.Register, {"hrn": "tb.carol", "type": "user", "reg-keys": key}),
            (registry.alice.Register, {"hrn": "tb.carol", "type": "user", "reg-keys": [good, key]}),
            (registry.alice.Update, {"hrn": "tb.bob", "type": "user", "reg-keys": key}),
            (registry.alice.Update, {"hrn": "tb.bob", "type": "user", "keys": [key, good]}),
        ):
            fault = registry.fault(call, record, auth)

            assert fault.faultCode == 1, fault.faultString
            assert "is not an SSH public key of one line" in fault.faultString, fault.faultString
    assert registry.written() == before
