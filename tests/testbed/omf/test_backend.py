"""The OMF backend's Provision and geni_update_users through user_factory, end to end: the AM API over real TLS,
FRCP over the real RabbitMQ (SFA_OMF_TEST_RABBITMQ_URL), and the user_factory stand-in (a conformance fixture for
the Ruby controller) doing the account work in a throwaway directory. A controller that refuses, does not answer,
or a broker that is down answers a clear GENI error and leaves the booking allocated; the retry works."""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from sfa_omf.calendar.records import LeaseRecord
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.testbed.unix_accounts import LocalAccount
from sfa_omf.times import utcnow
from tests.sshkeys import ssh_key
from tests.testbed.omf.omf_lab import ANN, SLICE, Lab, Running, allocation_states, rspec, serve, users

LEASE = LeaseRecord("lease-1", SLICE, ANN, utcnow(), utcnow() + timedelta(hours=1), "allocated", ())


def test_provision_creates_the_account_with_its_certificate_and_keys(running: Running, lab: Lab) -> None:
    assert running.am.Allocate(SLICE, [lab.slice_cred], rspec(), {})["code"]["geni_code"] == 0
    answer = running.am.Provision([SLICE], [lab.slice_cred], users(ssh_key("ann@laptop")))
    assert answer["code"]["geni_code"] == 0, answer["output"]
    login = running.aggregate.accounts.login_for(ANN, SLICE)
    home = running.root / "home" / login
    assert (home / ".ssh" / "authorized_keys").read_text() == f"{ssh_key('ann@laptop')}\n"
    certificate = x509.load_pem_x509_certificate((home / ".omf" / "user_cert.pem").read_bytes())
    # The controllers read the account name from emailAddress; the local authority signed it, for the key
    # user_factory made.
    email = certificate.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)[0].value
    assert email == f"{login}@{lab.settings.hostname}"
    authority = LocalAuthority.load(str(lab.directory), "lab")
    certificate.verify_directly_issued_by(authority.chain[0].certificate)
    public = (home / ".ssh" / "id_rsa.pub").read_text().split()[1]
    ours = certificate.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    assert ours.decode().split()[1] == public
    assert [message.op for message in running.standin.handled] == ["create", "configure", "configure", "release"]
    # Signed with the aggregate's key under a certificate of the local authority naming the account "root".
    assert running.standin.signers == ["root"] * 4

    # geni_update_users: the complete new set of keys replaces the old one on the testbed.
    update = running.am.PerformOperationalAction(
        [SLICE], [lab.slice_cred], "geni_update_users", users(ssh_key("ann@desk"))
    )
    assert update["code"]["geni_code"] == 0, update["output"]
    assert (home / ".ssh" / "authorized_keys").read_text() == f"{ssh_key('ann@desk')}\n"


def test_a_controller_refusal_is_an_error_with_its_words_and_the_booking_stays(running: Running, lab: Lab) -> None:
    assert running.am.Allocate(SLICE, [lab.slice_cred], rspec(), {})["code"]["geni_code"] == 0
    running.standin.fail_with = "useradd: cannot lock /etc/passwd; try again later"
    answer = running.am.Provision([SLICE], [lab.slice_cred], users(ssh_key("ann@laptop")))
    assert answer["code"]["geni_code"] == 2
    assert "user_factory refused to create the accounts: useradd: cannot lock /etc/passwd" in answer["output"]
    assert allocation_states(running, lab) == ["geni_allocated"]
    running.standin.fail_with = ""
    assert running.am.Provision([SLICE], [lab.slice_cred], users(ssh_key("ann@laptop")))["code"]["geni_code"] == 0
    assert allocation_states(running, lab) == ["geni_provisioned"]


def test_a_controller_that_does_not_answer_is_timedout(
    running_reactor: Any, lab: Lab, tmp_path: Path, rabbitmq_url: str
) -> None:
    for running in serve(running_reactor, lab, tmp_path, rabbitmq_url, frcp_timeout_s=1):
        running.standin.stop()  # the broker is up, nobody serves user_factory's topic
        assert running.am.Allocate(SLICE, [lab.slice_cred], rspec(), {})["code"]["geni_code"] == 0
        answer = running.am.Provision([SLICE], [lab.slice_cred], users(ssh_key("ann@laptop")))
        assert answer["code"]["geni_code"] == 8
        assert "did not answer in time to create the accounts" in answer["output"]
        assert allocation_states(running, lab) == ["geni_allocated"]


def test_a_broker_that_is_down_is_unavailable(
    running_reactor: Any, lab: Lab, tmp_path: Path, rabbitmq_url: str
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = f"amqp://u:secret@127.0.0.1:{port}/%2F"
    for running in serve(running_reactor, lab, tmp_path, rabbitmq_url, frcp_amqp_url=down):
        assert running.am.Allocate(SLICE, [lab.slice_cred], rspec(), {})["code"]["geni_code"] == 0
        answer = running.am.Provision([SLICE], [lab.slice_cred], users(ssh_key("ann@laptop")))
        assert answer["code"]["geni_code"] == 11
        assert f"127.0.0.1:{port} cannot be reached" in answer["output"] and "secret" not in answer["output"]
        assert allocation_states(running, lab) == ["geni_allocated"]


def test_an_owner_without_keys_is_created_and_keeps_its_keys(running: Running) -> None:
    """An operator's lease (POST /resources/leases) provisions for an account no keys were sent for: it is created
    with its certificate, and its authorized_keys is left alone (auth_keys [] would empty it)."""
    backend = running.aggregate.backend
    backend.update_users(LEASE, [LocalAccount("carol", (), (ssh_key("carol@home"),))])
    home = running.root / "home" / "carol"
    assert (home / ".ssh" / "authorized_keys").read_text() == f"{ssh_key('carol@home')}\n"
    backend.provision(LEASE, "carol", ())
    assert (home / ".ssh" / "authorized_keys").read_text() == f"{ssh_key('carol@home')}\n"
    assert (home / ".omf" / "user_cert.pem").exists()
    assert [message.op for message in running.standin.handled][-3:] == ["create", "configure", "release"]
    assert "cert" in running.standin.handled[-2].props
