"""What docs/troubleshooting.md and docs/operators.md promise, as the commands do it: a PostgreSQL URL's own
``?connect_timeout=N`` bounds the start-up checks too; ``node remove`` on a booked node names commands that exist,
and following them removes the node. Real PostgreSQL (the silent one is a stand-in: see SilentPostgresStandIn)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.database import Database, DatabaseUnreachable
from sfa_omf.calendar.records import BookingRequest
from sfa_omf.config import read_config
from sfa_omf.preflight import DATABASE_TIMEOUT_S
from sfa_omf.times import utcnow
from tests import test_cli_calendar
from tests.test_cli_calendar import run
from tests.test_database_start_messages import SilentPostgresStandIn

NODE = "urn:publicid:IDN+testbed+node+node1"
SLICE = "urn:publicid:IDN+testbed+slice+demo"


@pytest.fixture
def silent_postgres() -> Iterator[SilentPostgresStandIn]:
    listener = SilentPostgresStandIn()
    yield listener
    listener.close()


def test_the_start_up_check_reads_the_urls_own_connect_timeout(silent_postgres: SilentPostgresStandIn) -> None:
    """The start-up checks (serve, config check, init --database-url) pass their own limit to the driver: the URL's
    ``connect_timeout`` must reach the driver instead. A value the driver cannot read shows whose value it got (no
    clock involved): with the URL's, the driver refuses it; with the checks' own, it waits and times out."""
    url = f"postgresql+psycopg://sfaomf:secret@127.0.0.1:{silent_postgres.port}/calendar?connect_timeout=soon"
    database = Database(url)
    try:
        with pytest.raises(DatabaseUnreachable) as refused:
            database.schema_revision(connect_timeout_s=DATABASE_TIMEOUT_S)
    finally:
        database.dispose()
    assert "bad value for connect_timeout: 'soon'" in refused.value.advice, refused.value.advice


config = test_cli_calendar.config  # the fixture: an `sfa-omf init` directory's configuration file


def test_node_remove_of_a_booked_node_names_commands_that_cancel_its_leases(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "node", "add", NODE, "--config", config)[0] == 0
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    database = Database(read_config(config).calendar_url)
    Bookings(database).book(SLICE, start + timedelta(days=1), [BookingRequest(NODE, start, start + timedelta(hours=1))])
    database.dispose()

    code, _, err = run(capsys, "node", "remove", NODE, "--config", config)
    assert code == 2
    assert f"`sfa-omf lease list --node {NODE}` names their slices" in err
    assert "`sfa-omf slice shutdown SLICE_URN` cancels all of a slice's leases" in err
    assert f"`sfa-omf node set-state {NODE} maintenance`" in err
    # Followed as written, they do what the message says.
    code, out, _ = run(capsys, "lease", "list", "--node", NODE, "--config", config)
    assert code == 0 and SLICE in out
    code, out, err = run(capsys, "slice", "shutdown", SLICE, "--config", config)
    assert code == 0 and "1 lease(s) cancelled" in out, err
    code, out, err = run(capsys, "node", "remove", NODE, "--config", config)
    assert code == 0 and f"removed {NODE}" in out, err
