"""The SFA Registry API for the local authority, as sfi.py and omni use it: GetVersion, GetSelfCredential,
GetCredential, Resolve, List, and Register, Update, Remove for holders of an authority credential (users may update
their own email and keys, and a slice's researchers its expiry and researchers with its slice credential).

Replies are not wrapped in the AM envelope; refusals are XML-RPC faults whose code is the GENI code and whose
message says what to do, as SFA's registry answers. One log line per call, like the aggregate's.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import time
import xmlrpc.client
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sfa_omf.am.caller_keys import RegisteredKeys
from sfa_omf.am.contract import credentials
from sfa_omf.am.credentials import split_credentials
from sfa_omf.arguments import (
    MAX_URN_CHARS,
    Checker,
    Param,
    Signature,
    email,
    string_list,
    struct,
    text,
    time_value,
)
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.errors import BadArgs, GeniCode, GeniError, Reason, TrustError, logged_refusal
from sfa_omf.registry.authority import DEFAULT_CREDENTIAL_LIFETIME, AuthorityError, IssuedAlready, LocalAuthority
from sfa_omf.registry.nodes import forget_node, node_hrn
from sfa_omf.registry.records import Memberships, Record, Records, new_record_urn, record_chain, record_email
from sfa_omf.registry.sfi_dirs import delete_user_sfi_dirs
from sfa_omf.server.xmlrpc import CallContext, shown_method
from sfa_omf.sshkeys import ssh_public_key, ssh_public_keys
from sfa_omf.times import format_time, parse_time, utcnow
from sfa_omf.trust.credential import same_urn
from sfa_omf.trust.gid import GidChain, chain_pem, load_gid_chain
from sfa_omf.trust.verifier import CredentialVerifier, VerifiedCredential
from sfa_omf.xrn import is_authority_over_urn, is_urn, join_hrn, parse_urn, shown_urn, split_hrn

log = logging.getLogger("sfa_omf.registry")


#: A slice registered without an expiry lives this long (renewable: sfa-omf slice renew, or Update with expires).
DEFAULT_SLICE_LIFETIME = timedelta(days=30)
#: How far from now a slice's researchers (and the PIs of its authority) may set its expiry with its slice credential
#: (Update, as omni renewslice sends it), unless ``[sfa] max_slice_renew`` (days, as SFA's) says otherwise: by default
#: as long as a slice credential lives, so that the credential GetCredential gives after the renewal ends with the
#: slice (config.py's default is this one's). An authority credential and `sfa-omf slice renew` go further.
MAX_SLICE_RENEW = DEFAULT_CREDENTIAL_LIFETIME
#: The spellings clients send for each field Register and Update write. SFA's registry reads researcher, pi and keys
#: as reg-researchers, reg-pis and reg-keys (registry_manager.normalize_input_record); omni's createslice writes PI;
#: researchers and pis are this registry's own older spellings. Two spellings of one field must agree.
FIELD_SPELLINGS: dict[str, tuple[str, ...]] = {
    "reg-keys": ("reg-keys", "keys"),
    "reg-researchers": ("reg-researchers", "researchers", "researcher"),
    "reg-pis": ("reg-pis", "pis", "pi", "PI"),
}
#: Fields real clients send in Register and Update records that mean nothing here: accepted and ignored. Any other
#: field this registry does not read is refused (1), so that a change asked for is never silently dropped (but for
#: READ_ONLY_FIELDS, which Register ignores and Update compares). omni's createslice sends description, url, name;
#: sfi.py register sends a user's first_name and last_name (and name with -n). last_updated, which Resolve shows, is
#: the registry's own stamp of the record's last change: a record file kept from an earlier Resolve holds an older
#: one, which asks for nothing.
IGNORED_FIELDS = frozenset({"description", "url", "name", "first_name", "last_name", "last_updated"})
#: Fields only an authority credential may change (a user may change their own email and keys; a slice credential
#: its own slice's expires and reg-researchers: RegistryApi._slice_credential).
AUTHORITY_ONLY_FIELDS = ("reg-researchers", "reg-pis", "expires")
#: The record type each field Register and Update write belongs to: given (not empty) for a record of another type,
#: it is refused, never stored. (Not ``email``: slice GIDs carry one too, and records shown with one go back as shown.)
FIELD_TYPES: dict[str, str] = {
    "reg-keys": "user",
    "reg-researchers": "slice",
    "expires": "slice",
    "reg-pis": "authority",
}


def _given(record: dict[str, Any], field: str) -> tuple[str, Any]:
    """The spelling of ``field`` (FIELD_SPELLINGS) the record gives, and its value; (field, None) when it gives none.
    (record_fields made sure that two spellings given agree.)"""
    for spelling in FIELD_SPELLINGS.get(field, (field,)):
        if record.get(spelling) is not None:
            return spelling, record[spelling]
    return field, None


def _filled(value: Any) -> bool:
    """Whether a field's value asks for something: not absent and not empty (records shown go back with empty ones)."""
    return value not in (None, "", [])


def _as_hrn(value: Any) -> str | None:
    """The HRN a value sent names (an HRN, or a URN's); None for what names nothing."""
    if not isinstance(value, str):
        return None
    if not is_urn(value):
        return value
    try:
        return parse_urn(value).hrn
    except GeniError:
        return None


def _same_name(sent: Any, shown: Any) -> bool:
    return bool(_as_hrn(sent) == shown)


def _same_names(sent: Any, shown: Any) -> bool:
    """The same HRNs (or URNs of them), in any order: the registry lists them in its own."""
    return isinstance(sent, list) and {_as_hrn(name) for name in sent} == set(shown)


def _same_urn(sent: Any, shown: Any) -> bool:
    try:
        return isinstance(sent, str) and same_urn(sent, shown)
    except GeniError:  # (a URN that does not parse)
        return False


def _same_time(sent: Any, shown: Any) -> bool:
    """The same second (Resolve shows times to the second), in any of the forms clients send times in."""
    try:
        return bool(format_time(parse_time(time_value(sent, "a time"))) == shown)
    except GeniError:
        return False


def _same_certificate(sent: Any, shown: Any) -> bool:
    """The same certificate first in both chains: the record's own (a client may send it without its issuers)."""
    try:
        return bool(shown) and load_gid_chain(sent)[0].fingerprint == load_gid_chain(shown)[0].fingerprint
    except GeniError:
        return False


def _same_text(sent: Any, shown: Any) -> bool:
    return bool(sent == shown)


#: Fields Resolve shows (record_dict) that Update never writes: the registry keeps or derives them. A record sent
#: back whole (sfi.py update of a record file, omni renewslice) carries them: as Resolve shows them now, or empty,
#: they pass and ask for nothing; with another value Update refuses them (3) naming the field, rather than dropping
#: the change asked for. Each with how a value sent is compared with the one shown, and where its change is made.
#: Register ignores them (it makes them). hrn, urn and type name the record Update changes (_record_named).
READ_ONLY_FIELDS: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
    "reg-urn": (_same_urn, "it is the record's URN, which its name gives"),
    "gid": (_same_certificate, "the registry's authority issued it; a user's SSH keys are reg-keys"),
    "authority": (_same_name, "it is the authority of this registry"),
    "peer_authority": (_same_text, "every record here is the local authority's own"),
    "date_created": (_same_time, "it is when the record was registered"),
    "reg-slices": (_same_names, "a user's slices are changed in each slice's record (reg-researchers)"),
    "reg-pi-authorities": (_same_names, "an authority's PIs are changed in its record (reg-pis)"),
}


def slice_lifetime(record: Record, longest: timedelta = DEFAULT_CREDENTIAL_LIFETIME) -> timedelta:
    """How long a slice credential issued now may live: up to the slice's expiry, at most ``longest`` (the usual
    lifetime, or the registry's max_slice_renew when that is longer: a slice its researchers may renew that far gets
    a credential as long, or the aggregates would refuse to renew its leases past the usual lifetime)."""
    if record.expires is None:
        return DEFAULT_CREDENTIAL_LIFETIME
    left = record.expires - utcnow()
    if left <= timedelta(0):
        raise GeniError(
            Reason.CREDENTIAL_EXPIRED,
            f"slice {record.hrn} expired at {format_time(record.expires)}; ask a PI of its authority (Update with "
            "expires and an authority credential) or its operator (sfa-omf slice renew) to renew it",
        )
    return min(left, longest)


def _hrn(xrn: Any) -> str:
    if not isinstance(xrn, str) or not xrn:
        raise BadArgs("name a record by its HRN or URN")
    return parse_urn(xrn).hrn if is_urn(xrn) else xrn


def _named(xrn: Any, kind: str | None = None) -> tuple[str, str | None]:
    """The HRN a call names and the record type it requires: a URN's own type (urn:...+slice+bob names a slice,
    never the user tb.bob), else ``kind`` (the call's type argument). A URN whose type is not ``kind`` is refused."""
    wanted = kind.partition("+")[0] if kind else None  # authority+sa is an authority record
    name = _hrn(xrn)  # refuses what names nothing
    if not is_urn(xrn):
        return name, wanted
    urn = parse_urn(xrn)
    if wanted is not None and urn.type != wanted:
        raise BadArgs(f"{xrn[:100]} names a {urn.type} but the type given is {wanted}: give a matching type")
    return urn.hrn, urn.type


def _record_named(record: dict[str, Any], kind: str | None) -> tuple[str, str | None]:
    """The HRN a Register or Update record names, and the type it requires (``_named``): its hrn, else its urn. Both
    given, they must name the same record, and the urn's type is the type required."""
    hrn, wanted = _named(record.get("hrn") or record.get("urn"), kind)
    if record.get("hrn") and record.get("urn"):
        urn_hrn, wanted = _named(record["urn"], kind)
        if urn_hrn != hrn:
            raise BadArgs(
                f"the record's hrn {hrn[:80]} and urn {record['urn'][:100]} name different records: give one of them, "
                "or both naming the same record"
            )
    return hrn, wanted


def _refuse_fields_of_other_types(record: dict[str, Any], kind: str) -> None:
    """BadArgs naming a field given (not empty) that a record of type ``kind`` does not have (FIELD_TYPES). Except
    the PIs of a slice that are all among the researchers the record gives: omni's createslice names its user as both
    (SFA keeps PIs of authorities only, and ignores them too); they are ignored, the researchers are recorded."""
    base = kind.partition("+")[0]
    for field, owner in FIELD_TYPES.items():
        name, value = _given(record, field)
        if not _filled(value) or owner == base:
            continue
        if field == "reg-pis" and base == "slice":
            researchers = {_hrn(member) for member in _given(record, "reg-researchers")[1] or []}
            if {_hrn(pi) for pi in value} <= researchers:
                continue
            raise BadArgs(
                f"a slice record has no field {name!r} (only an authority record has; PIs of a slice that are all "
                "among the researchers it gives, as omni sends them, are ignored): make them researchers "
                "(reg-researchers), or leave the field out of the record"
            )
        raise BadArgs(f"a {base} record has no field {name!r} (only a {owner} record has): leave it out of the record")


# -- the typed contract: every argument of every method checked before any work -----------------------------------
def xrn(value: Any, where: str) -> str:
    """An HRN or URN naming a record."""
    if not isinstance(value, str) or not value.strip():
        shown = "empty" if value == "" else type(value).__name__
        raise BadArgs(f"{where} must name a record by its HRN (testbed.alice) or URN, not {shown}")
    name = text(value, where)
    if len(name) > MAX_URN_CHARS:
        raise BadArgs(f"{where} is {len(name)} characters long; at most {MAX_URN_CHARS}")
    if is_urn(name):
        parse_urn(name)  # BadArgs naming what is wrong with it
    return name


def xrns(value: Any, where: str) -> list[str]:
    """One name or a list of them (Resolve)."""
    names = value if isinstance(value, list) else [value]
    if len(names) > 1000:
        raise BadArgs(f"{where} names {len(names)} records; at most 1000 per call")
    return [xrn(name, f"{where}[{index}]") for index, name in enumerate(names)]


def record_keys(value: Any, where: str) -> list[str]:
    """A user's SSH public keys (reg-keys, keys): a list, or one key as a string, as SFA's registry takes them (some
    clients send the key as a string); each checked as every key coming in is (sshkeys.ssh_public_key). An empty
    string is no key, as an empty list."""
    if isinstance(value, str):
        return [ssh_public_key(value, where)] if value.strip() else []
    return ssh_public_keys(value, where)


#: The SSH key type a user's GID can certify: GIDs are RSA certificates (SFA's, and every GENI tool's), and sfi.py
#: signs with the RSA private key in its HRN.pkey.
GID_SSH_KEY_TYPE = "ssh-rsa"


def gid_public_key(keys: Sequence[str]) -> rsa.RSAPublicKey | None:
    """The RSA public key of the first ssh-rsa key among ``keys`` (checked already: record_keys), the key a user's
    GID certifies when the registry issues it from their keys, as SFA's registry does with the first key (SFA fails
    on a first key that is not RSA; here the first RSA one is taken); None when none is RSA."""
    for key in keys:
        fields = key.split(None, 2)  # type, base64 blob, comment (OpenSSH separates them by spaces or tabs)
        if fields[0] != GID_SSH_KEY_TYPE:
            continue
        blob = fields[1] if len(fields) > 1 else ""
        try:  # (type and blob only: the comment may hold what the library does not read)
            public = serialization.load_ssh_public_key(f"{fields[0]} {blob}".encode("ascii"))
        except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError):
            raise BadArgs(f"the key {key[:40]!r} is not a well-formed {GID_SSH_KEY_TYPE} public key") from None
        if isinstance(public, rsa.RSAPublicKey):
            return public
    return None


def _stored_gid_key(keys: Sequence[str]) -> rsa.RSAPublicKey | None:
    """The first ssh-rsa key of a user's record (gid_public_key), None when there is none; a key stored before keys
    were checked that is no key counts as none."""
    try:
        return gid_public_key(keys)
    except BadArgs:
        return None


def public_key_id(key: rsa.RSAPublicKey) -> str:
    """The key's id as a GID's key_id reads it (SHA-256 of its DER SubjectPublicKeyInfo)."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def no_gid_key(hrn: str, field: str) -> BadArgs:
    """The refusal of keys among which none is RSA, for a user whose GID is to be issued from them."""
    return BadArgs(
        f"none of the keys given in {field!r} for {hrn[:100]} is an {GID_SSH_KEY_TYPE} key: the registry issues a "
        f"user's certificate (GID) for their first {GID_SSH_KEY_TYPE} key, whose private half sfi.py needs as its "
        f"HRN.pkey (GIDs and sfi.py take RSA keys only); give an {GID_SSH_KEY_TYPE} public key among the keys "
        "(ssh-keygen -t rsa -b 3072), or the user's certificate as the record's gid"
    )


def xrn_list(value: Any, where: str) -> list[str]:
    """A list of names (researchers, PIs); nil is none."""
    return [xrn(name, f"{where}[{index}]") for index, name in enumerate(string_list(value, where, limit=1000))]


def certificate_pem(value: Any, where: str) -> str:
    """A certificate (or GID chain) in PEM: ASCII text with a BEGIN CERTIFICATE block."""
    if not isinstance(value, str) or not value.isascii() or "-----BEGIN CERTIFICATE-----" not in value:
        shown = type(value).__name__ if not isinstance(value, str) else "text that is not one"
        raise BadArgs(f"{where} must be a certificate in PEM (-----BEGIN CERTIFICATE----- ...), not {shown}")
    return value


def expiry(value: Any, where: str) -> datetime:
    """A record's expiry: a time, read now so that nothing is written for a time that cannot be one."""
    return parse_time(time_value(value, where), what=where)


def record_type(value: Any, where: str) -> str:
    """A record type, when given (user, slice, node, authority)."""
    if value is None or value == "":
        return ""
    kind = text(value, where).lower()
    if kind not in ("user", "slice", "node", "authority") and not kind.startswith("authority+"):
        raise BadArgs(f"{where}: {kind[:40]!r} is not a record type (user, slice, node, authority)")
    return kind


#: The fields of a record this registry reads (in every spelling, FIELD_SPELLINGS), and how each is checked. Others
#: are refused, but for the IGNORED_FIELDS clients send routinely and the READ_ONLY_FIELDS Resolve shows.
RECORD_FIELDS: dict[str, Checker] = {
    "hrn": xrn,
    "urn": xrn,
    "type": record_type,
    "email": email,
    **dict.fromkeys(FIELD_SPELLINGS["reg-keys"], record_keys),
    **dict.fromkeys(FIELD_SPELLINGS["reg-researchers"], xrn_list),
    **dict.fromkeys(FIELD_SPELLINGS["reg-pis"], xrn_list),
    "expires": expiry,
    "gid": certificate_pem,
}


def record_fields(value: Any, where: str) -> dict[str, Any]:
    """A record struct with every field this registry reads checked (and nothing written before that): a field it
    neither reads nor ignores (IGNORED_FIELDS, READ_ONLY_FIELDS) is refused, naming it, as are two spellings of a field
    that disagree."""
    record = struct(value, where)
    for name in record:
        if name not in RECORD_FIELDS and name not in IGNORED_FIELDS and name not in READ_ONLY_FIELDS:
            hint = (
                "a user's slices are changed in each slice's record (reg-researchers)"
                if name == "slices"
                else f"the fields read are {', '.join(RECORD_FIELDS)}"
            )
            raise BadArgs(f"{where}: the field {name[:60]!r} is not one this registry reads ({hint}); leave it out")
    for name, check in RECORD_FIELDS.items():
        if record.get(name) is not None:
            record[name] = check(record[name], f"{where}.{name}")
    for spellings in FIELD_SPELLINGS.values():
        given = [name for name in spellings if record.get(name) is not None]
        if any(record[name] != record[given[0]] for name in given[1:]):
            raise BadArgs(
                f"{where} gives {' and '.join(repr(name) for name in given)}, which are one field, with different "
                "values: give one of them"
            )
    return record


def _optional(check: Checker) -> Checker:
    return lambda value, where: None if value is None else check(value, where)


_CREDENTIALS = Param("credentials", credentials)
_OPTIONS = Param("options", _optional(struct), optional=True)
_TYPE = Param("type", record_type, optional=True)

SIGNATURES: dict[str, Signature] = {
    "GetVersion": Signature((), extra_ignored=True),
    "GetSelfCredential": Signature((Param("certificate", certificate_pem), Param("xrn", xrn), _TYPE)),
    "GetCredential": Signature((_CREDENTIALS, Param("xrn", xrn), _TYPE)),
    "Resolve": Signature((Param("xrns", xrns), _CREDENTIALS, _OPTIONS)),
    "List": Signature((Param("xrn", xrn), _CREDENTIALS, _OPTIONS)),
    "Register": Signature((Param("record", record_fields), _CREDENTIALS)),
    "Update": Signature((Param("record", record_fields), _CREDENTIALS)),
    "Remove": Signature((Param("xrn", xrn), _CREDENTIALS, _TYPE)),
}


def record_dict(record: Record, authority_hrn: str, memberships: Memberships | None = None) -> dict[str, Any]:
    """A record with the fields sfi.py and omni read; a user's with ``reg-slices`` (the slices listing them as a
    researcher) and ``reg-pi-authorities`` (the authorities listing them as a PI), HRNs as SFA shows them: sfi.py
    list and myslice, and omni listmyslices, read them. ``memberships``: Records.memberships of the user (none
    given: none)."""
    user_fields: dict[str, Any] = {}
    if record.type == "user":
        slices, pi_authorities = memberships or ((), ())
        user_fields = {"reg-slices": list(slices), "reg-pi-authorities": list(pi_authorities)}
    return {
        **user_fields,
        "hrn": record.hrn,
        "type": record.type,
        "reg-urn": record.urn,
        "urn": record.urn,
        "gid": record.gid,
        "email": record.email,
        "reg-keys": list(record.keys),
        "reg-researchers": list(record.researchers),
        "reg-pis": list(record.pis),
        "authority": authority_hrn,
        "peer_authority": "",  # every record here is the local authority's own (SFA: None for local records)
        **({"expires": format_time(record.expires)} if record.expires is not None else {}),
        **({"date_created": format_time(record.created)} if record.created is not None else {}),
        **({"last_updated": format_time(record.updated)} if record.updated is not None else {}),
    }


def shown_records(records: Records, authority_hrn: str, found: Sequence[Record]) -> list[dict[str, Any]]:
    """Records as Resolve and List answer them (record_dict); the users' slices and PI authorities read in one
    query for all of them."""
    memberships = records.memberships([record.hrn for record in found if record.type == "user"])
    return [record_dict(record, authority_hrn, memberships.get(record.hrn)) for record in found]


def _log_call(
    context: CallContext, shown: str, code: GeniCode, started: float, refusal: GeniError | None = None
) -> None:
    """The one log line of a registry call; ``shown`` is the method as shown_method() shows it; a refused call's line
    says why (logged_refusal)."""
    caller = shown_urn(context.caller_chain[0].urn if context.caller_chain else None)
    milliseconds = (time.perf_counter() - started) * 1000
    log.info("%s caller=%s geni_code=%d ms=%.1f%s", shown, caller, int(code), milliseconds, logged_refusal(refusal))


class RegistryApi:
    """The handler the XML-RPC transport calls for the registry port."""

    def __init__(
        self,
        authority: LocalAuthority,
        records: Records,
        verifier: CredentialVerifier,
        max_slice_renew: timedelta = MAX_SLICE_RENEW,
    ) -> None:
        self.authority = authority
        self.records = records
        self.verifier = verifier
        self.max_slice_renew = max_slice_renew  # how far ahead a slice credential may renew its slice
        self.methods: dict[str, Callable[[CallContext, tuple[Any, ...]], Any]] = {
            "GetVersion": self.get_version,
            "GetSelfCredential": self.get_self_credential,
            "GetCredential": self.get_credential,
            "Resolve": self.resolve,
            "List": self.list,
            "Register": self.register,
            "Update": self.update,
            "Remove": self.remove,
        }

    def __call__(self, context: CallContext, method: str, params: tuple[Any, ...]) -> Any:
        started = time.perf_counter()
        code = GeniCode.SUCCESS
        refusal: GeniError | None = None
        try:
            implementation = self.methods.get(method)
            if implementation is None:
                raise GeniError(
                    Reason.UNSUPPORTED,
                    f"{shown_method(method)} is not offered by this registry ({', '.join(self.methods)})",
                )
            return implementation(context, SIGNATURES[method].check(params, method))
        except GeniError as error:
            code, refusal = error.code, error
            raise xmlrpc.client.Fault(int(error.code), error.message) from error
        except Exception:
            code = GeniCode.SERVERERROR  # (the transport logs the traceback and answers fault 5)
            raise
        finally:
            _log_call(context, shown_method(method), code, started, refusal)

    def refuse(self, context: CallContext, method: str, error: GeniError) -> Any:
        """The transport's refusal of a call (a method name that is no name, no client certificate): a fault, as
        every refusal of the registry; ``method`` is shown_method()'s already."""
        _log_call(context, method, error.code, time.perf_counter(), error)
        raise xmlrpc.client.Fault(int(error.code), error.message)

    # -- methods ------------------------------------------------------------------------------------------------
    def get_version(self, context: CallContext, params: tuple[Any, ...]) -> dict[str, Any]:
        return {
            "interface": "registry",
            "sfa": 2,
            "hrn": self.authority.hrn,
            "urn": self.authority.urn,
            "peers": {},
            "code_tag": "sfa-omf",
        }

    def get_self_credential(self, context: CallContext, params: tuple[Any, ...]) -> str:
        """sfi.py's bootstrap: the holder of a user's key gets that user's credential."""
        record = self._record(*_named(params[1], "user"))
        registered = record_chain(record)[0]
        try:
            presented = load_gid_chain(params[0])[0]
        except BadArgs as exc:
            raise BadArgs("the first argument must be your certificate (PEM)") from exc
        caller = context.caller_chain[0] if context.caller_chain else None
        if presented.key_id != registered.key_id or caller is None or caller.key_id != registered.key_id:
            raise GeniError(
                Reason.OWNER_MISMATCH,
                f"the key you connect with is not the key registered for {record.hrn}; use that user's private key "
                f"(for a user registered or updated with SSH keys, the private half of their first {GID_SSH_KEY_TYPE} "
                "key)",
            )
        chain = record_chain(record)
        return self.authority.credential(
            chain, chain, lifetime=self._credential_lifetime(chain, chain), can_delegate=False
        )

    def get_credential(self, context: CallContext, params: tuple[Any, ...]) -> str:
        """A user's own credential, or a slice credential for a researcher of the slice."""
        caller = self._caller(context, params[0], "getcredential")
        target = self._record(*_named(params[1], params[2] or None))
        caller_chain = record_chain(caller)
        if target.type == "user" and target.hrn == caller.hrn:
            lifetime = self._credential_lifetime(caller_chain, caller_chain)
            return self.authority.credential(caller_chain, caller_chain, lifetime=lifetime, can_delegate=False)
        if target.type == "slice" and self._slice_member(caller.hrn, target):
            target_chain = record_chain(target)
            longest = max(DEFAULT_CREDENTIAL_LIFETIME, self.max_slice_renew)
            lifetime = self._credential_lifetime(caller_chain, target_chain, slice_lifetime(target, longest))
            return self.authority.credential(caller_chain, target_chain, lifetime=lifetime)
        if target.type == "authority" and caller.hrn in target.pis:
            lifetime = self._credential_lifetime(caller_chain, self.authority.chain)
            return self.authority.credential(caller_chain, self.authority.chain, lifetime=lifetime)
        raise GeniError(
            Reason.INSUFFICIENT_PRIVILEGES,
            f"{caller.hrn} may not have a credential for {target.type} {target.hrn} (only for themselves, for slices "
            "they are a researcher of or whose authority they are a PI of, and for authorities they are a PI of)",
        )

    def _credential_lifetime(
        self, owner_chain: GidChain, target_chain: GidChain, lifetime: timedelta = DEFAULT_CREDENTIAL_LIFETIME
    ) -> timedelta:
        """How long a credential issued now for owner over target may live: ``lifetime``, at most until the owner's,
        the target's or the authority's own certificate expires (a verifier refuses it from then on: a credential
        that outlives them misleads sfi.py, which fetches a new one only when the credential says it expired).
        Refused (15, nothing issued) when one of them has expired: the credential would be dead on arrival."""
        now = utcnow()
        root = self.authority.chain[0]
        named = (
            (owner_chain[0], "your certificate"),
            (target_chain[0], "the certificate of the credential's target"),
            (root, "the authority's root certificate"),
        )
        for gid, what in named:
            if gid.not_after > now:
                continue
            hrn = gid.hrn if gid.urn else gid.subject_cn
            if gid is root:
                todo = "its operator renews it with sfa-omf authority renew"
            elif gid.type == "user":
                todo = f"ask the operator of {self.authority.hrn} for sfa-omf user renew {hrn}"
            else:
                todo = f"ask the operator of {self.authority.hrn} to renew it (sfa-omf authority renew)"
            raise GeniError(
                Reason.CERTIFICATE_EXPIRED,
                f"{what} ({hrn}) expired at {format_time(gid.not_after)}: no credential is issued for it; {todo}",
            )
        return min(lifetime, *(gid.not_after - now for gid, _ in named))

    def resolve(self, context: CallContext, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        self._caller(context, params[1], "resolve")
        return shown_records(self.records, self.authority.hrn, [self._record(*_named(name)) for name in params[0]])

    def list(self, context: CallContext, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        self._caller(context, params[1], "list")
        return shown_records(self.records, self.authority.hrn, self.records.under(_hrn(params[0])))

    def register(self, context: CallContext, params: tuple[Any, ...]) -> str:
        """Register(record, credentials): an authority credential adds a user or slice under the authority (nodes
        follow the testbed's inventory: the operator adds them). The authority issues the GID and returns it (PEM):
        for the key of the certificate the record carries (gid); else, for a user, for the first ssh-rsa key of their
        keys (reg-keys), as SFA's registry does, refused (1, nothing written) when they give keys and none is RSA;
        else for a new key pair whose private half nobody gets (as SFA's: a slice's, or a user's registered without
        any key, who can use it only once Update gives them one)."""
        record = params[0]
        kind = str(record.get("type", ""))
        if kind == "node":
            raise BadArgs(
                "Register takes user and slice records, not nodes: node records follow the testbed's inventory; the "
                "operator adds a node with sfa-omf node add (or node import), which records it"
            )
        if kind not in ("user", "slice"):
            raise BadArgs(f"record type {kind!r}: Register takes user and slice records")
        hrn, _ = _record_named(record, kind)
        _refuse_fields_of_other_types(record, kind)
        urn = new_record_urn(hrn, kind)  # a name that maps to exactly this URN, within what the database holds
        members = self._members(record, "reg-researchers")
        email = record_email(record.get("email") or "")
        expires = record.get("expires")
        if expires is not None and expires <= utcnow():  # as Update and sfa-omf slice create: nothing issued for it
            raise BadArgs(f"the expiry {format_time(expires)} is in the past: give a time to come")
        authority_credential = self._authority_caller(context, params[1], "register", urn)
        named_pi_of = self._named_pi_of(hrn) if kind == "user" and authority_credential.delegated else ""
        if named_pi_of:
            # Whoever holds this name is a PI (named before it was registered): a delegate registering it with their
            # own key would get a fresh, undelegated authority credential, as changing the PIs would give them.
            raise GeniError(
                Reason.INSUFFICIENT_PRIVILEGES,
                f"{hrn} is named a PI of {named_pi_of}: registering it needs a PI's own authority "
                "credential (not a delegated one); ask a PI to register it",
            )
        if self.records.get(hrn) is not None:
            raise GeniError(Reason.ALREADY_EXISTS, f"{hrn} is registered already: use Update")
        self.records.refuse_same_but_for_case(hrn)  # tb.Bob beside tb.bob: one login for both
        self.records.refuse_if_removed_lately(hrn, urn)  # BUSY before the GID is issued
        if self.authority.has_issued(hrn):
            raise GeniError(
                Reason.ALREADY_EXISTS,
                f"a GID was issued for {hrn} already (sfa-omf credential issue) though it is not registered yet: the "
                "registry records it when it next starts; choose another name, or ask the operator",
            )
        keys_field, keys = _given(record, "reg-keys")
        public_key = self._given_certificate_key(record) if record.get("gid") else None
        if public_key is None and kind == "user" and keys:
            # The user signs with the private half of the key their GID certifies: a new key pair would be one
            # nobody holds (sfi.py's HRN.pkey is the user's SSH RSA key).
            public_key = gid_public_key(keys)
            if public_key is None:
                raise no_gid_key(hrn, keys_field)
        if kind == "slice" and expires is None:
            expires = utcnow() + DEFAULT_SLICE_LIFETIME
        try:
            chain, _ = self.authority.issue_gid(hrn, kind, public_key=public_key, email=email or None)
        except IssuedAlready as exc:  # (issued meanwhile)
            raise GeniError(Reason.ALREADY_EXISTS, f"a GID was issued for {hrn} already: choose another name") from exc
        except AuthorityError as exc:
            raise GeniError(Reason.BAD_ARGS, str(exc)) from exc
        try:
            self.records.add(
                Record(
                    hrn,
                    kind,
                    urn,
                    chain_pem(chain),
                    email,
                    tuple(str(key) for key in keys or []),
                    tuple(members or ()),
                    expires=expires,
                    # (A user's: a key pair the authority made and kept nothing of is held by nobody.)
                    key_held=(public_key is not None) if kind == "user" else None,
                )
            )
        except BaseException:
            # The call fails, so its GID file goes too: left behind, it would refuse every later Register of the name.
            self.authority.forget(hrn)
            raise
        if kind == "user" and public_key is None:
            log.info(
                "registered %s without a key or certificate: its GID certifies a new key pair nobody holds (as SFA's "
                "registry does); it is usable once an Update gives the user an ssh-rsa key (reg-keys)",
                hrn,
            )
        return chain_pem(chain)

    @staticmethod
    def _given_certificate_key(record: dict[str, Any]) -> rsa.RSAPublicKey:
        """The RSA key of the certificate a Register record carries (gid), which the GID issued certifies."""
        try:
            key = load_gid_chain(record["gid"])[0].public_key()
        except TrustError as exc:  # a key of an algorithm nobody reads: the caller's argument, not our fault
            raise BadArgs(f"the record's certificate must hold an RSA key: {exc.message}") from exc
        if not isinstance(key, rsa.RSAPublicKey):
            raise BadArgs("the record's certificate must hold an RSA key")
        return key

    def update(self, context: CallContext, params: tuple[Any, ...]) -> int:
        """Update(record, credentials): users update their own email and keys; a slice credential (its refresh
        privilege, as in SFA) its own slice's expiry and researchers, the expiry at most ``max_slice_renew`` from now
        (omni renewslice, sfi.py update -t slice); an authority credential anything. The fields Resolve shows that it
        does not write (READ_ONLY_FIELDS) pass when they are as shown, and are refused when they are not.

        A user's keys given (reg-keys) re-issue their GID for the first ssh-rsa key among them, as SFA's Update does,
        when the GID follows their SSH key (_rekeyed_chain): when it certifies another key than that one and the
        first ssh-rsa key on record was the one it certified, or there was none and nobody holds the key it certifies
        (a user registered without a key gets a usable one this way). From then on only that key's private half acts
        as the user, the earlier key is refused. A user whose GID certifies a key of their own (a certificate given at
        Register, ``user add --public-key``, the key pair user add made them), not their first ssh-rsa key on record,
        keeps it: their keys change alone, so the record sent back as Resolve shows it, or with other login keys,
        never locks them out. Keys of which none is RSA are stored and leave the GID as it is. A re-keying Update
        writes gids/ and the record together, or neither (_update_rekeyed)."""
        record = params[0]
        target = self._record(*_record_named(record, record.get("type") or None))
        changes_pis = _given(record, "reg-pis")[1] is not None
        slice_credential = False
        delegated = False  # (an authority credential delegated to the caller)
        try:
            authority_credential = self._authority_caller(context, params[1], "update", target.urn)
        except GeniError:
            slice_credential = target.type == "slice" and self._slice_credential(context, params[1], target)
            if slice_credential:
                self._refuse_beyond_slice_credential(record, target)
            else:
                caller = self._caller(context, params[1], "update")  # "refresh" lets users update their own record
                # (Empty, they ask for nothing: a user's own record sent back whole carries an empty reg-researchers
                # and reg-pis, which a user record always has.)
                if caller.hrn != target.hrn or any(_filled(_given(record, f)[1]) for f in AUTHORITY_ONLY_FIELDS):
                    also = (
                        f"; {target.hrn}'s expiry and researchers are updated with its slice credential "
                        "(GetCredential gives it to its researchers)"
                        if target.type == "slice"
                        else ""
                    )
                    raise GeniError(
                        Reason.INSUFFICIENT_PRIVILEGES,
                        f"{caller.hrn} may update only their own email and keys{also}; an authority credential "
                        "updates the rest",
                    ) from None
        else:
            delegated = authority_credential.delegated
            # The PIs are who GetCredential gives a fresh, undelegated authority credential: a delegate naming
            # himself (or a user record he registered with his own key) would outgrow the delegation, and outlive it.
            if target.type == "authority" and changes_pis and delegated:
                raise GeniError(
                    Reason.INSUFFICIENT_PRIVILEGES,
                    f"changing the PIs of {target.hrn} needs a PI's own authority credential (not a delegated one): "
                    f"ask a PI of {target.hrn} to make the change",
                )
        self._refuse_read_only_changes(record, target)
        _refuse_fields_of_other_types(record, target.type)
        email = record_email(record["email"]) if record.get("email") is not None else None
        expires = record.get("expires")
        if expires is not None and expires <= utcnow():
            raise BadArgs(f"the expiry {format_time(expires)} is in the past: give a time to come")
        if expires is not None and slice_credential:
            self._refuse_renewal_beyond_limits(target, expires)
        keys = _given(record, "reg-keys")[1]
        researchers, pis = self._members(record, "reg-researchers"), self._members(record, "reg-pis")
        if target.type == "slice":
            pis = None  # (omni's PI of a slice, among its researchers: ignored, _refuse_fields_of_other_types)
        chain = self._rekeyed_chain(target, keys, email, delegated)  # (made before anything is written)
        write = functools.partial(
            self.records.update, target.hrn, email=email, keys=keys, researchers=researchers, pis=pis, expires=expires
        )
        if chain is None:
            write()
        else:
            self._update_rekeyed(target.hrn, chain, write)
        return 1

    def _rekeyed_chain(
        self, target: Record, keys: Sequence[str] | None, email: str | None, delegated: bool
    ) -> GidChain | None:
        """The GID chain an Update giving user ``target`` the SSH ``keys`` issues them: for the first ssh-rsa key
        among them (gid_public_key), when their GID follows their SSH key: it certifies another key now, and the
        first ssh-rsa key of their record (``target.keys``) is the key it certifies, or there is none and nobody holds
        the key it certifies (registered without a key, as sfi.py register without -k; ``target.key_held`` False, or
        None for a record made before the registry kept that). None when none is to be issued: not a user, no keys
        given, none RSA, the GID certifies that key already (the record sent back as Resolve shows it), or it
        certifies a key that is not their first ssh-rsa key on record, or one they hold (their own certificate, given
        at Register or by user add --public-key; the key pair user add made them: only their login keys change, and
        they keep acting with its key). ``email``: the address the Update gives (None: the one on record), which the
        new GID carries. A delegated authority credential does not re-key a PI (3): with the PI's name and a key of
        the delegate's, GetCredential would give the delegate a fresh, undelegated authority credential."""
        if target.type != "user" or not keys:
            return None
        public_key = gid_public_key(keys)
        if public_key is None:
            return None
        if target.gid.strip():
            certified = record_chain(target)[0].key_id
            if certified == public_key_id(public_key):
                return None  # (the key its GID certifies given first already)
            on_record = _stored_gid_key(target.keys)
            if on_record is not None and public_key_id(on_record) != certified:
                # The GID is the user's own certificate, not their SSH key (given at Register, user add --public-key):
                # their login keys change alone, and whoever holds its key still acts as them (the record sent back
                # as shown, or sfi.py update -k with a rotated login key, would lock them out).
                return None
            if on_record is None and target.key_held:
                # No ssh-rsa key on record, but they hold the key their GID certifies (user add made them the key
                # pair, or they gave a certificate at Register): their first ssh-rsa key is a login key, as above.
                return None
        pi_of = self._pi_of(target.hrn) if delegated else ()
        if pi_of:
            raise GeniError(
                Reason.INSUFFICIENT_PRIVILEGES,
                f"{target.hrn} is a PI of {', '.join(pi_of)}: giving them another {GID_SSH_KEY_TYPE} key re-issues "
                "their certificate for it, which needs a PI's own authority credential (not a delegated one) or their "
                "own user credential: ask them, or a PI, to make the change",
            )
        address = email if email is not None else target.email
        try:
            return self.authority.new_chain(target.hrn, "user", public_key, email=address or None)
        except AuthorityError as exc:
            raise GeniError(Reason.BAD_ARGS, str(exc)) from exc

    def _update_rekeyed(self, hrn: str, chain: GidChain, write: Callable[..., Record | None]) -> None:
        """Write an Update that re-issues user ``hrn``'s GID (``chain``): its gids/ file first (a start imports from
        gids/, ``authority renew`` re-issues from it), then the record with ``write`` (records.update, given the
        GID), both under the lock of gids/ (issued_lock: two re-keys at once end with the file and the record of the
        later one); the file is put back as it was when the record's write fails, so that a failing call writes
        nothing. A gids/ that cannot be written (a full disk) is answered SERVER_ERROR, nothing changed."""
        with contextlib.ExitStack() as locked:
            try:
                locked.enter_context(self.authority.issued_lock())
                previous = self.authority.replace_issued(hrn, chain)
            except OSError as exc:
                log.warning(
                    "cannot write the re-issued GID of %s to %s: %s; its Update was refused, nothing changed",
                    hrn,
                    self.authority.issued_gid_path(hrn),
                    exc.strerror or exc,
                )
                raise GeniError(
                    Reason.SERVER_ERROR,
                    f"the registry could not store the new certificate of {hrn} (its GID directory is not writable, "
                    "or full): nothing was changed, the earlier key still acts; try again later, and tell the "
                    "testbed's operator if it lasts",
                ) from None
            try:
                updated = write(gid=chain_pem(chain))
            except BaseException:
                try:
                    self.authority.restore_issued(hrn, previous)
                except OSError as exc:  # (the error that failed the call goes on)
                    log.error("cannot put back the GID file of %s as it was: %s", hrn, exc)
                raise
            if updated is None:  # removed meanwhile: so is its file (Remove's may have gone before this one)
                self.authority.forget(hrn)
                return
        log.info(
            "re-issued the GID of %s for its first %s key (key id %s): the earlier key no longer acts as it",
            hrn,
            GID_SSH_KEY_TYPE,
            chain[0].key_id[:16],
        )

    def remove(self, context: CallContext, params: tuple[Any, ...]) -> int:
        """Remove(xrn, credentials, type): an authority credential removes a user or slice record. A user leaves
        every slice and authority they were a member or PI of, so whoever registers the name next inherits nothing.
        A node record goes only when the inventory has no such node (one Register made before it refused nodes)."""
        target = self._record(*_named(params[0], params[2] or None))
        authority_credential = self._authority_caller(context, params[1], "remove", target.urn)
        if target.type == "authority":
            raise BadArgs(
                f"{target.hrn} is an authority: its record cannot be removed (its PIs would lose their rights for "
                "good); to change who its PIs are, Update it with reg-pis"
            )
        if target.type == "node":
            if self._in_inventory(target):
                raise BadArgs(
                    f"{target.hrn} is a node of the inventory: node records follow the testbed's inventory; the "
                    "operator removes the node with sfa-omf node remove"
                )
            forget_node(self.authority, self.records, target.urn)  # not in the inventory: nothing else holds it
            return 1
        pi_of = self._pi_of(target.hrn) if target.type == "user" and authority_credential.delegated else ()
        if pi_of:
            # Removing a PI takes them out of the authorities' PIs: as changing the PIs (update), a delegate may not.
            raise GeniError(
                Reason.INSUFFICIENT_PRIVILEGES,
                f"{target.hrn} is a PI of {', '.join(pi_of)}: removing them changes the PIs, which needs a PI's own "
                f"authority credential (not a delegated one): ask a PI of {', '.join(pi_of)} to remove them",
            )
        self.records.remove(target.hrn)
        self.authority.forget(target.hrn)  # else the next start would import it again from gids/
        if target.type == "user":  # (the name can be given to someone new with nothing inherited, as by the CLI)
            delete_user_sfi_dirs(self.authority.directory, self.authority.hrn, target.hrn)
        return 1

    # -- helpers ------------------------------------------------------------------------------------------------
    def _slice_member(self, user_hrn: str, target: Record) -> bool:
        """Whether ``user_hrn`` gets the credential of slice ``target``: a researcher of it, or a PI of an authority
        of this registry over it (SFA's determine_user_rights gives slice credentials to the PIs of the slice's
        authority; their authority credential covers the slice already)."""
        if user_hrn in target.researchers:
            return True
        parts = split_hrn(target.hrn)[:-1]
        for length in range(len(parts), 0, -1):
            authority = self.records.get(join_hrn(parts[:length]))
            if authority is not None and authority.type == "authority" and user_hrn in authority.pis:
                return True
        return False

    def _slice_credential(self, context: CallContext, credentials: Any, target: Record) -> bool:
        """Whether the call carries a credential of slice ``target`` that allows its holder to update it (SFA: the
        slice credential's refresh privilege): verified, owned by the caller, issued for the slice registered now
        (not an earlier one of the name), its owner and delegators registered with their keys (as for an authority
        credential, _authority_caller), and its owner a researcher of the slice, or a PI of its authority, now: a
        researcher taken out of the slice must not put himself back with the credential he got before. False when
        it carries no slice credential (the user credential's rules then apply); a slice credential refused for
        one of these reasons is answered with that refusal."""
        if not context.caller_chain:
            return False
        now = utcnow()
        refusal: GeniError | None = None
        for credential in split_credentials(credentials).privilege:
            try:
                verified = self.verifier.verify(credential, now)
            except GeniError:
                continue  # (no slice credential usable here: the user-credential path says why)
            if verified.target_type != "slice":
                continue
            try:
                caller = self.verifier.verify_caller(context.caller_chain, now)
                self.verifier.authorize(verified, caller, target.urn, "update")
                self._refuse_unregistered(context, verified, "update")
                if verified.target_key_id != record_chain(target)[0].key_id:
                    raise GeniError(
                        Reason.TARGET_MISMATCH,
                        f"this slice credential was issued for an earlier slice named {target.hrn}, removed since: "
                        "ask for the credential of the slice registered now (GetCredential)",
                    )
                owner_hrn = parse_urn(verified.owner_urn).hrn
                if not self._slice_member(owner_hrn, target):
                    raise GeniError(
                        Reason.INSUFFICIENT_PRIVILEGES,
                        f"{owner_hrn} is no researcher of {target.hrn} (nor a PI of its authority) any more: its "
                        "slice credential no longer updates it; ask one of its researchers, or a PI of "
                        f"{self.authority.hrn}",
                    )
                return True
            except GeniError as exc:
                refusal = refusal or exc
        if refusal is not None:
            raise refusal
        return False

    def _refuse_beyond_slice_credential(self, record: dict[str, Any], target: Record) -> None:
        """INSUFFICIENT_PRIVILEGES naming a field a slice credential may not change (only expires and
        reg-researchers): the record's ``email``, when it is not the slice's as Resolve shows it (omni sends the
        record back whole). (A slice has no keys nor PIs: _refuse_fields_of_other_types refuses them.)"""
        if record.get("email") is not None and record_email(record["email"]) != target.email:
            raise GeniError(
                Reason.INSUFFICIENT_PRIVILEGES,
                f"a slice credential changes only the expires and reg-researchers of {target.hrn}, not its email: "
                f"leave the email as it is, or ask a PI of {self.authority.hrn} (an authority credential)",
            )

    def _refuse_read_only_changes(self, record: dict[str, Any], target: Record) -> None:
        """INSUFFICIENT_PRIVILEGES naming the first of the record's READ_ONLY_FIELDS given (not empty) with another
        value than Resolve shows for ``target`` now: Update never writes them, and a change asked for is refused,
        never dropped. The same value, or an empty one, asks for nothing (a record sent back whole)."""
        given = [field for field in READ_ONLY_FIELDS if _filled(record.get(field))]
        if not given:
            return
        (shown,) = shown_records(self.records, self.authority.hrn, [target])
        for field in given:
            same, why = READ_ONLY_FIELDS[field]
            if not same(record[field], shown.get(field, "")):
                raise GeniError(
                    Reason.INSUFFICIENT_PRIVILEGES,
                    f"the field {field!r} of {target.hrn} cannot be changed by Update ({why}): send it as Resolve "
                    "shows it now, or leave it out of the record",
                )

    def _refuse_renewal_beyond_limits(self, target: Record, expires: datetime) -> None:
        """POLICY when a slice credential would set the slice's expiry later than ``max_slice_renew`` from now, or than
        the slice's GID or the authority's (a slice credential cannot outlive them): unless that is no later than the
        slice's expiry now (shortening is allowed, as in SFA, geni-tools' clearinghouse and `sfa-omf slice renew`)."""
        now = utcnow()
        chain_ends = min(gid.not_after for gid in record_chain(target))
        latest = min(now + self.max_slice_renew, chain_ends)
        if expires <= latest or (target.expires is not None and expires <= target.expires):
            return
        why = (
            f"when the certificates of {target.hrn} and its authority expire"
            if chain_ends < now + self.max_slice_renew
            else f"{self.max_slice_renew.days} days from now, what a slice credential may ask"
        )
        raise GeniError(
            Reason.POLICY,
            f"{target.hrn} can be renewed with its slice credential to {format_time(latest)} at the latest ({why}); "
            f"{format_time(expires)} was asked: renew it to that time at most, or ask a PI of {self.authority.hrn} "
            "(an authority credential) or its operator (sfa-omf slice renew) for longer",
        )

    def _members(self, record: dict[str, Any], field: str) -> tuple[str, ...] | None:
        """The user HRNs a record's ``field`` (reg-researchers, reg-pis, in any of its spellings: FIELD_SPELLINGS)
        lists, each once in the order given; None when the record does not give it. A URN of another type than user,
        or the name of a record here that is not a user, is refused (users of other authorities, and users not
        registered yet, may be named)."""
        given, names = _given(record, field)
        field = field.removeprefix("reg-")
        if names is None:
            return None
        members: dict[str, None] = {}  # (each once, in the order given)
        for index, name in enumerate(names):
            where = f"{given}[{index}]"
            if is_urn(name) and parse_urn(name).type != "user":
                raise BadArgs(
                    f"{where} {name[:100]} names a record of type {parse_urn(name).type[:40]}: {field} are users"
                )
            hrn = _hrn(name)
            found = self.records.get(hrn)
            if found is not None and found.type != "user":
                raise BadArgs(
                    f"{where} {hrn[:100]} is a record of type {found.type} here, not a user: {field} are users"
                )
            members[hrn] = None
        return tuple(members)

    def _authority_caller(
        self, context: CallContext, credentials: Any, operation: str, target_urn: str
    ) -> VerifiedCredential:
        """Only an authority credential over the target's authority may change the registry: the one that allows
        the call (its ``delegated`` tells a PI's own from a delegation)."""
        texts = split_credentials(credentials).privilege
        verified = self.verifier.check_call(context.caller_chain, texts, target_urn, operation, utcnow())
        if verified.target_type != "authority":
            raise GeniError(
                Reason.INSUFFICIENT_PRIVILEGES, f"{operation} needs an authority credential of {self.authority.hrn}"
            )
        self._refuse_unregistered(context, verified, operation)
        return verified

    def _refuse_unregistered(self, context: CallContext, verified: VerifiedCredential, operation: str) -> None:
        """OWNER_MISMATCH when a credential that changes the registry comes from someone it no longer knows: its
        owner, a delegator or the caller a user of this authority removed, or holding another key than the registered
        one."""
        # The trust layer takes a caller of the owner's URN with another key (as SFA does); for users of this
        # authority the registry knows each name's one key: a removed PI's certificate, or a credential of an
        # earlier holder of the name, must not change the registry (am/caller_keys.py, as for the AM API).
        registered = RegisteredKeys(self.records, self.authority.hrn, ttl_s=0)
        caller = context.caller_chain[0] if context.caller_chain else None
        caller_urn, caller_key = (caller.urn or "", caller.key_id) if caller is not None else ("", "")
        # Whoever delegated the credential answers for it too: a removed PI's delegation changes nothing any more.
        delegators = [(urn, key_id, "the credential's delegator") for urn, key_id in verified.delegators]
        for urn, key_id, what in (
            (verified.owner_urn, verified.owner_key_id, "the credential's owner"),
            *delegators,
            (caller_urn, caller_key, "your certificate"),
        ):
            refusal = registered.refusal(urn, key_id)
            if refusal is not None:
                why = "is no longer registered" if refusal.removed else "holds another key than the registered one"
                raise GeniError(
                    Reason.OWNER_MISMATCH,
                    f"{what} ({urn}) {why}: {operation} needs the certificate and credential the registry issues to "
                    "its users now (GetSelfCredential with the registered key)",
                )

    def _pi_of(self, hrn: str) -> tuple[str, ...]:
        """The authorities whose PIs name ``hrn`` (all of them: Remove takes the user out of each)."""
        return tuple(record.hrn for record in self.records.of_type("authority") if hrn in record.pis)

    def _in_inventory(self, node: Record) -> bool:
        """Whether the inventory holds the node of this record (by its component ID, or a URN naming its HRN)."""
        inventory = Inventory(self.records.database)
        if inventory.find_nodes({node.urn}):
            return True
        return any(node_hrn(known.component_id) == node.hrn for known in inventory.list_nodes())

    def _named_pi_of(self, hrn: str) -> str:
        """The authority (of this registry, the user's own or one above it) whose PIs name ``hrn``; "" for none."""
        parts = split_hrn(hrn)[:-1]
        for length in range(len(parts), 0, -1):
            authority = self.records.get(join_hrn(parts[:length]))
            if authority is not None and authority.type == "authority" and hrn in authority.pis:
                return authority.hrn
        return ""

    def _record(self, hrn: str, kind: str | None) -> Record:
        record = self.records.get(hrn)
        if record is None or (kind is not None and record.type != kind):
            what = f"{kind} " if kind else ""
            # ("Record not found": the words omni's createslice looks for to tell a free name from a failure.)
            raise GeniError(
                Reason.NOT_FOUND, f"Record not found: no {what}record {hrn} in the registry of {self.authority.hrn}"
            )
        return record

    def _caller(self, context: CallContext, credentials: Any, operation: str) -> Record:
        """The calling user's record, after checking their credential allows ``operation``.

        First, as the write calls do (_authority_caller): an authority credential of this authority lets its holder
        read, a PI here or a user of another authority a PI here delegated it to (_authority_holder). Otherwise the
        credential must be the caller's own user credential, or an authority credential of a user of this
        authority, and the caller a user of this authority: users of other authorities are FORBIDDEN.

        As SFA's registry does, the caller may connect with a self-signed certificate (sfi.py's bootstrap): what
        proves who they are is that the TLS key is the key of the credential's owner, and the credential itself is
        verified against the trusted roots.
        """
        texts = split_credentials(credentials).privilege
        if not texts or not context.caller_chain:
            raise GeniError(
                Reason.NO_CREDENTIAL, f"{operation} needs your user credential (GetSelfCredential gives it)"
            )
        try:
            self._authority_caller(context, credentials, operation, self.authority.urn)
        except GeniError as refused:
            authority_refusal = refused
        else:
            return self._authority_holder(context.caller_chain)
        caller_key = context.caller_chain[0].key_id
        refusals: list[GeniError] = []
        for credential in texts:
            try:
                verified = self.verifier.verify(credential, utcnow())
                if verified.owner_key_id != caller_key:
                    raise GeniError(
                        Reason.OWNER_MISMATCH,
                        f"this credential belongs to {verified.owner_urn}, not to the key you connect with",
                    )
                # A credential naming no owner (SFA's old form) is refused as the trust layer refuses it (22), before
                # its empty owner URN is read as a name.
                self.verifier.authorize(verified, None, None, None)
                owner = parse_urn(verified.owner_urn)
                owner_hrn = owner.hrn
                # By the URN's authority field, as certificate chains are judged (xrn.is_authority_over_urn): for
                # authority fed.sub, urn:publicid:IDN+fed+user+sub is a user of fed, though its HRN reads fed.sub too.
                local_owner = is_authority_over_urn(self.authority.hrn, owner)
                if verified.target_type == "authority":
                    # An authority credential the authority check refused: for a user of another authority, or
                    # over a TLS chain that is not trusted, that refusal is the cause, not a missing user record.
                    if not local_owner or authority_refusal.reason == Reason.CALLER_UNTRUSTED:
                        raise self._authority_refusal_shown(authority_refusal, local_owner)
                elif verified.target_type != "user" or not same_urn(verified.target_urn, verified.owner_urn):
                    # A slice credential (or another user's) names no caller: it must not act as one. (Update takes
                    # a slice credential for its own slice before coming here: RegistryApi._slice_credential.)
                    own_slice = (
                        " (a slice credential updates only the expires and reg-researchers of its own slice)"
                        if operation == "update" and verified.target_type == "slice"
                        else ""
                    )
                    raise GeniError(
                        Reason.TARGET_MISMATCH,
                        f"this is a {verified.target_type or 'typeless'} credential for {verified.target_urn}: "
                        f"{operation} needs your own user credential (GetSelfCredential gives it) or an authority "
                        f"credential of {self.authority.hrn}{own_slice}",
                    )
                self.verifier.authorize(verified, None, None, operation)
                if not local_owner:
                    raise GeniError(
                        Reason.INSUFFICIENT_PRIVILEGES,
                        f"{owner_hrn} is a user of another authority: users of other authorities need an authority "
                        f"credential of {self.authority.hrn} for {operation} here (a PI of {self.authority.hrn} can "
                        "delegate theirs to you)",
                    )
                record = self.records.get(owner_hrn)
                if record is None or record.type != "user":
                    # Issued here to a user since removed (the docs: 22, as for an earlier holder of a name).
                    raise GeniError(
                        Reason.OWNER_MISMATCH,
                        f"this credential's owner {owner_hrn} is no longer registered here (no user record "
                        f"{owner_hrn} in the registry of {self.authority.hrn}): a PI of {self.authority.hrn} or its "
                        "operator can register you again; then ask for a new credential (GetSelfCredential)",
                    )
                # The name alone is not enough: a user removed and registered again under the same name (another
                # person, another key), or whose key an Update replaced, must not be reachable with the credential
                # of the earlier key.
                if record_chain(record)[0].key_id != verified.owner_key_id:
                    raise GeniError(
                        Reason.OWNER_MISMATCH,
                        f"this credential was issued to an earlier holder of {record.hrn}, whose key is no longer "
                        "registered (the user was registered again, or given another key since); ask for a new "
                        "credential with the registered key (GetSelfCredential)",
                    )
                return record
            except GeniError as exc:
                refusals.append(exc)
        raise refusals[0]

    def _authority_refusal_shown(self, refusal: GeniError, local_owner: bool) -> GeniError:
        """The authority check's refusal as _caller reports it: what to do added to the trust layer's words."""
        if refusal.reason == Reason.CALLER_UNTRUSTED:
            return GeniError(
                refusal.reason,
                f"the chain of your TLS client certificate is not trusted here ({refusal.message}); an authority "
                "credential acts only over a trusted certificate: connect with the certificate your authority issued "
                "you (not a self-signed one)",
            )
        if local_owner:
            return refusal
        return GeniError(
            refusal.reason,
            f"{refusal.message} (users of other authorities need an authority credential of {self.authority.hrn}, "
            f"which a PI of {self.authority.hrn} can delegate to them)",
        )

    def _authority_holder(self, caller_chain: GidChain) -> Record:
        """Who holds an authority credential that passed the authority check: their user record here, or, for a
        caller whose HRN names no record here (a user of another authority), a record made from their (verified) TLS
        certificate chain, never stored. A record of that HRN that is not this caller's own user record (another
        type, URN or key) is refused (OWNER_MISMATCH): a record made under its name would carry its memberships.
        Except an authority record for a caller of another authority by the URN's authority field
        (xrn.is_authority_over_urn): for authority fed.sub, fed's user urn:publicid:IDN+fed+user+sub has the HRN
        fed.sub of this authority's own record, which is no user and holds no user's memberships."""
        caller = caller_chain[0]
        record = self.records.get(caller.hrn)
        parsed = caller.parsed_urn
        of_another_authority = parsed is not None and not is_authority_over_urn(self.authority.hrn, parsed)
        if record is None or (of_another_authority and record.type == "authority"):
            return Record(caller.hrn, "user", caller.urn or "", chain_pem(caller_chain))
        if (
            record.type == "user"
            and same_urn(record.urn, caller.urn or "")
            and record_chain(record)[0].key_id == caller.key_id
        ):
            return record
        raise GeniError(
            Reason.OWNER_MISMATCH,
            f"your TLS certificate ({shown_urn(caller.urn)}) has the name {record.hrn} of the {record.type} record "
            f"{record.urn} here but is not the certificate registered for it: connect with your own user "
            "certificate (the one this registry or your own authority issued you)",
        )
