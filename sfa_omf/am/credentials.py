"""The credentials argument as clients send it: bare XML strings (sfi.py, AM API v2) or credential structs
{geni_type, geni_version, geni_value} (omni, AM API v3). geni_type is matched case-insensitively; a bare string is a
speaks-for credential when its <credential><type> is abac (AM API v2 has no structs to say so)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lxml import etree

from sfa_omf.errors import BadArgs
from sfa_omf.trust.speaksfor import ABAC_LIMITS
from sfa_omf.xmlsafe import UnsafeXml, parse_untrusted

SFA_TYPES = ("geni_sfa",)
ABAC_TYPES = ("geni_abac",)
#: Credentials one call may carry. Each is verified in turn until one allows the call (sfi.py and omni send one to
#: a few), so this bounds the work one call can make; the request size limit alone allows hundreds.
MAX_CREDENTIALS = 100


@dataclass(frozen=True)
class CallCredentials:
    """Privilege credentials (XML) and speaks-for credentials (geni_abac), split apart."""

    privilege: tuple[str, ...]
    speaks_for: tuple[str, ...]


def split_credentials(credentials: Any) -> CallCredentials:
    """Normalize the credentials argument; BADARGS saying what was expected when it is not a list of those."""
    if credentials is None:
        return CallCredentials((), ())
    if isinstance(credentials, str | dict):
        credentials = [credentials]
    if not isinstance(credentials, Sequence):
        raise BadArgs("credentials must be a list of credential strings or {geni_type, geni_version, geni_value}")
    if len(credentials) > MAX_CREDENTIALS:
        raise BadArgs(
            f"the call carries {len(credentials)} credentials; at most {MAX_CREDENTIALS} are accepted per call: "
            "send the credentials for this call (your user or slice credential, and a speaks-for one if any)"
        )
    privilege: list[str] = []
    speaks_for: list[str] = []
    for item in credentials:
        if isinstance(item, str):
            (speaks_for if is_abac_credential(item) else privilege).append(item)
        elif isinstance(item, dict):
            kind = str(item.get("geni_type", "")).lower()
            value = item.get("geni_value")
            if not isinstance(value, str):
                raise BadArgs("a credential struct has no geni_value string")
            if kind in SFA_TYPES:
                privilege.append(value)
            elif kind in ABAC_TYPES:
                speaks_for.append(value)
            else:
                shown = str(item.get("geni_type"))[:80]  # a refusal never echoes megabytes
                raise BadArgs(f"credential type {shown!r} is not supported (geni_sfa, geni_abac are)")
        else:
            raise BadArgs(f"a credential is a {type(item).__name__}; expected a string or a struct")
    return CallCredentials(tuple(privilege), tuple(speaks_for))


def is_abac_credential(document: str) -> bool:
    """Whether a bare credential string is a speaks-for (ABAC) credential: a <signed-credential> whose
    <credential><type> is abac. Read with the hardened parser within the speaks-for size bound; anything else (a
    privilege credential, a document too large or not well-formed) is not, and is refused, if at all, where
    privilege credentials are verified."""
    # Only a document that says "abac" can be one: the usual privilege credential is not parsed twice.
    if "abac" not in document or len(document) > ABAC_LIMITS.max_bytes:
        return False
    try:
        root = parse_untrusted(document, ABAC_LIMITS, what="credential")
    except (UnsafeXml, etree.XMLSyntaxError):
        return False
    kind = root.find("credential/type") if root.tag == "signed-credential" else None
    return kind is not None and (kind.text or "").strip() == "abac"
