"""Real SSH public keys for tests: the project accepts only keys whose base64 blob is a key of the declared type."""

from __future__ import annotations

import functools
import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sfa_omf.trust.pki import new_private_key


def ssh_key(comment: str) -> str:
    """A valid ed25519 public key line, the same for the same comment ("ssh-ed25519 AAAAC3... comment")."""
    private = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(comment.encode("utf-8")).digest())
    line = private.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode("ascii")
    return f"{line} {comment}"


@functools.cache
def ssh_rsa_key(comment: str) -> str:
    """A valid ssh-rsa public key line ("ssh-rsa AAAAB3... comment"), one key pair per comment for the session (an
    RSA key is the one kind an SFA GID certifies: a user registered with keys gets the GID of the first of them)."""
    line = new_private_key().public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode("ascii")
    return f"{line} {comment}"
