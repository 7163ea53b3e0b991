"""Sealed storage, the authenticated AOT cache, and secure boot, each attacked for real."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

from veritee.tee.device import REFERENCE_VALUES
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


def _installation(root: Path) -> tuple[Path, Path]:
    """A Python installation of its own whose veritee package is a copy of this checkout (the
    secure world runs the installed package: PYTHONPATH does not reach it). Returns its
    interpreter and the copy's package directory."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    copy = root / "src"
    shutil.copytree(
        REPO / "src" / "veritee", copy / "veritee", ignore=shutil.ignore_patterns("__pycache__")
    )
    python = root / "venv" / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # The copy first, then this environment's libraries (wasmtime, cryptography, ...).
    (Path(purelib) / "veritee.pth").write_text(f"{copy}\n{sysconfig.get_paths()['purelib']}\n")
    return python, copy / "veritee"


def test_secure_boot_refuses_a_modified_stage(tmp_path: Path) -> None:
    python, package = _installation(tmp_path)
    home = tmp_path / "home"

    def veritee(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [python, "-m", "veritee", "--home", str(home), *args],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
            check=False,
        )

    assert veritee("device", "init").returncode == 0  # the vendor signs this installation
    world = package / "tee" / "world.py"
    original = world.read_text()
    world.write_text(original + "\n# a backdoor would go here\n")  # the same user edits it
    proc = veritee("tee", "start")
    assert proc.returncode == 4, proc.stderr
    assert b"stage 'secure-world' was modified" in proc.stderr
    assert b"Traceback" not in proc.stderr
    assert not (home / "vtees" / "default" / "tee.sock").exists()
    # With secure boot off the modified world boots, and measured boot shows it in evidence.
    config = home / "device" / "tee-config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "secure_boot": False}))
    assert veritee("tee", "start").returncode == 0
    try:
        status = json.loads(veritee("tee", "status", "--json").stdout)
    finally:
        veritee("tee", "stop")
    log = status["monitor"]["boot_log"]
    booted = {e["component"]: bytes.fromhex(e["measurement"]) for e in log}
    refs = json.loads((home / "manufacturer" / REFERENCE_VALUES).read_text())["boot"]
    endorsed = {r["component"]: bytes.fromhex(r["measurement"]) for r in refs}
    assert booted["secure-world"] != endorsed["secure-world"]
    assert booted["interpreter"] == endorsed["interpreter"]
    # The unmodified secure world still boots on the same device, secure boot on.
    world.write_text(original)
    config.write_text(json.dumps({**json.loads(config.read_text()), "secure_boot": True}))
    assert veritee("tee", "start").returncode == 0
    veritee("tee", "stop")
