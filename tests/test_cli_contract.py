"""Issue 19 section 3: the CLI keeps its contract. Exit codes are the README's table, each bad
input gets one line (never a traceback), through the real CLI."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import socket
import subprocess
import sys
from pathlib import Path

import veritee
from veritee.errors import EXIT_CODES, Error

from .conftest import REPO, Device

OK_WAT = '(module (memory (export "memory") 1) (func (export "_start")))'


def _veritee(home: Path, *args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "veritee", "--home", str(home), *map(str, args)],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


def _one_line_error(proc: subprocess.CompletedProcess[bytes]) -> str:
    text = proc.stderr.decode()
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.startswith("veritee: error:")]
    assert len(lines) == 1, text
    return lines[0]


def test_help_shows_the_readme_table(tmp_path: Path) -> None:
    out = _veritee(tmp_path, "--help").stdout.decode()
    readme = " ".join((REPO / "README.md").read_text().split())
    for code, meaning in EXIT_CODES.items():
        assert f"{code:<3} {meaning}" in out
        # The README names the same family for the same code.
        family = meaning.split(":")[0].split(" (")[0]
        assert f"{code} {family}" in readme, (code, family)


def _error_classes() -> list[type[Error]]:
    for info in pkgutil.walk_packages(veritee.__path__, "veritee."):
        if info.name.endswith(("__main__", ".demo")) or ".cli" in info.name:
            continue
        try:
            importlib.import_module(info.name)
        except ImportError:  # an optional dependency of one module
            continue
    seen: list[type[Error]] = []
    todo: list[type[Error]] = [Error]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.append(sub)
                todo.append(sub)
    return seen


def test_every_error_class_is_on_the_table() -> None:
    off = {c.__qualname__: c.exit_code for c in _error_classes() if c.exit_code not in EXIT_CODES}
    assert not off, off
    assert 0 not in {c.exit_code for c in _error_classes()}


def test_no_bare_error_is_raised() -> None:
    """`raise Error(...)` has no family, hence no code on the table."""
    bare = re.compile(r"raise Error\(|= Error\(")
    hits = [
        f"{p.relative_to(REPO)}:{n}"
        for p in (REPO / "src" / "veritee").rglob("*.py")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if bare.search(line)
    ]
    assert not hits, hits


def test_nothing_running_is_the_secure_worlds_code(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert _veritee(home, "device", "init").returncode == 0
    for cmd in (("tee", "status"), ("tee", "stop"), ("vtee", "list")):
        proc = _veritee(home, *cmd)
        assert proc.returncode == 4, (cmd, proc.stderr)
        assert "no secure world is running" in _one_line_error(proc)


def test_nonce_of_the_wrong_size_is_usage(device: Device, tmp_path: Path) -> None:
    wat = tmp_path / "ok.wat"
    wat.write_text(OK_WAT)
    for nonce in ("00", "00" * 65):
        proc = device.cli("attest", wat, "--nonce", nonce, "-o", tmp_path / "ev.cbor")
        assert proc.returncode == 2, proc.stderr
        assert "nonce must be 8 to 64 bytes" in _one_line_error(proc)
    assert device.cli("attest", wat, "--nonce", "zz", "-o", tmp_path / "ev.cbor").returncode == 2
    # ... and the legitimate attestation still works.
    device.ok("attest", wat, "--nonce", "00" * 32, "-o", tmp_path / "ev.cbor")


def test_build_into_a_missing_directory(tmp_path: Path) -> None:
    wat = tmp_path / "ok.wat"
    wat.write_text(OK_WAT)
    proc = _veritee(tmp_path, "build", wat, "-o", tmp_path / "no" / "such" / "x.wasm")
    assert proc.returncode == 2
    assert "directory" in _one_line_error(proc) and "does not exist" in proc.stderr.decode()
    assert _veritee(tmp_path, "build", wat, "-o", tmp_path / "x.wasm").returncode == 0


def test_appraise_on_a_machine_with_no_device(device: Device, tmp_path: Path) -> None:
    """The relying party's machine has no device: it names the CA, or gets one line."""
    wat = tmp_path / "ok.wat"
    wat.write_text(OK_WAT)
    nonce = "11" * 32
    device.ok("attest", wat, "--nonce", nonce, "-o", tmp_path / "ev.cbor")
    elsewhere = tmp_path / "relying-party"
    proc = _veritee(elsewhere, "evidence", "appraise", tmp_path / "ev.cbor", "--nonce", nonce)
    assert proc.returncode == 2
    assert "no device at" in _one_line_error(proc) and "--ca" in proc.stderr.decode()
    # With the manufacturer's CA and reference values named, it appraises there.
    ok = _veritee(
        elsewhere,
        *("evidence", "appraise", tmp_path / "ev.cbor", "--nonce", nonce, "--module", wat),
        *("--ca", device.home / "manufacturer" / "ca.pem"),
        *("--refs", device.home / "manufacturer" / "reference-values.json"),
    )
    assert ok.returncode == 0, ok.stderr


def test_node_start_on_a_port_in_use_is_the_node_agents_code(tmp_path: Path) -> None:
    home = tmp_path / "node"
    assert _veritee(home, "device", "init").returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = _veritee(home, "node", "start", "--port", port)
    assert proc.returncode == 11, proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in _one_line_error(proc)
    # ... and the secure world it booted for the agent was stopped again.
    assert _veritee(home, "tee", "status").returncode == 4


def test_rich_output_is_not_wrapped_in_a_pipe(device: Device) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.run(
        [sys.executable, "-m", "veritee", "--home", str(device.home), "tee", "status"],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    status = json.loads(device.ok("tee", "status", "--json"))
    ueid = status["monitor"]["ueid"]
    assert any(ln.startswith(f"device {ueid}") and "monitor pid" in ln for ln in lines), lines
    for entry in status["monitor"]["boot_log"]:
        component, measurement = entry["component"], entry["measurement"]
        assert any(component in ln and measurement in ln for ln in lines), (entry, lines)


def test_the_demo_narration_is_not_wrapped_in_a_pipe(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.run(
        [sys.executable, "-m", "veritee", "demo", "--single-device", "--workdir", tmp_path / "d"],
        capture_output=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    # Old code: the narration wrapped at 80 columns, the certificate's subject over two lines.
    (cert,) = [ln for ln in lines if "device certificate: CN=" in ln]
    assert "O=Veritee emulated devices" in cert
    # Headings stay a readable width (not the pipe's 1000 columns).
    headings = [ln for ln in lines if ln.startswith("1. Build modules")]
    assert headings and all(80 <= len(ln) <= 100 for ln in headings), headings


def test_json_results_and_json_failures(tmp_path: Path) -> None:
    """Every command that prints data takes --json; a failure under --json is a JSON
    result too, with the same exit code and the one line on stderr."""
    home = tmp_path / "home"
    init = _veritee(home, "device", "init", "--json")
    assert init.returncode == 0, init.stderr
    device = json.loads(init.stdout)
    assert device["ok"] and len(bytes.fromhex(device["ueid"])) == 33
    again = _veritee(home, "device", "init", "--json")
    assert again.returncode == 3, again.stderr
    assert json.loads(again.stdout)["exit_code"] == 3 and _one_line_error(again)
    signed = json.loads(_veritee(home, "device", "sign-boot", "--json").stdout)
    assert {s["component"] for s in signed["signed"]} >= {"secure-world", "wasm-runtime"}

    wat = tmp_path / "ok.wat"
    wat.write_text(OK_WAT)
    built = json.loads(_veritee(home, "build", wat, "-o", tmp_path / "ok.wasm", "--json").stdout)
    measured = json.loads(_veritee(home, "measure", tmp_path / "ok.wasm", "--json").stdout)
    assert built["measurement"] == measured["measurement"] and built["bytes"] > 0

    # Nothing running: the JSON failure carries the secure world's code.
    attest = _veritee(home, "attest", wat, "-o", tmp_path / "ev.cbor", "--json")
    assert attest.returncode == 4
    failure = json.loads(attest.stdout)
    assert failure == {
        "ok": False,
        "error": failure["error"],
        "error_type": failure["error_type"],
        "exit_code": 4,
    }
    assert _one_line_error(attest).endswith(failure["error"])
    try:
        assert _veritee(home, "tee", "start").returncode == 0
        created = _veritee(home, "vtee", "create", "tenant-a", "--json")
        assert created.returncode == 0, created.stderr
        assert json.loads(created.stdout)["name"] == "tenant-a"
        nonce = "22" * 32
        ev = tmp_path / "ev.cbor"
        attested = _veritee(home, "attest", wat, "--nonce", nonce, "-o", ev, "--json")
        assert json.loads(attested.stdout)["nonce"] == nonce
        assert json.loads(attested.stdout)["measurement"] == measured["measurement"]
    finally:
        _veritee(home, "tee", "stop")


def test_provision_show_takes_json_after_the_subcommand(tmp_path: Path) -> None:
    """The help's example, run as written against a real verifier: it failed with "No such
    option: --json" when --json was taken only before the subcommand."""
    from .test_verifier_service import start_verifier

    home = tmp_path / "home"
    home.mkdir()
    server = start_verifier(home, tmp_path / "verifier")
    try:
        base = ("verifier", "provision", "--verifier", server.url, "--token", server.token)
        proc = server.cli(home, *base, "show", "--sessions", "10", "--json")
        assert proc.returncode == 0, proc.stderr
        state = json.loads(proc.stdout)
        assert "trust-anchors" in state and state["sessions"] == []
        # Before the subcommand, as before.
        before = server.cli(home, *base[:2], "--json", *base[2:], "show")
        assert before.returncode == 0 and "trust-anchors" in json.loads(before.stdout)
    finally:
        server.stop()
