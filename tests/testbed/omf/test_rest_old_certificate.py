"""The REST inventory believes a user certificate of this testbed's authority only with the key its registry holds
for that user now, as the AM API and the web calendar do (am/caller_keys.py): the certificate of a user the registry
removed (valid for years, never revoked), or of an earlier holder of a name registered again, is refused with 403,
admins too, and shows nothing of the name's next holder; the new holder, the current admins and users read as
before. Over real HTTPS with client certificates on the aggregate's own TLS server (type = omf), on SQLite."""

from __future__ import annotations

import http.client
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import func, select
from twisted.internet.threads import blockingCallFromThread

import sfa_omf.registry.records as records_module
from sfa_omf.calendar.models import AccountMapping, Lease, Slice
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.config import read_config
from sfa_omf.registry.admin import RegistryAdmin
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.registry.records import Records, record_chain
from sfa_omf.server.app import build_aggregate, start_aggregate
from sfa_omf.testbed.omf.accounts import AccountCertificates
from sfa_omf.trust.gid import chain_pem
from tests.calendar.conftest import fresh_database
from tests.testbed.omf.test_rest import Identity, later, rspec
from tests.tls_harness import client_context, proxy

N1 = "urn:publicid:IDN+lab+node+node1"
ADMINS = "urn:publicid:IDN+lab+user+dana urn:publicid:IDN+lab+user+fay"  # [sfa_web] admins


@dataclass
class Site:
    port: int
    directory: Path
    settings: Any
    aggregate: Any
    sfi: dict[str, str]  # user name -> sfi.py directory

    def identity(self, name: str, sfi: str | Path | None = None) -> Identity:
        """``name``'s certificate and key, from their sfi.py directory (or ``sfi``, a copy kept elsewhere)."""
        folder = Path(sfi if sfi is not None else self.sfi[name])
        return Identity(str(folder / f"lab.{name}.user.gid"), str(folder / f"lab.{name}.pkey"))

    def admin(self) -> RegistryAdmin:
        return RegistryAdmin(
            LocalAuthority.load(str(self.directory), "lab"), Records(self.aggregate.database), self.settings
        )


@pytest.fixture(scope="module")
def site(running_reactor: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The whole aggregate (type = omf) with users ann, bob, carl, dana and fay (dana and fay web admins)."""
    directory = tmp_path_factory.mktemp("omf") / "lab"
    calendar = fresh_database("sqlite", tmp_path_factory.mktemp("calendar"))
    url = calendar.engine.url.render_as_string(hide_password=False)
    calendar.dispose()
    report = init_directory(str(directory), "lab", ("ann", "bob", "carl", "dana", "fay"))
    settings = replace(
        read_config(str(directory / "sfa-omf.conf")), aggregate_type="omf", database_url=url, web_admins=ADMINS
    )
    aggregate = build_aggregate(settings)
    aggregate.inventory.add_node(NodeSpec(N1, "node1"))
    Records(aggregate.database).import_authority(LocalAuthority.load(str(directory), "lab"))
    server = blockingCallFromThread(running_reactor, start_aggregate, settings, aggregate, 0)
    try:
        yield Site(server.port_number, directory, settings, aggregate, dict(report.sfi_dirs))
    finally:
        blockingCallFromThread(running_reactor, server.stop)
        aggregate.database.dispose()


def get(site: Site, who: Identity, path: str) -> tuple[int, Any]:
    """GET ``path`` with ``who``'s certificate: (status, JSON answer)."""
    connection = http.client.HTTPSConnection(
        "127.0.0.1", site.port, context=client_context(who.chain, who.key), timeout=60
    )
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


def resources(site: Site, who: Identity, path: str) -> list[dict[str, Any]]:
    status, answer = get(site, who, path)
    assert status == 200, answer
    return list(answer["resource_response"]["resources"])


def written(site: Site) -> tuple[int, ...]:
    """What a refused read must leave as it was: the leases, the slices and the account mappings, counted."""
    with site.aggregate.database.read() as session:
        return tuple(
            int(session.scalar(select(func.count()).select_from(table)) or 0)
            for table in (Lease, Slice, AccountMapping)
        )


def book(site: Site, user: str, slice_name: str, hours: int, label: str) -> str:
    """``user`` (registered now) books node1 in their new slice ``slice_name`` through the AM API, the lease named
    ``label``; the slice's URN."""
    site.admin().create_slice(slice_name, [user])
    records = Records(site.aggregate.database)
    authority = LocalAuthority.load(str(site.directory), "lab")
    credential = authority.credential(
        record_chain(records.get(f"lab.{user}")), record_chain(records.get(f"lab.{slice_name}"))
    )
    who = site.identity(user)
    slice_urn = f"urn:publicid:IDN+lab+slice+{slice_name}"
    request = rspec(N1, later(hours)).replace('"l"', f'"{label}"')
    allocated = proxy(f"https://127.0.0.1:{site.port}/", who.chain, who.key).Allocate(
        slice_urn, [credential], request, {"geni_users": [{"urn": f"urn:publicid:IDN+lab+user+{user}", "keys": []}]}
    )
    assert allocated["code"]["geni_code"] == 0, allocated
    return slice_urn


def kept(site: Site, name: str, tmp_path: Path) -> Identity:
    """A copy of ``name``'s sfi.py directory, as a laptop keeps ~/.sfi after the registry removes its user."""
    copy = tmp_path / f"old-{name}"
    shutil.copytree(site.sfi[name], copy)
    return site.identity(name, copy)


def assert_refused(site: Site, who: Identity, why: str, *hidden: str) -> None:
    """Every collection answers ``who`` 403 saying ``why`` and what to do, shows none of ``hidden``, writes nothing."""
    before = written(site)
    for collection in ("accounts", "leases", "nodes"):
        status, answer = get(site, who, f"/resources/{collection}")
        assert status == 403, answer
        assert answer["exception"]["geni_code"] == 3, answer
        reason = answer["exception"]["reason"]
        assert why in reason and "use the certificate your authority gives you now" in reason, reason
        assert not any(text in json.dumps(answer) for text in hidden), answer
    assert written(site) == before


def test_a_names_earlier_holders_certificate_reads_nothing_of_the_next_holders(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_ann = kept(site, "ann", tmp_path)
    site.admin().remove("ann", "user")
    # Removed: refused, with words a person can act on.
    assert_refused(site, old_ann, "(urn:publicid:IDN+lab+user+ann) is no longer registered here")

    # Another person is given the name and books a slice whose lease carries a private name.
    monkeypatch.setattr(records_module, "REGISTER_AGAIN_AFTER_S", 0)  # (the 60 s wait, skipped)
    new = site.admin().add_user("ann")
    site.sfi["ann"] = new.sfi_dir
    slice_urn = book(site, "ann", "secretproj", 5, "private-plan")
    assert_refused(site, old_ann, "is registered here with another certificate now", "secretproj", "private-plan")

    # The new holder reads their own account and lease name; a current admin reads them too.
    new_ann = site.identity("ann")
    assert [account["urn"] for account in resources(site, new_ann, "/resources/accounts")] == [slice_urn]
    names = {lease["name"] for lease in resources(site, new_ann, "/resources/leases")}
    assert "private-plan" in names
    fay = site.identity("fay")
    assert slice_urn in {account["urn"] for account in resources(site, fay, "/resources/accounts")}
    assert "private-plan" in {lease["name"] for lease in resources(site, fay, "/resources/leases")}


def test_a_removed_users_certificate_is_refused_and_current_users_read_as_before(site: Site, tmp_path: Path) -> None:
    bob_slice = book(site, "bob", "bobproj", 7, "bobs-plan")
    # (carl's certificate is not used before his removal: the key verdicts kept 10 s, caller_keys.py, would let it.)
    old_carl = kept(site, "carl", tmp_path)
    site.admin().remove("carl", "user")
    assert_refused(site, old_carl, "(urn:publicid:IDN+lab+user+carl) is no longer registered here", "bobs-plan")

    # bob, registered with the key he calls with: his own slice's account and lease name, no one else's.
    bob = site.identity("bob")
    assert [account["urn"] for account in resources(site, bob, "/resources/accounts")] == [bob_slice]
    leases = resources(site, bob, "/resources/leases")
    assert "bobs-plan" in {lease["name"] for lease in leases}
    assert all(lease["account"] is None for lease in leases if lease["name"] != "bobs-plan")


def test_a_removed_admins_certificate_reads_nothing(site: Site, tmp_path: Path) -> None:
    """dana is one of the web calendar's admins ([sfa_web] admins names her URN): removed, her certificate is
    refused as any removed user's, while fay, an admin still registered, reads everything."""
    book(site, "fay", "fayproj", 11, "fays-plan")
    old_dana = kept(site, "dana", tmp_path)  # (not used before her removal: no verdict kept for it)
    site.admin().remove("dana", "user")
    assert_refused(site, old_dana, "(urn:publicid:IDN+lab+user+dana) is no longer registered here", "fays-plan")
    fay = site.identity("fay")
    assert "fays-plan" in {lease["name"] for lease in resources(site, fay, "/resources/leases")}
    assert "urn:publicid:IDN+lab+slice+fayproj" in {
        account["urn"] for account in resources(site, fay, "/resources/accounts")
    }


def test_a_testbed_account_certificate_named_like_a_user_reads_as_no_user(site: Site, tmp_path: Path) -> None:
    """user_factory's account "bob" gets a certificate from the local authority for lab.bob, with a key the
    account's users can read (testbed/omf/accounts.py): not the key the registry holds for the user bob, who was never
    removed. It reads as a certificate of no user: the nodes and every lease's window, no account, no lease name."""
    slice_urn = book(site, "bob", "bobsown", 13, "bobs-own-plan")
    authority = LocalAuthority.load(str(site.directory), "lab")
    certificates = AccountCertificates(authority.key, authority.chain, "lab", "lab.example.org")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certificate = certificates.certificate("bob", key.public_key(), "urn:publicid:IDN+lab+user+bob")
    chain = tmp_path / "account.gid"
    chain.write_text(certificate.public_bytes(serialization.Encoding.PEM).decode() + chain_pem(authority.chain))
    key_file = tmp_path / "account.pkey"
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    account = Identity(str(chain), str(key_file))
    assert resources(site, account, "/resources/accounts") == []
    leases = resources(site, account, "/resources/leases")
    assert leases and all(lease["account"] is None for lease in leases)
    assert "bobs-own-plan" not in json.dumps(leases) and slice_urn not in json.dumps(leases)
    assert [node["name"] for node in resources(site, account, "/resources/nodes")] == ["node1"]
