"""Virtual TEEs on one device: separate identities, storage and sessions; attacks fail."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from veritee.evidence.appraisal import ReferenceValues, TrustAnchors, appraise, verify
from veritee.evidence.claims import Evidence
from veritee.evidence.errors import BadSignature
from veritee.tee import client as teec
from veritee.tee.ta import WasmSession
from veritee.wasm.runtime import measure

from .conftest import Device

# Not about a backend's specifics: the same on an emulated and on a TPM-rooted device.
BACKENDS = ("emulated", "tpm")

NONCE = b"n" * 32


def _evidence(dev: Device, vtee: str, module: bytes) -> bytes:
    with dev.context(vtee) as ctx:
        session = WasmSession(ctx)
        session.load(module, name="hello")
        return session.attest(NONCE)


def _anchors(dev: Device) -> TrustAnchors:
    return TrustAnchors.from_pem((dev.home / "manufacturer" / "ca.pem").read_bytes())


def _refs(dev: Device, module: bytes) -> ReferenceValues:
    boot = json.loads((dev.home / "manufacturer" / "reference-values.json").read_text())
    return ReferenceValues.from_json(boot).merge(ReferenceValues({}, {measure(module): "hello"}))


@pytest.fixture
def two_vtees(fresh_device: Device) -> Device:
    fresh_device.ok("vtee", "create", "tenant-a", "--memory", "512", "--workers", "1", "--start")
    fresh_device.ok("vtee", "create", "tenant-b", "--memory", "512", "--workers", "1", "--start")
    return fresh_device


# Appraised against the emulated device's own manufacturer CA (TPM: tests/test_tpm_device.py).
@pytest.mark.emulated_backend
def test_each_vtee_has_its_own_identity_and_the_chain_verifies(
    two_vtees: Device, wasm: Callable[..., Path]
) -> None:
    hello = wasm("examples/hello/hello.c").read_bytes()
    results = {
        name: appraise(
            _evidence(two_vtees, name, hello),
            _anchors(two_vtees),
            _refs(two_vtees, hello),
            nonce=NONCE,
        )
        for name in ("default", "tenant-a", "tenant-b")
    }
    ids = {r.platform.vtee_id for r in results.values()}
    keys = {json.dumps(sorted(map(str, r.platform.vtee_key.items()))) for r in results.values()}
    assert len(ids) == 3 and len(keys) == 3
    assert {r.platform.vtee_name for r in results.values()} == {"default", "tenant-a", "tenant-b"}
    # One device under all of them.
    assert len({r.platform.ueid for r in results.values()}) == 1
    proc = two_vtees.cli("run", "--vtee", "tenant-a", wasm("examples/hello/hello.c"), "x")
    assert proc.returncode == 0 and b"argv[1] = x" in proc.stdout


# Appraised against the emulated device's own manufacturer CA (TPM: tests/test_tpm_device.py).
@pytest.mark.emulated_backend
def test_a_vtee_presenting_another_vtees_endorsement_fails(
    two_vtees: Device, wasm: Callable[..., Path]
) -> None:
    hello = wasm("examples/hello/hello.c").read_bytes()
    a = Evidence.decode(_evidence(two_vtees, "tenant-a", hello))
    b = Evidence.decode(_evidence(two_vtees, "tenant-b", hello))
    # B's tokens under A's platform endorsement: the vtee token is not signed by A's key.
    forged = Evidence(a.platform, b.vtee, b.module).encode()
    with pytest.raises(BadSignature, match="vtee token"):
        verify(forged, _anchors(two_vtees), nonce=NONCE)
    # A module token of one vTEE's module under another vTEE's token: wrong key.
    forged = Evidence(a.platform, a.vtee, b.module).encode()
    with pytest.raises(BadSignature, match="module token"):
        verify(forged, _anchors(two_vtees), nonce=NONCE)


def test_sealed_data_does_not_cross_vtees(two_vtees: Device, wasm: Callable[..., Path]) -> None:
    counter = wasm("examples/counter/counter.c")
    assert "count = 1" in two_vtees.ok("run", "--vtee", "tenant-a", counter)
    m = measure(counter.read_bytes()).hex()
    src = two_vtees.home / "vtees" / "tenant-a" / "storage" / m / "counter.sealed"
    dst = two_vtees.home / "vtees" / "tenant-b" / "storage" / m
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst / "counter.sealed")
    proc = two_vtees.cli("run", "--vtee", "tenant-b", counter)
    assert proc.returncode == 1
    assert b"cannot be unsealed" in proc.stderr


def test_a_client_of_one_vtee_cannot_reach_sessions_of_another(
    two_vtees: Device, wasm: Callable[..., Path]
) -> None:
    hello = wasm("examples/hello/hello.c").read_bytes()
    with two_vtees.context("tenant-a") as a, two_vtees.context("tenant-b") as b:
        victim = WasmSession(a)
        victim.load(hello)
        intruder = teec.Session(b, victim.session.id)
        with pytest.raises(teec.TeecError) as err:
            intruder.invoke(0x3, teec.Operation([teec.memref_in(NONCE)]))
        assert err.value.code == teec.TEEC_ERROR_BAD_STATE


def test_host_editing_a_vtee_config_does_not_keep_its_identity(two_vtees: Device) -> None:
    two_vtees.ok("vtee", "stop", "tenant-a")
    record_path = two_vtees.home / "vtees" / "tenant-a" / "vtee.json"
    record = json.loads(record_path.read_text())
    record["config"]["memory_mb"] = 8192  # the host grants itself more
    record_path.write_text(json.dumps(record))
    proc = two_vtees.cli("vtee", "start", "tenant-a")
    assert proc.returncode != 0
    assert b"record was altered" in proc.stderr


# Appraised against the emulated device's own manufacturer CA (TPM: tests/test_tpm_device.py).
@pytest.mark.emulated_backend
def test_destroyed_vtee_is_gone_and_a_recreated_one_is_new(
    two_vtees: Device, wasm: Callable[..., Path], tmp_path: Path
) -> None:
    hello = wasm("examples/hello/hello.c").read_bytes()
    before = verify(_evidence(two_vtees, "tenant-a", hello), _anchors(two_vtees), nonce=NONCE)
    backup = tmp_path / "vtee.json"
    shutil.copy(two_vtees.home / "vtees" / "tenant-a" / "vtee.json", backup)
    two_vtees.ok("vtee", "destroy", "tenant-a", "--yes")
    # The host restores the destroyed vTEE's record: its keys cannot come back.
    (two_vtees.home / "vtees" / "tenant-a").mkdir(parents=True)
    shutil.copy(backup, two_vtees.home / "vtees" / "tenant-a" / "vtee.json")
    proc = two_vtees.cli("vtee", "start", "tenant-a")
    assert proc.returncode != 0
    assert b"seed is gone" in proc.stderr
    shutil.rmtree(two_vtees.home / "vtees" / "tenant-a")
    two_vtees.ok("vtee", "create", "tenant-a", "--workers", "1", "--start")
    after = verify(_evidence(two_vtees, "tenant-a", hello), _anchors(two_vtees), nonce=NONCE)
    assert after.platform.vtee_name == before.platform.vtee_name == "tenant-a"
    assert after.platform.vtee_id != before.platform.vtee_id
    assert after.platform.vtee_key != before.platform.vtee_key


def test_vtee_memory_is_shared_by_its_modules(two_vtees: Device, tmp_path: Path) -> None:
    ok = tmp_path / "ok.wat"
    ok.write_text('(module (memory (export "memory") 1) (func (export "_start")))')
    module = ok.read_bytes()
    with two_vtees.context("tenant-b") as ctx:
        first = WasmSession(ctx)
        first.load(module, memory_mb=400)
        second = WasmSession(ctx)
        with pytest.raises(teec.TeecError, match="committed"):
            second.load(module, memory_mb=200)


def test_vtee_lifecycle_errors_are_clear(fresh_device: Device) -> None:
    proc = fresh_device.cli("vtee", "start", "ghost")
    assert proc.returncode == 3
    assert b"no vTEE named 'ghost'" in proc.stderr
    proc = fresh_device.cli("vtee", "create", "default")
    assert proc.returncode == 2
    assert b"already exists" in proc.stderr
    assert b"Traceback" not in proc.stderr
