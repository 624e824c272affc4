"""The SMTP password never crosses a network in clear: a login without TLS goes only to this machine's loopback,
otherwise the notifier refuses before it connects (the e-mails wait in the outbox, saying why) and ``config check``
names the fix; ``[sfa_notify] smtp_tls = yes`` speaks TLS from the first byte (SMTPS). Real SMTP servers (aiosmtpd)
on 127.0.0.1, offering AUTH without TLS as some relays do; nothing is ever connected elsewhere ("127.1" is a host
name the check takes as remote that the system resolves to 127.0.0.1)."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from sfa_omf.calendar.outbox import Outbox
from sfa_omf.cli import main
from sfa_omf.cli_common import config_warnings
from sfa_omf.config import is_loopback_host, load_config, smtp_credentials_problem
from sfa_omf.notify.channels import SmtpInsecure, SmtpSettings, send_email
from sfa_omf.notify.notifier import Notifier, NotifySettings
from tests.notify.conftest import ALICE, Booked, outbox_rows
from tests.ports import free_port
from tests.server_certificates import server_certificate

SECRET = "SMTP-pw-4f1c9e"


@dataclass
class Relay:
    """What a real SMTP server (aiosmtpd) saw: greetings (one per session), logins and messages, each with whether
    the session was encrypted."""

    greetings: list[str] = field(default_factory=list)
    logins: list[tuple[str, bytes, bytes, bool]] = field(default_factory=list)  # (mechanism, user, password, TLS)
    messages: list[tuple[bytes, bool]] = field(default_factory=list)

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]) -> Any:
        self.greetings.append(hostname)
        session.host_name = hostname  # (what aiosmtpd does itself without this hook)
        return responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.content, encrypted(server)))
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.logins.append((mechanism, data.login, data.password, encrypted(server)))
        return AuthResult(success=True)


def encrypted(server: Any) -> bool:
    """Whether the session's connection is TLS (from the first byte, or after STARTTLS)."""
    return server.transport.get_extra_info("ssl_object") is not None


def relay(**kwargs: Any) -> tuple[Relay, Controller]:
    """A started aiosmtpd on 127.0.0.1 offering AUTH (without TLS unless ``kwargs`` ask for it)."""
    seen = Relay()
    kwargs.setdefault("auth_require_tls", False)
    controller = Controller(seen, hostname="127.0.0.1", port=free_port(), authenticator=seen.authenticate, **kwargs)
    controller.start()
    return seen, controller


@pytest.fixture
def clear_relay() -> Iterator[tuple[Relay, int]]:
    seen, controller = relay()
    yield seen, controller.port
    controller.stop()


def settings(host: str, port: int, **kwargs: Any) -> SmtpSettings:
    kwargs.setdefault("timeout_s", 10)
    return SmtpSettings(host=host, port=port, user="mailer", password=SECRET, **kwargs)


# -- the decision --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.3.4.5", "::1", "[::1]", "localhost", "LocalHost.", "::ffff:127.0.0.1"]
)
def test_loopback_hosts_are_loopback(host: str) -> None:
    assert is_loopback_host(host)
    assert smtp_credentials_problem(host, "mailer", starttls=False, tls=False) == ""


@pytest.mark.parametrize("host", ["smtp.example.org", "10.0.0.25", "2001:db8::25", "127.1", "localhost.example.org"])
def test_a_login_in_clear_to_another_host_is_refused(host: str) -> None:
    assert not is_loopback_host(host)
    problem = smtp_credentials_problem(host, "mailer", starttls=False, tls=False)
    assert f"to {host} would send the password in clear" in problem, problem
    assert "smtp_starttls = yes" in problem and "smtp_tls = yes" in problem, problem
    # With TLS either way, or without a login, nothing is refused.
    assert smtp_credentials_problem(host, "mailer", starttls=True, tls=False) == ""
    assert smtp_credentials_problem(host, "mailer", starttls=False, tls=True) == ""
    assert smtp_credentials_problem(host, "", starttls=False, tls=False) == ""


# -- the sender ----------------------------------------------------------------------------------------------------


def test_the_sender_refuses_before_connecting(clear_relay: tuple[Relay, int]) -> None:
    """Before the fix the password went out as AUTH PLAIN to any relay offering AUTH without TLS: here "127.1" (a
    name the check takes for a remote host, which reaches the relay on 127.0.0.1) got the login and the message."""
    seen, port = clear_relay
    with pytest.raises(SmtpInsecure) as raised:
        send_email(settings("127.1", port), "ops@example.org", "k1", "subject", "text")
    assert "smtp_starttls = yes" in str(raised.value) and SECRET not in str(raised.value)
    assert (seen.greetings, seen.logins, seen.messages) == ([], [], [])  # no session at all


def test_a_login_without_tls_to_this_machine_is_sent(clear_relay: tuple[Relay, int]) -> None:
    """To 127.0.0.1 the password never leaves the machine: a local relay without TLS keeps working."""
    seen, port = clear_relay
    send_email(settings("127.0.0.1", port), "ops@example.org", "k1", "subject", "text")
    assert [(user, password) for _, user, password, _ in seen.logins] == [(b"mailer", SECRET.encode())]
    assert len(seen.messages) == 1


@pytest.fixture
def server_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A server TLS context for the name localhost, whose CA the client's default context trusts."""
    ca, chain, key = server_certificate(tmp_path, "localhost")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(chain), str(key))
    return context


def test_smtp_tls_speaks_tls_from_the_first_byte(server_tls: ssl.SSLContext) -> None:
    """smtp_tls = yes (SMTPS, as on port 465): the server's certificate is verified and the login goes inside TLS.
    (aiosmtpd offers AUTH on such a session only when told TLS is not required: it knows only of STARTTLS.)"""
    seen, controller = relay(ssl_context=server_tls)
    try:
        send_email(settings("localhost", controller.port, tls=True), "ops@example.org", "k1", "subject", "text")
    finally:
        controller.stop()
    assert seen.logins == [("PLAIN", b"mailer", SECRET.encode(), True)]
    assert [encrypted for _, encrypted in seen.messages] == [True]


def test_starttls_carries_the_login(server_tls: ssl.SSLContext) -> None:
    seen, controller = relay(tls_context=server_tls, require_starttls=True, auth_require_tls=True)
    try:
        send_email(settings("localhost", controller.port, starttls=True), "ops@example.org", "k1", "subject", "text")
    finally:
        controller.stop()
    assert seen.logins == [("PLAIN", b"mailer", SECRET.encode(), True)]
    assert [encrypted for _, encrypted in seen.messages] == [True]


# -- the notifier keeps the messages -------------------------------------------------------------------------------


def test_the_outbox_keeps_the_mails_and_says_why(booked: Booked, clear_relay: tuple[Relay, int]) -> None:
    """Refused for the configuration, the e-mail stays pending with the reason; once the operator fixes it, it goes."""
    seen, port = clear_relay
    Outbox(booked.database).subscribe(ALICE, "email", "alice@example.org")
    insecure = Notifier(
        booked.database, NotifySettings(smtp=settings("127.1", port, timeout_s=5)), lambda: booked.clock[0]
    )
    assert insecure.notice() >= 1
    assert insecure.deliver() == 0
    rows = outbox_rows(booked)
    assert rows and {state for _, state, _ in rows} == {"pending"}
    errors = [error for _, _, error in rows if error]
    assert errors and all("would send the password in clear" in error for error in errors), errors
    assert all(SECRET not in (error or "") for _, _, error in rows)
    assert (seen.greetings, seen.logins, seen.messages) == ([], [], [])
    # The relay is on this machine after all: the same messages go once the settings say so.
    booked.clock[0] += timedelta(hours=2)
    fixed = Notifier(booked.database, NotifySettings(smtp=settings("127.0.0.1", port)), lambda: booked.clock[0])
    assert fixed.deliver() == len(rows)
    assert len(seen.messages) == len(rows)


# -- the configuration ---------------------------------------------------------------------------------------------


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands read os.environ: without the SFA_* settings of the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("SFA_") and not name.startswith("SFA_OMF_TEST_"):
            monkeypatch.delenv(name)


def site(tmp_path: Path, *notify: str) -> str:
    path = tmp_path / "sfa-omf.conf"
    path.write_text(
        "\n".join(["[sfa]", "interface_hrn = testbed", f"data_dir = {tmp_path}", "[sfa_notify]", *notify]) + "\n"
    )
    return str(path)


@pytest.mark.usefixtures("clean_environment")
def test_config_check_names_a_password_that_would_go_in_clear(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before the fix: "no problems"."""
    login = ("smtp_user = mailer", f"smtp_password = {SECRET}")
    path = site(tmp_path, "smtp_host = smtp.example.org", *login)
    assert main(["config", "check", "--settings-only", path]) == 1
    out = capsys.readouterr().out
    assert SECRET not in out
    (problem,) = [line for line in out.splitlines() if line.startswith("problem:")]
    assert problem.startswith(f"problem: {path}:6: [sfa_notify] the SMTP login (smtp_user 'mailer') to smtp.example")
    assert "set [sfa_notify] smtp_starttls = yes (STARTTLS), or smtp_tls = yes" in problem, problem
    # What the server logs at its start (and every command warns of): the same line.
    assert any("would send the password in clear" in line for line in config_warnings(load_config(path)))
    for fixed in (
        ("smtp_host = smtp.example.org", "smtp_starttls = yes", *login),
        ("smtp_host = smtp.example.org", "smtp_tls = yes", *login),
        ("smtp_host = 127.0.0.1", *login),
        ("smtp_host = smtp.example.org",),  # no login: nothing to protect
    ):
        path = site(tmp_path, *fixed)
        assert main(["config", "check", "--settings-only", path]) == 0, capsys.readouterr().out
        capsys.readouterr()


@pytest.mark.usefixtures("clean_environment")
def test_smtp_tls_defaults_to_port_465_and_excludes_starttls(tmp_path: Path) -> None:
    loaded = load_config(site(tmp_path, "smtp_tls = yes"), environ={})
    assert (loaded.settings.notify_smtp_tls, loaded.settings.notify_smtp_port) == (True, 465)
    assert loaded.problems == ()
    explicit = load_config(site(tmp_path, "smtp_tls = yes", "smtp_port = 2465"), environ={})
    assert explicit.settings.notify_smtp_port == 2465
    both = load_config(site(tmp_path, "smtp_tls = yes", "smtp_starttls = yes"), environ={})
    assert [(problem.kind, "both yes" in problem.message) for problem in both.problems] == [("invalid", True)]


def test_the_server_passes_smtp_tls_to_the_notifier(tmp_path: Path) -> None:
    """The server's and `notify test`'s settings (server/app.py notify_settings_of) carry smtp_tls."""
    from sfa_omf.server.app import notify_settings_of

    loaded = load_config(site(tmp_path, "smtp_tls = yes", "smtp_user = mailer"), environ={})
    assert notify_settings_of(loaded.settings).smtp.tls is True
    assert notify_settings_of(loaded.settings).smtp.port == 465
