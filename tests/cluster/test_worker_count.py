"""How many processes serve: ``[sfa_omf] workers`` and ``serve --workers``; SQLite keeps one and says why; and the
start-up writes of processes starting together take turns."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from sfa_omf.cli import main
from sfa_omf.cluster.leadership import startup_writes
from sfa_omf.cluster.workers import cores, worker_count
from sfa_omf.config import AUTO_WORKERS, Settings, load_config, read_config
from tests.postgres import empty_postgres

POSTGRES = "postgresql+psycopg://sfaomf@127.0.0.1/sfaomf"


def settings(database_url: str = "", workers: int = AUTO_WORKERS) -> Settings:
    return Settings(interface_hrn="lab", data_dir="/tmp", database_url=database_url, workers=workers)


def test_auto_is_the_cores_on_postgresql_and_one_on_sqlite() -> None:
    assert worker_count(settings(POSTGRES)) == (cores(), "")
    assert worker_count(settings()) == (1, "")
    assert worker_count(settings(POSTGRES, workers=3)) == (3, "")
    assert worker_count(settings(POSTGRES, workers=3), asked=2) == (2, "")  # --workers wins over the file


def test_more_than_one_worker_on_sqlite_is_one_with_the_reason() -> None:
    count, why = worker_count(settings(workers=4))
    assert count == 1
    assert "serving with 1 worker, not 4" in why and "SQLite" in why and "PostgreSQL" in why
    assert worker_count(settings(), asked=2)[0] == 1


@pytest.mark.parametrize(("written", "value"), [("auto", AUTO_WORKERS), ("AUTO", AUTO_WORKERS), ("3", 3)])
def test_the_setting_reads_auto_or_a_count(tmp_path: Path, written: str, value: int) -> None:
    path = tmp_path / "sfa-omf.conf"
    path.write_text(
        f"[sfa]\ninterface_hrn = lab\n[sfa_omf]\nworkers = {written}\nleader_takeover_s = 7\n"
        f"database_url = {POSTGRES}\n"
    )
    loaded = load_config(str(path), environ={})
    assert loaded.problems == ()
    assert (loaded.settings.workers, loaded.settings.leader_takeover_s) == (value, 7)


def test_config_check_says_several_workers_on_sqlite_serve_as_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sfa-omf.conf"
    path.write_text(f"[sfa]\ninterface_hrn = lab\ndata_dir = {tmp_path}\n[sfa_omf]\nworkers = 3\n")
    loaded = load_config(str(path), environ={})
    assert [(problem.kind, problem.where) for problem in loaded.problems] == [("workers", f"{path}:5")]
    assert "workers = 3 with the embedded SQLite database: serve runs 1 worker" in loaded.problems[0].message
    assert read_config(str(path), environ={}).workers == 3  # not blocking: serve starts, with one worker
    assert main(["config", "check", "--settings-only", str(path)]) == 1
    assert "problem: " in capsys.readouterr().out
    path.write_text(f"[sfa]\ninterface_hrn = lab\ndata_dir = {tmp_path}\n[sfa_omf]\nworkers = auto\n")
    assert load_config(str(path), environ={}).problems == ()  # auto on SQLite is one: nothing to say


@pytest.mark.parametrize("written", ["0", "-2", "many", ""])
def test_a_bad_setting_says_what_is_expected(tmp_path: Path, written: str) -> None:
    path = tmp_path / "sfa-omf.conf"
    path.write_text(f"[sfa]\ninterface_hrn = lab\n[sfa_omf]\nworkers = {written}\n")
    loaded = load_config(str(path), environ={})
    assert [problem.kind for problem in loaded.problems] == ["invalid"]
    assert "auto, or a number of processes (at least 1)" in loaded.problems[0].message
    assert loaded.settings.workers == AUTO_WORKERS  # the default stays


@pytest.mark.parametrize("given", ["0", "two", "-1"])
def test_a_bad_workers_option_is_refused_before_anything_starts(given: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--config", "/nonexistent/sfa-omf.conf", "--workers", given])
    assert exited.value.code == 2
    assert "auto, or a number of processes (at least 1)" in capsys.readouterr().err


def test_init_writes_auto(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", str(tmp_path / "lab"), "--authority", "lab"]) == 0
    capsys.readouterr()
    text = (tmp_path / "lab" / "sfa-omf.conf").read_text()
    assert "workers = auto\n" in text
    assert load_config(str(tmp_path / "lab" / "sfa-omf.conf"), environ={}).settings.workers == AUTO_WORKERS


def test_start_up_writes_take_turns_on_postgresql() -> None:
    url = empty_postgres()
    inside: list[int] = []
    overlaps: list[int] = []

    def start(number: int) -> None:
        with startup_writes(url):
            if inside:
                overlaps.append(number)
            inside.append(number)
            time.sleep(0.2)
            inside.remove(number)

    threads = [threading.Thread(target=start, args=(number,)) for number in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == [] and inside == []
