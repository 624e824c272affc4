"""A user removed from the registry keeps their local login to themselves: whoever is registered later under the same
name (same HRN, so same URN) gets a login of their own, stable for them, never the removed user's account and home.
Users of other authorities keep the logins derived as always, and pinned logins keep working. On SQLite and a real
PostgreSQL, through the aggregate's own Allocate and Provision and the operator's ``sfa-omf user remove``."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, delete, select, text

from sfa_omf.am.aggregate import Aggregate, AggregateSettings
from sfa_omf.am.api_v3 import ApiV3
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.models import RegistryRecord, RetiredLogin
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.config import Settings, read_config
from sfa_omf.registry.accounts import Accounts, derived_login, retire_login
from sfa_omf.registry.admin import RegistryAdmin
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory, register_demo
from sfa_omf.registry.records import Record, Records
from sfa_omf.server.xmlrpc import CallContext
from sfa_omf.trust.gid import GidChain, load_gid_chain_file
from sfa_omf.trust.roots import load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache
from tests.calendar.conftest import fresh_database, node_urn
from tests.postgres import empty_postgres
from tests.sshkeys import ssh_key

# These register removed names again: what the next holder gets, not the wait before (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("register_again_at_once")

ALICE = "urn:publicid:IDN+tb+user+alice"
BOB = "urn:publicid:IDN+tb+user+bob"
DEMO = "urn:publicid:IDN+tb+slice+demo"
FOREIGN_ALICE = "urn:publicid:IDN+onelab:inria+user+alice"
GENI_V3 = {"geni_rspec_version": {"type": "GENI", "version": "3"}}


@dataclass
class Site:
    """Authority tb (user alice, researcher of tb.demo), its registry and its aggregate on one calendar database."""

    directory: Path
    settings: Settings
    database: Database
    authority: LocalAuthority
    admin: RegistryAdmin
    aggregate: Aggregate

    def provision(self, chain: GidChain, slice_credential: str, node: str) -> str:
        """Allocate ``node`` (from now) and Provision it, as the owner of ``chain``: the login the slice got."""
        api = ApiV3(self.aggregate)
        context = CallContext(chain, "127.0.0.1", "/")
        request = (
            '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3">'
            f'<node client_id="{node}" component_id="{node_urn(node)}" exclusive="true"/></rspec>'
        )
        allocated = api(context, "Allocate", (DEMO, [slice_credential], request, {}))
        assert allocated["code"]["geni_code"] == 0, allocated
        provisioned = api(context, "Provision", ([DEMO], [slice_credential], GENI_V3))
        assert provisioned["code"]["geni_code"] == 0, provisioned
        return self.aggregate.accounts.login_for(chain[0].urn or "", DEMO)

    def slice_credential(self, chain: GidChain) -> str:
        return self.authority.credential(chain, self.authority.issued_chain("tb.demo"))

    def mapped(self) -> dict[str, str]:
        return {record.urn: record.login for record in Accounts(self.database).list()}


@pytest.fixture(params=["sqlite", "postgresql"])
def testbed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    report = init_directory(str(tmp_path / "tb"), "tb", ("alice",))
    settings = read_config(str(tmp_path / "tb" / "sfa-omf.conf"))
    database = fresh_database(request.param, tmp_path)
    register_demo(report, database)
    authority = LocalAuthority.load(settings.data_dir, "tb")
    verifier = CredentialVerifier(load_trusted_roots(str(tmp_path / "tb" / "trusted_roots")), VerdictCache())
    aggregate = Aggregate(AggregateSettings(authority_hrn="tb"), database, verifier)
    for name in ("n1", "n2"):
        aggregate.inventory.add_node(NodeSpec(node_urn(name), name))
    try:
        yield Site(
            tmp_path / "tb",
            settings,
            database,
            authority,
            RegistryAdmin(authority, Records(database), settings),
            aggregate,
        )
    finally:
        database.dispose()


def test_a_name_registered_again_gets_a_login_of_its_own(testbed: Site) -> None:
    """The reproduction: alice provisions (her login is mapped and used), is removed, and another person is
    registered as alice: before the fix they got her login, so her Unix account, home directory and files."""
    first_alice = load_gid_chain_file(str(testbed.directory / "users" / "alice" / "sfi" / "tb.alice.user.gid"))
    first_login = testbed.provision(first_alice, testbed.slice_credential(first_alice), "n1")
    assert first_login == derived_login(ALICE)

    removed = testbed.admin.remove("alice", "user")
    # Until the name is registered again, the URN is still the removed alice's (her slice's keys are withdrawn
    # from her own account at the end of her lease), but her mapping is gone and her login is never derived again.
    assert testbed.aggregate.accounts.login_for(ALICE, DEMO) == first_login
    mapped_after_removal = testbed.mapped()

    new_user = testbed.admin.add_user("alice")  # another person, another key
    testbed.admin.add_researcher("demo", "alice")
    second_alice = load_gid_chain_file(str(Path(new_user.sfi_dir) / "tb.alice.user.gid"))
    assert second_alice[0].key_id != first_alice[0].key_id
    second_login = testbed.provision(second_alice, testbed.slice_credential(second_alice), "n2")

    assert second_login != first_login, "the new alice got the removed alice's login (and so her account)"
    assert second_login == derived_login(ALICE, holder=1), "derived from the URN and the holders before them"
    assert testbed.aggregate.accounts.login_for(ALICE, DEMO) == second_login, "stable"
    assert testbed.mapped()[ALICE] == second_login
    assert ALICE not in mapped_after_removal
    assert removed.retired_login == first_login


def test_the_slices_forget_a_removed_user_and_the_keys_they_sent(testbed: Site) -> None:
    """The keys alice sent for a slice are the aggregate's record of hers: once she is removed, they must neither go
    into the login of whoever is registered next as alice, nor be taken for that person's (the AM's geni_users rule
    keeps another member's keys only when known to be theirs)."""
    first_alice = load_gid_chain_file(str(testbed.directory / "users" / "alice" / "sfi" / "tb.alice.user.gid"))
    testbed.provision(first_alice, testbed.slice_credential(first_alice), "n1")
    her_key, bobs_key = ssh_key("first alice"), ssh_key("bob")
    testbed.aggregate.slices.update_users(DEMO, {ALICE: [her_key], BOB: [bobs_key]})
    testbed.admin.remove("alice", "user")
    assert [user.user_urn for user in testbed.aggregate.slices.get(DEMO).users] == [BOB], "bob stays"

    testbed.admin.add_user("alice")  # another person, another key
    logins = {account.login: account for account in testbed.aggregate.local_accounts(DEMO)}
    new_login = testbed.aggregate.accounts.login_for(ALICE, DEMO)
    assert her_key not in (logins[new_login].ssh_keys if new_login in logins else ())
    assert all(her_key not in account.ssh_keys for account in logins.values())


def test_the_removed_users_login_is_never_derived_again_and_foreign_users_keep_theirs(testbed: Site) -> None:
    accounts = Accounts(testbed.database)
    foreign = accounts.login_for(FOREIGN_ALICE, DEMO)
    first = accounts.login_for(ALICE, DEMO)
    testbed.admin.remove("alice", "user")
    testbed.admin.add_user("alice")
    second = accounts.login_for(ALICE, DEMO)
    testbed.admin.remove("alice", "user")
    testbed.admin.add_user("alice")
    third = accounts.login_for(ALICE, DEMO)
    assert len({first, second, third}) == 3, (first, second, third)
    assert third == derived_login(ALICE, holder=2)
    # Another authority's alice (never in this registry) keeps the login derived for her as always.
    assert foreign == derived_login(FOREIGN_ALICE) and accounts.login_for(FOREIGN_ALICE, DEMO) == foreign
    assert accounts.login_for("urn:publicid:IDN+geni:gpo:gcf+user+alice", DEMO) == derived_login(
        "urn:publicid:IDN+geni:gpo:gcf+user+alice"
    )
    with testbed.database.read() as session:
        retired = sorted(session.scalars(select(RetiredLogin.login).where(RetiredLogin.urn == ALICE)))
    assert retired == sorted([first, second])


def test_a_user_removed_before_any_login_was_mapped_retires_the_login_they_would_have_had(testbed: Site) -> None:
    removed = testbed.admin.remove("alice", "user")
    assert removed.retired_login == derived_login(ALICE)
    assert Accounts(testbed.database).login_for(ALICE, DEMO) == derived_login(ALICE), "the removed alice's own"
    assert testbed.mapped() == {}, "nothing mapped for a name nobody holds"
    testbed.admin.add_user("alice")
    assert Accounts(testbed.database).login_for(ALICE, DEMO) == derived_login(ALICE, holder=1)


def test_pinned_logins_keep_working(testbed: Site) -> None:
    accounts = Accounts(testbed.database)
    accounts.pin(ALICE, "alice")
    accounts.pin(FOREIGN_ALICE, "alice")  # two people on one account, on purpose
    testbed.admin.remove("alice", "user")
    assert accounts.login_for(FOREIGN_ALICE, DEMO) == "alice", "another URN's pin is untouched"
    testbed.admin.add_user("alice")
    assert accounts.login_for(ALICE, DEMO) == derived_login(ALICE, holder=1), "not the removed alice's pin"
    # The operator pins a login for the new alice: it wins, as any pin.
    accounts.pin(ALICE, "alice2")
    assert accounts.login_for(ALICE, DEMO) == "alice2"
    assert testbed.mapped() == {ALICE: "alice2", FOREIGN_ALICE: "alice"}


def test_per_slice_policy_a_slice_registered_again_gets_an_account_of_its_own(testbed: Site) -> None:
    accounts = Accounts(testbed.database, "per-slice")
    first = accounts.login_for(ALICE, DEMO)
    testbed.admin.remove("demo", "slice")
    testbed.admin.create_slice("demo", ["alice"])
    second = accounts.login_for(ALICE, DEMO)
    assert second != first, "the new tb.demo got the removed slice's account"
    assert first == derived_login(DEMO) and second == derived_login(DEMO, holder=1)


def test_a_registration_that_fails_retires_nothing(testbed: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """add_user undoes a failed registration (Records.remove): nobody held the name, so no login is retired."""
    monkeypatch.setattr(testbed.admin.records, "add", _failing_after(testbed.admin.records.add))
    with pytest.raises(OSError):
        testbed.admin.add_user("carol", pi=True)
    with testbed.database.read() as session:
        assert list(session.scalars(select(RetiredLogin))) == []
    assert testbed.admin.records.get("tb.carol") is None


def _failing_after(add: Any) -> Any:
    """Records.add that records the user, then fails on the next call (add_user's PI step)."""
    calls: list[int] = []

    def failing(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) > 1:
            raise OSError("the database went away")
        add(*args, **kwargs)

    return failing


def test_the_operator_is_told_which_login_is_retired(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``sfa-omf user remove`` (on the configured calendar, SQLite) says which login is retired."""
    from sfa_omf.cli import main

    report = init_directory(str(tmp_path / "tb"), "tb", ("alice",))
    settings = read_config(str(tmp_path / "tb" / "sfa-omf.conf"))
    database = Database(settings.calendar_url)
    try:
        database.upgrade()
        register_demo(report, database)
        login = Accounts(database).login_for(ALICE, DEMO)
        assert main(["user", "remove", "alice", "--config", str(tmp_path / "tb" / "sfa-omf.conf")]) == 0
        assert f"its local login {login} is retired" in capsys.readouterr().out
        assert Accounts(database).list() == []
    finally:
        database.dispose()


def migrate_database(database: Database, action: str, revision: str) -> None:
    """Alembic's ``upgrade`` or ``downgrade`` of the calendar's migrations to ``revision``."""
    from alembic import command
    from alembic.config import Config

    from sfa_omf.calendar.database import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with database.engine.begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)


def insert_authority_and_bob(connection: Connection) -> None:
    """Authority tb and its user bob as registry rows, in SQL (for a schema older than the models)."""
    for hrn, kind, urn in (("tb", "authority", "urn:publicid:IDN+tb+authority+sa"), ("tb.bob", "user", BOB)):
        connection.execute(
            text(
                "INSERT INTO registry_record (hrn, type, urn, gid, email, keys, researchers, pis, "
                "created_s) VALUES (:hrn, :kind, :urn, '', '', '[]', '[]', '[]', 0)"
            ),
            {"hrn": hrn, "kind": kind, "urn": urn},
        )


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migration_0019_adds_the_retired_logins_and_its_downgrade_drops_them(kind: str, tmp_path: Path) -> None:
    from sqlalchemy import inspect

    database = fresh_database(kind, tmp_path)

    def migrate(action: str, revision: str) -> None:
        migrate_database(database, action, revision)

    def tables() -> set[str]:
        with database.engine.connect() as connection:
            return set(inspect(connection).get_table_names())

    try:
        assert "retired_login" in tables()
        migrate("downgrade", "0018")
        assert "retired_login" not in tables() and "account_mapping" in tables()
        migrate("upgrade", "0019")
        assert "retired_login" in tables()
        with database.write() as session:
            session.add(RetiredLogin(urn=ALICE, login="alice_c4bdad", retired_s=0))
        assert Accounts(database).login_for(ALICE, DEMO) == "alice_c4bdad", "the removed holder's, read back"
    finally:
        database.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migration_0019_retires_the_logins_of_names_removed_before_it(kind: str, tmp_path: Path) -> None:
    """Before 0019 a Remove left the mapping behind: the upgrade retires the derived mappings of local users and
    slices that have no record any more; a recorded user's, a foreign user's and a pinned one stay."""
    database = fresh_database(kind, tmp_path)

    def migrate(action: str, revision: str) -> None:
        migrate_database(database, action, revision)

    removed_slice = "urn:publicid:IDN+tb+slice+old"
    site_user = "urn:publicid:IDN+tb:site2+user+erin"
    pinned = "urn:publicid:IDN+tb+user+dave"
    try:
        migrate("downgrade", "0018")
        with database.engine.begin() as connection:
            insert_authority_and_bob(connection)
            for urn, login, is_pinned in (
                (ALICE, "alice_c4bdad", False),  # removed before the upgrade
                (BOB, "bob_1", False),
                (FOREIGN_ALICE, "alice_f00000", False),
                (pinned, "dave", True),
                (removed_slice, "old_1", False),
                (site_user, "erin_1", False),  # of a sub-authority, removed
            ):
                connection.execute(
                    text("INSERT INTO account_mapping (urn, login, pinned) VALUES (:urn, :login, :pinned)"),
                    {"urn": urn, "login": login, "pinned": is_pinned},
                )
        migrate("upgrade", "0019")
        with database.engine.connect() as connection:
            mapped = dict(connection.execute(text("SELECT urn, login FROM account_mapping")).all())
            retired = dict(connection.execute(text("SELECT urn, login FROM retired_login")).all())
        assert mapped == {BOB: "bob_1", FOREIGN_ALICE: "alice_f00000", pinned: "dave"}
        assert retired == {ALICE: "alice_c4bdad", removed_slice: "old_1", site_user: "erin_1"}
        migrate("upgrade", "head")
        with database.write() as session:  # alice registered again: a login of her own
            session.add(RegistryRecord(hrn="tb.alice", type="user", urn=ALICE, gid="", created_s=0))
        assert Accounts(database).login_for(ALICE, DEMO) == derived_login(ALICE, holder=1)
    finally:
        database.dispose()


#: How long a mapping may take to finish or to wait for a removal's lock before the test fails rather than hangs:
#: generous, far beyond what a loaded machine needs (well under a second).
MAPPING_WAIT_BOUND_S = 60


def test_a_first_mapping_made_while_the_holder_is_removed_is_retired_with_them() -> None:
    """PostgreSQL runs writers in parallel: a first Provision of alice's while the registry removes her must not map
    a login that outlives the removal and goes to the next alice. The mapping waits for the removal, then resolves
    to the removed alice's retired login."""
    database = Database(empty_postgres())
    database.upgrade()
    watcher = create_engine(database.url)
    try:
        records = Records(database)
        records.add(Record("tb.alice", "user", ALICE, ""))
        answers: list[str] = []
        with database.write() as session:  # the registry's Remove, as Records.remove does it, not committed yet
            session.execute(delete(RegistryRecord).where(RegistryRecord.urn == ALICE))
            retired = retire_login(session, ALICE, 0)
            mapping = threading.Thread(target=lambda: answers.append(Accounts(database).login_for(ALICE, DEMO)))
            mapping.start()
            # Until the mapping is done, or waits for the removal's lock. Not a limit on how fast it gets there, only
            # a generous bound, so that a mapping waiting on something else is a failure rather than a hang (leaving
            # the block rolls the removal back, which lets the mapping go on).
            deadline = time.monotonic() + MAPPING_WAIT_BOUND_S
            while mapping.is_alive() and not _waits_for_an_advisory_lock(watcher):
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"the mapping neither finished nor waited for the removal's lock in {MAPPING_WAIT_BOUND_S} s"
                    )
                time.sleep(0.01)
        mapping.join(timeout=MAPPING_WAIT_BOUND_S)
        assert not mapping.is_alive(), "the mapping did not finish once the removal was committed"
        assert answers == [retired] and Accounts(database).list() == [], "a mapping outlived the removal"
        records.add(Record("tb.alice", "user", ALICE, ""))  # the next alice
        assert Accounts(database).login_for(ALICE, DEMO) == derived_login(ALICE, holder=1) != retired
    finally:
        watcher.dispose()
        database.dispose()


def _waits_for_an_advisory_lock(engine: Engine) -> bool:
    with engine.connect() as connection:
        waiting = connection.execute(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        ).scalar()
    return bool(waiting)
