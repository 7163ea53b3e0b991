"""WASI-RA end to end: a module attests itself to the real secret service and decrypts data.

The module (examples/secret) pins the service key in its code; the normal world (`veritee run
--attest-to`) only relays. Attacks: a module the policy does not name, and a relay to an
impostor service whose key the module does not pin.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from veritee.tee.ta import WasmSession
from veritee.wasm.build import build
from veritee.wasm.runtime import measure

from .conftest import REPO, Device
from .test_secrets_service import Service, start_service

KEY = bytes(range(32))
MESSAGE = b"meet at the old mill at noon"


def _config(tmp: Path, dev: Device, allowed: list[str]) -> Path:
    config = {
        "trust": {
            "ca": [str(dev.home / "manufacturer" / "ca.pem")],
            "reference_values": [str(dev.home / "manufacturer" / "reference-values.json")],
        },
        "secrets": [
            {
                "name": "data-key",
                "value_hex": KEY.hex(),
                "allow": {"measurements": allowed, "lifecycles": ["emulated"]},
            }
        ],
    }
    path = tmp / f"secrets-{len(allowed)}-{os.urandom(4).hex()}.yaml"
    path.write_text(json.dumps(config))  # YAML is a superset of JSON
    return path


def _module(tmp: Path, service_key: str) -> Path:
    out = tmp / "secret.wasm"
    build(
        REPO / "examples" / "secret" / "secret.c",
        out,
        defines=[f"VERITEE_SECRET_SERVICE_KEY={service_key}"],
    )
    return out


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    iv = os.urandom(12)
    (d / "msg.enc").write_bytes(iv + AESGCM(KEY).encrypt(iv, MESSAGE, None))
    return d


@pytest.fixture
def service_key(tmp_path: Path, device: Device) -> str:
    return device.ok("secrets", "key", "--state", tmp_path / "state").strip()


@pytest.fixture
def service(tmp_path: Path, device: Device, service_key: str) -> Iterator[tuple[Service, Path]]:
    module = _module(tmp_path, service_key)
    config = _config(tmp_path, device, [measure(module.read_bytes()).hex()])
    svc = start_service(device.home, config, tmp_path / "state")
    yield svc, module
    svc.stop()


@pytest.mark.parametrize("suite", [[], ["--pq"]], ids=["x25519", "mlkem768-x25519"])
def test_module_receives_a_key_and_decrypts(
    device: Device, service: tuple[Service, Path], data_dir: Path, suite: list[str]
) -> None:
    svc, module = service
    proc = device.cli(
        "run",
        "--attest-to",
        svc.url,
        "--dir",
        f"{data_dir}::/in",
        module,
        "--",
        *suite,
        "/in/msg.enc",
    )
    assert proc.returncode == 0, proc.stderr
    assert MESSAGE in proc.stdout


def test_a_module_the_policy_does_not_name_is_refused(
    device: Device, tmp_path: Path, service_key: str, data_dir: Path
) -> None:
    module = _module(tmp_path, service_key)
    config = _config(tmp_path, device, ["00" * 32])  # some other module
    svc = start_service(device.home, config, tmp_path / "state")
    try:
        proc = device.cli(
            "run", "--attest-to", svc.url, "--dir", f"{data_dir}::/in", module, "/in/msg.enc"
        )
    finally:
        svc.stop()
    assert proc.returncode == 1
    assert b"the secret service refused" in proc.stderr
    assert b"(403)" in proc.stderr
    assert MESSAGE not in proc.stdout


def test_a_relay_to_an_impostor_service_gets_nothing_accepted(
    device: Device, tmp_path: Path, service: tuple[Service, Path], data_dir: Path
) -> None:
    _, module = service  # pins the genuine service's key
    impostor_state = tmp_path / "impostor"
    config = _config(tmp_path, device, [measure(module.read_bytes()).hex()])
    impostor = start_service(device.home, config, impostor_state)  # its own key
    try:
        proc = device.cli(
            "run",
            "--attest-to",
            impostor.url,
            "--dir",
            f"{data_dir}::/in",
            module,
            "/in/msg.enc",
        )
    finally:
        impostor.stop()
    assert proc.returncode == 1
    assert b"did not come from the expected service" in proc.stderr
    assert MESSAGE not in proc.stdout


def test_without_a_relay_the_module_is_told_so(
    device: Device, service: tuple[Service, Path], data_dir: Path
) -> None:
    _, module = service
    proc = device.cli("run", "--dir", f"{data_dir}::/in", module, "/in/msg.enc")
    assert proc.returncode == 1
    assert b"run the module with --attest-to URL" in proc.stderr


@pytest.mark.parametrize(
    ("minimum", "released"), [("affirming", False), ("warning", True)], ids=["affirming", "warning"]
)
def test_a_secret_can_require_a_minimum_result_from_a_trusted_verifier(
    device: Device,
    tmp_path: Path,
    service_key: str,
    data_dir: Path,
    minimum: str,
    released: bool,
) -> None:
    """The service has the verifier appraise the evidence; an emulated device's result is a
    warning under the verifier's default policy, so 'affirming' refuses and 'warning' releases."""
    from .test_verifier_service import start_verifier

    module = _module(tmp_path, service_key)
    verifier = start_verifier(device.home, tmp_path / "verifier")
    try:
        verifier.provision(device.home, "trust-device")
        verifier.provision(device.home, "module", module, "--name", "secret", "--version", "1")
        config = _config(tmp_path, device, [measure(module.read_bytes()).hex()])
        value = json.loads(config.read_text())
        value["trust"]["verifier"] = verifier.url
        value["secrets"][0]["allow"]["min_ear_status"] = minimum
        config.write_text(json.dumps(value))
        svc = start_service(device.home, config, tmp_path / "state")
        try:
            proc = device.cli(
                "run", "--attest-to", svc.url, "--dir", f"{data_dir}::/in", module, "/in/msg.enc"
            )
        finally:
            svc.stop()
    finally:
        verifier.stop()
    if released:
        assert proc.returncode == 0, proc.stderr
        assert MESSAGE in proc.stdout
    else:
        assert proc.returncode == 1
        assert b"the verifier's result is 'warning'" in proc.stderr
        assert MESSAGE not in proc.stdout


def test_min_ear_status_without_a_verifier_is_a_config_error(
    device: Device, tmp_path: Path
) -> None:
    config = _config(tmp_path, device, ["00" * 32])
    value = json.loads(config.read_text())
    value["secrets"][0]["allow"]["min_ear_status"] = "affirming"
    config.write_text(json.dumps(value))
    proc = device.cli("secrets", "check", "--config", config)
    assert proc.returncode == 2
    assert b"needs trust.verifier" in proc.stderr


# -- attack 5 of issue 18: a relay replays a secret release ---------------------------------


class _RecordingRelay:
    """The untrusted relay (the normal world): carries traffic, keeps a copy of every answer,
    and later answers from its recording instead of asking the service."""

    def __init__(self, url: str) -> None:
        from veritee.tee.supplicant import HttpRelay

        self.live = HttpRelay(url)
        self.recorded: dict[str, dict[str, Any]] = {}
        self.replaying = False

    def __call__(self, rpc: dict[str, Any]) -> dict[str, Any]:
        path = str(rpc.get("path"))
        if self.replaying:
            return self.recorded[path]
        answer = self.live(rpc)
        self.recorded[path] = answer
        return answer


@pytest.mark.parametrize("change", ["rotated", "policy-refuses"])
def test_a_relay_replaying_a_recorded_release_gets_nothing(
    device: Device, tmp_path: Path, service_key: str, data_dir: Path, change: str
) -> None:
    """Record one real exchange, change the secret on the real service (rotate it, or stop
    releasing it), replay the recorded answer to the same loaded instance: refused by the
    secure world (ReplayedRelease), the module does not get the old secret; the live
    service then gives the same instance whatever it now decides."""
    module = _module(tmp_path, service_key)
    allowed = [measure(module.read_bytes()).hex()]
    state = tmp_path / "state"
    svc = start_service(device.home, _config(tmp_path, device, allowed), state)
    relay = _RecordingRelay(svc.url)
    with device.context() as ctx:
        session = WasmSession(ctx)
        session.load(module.read_bytes(), name="secret", dirs=[(str(data_dir), "/in", False)])
        try:
            first = session.run(["/in/msg.enc"], relay=relay)
            assert first.exit_code == 0, first.stderr
            assert MESSAGE in first.stdout
            svc.stop()
            # The owner changes the secret: same service (same key, same state), new config.
            new_key = os.urandom(32)
            config = _config(tmp_path, device, allowed if change == "rotated" else ["00" * 32])
            value = json.loads(config.read_text())
            value["secrets"][0]["value_hex"] = new_key.hex()
            config.write_text(json.dumps(value))
            svc = start_service(device.home, config, state)
            relay.live = type(relay.live)(svc.url)

            relay.replaying = True
            replayed = session.run(["/in/msg.enc"], relay=relay)
            assert replayed.exit_code == 1
            assert b"not for this request (a replayed or stale answer)" in replayed.stderr
            assert MESSAGE not in replayed.stdout

            relay.replaying = False
            iv = os.urandom(12)
            (data_dir / "new.enc").write_bytes(iv + AESGCM(new_key).encrypt(iv, MESSAGE, None))
            live = session.run(["/in/new.enc"], relay=relay)
        finally:
            session.close()
            svc.stop()
    if change == "rotated":
        # The new key reaches the same instance: it decrypts what was encrypted under it.
        assert live.exit_code == 0, live.stderr
        assert MESSAGE in live.stdout
    else:
        assert live.exit_code == 1
        assert b"secret service refused (403)" in live.stderr
        assert MESSAGE not in live.stdout
