"""Configuration files for the services (`--config`, a `serve:` section), environment
overrides, and the `check` commands, through the real CLI and real servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from veritee.verifier.errors import VerifierRefused

from .conftest import Device
from .test_verifier_service import start_verifier


def _veritee(
    home: Path, *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "veritee", "--home", str(home), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_the_verifier_runs_with_what_its_file_says(
    device: Device, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "verifier.yaml"
    config.write_text("serve:\n  server-nonces-only: true\n  session-ttl: 30\n")
    server = start_verifier(device.home, tmp_path / "state", "--config", config)
    try:
        with server.client() as client:
            with pytest.raises(VerifierRefused):  # the file's server-nonces-only holds
                client.new_session(nonce=b"n" * 32)
            client.new_session()  # a server nonce still works
    finally:
        server.stop()
    # The same from the environment, over a file that says otherwise.
    config.write_text("serve:\n  server-nonces-only: false\n")
    monkeypatch.setenv("VERITEE_VERIFIER_SERVER_NONCES_ONLY", "true")
    server = start_verifier(device.home, tmp_path / "state", "--config", config)
    try:
        with server.client() as client, pytest.raises(VerifierRefused):
            client.new_session(nonce=b"n" * 32)
    finally:
        server.stop()


def test_the_command_line_wins_over_the_environment_over_the_file(tmp_path: Path) -> None:
    config = tmp_path / "verifier.yaml"
    config.write_text("serve:\n  port: 18001\n  workers: 3\n  session-ttl: 20\n")
    env = {"VERITEE_VERIFIER_PORT": "18002", "VERITEE_VERIFIER_WORKERS": "2"}
    proc = _veritee(tmp_path / "home", "verifier", "check", "--config", config, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["settings"]
    assert report["port"] == {"value": 18002, "source": "$VERITEE_VERIFIER_PORT"}
    assert report["workers"] == {"value": 2, "source": "$VERITEE_VERIFIER_WORKERS"}
    assert report["session-ttl"]["value"] == 20.0
    assert report["session-ttl"]["source"].endswith("verifier.yaml: serve.session-ttl")
    assert report["host"] == {"value": "127.0.0.1", "source": "default"}

    # The serve command itself: a port on its command line beats the environment's, which
    # beats the file's (the ready file says where it listened).
    ready = tmp_path / "ready.json"
    config.write_text(f"serve:\n  port: 18001\n  ready-file: {ready}\n")
    serve = ["serve", "--config", str(config), "--port", "0"]
    proc2 = subprocess.Popen(
        [sys.executable, "-m", "veritee", "--home", str(tmp_path / "home"), "verifier", *serve],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (ready.exists() and ready.read_text()) and time.monotonic() < deadline:
            assert proc2.poll() is None, proc2.stderr.read() if proc2.stderr else ""
            time.sleep(0.1)
        url = json.loads(ready.read_text())["url"]
        assert not url.endswith((":18001", ":18002"))
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
    finally:
        os.killpg(proc2.pid, signal.SIGTERM)
        proc2.wait(20)


def test_check_lists_every_problem_of_a_file_at_once(tmp_path: Path) -> None:
    config = tmp_path / "verifier.yaml"
    config.write_text(
        "serve:\n  port: 99999\n  tls-cert: missing.pem\n  colour: blue\n"
        "  server-nonces-only: maybe\n  workers: [1, 2]\nlogging: {}\n"
    )
    env = {"VERITEE_VERIFIER_SESSION_TTL": "forever"}
    proc = _veritee(tmp_path / "home", "verifier", "check", "--config", config, env=env)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    problems = [ln for ln in proc.stderr.splitlines() if ln.startswith("  problem:")]
    said = "\n".join(problems)
    assert len(problems) == 7, said
    assert "serve.port: 99999 is not in the range" in said
    assert f"serve.tls-cert: File '{tmp_path / 'missing.pem'}' does not exist" in said
    assert "serve.colour: not an option of this service" in said
    assert "'maybe' is not true or false" in said
    assert "serve.workers: one value, not a list" in said
    assert "unknown section 'logging'" in said
    assert "$VERITEE_VERIFIER_SESSION_TTL: 'forever'" in said
    assert proc.stderr.splitlines()[-1] == (
        "veritee: error: 7 problem(s) in the verifier's configuration"
    )
    # serve refuses the same file before it starts, with the first problem and a pointer.
    serve = _veritee(tmp_path / "home", "verifier", "serve", "--config", config, env=env)
    assert serve.returncode == 2 and "Traceback" not in serve.stderr
    assert "'veritee verifier check' lists them" in serve.stderr
    # Not YAML, and not a mapping.
    config.write_text("serve: [port")
    bad = _veritee(tmp_path / "home", "verifier", "check", "--config", config)
    assert bad.returncode == 2 and "not valid YAML (line 1)" in bad.stderr
    config.write_text("- port\n")
    bad = _veritee(tmp_path / "home", "verifier", "check", "--config", config, "--json")
    assert bad.returncode == 2 and "a configuration is a mapping" in bad.stdout + bad.stderr


def test_check_finds_a_tls_key_that_does_not_match_and_a_dead_database(
    device: Device, tmp_path: Path
) -> None:
    from veritee import servicetls

    one = servicetls.make_self_signed(tmp_path / "one", ["localhost"])
    two = servicetls.make_self_signed(tmp_path / "two", ["localhost"])
    config = tmp_path / "verifier.yaml"
    config.write_text(
        f"serve:\n  tls-cert: {one.cert}\n  tls-key: {two.key}\n"
        "  database: postgresql+psycopg://veritee:hunter2@127.0.0.1:9/veritee\n"
    )
    proc = _veritee(device.home, "verifier", "check", "--config", config)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    problems = [ln for ln in proc.stderr.splitlines() if ln.startswith("  problem:")]
    assert len(problems) == 2, problems
    assert any(
        "database postgresql+psycopg://veritee:***@127.0.0.1:9/veritee" in p for p in problems
    )
    assert "hunter2" not in proc.stdout + proc.stderr
    # A matching pair is fine.
    config.write_text(f"serve:\n  tls-cert: {one.cert}\n  tls-key: {one.key}\n")
    ok = _veritee(device.home, "verifier", "check", "--config", config)
    assert ok.returncode == 0, ok.stderr
    assert "OK: it would start" in ok.stdout


def test_node_check_and_node_start_from_a_file(device: Device, tmp_path: Path) -> None:
    # An unprovisioned home: check says so and how to provision it.
    config = tmp_path / "node.yaml"
    config.write_text(f"serve:\n  home: {tmp_path / 'empty'}\n  port: 0\n")
    proc = _veritee(device.home, "node", "check", "--config", config)
    assert proc.returncode == 2
    assert "holds no provisioned device" in proc.stderr and "device init" in proc.stderr

    ready = tmp_path / "ready.json"
    config.write_text(
        f"serve:\n  home: {device.home}\n  port: 0\n  events-port: 0\n  ready-file: {ready}\n"
    )
    proc = _veritee(tmp_path, "node", "check", "--config", config, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["settings"]["home"]["value"] == str(device.home)

    agent = subprocess.Popen(
        [sys.executable, "-m", "veritee", "node", "start", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (ready.exists() and ready.read_text()) and time.monotonic() < deadline:
            assert agent.poll() is None, "node start exited"
            time.sleep(0.1)
        url = json.loads(ready.read_text())["url"]
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
    finally:
        os.killpg(agent.pid, signal.SIGTERM)
        agent.wait(30)


def test_the_secret_service_reads_its_serve_section(device: Device, tmp_path: Path) -> None:
    maker = device.home / "manufacturer"
    trust = (
        f"trust:\n  ca: [{maker / 'ca.pem'}]\n"
        f"  reference_values: [{maker / 'reference-values.json'}]\n"
        "secrets:\n  - {name: k, value_hex: '00', allow: {names: [hello]}}\n"
    )
    config = tmp_path / "secrets.yaml"
    config.write_text(trust + "serve:\n  port: 0\n  host: 127.0.0.1\n")
    proc = _veritee(tmp_path / "home", "secrets", "check", "--config", config)
    assert proc.returncode == 0, proc.stderr
    assert "serves http://127.0.0.1:0" in proc.stdout
    config.write_text(trust + "serve:\n  port: 0\n  tls-key: k.pem\n  verbose: true\n")
    proc = _veritee(tmp_path / "home", "secrets", "check", "--config", config)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "serve.verbose: not an option of this service" in proc.stderr
    assert "serve.tls-key: File" in proc.stderr
    serve = _veritee(tmp_path / "home", "secrets", "serve", "--config", config)
    assert serve.returncode == 2 and "serve.verbose" in serve.stderr


def test_a_configuration_other_users_may_write_is_refused(tmp_path: Path) -> None:
    # The attack: another local user rewrites a group- or world-writable file so that the
    # verifier takes client nonces again (or serves their TLS key, or their database).
    config = tmp_path / "verifier.yaml"
    config.write_text("serve:\n  server-nonces-only: true\n")
    for mode in (0o666, 0o620):
        config.chmod(mode)
        for command in ("check", "serve"):
            proc = _veritee(tmp_path / "home", "verifier", command, "--config", config)
            assert proc.returncode == 2, proc.stderr
            assert f"writable by other users (mode {mode:o})" in proc.stderr
            assert "chmod go-w" in proc.stderr and "Traceback" not in proc.stderr
    config.chmod(0o600)
    assert _veritee(tmp_path / "home", "verifier", "check", "--config", config).returncode == 0
