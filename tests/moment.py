"""The tests' fixed "now": 08:00 UTC tomorrow (on a grain boundary), the same in every process of a test session.

Not a fixed date: the code under test also reads the real clock (certificates made by the session are valid from
the moment they are made; a node with a booking that has not ended in real time cannot be removed), and a fixed
date became a time bomb the day it passed. Tomorrow at 08:00 keeps "now" 8 to 32 hours ahead of the real clock,
as the fixed date was when these tests were written. The first process to import this module decides it; the
processes it starts (racers, servers) inherit it through the environment.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

_VARIABLE = "SFA_OMF_TEST_NOW"


def _tomorrow_at_eight() -> datetime:
    return datetime.now(UTC).replace(hour=8, minute=0, second=0, microsecond=0) + timedelta(days=1)


NOW = datetime.fromisoformat(os.environ[_VARIABLE]) if _VARIABLE in os.environ else _tomorrow_at_eight()
os.environ[_VARIABLE] = NOW.isoformat()
