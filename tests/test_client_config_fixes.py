"""What real clients met with the files and commands sfa-omf gives experimenters (a hunt of session 32 with omni
2.11 and sfi.py): the generated omni_config names the aggregate (a nickname, and omni's default aggregate: without
them ``omni -V3 listresources`` and ``omni listaggregates`` failed, "No Aggregates left"); ``sfa-omf user add`` writes
the SSH key pair and omni_config init writes for its demo users, as the tutorial describes them; ``slice release``
and ``slice shutdown`` take a slice's short name as the other ``slice`` commands do; and the tutorial's word on
omni's crash after a renew of the slice (omni's own NameError) holds: a renew of the slice leaves its slivers ending
at different times, a renew of one lease's slivers leaves them ending together."""

from __future__ import annotations

import configparser
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.calendar.booking import Bookings
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.records import BookingRequest, NodeSpec
from sfa_omf.calendar.slices import Slices
from sfa_omf.cli import main
from sfa_omf.config import read_config
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.times import format_time, utcnow
from tests.am.conftest import aggregate_on
from tests.calendar.conftest import node_urn
from tests.conftest import REPO, DemoPki
from tests.sshkeys import ssh_key

DOCS = REPO / "docs"
GENI = "http://www.geni.net/resources/rspec/3"
OL = "http://nitlab.inf.uth.gr/schema/sfa/rspec/1"
V3 = {"geni_rspec_version": {"type": "GENI", "version": "3"}}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def read_omni_config(path: Path) -> configparser.ConfigParser:
    """The file read as omni reads it (Python's ConfigParser; omni's keys are lower case)."""
    config = configparser.ConfigParser()
    assert config.read(path) == [str(path)]
    return config


def omni_aggregates(config: configparser.ConfigParser) -> dict[str, tuple[str, str]]:
    """omni's default aggregates: each name in [omni] aggregates, read through [aggregate_nicknames] as omni's
    load_aggregate_nicknames and _derefAggNick do (``URN,URL``, split at the comma, stripped; lower-cased name)."""
    found = {}
    for name in config["omni"]["aggregates"].split(","):
        urn, url = (part.strip() for part in config["aggregate_nicknames"][name.strip().lower()].split(","))
        found[name.strip()] = (urn, url)
    return found


# -- the generated omni_config ----------------------------------------------------------------------------------
def test_the_generated_omni_config_names_the_aggregate_and_makes_it_the_default(tmp_path: Path) -> None:
    report = init_directory(str(tmp_path / "lab"), "lab", ("ann",))
    settings = read_config(str(tmp_path / "lab" / "sfa-omf.conf"))
    config = read_omni_config(Path(report.sfi_dirs["ann"]) / "omni_config")

    aggregate_url = f"https://{settings.hostname}:{settings.aggregate_port}/"
    assert omni_aggregates(config) == {"lab": ("urn:publicid:IDN+lab+authority+am", aggregate_url)}
    assert config["aggregate_nicknames"]["lab"].split(",")[1] == aggregate_url
    # The framework still points at the registry and the aggregate (omni's sfa framework needs both).
    framework = config[config["omni"]["default_cf"]]
    assert framework["slicemgr"] == aggregate_url
    assert framework["registry"] == f"https://{settings.hostname}:{settings.registry_port}/"


def test_the_tutorials_omni_config_gives_the_lines_init_writes(pki: DemoPki) -> None:
    """experimenters.md shows quickstart's alice's omni_config: its [omni] aggregates and [aggregate_nicknames] are
    the ones init writes (HOST and SFI for the host and her folder)."""
    text = (DOCS / "experimenters.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"^```ini\n(.*?)^```$", text, re.MULTILINE | re.DOTALL) if "[omni]" in b]
    shown = configparser.ConfigParser()
    shown.read_string(block)
    written = read_omni_config(pki.users["alice"].sfi_dir / "omni_config")
    written_url = omni_aggregates(written)["testbed"][1]
    host_and_port = re.fullmatch(r"https://([^/]+):(\d+)/", written_url)
    assert host_and_port is not None
    assert omni_aggregates(shown) == {
        "testbed": ("urn:publicid:IDN+testbed+authority+am", f"https://HOST:{host_and_port[2]}/")
    }
    assert shown["sfa"]["slicemgr"] == omni_aggregates(shown)["testbed"][1]


# -- sfa-omf user add ---------------------------------------------------------------------------------------------
@pytest.fixture
def lab(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["init", str(tmp_path / "lab"), "--authority", "lab", "--user", "ann"]) == 0
    capsys.readouterr()
    return tmp_path / "lab"


def test_user_add_writes_the_ssh_key_pair_and_omni_config_init_writes(
    lab: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(lab / "sfa-omf.conf")
    code, out, err = run(capsys, "user", "add", "dave", "--config", config)
    assert code == 0, err
    sfi = lab / "users" / "dave" / "sfi"
    assert f"omni -c {sfi / 'omni_config'} -V3 listresources" in out
    # The same files as init's demo user ann, named alike.
    ann = lab / "users" / "ann" / "sfi"
    assert {path.name for path in sfi.iterdir()} >= {"id_ed25519", "id_ed25519.pub", "omni_config", "sfi_config"}
    assert (sfi / "id_ed25519").stat().st_mode & 0o777 == (ann / "id_ed25519").stat().st_mode & 0o777 == 0o600
    public = (sfi / "id_ed25519.pub").read_text().strip()
    assert public.startswith("ssh-ed25519 ") and public.endswith(" dave@lab")
    omni = read_omni_config(sfi / "omni_config")
    assert omni["omni"]["users"] == "dave" and omni["dave"]["urn"] == "urn:publicid:IDN+lab+user+dave"
    assert omni["dave"]["keys"] == f"{sfi / 'id_ed25519'}.pub"
    assert (omni["sfa"]["user"], omni["sfa"]["cert"]) == ("lab.dave", str(sfi / "lab.dave.user.gid"))
    assert omni_aggregates(omni) == omni_aggregates(read_omni_config(ann / "omni_config"))
    # Its public key is registered, as init registers its demo users' (sfi.py show lists it; logins take it).
    code, out, _ = run(capsys, "user", "show", "dave", "--json", "--config", config)
    assert json.loads(out)["ssh_keys"] == [public]


@pytest.mark.parametrize("name", ["a,b", "a]b"])
def test_a_user_whose_name_omni_cannot_read_gets_a_section_label_it_can(
    lab: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """omni splits [omni] users at commas and its parser ends a section header at the first "]": the user's section
    label (only its urn counts to omni) holds neither, read with omni's own rules (the review found omni crashing on
    "No section" for such names, which the registry accepts)."""
    code, _, err = run(capsys, "user", "add", name, "--config", str(lab / "sfa-omf.conf"))
    assert code == 0, err
    text = (lab / "users" / name / "sfi" / "omni_config").read_text()
    users = re.search(r"^users = (.*)$", text, re.MULTILINE)
    assert users is not None
    (label,) = users.group(1).split(",")  # omni's oscript.load_config splits at commas
    headers = re.findall(r"^\[([^]]+)\]", text, re.MULTILINE)  # Python 2's ConfigParser's section pattern
    assert label in headers
    section = text.split(f"[{label}]\n", 1)[1].split("\n\n", 1)[0]
    assert "urn = urn:publicid:IDN+lab+user+" in section


def test_user_add_with_the_users_own_ssh_key_makes_no_pair(
    lab: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An operator who gives the user's own key gets no second key registered: omni_config sends the key given."""
    key_file = tmp_path / "erin.pub"
    key_file.write_text(ssh_key("erin@laptop") + "\n")
    config = str(lab / "sfa-omf.conf")
    code, _, err = run(capsys, "user", "add", "erin", "--ssh-key", str(key_file), "--config", config)
    assert code == 0, err
    sfi = lab / "users" / "erin" / "sfi"
    assert not (sfi / "id_ed25519").exists() and not (sfi / "id_ed25519.pub").exists()
    assert read_omni_config(sfi / "omni_config")["erin"]["keys"] == str(key_file)
    code, out, _ = run(capsys, "user", "show", "erin", "--json", "--config", config)
    assert json.loads(out)["ssh_keys"] == [key_file.read_text().strip()]


def test_user_add_with_the_users_own_public_key_writes_no_folder(
    lab: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user who keeps their private key has no sfi.py folder here: no omni_config either."""
    from cryptography.hazmat.primitives import serialization

    from sfa_omf.trust.pki import new_private_key

    public = tmp_path / "fay.pem"
    public.write_bytes(
        new_private_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    code, out, err = run(
        capsys, "user", "add", "fay", "--public-key", str(public), "--config", str(lab / "sfa-omf.conf")
    )
    assert code == 0, err
    assert "omni" not in out and not (lab / "users" / "fay").exists()


# -- sfa-omf slice release / shutdown ---------------------------------------------------------------------------
def test_slice_release_and_shutdown_take_the_short_name_and_the_hrn(
    lab: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(lab / "sfa-omf.conf")
    slice_urn = "urn:publicid:IDN+lab+slice+exp1"
    bookings = _booked_in_the_lab(config, capsys, slice_urn)

    _shut_down_and_released(config, capsys, "exp1", slice_urn, bookings)
    code, out, err = run(capsys, "slice", "release", "lab.exp1", "--config", config)
    assert (code, out.strip()) == (0, f"{slice_urn} may book again"), err
    code, out, err = run(capsys, "slice", "release", slice_urn, "--config", config)
    assert (code, out.strip()) == (0, f"{slice_urn} may book again"), err
    # A name the calendar does not know is refused with its URN, so the operator sees how it was read.
    code, _, err = run(capsys, "slice", "release", "nope", "--config", config)
    assert code == 2 and "slice urn:publicid:IDN+lab+slice+nope has nothing here" in err


def test_a_dotted_name_reads_as_the_slice_the_calendar_holds(lab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A dotted name not under the authority may be another authority's HRN (a federated slice, as the operator reads
    it in the calendar's listing): the reading the calendar holds a slice for is taken; neither or both: refused,
    naming both readings, and nothing changes."""
    config = str(lab / "sfa-omf.conf")
    federated = "urn:publicid:IDN+ple:upmc+slice+exp2"
    under_lab = "urn:publicid:IDN+lab+slice+ple.upmc.exp2"
    bookings = _booked_in_the_lab(config, capsys, federated)

    _shut_down_and_released(config, capsys, "ple.upmc.exp2", federated, bookings)

    code, _, err = run(capsys, "slice", "shutdown", "ple.upmc.nope", "--config", config)
    assert code == 2, err
    assert "no slice named ple.upmc.nope has anything here: neither urn:publicid:IDN+lab+slice+ple.upmc.nope" in err
    assert "nor urn:publicid:IDN+ple:upmc+slice+nope (another authority's HRN)" in err
    # A huge name is refused in a line of bounded length (each reading cut, with its length).
    code, _, err = run(capsys, "slice", "shutdown", "a." * 50_000 + "b", "--config", config)
    assert code == 2 and "no slice named 'a.a." in err and "(100001 characters)" in err and len(err) < 1_000, err
    # A dotted name that is no HRN (an empty part) is only read as a name under the authority, as before.
    code, _, err = run(capsys, "slice", "shutdown", "ple..nope", "--config", config)
    assert code == 2 and "slice urn:publicid:IDN+lab+slice+ple..nope has nothing here" in err, err

    # A slice under the authority with the same reading too: the operator must say which.
    _book_the_lab_node(bookings, under_lab)
    code, _, err = run(capsys, "slice", "shutdown", "ple.upmc.exp2", "--config", config)
    assert code == 2 and f"ple.upmc.exp2 names two slices here, {under_lab} (a name under lab)" in err, err
    assert [lease.slice_urn for lease in bookings.leases(slice_urn=under_lab)] == [under_lab], "nothing cancelled"
    slices = Slices(bookings.database)
    assert not slices.get(under_lab).shut_down and not slices.get(federated).shut_down


def _shut_down_and_released(
    config: str, capsys: pytest.CaptureFixture[str], name: str, slice_urn: str, bookings: Bookings
) -> None:
    """``slice shutdown NAME`` cancels the slice's one lease, then ``slice release NAME`` lets it book again."""
    code, out, err = run(capsys, "slice", "shutdown", name, "--config", config)
    assert code == 0, err
    assert f"{slice_urn} is shut down: 1 lease(s) cancelled" in out and bookings.leases(slice_urn=slice_urn) == []
    code, out, err = run(capsys, "slice", "release", name, "--config", config)
    assert (code, out.strip()) == (0, f"{slice_urn} may book again"), err


def _booked_in_the_lab(config: str, capsys: pytest.CaptureFixture[str], slice_urn: str) -> Bookings:
    """The lab's node1 added by the command, then booked for the slice (``_book_the_lab_node``); the calendar's
    bookings."""
    assert run(capsys, "node", "add", "urn:publicid:IDN+lab+node+node1", "--config", config)[0] == 0
    bookings = Bookings(Database(read_config(config).calendar_url))
    _book_the_lab_node(bookings, slice_urn)
    return bookings


def _book_the_lab_node(bookings: Bookings, slice_urn: str) -> None:
    """One lease of the lab's node1 for the slice, in two hours for an hour."""
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    node = "urn:publicid:IDN+lab+node+node1"
    bookings.book(slice_urn, start + timedelta(days=1), [BookingRequest(node, start, start + timedelta(hours=1))])


# -- the tutorial on omni's crash after a renew of the slice ----------------------------------------------------
@pytest.fixture
def aggregate(tmp_path: Path, pki: DemoPki) -> Iterator[Aggregate]:
    with aggregate_on("sqlite", tmp_path, pki, NodeSpec(node_urn("n1"), "n1"), NodeSpec(node_urn("n2"), "n2")) as made:
        yield made


def _book_and_provision(aggregate: Aggregate, pki: DemoPki, node: str, hours: int) -> list[str]:
    """A lease of ``node`` from the next hour for ``hours``, provisioned; its sliver URNs."""
    alice = pki.users["alice"]
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    window = f'valid_from="{format_time(start)}" valid_until="{format_time(start + timedelta(hours=hours))}"'
    rspec = (
        f'<rspec type="request" xmlns="{GENI}" xmlns:ol="{OL}"><ol:lease client_id="l" {window}/>'
        f'<node client_id="{node}" component_id="{node_urn(node)}"><ol:lease_ref id_ref="l"/></node></rspec>'
    )
    allocated = aggregate.allocate(alice.chain, pki.slice_urn, [alice.slice_cred], rspec, {})
    urns = [sliver["geni_sliver_urn"] for sliver in allocated["geni_slivers"]]
    users = [{"urn": alice.chain[0].urn, "keys": [ssh_key("alice")]}]
    aggregate.provision(alice.chain, urns, [alice.slice_cred], {**V3, "geni_users": users})
    return urns


def test_the_tutorials_way_around_omnis_renew_crash_holds(aggregate: Aggregate, pki: DemoPki) -> None:
    """omni 2.11's renew raises NameError (requestedExpiration) when the slivers it gets back end at more than one
    time: a renew of the slice does that here (it only extends); a renew naming one lease's slivers does not."""
    alice = pki.users["alice"]
    short = _book_and_provision(aggregate, pki, "n1", 2)
    _book_and_provision(aggregate, pki, "n2", 6)
    new_end = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=4)

    by_slice = aggregate.renew(alice.chain, [pki.slice_urn], [alice.slice_cred], format_time(new_end), {})
    by_lease = aggregate.renew(alice.chain, short, [alice.slice_cred], format_time(new_end + timedelta(hours=1)), {})

    assert len({sliver["geni_expires"] for sliver in by_slice}) == 2, "the slice's slivers end apart: omni crashes"
    assert len({sliver["geni_expires"] for sliver in by_lease}) == 1, "one lease's slivers end together"
    renew = " ".join((DOCS / "experimenters.md").read_text(encoding="utf-8").split("## 6. Renew", 1)[1].split())
    renew = renew.split("## 7.", 1)[0]
    assert "NameError: global name 'requestedExpiration' is not defined" in renew
    assert "The renewal was done before omni stopped" in renew
    assert "omni -c omni_config -V3 -a https://HOST:12346/ status demo" in renew
    assert "renew one lease at a time, naming all its slivers" in renew
    assert "renew demo 2026-12-01T18:00:00Z -u SLIVER_URN" in renew
