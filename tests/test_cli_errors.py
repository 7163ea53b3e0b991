"""Bad input gets one clear line and an exit code, never a traceback, and the TEE survives."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import REPO, Device


def _one_line_error(stderr: bytes) -> str:
    text = stderr.decode()
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.startswith("veritee: error:")]
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\x00asm\x01\x00\x00\x00\xff\xff\xff", "does not validate"),
        (b"\x7fELF\x02\x01\x01garbage\xff\xfe", "not a Wasm binary"),
        (b'(module (func (export "_start")', "WAT text does not parse"),
        (b'(module (memory (export "memory") 1))', "no '_start' export"),
    ],
)
def test_malformed_module(device: Device, tmp_path: Path, content: bytes, expected: str) -> None:
    bad = tmp_path / "bad.wasm"
    bad.write_bytes(content)
    proc = device.cli("run", bad)
    assert proc.returncode == 5
    assert expected in _one_line_error(proc.stderr)


def test_module_importing_what_is_not_offered(device: Device) -> None:
    proc = device.cli("run", REPO / "tests" / "assets" / "c" / "unoffered.wat")
    assert "imports env.launch_missiles, which Veritee does not offer" in _one_line_error(
        proc.stderr
    )


def test_module_whose_initial_memory_exceeds_its_limit(device: Device, tmp_path: Path) -> None:
    huge = tmp_path / "huge.wat"
    huge.write_text('(module (memory (export "memory") 2000) (func (export "_start")))')
    proc = device.cli("run", "--max-memory", "64", huge)
    assert proc.returncode == 5
    assert "more memory than its limit of 64 MiB" in _one_line_error(proc.stderr)
    assert device.cli("run", REPO / "tests" / "assets" / "c" / "unoffered.wat").returncode != 0
    # ... and the secure world is still serving.
    ok = tmp_path / "ok.wat"
    ok.write_text('(module (memory (export "memory") 1) (func (export "_start")))')
    assert device.cli("run", ok).returncode == 0


def test_missing_device(tmp_path: Path) -> None:
    dev = Device(tmp_path / "nothing-here")
    proc = dev.cli("tee", "start")
    assert proc.returncode == 3
    assert "veritee device init" in _one_line_error(proc.stderr)


def test_secure_world_not_running(tmp_path: Path, wasm: Callable[..., Path]) -> None:
    dev = Device(tmp_path / "home")
    dev.ok("device", "init")
    proc = dev.cli("run", wasm("examples/hello/hello.c"))
    assert proc.returncode == 4
    assert "not running" in _one_line_error(proc.stderr)


def test_device_init_refuses_to_overwrite(device: Device) -> None:
    proc = device.cli("device", "init")
    assert proc.returncode == 3
    assert "--force" in _one_line_error(proc.stderr)


def test_unknown_vtee(device: Device, wasm: Callable[..., Path]) -> None:
    proc = device.cli("run", "--vtee", "nope", wasm("examples/hello/hello.c"))
    assert proc.returncode == 4
    assert "'nope' is not running" in _one_line_error(proc.stderr)


def test_bad_nonce_and_bad_evidence_files(
    device: Device, tmp_path: Path, wasm: Callable[..., Path]
) -> None:
    hello = wasm("examples/hello/hello.c")
    proc = device.cli("attest", hello, "--nonce", "zz", "-o", tmp_path / "ev.cbor")
    assert proc.returncode == 2
    assert "--nonce must be hex" in _one_line_error(proc.stderr)
    short = device.cli("attest", hello, "--nonce", "00", "-o", tmp_path / "ev.cbor")
    assert "nonce must be 8 to 64 bytes" in _one_line_error(short.stderr)
    garbage = tmp_path / "garbage.cbor"
    garbage.write_bytes(b"\x9f\xff\x00 not evidence")
    for cmd in (
        ("evidence", "show", garbage),
        ("evidence", "appraise", garbage, "--nonce", "00" * 32),
    ):
        proc = device.cli(*cmd)
        assert proc.returncode == 7
        _one_line_error(proc.stderr)


def test_bad_flag_values(device: Device, wasm: Callable[..., Path]) -> None:
    hello = wasm("examples/hello/hello.c")
    proc = device.cli("run", "--dir", "/definitely/not/here", hello)
    assert proc.returncode == 2
    assert "is not a directory" in _one_line_error(proc.stderr)
    proc = device.cli("run", "--max-memory", "999999", hello)
    assert "memory limit must be" in _one_line_error(proc.stderr)
