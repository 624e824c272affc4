"""Accounts and keys on an OMF 6 testbed through its user_factory controller (FRCP), as omf_sfa's broker does:

1. ``create {type: user, hrn, username}`` on user_factory: the Unix account and an SSH key pair in ~/.ssh (an
   existing account is reached again the same way); the answer (CREATION.OK) names the child (res_id). Once useradd
   has run, the child informs on its own topic STATUS {status_type: APP_EVENT, event: EXIT, exit_code, msg, uid,
   pub_key} (omf.md), with no cid: we subscribe to the child and wait for it. A non-zero exit_code is useradd's
   failure; pub_key is the account's public key, in PEM (NITOS' controller) or OpenSSH form;
2. ``configure {cert: PEM}`` on the child: the account's certificate in ~/.omf/user_cert.pem, minted here by the
   local authority with the account name in the subject's emailAddress (what the testbed's controllers read to
   decide whose lease a signed request falls under);
3. ``configure {auth_keys: [...]}`` on the child: ~/.ssh/authorized_keys becomes exactly these keys;
4. ``release {rid: child}`` on user_factory.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from sfa_omf.errors import GeniError, Reason
from sfa_omf.testbed.omf.frcp import (
    INFORM_CLOCK_SKEW_S,
    FrcpCircuitOpen,
    FrcpClient,
    FrcpError,
    FrcpMessage,
    FrcpSession,
    FrcpTimeout,
    FrcpUnavailable,
    Signer,
    topic_of,
)
from sfa_omf.testbed.unix_accounts import LocalAccount
from sfa_omf.times import utcnow
from sfa_omf.trust.gid import GidChain, gid_from_certificate
from sfa_omf.xrn import hrn_to_urn

CERTIFICATE_LIFETIME = timedelta(days=365)


@dataclass(frozen=True)
class AccountCertificates:
    """Mints an account's certificate: CN <uuid>, emailAddress <login>@<domain>, the account's URN in the subject
    alternative name, signed by the local authority. The account's users can read its key (in the account's
    ~/.ssh), so these certificates (user URNs) never answer for the controllers (frcp.ControllerSigners)."""

    authority_key: rsa.RSAPrivateKey
    authority_chain: GidChain
    authority_hrn: str
    domain: str

    def mint(self, login: str, answered_public_key: str) -> str:
        """The PEM certificate of ``login`` for the public key user_factory made for it: PEM (SubjectPublicKeyInfo
        or PKCS#1, as NITOS' controller sends it) or OpenSSH form."""
        text = answered_public_key.strip()
        try:
            if text.startswith("-----BEGIN"):
                public_key = serialization.load_pem_public_key(text.encode("ascii"))
            else:
                public_key = serialization.load_ssh_public_key(text.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as exc:
            raise GeniError(
                Reason.TESTBED,
                f"user_factory answered {login}'s public key in a form we cannot read (PEM or OpenSSH expected): "
                f"{exc}; no certificate was installed",
            ) from exc
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise GeniError(Reason.TESTBED, f"user_factory made {login} a {type(public_key).__name__}, not RSA")
        urn = hrn_to_urn(f"{self.authority_hrn}.{login}", "user")
        return self.certificate(login, public_key, urn).public_bytes(serialization.Encoding.PEM).decode("ascii")

    def signer(self, account: str, key: rsa.RSAPrivateKey, urn: str) -> Signer:
        """Who signs FRCP messages: ``key`` with a certificate naming ``account`` in its emailAddress (the
        controllers' notion of who is asking) and ``urn``, chained to the local authority."""
        certificate = self.certificate(account, key.public_key(), urn)
        return Signer(key, (gid_from_certificate(certificate), *self.authority_chain), urn)

    def certificate(self, login: str, public_key: rsa.RSAPublicKey, urn: str) -> x509.Certificate:
        """CN <a new uuid>, emailAddress <login>@<domain>, ``urn`` and the uuid in subjectAltName."""
        issuer = self.authority_chain[0].certificate
        now = utcnow()
        account_uuid = uuid.uuid4()
        return (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.COMMON_NAME, str(account_uuid)),
                        x509.NameAttribute(NameOID.EMAIL_ADDRESS, f"{login}@{self.domain}"),
                    ]
                )
            )
            .issuer_name(issuer.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + CERTIFICATE_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(urn), x509.UniformResourceIdentifier(f"urn:uuid:{account_uuid}")]
                ),
                critical=False,
            )
            .sign(self.authority_key, hashes.SHA256())
        )


def account_of(certificate: x509.Certificate) -> str:
    """The account a certificate names, as OMF's controllers read it: the local part of its subject's
    emailAddress ("" when it has none)."""
    values = certificate.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)
    return str(values[0].value).split("@", 1)[0] if values else ""


class UserFactory:
    """The testbed's user_factory, spoken to over FRCP. Every failure becomes a GeniError: the broker down ->
    UNAVAILABLE (11), no answer in time -> TIMEDOUT (8), the controller's error -> TESTBED (2) with its words."""

    def __init__(self, client: FrcpClient, topic: str, certificates: AccountCertificates | None) -> None:
        self.client = client
        self.topic = topic
        self.certificates = certificates

    def ensure(self, accounts: Sequence[LocalAccount], also: Sequence[str] = (), with_certificate: bool = True) -> None:
        """Each account exists, has its certificate (when asked) and exactly its keys in authorized_keys; the
        logins in ``also`` exist and have their certificate, their keys left as they are (no keys were sent for
        them: user_factory's auth_keys would empty authorized_keys)."""
        wanted: list[tuple[str, Sequence[str] | None]] = [(account.login, account.ssh_keys) for account in accounts]
        known = {login for login, _ in wanted}
        wanted += [(login, None) for login in dict.fromkeys(also) if login not in known]
        with self._speaking("create the accounts") as session:
            for login, keys in wanted:
                self._one(session, login, keys, with_certificate)

    def set_keys(self, accounts: Sequence[LocalAccount]) -> None:
        """Each account's authorized_keys becomes exactly its keys (geni_update_users)."""
        self.ensure(accounts, with_certificate=False)

    def close(self, logins: Sequence[str]) -> None:
        """Close these accounts (user_factory's ``configure {deluser: {username}}``: userdel -r)."""
        with self._speaking("close the accounts") as session:
            for login in logins:
                session.request(self.topic, "configure", {"deluser": {"username": login}})

    def _one(self, session: FrcpSession, login: str, keys: Sequence[str] | None, with_certificate: bool) -> None:
        created = session.request(self.topic, "create", {"type": "user", "hrn": login, "username": login})
        child = created.props.get("res_id")
        if not isinstance(child, str) or not child:
            raise GeniError(Reason.TESTBED, f"user_factory created {login} but named no child resource (res_id)")
        try:
            # The child informs once useradd has run; informs are not queued: listen before anything else.
            session.subscribe_address(child)
            exited = _wait_for_exit(session, child, created.ts, f"useradd of {login}", self.topic)
            exit_code = exited.props.get("exit_code")
            if exit_code not in (0, "0"):
                words = exited.props.get("msg") or exited.props.get("reason") or "no words"
                raise GeniError(
                    Reason.TESTBED,
                    f"the testbed's user_factory could not create the account {login}: useradd exited with "
                    f"{exit_code!r} ({words}); nothing was installed for it, the booking stays as it was: ask the "
                    "testbed's operator to look at user_factory's log",
                )
            if with_certificate and self.certificates is not None:
                public_key = exited.props.get("pub_key")
                if not isinstance(public_key, str) or not public_key.strip():
                    raise GeniError(
                        Reason.TESTBED,
                        f"the testbed's user_factory created the account {login} but sent no public key (pub_key "
                        "in its EXIT inform): no certificate could be minted for it; ask the testbed's operator",
                    )
                session.request(
                    child, "configure", {"cert": self.certificates.mint(login, public_key)}, peer=self.topic
                )
            if keys is not None:
                session.request(child, "configure", {"auth_keys": list(keys)}, peer=self.topic)
        finally:
            session.request(self.topic, "release", rid=child)

    @contextmanager
    def _speaking(self, what: str) -> Iterator[FrcpSession]:
        """An FRCP session whose failures are GENI errors saying what could not be done."""
        try:
            with self.client.session(self.topic) as session:
                yield session
        except FrcpCircuitOpen as exc:  # not even asked: its words say when it is tried again
            raise GeniError(Reason.UNAVAILABLE, f"cannot {what} on the testbed: {exc}") from exc
        except FrcpUnavailable as exc:
            raise GeniError(
                Reason.UNAVAILABLE,
                f"cannot {what} on the testbed: {exc}; the booking stays as it was: try again when the broker is back",
            ) from exc
        except FrcpTimeout as exc:
            raise GeniError(
                Reason.TIMEDOUT,
                f"the testbed's user_factory did not answer in time to {what} ({exc}); the booking stays as it was: "
                "try again",
            ) from exc
        except FrcpError as exc:
            raise GeniError(
                Reason.TESTBED,
                f"the testbed's user_factory refused to {what}: {exc.reason} (the booking stays as it was)",
            ) from exc


def _wait_for_exit(session: FrcpSession, child: str, created_ts: int, what: str, factory: str) -> FrcpMessage:
    """The child's STATUS {status_type: APP_EVENT, event: EXIT}, informed on its own topic with no cid (FrcpError
    for its error inform); FrcpTimeout when none comes within the client's time-out (told to the ``factory``'s
    breaker). Informs older than the create (less the clocks' tolerance) are not its answer; other informs stay
    kept for the session's later waits."""
    child_topic = topic_of(child)
    not_before = created_ts - INFORM_CLOCK_SKEW_S

    def is_the_exit(inform: FrcpMessage) -> bool:
        return inform.op == "inform" and inform.ts >= not_before and _is_exit_of(inform, child_topic)

    exited = session.wait_for(is_the_exit, None, f"the {what} (an EXIT inform from {child_topic})", factory)
    if exited.is_error:
        raise FrcpError(str(exited.props.get("reason") or exited.itype or "error"), exited)
    return exited


def _is_exit_of(inform: FrcpMessage, child_topic: str) -> bool:
    """Whether ``inform`` is the child's end of useradd: an APP_EVENT EXIT from the child, or an error from it."""
    if topic_of(inform.src) != child_topic:
        return False
    props = inform.props
    return inform.is_error or (
        inform.itype == "STATUS" and props.get("status_type") == "APP_EVENT" and props.get("event") == "EXIT"
    )
