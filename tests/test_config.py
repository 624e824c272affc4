"""The configuration in SFA's two forms (INI and shell), environment overrides, problems, and `sfa-omf config check`."""

from __future__ import annotations

import argparse
import dataclasses
import os
import stat
from pathlib import Path

import pytest

from sfa_omf.cli_config import add_config_commands
from sfa_omf.config import (
    CONFIG_FILE_NAME,
    DEFAULT_AGGREGATE_PORT,
    OPTIONS,
    Settings,
    Source,
    detect_form,
    known_testbed_types,
    load_config,
    read_config,
    shell_name_to_key,
    write_config,
)

REPO = Path(__file__).resolve().parent.parent


def ini_text(data_dir: Path) -> str:
    return f"""# an operator's file, INI form
[sfa]
interface_hrn = onelab.inria
data_dir = {data_dir}

[sfa_registry]
host = registry.example.org
port = 22345

[sfa_aggregate]
host = am.example.org
port = 22346
type = oar

[sfa_omf]
database_url = postgresql+psycopg://sfa:secret@db.example.org:5432/calendar
trusted_roots = {data_dir}/roots
hostname = public.example.org
grain_s = 600
default_duration_s = 1200
allocation_ttl_s = 300
max_duration_s = 86400
max_advance_s = 864000
horizon_days = 7
free_windows = 5
max_request_bytes = 1048576
threads = 4
log_file = {data_dir}/sfa-omf.log
"""


def shell_text(data_dir: Path) -> str:
    # The same settings as ini_text, the way SFA's sfa-config writes its shell file: quoted strings, bare numbers.
    return f"""# an operator's file, shell form
SFA_INTERFACE_HRN="onelab.inria"
SFA_DATA_DIR='{data_dir}'
SFA_REGISTRY_HOST="registry.example.org"
SFA_REGISTRY_PORT=22345
export SFA_AGGREGATE_HOST=am.example.org   # exported, with a comment
SFA_AGGREGATE_PORT=22346
SFA_AGGREGATE_TYPE=oar
SFA_OMF_DATABASE_URL="postgresql+psycopg://sfa:secret@db.example.org:5432/calendar"
SFA_OMF_TRUSTED_ROOTS="{data_dir}/roots"
SFA_OMF_HOSTNAME=public.example.org
SFA_OMF_GRAIN_S=600
SFA_OMF_DEFAULT_DURATION_S=1200
SFA_OMF_ALLOCATION_TTL_S=300
SFA_OMF_MAX_DURATION_S=86400
SFA_OMF_MAX_ADVANCE_S=864000
SFA_OMF_HORIZON_DAYS=7
SFA_OMF_FREE_WINDOWS=5
SFA_OMF_MAX_REQUEST_BYTES=1048576
SFA_OMF_THREADS=4
SFA_OMF_LOG_FILE="{data_dir}/sfa-omf.log"
"""


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def minimal(tmp_path: Path, *lines: str, section_lines: str = "") -> str:
    """An INI file with a valid [sfa] section, plus extra lines."""
    body = f"[sfa]\ninterface_hrn = testbed\ndata_dir = {tmp_path}\n{section_lines}" + "".join(f"{x}\n" for x in lines)
    return write(tmp_path / "minimal.conf", body)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command reads os.environ: start it without any SFA_* variable of the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("SFA_"):
            monkeypatch.delenv(name)


def run_check(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="sfa-omf")
    add_config_commands(parser.add_subparsers())
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    out, err = capsys.readouterr()
    return code, out, err


# --- the two forms ---------------------------------------------------------------------------------------------


def test_ini_and_shell_forms_give_the_same_settings(tmp_path: Path) -> None:
    ini = load_config(write(tmp_path / "ini.conf", ini_text(tmp_path)), environ={})
    shell = load_config(write(tmp_path / "shell.conf", shell_text(tmp_path)), environ={})
    assert (ini.form, shell.form) == ("ini", "shell")
    assert ini.problems == () and shell.problems == ()
    assert ini.settings == shell.settings
    expected = Settings(
        interface_hrn="onelab.inria",
        data_dir=str(tmp_path),
        registry_host="registry.example.org",
        registry_port=22345,
        aggregate_host="am.example.org",
        aggregate_port=22346,
        aggregate_type="oar",
        database_url="postgresql+psycopg://sfa:secret@db.example.org:5432/calendar",
        trusted_roots=f"{tmp_path}/roots",
        hostname="public.example.org",
        grain_s=600,
        default_duration_s=1200,
        allocation_ttl_s=300,
        max_duration_s=86400,
        max_advance_s=864000,
        horizon_days=7,
        free_windows=5,
        max_request_bytes=1048576,
        threads=4,
        log_file=f"{tmp_path}/sfa-omf.log",
    )
    assert ini.settings == expected
    # Every setting the file names reports its line; the shell file's line numbers are its own.
    assert ini.sources["aggregate_port"] == Source("file", f"{tmp_path}/ini.conf:12")
    assert shell.sources["aggregate_port"] == Source("file", f"{tmp_path}/shell.conf:7")


def test_every_shell_name_is_the_ini_name_upper_cased() -> None:
    for option in OPTIONS:
        assert option.shell_name == f"{option.section}_{option.key}".upper()
        assert shell_name_to_key(option.shell_name) == (option.section, option.key)
    assert shell_name_to_key("SFA_AGGREGATE_PORT") == ("sfa_aggregate", "port")
    assert shell_name_to_key("SFA_INTERFACE_HRN") == ("sfa", "interface_hrn")
    assert shell_name_to_key("SFA_OMF_DATABASE_URL") == ("sfa_omf", "database_url")
    assert shell_name_to_key("PATH") is None


def test_form_detection() -> None:
    assert detect_form("# comment\n; another\n\n[sfa]\ninterface_hrn = x\n") == "ini"
    assert detect_form("# comment\nSFA_INTERFACE_HRN=x\n") == "shell"


def test_sfa_generated_shell_file_is_accepted(tmp_path: Path) -> None:
    # What SFA's sfa-config writes: every SFA variable, most of which sfa-omf has no use for.
    text = f"""# DO NOT EDIT. This file was automatically generated
SFA_GENERIC_FLAVOUR="pl"
SFA_INTERFACE_HRN="plc"
SFA_CREDENTIAL_SCHEMA="/etc/sfa/credential.xsd"
SFA_API_LOGLEVEL=2
SFA_DATA_DIR="{tmp_path}"
SFA_REGISTRY_ENABLED=True
SFA_REGISTRY_HOST="localhost"
SFA_REGISTRY_PORT=12345
SFA_REGISTRY_ROOT_AUTH="plc"
SFA_SM_ENABLED=True
SFA_SM_PORT=12347
SFA_AGGREGATE_ENABLED=True
SFA_AGGREGATE_HOST="localhost"
SFA_AGGREGATE_PORT=12346
SFA_AGGREGATE_CACHING=True
SFA_DB_ENABLED=True
SFA_DB_HOST="localhost"
SFA_DB_PORT=5432
SFA_DB_USER="sfadbuser"
SFA_DB_PASSWORD="p@ss:word"
SFA_DB_NAME="sfa"
SFA_PLC_URL="https://localhost:443/PLCAPI/"
"""
    loaded = load_config(write(tmp_path / "sfa_config.sh", text), environ={})
    assert loaded.problems == ()
    assert f"{tmp_path}/sfa_config.sh:2: SFA_GENERIC_FLAVOUR" in loaded.unused
    assert len(loaded.unused) == 11
    settings = loaded.settings
    assert (settings.interface_hrn, settings.aggregate_host, settings.aggregate_port) == ("plc", "localhost", 12346)
    # SFA's database settings make the calendar's PostgreSQL URL (the password escaped).
    assert settings.uses_sfa_db
    assert settings.calendar_url == "postgresql+psycopg://sfadbuser:p%40ss%3Aword@localhost:5432/sfa"
    assert loaded.sources["database_url"] == Source("default", "built from [sfa_db]")


def test_defaults_and_their_sources(tmp_path: Path) -> None:
    path = write(tmp_path / "tiny.conf", "[sfa]\ninterface_hrn = testbed\n")
    loaded = load_config(path, environ={})
    assert loaded.problems == ()
    settings = loaded.settings
    assert settings.data_dir == str(tmp_path)
    assert loaded.sources["data_dir"] == Source("default", "the configuration file's directory")
    assert settings.aggregate_port == DEFAULT_AGGREGATE_PORT and loaded.sources["aggregate_port"] == Source("default")
    assert settings.hostname == settings.aggregate_host == "127.0.0.1"
    assert (settings.grain_s, settings.default_duration_s, settings.allocation_ttl_s) == (1800, 3600, 600)
    assert (settings.max_duration_s, settings.max_advance_s) == (7 * 86400, 90 * 86400)
    assert (settings.horizon_days, settings.free_windows, settings.threads) == (14, 10, 8)
    assert settings.max_request_bytes == 4 * 1024 * 1024 and settings.log_file == ""
    assert settings.calendar_url == f"sqlite:///{tmp_path}/sfa-omf.sqlite"
    assert settings.trusted_roots_dir == f"{tmp_path}/trusted_roots"


def test_hostname_follows_the_aggregate_host(tmp_path: Path) -> None:
    path = minimal(tmp_path, "[sfa_aggregate]", "host = am.example.org")
    loaded = load_config(path, environ={})
    assert loaded.settings.hostname == "am.example.org"
    assert loaded.sources["hostname"] == Source("default", "the aggregate host")


# --- environment -----------------------------------------------------------------------------------------------


def test_environment_overrides_the_file_and_says_so(tmp_path: Path) -> None:
    path = write(tmp_path / "ini.conf", ini_text(tmp_path))
    environ = {
        "SFA_AGGREGATE_PORT": "30000",
        "SFA_OMF_GRAIN_S": "900",
        "SFA_OMF_CONFIG": path,  # names the file, not a setting: ignored
        "PATH": "/usr/bin",  # not SFA_*: ignored
    }
    loaded = load_config(path, environ=environ)
    assert loaded.problems == ()
    assert loaded.settings.aggregate_port == 30000
    assert loaded.settings.grain_s == 900
    assert loaded.sources["aggregate_port"] == Source("environment", "SFA_AGGREGATE_PORT")
    assert str(loaded.sources["aggregate_port"]) == "environment SFA_AGGREGATE_PORT"
    assert loaded.sources["registry_port"] == Source("file", f"{path}:8")
    # read_config takes the same environment.
    assert read_config(path, environ=environ).aggregate_port == 30000
    assert read_config(path, environ={}).aggregate_port == 22346


def test_read_config_uses_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = minimal(tmp_path)
    monkeypatch.setenv("SFA_REGISTRY_PORT", "4242")
    assert read_config(path).registry_port == 4242


def test_a_bad_environment_value_keeps_the_file_value_and_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "ini.conf", ini_text(tmp_path))
    loaded = load_config(path, environ={"SFA_AGGREGATE_PORT": "lots"})
    assert loaded.settings.aggregate_port == 22346
    assert [str(problem) for problem in loaded.problems] == [
        "environment SFA_AGGREGATE_PORT: SFA_AGGREGATE_PORT = 'lots': not a whole number"
    ]


# --- problems --------------------------------------------------------------------------------------------------


def problems_of(path: str, environ: dict[str, str] | None = None) -> list[str]:
    return [str(problem) for problem in load_config(path, environ=environ or {}).problems]


def test_unknown_keys_name_the_closest_known_one(tmp_path: Path) -> None:
    path = minimal(tmp_path, "[sfa_aggregate]", "prot = 12346", "[sfa_omf]", "grain = 600")
    assert problems_of(path) == [
        f"{path}:5: [sfa_aggregate] prot is not a known setting; closest: [sfa_aggregate] port (SFA_AGGREGATE_PORT)",
        f"{path}:7: [sfa_omf] grain is not a known setting; closest: [sfa_omf] grain_s (SFA_OMF_GRAIN_S)",
    ]
    shell = write(tmp_path / "shell.conf", "SFA_INTERFACE_HRN=testbed\nSFA_AGREGATE_TYPE=omf\nDATA_DIR=/x\n")
    assert problems_of(shell, {"SFA_OMF_THREAD": "4"}) == [
        f"{shell}:2: SFA_AGREGATE_TYPE is not a known setting; closest: SFA_AGGREGATE_TYPE ([sfa_aggregate] type)",
        f"{shell}:3: DATA_DIR is not an SFA setting; closest: SFA_DATA_DIR ([sfa] data_dir)",
        "environment SFA_OMF_THREAD: SFA_OMF_THREAD is not a known setting; closest: SFA_OMF_THREADS "
        "([sfa_omf] threads)",
    ]


def test_wrong_types_are_reported_and_the_default_kept(tmp_path: Path) -> None:
    path = minimal(
        tmp_path,
        "[sfa_registry]",
        "port = twelve",
        "[sfa_aggregate]",
        "port = 70000",
        "[sfa_omf]",
        "threads = 0",
        "horizon_days = 1.5",
    )
    loaded = load_config(path, environ={})
    assert [str(problem) for problem in loaded.problems] == [
        f"{path}:5: [sfa_registry] port = 'twelve': not a whole number",
        f"{path}:7: [sfa_aggregate] port = '70000': a port is a number from 1 to 65535",
        f"{path}:9: [sfa_omf] threads = '0': must be at least 1",
        f"{path}:10: [sfa_omf] horizon_days = '1.5': not a whole number",
    ]
    assert {problem.kind for problem in loaded.problems} == {"invalid"}
    assert loaded.settings.registry_port == 12345 and loaded.settings.threads == 8
    with pytest.raises(ValueError, match="not a whole number"):
        read_config(path, environ={})


def test_unknown_aggregate_type(tmp_path: Path) -> None:
    path = minimal(tmp_path, "[sfa_aggregate]", "type = planetlab")
    (problem,) = load_config(path, environ={}).problems
    assert problem.kind == "testbed"
    assert str(problem) == (
        f"{path}:5: [sfa_aggregate] type 'planetlab' is not a known testbed; known: embedded, omf, oar "
        "(other backends are packages declaring an entry point in group sfa_omf.testbeds)"
    )
    # Not fatal for read_config: the commands that do not run the testbed still work.
    assert read_config(path, environ={}).aggregate_type == "planetlab"


def test_entry_point_backend_is_a_known_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real installed distribution, as importlib.metadata finds it on sys.path: no mock.
    site = tmp_path / "site"
    dist_info = site / "sfa_omf_fancy-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: sfa-omf-fancy\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[sfa_omf.testbeds]\nfancy = sfa_omf_fancy:Backend\n")
    path = minimal(tmp_path, "[sfa_aggregate]", "type = fancy")
    assert [problem.kind for problem in load_config(path, environ={}).problems] == ["testbed"]
    monkeypatch.syspath_prepend(str(site))
    assert known_testbed_types() == ["embedded", "omf", "oar", "fancy"]
    assert load_config(path, environ={}).problems == ()


def test_data_dir_that_does_not_exist(tmp_path: Path) -> None:
    path = write(tmp_path / "c.conf", f"[sfa]\ninterface_hrn = testbed\ndata_dir = {tmp_path}/nowhere\n")
    (problem,) = load_config(path, environ={}).problems
    assert (problem.kind, str(problem)) == ("path", f"{path}:3: [sfa] data_dir {tmp_path}/nowhere is not a directory")


def test_database_url_sqlalchemy_cannot_parse_hides_the_password(tmp_path: Path) -> None:
    path = minimal(tmp_path, "[sfa_omf]", "database_url = postgresql://sfa:hunter2@db:port/calendar")
    (problem,) = load_config(path, environ={}).problems
    assert problem.kind == "invalid" and problem.where == f"{path}:5"
    assert "SQLAlchemy cannot parse it" in problem.message and "postgresql+psycopg://" in problem.message
    assert "hunter2" not in problem.message and "***" in problem.message
    path = minimal(tmp_path, "[sfa_omf]", "database_url = not a url")
    assert "SQLAlchemy cannot parse it" in problems_of(path)[0]


def test_missing_interface_hrn_syntax_duplicates_and_bad_hrn(tmp_path: Path) -> None:
    path = write(tmp_path / "c.conf", f"[sfa]\ndata_dir = {tmp_path}\njust some words\n")
    assert problems_of(path) == [
        f"{path}:3: cannot read this line (not shown): expected key = value in a [section]",
        f"{path}: [sfa] interface_hrn (SFA_INTERFACE_HRN) is required: the authority this testbed speaks for",
    ]
    with pytest.raises(ValueError, match="interface_hrn"):
        read_config(path, environ={})
    shell = write(tmp_path / "s.conf", 'SFA_INTERFACE_HRN="testbed\n[sfa]\nSFA_INTERFACE_HRN=a..b\n')
    assert problems_of(shell) == [
        f"{shell}:1: cannot read SFA_INTERFACE_HRN: unbalanced quotes (the value is not shown)",
        f"{shell}:2: cannot read this line (not shown): expected NAME=value "
        "(an INI [section] must come first in the file)",
        f"{shell}:3: [sfa] interface_hrn: HRN 'a..b' has an empty part",
    ]
    path = minimal(tmp_path, "[sfa_aggregate]", "port = 1", "port = 2")
    loaded = load_config(path, environ={})
    assert [str(problem) for problem in loaded.problems] == [
        f"{path}:6: [sfa_aggregate] port is set again (first at {path}:5); this later value wins"
    ]
    assert loaded.settings.aggregate_port == 2


@pytest.mark.parametrize(
    ("hrn", "character"),
    [
        ("my lab", "character 3 of the HRN is a space"),
        ("l\u202eab", "character 2 of the HRN is RIGHT-TO-LEFT OVERRIDE"),
    ],
    ids=["space", "U+202E"],
)
def test_an_authority_hrn_no_urn_may_hold_is_refused_naming_the_setting_and_what_to_do(
    tmp_path: Path, hrn: str, character: str
) -> None:
    """A site made under such a name by an earlier version: its own root's URN holds the character, and certificates
    holding one are refused now. Said at loading, naming the setting (and the variable that set it), rather than the
    server refusing its own root as a certificate "the authority that issued it" must issue again."""
    path = write(tmp_path / "c.conf", f"[sfa]\ninterface_hrn = {hrn}\ndata_dir = {tmp_path}\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:2: [sfa] interface_hrn {hrn!r}: {character}"), problem
    assert "make the site again under a name without it (sfa-omf init DIR --authority NAME" in problem, problem
    assert "\u202e" not in problem, "shown escaped"
    with pytest.raises(ValueError, match="interface_hrn"):
        read_config(path, environ={})
    (problem,) = problems_of(minimal(tmp_path), environ={"SFA_INTERFACE_HRN": hrn})
    assert problem.startswith(f"environment SFA_INTERFACE_HRN: [sfa] interface_hrn {hrn!r}: {character}"), problem


def test_default_duration_longer_than_the_maximum(tmp_path: Path) -> None:
    path = minimal(tmp_path, "[sfa_omf]", "default_duration_s = 7200", "max_duration_s = 3600")
    assert problems_of(path) == [f"{path}:5: [sfa_omf] default_duration_s 7200 is longer than max_duration_s 3600"]


def test_read_config_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cannot read configuration file"):
        read_config(str(tmp_path / "absent.conf"), environ={})


# --- write_config ----------------------------------------------------------------------------------------------


def test_round_trip_with_write_config(tmp_path: Path) -> None:
    original = read_config(write(tmp_path / "ini.conf", ini_text(tmp_path)), environ={})
    path = str(tmp_path / "written.conf")
    write_config(path, original)
    loaded = load_config(path, environ={})
    assert loaded.problems == () and loaded.form == "ini"
    assert loaded.settings == original
    with pytest.raises(FileExistsError):
        write_config(path, original)


def test_round_trip_of_defaults_keeps_the_effective_values(tmp_path: Path) -> None:
    original = Settings(interface_hrn="testbed", data_dir=str(tmp_path), aggregate_host="am.example.org")
    path = str(tmp_path / CONFIG_FILE_NAME)
    write_config(path, original)
    back = read_config(path, environ={})
    # write_config names the embedded database file and the roots directory, so the operator sees them.
    assert dataclasses.replace(back, database_url="", trusted_roots="") == original
    assert (back.calendar_url, back.trusted_roots_dir) == (original.calendar_url, original.trusted_roots_dir)
    assert back.hostname == "am.example.org"
    assert "hostname" not in Path(path).read_text()  # it follows the aggregate host


def test_write_config_with_sfa_db_is_private(tmp_path: Path) -> None:
    original = Settings(
        interface_hrn="testbed",
        data_dir=str(tmp_path),
        db_host="db",
        db_user="sfa",
        db_password="pw-xyzzy",
        db_name="cal",
    )
    path = str(tmp_path / CONFIG_FILE_NAME)
    write_config(path, original)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert read_config(path, environ={}) == dataclasses.replace(original, trusted_roots=original.trusted_roots_dir)
    assert "pw-xyzzy" not in repr(original)
    assert "pw-xyzzy" in Path(path).read_text()


# --- sfa-omf config check --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("clean_environment")
def test_config_check_without_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "ini.conf", ini_text(tmp_path))
    (tmp_path / "roots").mkdir()
    code, out, _ = run_check(["config", "check", "--settings-only", path], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"configuration {path}, INI form; precedence: defaults < file < SFA_* environment"
    assert lines[-1] == "no problems"
    for option in OPTIONS:
        assert any(line.startswith(option.ini_name) and option.shell_name in line for line in lines), option
    port_line = next(line for line in lines if line.startswith("[sfa_aggregate] port"))
    assert port_line.split() == ["[sfa_aggregate]", "port", "SFA_AGGREGATE_PORT", "22346", f"{path}:12"]
    url_line = next(line for line in lines if line.startswith("[sfa_omf] database_url"))
    assert "postgresql+psycopg://sfa:***@db.example.org:5432/calendar" in url_line
    assert "secret" not in out


@pytest.mark.usefixtures("clean_environment")
def test_config_check_reports_problems_one_per_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = minimal(tmp_path, "[sfa_aggregate]", "port = x", "type = nope", "[sfa]", "generic_flavour = pl")
    monkeypatch.setenv("SFA_REGISTRY_PORT", "2000")
    code, out, _ = run_check(["config", "check", path], capsys)
    assert code == 1
    lines = out.splitlines()
    registry_line = next(line for line in lines if line.startswith("[sfa_registry] port"))
    assert registry_line.split()[-3:] == ["2000", "environment", "SFA_REGISTRY_PORT"]
    assert f"  {path}:8: [sfa] generic_flavour" in lines
    assert lines[-3:] == [
        "2 problems:",
        f"problem: {path}:5: [sfa_aggregate] port = 'x': not a whole number",
        f"problem: {path}:6: [sfa_aggregate] type 'nope' is not a known testbed; known: embedded, omf, oar "
        "(other backends are packages declaring an entry point in group sfa_omf.testbeds)",
    ]


@pytest.mark.usefixtures("clean_environment")
def test_config_check_cannot_read_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_check(["config", "check", str(tmp_path / "absent.conf")], capsys)
    assert (code, out) == (2, "")
    assert err.startswith(f"sfa-omf: cannot read configuration file {tmp_path}/absent.conf")
    code, _, err = run_check(["config", "check", str(tmp_path)], capsys)  # a directory
    assert code == 2 and "Is a directory" in err
    binary = tmp_path / "binary.conf"
    binary.write_bytes(b"[sfa]\ninterface_hrn = \xff\xfe\n")
    code, _, err = run_check(["config", "check", str(binary)], capsys)
    assert code == 2 and "is not UTF-8 text" in err


@pytest.mark.usefixtures("clean_environment")
def test_config_check_default_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run_check(["config", "check"], capsys)
    assert code == 2 and f"./{CONFIG_FILE_NAME}" not in err and CONFIG_FILE_NAME in err
    write(tmp_path / CONFIG_FILE_NAME, "[sfa]\ninterface_hrn = testbed\n")
    code, out, _ = run_check(["config", "check", "--settings-only"], capsys)
    assert code == 0 and out.startswith(f"configuration {CONFIG_FILE_NAME}, INI form")
    other = write(tmp_path / "other.conf", "SFA_INTERFACE_HRN=testbed\n")
    monkeypatch.setenv("SFA_OMF_CONFIG", other)
    code, out, _ = run_check(["config", "check", "--settings-only"], capsys)
    assert code == 0 and out.startswith(f"configuration {other}, shell (NAME=value) form")


# --- documentation ---------------------------------------------------------------------------------------------


def test_documentation_names_every_setting() -> None:
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    for option in OPTIONS:
        assert f"`{option.shell_name}`" in text, option.shell_name
        assert f"`[{option.section}] {option.key}`" in text, option.ini_name


def test_documentation_examples_are_the_same_settings(tmp_path: Path) -> None:
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    ini = text.split("```ini\n", 1)[1].split("```", 1)[0]
    shell = text.split("```sh\n", 1)[1].split("```", 1)[0]
    from_ini = load_config(write(tmp_path / "ini.conf", ini), environ={})
    from_shell = load_config(write(tmp_path / "shell.conf", shell), environ={})
    assert (from_ini.form, from_shell.form) == ("ini", "shell")
    assert from_ini.settings == from_shell.settings
    # Only the example's directories are missing on this machine.
    assert {problem.kind for problem in from_ini.problems + from_shell.problems} == {"path"}
    assert from_ini.settings.calendar_url == "postgresql+psycopg://sfaomf:change-me@db.example.org:5432/sfaomf"


# --- paths, encodings ------------------------------------------------------------------------------------------


def test_relative_paths_in_the_file_are_relative_to_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd starts the server in /, an operator's shell anywhere: the file means the same from every directory."""
    site = tmp_path / "site"
    (site / "data").mkdir(parents=True)
    (site / "logs").mkdir()
    path = write(
        site / CONFIG_FILE_NAME,
        "[sfa]\ninterface_hrn = testbed\ndata_dir = data\n[sfa_omf]\ntrusted_roots = roots\nlog_file = logs/x.log\n"
        "plan_signing_key = keys/plan.key\ninstance_lxc_path = lxc\ndatabase_url = sqlite:///db/calendar.sqlite\n",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = read_config(path, environ={})
    assert settings.data_dir == str(site / "data")
    assert settings.trusted_roots_dir == str(site / "roots")
    assert settings.log_file == str(site / "logs" / "x.log")
    assert settings.plan_signing_key_path == str(site / "keys" / "plan.key")
    assert settings.instance_lxc_path == str(site / "lxc")
    assert settings.calendar_url == f"sqlite:///{site}/db/calendar.sqlite"
    assert not [problem for problem in load_config(path, environ={}).problems if problem.kind == "path"]
    # The environment is the shell's: relative to the working directory, as the operator typed it.
    assert read_config(path, environ={"SFA_DATA_DIR": "here"}).data_dir == "here"


def test_a_file_with_a_byte_order_mark_reads_as_without(tmp_path: Path) -> None:
    path = tmp_path / "bom.conf"
    path.write_bytes(b"\xef\xbb\xbf[sfa]\ninterface_hrn = testbed\n")
    loaded = load_config(str(path), environ={})
    assert (loaded.form, loaded.problems, loaded.settings.interface_hrn) == ("ini", (), "testbed")


def test_a_file_that_is_not_utf8_is_named_by_every_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sfa_omf.cli import main

    path = tmp_path / "latin1.conf"
    path.write_bytes(b"[sfa]\ninterface_hrn = testbed\n[sfa_db]\npassword = mot-de-passe-\xe9t\xe9\n")
    assert main(["node", "list", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"sfa-omf: cannot read configuration file {path}: line 4: byte 0xe9 is not UTF-8 text (save the file as "
        "UTF-8)\n"
    )


@pytest.mark.usefixtures("clean_environment")
def test_operators_webhooks_are_checked_as_users_webhooks_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An operators' webhook URL over the outbox's 500 characters broke its PostgreSQL column at every event: the check
    and the server's start name it as a blocking problem, as they name an address that is no address."""
    too_long = "https://hooks.example.org/" + "x" * 600
    path = minimal(tmp_path, "[sfa_notify]", f"operators = ops@example.org, {too_long} https://ok.example.org/hook")
    code, out, _ = run_check(["config", "check", "--settings-only", path], capsys)
    assert code == 1
    problem = out.splitlines()[-1]
    # (shown by its origin and digest: a webhook's path and query often hold a token)
    assert problem.startswith(f"problem: {path}:5: [sfa_notify] operators: the webhook https://hooks.example.org#")
    assert "/xx" not in problem
    assert "(626 characters)" in problem and "a webhook URL has at most 500 characters, not 626" in problem
    assert out.splitlines()[-2] == "1 problem:"  # the e-mail address and the short URL are fine
    with pytest.raises(ValueError, match="a webhook URL has at most 500 characters"):
        read_config(path, environ={})


def test_a_calendar_and_data_left_where_the_command_ran_are_named_in_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A site whose file says data_dir = data and database_url = sqlite:///cal.sqlite, used from the directory above
    the file (as the old reading took them): after the upgrade it would silently start on a new, empty calendar."""
    site = tmp_path / "site"
    site.mkdir()
    path = write(
        site / CONFIG_FILE_NAME,
        "[sfa]\ninterface_hrn = testbed\ndata_dir = data\n[sfa_omf]\ndatabase_url = sqlite:///cal.sqlite\n",
    )
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "cal.sqlite").write_bytes(b"")
    moved = [problem for problem in load_config(path, environ={}).problems if problem.kind == "moved"]
    assert [problem.message.split(" does not exist")[0] for problem in moved] == [
        str(site / "data"),
        str(site / "cal.sqlite"),
    ]
    assert all("relative paths in the file are now relative to the file's directory" in p.message for p in moved)
    # Beside the file (or nowhere at all), no warning.
    (site / "data").mkdir()
    (site / "cal.sqlite").write_bytes(b"")
    assert [problem for problem in load_config(path, environ={}).problems if problem.kind == "moved"] == []
