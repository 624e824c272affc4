"""docs/operators.md runs as written: every ``sh`` block, in order, in one bash, on a fresh directory and a real
PostgreSQL database (SFA_OMF_TEST_POSTGRES_URL). The commands are read from the document itself, so the page and
this test cannot drift apart.

A block is skipped only when the paragraph right above it starts with "*Not run by the test" and gives a reason;
the block after a paragraph starting with "*Run in the background by the test" is ``sfa-omf serve``: it runs in the
background, the script waits (at most READY_TIMEOUT_S) until the server says READY=1 (systemd's notify protocol, on a
socket this test listens on, relayed through a FIFO), and the server is stopped after the last block, or before the
block after a paragraph starting with "*Run by the test once it has stopped its server" (the restore of a backup,
which the page checks itself).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from sfa_omf.registry.bootstrap import init_directory
from tests.ports import free_port
from tests.requirements import missing

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "operators.md"
POSTGRES_URL = os.environ.get("SFA_OMF_TEST_POSTGRES_URL")
NOT_RUN = "*Not run by the test"
BACKGROUND = "*Run in the background by the test"
STOPPED = "*Run by the test once it has stopped its server"
READY_TIMEOUT_S = 60  # from the server's launch: one that never gets ready fails the test instead of hanging it
SCRIPT_TIMEOUT_S = 600  # the whole page; a busy machine runs its ~30 sfa-omf processes slowly


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    text: str
    note: str  # the paragraph right above the block


def sh_blocks(markdown: str) -> list[Block]:
    """The ``sh`` fenced blocks of a Markdown text, each with the paragraph above it."""
    blocks = []
    lines = markdown.splitlines()
    number = 0
    while number < len(lines):
        if lines[number].strip() == "```sh":
            start = number
            end = lines.index("```", start + 1)
            above = start - 1
            while above >= 0 and not lines[above].strip():
                above -= 1
            paragraph: list[str] = []
            while above >= 0 and lines[above].strip():
                paragraph.insert(0, lines[above].strip())
                above -= 1
            blocks.append(Block(start + 1, "\n".join(lines[start + 1 : end]), " ".join(paragraph)))
            number = end
        number += 1
    return blocks


def test_the_document_marks_what_is_not_run() -> None:
    blocks = sh_blocks(DOC.read_text(encoding="utf-8"))
    skipped = [block for block in blocks if block.note.startswith(NOT_RUN)]
    for block in skipped:
        assert re.match(re.escape(NOT_RUN) + r": \S", block.note), f"line {block.line}: say why it is not run"
    background = [block for block in blocks if block.note.startswith(BACKGROUND)]
    assert [block.text for block in background] == ["sfa-omf serve"]
    stopped = [block for block in blocks if block.note.startswith(STOPPED)]
    assert len(stopped) == 1 and stopped[0].line > background[0].line, "the restore, once, after the server started"
    assert "psql" in stopped[0].text and "cmp" in stopped[0].text, "the restore checks what it restored"
    assert len(blocks) - len(skipped) >= 10, "most of the page runs"
    assert len(skipped) <= 10, "keep the blocks that are not run few"


def _script(blocks: list[Block], ready_fifo: Path, server_log: Path) -> str:
    parts = [
        "set -euo pipefail",
        'stop_server() { if [ -n "${SERVE_PID:-}" ]; then kill "$SERVE_PID"; wait "$SERVE_PID" || true; fi; }',
        "trap stop_server EXIT",
        f'exec 3<>"{ready_fifo}"  # opened now (read-write: it does not block), so READY=1 can never be missed',
    ]
    for block in blocks:
        if block.note.startswith(NOT_RUN):
            continue
        parts.append(f"echo '### operators.md line {block.line}'")
        if block.note.startswith(STOPPED):
            parts.append("stop_server; SERVE_PID=")
        if block.note.startswith(BACKGROUND):
            parts.append(f'{block.text} 2>"{server_log}" &')
            parts.append("SERVE_PID=$!")
            parts.append(
                f"read -r -t {READY_TIMEOUT_S} state <&3 || "
                f'{{ echo "server not ready within {READY_TIMEOUT_S} s"; cat "{server_log}"; exit 1; }}'
            )
        else:
            parts.append(block.text)
    return "\n".join(parts) + "\n"


def _relay_ready(notify: socket.socket, ready_fifo: Path) -> None:
    """READY=1 on the notify socket becomes a line in the FIFO the script reads (the script times out by itself)."""
    try:
        message = notify.recv(4096)
    except OSError:  # timed out, or closed at the end of the test
        return
    if message == b"READY=1":
        descriptor = os.open(ready_fifo, os.O_WRONLY | os.O_NONBLOCK)  # the script holds the FIFO open
        os.write(descriptor, b"ready\n")
        os.close(descriptor)


def test_every_command_of_the_operators_guide_runs(tmp_path: Path) -> None:
    if not POSTGRES_URL:
        missing(
            "SFA_OMF_TEST_POSTGRES_URL is not set under CI (scripts/test.sh sets it)",
            "SFA_OMF_TEST_POSTGRES_URL is not set: run scripts/postgres.sh, or scripts/test.sh",
        )
    from sqlalchemy import create_engine, text

    engine = create_engine(POSTGRES_URL)  # a fresh database, as on a new site
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()

    peer = init_directory(str(tmp_path / "peer"), "peerlab", ())
    bin_dir = tmp_path / "bin"  # `sfa-omf` is this checkout's code, whatever is installed
    bin_dir.mkdir()
    wrapper = bin_dir / "sfa-omf"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m sfa_omf.cli "$@"\n')
    wrapper.chmod(0o755)
    ready_fifo, server_log = tmp_path / "ready", tmp_path / "server.log"
    os.mkfifo(ready_fifo)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(SCRIPT_TIMEOUT_S)
    relay = threading.Thread(target=_relay_ready, args=(notify, ready_fifo), daemon=True)
    relay.start()

    blocks = sh_blocks(DOC.read_text(encoding="utf-8"))
    (tmp_path / "operators.sh").write_text(_script(blocks, ready_fifo, server_log))
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SFA_")}
    registry_port, aggregate_port = free_port(), free_port()
    environment.update(
        PATH=f"{bin_dir}:{environment['PATH']}",
        PYTHONPATH=str(REPO),
        NOTIFY_SOCKET=str(tmp_path / "notify.sock"),
        SITE=str(tmp_path / "site"),
        AUTHORITY="doclab",
        AM_HOST="localhost",
        REGISTRY_PORT=str(registry_port),
        AGGREGATE_PORT=str(aggregate_port),
        DB_URL=POSTGRES_URL,
        PEER_ROOT=str(Path(peer.directory) / "authority" / "peerlab.gid"),
        BACKUP=str(tmp_path / "backup"),
    )
    try:
        done = subprocess.run(
            ["bash", str(tmp_path / "operators.sh")],
            env=environment,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT_S,
        )
    finally:
        notify.close()
    log = server_log.read_text() if server_log.exists() else ""
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\nserver log:\n{log}"

    out = done.stdout
    assert f"registry https://localhost:{registry_port}/ answers GetVersion" in out
    assert f"aggregate https://localhost:{aggregate_port}/ answers GetVersion" in out
    assert "urn:publicid:IDN+doclab+node+node3" in out and "now trusting peerlab" in out
    assert "registered user doclab.ann" in out and "registered slice doclab.exp1" in out
    assert "no problems" in out  # config check on the new site
    # The guide's "which process leads" query finds the running server (it named another key's halves, finding none).
    assert re.search(r"^\s*leader\s*\n-+\n\s*sfa-omf ", out, re.MULTILINE), out
    assert f"serving AM API v3 on https://127.0.0.1:{aggregate_port}/ (advertised as localhost)" in log
    assert "stopped" in log  # stopped cleanly after the last block
    assert "Traceback" not in done.stderr + log
    backup = tmp_path / "backup"
    assert (backup / "data-dir.tar.gz").stat().st_size > 0
    assert "CREATE TABLE public.node" in (backup / "calendar.sql").read_text()
    # The restore block checked itself (its `cmp` failing fails the script): node3, removed after the backup, is back.
    assert f"restored from {backup}" in out
