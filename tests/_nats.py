"""A real nats-server with JetStream for tests: file storage in a temp dir, a free port.

Started and killed by its PID; restarted on the same port and store, as an operator's
broker coming back after a crash.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
READY_TIMEOUT = 10.0  # seconds for nats-server to listen; it takes tens of milliseconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need_nats_server() -> None:
    if not Path(NATS_SERVER).exists():
        pytest.fail("nats-server is not installed: run scripts/setup.sh --test")


class NatsServer:
    """One nats-server (or one server of a cluster, with ``routes``)."""

    def __init__(
        self,
        store: Path,
        *,
        port: int | None = None,
        name: str = "n1",
        cluster_port: int | None = None,
        routes: tuple[int, ...] = (),
        host: str = "127.0.0.1",
    ) -> None:
        need_nats_server()
        self.host = host
        self.store = store
        self.port = port or free_port()
        self.name = name
        self.cluster_port = cluster_port
        self.routes = routes
        self.process: subprocess.Popen[bytes] | None = None
        self.log = store.parent / f"{name}-nats.log"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self) -> NatsServer:
        self.store.mkdir(parents=True, exist_ok=True)
        args = [
            NATS_SERVER,
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.store),
            "-n",
            self.name,
        ]
        if self.cluster_port is not None:
            args += [
                "--cluster_name",
                "veritee",
                "--cluster",
                f"nats://127.0.0.1:{self.cluster_port}",
            ]
            args += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"nats-server exited: {self.log.read_text()[-500:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        raise AssertionError("nats-server did not listen in time")

    def kill(self) -> None:
        """SIGKILL, by its PID: a crash, not a shutdown."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


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
