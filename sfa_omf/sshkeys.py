"""What an SSH public key looks like: the one check used wherever keys come in (AM API geni_users/sfa_users, the
registry's Register/Update, the operator's commands) before they can reach an authorized_keys file."""

from __future__ import annotations

import base64
import binascii
import struct

from sfa_omf.errors import BadArgs

#: Longest key line accepted (an RSA 16384-bit key is about 2.8 KB; certificates are longer but still bounded).
MAX_KEY_CHARS = 16 * 1024
KEY_TYPE_PREFIXES = ("ssh-", "ecdsa-", "sk-")


def is_ssh_public_key(key: str) -> bool:
    """One line, "type base64 [comment]", whose base64 blob is a key of the type it declares.

    Anything else (options such as command="...", a newline that starts a second line, text that only looks like a
    key) could change what the key allows once written to authorized_keys, so it is not a key here.
    """
    if not isinstance(key, str) or len(key) > MAX_KEY_CHARS or "\n" in key or "\r" in key or "\0" in key:
        return False
    parts = key.split()
    if len(parts) < 2 or not parts[0].startswith(KEY_TYPE_PREFIXES):
        return False
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return False
    # The blob starts with the key type as an SSH string (uint32 length, then the name): it must match.
    if len(blob) < 4:
        return False
    (length,) = struct.unpack(">I", blob[:4])
    return blob[4 : 4 + length] == parts[0].encode("ascii", "replace")


def ssh_public_key(value: object, where: str = "key") -> str:
    """``value`` stripped if it is an SSH public key, else BadArgs naming ``where`` and the expected form."""
    if not isinstance(value, str):
        raise BadArgs(f"{where} must be an SSH public key string, not {type(value).__name__}")
    key = value.strip()
    if not is_ssh_public_key(key):
        raise BadArgs(
            f"{where} is not an SSH public key of one line (expected 'ssh-ed25519 AAAAC3... comment', no options): "
            f"{key[:40]!r}"
        )
    return key


def ssh_public_keys(value: object, where: str = "keys") -> list[str]:
    """A list of SSH public keys (nil is none). One string is refused rather than read one character per key."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadArgs(f"{where} must be a list of SSH public key strings, not {type(value).__name__}")
    return [ssh_public_key(item, f"{where}[{index}]") for index, item in enumerate(value)]
