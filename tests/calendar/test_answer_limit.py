"""How long a serving process waits for PostgreSQL's answer (calendar/database.py answer_limit_s): a few seconds more
than its connections' statement_timeout, the operator's when they set one in the URL's options or PGOPTIONS (theirs
wins, docs/configuration.md): a longer one lets long statements run on a healthy database, 0 lifts the bound."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from sfa_omf.calendar.database import NO_ANSWER_MARGIN_S, Database, answer_limit_s
from tests.postgres import empty_postgres

URL = "postgresql+psycopg://sfaomf:sfaomf@127.0.0.1:5432/db"


@pytest.mark.parametrize(
    ("options", "pgoptions", "expected"),
    [
        ("", "", 30 + NO_ANSWER_MARGIN_S),
        ("?options=-c%20statement_timeout%3D60000", "", 60 + NO_ANSWER_MARGIN_S),
        ("?options=-c statement_timeout=2min", "", 120 + NO_ANSWER_MARGIN_S),
        ("?options=-c statement_timeout=5s", "", 30 + NO_ANSWER_MARGIN_S),  # shorter than ours: ours still waits
        ("?options=-c statement_timeout=0", "", None),
        ("", "-c statement_timeout=100s", 100 + NO_ANSWER_MARGIN_S),
    ],
)
def test_the_operator_s_statement_timeout_decides(
    monkeypatch: pytest.MonkeyPatch, options: str, pgoptions: str, expected: float | None
) -> None:
    monkeypatch.setenv("PGOPTIONS", pgoptions)
    assert answer_limit_s(URL + options, 30) == expected
    assert answer_limit_s(URL + options, None) is None  # commands: no bound


def test_a_statement_the_operator_allows_runs_past_our_timeout() -> None:
    """The operator's statement_timeout (60 s, in the URL) over the serving one (1 s): a statement of 8 s answers,
    where the bound of the serving one alone would have cut it after 6 s (a healthy database taken for a hung one)."""
    url = empty_postgres()
    separator = "&" if "?" in url else "?"
    database = Database(f"{url}{separator}options=-c%20statement_timeout%3D60000", statement_timeout_s=1)
    try:
        with database.engine.connect() as connection:
            assert connection.execute(text("SHOW statement_timeout")).scalar() == "1min"
            assert connection.execute(text("SELECT pg_sleep(8), 1")).one()[1] == 1
    finally:
        database.dispose()
