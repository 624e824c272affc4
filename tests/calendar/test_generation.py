"""The calendar's generation, sharded over rows (calendar/generation.py): the count of committed writing units of work,
whichever row each one is counted in, with writers of several threads at once; a row missing is made on first use."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import delete, select

from sfa_omf.calendar import generation as generation_module
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.generation import SHARDS, read_generation
from sfa_omf.calendar.models import CalendarGeneration, Pool


def generation(database: Database) -> int:
    with database.read() as session:
        return read_generation(session)


def rows(database: Database) -> dict[int, int]:
    with database.read() as session:
        return {row.id: row.value for row in session.execute(select(CalendarGeneration.id, CalendarGeneration.value))}


def add_pool(database: Database, name: str) -> None:
    with database.write() as session:
        session.add(Pool(name=name, federated=True, description=""))


def test_every_shard_counts_once_per_write(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    start = generation(database)
    for shard in range(1, SHARDS + 1):
        monkeypatch.setattr(generation_module.random, "randint", lambda _low, _high, shard=shard: shard)
        before = rows(database)
        add_pool(database, f"p{shard}")
        after = rows(database)
        assert after[shard] == before.get(shard, 0) + 1
        assert {k: v for k, v in after.items() if k != shard} == {k: v for k, v in before.items() if k != shard}
        assert generation(database) == start + shard
    assert sorted(rows(database)) == list(range(1, SHARDS + 1))


def test_a_database_without_counter_rows_starts_at_zero(database: Database) -> None:
    with database.engine.begin() as connection:  # as a schema made without migration 0008's row
        connection.execute(delete(CalendarGeneration))
    assert generation(database) == 0
    add_pool(database, "first")
    assert generation(database) == 1


def test_concurrent_writers_lose_no_count(database: Database) -> None:
    start = generation(database)
    writers, writes = 8, 15
    errors: list[BaseException] = []

    def write(writer: int) -> None:
        try:
            for n in range(writes):
                add_pool(database, f"w{writer}-{n}")
        except BaseException as exc:  # reported below: a thread must not fail silently
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert generation(database) == start + writers * writes
    assert sum(rows(database).values()) == generation(database)


def test_migration_0018_spreads_the_count_and_its_downgrade_gathers_it(database: Database) -> None:
    from alembic import command
    from alembic.config import Config

    from sfa_omf.calendar.database import MIGRATIONS

    def migrate(action: str, revision: str) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with database.engine.begin() as connection:
            config.attributes["connection"] = connection
            getattr(command, action)(config, revision)

    assert sorted(rows(database)) == list(range(1, SHARDS + 1))  # a new database has every row
    for name in ("a", "b", "c"):
        add_pool(database, name)
    total = generation(database)
    assert total >= 3
    migrate("downgrade", "0017")  # what an older sfa-omf reads: row 1 alone, holding the whole count
    assert rows(database) == {1: total}
    migrate("upgrade", "0018")
    assert sorted(rows(database)) == list(range(1, SHARDS + 1)) and generation(database) == total
