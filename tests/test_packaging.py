"""The systemd units of packaging/systemd/: each passes ``systemd-analyze verify`` with its
ExecStart pointed at this tree's ``veritee``, says what an operator expects (readiness,
SIGTERM, restart policy, hardening), and the services really send READY=1 over
``$NOTIFY_SOCKET`` once they serve, as ``Type=notify`` needs.
"""

from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Device

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "packaging" / "systemd"
INSTALLED = "/opt/veritee/bin/veritee"  # where the units expect the command (docs/operations.md)
VERITEE = Path(sys.executable).parent / "veritee"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
# unit file -> (the name verify loads it by, the home it may write, the command after veritee)
CASES = {
    "veritee-verifier.service": (
        "veritee-verifier.service",
        "/var/lib/veritee/verifier",
        ["verifier", "serve"],
    ),
    "veritee-secrets.service": (
        "veritee-secrets.service",
        "/var/lib/veritee/secrets",
        ["secrets", "serve"],
    ),
    "veritee-node@.service": (
        "veritee-node@hub.service",
        "/var/lib/veritee/nodes/%i",
        ["node", "start"],
    ),
}
READY_TIMEOUT = 60.0


def parse(unit: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit.read_text())
    return parser


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_unit_passes_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    if not Path(SYSTEMD_ANALYZE).exists():
        pytest.skip("systemd-analyze is not installed")
    text = (UNITS / name).read_text()
    assert INSTALLED in text
    (tmp_path / name).write_text(text.replace(INSTALLED, str(VERITEE)))
    loaded, _, _ = CASES[name]
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(tmp_path / loaded)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # not even a warning
    # The same unit with a command that does not exist fails: verify does check ExecStart.
    (tmp_path / name).write_text(text.replace(INSTALLED, str(tmp_path / "missing")))
    bad = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(tmp_path / loaded)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode != 0 and "missing" in bad.stderr


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_unit_says_what_an_operator_expects(name: str) -> None:
    service = parse(UNITS / name)["Service"]
    _, home, command = CASES[name]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["KillSignal"] == "SIGTERM" and service["KillMode"] == "mixed"
    assert service["Restart"] == "on-failure"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
    assert service["ReadWritePaths"] == home
    assert "MemoryDenyWriteExecute" not in service  # the Wasm engine compiles to machine code
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == INSTALLED
    # The command and its options exist: its --help, with the unit's own options, runs.
    words = [a for a in argv[1:] if not a.startswith("$")]
    sub = words.index(command[0])
    assert words[sub : sub + 2] == command
    options = {a for a in words[sub + 2 :] if a.startswith("--")}
    shown = subprocess.run(
        [str(VERITEE), *command, "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    for option in options:
        assert option in shown, f"{name}: {option} is not an option of {' '.join(command)}"


# -- readiness, for real ---------------------------------------------------------------------


def _notify_socket(tmp_path: Path) -> tuple[socket.socket, str]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(READY_TIMEOUT)
    return sock, path


# A clean stop: exit 0, or the KillSignal itself (uvicorn re-raises it once it has shut down
# gracefully), which systemd counts as success too.
CLEAN = (0, -signal.SIGTERM, 128 + signal.SIGTERM)  # node start: 143 after an orderly stop


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def _node(tmp_path: Path) -> tuple[Path, subprocess.Popen[bytes], Path, socket.socket]:
    home = tmp_path / "home"
    Device(home).ok("device", "init")
    sock, path = _notify_socket(tmp_path)
    ready, log = tmp_path / "ready.json", tmp_path / "node.log"
    command = [str(VERITEE), "node", "start", "--home", str(home), "--port", "0"]
    command += ["--events-port", "0", "--ready-file", str(ready)]
    with open(log, "wb") as out:
        node = subprocess.Popen(
            command, stdout=out, stderr=out, env={**os.environ, "NOTIFY_SOCKET": path}
        )
    try:
        assert sock.recv(4096) == b"READY=1"
        url = json.loads(ready.read_text())["url"]
        assert httpx.get(f"{url}/health", timeout=30).json() == {"status": "ok"}
    except BaseException:
        _stop(node)
        Device(home).cli("tee", "stop")
        sock.close()
        raise
    return home, node, log, sock


def test_the_node_agent_says_ready_and_stops_on_sigterm(tmp_path: Path) -> None:
    home, node, log, sock = _node(tmp_path)
    with sock:
        code = _stop(node)
    Device(home).cli("tee", "stop")  # a no-op when the agent stopped its world (the next test)
    assert code in CLEAN, log.read_text()


def test_sigterm_stops_the_secure_world_the_node_agent_booted(tmp_path: Path) -> None:
    home, node, log, sock = _node(tmp_path)
    with sock:
        _stop(node)
    try:
        deadline = time.monotonic() + 10
        while (home / "monitor.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not (home / "monitor.sock").exists(), log.read_text()
    finally:
        Device(home).cli("tee", "stop")


def test_the_secret_service_says_ready(device: Device, tmp_path: Path) -> None:
    from tests.test_secrets_service import write_config

    config = write_config(tmp_path, device, bytes(32))
    sock, path = _notify_socket(tmp_path)
    command = [str(VERITEE), "--home", str(device.home), "secrets", "serve", "--config"]
    command += [str(config), "--port", "0", "--state", str(tmp_path / "state")]
    with sock:
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "NOTIFY_SOCKET": path},
        )
        try:
            assert sock.recv(4096) == b"READY=1"
            assert proc.stdout is not None
            url = proc.stdout.readline().decode().split()[-1]
            assert httpx.get(f"{url}/health", timeout=30).json()["status"] == "ok"
        finally:
            assert _stop(proc) in CLEAN


def test_the_verifier_says_ready(tmp_path: Path) -> None:
    sock, path = _notify_socket(tmp_path)
    ready = tmp_path / "ready.json"
    command = [str(VERITEE), "--home", str(tmp_path / "home"), "verifier", "serve", "--port", "0"]
    command += ["--state", str(tmp_path / "state"), "--ready-file", str(ready)]
    with sock:
        proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "NOTIFY_SOCKET": path},
            start_new_session=True,
        )
        try:
            assert sock.recv(4096) == b"READY=1"
            url = json.loads(ready.read_text())["url"]
            deadline = time.monotonic() + READY_TIMEOUT
            while True:  # READY=1 once the socket listens; the worker answers soon after
                try:
                    assert httpx.get(f"{url}/health", timeout=30).json()["status"] == "ok"
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
        finally:
            assert _stop(proc) in CLEAN


# -- a fixed events port -----------------------------------------------------------------------


def _start_node(home: Path, tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    ready = tmp_path / f"{home.name}.ready"
    log = tmp_path / f"{home.name}.log"
    command = [str(VERITEE), "node", "start", "--home", str(home), "--port", "0"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*command, "--ready-file", str(ready), *extra], stdout=out, stderr=out
        )
    return proc, ready


def _wait(proc: subprocess.Popen[bytes], ready: Path) -> int | None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if ready.exists():
            return int(json.loads(ready.read_text())["events"][1])
        if proc.poll() is not None:
            return None
        time.sleep(0.05)
    raise AssertionError("node start neither became ready nor exited")


def test_the_events_port_is_fixed_by_default_and_0_is_any_free(tmp_path: Path) -> None:
    from veritee.app.server import DEFAULT_EVENTS_PORT

    probe = socket.socket()
    try:
        probe.bind(("127.0.0.1", DEFAULT_EVENTS_PORT))
    except OSError:
        pytest.skip(f"port {DEFAULT_EVENTS_PORT} is taken on this host")
    finally:
        probe.close()
    first, second = tmp_path / "first", tmp_path / "second"
    for home in (first, second):
        Device(home).ok("device", "init")
    a, ready_a = _start_node(first, tmp_path)
    b: subprocess.Popen[bytes] | None = None
    try:
        assert _wait(a, ready_a) == DEFAULT_EVENTS_PORT
        # A second agent on the same host with the default: one clear line, not a traceback.
        b, ready_b = _start_node(second, tmp_path)
        assert _wait(b, ready_b) is None and b.returncode != 0
        shown = (tmp_path / "second.log").read_text()
        assert "--events-port" in shown and "Traceback" not in shown
        # With 0 it takes any free port, and keeps it across a restart.
        b, ready_b = _start_node(second, tmp_path, "--events-port", "0")
        port = _wait(b, ready_b)
        assert port not in (None, DEFAULT_EVENTS_PORT)
        _stop(b)
        ready_b.unlink()
        b, ready_b = _start_node(second, tmp_path)
        assert _wait(b, ready_b) == port
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                _stop(proc)
        for home in (first, second):
            Device(home).cli("tee", "stop")
