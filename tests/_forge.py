"""What the owner of an emulated device can build with its own files, and the services to aim it at.

The owner reads the device attestation key (DAK) from ``HOME/device`` and signs whatever they
like with it, using the project's own encoders. The chain and red-team attack tests share these
builders and the module-scoped services (import the fixtures into a test module to use them).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from veritee.evidence import cose, provisioning
from veritee.evidence.claims import (
    Evidence,
    ModuleClaims,
    PlatformClaims,
    VteeClaims,
    encode_claims,
    ueid_of,
)
from veritee.tee.ta import WasmSession

from .conftest import Device
from .test_verifier_service import Server, start_verifier


@dataclasses.dataclass
class Forged:
    """Evidence the device owner built, and the provisioning keys only they hold."""

    evidence: bytes
    keys: provisioning.ProvisioningKeys
    ueid: bytes


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def dak_of(home: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """What the device owner reads from their own HOME: the DAK and its certificate."""
    key = serialization.load_pem_private_key((home / "device" / "dak.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    cert = x509.load_pem_x509_certificate((home / "device" / "dak.pem").read_bytes())
    return key, cert


def sign1(payload: bytes, key: ec.EllipticCurvePrivateKey, unprotected: dict) -> bytes:
    """COSE_Sign1 as cose.sign1 makes it, but ES256 whatever the curve (for odd keys)."""
    if isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
        return cose.sign1(payload, key, unprotected=unprotected)
    protected = bytes(cbor2.dumps({cose.HDR_ALG: cose.ES256}))
    msg = cose.Sign1(protected, {cose.HDR_ALG: cose.ES256}, unprotected, payload, b"")
    r, s = decode_dss_signature(key.sign(msg.to_be_signed(), ec.ECDSA(hashes.SHA256())))
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return bytes(cbor2.dumps(cbor2.CBORTag(cose.TAG_SIGN1, [protected, unprotected, payload, sig])))


def forge(
    real: bytes,
    nonce: bytes,
    measurement: bytes,
    *,
    signer: ec.EllipticCurvePrivateKey,
    chain: list[bytes],
    lifecycle: str,
    ueid: bytes | None = None,
    keys: provisioning.ProvisioningKeys | None = None,
) -> Forged:
    """Evidence over ``nonce`` signed by ``signer`` with x5chain ``chain``: the boot log is the
    device's real one (so it matches its reference values), every other key the attacker's."""
    ev = Evidence.decode(real)
    genuine = PlatformClaims.from_cbor(cose.decode(ev.platform).claims())
    genuine_vtee = VteeClaims.from_cbor(cose.decode(ev.vtee).claims())
    vtee_key, module_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
    keys = keys or provisioning.ProvisioningKeys()
    iat = int(time.time())
    if ueid is None:
        ueid = ueid_of(cose.ec_key_to_cose(signer.public_key()))
    platform = dataclasses.replace(
        genuine,
        ueid=ueid,
        lifecycle=lifecycle,
        vtee_key=cose.ec_key_to_cose(vtee_key.public_key()),
        iat=iat,
    )
    config = genuine_vtee.config
    vtee = VteeClaims(
        platform.vtee_id, measurement, config, cose.ec_key_to_cose(module_key.public_key()), iat
    )
    module = ModuleClaims(
        nonce=nonce,
        measurement=measurement,
        config=config,
        name="hello",
        provisioning_key=cose.x25519_key_to_cose(keys.x25519.public_key()),
        iat=iat,
    )
    evidence = Evidence(
        sign1(encode_claims(platform), signer, {cose.HDR_X5CHAIN: chain}),
        cose.sign1(encode_claims(vtee), vtee_key),
        cose.sign1(encode_claims(module), module_key),
    ).encode()
    return Forged(evidence, keys, ueid)


# -- the services, one per test module -----------------------------------------------------------


@pytest.fixture(scope="module")
def hello(wasm: Callable[..., Path]) -> bytes:
    return wasm("examples/hello/hello.c").read_bytes()


@pytest.fixture(scope="module")
def session(device: Device, hello: bytes) -> Iterator[WasmSession]:
    with device.context() as ctx:
        s = WasmSession(ctx)
        s.load(hello, name="hello")
        yield s


@pytest.fixture(scope="module")
def verifier(
    device: Device, wasm: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    s = start_verifier(device.home, tmp_path_factory.mktemp("verifier"))
    try:
        s.provision(device.home, "trust-device")
        s.provision(device.home, "module", wasm("examples/hello/hello.c"), "--name", "hello")
        yield s
    finally:
        s.stop()
