"""Names the aggregate compares since owner URNs are kept canonical and names are judged by a URN's authority field:
a user of the parent authority whose name reads like the local sub-authority is no local user (so never refused as
"removed"), and a caller's GID e-mail is kept when its certificate writes its URN in another case than the
credential's (canonical) owner URN."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from sfa_omf.am.aggregate import _contact
from sfa_omf.am.caller_keys import RegisteredKeys
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.slices import Contact
from sfa_omf.registry.records import Record, Records
from sfa_omf.times import utcnow
from sfa_omf.trust.gid import Gid, gid_from_der
from sfa_omf.trust.pki import create_gid, new_private_key


@pytest.fixture
def records(tmp_path: Path) -> Iterator[Records]:
    database = Database(sqlite_url(str(tmp_path / "names.sqlite")))
    database.upgrade()
    yield Records(database)
    database.dispose()


def test_a_user_of_the_parent_authority_named_like_the_sub_authority_is_not_local(records: Records) -> None:
    records.add(Record("fed.sub", "authority", "urn:publicid:IDN+fed:sub+authority+sa", "", pis=()))
    keys = RegisteredKeys(records, "fed.sub")
    parents_user = "urn:publicid:IDN+fed+user+sub"  # HRN fed.sub, as the authority's
    assert not keys.is_local_user(parents_user)
    assert keys.refusal(parents_user, "any key") is None  # not judged by this registry: never "removed"
    own_user = "urn:publicid:IDN+fed:sub+user+gone"
    assert keys.is_local_user(own_user)
    refused = keys.refusal(own_user, "any key")
    assert refused is not None and refused.removed


def gid_written_as(urn: str, email: str, issuer: Gid, issuer_key: object) -> Gid:
    """A user GID whose SAN carries ``urn`` exactly as written (the project's own builder writes URNs canonically)."""
    key = new_private_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, urn.rsplit("+", 1)[-1])])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(utcnow() - timedelta(minutes=5))
        .not_valid_after(utcnow() + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(urn),
                    x509.UniformResourceIdentifier(f"urn:uuid:{uuid.uuid4()}"),
                    x509.RFC822Name(email),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return gid_from_der(certificate.public_bytes(Encoding.DER))


def test_the_callers_email_is_kept_whatever_the_case_of_its_urns_prefix_and_type() -> None:
    authority_key = new_private_key()
    authority = create_gid("urn:publicid:IDN+fed+authority+sa", authority_key.public_key(), authority_key)
    caller = gid_written_as("URN:PUBLICID:IDN+fed+USER+dave", "dave@example.org", authority, authority_key)
    owner_urn = "urn:publicid:IDN+fed+user+dave"  # the credential's owner, canonical
    assert _contact((caller, authority), owner_urn) == Contact(owner_urn, "dave@example.org")
    # Another user's URN (the name differs) gives no address, as a tool speaking for a user gives none.
    assert _contact((caller, authority), "urn:publicid:IDN+fed+user+erin") is None
