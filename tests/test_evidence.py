"""Evidence from a real secure world, appraised; every alteration, wrong key or nonce fails."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veritee.errors import EvidenceError
from veritee.evidence import certs, cose
from veritee.evidence.appraisal import ReferenceValues, TrustAnchors, appraise, verify
from veritee.evidence.claims import Evidence
from veritee.evidence.errors import (
    BadSignature,
    MalformedToken,
    MeasurementNotEndorsed,
    NonceMismatch,
    UntrustedDevice,
)
from veritee.tee.device import _device_cert, _new_ca
from veritee.tee.ta import WasmSession
from veritee.wasm.runtime import measure

from .conftest import Device

NONCE = bytes(range(32))


class Case:
    """Good evidence plus what it takes to appraise it."""

    def __init__(self, device: Device, module: bytes) -> None:
        with device.context() as ctx:
            session = WasmSession(ctx)
            session.load(module, name="hello")
            self.evidence = session.attest(NONCE)
            self.other_nonce_evidence = session.attest(bytes(32))
        with device.context() as ctx:
            other = WasmSession(ctx)
            other.load(module, name="hello")
            self.second_instance = other.attest(NONCE)
        self.anchors = TrustAnchors.from_pem((device.home / "manufacturer" / "ca.pem").read_bytes())
        refs = json.loads((device.home / "manufacturer" / "reference-values.json").read_text())
        self.refs = ReferenceValues.from_json(refs).merge(
            ReferenceValues({}, {measure(module): "hello"})
        )


@pytest.fixture(scope="module")
def case(device: Device, wasm: Callable[..., Path]) -> Case:
    return Case(device, wasm("examples/hello/hello.c").read_bytes())


def _parts(data: bytes) -> dict[str, bytes]:
    ev = Evidence.decode(data)
    return {"platform": ev.platform, "vtee": ev.vtee, "module": ev.module}


def _reassemble(parts: dict[str, bytes]) -> bytes:
    return Evidence(parts["platform"], parts["vtee"], parts["module"]).encode()


def _with_payload(token: bytes, payload: bytes) -> bytes:
    tag = cbor2.loads(token)
    protected, unprotected, _, signature = tag.value
    return bytes(cbor2.dumps(cbor2.CBORTag(18, [protected, dict(unprotected), payload, signature])))


def test_good_evidence_appraises(case: Case) -> None:
    verified = appraise(case.evidence, case.anchors, case.refs, nonce=NONCE)
    assert verified.module.name == "hello"
    assert verified.platform.lifecycle == "emulated"  # honest about what it is
    assert verified.platform.vtee_name == "default"
    assert verified.vtee.vtee_id == verified.platform.vtee_id


def test_wrong_nonce_fails(case: Case) -> None:
    with pytest.raises(NonceMismatch):
        appraise(case.evidence, case.anchors, case.refs, nonce=os.urandom(32))


def test_replayed_evidence_for_an_older_nonce_fails(case: Case) -> None:
    with pytest.raises(NonceMismatch):
        appraise(case.other_nonce_evidence, case.anchors, case.refs, nonce=NONCE)


def test_module_not_in_reference_values_fails(case: Case) -> None:
    refs = ReferenceValues(case.refs.boot, {})
    with pytest.raises(MeasurementNotEndorsed, match="module measurement"):
        appraise(case.evidence, case.anchors, refs, nonce=NONCE)


def test_boot_measurement_not_endorsed_fails(case: Case) -> None:
    boot = dict(case.refs.boot)
    boot["secure-world"] = frozenset({hashlib.sha256(b"the vendor's release").digest()})
    with pytest.raises(MeasurementNotEndorsed, match="secure-world"):
        appraise(case.evidence, case.anchors, ReferenceValues(boot, case.refs.modules), nonce=NONCE)


def _altered_values(value: Any) -> list[Any]:
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1]
    if isinstance(value, bytes):
        return [bytes([value[0] ^ 1]) + value[1:]] if value else [b"\x00"]
    if isinstance(value, str):
        return [value + "x"]
    if isinstance(value, list):
        return [value[:-1]] if value else [[0]]
    if isinstance(value, dict):
        return [{**value, 99: 0}]
    return []


def _claim_alterations(token: bytes) -> list[tuple[Any, bytes]]:
    claims = cbor2.loads(cbor2.loads(token).value[2])
    out = []
    for key, value in claims.items():
        for altered in _altered_values(value):
            out.append((key, bytes(cbor2.dumps({**claims, key: altered}))))
    return out


@pytest.mark.parametrize("token", ["platform", "vtee", "module"])
def test_each_altered_claim_fails_the_signature(case: Case, token: str) -> None:
    parts = _parts(case.evidence)
    alterations = _claim_alterations(parts[token])
    assert len(alterations) >= 6
    for key, payload in alterations:
        forged = _reassemble({**parts, token: _with_payload(parts[token], payload)})
        with pytest.raises(EvidenceError) as err:
            appraise(forged, case.anchors, case.refs, nonce=NONCE)
        # The signature check comes before any claim is trusted.
        assert isinstance(err.value, BadSignature | MalformedToken), (token, key, err.value)


def test_module_token_resigned_with_an_attacker_key_fails(case: Case) -> None:
    parts = _parts(case.evidence)
    payload = cbor2.loads(parts["module"]).value[2]
    attacker = ec.generate_private_key(ec.SECP256R1())
    forged = _reassemble({**parts, "module": cose.sign1(payload, attacker)})
    with pytest.raises(BadSignature, match="module token"):
        appraise(forged, case.anchors, case.refs, nonce=NONCE)


def test_tokens_of_two_instances_cannot_be_mixed(case: Case) -> None:
    # The module token of one instance under the vtee token of another: keys differ.
    a, b = _parts(case.evidence), _parts(case.second_instance)
    with pytest.raises(BadSignature, match="module token"):
        appraise(_reassemble({**a, "module": b["module"]}), case.anchors, case.refs, nonce=NONCE)


def test_whole_chain_forged_under_a_rogue_ca_fails(case: Case) -> None:
    """An attacker builds a perfect-looking chain with its own CA and device key."""
    now = dt.datetime.now(dt.UTC)
    rogue_ca_key, rogue_ca = _new_ca(now)
    dak = ec.generate_private_key(ec.SECP256R1())
    cert = _device_cert(dak.public_key(), b"\x01" * 33, rogue_ca_key, rogue_ca, now)
    parts = _parts(case.evidence)
    payload = cbor2.loads(parts["platform"]).value[2]
    chain = [cert.public_bytes(serialization.Encoding.DER)]
    forged = cose.sign1(payload, dak, unprotected={cose.HDR_X5CHAIN: chain})
    with pytest.raises(UntrustedDevice, match="not a trusted CA"):
        appraise(_reassemble({**parts, "platform": forged}), case.anchors, case.refs, nonce=NONCE)


def test_other_trust_anchor_rejects(case: Case) -> None:
    _, other_ca = _new_ca(dt.datetime.now(dt.UTC))
    with pytest.raises(UntrustedDevice):
        appraise(case.evidence, TrustAnchors((other_ca,)), case.refs, nonce=NONCE)


def test_revoked_device_and_revoked_ca_reject(case: Case) -> None:
    ueid = verify(case.evidence, case.anchors, nonce=NONCE).platform.ueid
    revoked = TrustAnchors(case.anchors.cas, revoked_devices=frozenset({ueid}))
    with pytest.raises(UntrustedDevice, match="revoked"):
        appraise(case.evidence, revoked, case.refs, nonce=NONCE)
    ca_key = certs.key_id(case.anchors.cas[0])  # CAs are revoked by key
    revoked = TrustAnchors(case.anchors.cas, revoked_cas=frozenset({ca_key}))
    with pytest.raises(UntrustedDevice, match="revoked"):
        appraise(case.evidence, revoked, case.refs, nonce=NONCE)


def test_expired_device_certificate_rejects(case: Case) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=20 * 365)
    with pytest.raises(UntrustedDevice, match="not valid now"):
        appraise(case.evidence, case.anchors, case.refs, nonce=NONCE, now=later)


def test_truncated_and_garbage_evidence_is_malformed(case: Case) -> None:
    for bad in (case.evidence[: len(case.evidence) // 2], b"", b"\xff" * 10, b"\xa0"):
        with pytest.raises(MalformedToken):
            appraise(bad, case.anchors, case.refs, nonce=NONCE)


def test_oversized_evidence_is_refused_before_decoding(case: Case) -> None:
    with pytest.raises(MalformedToken, match="limit"):
        appraise(b"\x00" * (cose.MAX_TOKEN_BYTES + 1), case.anchors, case.refs, nonce=NONCE)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzz_only_evidence_errors_escape(case: Case, data: st.DataObject) -> None:
    base = bytearray(case.evidence)
    choice = data.draw(st.sampled_from(["flip", "truncate", "random", "splice"]))
    if choice == "flip":
        i = data.draw(st.integers(0, len(base) - 1))
        base[i] ^= data.draw(st.integers(1, 255))
        blob = bytes(base)
    elif choice == "truncate":
        blob = bytes(base[: data.draw(st.integers(0, len(base) - 1))])
    elif choice == "splice":
        i = data.draw(st.integers(0, len(base) - 1))
        blob = bytes(base[:i]) + data.draw(st.binary(max_size=64)) + bytes(base[i:])
    else:
        blob = data.draw(st.binary(max_size=4096))
    try:
        appraise(blob, case.anchors, case.refs, nonce=NONCE)
    except EvidenceError:
        return
    # A mutation that still appraises must have left the signed bytes alone.
    assert (
        verify(blob, case.anchors, nonce=NONCE).module.measurement
        == verify(case.evidence, case.anchors, nonce=NONCE).module.measurement
    )


def test_evidence_cli_shows_and_appraises(
    device: Device, wasm: Callable[..., Path], tmp_path: Path
) -> None:
    hello = wasm("examples/hello/hello.c")
    ev = tmp_path / "ev.cbor"
    nonce = NONCE.hex()
    device.ok("attest", hello, "--nonce", nonce, "-o", ev)
    shown = json.loads(device.ok("evidence", "show", ev, "--json"))
    assert shown["module"]["nonce"] == nonce
    assert shown["platform"]["lifecycle"] == "emulated"
    assert shown["module"]["measurement"] == measure(hello.read_bytes()).hex()
    device.ok("evidence", "appraise", ev, "--nonce", nonce, "--module", hello)
    replay = device.cli("evidence", "appraise", ev, "--nonce", "00" * 32, "--module", hello)
    assert replay.returncode == 7
    assert b"not the verifier's nonce" in replay.stderr
    unknown = device.cli("evidence", "appraise", ev, "--nonce", nonce)
    assert unknown.returncode == 7
    assert b"not among the reference values" in unknown.stderr


def test_device_certificate_is_issued_by_the_manufacturer_ca(device: Device) -> None:
    cert = x509.load_pem_x509_certificate((device.home / "device" / "dak.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((device.home / "manufacturer" / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    for secret in ("huk.bin", "dak.key"):
        assert (device.home / "device" / secret).stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    "key",
    [
        None,
        b"\x01" * 32,
        {1: 1, -1: 4, -2: b"\x01" * 31},  # OKP X25519, a value one byte short
        {1: 1, -1: 6, -2: b"\x01" * 32},  # OKP Ed25519: not a key to encrypt to
        {1: 2, -1: 1, -2: b"\x01" * 32},  # EC2
    ],
)
def test_module_token_with_a_malformed_provisioning_key_is_refused(case: Case, key: Any) -> None:
    from veritee.evidence.claims import PROVISIONING_KEY, ModuleClaims

    claims = cose.decode(_parts(case.evidence)["module"]).claims()
    assert ModuleClaims.from_cbor(claims).provisioning_key == claims[PROVISIONING_KEY]
    with pytest.raises(MalformedToken, match="X25519 COSE_Key"):
        ModuleClaims.from_cbor({**claims, PROVISIONING_KEY: key})
