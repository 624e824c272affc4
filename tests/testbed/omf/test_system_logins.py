"""A lease's account becomes a Unix account that user_factory creates or reaches, certifies (emailAddress
<login>@, which OMF's controllers trust) and closes at the slot's end: root, the account the aggregate signs FRCP as
and the system logins are refused with 400 BADARGS saying why, and nothing is written, neither by an operator's
POST /resources/leases (real HTTPS, SQLite and PostgreSQL) nor by ``node import --from-omf`` (book_lease), whose
user_factory (the stand-in over the real RabbitMQ) is never asked."""

from __future__ import annotations

import pwd
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.errors import BadArgs
from sfa_omf.registry.accounts import FIRST_USER_UID, SYSTEM_LOGINS
from sfa_omf.testbed.omf.inventory import system_login
from sfa_omf.testbed.omf.rest import omf_inventory
from sfa_omf.times import format_time
from tests.testbed.omf.omf_lab import Lab, Running, serve, slot_start
from tests.testbed.omf.test_rest import Site, call, later, lease_count, site  # noqa: F401  (site: the fixture)


def host_system_user() -> str:
    """A system user of this host (uid below 1000) that the built-in list does not name: Debian's postgres,
    rabbitmq or sshd are built in, but bind, uuidd or dnsmasq are not."""
    for entry in pwd.getpwall():
        if entry.pw_uid < FIRST_USER_UID and entry.pw_name not in SYSTEM_LOGINS and entry.pw_name.isalpha():
            return entry.pw_name.lower()
    return ""


def body(account: dict[str, str], hours: int) -> dict[str, Any]:
    window = later(hours)
    return {
        "name": "ops",
        "valid_from": window[0],
        "valid_until": window[1],
        "account_attributes": account,
        "components": [{"name": "node2"}],
    }


@pytest.mark.parametrize(
    ("account", "words"),
    [
        ({"name": "root"}, "'root' (slice urn:publicid:IDN+lab+slice+root) is the account this aggregate signs FRCP"),
        ({"name": "ROOT"}, "'root' (slice urn:publicid:IDN+lab+slice+ROOT) is the account this aggregate signs FRCP"),
        ({"urn": "urn:publicid:IDN+lab+slice+root"}, "'root' (slice urn:publicid:IDN+lab+slice+root) is the account"),
        ({"name": "daemon"}, "'daemon' (slice urn:publicid:IDN+lab+slice+daemon) is a system login"),
        ({"name": "lab.nobody"}, "'nobody' (slice urn:publicid:IDN+lab+slice+nobody) is a system login"),
    ],
)
def test_a_system_login_as_a_leases_account_is_refused_and_nothing_written(
    site: Site,  # noqa: F811
    account: dict[str, str],
    words: str,
) -> None:
    before = lease_count(site)
    status, answer = call(site, site.bob, "POST", "/resources/leases", body(account, 50))
    assert status == 400, answer
    assert answer["exception"]["geni_code"] == 1  # BADARGS
    assert words in answer["exception"]["reason"]
    assert "nothing was booked: name an account of the lease's own" in answer["exception"]["reason"]
    assert lease_count(site) == before
    login = words.split("'")[1]
    shown = call(site, site.bob, "GET", f"/resources/accounts?name={login}")
    assert shown[0] == 404 or shown[1]["resource_response"].get("resources") == []


def test_a_system_user_of_this_host_is_refused(site: Site) -> None:  # noqa: F811
    login = host_system_user()
    if not login:
        pytest.skip("this host has no system user outside the built-in list (uid below 1000)")
    uid = pwd.getpwnam(login).pw_uid
    before = lease_count(site)
    status, answer = call(site, site.bob, "POST", "/resources/leases", body({"name": login}, 52))
    assert status == 400, answer
    assert (
        f"'{login}' (slice urn:publicid:IDN+lab+slice+{login}) is a system user of this host (uid {uid})"
        in (answer["exception"]["reason"])
    )
    assert lease_count(site) == before


def test_a_persons_login_is_accepted(site: Site) -> None:  # noqa: F811
    status, answer = call(site, site.bob, "POST", "/resources/leases", body({"name": "maintenance"}, 54))
    assert status == 200, answer
    assert answer["resource_response"]["resource"]["account"]["name"] == "maintenance"


def test_the_rules_of_a_system_login() -> None:
    assert system_login("root", "broker") == "a system login"
    assert system_login("broker", "broker").startswith("the account this aggregate signs FRCP messages as")
    assert system_login("ann_1a2b3c", "root") == ""


@pytest.fixture
def running_broker_account(running_reactor: Any, lab: Lab, tmp_path: Path, rabbitmq_url: str) -> Iterator[Running]:
    """The lab's aggregate with user_factory's stand-in, signing FRCP as the account "omfbroker"."""
    yield from serve(running_reactor, lab, tmp_path, rabbitmq_url, frcp_account="omfbroker")


@pytest.mark.parametrize("name", ["omfbroker", "root"])
def test_the_import_path_refuses_them_before_user_factory_is_asked(running_broker_account: Running, name: str) -> None:
    running = running_broker_account
    inventory = omf_inventory(running.aggregate, "https://broker")
    start = slot_start()
    lease = {
        "name": "imported",
        "valid_from": format_time(start),
        "valid_until": format_time(start + timedelta(hours=1)),
        "account_attributes": {"name": name},
        "components": [{"name": "node2"}],
    }
    with pytest.raises(BadArgs) as refused:
        inventory.book_lease(lease)
    assert f"the lease's account {name!r}" in refused.value.message
    with pytest.raises(BadArgs):
        inventory.has_lease(lease)  # what the import asks first: refused the same way
    assert running.aggregate.bookings.leases() == []
    assert running.standin.handled == []
    assert not (running.root / "home" / name).exists()
    # The same lease for a person's login reaches user_factory: the test would see a system login reach it.
    inventory.book_lease({**lease, "account_attributes": {"name": "maintenance"}})
    assert (running.root / "home" / "maintenance").is_dir()
    assert [message.props.get("username") for message in running.standin.handled][:1] == ["maintenance"]
