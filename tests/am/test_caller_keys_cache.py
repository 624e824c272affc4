"""RegisteredKeys.is_local_user keeps its answer per URN (am/caller_keys.py): the answers stay those of parsing the
URN, however many URNs come and in whatever order, and the kept answers never exceed the cache's size."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sfa_omf.am.caller_keys import RegisteredKeys
from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.registry.records import Records

#: URN -> whether it names a user of the authority "testbed" (what parsing it says).
EXPECTED = {
    "urn:publicid:IDN+testbed+user+alice": True,
    "urn:publicid:IDN+testbed:sub+user+bob": True,
    "URN:PUBLICID:IDN+testbed+USER+carol": True,
    "urn:publicid:IDN+other+user+alice": False,
    "urn:publicid:IDN+testbed2+user+alice": False,
    "urn:publicid:IDN+testbed+slice+demo": False,
    "urn:publicid:IDN+testbed+authority+sa": False,
    "urn:publicid:IDN++user+x": False,
    "not a urn": False,
    "": False,
}


@pytest.fixture
def records(tmp_path: Path) -> Iterator[Records]:
    database = Database(sqlite_url(str(tmp_path / "keys.sqlite")))
    database.upgrade()
    yield Records(database)
    database.dispose()


def test_answers_from_the_cache_are_those_of_parsing(records: Records) -> None:
    keys = RegisteredKeys(records, "testbed", size=3)  # smaller than the URNs asked: emptied on the way
    for _ in range(3):
        for urn, local in EXPECTED.items():
            assert keys.is_local_user(urn) is local, urn
            assert len(keys._local) <= 3  # bounded by the cache's size
    for urn, local in reversed(EXPECTED.items()):
        assert keys.is_local_user(urn) is local, urn


def test_an_answer_is_kept_per_authority(records: Records) -> None:
    """Two RegisteredKeys of different authorities (the registry makes its own) do not share answers."""
    ours, theirs = RegisteredKeys(records, "testbed"), RegisteredKeys(records, "other")
    assert ours.is_local_user("urn:publicid:IDN+testbed+user+alice")
    assert not theirs.is_local_user("urn:publicid:IDN+testbed+user+alice")
    assert theirs.is_local_user("urn:publicid:IDN+other+user+alice")
    assert not ours.is_local_user("urn:publicid:IDN+other+user+alice")
