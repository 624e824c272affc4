"""``sfa-omf config check`` and ``serve``'s start say when a certificate is out of its validity or ends soon, and a
moved site directory is told to be pointed at, not made again (sfa_omf/preflight.py). The certificates are real ones,
re-issued with the site's own keys and an explicit validity (sfa_omf/trust/pki.py's create_gid), as time would leave
them."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from sfa_omf.cli import main
from sfa_omf.config import read_config
from sfa_omf.preflight import StartupError, check_startup
from sfa_omf.times import utcnow
from sfa_omf.trust.gid import chain_pem, load_gid_chain_file
from sfa_omf.trust.pki import create_gid, load_private_key_file, new_private_key
from sfa_omf.xrn import hrn_to_urn
from tests.ports import free_port


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Path:
    """A site made by ``sfa-omf init`` on free ports, without the SFA_* variables of the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("SFA_") and not name.startswith("SFA_OMF_TEST_"):
            monkeypatch.delenv(name)
    directory = tmp_path / "lab"
    ports = ["--registry-port", str(free_port()), "--aggregate-port", str(free_port())]
    assert main(["init", str(directory), "--authority", "lab", *ports]) == 0
    capsys.readouterr()
    return directory


def check(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["config", "check", str(config)])
    out = capsys.readouterr().out
    return code, [line.removeprefix("problem: ") for line in out.splitlines() if line.startswith("problem: ")]


def reissue_root(lab: Path, started_days_ago: float, lifetime_days: float) -> None:
    """The authority's root again, with its own key, valid from ``started_days_ago`` for ``lifetime_days``."""
    root = load_gid_chain_file(str(lab / "authority" / "lab.gid"))[0]
    key = load_private_key_file(str(lab / "authority" / "lab.pkey"))
    renewed = create_gid(
        root.urn or "",
        key.public_key(),
        key,
        lifetime=timedelta(days=lifetime_days),
        not_before=utcnow() - timedelta(days=started_days_ago),
    )
    (lab / "authority" / "lab.gid").write_text(chain_pem((renewed,)))


def reissue_aggregate(lab: Path, started_days_ago: float, lifetime_days: float) -> None:
    """am.gid again (its key, signed by the authority), valid from ``started_days_ago`` for ``lifetime_days``."""
    root = load_gid_chain_file(str(lab / "authority" / "lab.gid"))[0]
    root_key = load_private_key_file(str(lab / "authority" / "lab.pkey"))
    aggregate = load_gid_chain_file(str(lab / "aggregate" / "am.gid"))[0]
    renewed = create_gid(
        aggregate.urn or "",
        load_private_key_file(str(lab / "aggregate" / "am.pkey")).public_key(),
        root_key,
        issuer=root,
        lifetime=timedelta(days=lifetime_days),
        not_before=utcnow() - timedelta(days=started_days_ago),
    )
    (lab / "aggregate" / "am.gid").write_text(chain_pem((renewed, root)))


def test_an_expired_root_is_a_problem_that_stops_serve(lab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reissue_root(lab, started_days_ago=400, lifetime_days=390)
    code, problems = check(lab / "sfa-omf.conf", capsys)
    root = f"the authority's root {lab}/authority/lab.gid"
    named = [problem for problem in problems if problem.startswith(root)]
    assert code == 1
    assert len(named) == 1 and " expired on " in named[0] and "sfa-omf authority renew" in named[0]
    with pytest.raises(StartupError, match=f"^{root}.* expired on "):
        check_startup(read_config(str(lab / "sfa-omf.conf")))


def test_an_aggregate_certificate_not_yet_valid_is_a_problem(lab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reissue_aggregate(lab, started_days_ago=-2, lifetime_days=300)
    code, problems = check(lab / "sfa-omf.conf", capsys)
    assert code == 1
    assert [problem for problem in problems if "am.gid" in problem] == [
        problem for problem in problems if problem.startswith(f"the aggregate's certificate {lab}/aggregate/am.gid is ")
    ]
    assert any("is not valid before" in problem and "date -u" in problem for problem in problems)


def test_a_certificate_ending_within_30_days_is_a_warning(lab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reissue_aggregate(lab, started_days_ago=10, lifetime_days=30)  # 20 days left
    code, problems = check(lab / "sfa-omf.conf", capsys)
    assert code == 1  # config check lists it with the rest, as it lists every finding
    assert len(problems) == 1
    assert problems[0].startswith(f"the aggregate's certificate {lab}/aggregate/am.gid expires on ")
    assert "(in 19 days)" in problems[0] or "(in 20 days)" in problems[0]
    assert "sfa-omf authority renew" in problems[0]
    # serve starts, and has the line to log
    warnings = check_startup(read_config(str(lab / "sfa-omf.conf")))
    assert [finding.message for finding in warnings] == problems


def test_certificates_well_within_their_validity_say_nothing(lab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sfa_omf.preflight import certificate_findings

    reissue_aggregate(lab, started_days_ago=10, lifetime_days=41)  # 31 days left: no warning yet
    assert certificate_findings(read_config(str(lab / "sfa-omf.conf"))) == []
    code, problems = check(lab / "sfa-omf.conf", capsys)
    assert (code, problems) == (0, [])


def test_an_expired_peer_root_is_named(lab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = new_private_key()
    peer = create_gid(
        hrn_to_urn("peerlab", "authority"),
        key.public_key(),
        key,
        lifetime=timedelta(days=100),
        not_before=utcnow() - timedelta(days=101),
    )
    path = lab / "trusted_roots" / "peerlab.gid"
    path.write_text(chain_pem((peer,)))
    code, problems = check(lab / "sfa-omf.conf", capsys)
    assert code == 1
    assert len(problems) == 1
    assert problems[0].startswith(f"trusted root {path} (authority peerlab) expired on ")
    assert "ask peerlab for its renewed root and run sfa-omf trust add-root" in problems[0]
    # Only peerlab's users are refused: serve starts, and logs it.
    warnings = check_startup(read_config(str(lab / "sfa-omf.conf")))
    assert [finding.message for finding in warnings] == problems
    assert main(["trust", "list", "--config", str(lab / "sfa-omf.conf")]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert " EXPIRED expires " in listed["peerlab"] and "EXPIRED" not in listed["lab"]


def test_a_moved_site_is_pointed_at_not_made_again(lab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    moved = lab.parent / "lab2"
    lab.rename(moved)
    code, problems = check(moved / "sfa-omf.conf", capsys)
    assert code == 1
    assert not [problem for problem in problems if "sfa-omf init" in problem and "new site only" not in problem]
    assert not [problem for problem in problems if "mkdir" in problem or "create it" in problem]
    assert any(
        problem.startswith(f"the data directory {lab} ([sfa] data_dir) does not exist")
        and "restore the directory from the backup" in problem
        for problem in problems
    )
    moved_line = [problem for problem in problems if problem.startswith("the site seems to have moved")]
    assert moved_line == [
        f"the site seems to have moved to {moved} (it holds the authority's key {moved}/authority/lab.pkey) from "
        f"{lab}: set [sfa] data_dir = {moved}, [sfa_omf] trusted_roots = {moved}/trusted_roots, [sfa_omf] "
        f"database_url = sqlite:///{moved}/sfa-omf.sqlite in {moved}/sfa-omf.conf"
    ]
    # serve refuses with the same advice, not init's
    with pytest.raises(StartupError, match="restore the directory from the backup") as refused:
        check_startup(read_config(str(moved / "sfa-omf.conf")))
    assert "run sfa-omf init" not in str(refused.value)
