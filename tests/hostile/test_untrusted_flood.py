"""A caller nobody trusts cannot make the server keep what it sends (the registry, over real TLS).

As SFA's registry does, ours takes calls from any TLS client (sfi.py's first call uses a self-signed certificate)
and verifies every credential of the call; reading a credential parses the certificates in its owner_gid and
target_gid before any signature or chain is checked. Those must not stay parsed in the server's memory once refused:
only certificates of chains verified to a trusted root are kept, the rest within a small budget (trust/gid.py).
"""

from __future__ import annotations

import gc
import os
import xmlrpc.client
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier

from sfa_omf.times import utcnow
from sfa_omf.trust.gid import RECENT_CACHE_BYTES, Gid
from sfa_omf.trust.pki import new_private_key, private_key_pem
from tests.hostile.harness import World, nothing_crashed
from tests.tls_harness import proxy

CALLS = 40
CERTIFICATE_PADDING = 23_000  # bytes: certificates of about 23 KB (a usual GID is one or two)


def self_signed(key: rsa.RSAPrivateKey, serial: int, padding: int) -> x509.Certificate:
    start = utcnow() - timedelta(minutes=5)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"junk{serial}")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=1))
        .add_extension(x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.1"), os.urandom(padding)), False)
        .sign(key, hashes.SHA256())
    )


def junk_bytes_alive(junk: set[bytes]) -> int:
    """DER bytes of the junk certificates still parsed somewhere in this process (the server runs in it)."""
    gc.collect()
    return sum(len(item.der or b"") for item in gc.get_objects() if isinstance(item, Gid) and item.der in junk)


def test_refused_credentials_of_an_untrusted_caller_are_not_kept(world: World, tmp_path: Path) -> None:
    key = new_private_key()
    me = self_signed(key, 1, 10)
    (tmp_path / "me.pem").write_bytes(me.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "me.pkey").write_bytes(private_key_pem(key))
    client = proxy(world.url("registry"), str(tmp_path / "me.pem"), str(tmp_path / "me.pkey"))
    junk: set[bytes] = set()
    mark = world.logs.mark()
    for call in range(CALLS):
        credentials = []
        for index in range(2):  # two credentials a call, two certificates each
            owner, target = (self_signed(key, 10 + 4 * call + 2 * index + side, CERTIFICATE_PADDING) for side in (0, 1))
            junk.update(certificate.public_bytes(serialization.Encoding.DER) for certificate in (owner, target))
            pems = [
                certificate.public_bytes(serialization.Encoding.PEM).decode("ascii") for certificate in (owner, target)
            ]
            credentials.append(
                f"<signed-credential><credential xml:id='ref0'><type>privilege</type><owner_gid>{pems[0]}</owner_gid>"
                f"<target_gid>{pems[1]}</target_gid><expires>2030-01-01T00:00:00Z</expires><privileges/>"
                "</credential><signatures/></signed-credential>"
            )
        try:
            client.Resolve("testbed.alice", credentials, {})
            raise AssertionError("an untrusted caller's junk credentials were accepted")
        except xmlrpc.client.Fault as fault:
            assert fault.faultCode == 20 and "not signed" in fault.faultString, fault
    sent = sum(len(der) for der in junk)
    assert sent > 3 * RECENT_CACHE_BYTES  # the flood is well over the budget
    assert junk_bytes_alive(junk) <= RECENT_CACHE_BYTES
    assert not nothing_crashed(world, mark)
    # The trusted path still works.
    assert (
        world.client("registry").Resolve("testbed.alice", [world.creds["alice_user"]], {})[0]["hrn"] == "testbed.alice"
    )
