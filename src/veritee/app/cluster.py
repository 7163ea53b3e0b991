"""Node agents and a verifier as local processes: for the demo, the tests and the benchmark.

Each node gets a device home of its own (its own manufacturer CA, HUK and secure world);
the verifier is told to trust each device's CA and boot reference values, and the modules
it is asked to endorse. Processes are started in their own sessions and stopped by pid.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from veritee.app.errors import AppError
from veritee.home import Home

READY_TIMEOUT = 60.0  # seconds for a node (provision + boot) or the verifier to come up
STOP_TIMEOUT = 10.0


@dataclass
class LocalNode:
    name: str
    home: Path
    host: str = "127.0.0.1"
    port: int = 0
    events: tuple[str, int] = ("", 0)
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=Path)
    prefix: tuple[str, ...] = ()  # e.g. ("ip", "netns", "exec", "ns1") to run it elsewhere
    tls: bool = False  # its agent serves HTTPS (the cluster's --tls-cert/--tls-key)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"


def _wait_ready(
    path: Path, proc: subprocess.Popen[bytes], log: Path, what: str
) -> dict[str, object]:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if path.exists():
            value: dict[str, object] = json.loads(path.read_text())
            return value
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            raise AppError(f"{what} exited ({proc.returncode}): {' | '.join(tail)}")
        time.sleep(0.05)
    raise AppError(f"{what} did not come up in {READY_TIMEOUT:g} s; see {log}")


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(STOP_TIMEOUT)


class LocalCluster:
    """Nodes (agent + secure world each) and optionally a verifier, under ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        names: Sequence[str] = ("home-hub", "home-server"),
        *,
        verifier: bool = True,
        hosts: Sequence[str] | None = None,
        prefixes: Sequence[Sequence[str]] | None = None,
        source: Path | None = None,
        poll_us: int | None = None,
        tls: tuple[Path, Path] | None = None,
        transport: str | None = None,
    ) -> None:
        """``source``: run the nodes and the verifier from that checkout's ``src`` (an A/B
        benchmark compares two versions), with an interpreter of their own whose
        site-packages put it first (the secure world runs isolated: PYTHONPATH does not
        reach it); their devices are provisioned by it too, since secure boot measures the
        code it runs. ``poll_us``: the agents' ``--poll-us``
        (default: theirs). ``tls``: (certificate, key) every agent, and the verifier, serve
        HTTPS with (their clients verify it against $VERITEE_CA). ``transport``: the agents'
        ``--transport`` (default: direct links)."""
        self.tls = tls
        self.transport = transport
        self.workdir = workdir
        self.source = source
        self.poll_us = poll_us
        self.python = sys.executable  # made for ``source`` when the cluster starts
        self.nodes = {
            n: LocalNode(
                n,
                workdir / n,
                host=(hosts[i] if hosts else "127.0.0.1"),
                prefix=tuple(prefixes[i]) if prefixes else (),
                tls=tls is not None,
            )
            for i, n in enumerate(names)
        }
        self.want_verifier = verifier
        self.log_level = "warning"  # of every process started (their JSON lines in *.log)
        self.verifier_url: str | None = None
        self._verifier: subprocess.Popen[bytes] | None = None
        self._token: str | None = None

    # -- processes -------------------------------------------------------------------------

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        from veritee.tee import device

        if self.source is not None:
            self.python = str(_interpreter_for(self.source, self.workdir / "python"))

        for node in self.nodes.values():
            home = Home(node.home)
            if device.is_provisioned(home):
                continue
            if self.source is None:
                device.provision(home)
                continue
            init = [self.python, "-m", "veritee", "--home", str(node.home), "device", "init"]
            done = subprocess.run(init, capture_output=True, text=True)
            if done.returncode != 0:
                raise AppError(f"provisioning {node.name} from {self.source}: {done.stderr}")
        if self.want_verifier:
            self._start_verifier()
        for node in self.nodes.values():
            self.start_node(node.name, wait=False)
        for node in self.nodes.values():
            self._ready(node)
        if self.verifier_url:
            self._trust_devices()

    def start_node(self, name: str, *, wait: bool = True) -> LocalNode:
        """(Re)start a node's agent; it boots its secure world if that is not running."""
        node = self.nodes[name]
        ready = self.workdir / f"{name}.ready"
        ready.unlink(missing_ok=True)
        node.log = self.workdir / f"{name}.log"
        args = [
            *node.prefix,
            self.python,
            "-m",
            "veritee",
            "node",
            "start",
            "--home",
            str(node.home),
            "--host",
            node.host,
            "--port",
            str(node.port),
            "--ready-file",
            str(ready),
            "--log-level",
            self.log_level,
            *(() if self.poll_us is None else ("--poll-us", str(self.poll_us))),
            *(() if self.transport is None else ("--transport", self.transport)),
            *(
                ()
                if self.tls is None
                else ("--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1]))
            ),
            # Nodes share a host here: any free events port the first time, then the one
            # the node kept (peers hold events for it across restarts).
            *(() if (node.home / "node" / "events-port").exists() else ("--events-port", "0")),
        ]
        with open(node.log, "ab") as log:
            node.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        if wait:
            self._ready(node)
        return node

    def _ready(self, node: LocalNode) -> None:
        assert node.process is not None
        info = _wait_ready(self.workdir / f"{node.name}.ready", node.process, node.log, node.name)
        node.port = int(str(info["url"]).rsplit(":", 1)[1])
        events = info["events"]
        assert isinstance(events, list)
        node.events = (str(events[0]), int(events[1]))

    def kill_node(self, name: str, *, tee: bool = False) -> None:
        """End a node's agent the hard way (SIGKILL), and its secure world too if ``tee``."""
        node = self.nodes[name]
        _stop(node.process, signal.SIGKILL)
        if tee:
            self._stop_tee(node)

    def stop_node(self, name: str) -> None:
        _stop(self.nodes[name].process)

    def _stop_tee(self, node: LocalNode) -> None:
        from veritee.errors import Error
        from veritee.tee import monitor

        home = Home(node.home)
        with contextlib.suppress(Error):
            monitor.control(home, {"op": "stop"})
        deadline = time.monotonic() + STOP_TIMEOUT
        while home.monitor_socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _start_verifier(self) -> None:
        state = self.workdir / "verifier"
        ready = self.workdir / "verifier.ready"
        ready.unlink(missing_ok=True)
        log_path = self.workdir / "verifier.log"
        with open(log_path, "ab") as log:
            self._verifier = subprocess.Popen(
                [
                    self.python,
                    "-m",
                    "veritee",
                    "--home",
                    str(self.workdir / "verifier-home"),
                    "verifier",
                    "serve",
                    "--port",
                    "0",
                    "--state",
                    str(state),
                    "--ready-file",
                    str(ready),
                    "--log-level",
                    self.log_level,
                    # The agents' certificate serves the verifier too (one host: loopback).
                    *(
                        ()
                        if self.tls is None
                        else ("--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1]))
                    ),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        info = _wait_ready(ready, self._verifier, log_path, "verifier")
        self.verifier_url = str(info["url"])
        self._token = (state / "admin-token").read_text().strip()

    def _trust_devices(self) -> None:
        from veritee.verifier.client import VerifierClient

        assert self.verifier_url is not None
        with VerifierClient(self.verifier_url, token=self._token) as client:
            for node in self.nodes.values():
                home = Home(node.home)
                # The node host user holds the CA's key: its mark is believed up to emulated.
                ca = (home.manufacturer / "ca.pem").read_text()
                client.add_trust_anchors([{"ca": ca, "max-lifecycle": "emulated"}])
                refs = json.loads((home.manufacturer / "reference-values.json").read_text())
                client.add_reference_values(refs)

    def endorse(self, modules: Iterable[tuple[str, bytes]]) -> None:
        """Make these (name, binary) modules reference values at the verifier."""
        from veritee.app.attest import measure
        from veritee.verifier.client import VerifierClient

        if self.verifier_url is None:
            return
        with VerifierClient(self.verifier_url, token=self._token) as client:
            client.add_reference_values(
                [
                    {"kind": "module", "name": name, "version": "", "measurement": measure(b).hex()}
                    for name, b in modules
                ]
            )

    def stop(self) -> None:
        for node in self.nodes.values():
            _stop(node.process)
        for node in self.nodes.values():
            if node.home.exists():
                self._stop_tee(node)
        _stop(self._verifier)

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


NATS_SERVER_READY = 10.0  # seconds for nats-server to listen; it takes tens of milliseconds


def _free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class LocalBroker:
    """A nats-server with JetStream (file storage under ``store``) on a free port of ``host``,
    for the demo and the tests; with ``cluster_port`` and ``routes``, one server of a
    cluster. Started, killed (SIGKILL, a crash) and restarted on the same port and store."""

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
        import shutil

        self.binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not Path(self.binary).exists():
            raise AppError("nats-server is not installed (Debian: apt install nats-server)")
        self.host = host
        self.store = store
        self.port = port or _free_port()
        self.name = name
        self.cluster_port = cluster_port
        self.routes = routes
        self.process: subprocess.Popen[bytes] | None = None
        self.log = store.parent / f"{name}-nats.log"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self) -> LocalBroker:
        import socket

        self.store.mkdir(parents=True, exist_ok=True)
        args = [self.binary, "-a", self.host, "-p", str(self.port), "-js"]
        args += ["-sd", str(self.store), "-n", self.name]
        if self.cluster_port is not None:
            args += ["--cluster_name", "veritee", "--cluster"]
            args += [f"nats://127.0.0.1:{self.cluster_port}"]
            args += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + NATS_SERVER_READY
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AppError(f"nats-server exited: {self.log.read_text()[-500:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        raise AppError(f"nats-server did not listen in {NATS_SERVER_READY:g} s; see {self.log}")

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


def descriptor_for(
    template: Path, cluster: LocalCluster, binaries: dict[str, Path], out: Path
) -> Path:
    """A copy of ``template`` with the cluster's node addresses and built binaries."""
    import yaml

    from veritee.app.descriptor import read_tree

    data, _ = read_tree(template.read_bytes(), str(template))
    for node in data.get("nodes", []):
        local = cluster.nodes.get(node.get("name"))
        if local is not None:
            node["host"], node["port"] = local.host, local.port
            if local.tls:
                node["tls"] = True
    for module in data.get("modules", []):
        binary = binaries.get(module.get("name"))
        if binary is not None:
            module.pop("source", None)
            module["binary"] = str(binary)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def _interpreter_for(source: Path, root: Path) -> Path:
    """An interpreter whose ``veritee`` is the one in ``source`` (a checkout's ``src``), with
    this environment's libraries behind it: a venv whose site-packages name both in a
    ``.pth`` file, which the interpreter reads even in isolated mode."""
    import sysconfig

    python = root / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    here = sysconfig.get_paths()["purelib"]
    (Path(purelib) / "veritee-source.pth").write_text(f"{source.resolve()}\n{here}\n")
    return python
