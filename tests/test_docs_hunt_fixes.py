"""What the user and operator pages say, checked against what the code does (a hunt of session 28 found them apart):
the GENI codes the tutorials give for an unknown node and for a Renew naming the slice with an earlier end, the
troubleshooting table's rows (one for every code the aggregate returns) and the grain refusal it quotes, the epoch
in the tutorial's SFA lease, and the SQLite backup and restore of docs/operators.md, run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.errors import REASON_CODES, GeniCode, GeniError, Reason
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.times import format_time, parse_time, utcnow
from tests.am.conftest import aggregate_on
from tests.calendar.conftest import node_urn
from tests.conftest import DemoPki
from tests.rspec.test_request_reading_hunt import _allocate, _refusal

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
GENI = "http://www.geni.net/resources/rspec/3"
OL = "http://nitlab.inf.uth.gr/schema/sfa/rspec/1"


def _page(name: str) -> str:
    return " ".join((DOCS / name).read_text(encoding="utf-8").split())  # sentences run over line breaks


@pytest.fixture
def aggregate(tmp_path: Path, pki: DemoPki) -> Iterator[Aggregate]:
    """Node n1 in the aggregate's grain (30 minutes)."""
    with aggregate_on("sqlite", tmp_path, pki, NodeSpec(node_urn("n1"), "n1")) as made:
        yield made


def _ol_request(node: str, start: datetime, end: datetime) -> str:
    return (
        f'<rspec type="request" xmlns="{GENI}" xmlns:ol="{OL}">'
        f'<ol:lease client_id="l" valid_from="{format_time(start)}" valid_until="{format_time(end)}"/>'
        f'<node client_id="a" component_id="{node}"><ol:lease_ref id_ref="l"/></node></rspec>'
    )


def _hour(hours: int) -> datetime:
    return utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=hours)


def test_the_tutorials_give_the_code_of_a_node_the_aggregate_does_not_have(aggregate: Aggregate, pki: DemoPki) -> None:
    """One code and one text for a node the aggregate does not have, whatever the request's form (a request for the
    earliest slot was answered 12, SEARCHFAILED, "no such node(s)"), and the tutorials say so."""
    nowhere = node_urn("nowhere")
    with_window = _refusal(aggregate, pki, _ol_request(nowhere, _hour(2), _hour(3)))
    earliest = _refusal(
        aggregate,
        pki,
        f'<rspec type="request" xmlns="{GENI}" xmlns:ol="{OL}"><ol:lease client_id="l" duration="3600"/>'
        f'<node client_id="a" component_id="{nowhere}"><ol:lease_ref id_ref="l"/></node></rspec>',
    )
    assert (REASON_CODES[with_window.reason], REASON_CODES[earliest.reason]) == (GeniCode.BADARGS, GeniCode.BADARGS)
    assert with_window.message == earliest.message
    assert earliest.message.startswith(f"nothing was booked: {nowhere} is not a node of ours")
    assert (
        "A node the aggregate does not have is geni_code 1 (`... is not a node of ours`), whether the request gives "
        "its window or asks for the earliest slot"
    ) in " ".join(_page("experimenters.md").split())
    assert "no such node(s)" not in _page("images-and-instances.md") + _page("troubleshooting.md")


def test_the_tutorial_gives_the_code_of_a_renew_of_the_slice_to_an_earlier_end(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    """experimenters.md said such a lease "keeps its end": when no lease can be extended, the call is refused."""
    _allocate(aggregate, pki, _ol_request(node_urn("n1"), _hour(2), _hour(4)))
    alice = pki.users["alice"]
    with pytest.raises(GeniError) as refused:
        aggregate.renew(alice.chain, [pki.slice_urn], [alice.slice_cred], format_time(_hour(3)), {})
    code = REASON_CODES[refused.value.reason]
    assert code == GeniCode.BADARGS and "never shortens" in refused.value.message
    renew = _page("experimenters.md").split("## 6. Renew", 1)[1].split("## 7.", 1)[0]
    assert f"when no lease of the slice can be extended, the call is refused (geni_code {code.value}," in renew


def test_the_troubleshooting_table_has_a_row_for_every_code_the_aggregate_returns() -> None:
    """It lacked 12, 14, 17, 8, 2 (and others), all of which the aggregate returns."""
    text = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    table = text.split("## Refusals with a GENI code", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) `([A-Z_]+)` \| ([^|]*) \|", table, re.MULTILINE)
    for number, name, _ in rows:
        assert GeniCode[name].value == int(number), f"{number} is not {name}"
    reasons = {value.value for value in Reason}
    for _, name, reason_cell in rows:
        for named in re.findall(r"^`([a-z_]+)`|, `([a-z_]+)`", reason_cell):
            assert set(named) - {""} <= reasons, f"{name}: {named} is no reason"
    missing = {code for code in REASON_CODES.values()} - {GeniCode(int(number)) for number, _, _ in rows}
    assert not missing, f"no row for {sorted(code.name for code in missing)}"


def test_the_troubleshooting_page_quotes_the_grain_refusal_as_the_aggregate_gives_it(
    aggregate: Aggregate, pki: DemoPki
) -> None:
    """It quoted "booked in slots of N s: start and end must be multiples of N s"; the message says more."""
    text = _page("troubleshooting.md")
    quotes = re.findall(r"`policy`: `([^`]*\(policy rule grain\))`", text)
    assert len(quotes) == 1, "the grain row quotes the refusal whole, ending (policy rule grain)"
    quoted = quotes[0]
    node = quoted.split(" ", 1)[0]
    start_named = re.search(r"; start (\S+) is not:", quoted)
    assert start_named is not None, quoted
    start = parse_time(start_named.group(1))
    asked = re.search(r"asked for (\S+) to (\S+)\)", text)
    assert asked is not None and parse_time(asked.group(1)) == start
    refused = _refusal(aggregate, pki, _ol_request(node_urn("n1"), start, parse_time(asked.group(2))))
    assert refused.message == quoted.replace(node, node_urn("n1"))


def test_the_sfa_lease_example_is_the_slot_of_the_ol_lease_example() -> None:
    """start_time="1796119200" is 10:00Z; the ol:lease it is "the same" as starts at 12:00Z."""
    text = _page("experimenters.md")
    (valid_from,) = re.findall(r'<ol:lease client_id="slot1" valid_from="([^"]+)"', text)
    (start_time,) = re.findall(r'<lease start_time="(\d+)"', text)
    assert datetime.fromtimestamp(int(start_time), UTC) == parse_time(valid_from)


def _sh_blocks_after(markdown: str, marker: str) -> list[str]:
    """The ``sh`` blocks of a page holding ``marker``."""
    return [block for block in re.findall(r"^```sh\n(.*?)^```$", markdown, re.MULTILINE | re.DOTALL) if marker in block]


def test_the_sqlite_backup_and_restore_of_the_operators_guide_restore(tmp_path: Path) -> None:
    """The page gave the SQLite backup and no restore. Its commands, as written, bring back a node removed after the
    backup; the page's check (a node list compared with the backup's) says so."""
    markdown = (DOCS / "operators.md").read_text(encoding="utf-8")
    (backup_line,) = _sh_blocks_after(markdown, ".backup '$BACKUP/calendar.sqlite'")
    (restore_line,) = _sh_blocks_after(markdown, ".restore '$BACKUP/calendar.sqlite'")
    (pg_restore,) = _sh_blocks_after(markdown, "ON_ERROR_STOP")
    check = "\n".join(line for line in pg_restore.splitlines() if line.startswith("sfa-omf node list"))
    (node_list,) = [
        line for block in _sh_blocks_after(markdown, "pg_dump") for line in block.splitlines() if "nodes.json" in line
    ]
    site = tmp_path / "site"
    init_directory(str(site), "doclab", ())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sfa-omf").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m sfa_omf.cli "$@"\n')
    (bin_dir / "sfa-omf").chmod(0o755)
    script = "\n".join(
        [
            "set -euo pipefail",
            'mkdir -p "$BACKUP"',
            "sfa-omf node add node3",
            backup_line,
            node_list,
            'sfa-omf node remove "urn:publicid:IDN+doclab+node+node3"',
            'if sfa-omf node list --json | cmp -s - "$BACKUP/nodes.json"; then echo "node3 not removed"; exit 1; fi',
            restore_line,
            check,
            "echo restored",
        ]
    )
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SFA_")}
    environment.update(
        PATH=f"{bin_dir}:{environment['PATH']}",
        PYTHONPATH=str(REPO),
        SITE=str(site),
        BACKUP=str(tmp_path / "backup"),
        SFA_OMF_CONFIG=str(site / "sfa-omf.conf"),
    )
    done = subprocess.run(["bash", "-c", script], env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.endswith("restored\n"), f"{done.stdout}\n{done.stderr}"
    assert (site / "sfa-omf.sqlite").exists()
