"""Modules run inside a real secure-world process, reached through the real CLI and Client API."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from veritee.tee import client as teec
from veritee.tee.ta import WasmSession
from veritee.wasm.runtime import measure

from .conftest import Device

# Not about a backend's specifics: the same on an emulated and on a TPM-rooted device.
BACKENDS = ("emulated", "tpm")

HANG_BOUND = 60  # seconds; generous, catches a hang only


def test_module_runs_and_output_comes_back(device: Device, wasm: Callable[..., Path]) -> None:
    hello = wasm("examples/hello/hello.c")
    proc = device.cli("run", "--env", "GREETING=hi", hello, "--", "alpha", "beta")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert "alpha" in out and "beta" in out
    assert "GREETING=hi" in out


def test_exit_code_becomes_the_commands(device: Device, wasm: Callable[..., Path]) -> None:
    proc = device.cli("run", wasm("examples/hello/hello.c"), "--exit", "42")
    assert proc.returncode == 42


def test_stdin_is_passed_through(device: Device, wasm: Callable[..., Path]) -> None:
    proc = device.cli("run", wasm("tests/assets/c/echo_stdin.c"), input=b"attested bytes\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"ATTESTED BYTES\n"


def test_wasi_files_dirs_sleep_and_exit(
    device: Device, wasm: Callable[..., Path], tmp_path: Path
) -> None:
    proc = device.cli("run", "--dir", f"{tmp_path}::/work", wasm("tests/assets/c/files.c"), "/work")
    out = proc.stdout.decode()
    assert proc.returncode == 7, proc.stderr
    assert "read back: written from inside the TEE" in out
    assert "entry: note.txt" in out
    assert "slept: yes" in out
    # Only granted directories are reachable: the host's /etc is not.
    assert "host file reachable: no" in out
    assert (tmp_path / "sub" / "note.txt").read_text() == "written from inside the TEE\n"


def test_one_byte_changes_the_measurement(
    device: Device, wasm: Callable[..., Path], tmp_path: Path
) -> None:
    original = wasm("examples/hello/hello.c").read_bytes()
    modified = bytearray(original)
    modified[-1] ^= 0x01  # last byte of a custom/name section: still a valid module
    path = tmp_path / "modified.wasm"
    path.write_bytes(bytes(modified))
    m1 = device.ok("measure", wasm("examples/hello/hello.c")).strip()
    m2 = device.ok("measure", path).strip()
    assert m1 == measure(original).hex()
    assert m2 == measure(bytes(modified)).hex()
    assert m1 != m2
    with device.context() as ctx:
        session = WasmSession(ctx)
        info = session.load(bytes(modified), name="modified")
        assert info["measurement"].hex() == m2


def test_wat_text_is_accepted(device: Device, tmp_path: Path) -> None:
    wat = tmp_path / "exit3.wat"
    wat.write_text(
        '(module (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))'
        ' (memory (export "memory") 1) (func (export "_start") (call $exit (i32.const 3))))'
    )
    assert device.cli("run", wat).returncode == 3


def test_memory_bomb_is_stopped_while_another_module_runs(
    device: Device, wasm: Callable[..., Path]
) -> None:
    bomb = device.cli("run", "--max-memory", "32", wasm("tests/assets/c/membomb.c"))
    assert bomb.returncode != 0
    assert b"memory limit of 32 MiB reached" in bomb.stderr
    # The secure world is still there and serving.
    assert device.cli("run", wasm("examples/hello/hello.c")).returncode == 0


def test_endless_loop_is_stopped_and_others_are_not_held_up(
    device: Device, wasm: Callable[..., Path]
) -> None:
    spin = wasm("tests/assets/c/spin.c")
    result: dict[str, subprocess.CompletedProcess[bytes]] = {}
    runner = threading.Thread(
        target=lambda: result.update(p=device.cli("run", "--timeout", "3", spin)), daemon=True
    )
    runner.start()
    time.sleep(0.5)  # let the spinner get going
    hello = device.cli("run", wasm("examples/hello/hello.c"), "quick")
    assert hello.returncode == 0
    assert runner.is_alive(), "the spinning module should still be running"
    runner.join(HANG_BOUND)
    proc = result["p"]
    assert proc.returncode != 0
    assert b"time budget of 3 s exhausted" in proc.stderr
    assert b"Traceback" not in proc.stderr


def test_client_that_disconnects_does_not_leave_its_module_running(
    device: Device, wasm: Callable[..., Path]
) -> None:
    spin = wasm("tests/assets/c/spin.c")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "veritee",
            "--home",
            str(device.home),
            "run",
            "--timeout",
            "600",
            str(spin),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + HANG_BOUND
    while time.monotonic() < deadline and not _running(device, spin):
        time.sleep(0.1)
    assert _running(device, spin), "spinner never started"
    proc.kill()
    proc.wait()
    while time.monotonic() < deadline and _running(device, spin):
        time.sleep(0.1)
    assert not _running(device, spin)


def _running(device: Device, module: Path) -> bool:
    from veritee.tee.ta import status

    wanted = measure(module.read_bytes())
    with device.context() as ctx:
        return any(m["measurement"] == wanted and m["running"] for m in status(ctx)["modules"])


def test_sessions_belong_to_their_connection(device: Device, wasm: Callable[..., Path]) -> None:
    hello = wasm("examples/hello/hello.c").read_bytes()
    with device.context() as a, device.context() as b:
        mine = WasmSession(a)
        mine.load(hello)
        # Another client guessing the session id gets nothing.
        intruder = teec.Session(b, mine.session.id)
        with pytest.raises(teec.TeecError) as err:
            intruder.invoke(0x3, teec.Operation([teec.memref_in(b"n" * 32)]))
        assert err.value.code == teec.TEEC_ERROR_BAD_STATE


def test_unknown_trusted_app_is_reported_with_origin(device: Device) -> None:
    with device.context() as ctx, pytest.raises(teec.TeecError) as err:
        ctx.open_session("00000000-0000-0000-0000-000000000000")
    assert err.value.code == teec.TEEC_ERROR_ITEM_NOT_FOUND
    assert err.value.origin == teec.TEEC_ORIGIN_TEE


def test_status_lists_boot_measurements(device: Device) -> None:
    out = device.ok("tee", "status", "--json")
    assert '"secure-world"' in out and '"wasm-runtime"' in out and '"tee-config"' in out
