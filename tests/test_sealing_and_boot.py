"""Sealed storage, the authenticated AOT cache, and secure boot, each attacked for real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from veritee.tee.ta import WasmSession
from veritee.wasm.runtime import measure

from .conftest import REPO, Device


def _storage(dev: Device, module: bytes) -> Path:
    return dev.home / "vtees" / "default" / "storage" / measure(module).hex()


def _with_custom_section(
    module: bytes, name: bytes = b"veritee-test", payload: bytes = b"x"
) -> bytes:
    """The same code, another measurement: append a custom section (valid Wasm)."""
    body = bytes([len(name)]) + name + payload
    assert len(body) < 128
    return module + b"\x00" + bytes([len(body)]) + body


def test_sealed_counter_survives_restarts(fresh_device: Device, wasm: Callable[..., Path]) -> None:
    counter = wasm("examples/counter/counter.c")
    assert "count = 1" in fresh_device.ok("run", counter)
    assert "count = 2" in fresh_device.ok("run", counter)
    fresh_device.stop()
    fresh_device.start()
    assert "count = 3" in fresh_device.ok("run", counter)
    blob = (_storage(fresh_device, counter.read_bytes()) / "counter.sealed").read_bytes()
    assert b"3" not in blob[:1] and len(blob) > 29  # opaque, version byte first


def test_another_module_cannot_unseal(
    fresh_device: Device, wasm: Callable[..., Path], tmp_path: Path
) -> None:
    counter = wasm("examples/counter/counter.c")
    fresh_device.ok("run", counter)
    original = counter.read_bytes()
    modified = _with_custom_section(original)
    other = tmp_path / "counter-modified.wasm"
    other.write_bytes(modified)
    # The attacker (the normal world owns the disk) copies the sealed state across.
    theirs = _storage(fresh_device, modified)
    theirs.mkdir(parents=True, exist_ok=True)
    shutil.copy(_storage(fresh_device, original) / "counter.sealed", theirs / "counter.sealed")
    proc = fresh_device.cli("run", other)
    assert proc.returncode == 1
    assert b"cannot be unsealed" in proc.stderr
    assert b"count =" not in proc.stdout


def test_tampered_sealed_blob_is_rejected(fresh_device: Device, wasm: Callable[..., Path]) -> None:
    counter = wasm("examples/counter/counter.c")
    fresh_device.ok("run", counter)
    path = _storage(fresh_device, counter.read_bytes()) / "counter.sealed"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0x80
    path.write_bytes(bytes(blob))
    proc = fresh_device.cli("run", counter)
    assert proc.returncode == 1
    assert b"cannot be unsealed" in proc.stderr


def test_sealed_data_does_not_open_on_another_device(
    fresh_device: Device, device: Device, wasm: Callable[..., Path]
) -> None:
    counter = wasm("examples/counter/counter.c")
    fresh_device.ok("run", counter)
    blob = _storage(fresh_device, counter.read_bytes()) / "counter.sealed"
    target = _storage(device, counter.read_bytes())
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(blob, target / "counter.sealed")
    try:
        proc = device.cli("run", counter)
        assert proc.returncode == 1
        assert b"cannot be unsealed" in proc.stderr
    finally:
        (target / "counter.sealed").unlink()


def test_tampered_aot_artifact_is_rejected_and_recompiled(
    fresh_device: Device, wasm: Callable[..., Path]
) -> None:
    hello = wasm("examples/hello/hello.c").read_bytes()
    with fresh_device.context() as ctx:
        assert WasmSession(ctx).load(hello)["from_cache"] is False
    fresh_device.stop()
    fresh_device.start()
    with fresh_device.context() as ctx:
        assert WasmSession(ctx).load(hello)["from_cache"] is True  # the cache works
    fresh_device.stop()
    artifact = fresh_device.home / "vtees" / "default" / "cache" / f"{measure(hello).hex()}.cwasm"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip a byte of native code
    artifact.write_bytes(bytes(data))
    fresh_device.start()
    with fresh_device.context() as ctx:
        session = WasmSession(ctx)
        assert session.load(hello)["from_cache"] is False
        assert session.run(["again"]).exit_code == 0
    log = (fresh_device.home / "tee.log").read_text()
    assert "failed authentication; recompiling" in log
    assert artifact.read_bytes() != bytes(data)


def test_secure_boot_refuses_a_modified_stage(tmp_path: Path) -> None:
    dev = Device(tmp_path / "home")
    dev.ok("device", "init")  # the vendor signs the secure world as it is in this checkout
    copy = tmp_path / "src"
    shutil.copytree(
        REPO / "src" / "veritee", copy / "veritee", ignore=shutil.ignore_patterns("__pycache__")
    )
    world = copy / "veritee" / "tee" / "world.py"
    world.write_text(world.read_text() + "\n# a backdoor would go here\n")
    env = {**os.environ, "PYTHONPATH": str(copy)}
    proc = subprocess.run(
        [sys.executable, "-m", "veritee", "--home", str(dev.home), "tee", "start"],
        env=env,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 4, proc.stderr
    assert b"stage 'secure-world' was modified" in proc.stderr
    assert b"Traceback" not in proc.stderr
    assert not (dev.home / "vtees" / "default" / "tee.sock").exists()
    # The unmodified secure world still boots on the same device.
    dev.start()
    dev.stop()
