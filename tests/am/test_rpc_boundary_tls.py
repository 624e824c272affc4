"""The AM's XML-RPC boundary over real TLS, served as ``sfa-omf serve`` serves it (start_aggregate, the web calendar
on, so TLS lets clients without a certificate in) on PostgreSQL: a method name that is no name is refused before any
work, shown only as a short repr in the answer and in the log (no forged log line, no megabyte echo); a caller
without a client certificate gets an envelope, as every AM refusal; HTTP methods other than POST are 405; and the
geni_rspec_version's type and version are bounded."""

from __future__ import annotations

import dataclasses
import http.client
import logging
import xmlrpc.client
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest
from sqlalchemy import inspect, text
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.am.aggregate import Aggregate
from sfa_omf.calendar.database import Database
from sfa_omf.calendar.records import NodeSpec
from sfa_omf.config import read_config
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.server.app import build_aggregate, start_aggregate
from sfa_omf.times import format_time, utcnow
from tests.postgres import empty_postgres
from tests.tls_harness import client_context

SLICE = "urn:publicid:IDN+lab+slice+demo"
NODE = "urn:publicid:IDN+lab+node+n1"
#: A method name forging a log line of another user's successful Delete, were it logged raw.
FORGING = "X\n2026-12-02 10:00:00,000 INFO sfa_omf.am Delete caller=urn:publicid:IDN+lab+user+ben slice=x geni_code=0"


@dataclass
class ServedAm:
    host: str
    port: int
    aggregate: Aggregate
    sfi: Path  # ann's sfi directory

    def send(
        self, body: bytes, path: str = "/", with_certificate: bool = True, method: str = "POST"
    ) -> tuple[int, str | None, bytes]:
        """(status, Allow header, body) of an HTTPS request, with ann's certificate or none."""
        files = (str(self.sfi / "lab.ann.user.gid"), str(self.sfi / "lab.ann.pkey")) if with_certificate else None
        context = client_context(*(files or (None, None)))
        connection = http.client.HTTPSConnection(self.host, self.port, context=context, timeout=30)
        try:
            connection.request(method, path, body=body, headers={"Content-Type": "text/xml"})
            response = connection.getresponse()
            return response.status, response.getheader("allow"), response.read()
        finally:
            connection.close()

    def call(self, method: str, params: tuple[Any, ...], path: str = "/", with_certificate: bool = True) -> Any:
        """The answer of a call sent as XML-RPC, ``method`` written into <methodName> as it is (escaped for XML)."""
        body = xmlrpc.client.dumps(params, "PLACEHOLDER", allow_none=True)
        body = body.replace("<methodName>PLACEHOLDER</methodName>", f"<methodName>{escape(method)}</methodName>")
        status, _, answer = self.send(body.encode("utf-8"), path, with_certificate)
        assert status == 200
        return xmlrpc.client.loads(answer)[0][0]

    def credentials(self) -> list[dict[str, str]]:
        slice_cred = (self.sfi / "lab.ann-lab.demo.slice.cred").read_text()
        return [{"geni_type": "geni_sfa", "geni_version": "3", "geni_value": slice_cred}]


@pytest.fixture
def served_am(running_reactor: Any, tmp_path: Path) -> Iterator[ServedAm]:
    report = init_directory(str(tmp_path / "lab"), "lab", ("ann",))
    settings = dataclasses.replace(read_config(str(tmp_path / "lab" / "sfa-omf.conf")), database_url=empty_postgres())
    assert settings.web_enabled  # so TLS lets a client without a certificate in, as browsers are
    aggregate = build_aggregate(settings)
    aggregate.inventory.add_node(NodeSpec(NODE, "n1", hardware_type="icarus"))
    server = blockingCallFromThread(running_reactor, start_aggregate, settings, aggregate, 0)
    try:
        yield ServedAm("127.0.0.1", server.port_number, aggregate, Path(report.sfi_dirs["ann"]))
    finally:
        blockingCallFromThread(running_reactor, server.stop)
        aggregate.database.dispose()


def every_row(database: Database) -> dict[str, list[str]]:
    """Every row of every table, as text: what a refused call must leave as it was. (Not the leadership term, which
    the server's leadership begins on its own once it leads, whenever that is.)"""
    with database.engine.connect() as connection:
        return {
            table: sorted(str(row) for row in connection.execute(text(f'SELECT * FROM "{table}"')))
            for table in inspect(connection).get_table_names()
            if table != "leadership_term"
        }


def allocate_params(served: ServedAm, options: dict[str, Any] | None = None) -> tuple[Any, ...]:
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    rspec = (
        '<rspec type="request" xmlns="http://www.geni.net/resources/rspec/3" '
        'xmlns:ol="http://nitlab.inf.uth.gr/schema/sfa/rspec/1">'
        f'<ol:lease client_id="l" valid_from="{format_time(start)}" '
        f'valid_until="{format_time(start + timedelta(hours=1))}"/>'
        f'<node client_id="n1" component_id="{NODE}" exclusive="true"><ol:lease_ref id_ref="l"/></node></rspec>'
    )
    return (SLICE, served.credentials(), rspec, options or {})


def call_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "sfa_omf.am"]


@pytest.mark.parametrize("path", ["/", "/am2"])
def test_a_method_name_that_is_no_name_is_refused_short_and_never_logged_raw(
    served_am: ServedAm, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    caplog.set_level(logging.INFO, logger="sfa_omf")
    before = every_row(served_am.aggregate.database)
    for method in (FORGING, "Allocate\n", "A" * 2_000_000, "Allocate" + "x" * 60):
        answer = served_am.call(method, allocate_params(served_am), path)
        assert answer["code"]["geni_code"] == 13, answer  # as an unknown method: UNSUPPORTED, in the envelope
        assert "is not a method: a method name has at most 64 letters, digits" in answer["output"]
        assert len(answer["output"]) < 300, "the name is shown cut, not echoed whole"
    assert "'X\\n2026-12-02 10:00:00,000 INFO" in served_am.call(FORGING, (), path)["output"]  # escaped, not raw
    assert every_row(served_am.aggregate.database) == before  # nothing booked, nothing written
    lines = call_lines(caplog)
    assert len(lines) == 5 and all("\n" not in line and len(line) < 900 for line in lines), lines
    assert lines[0].startswith("'X\\n2026-12-02") and "caller=urn:publicid:IDN+lab+user+ann" in lines[0]
    # A valid name unknown here is still the endpoint's own refusal, listing its methods.
    assert "is not an AM API" in served_am.call("Allocate_x.y", (), path)["output"]


def test_a_caller_without_a_certificate_gets_an_envelope_and_nothing_is_written(
    served_am: ServedAm, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sfa_omf")
    before = every_row(served_am.aggregate.database)
    for path in ("/", "/am2"):
        answer = served_am.call("Allocate", allocate_params(served_am), path, with_certificate=False)
        assert answer["code"]["geni_code"] == 3 and answer["value"] == "", answer  # FORBIDDEN, as omni reads it
        assert "no client certificate" in answer["output"] and "sfi.py and omni" in answer["output"]
    assert every_row(served_am.aggregate.database) == before
    assert [line.split(" ms=")[0] for line in call_lines(caplog)] == ["Allocate caller=- slice=- geni_code=3"] * 2
    assert served_am.call("GetVersion", ())["code"]["geni_code"] == 0  # with a certificate: served


def test_a_refused_call_s_log_line_says_why(served_am: ServedAm, caplog: pytest.LogCaptureFixture) -> None:
    """The code alone sends an operator the wrong way (3 is an untrusted caller and a call without a credential
    alike): each refused call's line names its reason and the message the caller got."""
    caplog.set_level(logging.INFO, logger="sfa_omf")
    user_cred = (served_am.sfi / "lab.ann.user.cred").read_text()
    as_user = [{"geni_type": "geni_sfa", "geni_version": "3", "geni_value": user_cred}]
    no_credential = served_am.call("ListResources", ([], {"geni_rspec_version": {"type": "GENI", "version": "3"}}))
    wrong_credential = served_am.call("Describe", ([SLICE], as_user, {}))
    no_certificate = served_am.call("GetVersion", (), with_certificate=False)
    lines = call_lines(caplog)
    assert len(lines) == 3, lines
    reasons = ("no_credential", "target_mismatch", "caller_untrusted")
    for answer, line, reason in zip((no_credential, wrong_credential, no_certificate), lines, reasons, strict=True):
        assert answer["code"]["geni_code"] != 0 and f"geni_code={answer['code']['geni_code']} " in line, line
        assert f' reason={reason} why="{answer["output"]}"' in line, (line, answer["output"])
    assert served_am.call("GetVersion", ())["code"]["geni_code"] == 0
    assert call_lines(caplog)[-1].endswith(tuple("0123456789")), "a call not refused adds nothing after ms="


@pytest.mark.parametrize("method", ["PUT", "OPTIONS", "DELETE", "TRACE", "PATCH"])
@pytest.mark.parametrize("path", ["/", "/am2", "/RPC2"])
def test_http_methods_but_post_are_405_allow_post(served_am: ServedAm, method: str, path: str) -> None:
    status, allow, body = served_am.send(b"", path, method=method)
    assert (status, allow) == (405, "POST") and b"POST a methodCall" in body
    assert served_am.send(b"", path, method="GET")[:2] == (405, "POST")  # as before


def test_the_rspec_version_is_bounded_and_quoted_short(served_am: ServedAm) -> None:
    before = every_row(served_am.aggregate.database)
    user_cred = [(served_am.sfi / "lab.ann.user.cred").read_text()]
    for member in ("type", "version"):
        version = {"type": "GENI", "version": "3", member: "T" * 100_000}
        answer = served_am.call("ListResources", (user_cred, {"geni_rspec_version": version}))
        assert answer["code"]["geni_code"] == 1, answer
        assert f"geni_rspec_version.{member} is 100000 characters long; at most 64" in answer["output"]
        assert len(answer["output"]) < 300
        allocated = served_am.call("Allocate", allocate_params(served_am, {"geni_rspec_version": version}))
        assert allocated["code"]["geni_code"] == 1 and "at most 64" in allocated["output"]
    assert every_row(served_am.aggregate.database) == before
    # Up to 64 characters, an unknown version is BADVERSION quoting them escaped (a newline shown as \n).
    answer = served_am.call("ListResources", (user_cred, {"geni_rspec_version": {"type": "T\n" * 32, "version": 3}}))
    assert answer["code"]["geni_code"] == 4 and "RSpec 'T\\nT\\n" in answer["output"] and "\n" not in answer["output"]
