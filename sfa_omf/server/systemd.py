"""systemd's notification protocol (Type=notify units): light, so that the workers' master can use it too."""

from __future__ import annotations

import os
import socket


def notify_systemd(state: str) -> bool:
    """Tell systemd (Type=notify units) our state, e.g. ``READY=1``; False when not started by systemd."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode("utf-8"))
    return True
