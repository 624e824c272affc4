"""What the hunt of the operator's configuration file found (sfa_omf/config.py, config check, serve and its workers):

- every worker of ``serve --workers N``, a replacement too, serves the file as the master read it at its start, and
  a reload (SIGHUP) says when the file changed (it applies only the trusted roots);
- grain_s is the shortest lease: above max_duration_s, or above default_duration_s, it is refused;
- [sfa_agents] timeout_s shorter than two heartbeats and their write period is refused;
- the log file is reopened when logrotate renames it, the unit may write /var/log/sfa-omf, and config check says
  when the log directory cannot be written;
- a line that cannot be read is never echoed (it may hold a password), ' ;' is no comment, a comment cut from a
  secret is warned of, and the shell form is read as a shell reads it;
- [sfa_oar] api_url and [sfa_agents] dns_reload are checked as serve uses them, and URL passwords are hidden;
- every number has a documented maximum;
- the docs give dns_reload's real time limit.
"""

from __future__ import annotations

import configparser
import hashlib
import logging
import logging.handlers
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from sfa_omf.agents import node as agent_node
from sfa_omf.agents.dns import RELOAD_TIMEOUT_S
from sfa_omf.cli import main
from sfa_omf.cli_server import configure_logging
from sfa_omf.cluster.leadership import keepalive_seconds
from sfa_omf.config import AGENT_CONNECT_TIMEOUT_S, MAX_LEADER_TAKEOVER_S, MAXIMA, OPTIONS, LoadedConfig, load_config
from sfa_omf.preflight import log_file_findings
from sfa_omf.testbed.oar.client import OarClient, OarError
from tests.cluster.harness import START_TIMEOUT_S, Lab, Serve, make_lab
from tests.ports import free_port
from tests.postgres import empty_postgres

REPO = Path(__file__).resolve().parent.parent
SECRET = "S3cretPw"
CHANGED = "the configuration file"
#: Linux's largest TCP_KEEPIDLE, in seconds.
LINUX_MAX_KEEPIDLE_S = 32767


def site_file(tmp_path: Path, *lines: str, shell: bool = False) -> str:
    """A configuration file with a valid [sfa] section (or its shell form) and the extra lines."""
    if shell:
        body = f"SFA_INTERFACE_HRN=testbed\nSFA_DATA_DIR='{tmp_path}'\n"
    else:
        body = f"[sfa]\ninterface_hrn = testbed\ndata_dir = {tmp_path}\n"
    path = tmp_path / "site.conf"
    path.write_text(body + "".join(f"{line}\n" for line in lines), encoding="utf-8")
    return str(path)


def loaded(path: str, **environ: str) -> LoadedConfig:
    return load_config(path, environ=environ)


def messages(config: LoadedConfig, kind: str | None = None) -> list[str]:
    return [str(problem) for problem in config.problems if kind is None or problem.kind == kind]


# --- 1. workers serve what the master read; a reload says the file changed --------------------------------------


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return make_lab(tmp_path, empty_postgres(), 0)


@pytest.fixture
def servers() -> Iterator[list[Serve]]:
    """The ``sfa-omf serve`` processes a test starts (it appends them): each stopped after the test."""
    started: list[Serve] = []
    yield started
    for server in started:
        server.stop()


def get_version(server: Serve, lab: Lab) -> dict[str, object]:
    """GetVersion's value, within a bound (a server whose workers cannot start would hold the connection)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(START_TIMEOUT_S)
    try:
        answer = server.client(lab).GetVersion()
    finally:
        socket.setdefaulttimeout(previous)
    value: dict[str, object] = answer["value"]
    return value


def replace_every_worker(server: Serve) -> None:
    """SIGKILL each worker the master started, one at a time, each once it has been replaced: then only
    replacements (started after the test's edit) serve."""
    line = server.wait_for_line("worker processes (pids ")
    for number, pid in enumerate(line.split("(pids ")[1].rstrip(")").split(), start=1):
        os.kill(int(pid), signal.SIGKILL)
        replaced = server.wait_for_line(f"worker {number} (pid {pid}) ")
        assert "started pid " in replaced, replaced


def edit(lab: Lab, text: str) -> None:
    with open(lab.config, "a", encoding="utf-8") as handle:
        handle.write(text)


def test_replaced_workers_serve_the_configuration_the_master_read_and_a_reload_says_it_changed(
    lab: Lab, tmp_path: Path, servers: list[Serve]
) -> None:
    server = Serve(lab, tmp_path, "a", "--workers", "2")
    servers.append(server)
    server.wait_ready()
    before = get_version(server, lab)["hostname"]
    edit(lab, "\n[sfa_omf]\nhostname = edited.example.org\n")  # the operator edits, not restarted yet
    os.kill(server.process.pid, signal.SIGHUP)  # systemctl reload
    warning = server.wait_for_line(CHANGED)
    assert f"{CHANGED} {lab.config} changed; restart the service to apply it" in warning, warning
    assert "(a reload re-reads only the trusted roots)" in warning
    replace_every_worker(server)
    assert get_version(server, lab)["hostname"] == before != "edited.example.org"
    assert server.process.poll() is None


def test_a_half_edited_file_does_not_stop_replacements(lab: Lab, tmp_path: Path, servers: list[Serve]) -> None:
    server = Serve(lab, tmp_path, "a", "--workers", "2")
    servers.append(server)
    server.wait_ready()
    edit(lab, "\n[sfa_omf]\nmax_duration_s = 7d\n")  # invalid: every command refuses this file now
    replace_every_worker(server)
    assert get_version(server, lab)["hostname"]  # replacements serve the file as it was at the start
    assert server.process.poll() is None
    assert not [line for line in server.lines if "failed to start" in line or "stopping the server" in line]


def test_a_reload_of_one_process_says_the_configuration_file_changed(
    lab: Lab, tmp_path: Path, servers: list[Serve]
) -> None:
    server = Serve(lab, tmp_path, "a", "--workers", "1")
    servers.append(server)
    server.wait_ready()
    edit(lab, "\n[sfa_omf]\nthreads = 4\n")
    os.kill(server.process.pid, signal.SIGHUP)
    warning = server.wait_for_line(CHANGED)
    assert f"{CHANGED} {lab.config} changed; restart the service to apply it" in warning, warning
    assert server.process.poll() is None


def test_the_docs_say_a_reload_applies_only_the_trusted_roots() -> None:
    for page in ("configuration.md", "operators.md"):
        text = " ".join((REPO / "docs" / page).read_text(encoding="utf-8").split())
        assert "re-reads only the trusted roots" in text, page


# --- 2. grain_s is the shortest lease ----------------------------------------------------------------------------


def test_grain_longer_than_the_longest_lease_is_refused(tmp_path: Path) -> None:
    path = site_file(tmp_path, "[sfa_omf]", "grain_s = 7200", "max_duration_s = 3600", "default_duration_s = 3600")
    # (default_duration_s cannot be both at least grain_s and at most max_duration_s: said too)
    problem = next(problem for problem in messages(loaded(path), "invalid") if "grain_s 7200 is longer" in problem)
    assert "grain_s 7200 is longer than max_duration_s 3600" in problem and "shortest lease" in problem, problem
    assert main(["config", "check", "--settings-only", path]) == 1


def test_default_duration_shorter_than_the_grain_is_taken(tmp_path: Path) -> None:
    """A request with neither start nor end books up to the next slot boundary: grain_s alone raised to 2 hours
    served before, and must still start (a review found the refusal of it)."""
    path = site_file(tmp_path, "[sfa_omf]", "grain_s = 7200")
    assert messages(loaded(path), "invalid") == []


def test_the_docs_say_grain_is_the_shortest_lease() -> None:
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `[sfa_omf] grain_s`"))
    assert "shortest lease" in row


# --- 3. agents' timeout ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("heartbeat_s", "timeout_s"), [(300, 120), (30, 30), (30, 64), (30, 70), (2, 5)])
def test_an_agent_timeout_within_two_heartbeats_is_warned_of(tmp_path: Path, heartbeat_s: int, timeout_s: int) -> None:
    """A warning, not a refusal: a site without agents never uses either (a review found sites that raised
    heartbeat_s refused after an upgrade)."""
    path = site_file(tmp_path, "[sfa_agents]", f"heartbeat_s = {heartbeat_s}", f"timeout_s = {timeout_s}")
    config = loaded(path)
    assert messages(config, "invalid") == []
    (problem,) = messages(config, "doubtful")
    assert f"[sfa_agents] timeout_s {timeout_s} is shorter than twice heartbeat_s ({heartbeat_s})" in problem
    assert "would be lost" in problem and problem.startswith(f"{tmp_path}/site.conf:"), problem


def test_an_agent_timeout_covers_the_agents_connect_time_out_too(tmp_path: Path) -> None:
    """A hunt on a black-holed link: the agent's next round may spend its connect time-out (10 s) before its
    heartbeat, so 2 x 30 + 5 (accepted before) let a 40 s outage lose a live node. 75 is enough; 70 is warned of."""
    assert AGENT_CONNECT_TIMEOUT_S == agent_node.CONNECT_TIMEOUT_S
    enough = site_file(tmp_path, "[sfa_agents]", "heartbeat_s = 30", "timeout_s = 75")
    assert messages(loaded(enough), "doubtful") == []
    (problem,) = messages(loaded(site_file(tmp_path, "[sfa_agents]", "heartbeat_s = 30", "timeout_s = 70")), "doubtful")
    assert "10 s an agent may take to connect" in problem and "at least 75" in problem, problem


def test_an_agent_timeout_left_at_its_default_is_warned_of_at_the_heartbeat_written(tmp_path: Path) -> None:
    path = site_file(tmp_path, "[sfa_agents]", "heartbeat_s = 60")
    (problem,) = messages(loaded(path), "doubtful")
    assert problem.startswith(f"{tmp_path}/site.conf:5: [sfa_agents] timeout_s 120"), problem


@pytest.mark.parametrize(("heartbeat_s", "timeout_s"), [(30, 75), (30, 120), (2, 16), (1, 120)])
def test_an_agent_timeout_past_two_heartbeats_and_their_write_is_taken(
    tmp_path: Path, heartbeat_s: int, timeout_s: int
) -> None:
    path = site_file(tmp_path, "[sfa_agents]", f"heartbeat_s = {heartbeat_s}", f"timeout_s = {timeout_s}")
    assert messages(loaded(path)) == []


def test_the_agents_write_period_is_the_servers() -> None:
    from sfa_omf.config import AGENT_FLUSH_S
    from sfa_omf.server.app import AGENT_FLUSH_S as SERVER_FLUSH_S

    assert AGENT_FLUSH_S == SERVER_FLUSH_S


# --- 4. the log file ---------------------------------------------------------------------------------------------


def test_the_log_file_is_opened_again_after_logrotate_renamed_it(tmp_path: Path, root_logging: None) -> None:
    log_file = tmp_path / "sfa-omf.log"
    configure_logging(str(log_file), "INFO")
    logging.getLogger("sfa_omf.server").info("before the rotation")
    log_file.rename(tmp_path / "sfa-omf.log.1")  # what logrotate does (without copytruncate)
    logging.getLogger("sfa_omf.server").info("after the rotation")
    assert "after the rotation" in log_file.read_text()
    assert "after the rotation" not in (tmp_path / "sfa-omf.log.1").read_text()


def test_the_unit_may_write_the_log_directory_the_docs_show() -> None:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read(REPO / "config" / "sfa-omf.service")
    logs = parser["Service"]["LogsDirectory"]
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    example = text.split("```ini\n", 1)[1].split("```", 1)[0]
    (line,) = [line for line in example.splitlines() if line.startswith("log_file")]
    assert os.path.dirname(line.split("=", 1)[1].strip()) == f"/var/log/{logs}"


def test_config_check_says_the_log_directory_cannot_be_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    settings = loaded(site_file(tmp_path, "[sfa_omf]", f"log_file = {logs}/sfa-omf.log")).settings
    assert log_file_findings(settings) == []
    real_access = os.access

    def access(path: str | os.PathLike[str], mode: int, **options: object) -> bool:
        # Refuses the log directory, as for the service's user (the tests run as root, who may write anywhere).
        return False if os.fspath(path) == str(logs) and mode == os.W_OK else real_access(path, mode)

    monkeypatch.setattr(os, "access", access)
    (finding,) = log_file_findings(settings)
    assert finding.message.startswith(f"the log directory {logs} is not writable by this user"), finding.message
    assert "LogsDirectory=sfa-omf" in finding.message


# --- 5. secrets in the file --------------------------------------------------------------------------------------


def test_a_line_that_cannot_be_read_is_never_shown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = site_file(tmp_path, "[sfa_db]", f'password = "{SECRET}"x', f"{SECRET} continued")
    problems = messages(loaded(path), "syntax")
    assert problems == [
        f"{path}:5: cannot read [sfa_db] password: unbalanced quotes (the value is not shown)",
        f"{path}:6: cannot read this line (not shown): expected key = value in a [section]",
    ]
    shell = site_file(tmp_path, f"SFA_DB_PASSWORD='{SECRET}", f"{SECRET}", shell=True)
    assert messages(loaded(shell), "syntax") == [
        f"{shell}:3: cannot read SFA_DB_PASSWORD: unbalanced quotes (the value is not shown)",
        f"{shell}:4: cannot read this line (not shown): expected NAME=value",
    ]
    assert main(["config", "check", "--settings-only", path]) == 1
    out, err = capsys.readouterr()
    assert SECRET not in out + err


def test_a_semicolon_is_part_of_the_value(tmp_path: Path) -> None:
    config = loaded(site_file(tmp_path, "[sfa_db]", f"password = {SECRET} ;tail"))
    assert config.settings.db_password == f"{SECRET} ;tail"
    assert messages(config) == []


def test_a_comment_cut_from_a_secret_is_warned_of(tmp_path: Path) -> None:
    config = loaded(site_file(tmp_path, "[sfa_db]", "password = abc #def", "[sfa_omf]", "hostname = am.example.org #"))
    assert config.settings.db_password == "abc"
    path = config.path
    assert messages(config) == [
        f"{path}:5: [sfa_db] password: the text after ' #' is taken as a comment, not as part of the value; quote "
        'the value ("...") if it is part of it, or put the comment on a line of its own'
    ]
    quoted = loaded(site_file(tmp_path, "[sfa_db]", 'password = "abc #def"  # the database password'))
    assert (quoted.settings.db_password, messages(quoted)) == ("abc #def", [])


def test_the_shell_form_is_read_as_a_shell_reads_it(tmp_path: Path) -> None:
    path = site_file(
        tmp_path,
        "SFA_DB_PASSWORD='it'\\''s;#x' # the password",
        'SFA_DB_USER="a \\"b\\""',
        "SFA_DB_NAME=cal\\ endar",
        "SFA_OMF_HOSTNAME=am.example.org  # a comment",
        shell=True,
    )
    config = loaded(path)
    assert messages(config, "syntax") == []
    settings = config.settings
    assert (settings.db_password, settings.db_user, settings.db_name) == ("it's;#x", 'a "b"', "cal endar")
    assert settings.hostname == "am.example.org"
    words = site_file(tmp_path, "SFA_WEB_ADMINS=urn:a urn:b", shell=True)
    (problem,) = messages(loaded(words), "syntax")
    assert "cannot read SFA_WEB_ADMINS: text follows the value (not shown)" in problem, problem


# --- 6. what serve uses, checked; URL passwords hidden -----------------------------------------------------------


def test_an_oar_api_url_serve_would_refuse_is_refused(tmp_path: Path) -> None:
    for url in ("oar.example.org:6668/oarapi", "https:///oarapi", "ftp://oar.example.org/oarapi"):
        path = site_file(tmp_path, "[sfa_aggregate]", "type = oar", "[sfa_oar]", f"api_url = {url}")
        (problem,) = messages(loaded(path), "invalid")
        assert problem.startswith(f"{tmp_path}/site.conf:7: [sfa_oar] api_url {url!r}"), problem
    # A site of another testbed type never uses it (a review found such sites refused whole).
    assert messages(loaded(site_file(tmp_path, "[sfa_oar]", "api_url =")), "invalid") == []


def test_a_dns_reload_that_does_not_split_is_refused(tmp_path: Path) -> None:
    zone = "dns_zone = nodes.example.org"
    (problem,) = messages(loaded(site_file(tmp_path, "[sfa_agents]", zone, 'dns_reload = rndc "reload')), "invalid")
    assert "[sfa_agents] dns_reload cannot be split into words (No closing quotation)" in problem, problem
    # Empty: no reload (the DNS server reads the files itself); without a zone it is never run.
    assert messages(loaded(site_file(tmp_path, "[sfa_agents]", zone, "dns_reload =")), "invalid") == []
    assert messages(loaded(site_file(tmp_path, "[sfa_agents]", 'dns_reload = rndc "reload')), "invalid") == []


def test_a_number_with_an_sfa_style_comment_says_that_semicolons_begin_none(tmp_path: Path) -> None:
    (problem,) = messages(loaded(site_file(tmp_path, "[sfa_omf]", "threads = 8 ; more later")), "invalid")
    assert "not a whole number; ';' does not begin a comment here, ' #' does" in problem, problem


def test_config_check_hides_the_passwords_of_urls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = site_file(
        tmp_path,
        "[sfa_oar]",
        f"api_url = https://oar:{SECRET}@oar.example.org/oarapi",
        "[sfa_notify]",
        f"operators = https://hook:{SECRET}@hooks.example.org/x ops@example.org ftp://ftp:{SECRET}@files",
    )
    main(["config", "check", "--settings-only", path])
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert "[sfa_notify] operators: 'ftp://ftp:***@files' is neither an e-mail address" in out
    assert "https://oar:***@oar.example.org/oarapi" in out
    webhook = f"https://hook:{SECRET}@hooks.example.org/x"  # shown by origin and digest: the path may hold a token
    assert f"https://hooks.example.org#{hashlib.sha256(webhook.encode()).hexdigest()[:12]} ops@example.org" in out


def test_the_oar_client_hides_the_password_in_its_messages() -> None:
    client = OarClient(f"http://oar:{SECRET}@127.0.0.1:{free_port()}/oarapi", timeout_s=5)
    with pytest.raises(OarError) as raised:
        client.version()
    assert SECRET not in str(raised.value) and "oar:***@127.0.0.1" in str(raised.value), raised.value
    with pytest.raises(ValueError) as refused:
        OarClient(f"ftp://oar:{SECRET}@oar.example.org/")
    assert SECRET not in str(refused.value)


# --- 7. maxima ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", sorted(MAXIMA))
def test_a_number_above_its_maximum_is_refused_naming_it(tmp_path: Path, field: str) -> None:
    option = next(option for option in OPTIONS if option.field == field)
    maximum = MAXIMA[field]
    config = loaded(site_file(tmp_path), **{option.shell_name: str(maximum + 1)})
    above = [(problem.kind, str(problem)) for problem in config.problems if "above its maximum" in problem.message]
    expected = f"environment {option.shell_name}: {option.ini_name} {maximum + 1} is above its maximum, {maximum}"
    assert above == [("invalid", expected)], config.problems
    at_maximum = loaded(site_file(tmp_path), **{option.shell_name: str(maximum)})
    assert not [problem for problem in at_maximum.problems if "above its maximum" in problem.message]


def test_every_number_has_a_maximum() -> None:
    numbers = {
        option.field for option in OPTIONS if option.kind in ("count", "workers", "auto_count", "history_days", "limit")
    }
    assert numbers == set(MAXIMA)


def test_the_longest_takeover_keeps_the_keepalive_within_what_linux_takes(tmp_path: Path) -> None:
    assert max(keepalive_seconds(MAX_LEADER_TAKEOVER_S)) <= LINUX_MAX_KEEPIDLE_S
    for value in ("98304", "1000000000"):
        config = loaded(site_file(tmp_path, "[sfa_omf]", f"leader_takeover_s = {value}"))
        assert [problem.kind for problem in config.problems] == ["invalid"], config.problems
    huge = loaded(site_file(tmp_path, "[sfa_omf]", "horizon_days = 1000000000"))
    assert messages(huge) == [f"{huge.path}:5: [sfa_omf] horizon_days 1000000000 is above its maximum, 3650"]


# --- 8. the docs -------------------------------------------------------------------------------------------------


def test_the_docs_give_the_dns_reloads_time_limit() -> None:
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `[sfa_agents] dns_reload`"))
    assert f"after {RELOAD_TIMEOUT_S:g} s" in row, row
