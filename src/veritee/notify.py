"""Readiness for a service manager: systemd's ``sd_notify(READY=1)``, without a library.

A service started with ``Type=notify`` gets ``$NOTIFY_SOCKET`` (a Unix datagram socket; a
name starting with ``@`` is in the abstract namespace); one datagram ``READY=1`` there says it
accepts connections. Without the variable (not under systemd) it does nothing.
"""

from __future__ import annotations

import os
import socket

NOTIFY_ENV = "NOTIFY_SOCKET"


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``READY=1``, ``STOPPING=1``); True if a manager was told."""
    path = os.environ.get(NOTIFY_ENV, "")
    if not path or path[0] not in "/@":
        return False
    address = "\0" + path[1:] if path[0] == "@" else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False  # a manager that went away is not a reason to stop serving
    return True


def ready() -> bool:
    return notify("READY=1")


def stopping() -> bool:
    return notify("STOPPING=1")
