"""The AM API return envelope: {code: {geni_code, am_type, am_code}, value, output}.

Errors travel inside the envelope, never as XML-RPC faults. sfi.py decides success from ``output`` alone, so it is ""
on success and a message a person can act on otherwise.
"""

from __future__ import annotations

from typing import Any

from sfa_omf.errors import GeniCode, GeniError

AM_TYPE = "sfa-omf"


def success(value: Any, **extra: Any) -> dict[str, Any]:
    """A successful answer; ``extra`` adds top-level keys (GetVersion's geni_api)."""
    return {
        "code": {"geni_code": int(GeniCode.SUCCESS), "am_type": AM_TYPE, "am_code": int(GeniCode.SUCCESS)},
        "value": value,
        "output": "",
        **extra,
    }


def failure(error: GeniError, **extra: Any) -> dict[str, Any]:
    """A refusal: its GENI code, and its message as output (with the reason, which operators can grep for)."""
    return {
        "code": {"geni_code": int(error.code), "am_type": AM_TYPE, "am_code": int(error.code)},
        "value": "",
        "output": error.message or error.reason.value,
        **extra,
    }
