"""``sfa-omf node import --from-omf`` against a real HTTPS server whose answer is JSON nested deeper than the decoder
can follow: the import is refused with words saying so (no traceback from a RecursionError), and nothing is
written."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sfa_omf.calendar.database import Database
from sfa_omf.calendar.inventory import Inventory
from sfa_omf.cli import main
from sfa_omf.config import read_config
from sfa_omf.registry.authority import LocalAuthority
from sfa_omf.registry.bootstrap import init_directory

#: Far deeper than json's recursion can go (each "[" is one level).
DEEPLY_NESTED = b"[" * 100_000


class NestedAnswer(http.server.BaseHTTPRequestHandler):
    """Answers every GET with DEEPLY_NESTED, as a broken or hostile broker could."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(DEEPLY_NESTED)))
        self.end_headers()
        self.wfile.write(DEEPLY_NESTED)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the test's output stays readable


@pytest.fixture
def nested_broker(tmp_path: Path) -> Iterator[str]:
    """An HTTPS server (a real TLS socket, the authority's certificate) answering DEEPLY_NESTED."""
    init_directory(str(tmp_path / "broker"), "broker", ())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(
        LocalAuthority.gid_path(str(tmp_path / "broker"), "broker"),
        LocalAuthority.key_path(str(tmp_path / "broker"), "broker"),
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NestedAnswer)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_answer_nested_too_deeply_is_refused_saying_so(
    nested_broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", str(tmp_path / "site"), "--authority", "nitos", "--no-demo"]) == 0
    config = str(tmp_path / "site" / "sfa-omf.conf")
    capsys.readouterr()
    code = main(["node", "import", "--config", config, "--from-omf", nested_broker, "--insecure"])
    _, err = capsys.readouterr()
    assert code != 0
    assert f"{nested_broker}/resources/nodes answered JSON nested too deeply to read" in err
    assert "Traceback" not in err
    assert Inventory(Database(read_config(config).calendar_url)).list_nodes() == []
