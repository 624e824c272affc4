"""Hosts of one PostgreSQL cluster with configurations that differ where they must agree (history_days, the OAR
server's time zone as resolved...) say so: a WARNING per setting naming both values and the other host, an ERROR on
the leader, and ``config check``; hosts that agree, and dead processes' rows, say nothing. Real PostgreSQL: in-process
SettingsAgreement for two "hosts", and two real ``sfa-omf serve`` processes."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, inspect, text

from sfa_omf.calendar.database import Database, head_revision
from sfa_omf.cli import main
from sfa_omf.cluster.agreement import (
    AGREED_FIELDS,
    DERIVED_LABELS,
    STALE_S,
    SettingsAgreement,
    agreed_values,
    live_disagreements,
)
from sfa_omf.config import OPTIONS, Settings, load_config
from sfa_omf.trust.roots import TrustedRoots
from tests.calendar.conftest import fresh_database
from tests.cluster.harness import Lab, Serve, make_lab
from tests.postgres import empty_postgres
from tests.registry.test_removed_logins import migrate_database

NO_ROOTS = TrustedRoots(anchors=())


@pytest.fixture
def engine() -> Iterator[Engine]:
    url = empty_postgres()
    Database(url).upgrade()
    engine = create_engine(url)
    yield engine
    engine.dispose()


def settings(**changes: object) -> Settings:
    return dataclasses.replace(Settings(interface_hrn="lab", data_dir="/nonexistent"), **changes)  # type: ignore[arg-type]


def host(engine: Engine, name: str, pid: int, **changes: object) -> SettingsAgreement:
    return SettingsAgreement(engine, agreed_values(settings(**changes), NO_ROOTS), host=name, pid=pid)


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == level]


def test_two_hosts_with_different_history_days_each_name_the_setting_both_values_and_the_other_host(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sfa_omf.cluster")
    keeper = host(engine, "host-a", 101)  # history_days 365, the default
    pruner = host(engine, "host-b", 202, history_days=30)
    assert keeper.announce() == []  # alone so far
    caplog.clear()

    (found,) = pruner.announce()
    assert (found.key, found.ours, found.theirs, found.host) == ("history_days", 30, 365, "host-a")
    (warning,) = messages(caplog, logging.WARNING)
    assert "[sfa_omf] history_days is 30 here but 365 on host host-a (process host-a:101)" in warning

    caplog.clear()
    keeper.refresh()  # the host already running hears of the newcomer at its next refresh
    (warning,) = messages(caplog, logging.WARNING)
    assert "[sfa_omf] history_days is 365 here but 30 on host host-b (process host-b:202)" in warning
    caplog.clear()
    keeper.refresh()
    assert messages(caplog, logging.WARNING) == []  # said once, not at every refresh

    # The leader (here the pruner) logs an ERROR at its leadership gain: its 30 days would decide for everyone.
    pruner.leader_check()
    (error,) = messages(caplog, logging.ERROR)
    assert "leads the background tasks" in error and "history_days is 30 here but 365 on host host-a" in error


def test_the_compared_settings_are_settings_and_leave_per_host_ones_out() -> None:
    fields = {option.field for option in OPTIONS}
    assert set(AGREED_FIELDS) <= fields
    values = agreed_values(settings(aggregate_type="oar", notify_webhook_key="k"), NO_ROOTS)
    assert set(values) - set(AGREED_FIELDS) <= set(DERIVED_LABELS)
    per_host = {"registry_port", "aggregate_port", "threads", "workers", "log_level", "db_password", "hostname"}
    assert not per_host & set(values)
    assert "k" not in str(values.values())  # a secret is never stored as it is


def test_hosts_with_the_same_settings_say_nothing(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sfa_omf.cluster")
    first, second = host(engine, "host-a", 1, history_days=30), host(engine, "host-b", 2, history_days=30)
    assert first.announce() == [] and second.announce() == []
    assert first.refresh() == [] and first.leader_check() == []
    assert messages(caplog, logging.WARNING) == messages(caplog, logging.ERROR) == []


def test_a_dead_or_stopped_hosts_row_no_longer_warns(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    """Killed (its row not refreshed for STALE_S: the database's clock says so) or stopped cleanly (withdraw), a
    process with the old configuration no longer counts once its host restarts with the fixed one."""
    caplog.set_level(logging.INFO, logger="sfa_omf.cluster")
    killed = host(engine, "host-b", 202, history_days=30)
    killed.announce()
    with engine.begin() as connection:  # killed STALE_S + 1 s ago: its last refresh is that old
        connection.execute(text("UPDATE cluster_settings SET seen_s = seen_s - :old"), {"old": STALE_S + 1})
    survivor = host(engine, "host-a", 101)
    assert survivor.announce() == []
    with engine.connect() as connection:  # and the dead row is gone
        assert connection.execute(text("SELECT process FROM cluster_settings")).scalars().all() == ["host-a:101"]

    stopped = host(engine, "host-c", 303, max_duration_s=3600)
    stopped.announce()
    assert [item.key for item in survivor.refresh()] == ["max_duration_s"]
    stopped.withdraw()  # a clean stop; host-c restarts with the fixed configuration
    host(engine, "host-c", 304).announce()
    caplog.clear()
    assert survivor.refresh() == [] and survivor.leader_check() == []
    assert messages(caplog, logging.WARNING) == messages(caplog, logging.ERROR) == []


def test_an_empty_oar_timezone_on_hosts_in_different_zones_disagrees(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Empty ``[sfa_oar] timezone``: each host submits OAR reservations in its own zone. Compared as resolved."""
    caplog.set_level(logging.INFO, logger="sfa_omf.cluster")
    oar = settings(aggregate_type="oar")
    monkeypatch.setenv("TZ", "UTC")
    in_utc = SettingsAgreement(engine, agreed_values(oar, NO_ROOTS), host="host-utc", pid=1)
    monkeypatch.setenv("TZ", "Europe/Paris")
    in_paris = SettingsAgreement(engine, agreed_values(oar, NO_ROOTS), host="host-paris", pid=2)
    in_utc.announce()
    (found,) = in_paris.announce()
    assert (found.key, found.ours, found.theirs, found.host) == ("oar_zone", "Europe/Paris", "UTC", "host-utc")
    assert any("[sfa_oar] timezone as resolved" in message for message in messages(caplog, logging.WARNING))

    # Set explicitly, the zone is the same whatever the hosts' own.
    explicit = dataclasses.replace(oar, oar_timezone="Europe/Paris")
    monkeypatch.setenv("TZ", "UTC")
    SettingsAgreement(engine, agreed_values(explicit, NO_ROOTS), host="host-utc", pid=1).announce()
    monkeypatch.setenv("TZ", "Europe/Paris")
    in_paris = SettingsAgreement(engine, agreed_values(explicit, NO_ROOTS), host="host-paris", pid=2)
    assert in_paris.refresh() == []


def test_config_check_reports_a_live_host_running_other_values(
    tmp_path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = engine.url.render_as_string(hide_password=False)
    assert main(["init", str(tmp_path / "tb")]) == 0
    config = str(tmp_path / "tb" / "sfa-omf.conf")
    monkeypatch.setenv("SFA_OMF_DATABASE_URL", url)
    running = load_config(config).settings  # what the other host serves with: this file, history_days 365
    SettingsAgreement(engine, agreed_values(running), host="host-a", pid=101).announce()
    assert live_disagreements(running) == []
    capsys.readouterr()

    monkeypatch.setenv("SFA_OMF_HISTORY_DAYS", "30")
    assert main(["config", "check", config]) == 1
    out = capsys.readouterr().out
    assert (
        "settings differ between hosts of this cluster: [sfa_omf] history_days is 30 here but 365 on host host-a "
        "(process host-a:101)" in out
    )


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migration_0033_adds_the_table_and_its_downgrade_drops_it(kind: str, tmp_path: Path) -> None:
    database = fresh_database(kind, tmp_path)
    try:
        migrate_database(database, "downgrade", "0032")
        assert "cluster_settings" not in inspect(database.engine).get_table_names()
        migrate_database(database, "upgrade", "0033")
        with database.engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO cluster_settings (process, host, pid, started_s, seen_s, settings) "
                    "VALUES ('h:1', 'h', 1, 5, 6, '{}')"
                )
            )
        migrate_database(database, "downgrade", "0032")
        assert "cluster_settings" not in inspect(database.engine).get_table_names()
        migrate_database(database, "upgrade", head_revision())
        assert "cluster_settings" in inspect(database.engine).get_table_names()
    finally:
        database.dispose()


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return make_lab(tmp_path, empty_postgres(), 0)


def test_two_serving_hosts_with_different_history_days_warn_and_the_leader_logs_an_error(
    lab: Lab, tmp_path: Path, servers: list[Serve]
) -> None:
    # The same takeover on both (a setting they must agree on), short: the second host leads soon after the first dies.
    quick = {"SFA_OMF_LEADER_TAKEOVER_S": "3"}
    first = Serve(lab, tmp_path, "host-a", "--workers", "1", **quick)
    servers.append(first)
    first.wait_ready()
    first.wait_for_line("now leads")  # "this process (host:pid) now leads the background tasks"
    second = Serve(lab, tmp_path, "host-b", "--workers", "1", SFA_OMF_HISTORY_DAYS="30", **quick)
    servers.append(second)
    second.wait_ready()
    warning = second.wait_for_line("settings differ between hosts")
    assert "WARNING" in warning and "[sfa_omf] history_days is 30 here but 365 on host" in warning
    # The first dies without a word (its row stays, live for a few minutes): the second takes the lead, and its
    # check at the leadership gain says, as an ERROR, that the cluster's background work now follows its values.
    first.process.kill()
    first.process.wait()
    leading = second.wait_for_line("now leads", 120)
    error = second.wait_for_line("leads the background tasks with settings other live hosts do not share", 120)
    assert "ERROR" in error and "[sfa_omf] history_days is 30 here but 365 on host" in error

    # A clean stop takes the process's row away; the killed process's row is left until it goes stale.
    assert second.stop() == 0
    engine = create_engine(lab.database_url)
    with engine.connect() as connection:
        (process,) = connection.execute(text("SELECT process FROM cluster_settings")).scalars().all()
    engine.dispose()
    assert f"({process})" not in leading and process.endswith(f":{first.process.pid}")
