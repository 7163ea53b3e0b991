"""The app commands as a user meets them: help with examples, one-line errors, exit codes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

COMMANDS = [
    ("node", "start"),
    ("deploy",),
    ("status",),
    ("call",),
    ("output",),
    ("request",),
    ("update",),
    ("add",),
    ("disable",),
]


def veritee(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "veritee", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(command: tuple[str, ...]) -> None:
    proc = veritee(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Example" in proc.stdout
    assert "veritee " + " ".join(command) in proc.stdout


def test_node_start_help_gives_the_poll_default_the_agent_uses() -> None:
    from veritee.app.transport import POLL

    proc = veritee("node", "start", "--help")
    assert proc.returncode == 0, proc.stderr
    assert f"default {round(POLL * 1e6)})" in " ".join(proc.stdout.split())
    assert (
        "Error: Invalid value for '--poll-us'" in veritee("node", "start", "--poll-us", "-1").stderr
    )


def test_a_node_says_how_it_polls_its_links(tmp_path: Path) -> None:
    """An operator reads the setting in the agent's log, next to where it listens."""
    ready, log = tmp_path / "ready.json", tmp_path / "node.log"
    command = [sys.executable, "-m", "veritee", "node", "start", "--home", str(tmp_path / "n")]
    command += ["--port", "0", "--events-port", "0", "--init", "--ready-file", str(ready)]
    with open(log, "wb") as out:
        node = subprocess.Popen([*command, "--poll-us", "500"], stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 60
            while not ready.exists() and node.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert ready.exists(), log.read_text()
        finally:
            node.send_signal(signal.SIGINT)
            node.wait(30)
    assert "polls busy links up to 500 µs" in log.read_text()


def test_a_malformed_descriptor_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "app.yaml"
    bad.write_text(
        "nodes:\n  - {name: n, host: 127.0.0.1, port: 1}\nmodules:\n"
        "  - {name: m, node: elsewhere, binary: m.wasm}\n"
    )
    proc = veritee("deploy", bad, "--state", tmp_path / "s.json")
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("modules[0].node: unknown node 'elsewhere' (nodes: n)")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_an_authentic_execution_sgx_descriptor_is_refused_with_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "complete.json"
    bad.write_text(
        '{"nodes": [{"type": "sgx", "name": "node_sgx", "ip_address": "127.0.0.1",'
        ' "reactive_port": 5000}], "modules": []}'
    )
    proc = veritee("deploy", bad, "--state", tmp_path / "s.json")
    assert proc.returncode == 2
    assert "nodes[0].type: Veritee cannot honour this Authentic Execution field" in proc.stderr
    assert "SGX-specific" in proc.stderr and proc.stderr.count("\n") == 1


def test_a_node_that_does_not_answer_is_one_line(tmp_path: Path, wasm: object) -> None:
    import socket

    from veritee.wasm.build import build

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    binary = tmp_path / "m.wasm"
    build(Path(__file__).resolve().parent / "assets" / "c" / "app_counter.c", binary)
    desc = tmp_path / "app.yaml"
    desc.write_text(
        f"nodes:\n  - {{name: n, host: 127.0.0.1, port: {port}}}\n"
        f"modules:\n  - {{name: m, node: n, binary: {binary}}}\n"
    )
    proc = veritee("deploy", desc, "--state", tmp_path / "s.json", "--verifier", "http://x")
    assert proc.returncode == 11, proc.stderr
    assert f"node n (http://127.0.0.1:{port}) did not answer" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("veritee: error: node n") and "Traceback" not in proc.stderr


def test_commands_without_a_deployment_say_how_to_make_one(tmp_path: Path) -> None:
    for args in (("status",), ("output", "c", "x"), ("request", "c"), ("disable", "m")):
        proc = veritee(*args, cwd=tmp_path)
        assert proc.returncode == 10, (args, proc.stderr)
        assert "no deployment state at veritee-deployment.json: deploy first" in proc.stderr
