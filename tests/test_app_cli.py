"""The app commands as a user meets them: help with examples, one-line errors, exit codes."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from veritee.app.cluster import LocalCluster

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
    subprocess.run(
        [sys.executable, "-m", "veritee", "--home", str(tmp_path / "n"), "device", "init"],
        check=True,
        capture_output=True,
    )
    command = [sys.executable, "-m", "veritee", "node", "start", "--home", str(tmp_path / "n")]
    command += ["--port", "0", "--events-port", "0", "--ready-file", str(ready)]
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


def test_an_authentic_execution_sgx_descriptor_is_refused_naming_every_sgx_field(
    asset: Callable[[str], Path], tmp_path: Path
) -> None:
    sgx = asset("ae/sgx-input.json")
    for args in (("deploy", sgx, "--state", tmp_path / "s.json"), ("deploy", "--check", sgx)):
        proc = veritee(*args)
        assert proc.returncode == 2, proc.stderr
        shown = proc.stderr if "--check" not in args else proc.stdout
        assert f"{sgx}:5: nodes[0].type: Veritee cannot honour SGX descriptors" in shown
        assert "SGX-specific fields: nodes[0].type 'sgx' (line 5), modules[0].type 'sgx'" in shown
        assert "modules[1].vendor_key (line 23), modules[1].ra_settings (line 24)" in shown
        assert shown.count("\n") == 1 and "Traceback" not in proc.stderr


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
    # No verifier: deploy checks one answers before it touches a node (exit 9 otherwise).
    proc = veritee("deploy", desc, "--state", tmp_path / "s.json")
    assert proc.returncode == 11, proc.stderr
    assert f"node n (http://127.0.0.1:{port}) did not answer" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("veritee: error: node n") and "Traceback" not in proc.stderr


def test_commands_without_a_deployment_say_how_to_make_one(tmp_path: Path) -> None:
    for args in (("status",), ("output", "c", "x"), ("request", "c"), ("disable", "m")):
        proc = veritee(*args, cwd=tmp_path)
        assert proc.returncode == 10, (args, proc.stderr)
        assert "no deployment state at veritee-deployment.json: deploy first" in proc.stderr


# -- Authentic Execution descriptors, and deploy --check ------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens here once closed


def _ae_copy(asset: Callable[[str], Path], tmp_path: Path, port: int) -> Path:
    """reactive-tools' tz-to-tz example and its sources, as given but for the node's port."""
    shutil.copytree(asset("ae/tz-to-tz"), tmp_path / "tz-to-tz")
    desc = tmp_path / "tz-to-tz" / "tz-to-tz.json"
    text = desc.read_text()
    assert text.count('"reactive_port": 1236') == 1
    desc.write_text(text.replace('"reactive_port": 1236', f'"reactive_port": {port}'))
    return desc


def test_deploy_check_lists_every_problem_before_anything_is_built(
    asset: Callable[[str], Path], tmp_path: Path, wasm: object
) -> None:
    port = _free_port()
    desc = _ae_copy(asset, tmp_path, port)
    data = json.loads(desc.read_text())
    data["modules"].append({"type": "trustzone", "name": "ghost", "node": "node_trustzone"})
    data["connections"][0]["from_output"] = "button_pushed"
    data["connections"].append(
        {"direct": True, "to_module": "led_driver", "to_input": "toggle_led", "encryption": "rsa"}
    )
    desc.write_text(json.dumps(data, indent=4))
    state = tmp_path / "state" / "s.json"
    proc = veritee("deploy", "--check", desc, "--state", state, cwd=tmp_path)
    assert proc.returncode == 10, proc.stderr
    problems = proc.stdout.splitlines()
    assert len(problems) == 4, proc.stdout
    assert "connections[1].encryption: unknown encryption 'rsa'" in problems[0]
    assert "modules[2].source: source" in problems[1] and "ghost does not exist" in problems[1]
    assert (
        "connections[0].from_output: module 'button_driver' does not export output" in (problems[2])
    )
    assert (
        f"nodes[0]: node node_trustzone (http://127.0.0.1:{port}) did not answer" in (problems[3])
    )
    assert proc.stderr.strip().endswith("tz-to-tz.json: 4 problems")
    assert "veritee: warning: " in proc.stderr and "attestation manager" in proc.stderr
    assert "Traceback" not in proc.stderr
    # Nothing was built beside the descriptor or the state, nor any state written.
    assert not state.parent.exists() and not (tmp_path / ".veritee-build").exists()

    proc = veritee("deploy", "--check", "--json", desc, cwd=tmp_path)
    assert proc.returncode == 10
    report = json.loads(proc.stdout)
    assert not report["ok"] and report["built"] == 2 and report["answered"] == 0
    assert [p["stage"] for p in report["problems"]] == ["descriptor", "source", "endpoint", "node"]
    assert [p["field"] for p in report["problems"]] == [
        "connections[1].encryption",
        "modules[2].source",
        "connections[0].from_output",
        "nodes[0]",
    ]
    assert len(report["warnings"]) == 4


def test_deploy_check_of_a_malformed_descriptor_is_exit_2_with_every_field(tmp_path: Path) -> None:
    bad = tmp_path / "app.yaml"
    bad.write_text(
        "nodes:\n  - {name: n, host: 127.0.0.1, port: 0}\nmodules:\n"
        "  - {name: m, node: elsewhere, binary: m.wasm, timeout: -1}\n"
    )
    proc = veritee("deploy", "--check", bad)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.splitlines() == [
        f"{bad}:2: nodes[0].port: must be an integer from 1 to 65535",
        f"{bad}:4: modules[0].node: unknown node 'elsewhere' (nodes: n)",
        f"{bad}:4: modules[0].timeout: must be a number from 0.001 to 3600",
    ]
    # deploy itself names the first and counts the rest, on one line.
    proc = veritee("deploy", bad, "--state", tmp_path / "s.json")
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith(
        "nodes[0].port: must be an integer from 1 to 65535 (and 2 more: see 'veritee deploy "
        "--check')"
    )
    assert proc.stderr.count("\n") == 1


@pytest.fixture(scope="module")
def tz_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(
        tmp_path_factory.mktemp("ae-node") / "cluster", names=("node_trustzone",), verifier=False
    )
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def test_the_reactive_tools_trustzone_example_deploys_as_given(
    asset: Callable[[str], Path], tmp_path: Path, tz_node: LocalCluster, wasm: object
) -> None:
    node = tz_node.nodes["node_trustzone"]
    desc = _ae_copy(asset, tmp_path, node.port)
    proc = veritee("deploy", "--check", desc, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert "no problems (2 modules built, 1 node agents answered)" in proc.stderr

    state = tmp_path / "deployment.json"
    proc = veritee("deploy", desc, "--state", state, "--trust-home", node.home, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("veritee: warning: ")]
    assert [w.split(": ")[3] for w in warnings] == [
        "manager",
        "nodes[0].node_key",
        "modules[0].id, modules[1].id",
        "modules[0].uuid, modules[1].uuid",
    ]
    assert "9a04aa18" not in proc.stderr + proc.stdout  # the node key is never repeated
    assert "2/2 modules attested and connected, 1/1 connections" in proc.stderr

    # The button's entry emits button_pressed, which reaches led_driver.toggle_led.
    proc = veritee("call", "button_driver", "entry", "press", "--state", state, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    url = f"{node.url}/v1/public/tz-to-tz/led_driver/state"
    deadline = time.monotonic() + 30
    while (answer := httpx.get(url, timeout=10).text) != "led on after 1 toggles\n":
        assert time.monotonic() < deadline, answer
        time.sleep(0.1)


def test_the_reactive_tools_native_example_deploys_as_given(
    asset: Callable[[str], Path], tmp_path: Path, tz_node: LocalCluster, wasm: object
) -> None:
    """Modules with only type, name and node: their sources are found by name beside it."""
    node = tz_node.nodes["node_trustzone"]
    shutil.copytree(asset("ae/native"), tmp_path / "native")
    desc = tmp_path / "native" / "input.json"
    text = desc.read_text()
    assert text.count('"reactive_port": 5000') == 1
    desc.write_text(text.replace('"reactive_port": 5000', f'"reactive_port": {node.port}'))
    proc = veritee("deploy", "--check", desc, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no problems (2 modules built, 1 node agents answered)" in proc.stderr
    state = tmp_path / "deployment.json"
    proc = veritee("deploy", desc, "--state", state, "--trust-home", node.home, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "2/2 modules attested and connected, 2/2 connections" in proc.stderr
    proc = veritee("output", "user->sm2.input", "hello", "--state", state, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_node_start_never_provisions_a_device(tmp_path: Path) -> None:
    """The node agent is untrusted: it must never create or hold device secrets. Without a
    provisioned device, `node start` says how to make one and leaves the home empty of any."""
    home = tmp_path / "n"
    proc = subprocess.run(
        [sys.executable, "-m", "veritee", "node", "start", "--home", str(home), "--port", "0"],
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 3, proc.stderr
    assert b"device init' first" in proc.stderr
    assert b"Traceback" not in proc.stderr
    assert not (home / "device").exists()
    gone = subprocess.run(
        [sys.executable, "-m", "veritee", "node", "start", "--init"], capture_output=True
    )
    assert gone.returncode == 2 and b"No such option '--init'" in gone.stderr
