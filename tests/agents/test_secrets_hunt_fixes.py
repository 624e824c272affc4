"""The secrets hunt's findings on node agents, fixed (real TLS on loopback, real commands, SQLite and PostgreSQL):

- the join token is read from a file, standard input or a variable, never needed on `agent enrol`'s command line
  (where every local user sees it), and `node invite` prints a command without it; `--token` still works, warned;
- a token made for any host name enrols new host names only: a stolen one no longer replaces the agent of an enrolled
  node (which then fetched its lease's work and staged-in files); re-binding takes a token made for the host name;
- unused invitations are listed (never their secrets) and revoked at once (migration 0031 keeps the binding and the
  revocation with the token);
- `node stage-out --to DIR` follows no link, replaces nothing, refuses a directory others could write in, and writes
  0600 files; staged files are kept 0600 in 0700 folders whatever the umask."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from sfa_omf.agents.node import KEY, AgentCallError, Client, enrol
from sfa_omf.agents.staging import FileStore
from sfa_omf.calendar.agents import Agents
from sfa_omf.calendar.database import head_revision
from sfa_omf.cli import main
from tests.agents.conftest import Lab
from tests.agents.test_agent_process import NODE, SLICE, book_now, environment, sfa_omf
from tests.agents.test_api import counts
from tests.calendar.conftest import fresh_database
from tests.registry.test_removed_logins import migrate_database
from tests.sshkeys import ssh_key

LEASE = "0" * 8 + "-0000-4000-8000-" + "0" * 12


def _client(lab: Lab, state: Path) -> Client:
    return Client(lab.url, str(state / "node.gid"), str(state / KEY), lab.root)


def _enrol_command(lab: Lab, state: Path, hostname: str = "pc1") -> list[str]:
    return [
        "agent", "enrol", "--server", lab.url, "--root", lab.root, "--state", str(state), "--hostname", hostname,
        "--retry-for", "0",
    ]  # fmt: skip


@contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# -- 1a: the token never needs the command line ------------------------------------------------------------------


def test_agent_enrol_reads_the_token_from_a_file_standard_input_or_the_variable(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "join.token"
    token_file.write_text(f"  {lab.invite()}\n")
    assert main([*_enrol_command(lab, tmp_path / "a1", "pc1"), "--token-file", str(token_file)]) == 0
    out, err = capsys.readouterr()
    assert "enrolled as urn:publicid:IDN+lab+node+pc1" in out and err == "", err

    # Standard input, as a real process reads it (a pipe: no prompt).
    piped = subprocess.run(
        sfa_omf(*_enrol_command(lab, tmp_path / "a2", "pc2"), "--token-file", "-"),
        input=f"{lab.invite()}\n",
        env=environment(),
        capture_output=True,
        text=True,
    )
    assert piped.returncode == 0 and "enrolled as urn:publicid:IDN+lab+node+pc2" in piped.stdout, piped.stderr

    monkeypatch.setenv("SFA_OMF_AGENT_TOKEN", lab.invite())
    assert main(_enrol_command(lab, tmp_path / "a3", "pc3")) == 0
    assert "enrolled as urn:publicid:IDN+lab+node+pc3" in capsys.readouterr().out
    monkeypatch.delenv("SFA_OMF_AGENT_TOKEN")

    # --token still works, with a warning that it shows the token to other local users.
    assert main([*_enrol_command(lab, tmp_path / "a4", "pc4"), "--token", lab.invite()]) == 0
    out, err = capsys.readouterr()
    assert "enrolled as urn:publicid:IDN+lab+node+pc4" in out
    assert "warning: --token shows the join token to every local user" in err and "--token-file" in err, err

    # No token at all, or an empty file: said before anything is sent.
    assert main(_enrol_command(lab, tmp_path / "a5", "pc5")) == 2
    assert "no join token: give --token-file FILE" in capsys.readouterr().err
    (tmp_path / "empty.token").write_text("\n")
    assert main([*_enrol_command(lab, tmp_path / "a5", "pc5"), "--token-file", str(tmp_path / "empty.token")]) == 2
    assert "the join token read from" in capsys.readouterr().err
    assert sorted(agent.hostname for agent in lab.agents.list_agents()) == ["pc1", "pc2", "pc3", "pc4"]


def test_node_invite_prints_the_token_once_and_a_command_without_it(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["node", "invite", "--config", lab.settings_path]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    token = lines[1].strip()
    assert printed.count(token) == 1, printed  # for the operator to carry; never in the command to run
    command = printed[printed.index("sfa-omf agent enrol") :]
    assert "--token-file /root/sfa-omf-join.token" in command and "--token " not in command, printed
    # The command as printed, with the token in the file it names (here under tmp_path): it enrols.
    token_file = tmp_path / "sfa-omf-join.token"
    token_file.write_text(f"{token}\n")
    assert main([*_enrol_command(lab, tmp_path / "a1", "pc7"), "--token-file", str(token_file)]) == 0


# -- 1b: a token for any host name never replaces an enrolled node's agent ---------------------------------------


def test_a_stolen_token_for_any_host_name_does_not_replace_an_enrolled_nodes_agent(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hunt's attack: pc1 runs a lease with a staged-in file; a fresh token for any host name, stolen, enrolled
    a second agent as pc1, the real one was refused (403) and the thief fetched the lease's work and the file."""
    real = tmp_path / "real"
    first = enrol(lab.url, lab.invite(), lab.root, str(real), "pc1", "192.168.1.10")
    book_now(lab, ssh_key("ann@laptop"))
    (lease,) = lab.aggregate.bookings.leases(slice_urn=SLICE)
    store = FileStore(str(lab.directory / "agent_files"), lab.settings.agent_max_file_bytes)
    store.put(lease.id, "pc1", "in", "input.dat", b"secret input", hashlib.sha256(b"secret input").hexdigest())

    stolen = lab.invite()
    thief = tmp_path / "thief"
    with pytest.raises(AgentCallError) as refused:
        enrol(lab.url, stolen, lab.root, str(thief), "pc1", "192.168.1.10")
    said = refused.value
    assert (said.status, said.reason) == (409, "already_exists"), said
    assert "node pc1 is enrolled already" in said.message and "sfa-omf node invite --hostname pc1" in said.message
    assert not (thief / "node.gid").exists()  # no certificate: nothing of the lease for it
    # The real agent is still pc1's: its work and its file.
    client = _client(lab, real)
    assert client.call("POST", "heartbeat", {})["node"] == first.node == NODE
    (item,) = client.call("GET", "work")["active"]
    assert item["lease_id"] == lease.id and client.get_file(lease.id, "input.dat") == b"secret input"
    assert counts(lab) == (1, 1)
    # Through the command too, saying what to ask for.
    token_file = tmp_path / "stolen.token"
    token_file.write_text(stolen)
    assert main([*_enrol_command(lab, thief, "pc1"), "--token-file", str(token_file)]) == 1
    assert "sfa-omf node invite --hostname pc1" in capsys.readouterr().err
    # The refused token was not spent: it enrols a new host name.
    assert enrol(lab.url, stolen, lab.root, str(thief), "pc9").node == "urn:publicid:IDN+lab+node+pc9"

    # The same key enrolling again with a new token for any host name keeps its node (no re-binding).
    assert enrol(lab.url, lab.invite(), lab.root, str(real), "pc1", "192.168.1.10").node == NODE
    assert _client(lab, real).call("POST", "heartbeat", {})["node"] == NODE  # with the certificate it was given


def test_only_a_token_made_for_the_host_name_re_binds_its_node(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab.aggregate.inventory.create_pool("desktops", federated=False)
    old = tmp_path / "old"
    first = enrol(lab.url, lab.invite("desktops"), lab.root, str(old), "pc1")
    # Bound to pc1: the pool is the enrolled node's unless given; another pool is refused at once.
    assert main(["node", "invite", "--hostname", "PC1", "--json", "--config", lab.settings_path]) == 0
    invitation = json.loads(capsys.readouterr().out)
    assert (invitation["hostname"], invitation["pool"]) == ("pc1", "desktops"), invitation
    assert main(["node", "invite", "--hostname", "pc1", "--pool", "default", "--config", lab.settings_path]) == 2
    assert "node pc1 is enrolled in pool 'desktops'" in capsys.readouterr().err
    assert main(["node", "invite", "--hostname", "pc_1", "--config", lab.settings_path]) == 2
    assert "must be one DNS label" in capsys.readouterr().err

    # A token bound to pc1 enrols pc1 only (refused for pc2, 403, not spent) ...
    with pytest.raises(AgentCallError) as refused:
        enrol(lab.url, invitation["token"], lab.root, str(tmp_path / "new"), "pc2")
    said = refused.value
    assert said.status == 403 and "made for host name 'pc1' only, not 'pc2'" in said.message, said
    assert counts(lab) == (1, 1)
    # ... and re-binds it to the reinstalled machine's new key: the old key is refused from then on.
    again = enrol(lab.url, invitation["token"], lab.root, str(tmp_path / "new"), "pc1")
    assert again.node == first.node
    assert _client(lab, tmp_path / "new").call("POST", "heartbeat", {})["node"] == first.node
    with pytest.raises(AgentCallError) as refused:
        _client(lab, old).call("POST", "heartbeat", {})
    assert refused.value.status == 403
    # A bound token enrols a host name not enrolled yet too.
    fresh = lab.invite(hostname="pc5")
    assert enrol(lab.url, fresh, lab.root, str(tmp_path / "pc5"), "pc5").node == "urn:publicid:IDN+lab+node+pc5"


# -- 1c: listing and revoking invitations ------------------------------------------------------------------------


def test_unused_invitations_are_listed_without_secrets_and_revoked_at_once(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    any_name = lab.invite()
    for_pc4 = lab.invite(hostname="pc4")
    used = lab.invite()
    enrol(lab.url, used, lab.root, str(tmp_path / "a1"), "pc1")
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    expired = Agents(lab.aggregate.database, clock=lambda: an_hour_ago).create_token("default", 60)[0]

    assert main(["node", "invites", "--json", "--config", lab.settings_path]) == 0
    out = capsys.readouterr().out
    listed = {row["id"]: row for row in json.loads(out)}
    assert sorted(listed) == sorted([any_name.split(".")[0], for_pc4.split(".")[0]]), out
    assert listed[for_pc4.split(".")[0]]["hostname"] == "pc4" and listed[any_name.split(".")[0]]["hostname"] is None
    assert main(["node", "invites", "--config", lab.settings_path]) == 0
    out += capsys.readouterr().out
    for token in (any_name, for_pc4, used, expired):
        assert token.split(".")[1] not in out, out  # never a secret
    assert "pc4" in out and any_name.split(".")[0] in out

    token_id = for_pc4.split(".")[0]
    assert main(["node", "invite-revoke", token_id, "--config", lab.settings_path]) == 0
    assert f"revoked join token {token_id}" in capsys.readouterr().out
    with pytest.raises(AgentCallError) as refused:
        enrol(lab.url, for_pc4, lab.root, str(tmp_path / "a4"), "pc4")
    said = refused.value
    assert said.status == 403 and "this join token was revoked by the operator" in said.message, said
    assert counts(lab) == (1, 1)
    assert main(["node", "invites", "--json", "--config", lab.settings_path]) == 0
    assert [row["id"] for row in json.loads(capsys.readouterr().out)] == [any_name.split(".")[0]]
    # Again: nothing more to do. A used token, an unknown one, or no id at all: refused, saying why.
    assert main(["node", "invite-revoke", token_id, "--config", lab.settings_path]) == 0
    assert "was revoked already" in capsys.readouterr().out
    assert main(["node", "invite-revoke", used, "--config", lab.settings_path]) == 2
    err = capsys.readouterr().err
    assert "was used at" in err and "sfa-omf node remove pc1" in err and used.split(".")[1] not in err, err
    assert main(["node", "invite-revoke", "0123456789ab", "--config", lab.settings_path]) == 2
    assert "there is no join token 0123456789ab" in capsys.readouterr().err
    assert main(["node", "invite-revoke", "pc4", "--config", lab.settings_path]) == 2
    assert "is not a join token's id" in capsys.readouterr().err
    # The other invitation still enrols.
    assert enrol(lab.url, any_name, lab.root, str(tmp_path / "a2"), "pc2").node == "urn:publicid:IDN+lab+node+pc2"


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migration_0031_adds_the_binding_and_revocation_and_its_downgrade_drops_them(kind: str, tmp_path: Path) -> None:
    database = fresh_database(kind, tmp_path)
    try:
        migrate_database(database, "downgrade", "0030")
        columns = {column["name"] for column in inspect(database.engine).get_columns("agent_token")}
        assert not columns & {"bound_hostname", "revoked_s"}
        with database.engine.begin() as connection:  # a token made before the upgrade
            connection.execute(
                text(
                    "INSERT INTO agent_token (id, secret_sha256, pool, created_s, expires_s) "
                    "VALUES ('0123456789ab', :secret, 'default', 1, 2)"
                ),
                {"secret": "0" * 64},
            )
        migrate_database(database, "upgrade", "0031")
        with database.engine.begin() as connection:
            rows = connection.execute(text("SELECT id, bound_hostname, revoked_s FROM agent_token")).all()
        assert [tuple(row) for row in rows] == [("0123456789ab", None, None)]  # bound to no host name: new ones only
        with database.engine.begin() as connection:  # one revoked at 50, one made for pc1, one used: all till 100
            connection.execute(
                text(
                    "INSERT INTO agent_token (id, secret_sha256, pool, created_s, expires_s, revoked_s, "
                    "bound_hostname, used_s) VALUES ('revoked00000', :secret, 'default', 10, 100, 50, NULL, NULL), "
                    "('boundtopc100', :secret, 'default', 10, 100, NULL, 'pc1', NULL), "
                    "('used00000000', :secret, 'default', 10, 100, NULL, 'pc2', 20)"
                ),
                {"secret": "1" * 64},
            )
        migrate_database(database, "downgrade", "0030")
        with database.engine.begin() as connection:  # the versions before would enrol any host name with them
            ends = dict(connection.execute(text("SELECT id, expires_s FROM agent_token")).all())
        assert ends == {"0123456789ab": 2, "revoked00000": 50, "boundtopc100": 10, "used00000000": 100}
        columns = {column["name"] for column in inspect(database.engine).get_columns("agent_token")}
        assert not columns & {"bound_hostname", "revoked_s"}
        migrate_database(database, "upgrade", head_revision())
        columns = {column["name"] for column in inspect(database.engine).get_columns("agent_token")}
        assert {"bound_hostname", "revoked_s"} <= columns
    finally:
        database.dispose()


# -- 2: stage-out follows no link and replaces nothing -----------------------------------------------------------


def _staged_out(lab: Lab, tmp_path: Path) -> str:
    enrol(lab.url, lab.invite(), lab.root, str(tmp_path / "a1"), "pc1")
    book_now(lab, ssh_key("ann@laptop"))
    (lease,) = lab.aggregate.bookings.leases(slice_urn=SLICE)
    client = _client(lab, tmp_path / "a1")
    client.put_file(lease.id, "authorized_keys", b"ssh-ed25519 AAAA attacker\n")
    client.put_file(lease.id, "out.txt", b"results\n")
    return lease.id


def test_stage_out_follows_no_link_and_replaces_nothing(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lease_id = _staged_out(lab, tmp_path)

    def stage_out(directory: Path) -> int:
        return main(["node", "stage-out", "pc1", lease_id, "--to", str(directory), "--config", lab.settings_path])

    # A link planted in the directory, named as a file the node sends: the hunt's redirected write as root.
    victim = tmp_path / "victim_authorized_keys"
    victim.write_bytes(b"ssh-ed25519 AAAA operator\n")
    planted = tmp_path / "planted"
    planted.mkdir(mode=0o700)
    (planted / "authorized_keys").symlink_to(victim)
    assert stage_out(planted) == 2
    err = capsys.readouterr().err
    assert "already holds authorized_keys" in err and "nothing was copied" in err, err
    assert victim.read_bytes() == b"ssh-ed25519 AAAA operator\n"
    assert (planted / "authorized_keys").is_symlink() and not (planted / "out.txt").exists()

    # The directory itself a link: refused.
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    assert stage_out(tmp_path / "link") == 2
    assert "is a symbolic link" in capsys.readouterr().err and not (tmp_path / "elsewhere").exists()

    # A new directory, under umask 0: made 0700, the files 0600; again with the same content changes nothing.
    with umask(0):
        assert stage_out(tmp_path / "got") == 0
    assert _mode(tmp_path / "got") == 0o700
    assert {path.name: _mode(path) for path in (tmp_path / "got").iterdir()} == {
        "authorized_keys": 0o600,
        "out.txt": 0o600,
    }
    assert (tmp_path / "got" / "out.txt").read_bytes() == b"results\n"
    capsys.readouterr()
    assert stage_out(tmp_path / "got") == 0
    assert "(already there)" in capsys.readouterr().out
    # A file of the operator's of the same name and other content: kept, and nothing copied.
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    (mine / "out.txt").write_bytes(b"my own notes\n")
    assert stage_out(mine) == 2
    assert "already holds out.txt" in capsys.readouterr().err
    assert (mine / "out.txt").read_bytes() == b"my own notes\n" and not (mine / "authorized_keys").exists()


def test_stage_out_refuses_a_directory_others_could_write_in_or_not_the_callers(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lease_id = _staged_out(lab, tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # as /tmp: anyone may plant a name there
    command = ["node", "stage-out", "pc1", lease_id, "--config", lab.settings_path]
    assert main([*command, "--to", str(shared)]) == 2
    err = capsys.readouterr().err
    assert "is writable by group and others (mode 1777)" in err and f"chmod go-w {shared}" in err, err
    assert list(shared.iterdir()) == []
    shared.chmod(0o770)
    assert main([*command, "--to", str(shared)]) == 2
    assert "is writable by group (mode 0770)" in capsys.readouterr().err
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another uid needs root (the tests run as root)")
    others = tmp_path / "others"
    others.mkdir(mode=0o700)
    os.chown(others, 12345, 12345)  # a uid of no account: the directory is simply not ours
    assert main([*command, "--to", str(others)]) == 2
    assert f"belongs to uid 12345, not to you (uid {os.geteuid()})" in capsys.readouterr().err
    assert list(others.iterdir()) == []


# -- 3: staged files are 0600 in 0700 folders ---------------------------------------------------------------------


def test_staged_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    store = FileStore(str(data_dir / "agent_files"), 1024)
    host = data_dir / "agent_files" / LEASE / "pc1"
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    with umask(0):
        assert store.put(LEASE, "pc1", "out", "result.txt", b"42\n", hashlib.sha256(b"42\n").hexdigest())
        # A link where the previous version wrote its temporary file: never followed.
        (host / "in").mkdir(mode=0o700)
        (host / "in" / "input.dat.tmp").symlink_to(victim)
        assert store.put(LEASE, "pc1", "in", "input.dat", b"secret", hashlib.sha256(b"secret").hexdigest())
    folders = [data_dir / "agent_files", data_dir / "agent_files" / LEASE, host, host / "out"]
    assert [_mode(folder) for folder in folders] == [0o700] * 4
    assert (_mode(host / "out" / "result.txt"), _mode(host / "out" / "result.txt.sha256")) == (0o600, 0o600)
    assert victim.read_bytes() == b"untouched"
    for path in (host / "out" / "result.txt", host / "out" / "result.txt.sha256", host / "in" / "input.dat"):
        assert stat.S_ISREG(path.lstat().st_mode) and _mode(path) == 0o600, path
    assert _mode(host / "in" / "input.dat.sha256") == 0o600
    assert store.get(LEASE, "pc1", "in", "input.dat") == (b"secret", hashlib.sha256(b"secret").hexdigest())


def test_staged_files_made_by_root_belong_to_the_data_directorys_owner(tmp_path: Path) -> None:
    """The operator's `node stage-in` run as root; the aggregate serves them as its own user (config/sfa-omf.service):
    private files must still be its to read, and its folders its to write the staged-out files into."""
    if os.geteuid() != 0:
        pytest.skip("files made by root: run as root (the tests do)")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    os.chown(data_dir, 12345, 12346)  # the service user's data directory (a uid of no account will do)
    store = FileStore(str(data_dir / "agent_files"), 1024)
    store.put(LEASE, "pc1", "in", "input.dat", b"secret", hashlib.sha256(b"secret").hexdigest())
    made = [
        data_dir / "agent_files",
        data_dir / "agent_files" / LEASE,
        data_dir / "agent_files" / LEASE / "pc1",
        data_dir / "agent_files" / LEASE / "pc1" / "in",
    ]
    folder = made[-1]
    for path in [*made, folder / "input.dat", folder / "input.dat.sha256"]:
        status = path.lstat()
        assert (status.st_uid, status.st_gid) == (12345, 12346), path
    assert [_mode(path) for path in made] == [0o700] * 4
