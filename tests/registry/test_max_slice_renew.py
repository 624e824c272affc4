"""``[sfa] max_slice_renew``, SFA's SFA_MAX_SLICE_RENEW (days): how far ahead a slice's researchers may renew it with
its slice credential (registry Update, as omni renewslice sends it). config.py accepted it and nothing read it: the
registry always allowed 30 days. Now config.py reads it as a whole number of days from 1 to 3650 (anything else is a
problem naming it), and the registry ``serve`` starts renews within it. A real registry over TLS, on SQLite and on a
real PostgreSQL, started from a configuration file that says 7.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.calendar.database import Database
from sfa_omf.config import MAXIMA, Settings, load_config, read_config
from sfa_omf.registry.api import MAX_SLICE_RENEW
from sfa_omf.registry.bootstrap import init_directory, register_demo
from sfa_omf.times import format_time, parse_time, utcnow
from sfa_omf.trust.credential import read_credential
from tests.postgres import empty_postgres
from tests.registry.conftest import Registry, served_registry
from tests.registry.test_interop_hunt_fixes import _admin, _user

EXP = "tb.exp"


def _with_max_slice_renew(path: Path, days: str) -> None:
    """``max_slice_renew = DAYS`` in the [sfa] section of the file, as an operator writes it."""
    text = path.read_text(encoding="utf-8")
    assert "[sfa]\n" in text
    path.write_text(text.replace("[sfa]\n", f"[sfa]\nmax_slice_renew = {days}\n", 1), encoding="utf-8")


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request: pytest.FixtureRequest, running_reactor: Any, tmp_path: Path) -> Iterator[Registry]:
    """The registry of tests/registry/test_registry_hunt_fixes.py, started as ``serve`` starts it from a
    configuration file with ``[sfa] max_slice_renew = 7``."""
    with _served_registry(running_reactor, tmp_path, request.param, 7) as served:
        yield served


@contextmanager
def _served_registry(running_reactor: Any, tmp_path: Path, backend: str, days: int) -> Iterator[Registry]:
    report = init_directory(str(tmp_path / "tb"), "tb", ("alice", "bob"))
    _with_max_slice_renew(tmp_path / "tb" / "sfa-omf.conf", str(days))
    settings = read_config(str(tmp_path / "tb" / "sfa-omf.conf"), environ={})
    assert settings.max_slice_renew_days == days
    database = Database(settings.calendar_url if backend == "sqlite" else empty_postgres())
    database.upgrade()
    register_demo(report, database)
    with served_registry(running_reactor, report, settings, database) as served:
        yield served


def test_a_slice_credential_renews_within_the_configured_days(registry: Registry) -> None:
    """With max_slice_renew = 7, carol (a researcher of tb.exp) asking 10 days ahead with its slice credential is
    refused (7), the message naming the latest end (7 days from now) and nothing written; 6 days ahead is renewed.
    A PI's authority credential still goes further."""
    carol, carol_cred = _user(registry, "carol")
    _admin(registry).create_slice("exp", ["carol"], expires=utcnow() + timedelta(days=2))
    slice_cred = carol.GetCredential(carol_cred, EXP, "slice")

    before = registry.written()
    asked_at = utcnow().replace(microsecond=0)
    too_far = format_time(asked_at + timedelta(days=10))
    fault = registry.fault(carol.Update, {"hrn": EXP, "type": "slice", "expires": too_far}, [slice_cred])
    answered_at = utcnow()
    assert fault.faultCode == 7, fault.faultString
    named = re.search(r"to (\S+) at the latest \(7 days from now", fault.faultString)
    assert named is not None, fault.faultString
    assert asked_at + timedelta(days=7) <= parse_time(named.group(1)) <= answered_at + timedelta(days=7)
    assert f"{too_far} was asked" in fault.faultString
    assert registry.written() == before

    six_days = (utcnow() + timedelta(days=6)).replace(microsecond=0)
    assert carol.Update({"hrn": EXP, "type": "slice", "expires": format_time(six_days)}, [slice_cred]) == 1
    assert registry.records.get(EXP).expires == six_days  # type: ignore[union-attr]
    further = (utcnow() + timedelta(days=20)).replace(microsecond=0)
    assert registry.alice.Update({"hrn": EXP, "expires": format_time(further)}, [registry.auth_cred]) == 1
    assert registry.records.get(EXP).expires == further  # type: ignore[union-attr]


def test_a_slice_renewed_further_than_a_credential_lives_gets_a_credential_as_long(
    running_reactor: Any, tmp_path: Path
) -> None:
    """With max_slice_renew = 60, a slice its researcher renewed 50 days ahead gets a slice credential that ends
    with it: capped at the usual 30 days, every aggregate would refuse to renew its leases past them, and the refusal
    ("renew the slice, call again with the new credential") would send the researcher round in a circle."""
    with _served_registry(running_reactor, tmp_path, "sqlite", 60) as served:
        carol, carol_cred = _user(served, "carol")
        _admin(served).create_slice("exp", ["carol"], expires=utcnow() + timedelta(days=2))
        fifty_days = (utcnow() + timedelta(days=50)).replace(microsecond=0)
        slice_cred = carol.GetCredential(carol_cred, EXP, "slice")
        assert carol.Update({"hrn": EXP, "type": "slice", "expires": format_time(fifty_days)}, [slice_cred]) == 1
        renewed = read_credential(carol.GetCredential(carol_cred, EXP, "slice").encode("utf-8")).credential
        assert renewed.expires == fifty_days, (renewed.expires, fifty_days)


def test_the_default_is_the_registry_s_own(tmp_path: Path) -> None:
    """Not set, the limit is the registry's 30 days (a slice credential's lifetime); SFA's file reads as sfa-omf's,
    in both forms, and the setting is no longer among the SFA names accepted and ignored."""
    default = Settings(interface_hrn="tb", data_dir=str(tmp_path)).max_slice_renew_days
    assert timedelta(days=default) == MAX_SLICE_RENEW == timedelta(days=30)
    ini = tmp_path / "ini.conf"
    ini.write_text(f"[sfa]\ninterface_hrn = tb\ndata_dir = {tmp_path}\nmax_slice_renew = 60\n", encoding="utf-8")
    shell = tmp_path / "shell.conf"
    shell.write_text(f"SFA_INTERFACE_HRN=tb\nSFA_DATA_DIR='{tmp_path}'\nSFA_MAX_SLICE_RENEW=60\n", encoding="utf-8")
    for path, line in ((ini, 4), (shell, 3)):
        loaded = load_config(str(path), environ={})
        assert loaded.settings.max_slice_renew_days == 60 and loaded.ok, loaded.problems
        assert str(loaded.sources["max_slice_renew_days"]) == f"{path}:{line}"
        assert loaded.unused == ()


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("0", "must be at least 1"),
        ("-5", "must be at least 1"),
        ("sixty", "not a whole number"),
        ("7.5", "not a whole number"),
        ("60d", "not a whole number"),
        ("3651", "is above its maximum, 3650"),
    ],
)
def test_a_bad_max_slice_renew_is_a_config_problem(tmp_path: Path, value: str, why: str) -> None:
    """A value that is no whole number of days from 1 to 3650 is a problem of config check naming the setting and
    its line, and other commands (serve) refuse the file, as for every other number."""
    path = tmp_path / "sfa-omf.conf"
    path.write_text(f"[sfa]\ninterface_hrn = tb\ndata_dir = {tmp_path}\nmax_slice_renew = {value}\n", encoding="utf-8")
    loaded = load_config(str(path), environ={})
    found = [(problem.kind, str(problem)) for problem in loaded.problems]
    assert len(found) == 1 and found[0][0] == "invalid", found
    assert found[0][1].startswith(f"{path}:4: [sfa] max_slice_renew") and why in found[0][1], found
    with pytest.raises(ValueError, match=r"max_slice_renew"):
        read_config(str(path), environ={})
    assert MAXIMA["max_slice_renew_days"] == 3650
