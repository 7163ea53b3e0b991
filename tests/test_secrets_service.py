"""The secret service: releases only to modules its policy names, and survives every attack.

End to end: a real ``veritee secrets serve`` process on loopback, real evidence from the
emulated secure world. The secure world keeps the module's private keys, so decryption of a
released envelope is proven here with evidence this test builds itself (its own CA, device and
provisioning keys) against the I/O-free decision; the secure world's side is the lead's
integration test.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest
import yaml
from click.testing import CliRunner
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veritee.cli import cli
from veritee.errors import Error, EvidenceError
from veritee.evidence import cose, provisioning
from veritee.evidence.appraisal import ReferenceValues, TrustAnchors
from veritee.evidence.claims import (
    BootEntry,
    Evidence,
    ModuleClaims,
    PlatformClaims,
    VteeClaims,
    encode_claims,
    ueid_of,
)
from veritee.evidence.errors import (
    BadSignature,
    MeasurementNotEndorsed,
    NonceMismatch,
    ReplayedRelease,
    UntrustedDevice,
)
from veritee.secrets import ReleasePolicy, Trust, decide, default_policy, load_config
from veritee.secrets import protocol as wire
from veritee.secrets.errors import (
    NoKeyForSuite,
    NonceExpired,
    NonceUnknown,
    NonceUsed,
    PolicyCompileError,
    PolicyFailed,
    ReleaseDenied,
    RequestRefused,
    TooManyChallengesFromClient,
    UnknownSuite,
)
from veritee.secrets.store import NonceStore
from veritee.tee.device import _device_cert, _new_ca
from veritee.tee.ta import WasmSession
from veritee.wasm.runtime import measure

from .conftest import Device

SECRET = bytes.fromhex("5ec2e7000000000000000000000000000000000000000000000000000000c0de")
START_TIMEOUT = 30.0  # seconds for the service to print its URL; only catches a hang
HTTP_TIMEOUT = 10.0
OTHER_MEASUREMENT = "ab" * 32
CUSTOM_POLICY = """\
package veritee.secrets

import rego.v1

default allow := false

# Released to one module, on a device that booted securely, in any lifecycle.
allow if {
	input.module.measurement == data.allow.module
	input.platform.secure_boot
}
"""


# -- a real service ------------------------------------------------------------------------


@dataclass
class Service:
    url: str
    state: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def post(self, path: str, body: Any = None, *, content: bytes | None = None) -> httpx.Response:
        if content is None and body is not None:
            content = json.dumps(body).encode()
        return httpx.post(self.url + path, content=content, timeout=HTTP_TIMEOUT)

    def challenge(self) -> bytes:
        response = self.post(wire.CHALLENGE_PATH)
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["expires"] >= int(time.time())
        return bytes.fromhex(body["nonce"])

    def release(
        self, nonce: bytes, evidence: bytes, name: str = "data-key", suite: str = "x25519"
    ) -> httpx.Response:
        return self.post(
            wire.RELEASE_PATH,
            {"nonce": nonce.hex(), "name": name, "evidence": evidence.hex(), "suite": suite},
        )

    def public_key(self) -> ec.EllipticCurvePublicKey:
        body = httpx.get(self.url + wire.KEY_PATH, timeout=HTTP_TIMEOUT).json()
        assert body["alg"] == "ES256"
        return ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), bytes.fromhex(body["public_key"])
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_service(home: Path, config: Path, state: Path) -> Service:
    log = state.parent / f"{state.name}.log"
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "veritee", "--home", str(home), "secrets", "serve"),
                *("--config", str(config), "--state", str(state), "--port", "0"),
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
    line = proc.stdout.readline().decode().strip() if ready else ""
    if not line.startswith("listening on http://127.0.0.1:"):
        proc.kill()
        proc.wait()
        pytest.fail(f"service did not start: {line!r}\n{log.read_text()}")
    return Service(line.removeprefix("listening on "), state, log, proc)


@dataclass
class Setup:
    device: Device
    session: WasmSession
    module: bytes
    measurement: bytes
    config: Path
    service: Service

    def evidence(self, nonce: bytes) -> bytes:
        return self.session.attest(nonce)

    def release_ok(self, name: str = "data-key", suite: str = "x25519") -> dict[str, str]:
        """A good client gets its secret: proves the service still serves after an attack."""
        nonce = self.service.challenge()
        response = self.service.release(nonce, self.evidence(nonce), name, suite)
        assert response.status_code == 200, response.text
        body: dict[str, str] = response.json()
        assert_signed(body, nonce, self.service.public_key())
        return body


def write_config(root: Path, device: Device, measurement: bytes, **extra: Any) -> Path:
    """A configuration exercising every policy shape; ``extra`` overrides top-level fields."""
    (root / "modules.json").write_text(
        json.dumps({"modules": [{"name": "hello", "measurement": measurement.hex()}]})
    )
    (root / "custom.rego").write_text(CUSTOM_POLICY)
    (root / "secret.bin").write_bytes(SECRET)
    manufacturer = device.home / "manufacturer"
    config = {
        "trust": {
            "ca": [str(manufacturer / "ca.pem")],
            "reference_values": [str(manufacturer / "reference-values.json"), "modules.json"],
        },
        "nonce_ttl": 60,
        "secrets": [
            {
                "name": "data-key",
                "value_file": "secret.bin",
                "allow": {"measurements": [measurement.hex()], "lifecycles": ["emulated"]},
            },
            {
                "name": "by-name",
                "value_hex": "0102",
                "allow": {"names": ["hello"], "lifecycles": ["emulated"], "vtees": ["default"]},
            },
            {
                "name": "impostor-only",
                "value_hex": "0102",
                "allow": {"names": ["impostor"], "lifecycles": ["emulated"]},
            },
            {
                "name": "other-module",
                "value_hex": "0102",
                "allow": {"measurements": [OTHER_MEASUREMENT], "lifecycles": ["emulated"]},
            },
            {"name": "secured-only", "value_hex": "0102", "allow": {"names": ["hello"]}},
            {
                "name": "custom",
                "value_hex": "0102",
                "policy": "custom.rego",
                "allow": {"module": measurement.hex()},
            },
            {
                "name": "rollback-protected-only",
                "value_hex": "0102",
                "allow": {
                    "names": ["hello"],
                    "lifecycles": ["emulated"],
                    "require_rollback_protection": True,
                },
            },
        ],
        **extra,
    }
    path = root / "secrets.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def setup(
    device: Device, wasm: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    module = wasm("examples/hello/hello.c").read_bytes()
    root = tmp_path_factory.mktemp("secrets")
    config = write_config(root, device, measure(module))
    service = start_service(device.home, config, root / "state")
    with device.context() as ctx:
        session = WasmSession(ctx)
        # The self-asserted name is deliberately not one any policy lists.
        session.load(module, name="self-named")
        try:
            yield Setup(device, session, module, measure(module), config, service)
        finally:
            service.stop()


def assert_signed(body: dict[str, str], nonce: bytes, key: ec.EllipticCurvePublicKey) -> None:
    """The envelope is signed (ES256) by the service key over exactly these bytes."""
    assert set(body) == {"name", "suite", "ciphertext", "signature", "binding"}
    env = provisioning.Envelope(
        body["name"],
        body["suite"],
        bytes.fromhex(body["ciphertext"]),
        b"",
        bytes.fromhex(body["binding"]),
    )
    raw = bytes.fromhex(body["signature"])
    assert len(raw) == 64
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    key.verify(der, provisioning.signed_bytes(nonce, env), ec.ECDSA(hashes.SHA256()))


def refused(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code, body
    assert "\n" not in body["detail"]
    return str(body["detail"])


# -- end to end: what a module gets ----------------------------------------------------------


@pytest.mark.parametrize("suite", ["x25519", "mlkem768-x25519"])
def test_a_named_module_gets_a_signed_envelope(setup: Setup, suite: str) -> None:
    body = setup.release_ok(suite=suite)
    assert body["name"] == "data-key"
    assert body["suite"] == suite
    ciphertext = bytes.fromhex(body["ciphertext"])
    assert SECRET not in ciphertext  # encrypted, not merely wrapped
    # HPKE: encapsulated key, then the AES-GCM ciphertext (secret + 16-byte tag).
    enc = 32 if suite == "x25519" else 1088 + 32
    assert len(ciphertext) == enc + len(SECRET) + 16


def test_the_signature_binds_the_nonce(setup: Setup) -> None:
    nonce = setup.service.challenge()
    body = setup.service.release(nonce, setup.evidence(nonce)).json()
    with pytest.raises(InvalidSignature):
        assert_signed(body, os.urandom(32), setup.service.public_key())


def test_endorsed_name_counts_and_the_self_asserted_name_does_not(setup: Setup) -> None:
    setup.release_ok("by-name")  # endorsed as "hello" by the reference values
    nonce = setup.service.challenge()
    detail = refused(
        setup.service.release(nonce, setup.evidence(nonce), "impostor-only"), 403, "policy_refused"
    )
    assert "not an allowed measurement" in detail
    # Renaming the module at load time changes nothing: the policy never sees that claim.
    with setup.device.context() as ctx:
        session = WasmSession(ctx)
        session.load(setup.module, name="impostor")  # same code, self-named as allowed
        nonce = setup.service.challenge()
        response = setup.service.release(nonce, session.attest(nonce), "impostor-only")
    refused(response, 403, "policy_refused")
    setup.release_ok()


def test_a_custom_policy_file_decides(setup: Setup) -> None:
    setup.release_ok("custom")


def test_the_key_is_the_same_everywhere(setup: Setup) -> None:
    from_http = httpx.get(setup.service.url + wire.KEY_PATH, timeout=HTTP_TIMEOUT).json()
    by_url = setup.device.ok("secrets", "key", "--url", setup.service.url).strip()
    by_state = setup.device.ok("secrets", "key", "--state", setup.service.state).strip()
    assert from_http["public_key"] == by_url == by_state
    assert len(bytes.fromhex(by_state)) == 65 and by_state.startswith("04")
    mode = (setup.service.state / "service-key.pem").stat().st_mode & 0o777
    assert mode == 0o600


def test_health_and_logs(setup: Setup) -> None:
    health = httpx.get(setup.service.url + wire.HEALTH_PATH, timeout=HTTP_TIMEOUT)
    assert health.json() == {"status": "ok", "secrets": 7}
    setup.release_ok()
    lines = [json.loads(line) for line in setup.service.log.read_text().splitlines()]
    released = [r for r in lines if r.get("outcome") == "released"]
    assert released and released[-1]["measurement"] == setup.measurement.hex()
    text = setup.service.log.read_text()
    assert SECRET.hex() not in text and "5ec2e7" not in text  # the value never reaches a log


# -- attacks: each fails for its own reason, and the next client is served ---------------------


def test_module_not_named_by_the_policy(setup: Setup) -> None:
    nonce = setup.service.challenge()
    response = setup.service.release(nonce, setup.evidence(nonce), "other-module")
    assert setup.measurement.hex() in refused(response, 403, "policy_refused")
    setup.release_ok()


def test_emulated_lifecycle_needs_an_opt_in(setup: Setup) -> None:
    nonce = setup.service.challenge()
    response = setup.service.release(nonce, setup.evidence(nonce), "secured-only")
    detail = refused(response, 403, "policy_refused")
    assert "lifecycle 'emulated' is not allowed" in detail
    setup.release_ok()


def test_a_secret_requiring_rollback_protection_is_refused_to_host_file_counters(
    setup: Setup,
) -> None:
    """Issue 18, attack 9: the emulated device's counters are a file its user can restore
    with older sealed state; the policy input says so, and a secret can require better."""
    nonce = setup.service.challenge()
    response = setup.service.release(nonce, setup.evidence(nonce), "rollback-protected-only")
    detail = refused(response, 403, "policy_refused")
    assert "rollback protection is 'host-file'" in detail
    setup.release_ok()


def test_replayed_nonce(setup: Setup) -> None:
    nonce = setup.service.challenge()
    evidence = setup.evidence(nonce)
    assert setup.service.release(nonce, evidence).status_code == 200
    refused(setup.service.release(nonce, evidence), 410, "nonce_used")
    setup.release_ok()


def test_a_refused_release_spends_its_nonce_too(setup: Setup) -> None:
    nonce = setup.service.challenge()
    evidence = setup.evidence(nonce)
    refused(setup.service.release(nonce, evidence, "other-module"), 403, "policy_refused")
    refused(setup.service.release(nonce, evidence), 410, "nonce_used")
    setup.release_ok()


def test_nonce_the_service_never_issued(setup: Setup) -> None:
    nonce = os.urandom(32)
    refused(setup.service.release(nonce, setup.evidence(nonce)), 410, "nonce_unknown")
    setup.release_ok()


def test_evidence_over_another_nonce(setup: Setup) -> None:
    nonce = setup.service.challenge()
    stale = setup.evidence(os.urandom(32))
    assert "nonce" in refused(setup.service.release(nonce, stale), 403, "nonce_mismatch")
    setup.release_ok()


def test_tampered_evidence(setup: Setup) -> None:
    nonce = setup.service.challenge()
    ev = Evidence.decode(setup.evidence(nonce))
    # The module token's signature, last bytes of the token: flip one bit.
    bad_sig = Evidence(ev.platform, ev.vtee, ev.module[:-1] + bytes([ev.module[-1] ^ 1]))
    detail = refused(setup.service.release(nonce, bad_sig.encode()), 403, "bad_signature")
    assert "module token" in detail
    nonce = setup.service.challenge()
    truncated = setup.evidence(nonce)[:-40]
    refused(setup.service.release(nonce, truncated), 400, "malformed_evidence")
    setup.release_ok()


def test_evidence_under_an_untrusted_ca(setup: Setup) -> None:
    nonce = setup.service.challenge()
    rogue = SyntheticDevice()
    evidence = rogue.evidence(nonce, setup.measurement)
    assert "not a trusted CA" in refused(
        setup.service.release(nonce, evidence), 403, "untrusted_device"
    )
    setup.release_ok()


def test_unknown_secret(setup: Setup) -> None:
    nonce = setup.service.challenge()
    response = setup.service.release(nonce, setup.evidence(nonce), "no-such-secret")
    assert "no-such-secret" in refused(response, 404, "unknown_secret")
    setup.release_ok()


def test_unknown_suite(setup: Setup) -> None:
    nonce = setup.service.challenge()
    response = setup.service.release(nonce, setup.evidence(nonce), suite="rsa")
    refused(response, 400, "unknown_suite")
    setup.release_ok()


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"garbage", 400, "bad_request"),
        (b'{"nonce": "00', 400, "bad_request"),
        (b"[]", 400, "bad_request"),
        (b"", 400, "bad_request"),
        (b'{"nonce": "zz"}', 400, "bad_request"),
        (b'{"nonce": 5, "name": "data-key"}', 400, "bad_request"),
        (b'{"extra": 1}', 400, "bad_request"),
        (b"[" * 100_000, 400, "bad_request"),
        (b"x" * (wire.MAX_BODY_BYTES + 1), 413, "body_too_large"),
    ],
)
def test_garbage_truncated_and_oversized_bodies(
    setup: Setup, content: bytes, status: int, code: str
) -> None:
    refused(setup.service.post(wire.RELEASE_PATH, content=content), status, code)
    setup.release_ok()


def test_bad_fields_after_a_good_nonce(setup: Setup) -> None:
    nonce = setup.service.challenge()
    body = {"nonce": nonce.hex(), "name": "data-key", "evidence": "zz", "suite": "x25519"}
    refused(setup.service.post(wire.RELEASE_PATH, body), 400, "bad_request")
    refused(setup.service.release(nonce, setup.evidence(nonce)), 410, "nonce_used")
    nonce = setup.service.challenge()
    huge = {**body, "nonce": nonce.hex(), "evidence": "00" * (wire.MAX_EVIDENCE_BYTES + 1)}
    refused(setup.service.post(wire.RELEASE_PATH, huge), 413, "body_too_large")
    setup.release_ok()


def test_unknown_paths_answer_in_the_protocol_shape(setup: Setup) -> None:
    refused(httpx.get(setup.service.url + "/nope", timeout=HTTP_TIMEOUT), 404, "not_found")
    response = httpx.get(setup.service.url + wire.RELEASE_PATH, timeout=HTTP_TIMEOUT)
    refused(response, 405, "method_not_allowed")


def test_expired_nonce_and_state_across_a_restart(
    setup: Setup, tmp_path: Path, wasm: Callable[..., Path]
) -> None:
    config = write_config(tmp_path, setup.device, setup.measurement, nonce_ttl=1)
    state = tmp_path / "state"
    service = start_service(setup.device.home, config, state)
    try:
        used = service.challenge()
        assert service.release(used, setup.evidence(used)).status_code == 200
        late = service.challenge()
        evidence = setup.evidence(late)
        time.sleep(1.1)
        refused(service.release(late, evidence), 410, "nonce_expired")
        key = service.public_key()
    finally:
        service.stop()
    service = start_service(setup.device.home, config, state)
    try:
        assert service.public_key() == key
        refused(service.release(used, setup.evidence(used)), 410, "nonce_used")
        fresh = service.challenge()
        assert service.release(fresh, setup.evidence(fresh)).status_code == 200
    finally:
        service.stop()


# -- the CLI: configuration errors name the field, never a traceback ------------------------------


def run_cli(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda c: c["secrets"][0].update(colour="blue"),
            "secrets[0]: unknown field(s) ['colour']",
        ),
        (lambda c: c.update(extra=1), "top level: unknown field(s) ['extra']"),
        (
            lambda c: c["secrets"][1].update(value_hex="0g"),
            "secrets[1] (by-name).value_hex: is not hex",
        ),
        (
            lambda c: c["secrets"][1].update(value_hex=1234),
            "value_hex: must be a string of hex; quote it in YAML",
        ),
        (
            lambda c: c["secrets"][1].update(value_hex="00" * (provisioning.MAX_SECRET_BYTES + 1)),
            "over the 65536-byte limit",
        ),
        (lambda c: c["secrets"][0].update(value_file="missing.bin"), "missing.bin does not exist"),
        (lambda c: c["trust"].update(ca=["nowhere.pem"]), "trust.ca[0]: CA certificate file"),
        (lambda c: c["trust"].update(reference_values=[]), "trust.reference_values: name at"),
        (
            lambda c: c["secrets"][1]["allow"].update(lifecycles=["secure"]),
            "allow.lifecycles[0]: 'secure' is not one of",
        ),
        (
            lambda c: c["secrets"][0]["allow"].update(measurements=["abc"]),
            "allow.measurements[0]: must be a SHA-256 digest",
        ),
        (lambda c: c["secrets"][4].update(allow={}), "give measurements or names"),
        (lambda c: c["secrets"][4].update(name="data-key"), "'data-key' is defined twice"),
        (lambda c: c["secrets"][4].update(name="bad name"), "secrets[4].name: must be"),
        (lambda c: c.update(nonce_ttl=0.5), "nonce_ttl: must be a number"),
        (lambda c: c.update(nonce_ttl=True), "nonce_ttl: must be a number"),
        (lambda c: c.update(challenges_per_client=0), "challenges_per_client: must be a whole"),
        (lambda c: c.update(challenges_per_client=1.5), "challenges_per_client: must be a whole"),
        (lambda c: c["secrets"][5].update(policy="broken.rego"), "secrets[5] (custom).policy"),
    ],
)
def test_config_errors_name_the_field(
    setup: Setup, tmp_path: Path, change: Callable[[dict[str, Any]], None], expected: str
) -> None:
    config = yaml.safe_load(setup.config.read_text())
    change(config)
    for name in ("modules.json", "custom.rego", "secret.bin"):
        (tmp_path / name).write_bytes((setup.config.parent / name).read_bytes())
    (tmp_path / "broken.rego").write_text("package veritee.secrets\n\nallow if {")
    path = tmp_path / "secrets.yaml"
    path.write_text(yaml.safe_dump(config))
    code, output = run_cli("secrets", "check", "--config", path)
    assert code == 2, output
    assert expected in output, output
    assert "Traceback" not in output and len(output.strip().splitlines()) == 1


def test_config_check_and_not_yaml(setup: Setup, tmp_path: Path) -> None:
    code, output = run_cli("secrets", "check", "--config", setup.config)
    assert code == 0 and "data-key: 32 bytes, policy default.rego" in output
    bad = tmp_path / "bad.yaml"
    bad.write_text("trust: [unclosed")
    code, output = run_cli("secrets", "serve", "--config", bad)
    assert code == 2 and "bad.yaml: not valid YAML" in output
    code, output = run_cli("secrets", "serve", "--config", tmp_path / "none.yaml")
    assert code == 2 and "does not exist" in output


def test_serve_on_a_port_in_use(setup: Setup, tmp_path: Path) -> None:
    port = setup.service.url.rsplit(":", 1)[1]
    proc = setup.device.cli(
        "secrets", "serve", "--config", setup.config, "--port", port, "--state", tmp_path
    )
    assert proc.returncode == 2
    assert b"cannot listen on 127.0.0.1:" in proc.stderr and b"Traceback" not in proc.stderr


def test_key_cli_errors(tmp_path: Path) -> None:
    code, output = run_cli("secrets", "key", "--url", "http://127.0.0.1:1")
    assert code == 9 and "cannot reach the secret service" in output
    code, output = run_cli("secrets", "key", "--url", "u", "--state", tmp_path)
    assert code == 2 and "not both" in output
    (tmp_path / "service-key.pem").write_text("junk")
    (tmp_path / "service-key.pem").chmod(0o644)
    code, output = run_cli("secrets", "key", "--state", tmp_path)
    assert code == 2 and "chmod 600" in output


@pytest.mark.parametrize("command", ["serve", "key", "check"])
def test_help_has_an_example(command: str) -> None:
    code, output = run_cli("secrets", command, "--help")
    assert code == 0 and "Example:" in output


# -- the decision without I/O: evidence this test builds itself --------------------------------


class SyntheticDevice:
    """A whole device in this process: CA, DAK, vTEE and module keys, provisioning keys."""

    def __init__(self, lifecycle: str = "emulated", pq: bool = True) -> None:
        now = dt.datetime.now(dt.UTC)
        # A manufacturer whose chain endorses the lifecycle this device claims (issue 18:
        # the lifecycle an appraisal trusts is the chain's, never the token's alone).
        self.ca_key, self.ca = _new_ca(now, endorses="secured")
        self.dak = ec.generate_private_key(ec.SECP256R1())
        self.ueid = ueid_of(cose.ec_key_to_cose(self.dak.public_key()))
        self.cert = _device_cert(
            self.dak.public_key(), self.ueid, self.ca_key, self.ca, now, endorses=lifecycle
        )
        self.vtee_key = ec.generate_private_key(ec.SECP256R1())
        self.module_key = ec.generate_private_key(ec.SECP256R1())
        self.keys = provisioning.ProvisioningKeys()
        self.lifecycle = lifecycle
        self.pq = pq
        self.boot = BootEntry("secure-world", hashlib.sha256(b"secure world").digest(), b"", "1")

    @property
    def anchors(self) -> TrustAnchors:
        # A hardware manufacturer's CA: trusted to endorse secured, said explicitly.
        return TrustAnchors.of((self.ca,), max_lifecycle="secured")

    def trust(self, names: dict[bytes, str] | None = None) -> Trust:
        refs = ReferenceValues({"secure-world": frozenset({self.boot.measurement})}, names or {})
        return Trust.from_reference_values(self.anchors, [refs])

    def evidence(self, nonce: bytes, measurement: bytes, name: str = "module") -> bytes:
        iat = int(time.time())
        vtee_id, config = b"\x07" * 16, hashlib.sha256(b"config").digest()
        platform = PlatformClaims(
            ueid=self.ueid,
            lifecycle=self.lifecycle,
            secure_boot=True,
            boot_log=(self.boot,),
            vtee_id=vtee_id,
            vtee_name="default",
            vtee_config=config,
            vtee_key=cose.ec_key_to_cose(self.vtee_key.public_key()),
            iat=iat,
        )
        vtee = VteeClaims(
            vtee_id, measurement, config, cose.ec_key_to_cose(self.module_key.public_key()), iat
        )
        module = ModuleClaims(
            nonce=nonce,
            measurement=measurement,
            config=config,
            name=name,
            provisioning_key=cose.x25519_key_to_cose(self.keys.x25519.public_key()),
            iat=iat,
            provisioning_key_pq=self.keys.pq_public_claim() if self.pq else None,
        )
        chain = [self.cert.public_bytes(Encoding.DER)]
        return Evidence(
            cose.sign1(encode_claims(platform), self.dak, unprotected={cose.HDR_X5CHAIN: chain}),
            cose.sign1(encode_claims(vtee), self.vtee_key),
            cose.sign1(encode_claims(module), self.module_key),
        ).encode()


MEASUREMENT = hashlib.sha256(b"module").digest()
OTHER = hashlib.sha256(b"another module").digest()
NONCE = bytes(range(32))


def default(allow: dict[str, Any]) -> ReleasePolicy:
    return ReleasePolicy("default.rego", default_policy(), allow)


@pytest.mark.parametrize("suite", provisioning.SUITES)
def test_decision_then_seal_opens_only_for_that_module(suite: str) -> None:
    dev = SyntheticDevice()
    policy = default({"measurements": [MEASUREMENT.hex()], "lifecycles": ["emulated"]})
    recipient = decide(
        dev.evidence(NONCE, MEASUREMENT),
        nonce=NONCE,
        secret="k",
        suite=suite,
        policy=policy,
        trust=dev.trust(),
    )
    assert recipient.measurement == MEASUREMENT and recipient.ueid == dev.ueid
    signer = ec.generate_private_key(ec.SECP256R1())
    binding = os.urandom(32)  # the secure world's nonce for this request
    env = provisioning.seal(
        SECRET,
        name="k",
        nonce=NONCE,
        suite=suite,
        recipient=recipient.key,
        signer=signer,
        binding=binding,
    )
    key = signer.public_key()
    opened = provisioning.open_(env, nonce=NONCE, binding=binding, keys=dev.keys, service_key=key)
    assert opened == SECRET
    with pytest.raises(BadSignature):  # another module instance's keys
        provisioning.open_(
            env,
            nonce=NONCE,
            binding=binding,
            keys=provisioning.ProvisioningKeys(),
            service_key=key,
        )
    # An answer to an earlier request of the same instance: refused before anything else.
    with pytest.raises(ReplayedRelease):
        provisioning.open_(env, nonce=NONCE, binding=os.urandom(32), keys=dev.keys, service_key=key)
    # A relay that rewrites the echoed binding to the new request's breaks the signature.
    forged = dataclasses.replace(env, binding=os.urandom(32))
    with pytest.raises(BadSignature):
        provisioning.open_(
            forged, nonce=NONCE, binding=forged.binding, keys=dev.keys, service_key=key
        )


def test_decision_checks_in_order() -> None:
    dev = SyntheticDevice()
    allow = {"measurements": [MEASUREMENT.hex()], "lifecycles": ["emulated"]}
    evidence = dev.evidence(NONCE, MEASUREMENT)

    def run(**kw: Any) -> Any:
        args: dict[str, Any] = {
            "nonce": NONCE,
            "secret": "k",
            "suite": "x25519",
            "policy": default(allow),
            "trust": dev.trust(),
        }
        return decide(kw.pop("evidence", evidence), **{**args, **kw})

    with pytest.raises(UnknownSuite):
        run(suite="rsa")
    with pytest.raises(NonceMismatch):
        run(nonce=bytes(32))
    with pytest.raises(UntrustedDevice):
        run(trust=SyntheticDevice().trust())
    with pytest.raises(MeasurementNotEndorsed, match="secure-world"):
        run(trust=Trust(dev.anchors, {"secure-world": frozenset({bytes(32)})}))
    secured = SyntheticDevice("secured")
    with pytest.raises(ReleaseDenied, match=r"module .* is not an allowed measurement"):
        run(evidence=secured.evidence(NONCE, OTHER), trust=secured.trust())
    with pytest.raises(NoKeyForSuite):
        no_pq = SyntheticDevice(pq=False)
        decide(
            no_pq.evidence(NONCE, MEASUREMENT),
            nonce=NONCE,
            secret="k",
            suite="mlkem768-x25519",
            policy=default(allow),
            trust=no_pq.trust(),
        )


def test_the_module_is_judged_by_the_policy_not_the_reference_values() -> None:
    """Boot values are required; module reference values only lend names."""
    dev = SyntheticDevice()
    evidence = dev.evidence(NONCE, MEASUREMENT, name="hello")  # self-asserted "hello"
    by_name = default({"names": ["hello"], "lifecycles": ["emulated"]})
    with pytest.raises(ReleaseDenied, match=r"endorsed names: \[\]"):
        decide(evidence, nonce=NONCE, secret="k", suite="x25519", policy=by_name, trust=dev.trust())
    endorsed = dev.trust({MEASUREMENT: "hello"})
    decide(evidence, nonce=NONCE, secret="k", suite="x25519", policy=by_name, trust=endorsed)


@pytest.mark.parametrize(
    ("allow", "lifecycle", "released"),
    [
        ({"measurements": [MEASUREMENT.hex()]}, "secured", True),
        ({"measurements": [MEASUREMENT.hex()]}, "emulated", False),
        ({"measurements": [MEASUREMENT.hex()]}, "debug", False),
        ({"measurements": [MEASUREMENT.hex()], "lifecycles": ["debug"]}, "debug", True),
        ({"measurements": [OTHER_MEASUREMENT], "lifecycles": ["emulated"]}, "emulated", False),
        ({"measurements": [MEASUREMENT.hex()], "vtees": ["default"]}, "secured", True),
        ({"measurements": [MEASUREMENT.hex()], "vtees": ["other"]}, "secured", False),
        ({"measurements": [MEASUREMENT.hex()], "vtees": []}, "secured", False),
    ],
)
def test_default_policy(allow: dict[str, Any], lifecycle: str, released: bool) -> None:
    dev = SyntheticDevice(lifecycle)
    evidence = dev.evidence(NONCE, MEASUREMENT)
    args: dict[str, Any] = {"nonce": NONCE, "secret": "k", "suite": "x25519"}
    if released:
        decide(evidence, policy=default(allow), trust=dev.trust(), **args)
    else:
        with pytest.raises(ReleaseDenied):
            decide(evidence, policy=default(allow), trust=dev.trust(), **args)


@pytest.mark.parametrize(
    ("rego", "error"),
    [
        ("package veritee.secrets\n\nallow if {", PolicyCompileError),
        ("package other\n\nallow := true\n", PolicyCompileError),
        ('package veritee.secrets\n\nallow := "yes"\n', PolicyCompileError),
        ("package veritee.secrets\n\nallow := true\nreasons := 5\n", PolicyCompileError),
    ],
)
def test_policies_that_cannot_decide_are_refused_at_start(rego: str, error: type[Error]) -> None:
    with pytest.raises(error):
        ReleasePolicy("p.rego", rego, {})


def test_a_policy_failing_at_query_time_releases_nothing() -> None:
    # Conflicting values only for some inputs: compiles, then fails on this one.
    rego = (
        "package veritee.secrets\n\nimport rego.v1\n\n"
        'allow := true if input.secret == "k"\n\nallow := false if input.secret == "k"\n\n'
        "default allow := false\n"
    )
    policy = ReleasePolicy("p.rego", rego, {})
    dev = SyntheticDevice()
    with pytest.raises(PolicyFailed):
        decide(
            dev.evidence(NONCE, MEASUREMENT),
            nonce=NONCE,
            secret="k",
            suite="x25519",
            policy=policy,
            trust=dev.trust(),
        )


@pytest.fixture(scope="module")
def fuzz_case() -> tuple[SyntheticDevice, bytes, ReleasePolicy]:
    dev = SyntheticDevice()
    policy = default({"measurements": [MEASUREMENT.hex()], "lifecycles": ["emulated"]})
    return dev, dev.evidence(NONCE, MEASUREMENT), policy


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzz_the_decision_only_evidence_errors_escape(
    fuzz_case: tuple[SyntheticDevice, bytes, ReleasePolicy], data: st.DataObject
) -> None:
    dev, good, policy = fuzz_case
    base = bytearray(good)
    choice = data.draw(st.sampled_from(["flip", "truncate", "splice", "random", "cbor"]))
    if choice == "flip":
        i = data.draw(st.integers(0, len(base) - 1))
        base[i] ^= data.draw(st.integers(1, 255))
        blob = bytes(base)
    elif choice == "truncate":
        blob = bytes(base[: data.draw(st.integers(0, len(base) - 1))])
    elif choice == "splice":
        i = data.draw(st.integers(0, len(base) - 1))
        blob = bytes(base[:i]) + data.draw(st.binary(max_size=64)) + bytes(base[i:])
    elif choice == "cbor":
        leaf = st.one_of(st.integers(), st.binary(max_size=40), st.text(max_size=20), st.none())
        value = data.draw(st.recursive(leaf, lambda s: st.lists(s) | st.dictionaries(leaf, s)))
        blob = cbor2.dumps(value, default=lambda e, v: e.encode(str(v)))
    else:
        blob = data.draw(st.binary(max_size=2048))
    secret = data.draw(st.sampled_from(["k", "", "x" * 200]))
    suite = data.draw(st.sampled_from([*provisioning.SUITES, "rsa", ""]))
    try:
        recipient = decide(
            blob, nonce=NONCE, secret=secret, suite=suite, policy=policy, trust=dev.trust()
        )
    except EvidenceError:
        return
    assert recipient.measurement == MEASUREMENT  # only an untouched signed payload passes


_JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=80), st.just("00" * 32)
)
_RELEASE_LIKE = st.dictionaries(
    st.sampled_from(["nonce", "name", "evidence", "suite", "other"]),
    st.one_of(_JSON_LEAF, st.lists(_JSON_LEAF, max_size=3)),
).map(lambda d: json.dumps(d).encode())


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=512) | st.text(max_size=200).map(str.encode) | _RELEASE_LIKE)
def test_fuzz_the_request_parser_only_refusals_escape(body: bytes) -> None:
    try:
        parsed = wire.parse_body(body)
        request = wire.parse_release(parsed, wire.parse_nonce(parsed))
    except RequestRefused:
        return
    assert len(request.nonce) == 32 and request.evidence


# -- the nonce store -------------------------------------------------------------------------


def test_a_nonce_is_good_once_even_under_a_race(tmp_path: Path) -> None:
    store = NonceStore(tmp_path / "n.sqlite3")
    nonce = store.issue(60).nonce
    wins: list[bool] = []

    def attempt() -> None:
        try:
            store.consume(nonce)
            wins.append(True)
        except NonceUsed:
            wins.append(False)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]
    with pytest.raises(NonceUnknown):
        store.consume(os.urandom(32))
    store.close()


def test_expiry_follows_the_clock(tmp_path: Path) -> None:
    now = [1000.0]
    store = NonceStore(tmp_path / "n.sqlite3", clock=lambda: now[0])
    challenge = store.issue(60)
    assert challenge.expires == 1060.0
    now[0] = 1060.0
    with pytest.raises(NonceExpired):
        store.consume(challenge.nonce)
    with pytest.raises(NonceUsed):  # spent even though it was refused as expired
        store.consume(challenge.nonce)
    store.close()


def test_config_loads_relative_paths(setup: Setup) -> None:
    config = load_config(setup.config)
    assert config.secrets["data-key"].value == SECRET
    assert "5ec2e7" not in repr(config)
    assert config.trust.module_names[setup.measurement] == frozenset({"hello"})


def test_the_answer_echoes_and_signs_the_secure_worlds_binding(setup: Setup) -> None:
    """The user data of the judged module token comes back, under the service's signature,
    and only that: data the host asks ATTEST to carry is host data, never the binding, so a
    relay cannot pick the binding a recorded answer would later match. (The secure world's own
    binding, drawn per request, is tested end to end in test_wasi_ra.py.)"""
    nonce, chosen = setup.service.challenge(), os.urandom(32)
    response = setup.service.release(nonce, setup.session.attest(nonce, chosen))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["binding"] == ""  # the module supplied no user data, and the host cannot
    assert chosen.hex() not in response.text
    assert_signed(body, nonce, setup.service.public_key())


# -- issue 18, 11e: one client's flood of challenges does not lock the others out ----------

PER_CLIENT = 20


def test_one_clients_flood_of_challenges_leaves_others_served(
    setup: Setup, device: Device, tmp_path: Path
) -> None:
    """Adversary: any network client of the service. It asks for challenges in a loop and
    never uses them; it is stopped at its own cap, and another client still gets its secret."""
    config = write_config(tmp_path, device, setup.measurement, challenges_per_client=PER_CLIENT)
    service = start_service(device.home, config, tmp_path / "state")
    flooder = httpx.Client(
        transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=HTTP_TIMEOUT
    )
    try:
        codes = [
            flooder.post(service.url + wire.CHALLENGE_PATH).status_code
            for _ in range(PER_CLIENT + 5)
        ]
        assert codes == [201] * PER_CLIENT + [429] * 5
        detail = refused(
            flooder.post(service.url + wire.CHALLENGE_PATH), 429, "too_many_client_challenges"
        )
        assert f"limit {PER_CLIENT}" in detail
        # Another client (127.0.0.1) is served in full: challenge, evidence, its secret.
        nonce = service.challenge()
        response = service.release(nonce, setup.evidence(nonce))
        assert response.status_code == 200, response.text
        assert_signed(response.json(), nonce, service.public_key())
        assert "too_many_client_challenges" in service.log.read_text()
    finally:
        flooder.close()
        service.stop()


def test_a_clients_cap_counts_only_unused_unexpired_challenges(tmp_path: Path) -> None:
    now = [1000.0]
    store = NonceStore(tmp_path / "n.sqlite3", clock=lambda: now[0])
    for _ in range(3):
        store.issue(10, "10.0.0.1", per_client=3)
    with pytest.raises(TooManyChallengesFromClient):
        store.issue(10, "10.0.0.1", per_client=3)
    store.issue(10, "10.0.0.2", per_client=3)  # another client is not counted against it
    used = store.issue(10, "10.0.0.3", per_client=1)
    store.consume(used.nonce)
    store.issue(10, "10.0.0.3", per_client=1)  # a used challenge frees its place
    now[0] += 11  # the flood expires: the client is served again
    store.issue(10, "10.0.0.1", per_client=3)
    store.close()


def test_an_old_store_gains_the_client_column(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE nonces (nonce BLOB PRIMARY KEY, expires REAL NOT NULL, used_at REAL)")
    db.execute("INSERT INTO nonces VALUES (?, ?, NULL)", (b"\x01" * 32, time.time() + 60))
    db.commit()
    db.close()
    store = NonceStore(path)
    store.consume(b"\x01" * 32)  # a nonce issued before the upgrade is still good once
    store.issue(60, "127.0.0.1", per_client=1)
    store.close()
