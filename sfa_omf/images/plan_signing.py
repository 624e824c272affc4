"""Signed plans and actions: the nodes act as root only on what the aggregate signed.

The plans directory is shared with the nodes, and during a lease its experimenter is root on the lease's node (its
containers are privileged). File ownership therefore proves nothing about who wrote a plan or an action: the aggregate
signs each one with its own Ed25519 key (``plan_signing_key``, made on first use), and a node verifies it against the
public keys an operator installed in ``/etc/sfa-omf/plan-signers`` (``sfa-omf instance signing-key`` prints the
line). A signed file is a JSON envelope: the document's own text, what it is (a plan, an action) and the signature over
both, so an action is never taken for a plan nor a plan of one kind for another.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sfa_omf.files import PRIVATE_FILE, PUBLIC_DIRECTORY, create_file, make_directories

KIND_PLAN, KIND_ACTION = "plan", "action"
KEY_LINE_TYPE = "sfa-omf-plan-signer"  # the first word of a public key line in /etc/sfa-omf/plan-signers
_DOMAIN = b"sfa-omf signed document v1\n"  # what a signature is about: nothing else this key might sign


class SignatureError(ValueError):
    """A signed document that is not signed, not signed by a trusted key, altered, or of another kind."""


def key_id(public: Ed25519PublicKey) -> str:
    """A short name of a public key (the first 16 hex digits of its sha256): said in messages and envelopes."""
    return hashlib.sha256(_raw(public)).hexdigest()[:16]


class PlanSigner:
    """The aggregate's signing key, read from ``path`` (an Ed25519 private key, PEM), made there on first use."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._key = _load_or_make(self.path)
        self.verifier = PlanVerifier([self._key.public_key()])

    def public_line(self) -> str:
        """The line an operator puts in each node's /etc/sfa-omf/plan-signers."""
        public = self._key.public_key()
        encoded = base64.b64encode(_raw(public)).decode("ascii")
        return f"{KEY_LINE_TYPE} {encoded} {key_id(public)}"

    def sign(self, kind: str, document: str) -> str:
        """The envelope of ``document`` (a plan's or an action's JSON text) signed as a ``kind``."""
        signature = self._key.sign(_message(kind, document))
        envelope = {
            "kind": kind,
            "document": document,
            "signer": key_id(self._key.public_key()),
            "ed25519": base64.b64encode(signature).decode("ascii"),
        }
        return json.dumps(envelope, indent=1, sort_keys=True) + "\n"


class PlanVerifier:
    """The public keys whose signatures count (a node may trust several: an aggregate's key being replaced)."""

    def __init__(self, keys: list[Ed25519PublicKey]) -> None:
        self.keys = {key_id(key): key for key in keys}

    @staticmethod
    def from_lines(text: str) -> PlanVerifier:
        """The keys of a plan-signers file: ``sfa-omf-plan-signer BASE64 [comment]`` per line, ``#`` comments;
        SignatureError naming the first line that is not one."""
        keys = []
        for number, line in enumerate(text.splitlines(), 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) < 2 or words[0] != KEY_LINE_TYPE:
                raise SignatureError(f"line {number} is not '{KEY_LINE_TYPE} BASE64-KEY [comment]'")
            try:
                keys.append(Ed25519PublicKey.from_public_bytes(base64.b64decode(words[1], validate=True)))
            except (ValueError, binascii.Error) as exc:
                raise SignatureError(f"line {number}: not an Ed25519 public key ({exc})") from exc
        return PlanVerifier(keys)

    def open(self, kind: str, text: str) -> str:
        """The document ``text`` holds, once its signature is checked: SignatureError when it is not an envelope,
        not of ``kind``, not signed by one of these keys, or altered."""
        try:
            envelope = json.loads(text)
        except (ValueError, RecursionError) as exc:  # nested deep enough (anyone sharing the directory), it overflows
            raise SignatureError(f"not JSON: {type(exc).__name__}") from exc
        if not isinstance(envelope, dict) or not isinstance(envelope.get("document"), str):
            raise SignatureError(
                "not a signed document (if an aggregate older than signatures wrote it, Delete the lease's slivers "
                "and allocate them again)"
            )
        if envelope.get("kind") != kind:
            raise SignatureError(f"signed as a {envelope.get('kind')!r}, not as a {kind}")
        key = self.keys.get(str(envelope.get("signer")))
        if key is None:
            raise SignatureError(f"signed by key {str(envelope.get('signer'))[:16]!r}, which is not trusted here")
        try:
            signature = base64.b64decode(str(envelope.get("ed25519")), validate=True)
            key.verify(signature, _message(kind, envelope["document"]))
        except (ValueError, binascii.Error, InvalidSignature) as exc:
            raise SignatureError("its signature does not match (altered, or not signed by the aggregate)") from exc
        return str(envelope["document"])


def _message(kind: str, document: str) -> bytes:
    return _DOMAIN + kind.encode("ascii") + b"\n" + document.encode("utf-8")


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _load_or_make(path: Path) -> Ed25519PrivateKey:
    """The key at ``path``; made there (mode 0600, owned as its directory is, created exclusively: two processes
    starting at once keep the one written first) when there is none."""
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # 0755, not 0700: root may make it (an operator's command), and the service user must reach its own key in it.
        make_directories(str(path.parent), PUBLIC_DIRECTORY)
        owner = None
        if os.geteuid() == 0:  # made by root (an operator's command): the data directory's owner serves
            directory = path.parent.stat()
            owner = (directory.st_uid, directory.st_gid)
        # Whole or not at all (a crash leaves no empty key); fails if another process made it meanwhile: theirs is
        # kept, read below.
        with contextlib.suppress(FileExistsError):
            create_file(str(path), pem, PRIVATE_FILE, owner)
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:  # not PEM, or a key with a passphrase
        raise ValueError(
            f"{path} is not an unencrypted PEM private key ({type(exc).__name__}): [sfa_omf] plan_signing_key names "
            "the aggregate's Ed25519 key; point it at a file that does not exist and the key is made there"
        ) from exc
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{path} holds a key that is not Ed25519: plan signing keys are Ed25519")
    return loaded
