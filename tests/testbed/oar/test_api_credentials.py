"""OAR's API with a user and password in ``[sfa_oar] api_url`` (``https://user:password@host/oarapi``, as an apache or a
proxy asking for HTTP Basic authentication wants): sent as an ``Authorization: Basic`` header, percent-decoded, never
as part of the host name (before the fix urllib took ``user:password@127.0.0.1`` for the host and no call worked),
never on to where a redirect points, and never over plain http:// to another machine.

The real OAR 2.5.9 (scripts/oar.sh) does not ask for authentication: the header is checked by a stand-in for an
authenticating proxy in front of it (a small http.server on 127.0.0.1 that checks the header and forwards to the real
OAR), since no such proxy is installed here. Nothing connects anywhere but 127.0.0.1."""

from __future__ import annotations

import base64
import os
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sfa_omf.cli import main
from sfa_omf.config import load_config, read_config
from sfa_omf.testbed.oar.client import OarClient, OarUnavailable

SECRET = "oar-pw-7d2e41"
# As written in the URL (percent-encoded, RFC 3986) and as the header carries them (decoded).
USER_IN_URL, PASSWORD_IN_URL = "sfa%40ops", f"{SECRET}%3A%2F%40"
USER, PASSWORD = "sfa@ops", f"{SECRET}:/@"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def with_credentials(url: str, user: str = USER_IN_URL, password: str = PASSWORD_IN_URL) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.netloc}"))


def test_credentials_in_the_url_work_against_the_real_oar(oar_url: str) -> None:
    """Before the fix: OarUnavailable ("cannot reach OAR's API ..."), urllib reading the user part as the host."""
    client = OarClient(with_credentials(oar_url), timeout_s=30)
    assert client.version()["oar_version"].startswith("2.5")
    assert client.resources(full=False)
    assert SECRET not in client.base_url and SECRET not in client.shown_url


@dataclass
class StandInAuthenticatingProxy:
    """A stand-in for an authenticating proxy (no such proxy is installed here): on 127.0.0.1, it answers 401 unless
    the request carries ``Authorization: Basic`` with the expected user and password, and forwards the others to
    the real OAR; ``redirect_to`` set, it answers every request with a 307 there instead. Records each request's
    Authorization header (None when absent)."""

    oar_url: str
    redirect_to: str = ""
    seen: list[str | None] = field(default_factory=list)
    url: str = ""

    def handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                authorization = self.headers.get("Authorization")
                proxy.seen.append(authorization)
                if proxy.redirect_to:
                    self.send_response(307)
                    self.send_header("Location", proxy.redirect_to + self.path.removeprefix("/oarapi"))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if authorization != BASIC:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="oar"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                forwarded = urllib.request.Request(proxy.oar_url + self.path.removeprefix("/oarapi"))
                forwarded.add_header("Accept", "application/json")
                with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(forwarded, timeout=60) as answer:
                    body = answer.read()
                    status, kind = answer.status, answer.headers.get("Content-Type", "application/json")
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


Start = Callable[[StandInAuthenticatingProxy], StandInAuthenticatingProxy]


@pytest.fixture
def start_proxy() -> Iterator[Start]:
    """Serves stand-in authenticating proxies on 127.0.0.1 (stopped at the test's end)."""
    servers: list[ThreadingHTTPServer] = []

    def start(proxy: StandInAuthenticatingProxy) -> StandInAuthenticatingProxy:
        server = ThreadingHTTPServer(("127.0.0.1", 0), proxy.handler())
        threading.Thread(target=server.serve_forever, daemon=True).start()
        proxy.url = f"http://127.0.0.1:{server.server_address[1]}/oarapi"
        servers.append(server)
        return proxy

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_the_authorization_header_reaches_an_authenticating_proxy(oar_url: str, start_proxy: Start) -> None:
    proxy = start_proxy(StandInAuthenticatingProxy(oar_url))
    client = OarClient(with_credentials(proxy.url), timeout_s=30)
    assert client.version()["oar_version"].startswith("2.5")
    assert client.resources(full=False)
    assert proxy.seen and set(proxy.seen) == {BASIC}
    # Without the user part the proxy refuses: the header is what let the calls through.
    with pytest.raises(OarUnavailable, match="HTTP 401"):
        OarClient(proxy.url, timeout_s=30).version()


def test_the_password_does_not_follow_a_redirect(oar_url: str, start_proxy: Start) -> None:
    """urllib copies a request's headers to where a redirect points (another host, or http://): not this one."""
    elsewhere = start_proxy(StandInAuthenticatingProxy(oar_url))
    redirecting = start_proxy(StandInAuthenticatingProxy(oar_url, redirect_to=elsewhere.url))
    with pytest.raises(OarUnavailable, match="HTTP 401"):
        OarClient(with_credentials(redirecting.url), timeout_s=30).version()
    assert redirecting.seen == [BASIC]
    assert elsewhere.seen == [None]


@pytest.mark.parametrize("host", ["oar.example.org", "10.0.0.8", "[2001:db8::8]", "127.1"])
def test_credentials_over_http_to_another_host_are_refused(host: str) -> None:
    """Refused when the client is made, before any connection: the password would cross the network in clear."""
    with pytest.raises(ValueError) as refused:
        OarClient(f"http://oar:{SECRET}@{host}:6668/oarapi")
    message = str(refused.value)
    assert SECRET not in message and "oar:***@" in message, message
    assert "in clear over http://: use https://" in message, message
    # https://, or no user part, or this machine's loopback: made (nothing is connected by making a client).
    OarClient(f"https://oar:{SECRET}@{host}:6668/oarapi")
    OarClient(f"http://{host}:6668/oarapi")
    OarClient(f"http://oar:{SECRET}@localhost:6668/oarapi")


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands read os.environ: without the SFA_* settings of the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("SFA_") and not name.startswith("SFA_OMF_TEST_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_environment")
def test_config_check_refuses_credentials_over_http_to_another_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sfa-omf.conf"
    lines = ["[sfa]", "interface_hrn = testbed", f"data_dir = {tmp_path}", "[sfa_aggregate]", "type = oar", "[sfa_oar]"]
    path.write_text("\n".join([*lines, f"api_url = http://oar:{SECRET}@oar.example.org/oarapi"]) + "\n")
    assert main(["config", "check", "--settings-only", str(path)]) == 1
    out = capsys.readouterr().out
    assert SECRET not in out
    (problem,) = [line for line in out.splitlines() if line.startswith("problem:")]
    assert problem == (
        f"problem: {path}:7: [sfa_oar] api_url 'http://oar:***@oar.example.org/oarapi' holds a user and password, "
        "which would cross the network to oar.example.org in clear over http://: use https:// (OAR's apache with "
        "TLS, or a TLS proxy in front of it), or reach the API on this machine (127.0.0.1)"
    )
    with pytest.raises(ValueError, match="in clear over http://"):  # the server would not start on it either
        read_config(str(path), environ={})
    for fine in (f"https://oar:{SECRET}@oar.example.org/oarapi", f"http://oar:{SECRET}@127.0.0.1:6668/oarapi"):
        path.write_text("\n".join([*lines, f"api_url = {fine}"]) + "\n")
        assert load_config(str(path), environ={}).problems == ()
