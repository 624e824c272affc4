"""The registry's XML-RPC boundary over real TLS (start_registry, on PostgreSQL): a method name that is no name is
refused as an unknown method is (fault UNSUPPORTED), shown as a short repr in the fault and in the log line; before,
the name went whole into both (a forged log line, two megabytes of answer for two megabytes of name)."""

from __future__ import annotations

import dataclasses
import http.client
import logging
import xmlrpc.client
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest
from twisted.internet.threads import blockingCallFromThread

from sfa_omf.calendar.database import Database
from sfa_omf.config import read_config
from sfa_omf.registry.bootstrap import init_directory, register_demo
from sfa_omf.server.app import start_registry
from tests.am.test_rpc_boundary_tls import FORGING, every_row
from tests.postgres import empty_postgres
from tests.tls_harness import client_context


def test_a_method_name_that_is_no_name_is_a_short_fault_and_never_logged_raw(
    running_reactor: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    report = init_directory(str(tmp_path / "tb"), "tb", ("alice",))
    settings = dataclasses.replace(read_config(str(tmp_path / "tb" / "sfa-omf.conf")), database_url=empty_postgres())
    database = Database(settings.calendar_url)
    database.upgrade()
    register_demo(report, database)
    port = blockingCallFromThread(running_reactor, start_registry, settings, database, 0)
    alice_dir = Path(report.sfi_dirs["alice"])
    context = client_context(str(alice_dir / "tb.alice.user.gid"), str(alice_dir / "tb.alice.pkey"))
    user_cred = (alice_dir / "tb.alice.user.cred").read_text()

    def fault_of(method: str) -> tuple[int, xmlrpc.client.Fault]:
        """(answer size, fault) of a Register call named ``method`` (escaped for XML, else as it is)."""
        body = xmlrpc.client.dumps(({"hrn": "tb.eve", "type": "user"}, [user_cred]), "PLACEHOLDER")
        body = body.replace("PLACEHOLDER", escape(method))
        connection = http.client.HTTPSConnection("127.0.0.1", port.getHost().port, context=context, timeout=30)
        try:
            connection.request("POST", "/", body=body.encode("utf-8"), headers={"Content-Type": "text/xml"})
            answer = connection.getresponse().read()
        finally:
            connection.close()
        with pytest.raises(xmlrpc.client.Fault) as raised:
            xmlrpc.client.loads(answer)
        return len(answer), raised.value

    caplog.set_level(logging.INFO, logger="sfa_omf")
    try:
        before = every_row(database)
        for method in (FORGING, "Register\r\n", "R" * 2_000_000, "Register" + "x" * 60):
            size, fault = fault_of(method)
            assert fault.faultCode == 13 and "is not a method: a method name has at most 64" in fault.faultString
            assert size < 1000, "the name is shown cut, not echoed whole"
        assert "'X\\n2026-12-02 10:00:00,000 INFO" in fault_of(FORGING)[1].faultString
        assert every_row(database) == before  # nothing registered, nothing written
        lines = [record.getMessage() for record in caplog.records if record.name == "sfa_omf.registry"]
        assert len(lines) == 5 and all("\n" not in line and len(line) < 900 for line in lines), lines
        assert lines[2].startswith("'RRRR") and "(2000000 characters) caller=urn:publicid:IDN+tb+user+alice" in lines[2]
        # Each refused call's line says why, as the caller was told (errors.logged_refusal).
        assert all(" geni_code=13 " in line and ' reason=unsupported why="' in line for line in lines), lines
        # (its backslashes doubled: the name is shown as a repr, "'X\\n2026...")
        shown = fault_of(FORGING)[1].faultString.replace("\\", "\\\\")
        assert f'why="{shown}"' in caplog.records[-1].getMessage()
        # A valid name unknown here is still the registry's own refusal, listing its methods.
        assert "is not offered by this registry" in fault_of("Register_x.y")[1].faultString
    finally:
        blockingCallFromThread(running_reactor, port.stopListening)
        database.dispose()
