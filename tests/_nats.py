"""A real nats-server with JetStream for tests: file storage in a temp dir, a free port.

Started and killed by its PID; restarted on the same port and store, as an operator's
broker coming back after a crash.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from veritee.app.cluster import LocalBroker

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need_nats_server() -> None:
    if not Path(NATS_SERVER).exists():
        pytest.fail("nats-server is not installed: run scripts/setup.sh --test")


class NatsServer(LocalBroker):
    """The demo's broker (veritee.app.cluster.LocalBroker); a test fails, not errors, when
    nats-server is missing."""

    def __init__(self, store: Path, **options: Any) -> None:
        need_nats_server()
        super().__init__(store, **options)


def tree_source() -> Path | None:
    """This tree's ``src`` when the secure world would run another Veritee, else None.

    Secure-world processes start ``python -I``: PYTHONPATH does not reach them, so in a
    work tree whose sources differ from the installed ones, a cluster must run this tree
    through an interpreter of its own (LocalCluster's ``source``), or secure boot refuses
    the code it measures.
    """
    src = Path(__file__).resolve().parent.parent / "src"
    out = subprocess.run(
        [sys.executable, "-I", "-c", "import veritee; print(veritee.__file__)"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return None if out and Path(out).resolve().is_relative_to(src) else src
