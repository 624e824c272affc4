"""What the transport tells a caller whose methodCall it cannot read, over real TLS: which <param> (counted from 1)
and what was expected, for its own checks and for the stdlib's conversions alike; before, every such call got "not a
well-formed XML-RPC methodCall (ValueError)". And a method name that is no name, refused before the handler runs."""

from __future__ import annotations

import xmlrpc.client

import pytest

from tests.conftest import DemoPki
from tests.server.test_transport import alice_files, fault_of, raw_post, start
from tests.tls_harness import Listener, proxy

GOOD = "<value><string>x</string></value>"


def call(*values: str) -> bytes:
    params = "".join(f"<param>{value}</param>" for value in values)
    return f"<methodCall><methodName>Renew</methodName><params>{params}</params></methodCall>".encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            call(GOOD, GOOD, "<value><dateTime.iso8601>yesterday</dateTime.iso8601></value>"),
            "param 3: <dateTime.iso8601> 'yesterday' is not a time such as 20261201T10:00:00",
        ),
        (call(GOOD, "<value><array></array></value>"), "param 2: an <array> without <data>"),
        (
            call("<value><int>twelve</int></value>"),
            "param 1: <int> must be a whole number of at most 4300 digits, not 'twelve'",
        ),
        (call(GOOD, GOOD, "<value><boolean>2</boolean></value>"), "param 3: <boolean> must be 0 or 1, not '2'"),
        (
            call(GOOD, "<value><struct><member><value>1</value></member></struct></value>"),
            "param 2: <struct> must hold <member>s of a <name> and a <value> each",
        ),
        (
            call(GOOD, GOOD, GOOD, "<value><i4>" + "9" * 5000 + "</i4></value>"),
            "param 4: <i4> must be a whole number of at most 4300 digits, not '" + "9" * 40 + "'",
        ),
        (
            # deep inside param 2: still param 2
            call(
                GOOD,
                "<value><struct><member><name>a</name><value><array><data><value><double>x1</double>"
                "</value></data></array></value></member></struct></value>",
            ),
            "param 2: <double> must be a number such as 1.5, not 'x1'",
        ),
        (call("<value><base64>a</base64></value>"), "param 1: <base64> must hold base64 data"),
    ],
)
def test_a_value_that_cannot_be_read_is_named_with_its_param(
    listener: Listener, pki: DemoPki, body: bytes, message: str
) -> None:
    url = start(listener, pki)
    status, answer = raw_post(url, pki, body)
    fault = fault_of(answer)
    assert (status, fault.faultCode) == (200, 1)
    assert fault.faultString.startswith(message), fault.faultString
    assert proxy(url, *alice_files(pki)).Still()["method"] == "Still"


def test_a_method_name_that_is_no_name_never_reaches_the_handler(listener: Listener, pki: DemoPki) -> None:
    """The test handler echoes every name it gets: a name refused before it is a fault of the transport's own
    (UNSUPPORTED, as an unknown method), showing the name cut and escaped; names of 64 letters, digits, '_' or '.'
    reach it."""
    url = start(listener, pki)
    for method in ("Get\nVersion", "x" * 65, "Get Version", "Get<Version>", "Ver\u00e9sion", "A" * 300_000):
        body = xmlrpc.client.dumps((), "PLACEHOLDER").replace(
            "PLACEHOLDER", method.replace("<", "&lt;").replace(">", "&gt;")
        )
        status, answer = raw_post(url, pki, body.encode("utf-8"))
        fault = fault_of(answer)
        assert (status, fault.faultCode) == (200, 13), fault
        assert f"{method[:80]!r} " in fault.faultString and "is not a method" in fault.faultString
        assert len(answer) < 1000
    assert proxy(url, *alice_files(pki)).__getattr__("a.B_9" + "z" * 59)()["method"] == "a.B_9" + "z" * 59
