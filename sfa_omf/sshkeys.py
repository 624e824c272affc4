"""What an SSH public key looks like: the one check used wherever keys come in (AM API geni_users/sfa_users, the
registry's Register/Update, the operator's commands) before they can reach an authorized_keys file.

Two questions, two answers:

- Could the text do harm written to authorized_keys (``key_danger``)? It must be one line "type base64 [comment]"
  (type, blob and comment separated by spaces or tabs, as OpenSSH reads them) of printable characters (a tab
  aside): no line break of any kind, no other control character, no options such as command="...", a base64 blob
  declaring the type the line names. Anything else is refused wherever it comes from.
- Would sshd use it (``key_problem``)? OpenSSH 9 (as Debian 12 ships it) takes only some types, and a well-formed key
  of them (RSA of at least 1024 bits). A harmless key it would not use (DSA, short RSA, a certificate, an unknown type,
  a malformed blob) is refused where a person types it (the registry, the operator's commands: they can act on the
  message), and left out of what is written, logged, where clients send every key a clearinghouse holds
  (``usable_ssh_public_keys``, the AM API's users): one member's old DSA key must not fail the caller's call.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
import unicodedata

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sfa_omf.errors import BadArgs

#: Longest key line accepted (an RSA 16384-bit key is about 2.8 KB).
MAX_KEY_CHARS = 16 * 1024
#: Smallest RSA key OpenSSH 9 accepts (its RequiredRSASize default).
MIN_RSA_BITS = 1024
#: The key types written to authorized_keys: those sshd accepts by default.
CRYPTOGRAPHY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")
SK_ED25519 = "sk-ssh-ed25519@openssh.com"
SK_ECDSA = "sk-ecdsa-sha2-nistp256@openssh.com"
KEY_TYPES = (*CRYPTOGRAPHY_TYPES, SK_ED25519, SK_ECDSA)
ACCEPTED = (
    "ssh-ed25519 (advised: ssh-keygen -t ed25519), ecdsa-sha2-nistp256/384/521, "
    f"ssh-rsa of at least {MIN_RSA_BITS} bits, {SK_ED25519}, {SK_ECDSA}"
)
#: Characters Python's str.splitlines breaks a line at (OpenSSH only at \n): none may be in a key, or a rewrite of
#: authorized_keys that split the file with it would turn the rest of the key into a line of its own.
LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
#: The one control character a key may hold: OpenSSH separates type, blob and comment by spaces or tabs, and a tab in
#: the comment is neither a line break for sshd nor for Python's splitlines.
TAB = "\t"
#: What separates a key's type, blob and comment (OpenSSH: spaces and tabs, any number).
_SEPARATOR = re.compile("[ \t]+")
#: What a key type's name looks like (ssh-ed25519, sk-ssh-ed25519@openssh.com, ssh-rsa-cert-v01@openssh.com):
#: never an option list such as command="..." or no-pty,restrict.
_TYPE_NAME = re.compile("[A-Za-z0-9][A-Za-z0-9@._-]{0,63}")


def key_danger(key: object) -> str | None:
    """Why ``key`` could change what authorized_keys grants once written there, or None when it is harmless.

    Harmless: one line "type base64 [comment]" (separated by spaces or tabs), at most MAX_KEY_CHARS long, with no
    control character but tab (C0, DEL, C1: a newline or any other line break would start a second line), no lone
    surrogate, a type that is a key type's name (no options such as command="..."), and a base64 blob that declares
    that type. Whether sshd would use it is ``key_problem``'s question.
    """
    if not isinstance(key, str):
        return f"it is a {type(key).__name__}, not a string"
    if len(key) > MAX_KEY_CHARS:
        return f"it is {len(key)} characters long; at most {MAX_KEY_CHARS}"
    for position, character in enumerate(key):
        if character != TAB and (character in LINE_BREAKS or unicodedata.category(character) in ("Cc", "Cs")):
            return (
                f"it holds U+{ord(character):04X} at position {position}, a control, line-break or surrogate "
                "character (a key is one line of printable characters; a tab may separate its parts)"
            )
    kind, blob_text = _type_and_blob(key)
    if not _TYPE_NAME.fullmatch(kind):
        return f"it starts with {kind[:40]!r}, not a key type (no options such as command=...); accepted: {ACCEPTED}"
    blob = _blob(blob_text)
    if blob is None:
        return f"the text after {kind!r} is not the key's base64 blob"
    declared = _ssh_string(blob, 0)
    if declared is None or declared[0] != kind.encode("ascii"):
        return f"its base64 blob is not a key of the type {kind}"
    return None


def key_problem(key: object) -> str | None:
    """Why ``key`` is not an SSH public key sfa-omf writes to authorized_keys, or None when it is one.

    A harmless key (``key_danger``) of one of KEY_TYPES whose base64 blob is a well-formed key of that type (RSA of at
    least MIN_RSA_BITS): one sshd uses.
    """
    danger = key_danger(key)
    if danger is not None:
        return danger
    assert isinstance(key, str)  # (key_danger refuses anything else)
    return _unusable(key)


def _unusable(key: str) -> str | None:
    """``key_problem`` of a key ``key_danger`` found harmless: why sshd would not use it, or None."""
    kind, blob_text = _type_and_blob(key)
    blob = _blob(blob_text)
    assert blob is not None
    if kind == "ssh-dss":
        return f"it is a DSA (ssh-dss) key, which OpenSSH 9 refuses; accepted: {ACCEPTED}"
    if kind not in KEY_TYPES:
        what = "an OpenSSH certificate, which" if kind.endswith("-cert-v01@openssh.com") else "a type"
        return f"its type {kind!r} is {what} sshd does not take as a user's key; accepted: {ACCEPTED}"
    declared = _ssh_string(blob, 0)
    assert declared is not None
    malformed = f"its base64 blob is not a well-formed key of the type {kind}"
    if kind == SK_ED25519:
        return None if _is_sk_ed25519(blob, declared[1]) else malformed
    if kind == SK_ECDSA:
        return None if _is_sk_ecdsa(blob, declared[1]) else malformed
    try:
        public = serialization.load_ssh_public_key(f"{kind} {blob_text}".encode("ascii"))
    except (ValueError, UnsupportedAlgorithm):
        return malformed
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < MIN_RSA_BITS:
        return (
            f"it is an RSA key of {public.key_size} bits, which OpenSSH refuses (at least {MIN_RSA_BITS}; "
            "3072 advised, or ssh-keygen -t ed25519)"
        )
    return None


def is_ssh_public_key(key: str) -> bool:
    """One line, "type base64 [comment]", whose base64 blob is a key of the type it declares, one sshd accepts.

    Anything else (options such as command="...", a line break that starts a second line, text that only looks like
    a key, a key type sshd refuses) could change what the key allows once written to authorized_keys, or never work,
    so it is not a key here (``key_problem`` says why).
    """
    return key_problem(key) is None


def ssh_public_key(value: object, where: str = "key") -> str:
    """``value`` stripped if it is an SSH public key, else BadArgs naming ``where``, what is wrong and the expected
    form."""
    key = _harmless_key(value, where)
    problem = _unusable(key)
    if problem is not None:
        raise BadArgs(_not_a_key(where, problem, key))
    return key


def ssh_public_keys(value: object, where: str = "keys") -> list[str]:
    """A list of SSH public keys (nil is none). One string is refused rather than read one character per key."""
    return [ssh_public_key(item, f"{where}[{index}]") for index, item in enumerate(_key_list(value, where))]


def usable_ssh_public_keys(value: object, where: str = "keys") -> tuple[list[str], list[tuple[str, str]]]:
    """The keys of ``value`` (a list, as ``ssh_public_keys``) split in two: those sshd uses, stripped, and those it
    would not use, each with why (``key_problem``), to be left out. A key that could do harm (``key_danger``:
    options, a second line, a control character) is BadArgs naming ``where`` as ``ssh_public_key`` does: never
    left out in silence."""
    usable: list[str] = []
    unusable: list[tuple[str, str]] = []
    for index, item in enumerate(_key_list(value, where)):
        place = f"{where}[{index}]"
        key = _harmless_key(item, place)
        problem = _unusable(key)
        if problem is None:
            usable.append(key)
        else:
            unusable.append((key, f"{place}: {problem}"))
    return usable, unusable


def _key_list(value: object, where: str) -> list[object]:
    """The list of keys ``value`` is (nil: none); BadArgs for anything else (a string would be read one character
    per key)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadArgs(f"{where} must be a list of SSH public key strings, not {type(value).__name__}")
    return value


def _harmless_key(value: object, where: str) -> str:
    """``value`` stripped when it is a string that can do no harm in authorized_keys (``key_danger``), else BadArgs."""
    if not isinstance(value, str):
        raise BadArgs(f"{where} must be an SSH public key string, not {type(value).__name__}")
    key = value.strip()
    danger = key_danger(key)
    if danger is not None:
        raise BadArgs(_not_a_key(where, danger, key))
    return key


def _not_a_key(where: str, why: str, key: str) -> str:
    return (
        f"{where} is not an SSH public key of one line (expected 'ssh-ed25519 AAAAC3... comment', no options): "
        f"{why}: {key[:40]!r}"
    )


def _type_and_blob(key: str) -> tuple[str, str]:
    """The key's type and base64 text, as OpenSSH splits the line (spaces or tabs)."""
    fields = _SEPARATOR.split(key, maxsplit=2)
    return fields[0], fields[1] if len(fields) > 1 else ""


def _blob(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _ssh_string(blob: bytes, offset: int) -> tuple[bytes, int] | None:
    """The SSH string (uint32 length, then the bytes) at ``offset`` of ``blob`` and the offset after it; None when
    the blob is too short for it."""
    if len(blob) < offset + 4:
        return None
    (length,) = struct.unpack(">I", blob[offset : offset + 4])
    end = offset + 4 + length
    if len(blob) < end:
        return None
    return blob[offset + 4 : end], end


def _is_sk_ed25519(blob: bytes, offset: int) -> bool:
    """The rest of a sk-ssh-ed25519@openssh.com blob: the 32-byte public key, the application, no more."""
    public = _ssh_string(blob, offset)
    if public is None or len(public[0]) != 32:
        return False
    application = _ssh_string(blob, public[1])
    return application is not None and application[1] == len(blob)


def _is_sk_ecdsa(blob: bytes, offset: int) -> bool:
    """The rest of a sk-ecdsa-sha2-nistp256@openssh.com blob: the curve "nistp256", a point of that curve, the
    application, no more."""
    curve = _ssh_string(blob, offset)
    if curve is None or curve[0] != b"nistp256":
        return False
    point = _ssh_string(blob, curve[1])
    if point is None:
        return False
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point[0])
    except ValueError:
        return False
    application = _ssh_string(blob, point[1])
    return application is not None and application[1] == len(blob)
