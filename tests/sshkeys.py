"""Real SSH public keys for tests: the project accepts only keys whose base64 blob is a key of the declared type."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def ssh_key(comment: str) -> str:
    """A valid ed25519 public key line, the same for the same comment ("ssh-ed25519 AAAAC3... comment")."""
    private = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(comment.encode("utf-8")).digest())
    line = private.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode("ascii")
    return f"{line} {comment}"
