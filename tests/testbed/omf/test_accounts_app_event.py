"""UserFactory (accounts.py) against the user_factory stand-in over the real RabbitMQ, which answers as omf.md
describes NITOS' controller: CREATION.OK names the child only, and the child then informs on its own topic STATUS
{status_type: APP_EVENT, event: EXIT, exit_code, msg, uid, pub_key (PEM)} with no cid. The account gets a
certificate for the key of that EXIT; a failed useradd (non-zero exit_code) is an error with its words; the key is
read in PEM (SubjectPublicKeyInfo, PKCS#1) and OpenSSH forms."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sfa_omf.errors import GeniError, Reason
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.testbed.omf.accounts import AccountCertificates, UserFactory, account_of
from sfa_omf.testbed.omf.frcp import ControllerSigners, FrcpClient, SignatureChecker, Signer
from sfa_omf.testbed.unix_accounts import LocalAccount
from sfa_omf.trust.roots import load_trusted_roots
from tests.sshkeys import ssh_key
from tests.testbed.omf.user_factory_standin import UserFactoryStandIn

LOGIN = "ann_1a2b3c"


class NoKeyUserFactoryStandIn(UserFactoryStandIn):
    """The stand-in whose EXIT carries no pub_key (a controller that lost it)."""

    def _useradd(self, username: str) -> dict[str, Any]:
        exited = super()._useradd(username)
        exited.pop("pub_key", None)
        return exited


@dataclass
class UserFactoryLab:
    standin: UserFactoryStandIn
    factory: UserFactory
    authority: LocalAuthority
    root: Path


def serve_user_factory(
    standin_class: type[UserFactoryStandIn], tmp_path: Path, rabbitmq_url: str
) -> Iterator[UserFactoryLab]:
    init_directory(str(tmp_path / "lab"), "lab", ())
    authority = LocalAuthority.load(str(tmp_path / "lab"), "lab")
    roots = load_trusted_roots(str(tmp_path / "lab" / "trusted_roots"))
    topic = f"user_factory-{uuid.uuid4().hex[:8]}"  # a topic of this test only: the broker is shared
    standin = standin_class(
        rabbitmq_url, topic, tmp_path / "root", Signer(authority.key, authority.chain, "uf"), SignatureChecker(roots)
    )
    standin.start()
    client = FrcpClient(
        rabbitmq_url,
        signer=Signer(authority.key, authority.chain, "am"),
        checker=SignatureChecker(roots, controllers=ControllerSigners("lab")),
        topic=f"am-{uuid.uuid4().hex[:8]}",
        timeout_s=30,
    )
    certificates = AccountCertificates(authority.key, authority.chain, "lab", "lab.example")
    try:
        yield UserFactoryLab(standin, UserFactory(client, topic, certificates), authority, tmp_path / "root")
    finally:
        standin.stop()


@pytest.fixture
def testbed(tmp_path: Path, rabbitmq_url: str) -> Iterator[UserFactoryLab]:
    yield from serve_user_factory(UserFactoryStandIn, tmp_path, rabbitmq_url)


def test_the_account_gets_a_certificate_for_the_key_of_the_exit_inform(testbed: UserFactoryLab) -> None:
    testbed.factory.ensure([LocalAccount(LOGIN, ("urn:publicid:IDN+lab+user+ann",), (ssh_key("ann@laptop"),))])
    home = testbed.root / "home" / LOGIN
    certificate = x509.load_pem_x509_certificate((home / ".omf" / "user_cert.pem").read_bytes())
    assert account_of(certificate) == LOGIN
    certificate.verify_directly_issued_by(testbed.authority.chain[0].certificate)
    ours = certificate.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    assert ours.decode().split()[1] == (home / ".ssh" / "id_rsa.pub").read_text().split()[1]
    assert (home / ".ssh" / "authorized_keys").read_text() == f"{ssh_key('ann@laptop')}\n"
    assert [message.op for message in testbed.standin.handled] == ["create", "configure", "configure", "release"]
    assert testbed.standin.refused == []


def test_a_failed_useradd_is_an_error_with_its_words_and_the_child_is_released(testbed: UserFactoryLab) -> None:
    testbed.standin.useradd_fails_with = (9, f"useradd: user '{LOGIN}' already exists")
    with pytest.raises(GeniError) as failed:
        testbed.factory.ensure([LocalAccount(LOGIN, ("urn:publicid:IDN+lab+user+ann",), (ssh_key("ann@laptop"),))])
    assert failed.value.reason is Reason.TESTBED
    assert f"could not create the account {LOGIN}: useradd exited with 9 (useradd: user '{LOGIN}' already exists)" in (
        failed.value.message
    )
    # Nothing was configured on the account; the child was released all the same.
    assert [message.op for message in testbed.standin.handled] == ["create", "release"]
    assert not (testbed.root / "home" / LOGIN).exists()


def test_an_exit_without_a_key_is_an_error_not_a_silent_account_without_certificate(
    tmp_path: Path, rabbitmq_url: str
) -> None:
    for testbed in serve_user_factory(NoKeyUserFactoryStandIn, tmp_path, rabbitmq_url):
        with pytest.raises(GeniError) as failed:
            testbed.factory.ensure([LocalAccount(LOGIN, ("urn:publicid:IDN+lab+user+ann",), ())])
        assert failed.value.reason is Reason.TESTBED
        assert f"created the account {LOGIN} but sent no public key (pub_key in its EXIT inform)" in (
            failed.value.message
        )
        assert [message.op for message in testbed.standin.handled] == ["create", "release"]


def test_keys_only_needs_no_key_but_still_the_exit(tmp_path: Path, rabbitmq_url: str) -> None:
    """set_keys (geni_update_users) mints nothing: an EXIT without pub_key is fine, as long as useradd succeeded."""
    for testbed in serve_user_factory(NoKeyUserFactoryStandIn, tmp_path, rabbitmq_url):
        testbed.factory.set_keys([LocalAccount(LOGIN, ("urn:publicid:IDN+lab+user+ann",), (ssh_key("ann@desk"),))])
        home = testbed.root / "home" / LOGIN
        assert (home / ".ssh" / "authorized_keys").read_text() == f"{ssh_key('ann@desk')}\n"
        assert not (home / ".omf" / "user_cert.pem").exists()


def public_key_forms() -> list[tuple[str, str]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    spki = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    pkcs1 = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    openssh = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return [("pem", spki.decode()), ("pkcs1", pkcs1.decode()), ("openssh", f"{openssh.decode()} ann@testbed\n")]


@pytest.mark.parametrize(("form", "text"), public_key_forms(), ids=["pem", "pkcs1", "openssh"])
def test_mint_reads_the_key_in_pem_and_openssh_forms(form: str, text: str, tmp_path: Path) -> None:
    init_directory(str(tmp_path / "lab"), "lab", ())
    authority = LocalAuthority.load(str(tmp_path / "lab"), "lab")
    certificates = AccountCertificates(authority.key, authority.chain, "lab", "lab.example")
    certificate = x509.load_pem_x509_certificate(certificates.mint(LOGIN, text).encode())
    if form == "openssh":
        expected = serialization.load_ssh_public_key(text.encode())
    else:
        expected = serialization.load_pem_public_key(text.encode())
    assert certificate.public_key() == expected
    assert account_of(certificate) == LOGIN


def test_mint_refuses_a_key_it_cannot_read_saying_which_forms_it_reads(tmp_path: Path) -> None:
    init_directory(str(tmp_path / "lab"), "lab", ())
    authority = LocalAuthority.load(str(tmp_path / "lab"), "lab")
    certificates = AccountCertificates(authority.key, authority.chain, "lab", "lab.example")
    with pytest.raises(GeniError, match=r"in a form we cannot read \(PEM or OpenSSH expected\)"):
        certificates.mint(LOGIN, "-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
