"""The one table of GENI error codes, and the exceptions that carry them.

Every refusal sfa-omf gives names a *reason* (a short, stable identifier an operator can grep for) and a message a
person can act on. The reason decides the GENI code through ``REASON_CODES`` below, and nowhere else.
"""

from __future__ import annotations

import enum


class GeniCode(enum.IntEnum):
    """GENI AM API return codes (geni_code), as the AM API v2/v3 specification numbers them."""

    SUCCESS = 0
    BADARGS = 1
    ERROR = 2
    FORBIDDEN = 3
    BADVERSION = 4
    SERVERERROR = 5
    TOOBIG = 6
    REFUSED = 7
    TIMEDOUT = 8
    DBERROR = 9
    RPCERROR = 10
    UNAVAILABLE = 11
    SEARCHFAILED = 12
    UNSUPPORTED = 13
    BUSY = 14
    EXPIRED = 15
    INPROGRESS = 16
    ALREADYEXISTS = 17
    MISSINGARGS = 18
    OUTOFRANGE = 19
    CREDENTIAL_INVALID = 20
    CREDENTIAL_EXPIRED = 21
    CREDENTIAL_MISMATCH = 22
    CREDENTIAL_SIGNER_UNTRUSTED = 23
    VLAN_UNAVAILABLE = 24
    INSUFFICIENT_BANDWIDTH = 25
    INSUFFICIENT_NODES = 26


class Reason(enum.StrEnum):
    """Why something was refused. The value is what logs and `sfa-omf credential verify` print."""

    # The credential document itself.
    MALFORMED = "malformed"  # not a credential: bad XML, missing elements, unparsable values
    HOSTILE_XML = "hostile_xml"  # DOCTYPE/entities, oversized, too deep
    SIGNATURE = "signature"  # a signature is missing, does not verify, or covers something else
    DELEGATION = "delegation"  # a delegation step breaks subset / can_delegate / expiry / signer rules
    CREDENTIAL_EXPIRED = "credential_expired"
    CREDENTIAL_NOT_YET_VALID = "credential_not_yet_valid"
    # Certificates (GIDs) anywhere: caller, owner, target, signer.
    CERTIFICATE_EXPIRED = "certificate_expired"  # a certificate in a chain is outside its validity period
    UNTRUSTED_CHAIN = "untrusted_chain"  # the chain does not end at one of our trusted roots
    INVALID_CHAIN = "invalid_chain"  # a link is not signed by its parent, parent not a CA, or naming rules broken
    ISSUER = "issuer"  # the credential's signer is no authority over its target
    # Use of a valid credential.
    OWNER_MISMATCH = "owner_mismatch"  # the caller is not the credential's owner
    TARGET_MISMATCH = "target_mismatch"  # the credential is for another object than the one named in the call
    INSUFFICIENT_PRIVILEGES = "insufficient_privileges"
    NO_CREDENTIAL = "no_credential"  # the call carried no credential we could use
    CALLER_UNTRUSTED = "caller_untrusted"  # the caller's own TLS certificate chain is not trusted
    # Arguments and the calendar.
    BAD_ARGS = "bad_args"  # an argument we cannot use: a malformed URN or time, an impossible interval
    TOO_BIG = "too_big"  # a document or request over the size limit
    BAD_VERSION = "bad_version"  # an RSpec or API version we do not speak
    UNSUPPORTED = "unsupported"  # a method or option this aggregate does not offer
    SERVER_ERROR = "server_error"  # a bug: logged with its traceback
    NOT_FOUND = "not_found"  # a node, pool, slice or lease that does not exist
    ALREADY_EXISTS = "already_exists"
    BOOKING_CONFLICT = "booking_conflict"  # the node is booked for (part of) the window
    POLICY = "policy"  # a rule the operator set (grain, durations, how far ahead, limits)
    UNAVAILABLE = "unavailable"  # the testbed behind the aggregate does not answer; retry later
    TIMEDOUT = "timedout"  # the testbed answered too slowly; retry later
    TESTBED = "testbed"  # the testbed refused or failed an operation; its own words are in the message
    DATABASE = "database"  # the database failed or is unreachable
    BUSY = "busy"  # concurrent writers kept colliding; the same call will work when tried again


#: The one table: reason -> GENI code.
REASON_CODES: dict[Reason, GeniCode] = {
    Reason.MALFORMED: GeniCode.CREDENTIAL_INVALID,
    Reason.HOSTILE_XML: GeniCode.CREDENTIAL_INVALID,
    Reason.SIGNATURE: GeniCode.CREDENTIAL_INVALID,
    Reason.DELEGATION: GeniCode.CREDENTIAL_INVALID,
    Reason.CREDENTIAL_EXPIRED: GeniCode.CREDENTIAL_EXPIRED,
    Reason.CREDENTIAL_NOT_YET_VALID: GeniCode.CREDENTIAL_INVALID,
    Reason.CERTIFICATE_EXPIRED: GeniCode.EXPIRED,
    Reason.UNTRUSTED_CHAIN: GeniCode.CREDENTIAL_SIGNER_UNTRUSTED,
    Reason.INVALID_CHAIN: GeniCode.CREDENTIAL_SIGNER_UNTRUSTED,
    Reason.ISSUER: GeniCode.CREDENTIAL_SIGNER_UNTRUSTED,
    Reason.OWNER_MISMATCH: GeniCode.CREDENTIAL_MISMATCH,
    Reason.TARGET_MISMATCH: GeniCode.CREDENTIAL_MISMATCH,
    Reason.INSUFFICIENT_PRIVILEGES: GeniCode.FORBIDDEN,
    Reason.NO_CREDENTIAL: GeniCode.FORBIDDEN,
    Reason.CALLER_UNTRUSTED: GeniCode.FORBIDDEN,
    Reason.BAD_ARGS: GeniCode.BADARGS,
    Reason.TOO_BIG: GeniCode.TOOBIG,
    Reason.BAD_VERSION: GeniCode.BADVERSION,
    Reason.UNSUPPORTED: GeniCode.UNSUPPORTED,
    Reason.SERVER_ERROR: GeniCode.SERVERERROR,
    Reason.NOT_FOUND: GeniCode.SEARCHFAILED,
    Reason.ALREADY_EXISTS: GeniCode.ALREADYEXISTS,
    Reason.BOOKING_CONFLICT: GeniCode.REFUSED,
    Reason.POLICY: GeniCode.REFUSED,
    Reason.UNAVAILABLE: GeniCode.UNAVAILABLE,
    Reason.TIMEDOUT: GeniCode.TIMEDOUT,
    Reason.TESTBED: GeniCode.ERROR,
    Reason.DATABASE: GeniCode.DBERROR,
    Reason.BUSY: GeniCode.BUSY,
}


class GeniError(Exception):
    """An error that reaches the caller as a GENI code and a message a person can act on.

    Its code follows from its reason through REASON_CODES.
    """

    # Set by a testbed whose request may have reached it all the same (no answer in time, a 502, a connection broken
    # off, an answer without a job id): the lease's job may exist, so what it needs (its plan, its containers'
    # addresses) is kept, as for TIMEDOUT.
    maybe_made: bool = False

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.code = REASON_CODES[reason]

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.message}"


class TrustError(GeniError):
    """A refusal by the trust layer (credentials, certificates, rights)."""


class BadArgs(GeniError):
    """The caller sent an argument we cannot use (a malformed URN or time, for example)."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.BAD_ARGS, message)


#: How much of a refusal's message a call's log line carries: enough for the reason and its names, never a flood.
LOGGED_MESSAGE_CHARACTERS = 300


def logged_refusal(error: GeniError | None) -> str:
    """What a call's log line adds when the call was refused: `` reason=<reason> why="<message>"``, the message on
    one line and cut, every character that is not printable escaped, and backslashes (a line break or a bidi override
    a caller put in an argument the message names never forges or reorders a log line, nor a final backslash its
    closing quote). Empty for a call that was not refused.
    Why: the code alone does not tell an operator what to do (3 is an untrusted caller as well as a call that
    carried no credential)."""
    if error is None:
        return ""
    text = "".join(
        character if character.isprintable() and character != "\\" else repr(character)[1:-1]
        for character in error.message[:LOGGED_MESSAGE_CHARACTERS]
    )
    if len(error.message) > LOGGED_MESSAGE_CHARACTERS:
        text += f"... ({len(error.message)} characters)"
    text = text.replace('"', "'")  # the quotes around it stay the only ones
    return f' reason={error.reason.value} why="{text}"'
