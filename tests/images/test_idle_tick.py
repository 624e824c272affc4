"""The containers' round, every 5 s on the leader, writes nothing when there is nothing to do: any write moves the
calendar's generation, which throws away every cached answer (ListResources' document first)."""

from __future__ import annotations

from pathlib import Path

from sfa_omf.calendar.database import Database, sqlite_url
from sfa_omf.calendar.generation import read_generation
from sfa_omf.images.instances import Instances
from sfa_omf.images.lxc import LxcHost
from sfa_omf.images.store import ImageStore
from sfa_omf.times import utcnow


def test_an_idle_round_leaves_the_calendar_generation_alone(tmp_path: Path) -> None:
    database = Database(sqlite_url(str(tmp_path / "calendar.sqlite")))
    database.upgrade()
    instances = Instances(
        database,
        LxcHost("sfaomf-nobridge", lxc_path=str(tmp_path / "lxc")),  # no container is ever made here
        "10.217.0.0/24",
        ImageStore(database, tmp_path / "images"),
    )
    with database.read() as session:
        before = read_generation(session)
    for _ in range(3):
        assert instances.tick(utcnow(), lambda _slice: []) == ([], [])
    with database.read() as session:
        assert read_generation(session) == before
