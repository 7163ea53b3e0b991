"""Issue 18, attacks 3 and 4: certificate chains and the lifecycle, through the real services.

The adversary in both is the owner of an emulated device: the same user owns HOME/device, so
they read the device attestation key (DAK) from ``device/dak.key`` and sign whatever they like
with it, using the project's own encoders. What they cannot do is change what the manufacturer
CA the verifier trusts says, and what a device certificate says.

3. *A revoked device mints a new one*: with the DAK of a revoked device, sign a certificate for
   a fresh key and present ``[new leaf, real device certificate]``; the old hand-written chain
   walk checked signatures only, so the verifier answered ``affirming`` under a new UEID.
4. *An emulated device claims to be secured*: sign a platform token claiming ``secured``; the
   secret service released a secret its policy gives to secured devices only, and the owner
   decrypted it outside any TEE.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from veritee.app.attest import Expected, LocalAppraiser
from veritee.evidence import certs, cose, provisioning
from veritee.evidence.appraisal import ReferenceValues, TrustAnchors, verify
from veritee.evidence.claims import (
    MEDIA_TYPE,
    Evidence,
    PlatformClaims,
    encode_claims,
    ueid_of,
)
from veritee.evidence.errors import LifecycleNotEndorsed, UntrustedDevice
from veritee.tee.device import _device_cert, _new_ca
from veritee.tee.ta import WasmSession
from veritee.verifier import ear
from veritee.verifier.client import nonce_of
from veritee.wasm.runtime import measure

from . import _forge
from ._forge import Forged, dak_of, der
from ._forge import forge as forge_evidence
from .conftest import Device
from .test_secrets_service import Service, refused, start_service, write_config
from .test_verifier_service import Server


def _minted_leaf(
    dak: ec.EllipticCurvePrivateKey, device_cert: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Attack 3: a perfect-looking device certificate for a fresh key, signed with the DAK."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "new device")]))
        .issuer_name(device_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(certs.lifecycle_extension("secured"), critical=False)
        .sign(dak, hashes.SHA256())
    )
    return key, leaf


def forge(
    home: Path,
    real: bytes,
    nonce: bytes,
    measurement: bytes,
    *,
    lifecycle: str,
    mint_leaf: bool = False,
) -> Forged:
    """Evidence over ``nonce`` for ``measurement``, signed with the device's own DAK (or, with
    ``mint_leaf``, with a fresh key the DAK certified); every other key the owner's."""
    dak, device_cert = dak_of(home)
    signer, chain = dak, [der(device_cert)]
    if mint_leaf:
        signer, leaf = _minted_leaf(dak, device_cert)
        chain = [der(leaf), *chain]
    return forge_evidence(real, nonce, measurement, signer=signer, chain=chain, lifecycle=lifecycle)


# The module-scoped hello module, its session and a verifier that trusts the device.
hello = _forge.hello
session = _forge.session
verifier = _forge.verifier

# -- the services --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secrets_service(
    device: Device, hello: bytes, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("secrets")
    service = start_service(device.home, write_config(root, device, measure(hello)), root / "st")
    try:
        yield service
    finally:
        service.stop()


def _attest(
    server: Server, evidence_for: Callable[[bytes], bytes]
) -> tuple[ear.Ear, dict[str, str] | None]:
    with server.client() as client:
        url, body = client.new_session()
        done = client.submit(url, evidence_for(nonce_of(body)), MEDIA_TYPE)
        result = ear.verify(done["result"], client.public_key())
    failure = result.extensions.get("ear.veritee.failure")
    return result, None if failure is None else dict(failure)


def _status(result: ear.Ear) -> str:
    return max((a.status for a in result.submods.values()), key=ear.STATUSES.index)


def _ueid(device: Device) -> str:
    return str(json.loads(device.ok("device", "show", "--json"))["ueid"])


def _assert_honest_device_served(server: Server, session: WasmSession) -> None:
    """The owner's legitimate flow after the attack: a warning (emulated), nothing lost."""
    result, failure = _attest(server, session.attest)
    assert failure is None, failure
    assert _status(result) == "warning"
    platform = result.submods["platform"].extensions["ear.veraison.annotated-evidence"]
    assert platform["lifecycle"] == platform["lifecycle-ceiling"] == "emulated"
    assert server.proc.poll() is None


# -- attack 3: a revoked device mints a new one ------------------------------------------------


def test_a_revoked_device_cannot_mint_a_new_device_certificate(
    verifier: Server, device: Device, session: WasmSession, hello: bytes
) -> None:
    real = session.attest(bytes(32))
    ueid = _ueid(device)
    verifier.provision(device.home, "revoke", "--device", ueid, "--reason", "stolen")
    try:
        forged: list[Forged] = []

        def minted(nonce: bytes) -> bytes:
            f = forge(device.home, real, nonce, measure(hello), lifecycle="secured", mint_leaf=True)
            forged.append(f)
            return f.evidence

        result, failure = _attest(verifier, minted)
        assert forged[0].ueid.hex() != ueid  # a new UEID, which no revocation names
        # The old chain walk checked signatures only: this was `affirming` under the new UEID.
        assert failure is not None, f"forged chain accepted: {_status(result)}"
        assert failure["check"] == "UntrustedDevice"
        assert "cannot certify another key" in failure["reason"]
        assert _status(result) == "contraindicated"

        # The same mint claiming only `emulated` is refused for the same reason.
        def emulated(n: bytes) -> bytes:
            return forge(
                device.home, real, n, measure(hello), lifecycle="emulated", mint_leaf=True
            ).evidence

        _, failure = _attest(verifier, emulated)
        assert failure is not None and failure["check"] == "UntrustedDevice"
        # ... and the revoked device itself stays revoked.
        _, failure = _attest(verifier, session.attest)
        assert failure is not None and failure["check"] == "DeviceRevoked"
    finally:
        verifier.provision(device.home, "remove", "revocations", f"device:{ueid}")
    _assert_honest_device_served(verifier, session)


def test_a_revoked_emulated_device_is_revoked_for_good_by_its_ca(
    verifier: Server, device: Device, session: WasmSession, hello: bytes
) -> None:
    """What the emulation cannot hold: the owner of an emulated device also holds the key of the
    manufacturer CA ``device init`` made (HOME/manufacturer/ca.key), so they can issue a device
    certificate for a fresh key. It stays ``emulated`` (the CA's mark), and revoking the CA,
    not only the UEID, revokes the emulated device for good."""
    real = session.attest(bytes(32))
    ueid = _ueid(device)
    ca_pem = device.home / "manufacturer" / "ca.pem"
    ca = x509.load_pem_x509_certificate(ca_pem.read_bytes())
    ca_key = serialization.load_pem_private_key(
        (device.home / "manufacturer" / "ca.key").read_bytes(), None
    )
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    new_dak = ec.generate_private_key(ec.SECP256R1())
    new_ueid = ueid_of(cose.ec_key_to_cose(new_dak.public_key()))
    now = dt.datetime.now(dt.UTC)
    new_cert = _device_cert(new_dak.public_key(), new_ueid, ca_key, ca, now, endorses="secured")

    def reissued(lifecycle: str) -> Callable[[bytes], bytes]:
        def build(nonce: bytes) -> bytes:
            ev = Evidence.decode(
                forge(device.home, real, nonce, measure(hello), lifecycle=lifecycle).evidence
            )
            claims = PlatformClaims.from_cbor(cose.decode(ev.platform).claims())
            platform = dataclasses.replace(claims, ueid=new_ueid)
            chain = [new_cert.public_bytes(serialization.Encoding.DER)]
            token = cose.sign1(
                encode_claims(platform), new_dak, unprotected={cose.HDR_X5CHAIN: chain}
            )
            return Evidence(token, ev.vtee, ev.module).encode()

        return build

    verifier.provision(device.home, "revoke", "--device", ueid)
    out = ""
    try:
        # Never more than the CA's mark, whatever the new certificate says:
        _, failure = _attest(verifier, reissued("secured"))
        assert failure is not None and failure["check"] == "LifecycleNotEndorsed"
        result, failure = _attest(verifier, reissued("emulated"))
        assert failure is None and _status(result) == "warning"  # a new emulated device
        out = verifier.provision(device.home, "--json", "revoke", "--ca", ca_pem)
        _, failure = _attest(verifier, reissued("emulated"))
        assert failure is not None and failure["check"] == "CaRevoked"
    finally:
        if out:
            verifier.provision(device.home, "remove", "revocations", json.loads(out)["id"])
        verifier.provision(device.home, "remove", "revocations", f"device:{ueid}")
    _assert_honest_device_served(verifier, session)


def test_every_local_appraiser_refuses_a_minted_chain(
    device: Device, session: WasmSession, hello: bytes
) -> None:
    """Siblings: the deployer's and RA-TLS's local appraisal, the CLI, the secret service all
    judge chains through ``appraisal.verify``, hence ``certs.validate_device_chain``."""
    anchors = TrustAnchors.from_pem((device.home / "manufacturer" / "ca.pem").read_bytes())
    nonce = bytes(range(32))
    minted = forge(
        device.home,
        session.attest(nonce),
        nonce,
        measure(hello),
        lifecycle="emulated",
        mint_leaf=True,
    )
    with pytest.raises(UntrustedDevice, match="cannot certify another key"):
        verify(minted.evidence, anchors, nonce=nonce)
    # Beneath that message, the path validator itself refuses the shape.
    dak, device_cert = dak_of(device.home)
    _, leaf = _minted_leaf(dak, device_cert)
    with pytest.raises(UntrustedDevice, match=r"basicConstraints\.cA must be asserted"):
        certs.validate_device_chain([leaf, device_cert], anchors.cas, dt.datetime.now(dt.UTC))
    refs = json.loads((device.home / "manufacturer" / "reference-values.json").read_text())
    appraiser = LocalAppraiser(anchors, ReferenceValues.from_json(refs))
    expected = Expected("hello", measure(hello), bytes(32), b"")
    verdict = appraiser.appraise(
        lambda n: (
            forge(
                device.home,
                session.attest(n),
                n,
                measure(hello),
                lifecycle="emulated",
                mint_leaf=True,
            ).evidence
        ),
        expected,
    )
    assert not verdict.acceptable and verdict.reasons[0].startswith("UntrustedDevice")


# -- attack 4: an emulated device claims to be secured ---------------------------------------------


def test_an_emulated_device_cannot_claim_secured_to_the_secret_service(
    secrets_service: Service, device: Device, session: WasmSession, hello: bytes
) -> None:
    nonce = secrets_service.challenge()
    forged = forge(device.home, session.attest(nonce), nonce, measure(hello), lifecycle="secured")
    response = secrets_service.release(nonce, forged.evidence, "secured-only")
    if response.status_code == 200:  # the old code: released, and opened outside any TEE
        body = response.json()
        env = provisioning.Envelope(
            body["name"],
            body["suite"],
            bytes.fromhex(body["ciphertext"]),
            bytes.fromhex(body["signature"]),
        )
        secret = provisioning.open_(
            env, nonce=nonce, keys=forged.keys, service_key=secrets_service.public_key()
        )
        pytest.fail(f"secured-only secret released to an emulated device: {secret.hex()}")
    detail = refused(response, 403, "lifecycle_not_endorsed")
    assert "claims lifecycle 'secured'" in detail and "at most 'emulated'" in detail
    # "debug" is above "emulated" too (a policy may allow debug hardware, never the emulation).
    nonce = secrets_service.challenge()
    forged = forge(device.home, session.attest(nonce), nonce, measure(hello), lifecycle="debug")
    refused(
        secrets_service.release(nonce, forged.evidence, "secured-only"),
        403,
        "lifecycle_not_endorsed",
    )
    # The owner's legitimate flow: the real secure world, honest about being emulated.
    nonce = secrets_service.challenge()
    ok = secrets_service.release(nonce, session.attest(nonce), "data-key")
    assert ok.status_code == 200, ok.text
    nonce = secrets_service.challenge()
    still = secrets_service.release(nonce, session.attest(nonce), "secured-only")
    assert "lifecycle 'emulated' is not allowed" in refused(still, 403, "policy_refused")


def test_an_emulated_device_cannot_claim_secured_to_the_verifier(
    verifier: Server, device: Device, session: WasmSession, hello: bytes
) -> None:
    real = session.attest(bytes(32))

    def secured(nonce: bytes) -> bytes:
        return forge(device.home, real, nonce, measure(hello), lifecycle="secured").evidence

    result, failure = _attest(verifier, secured)
    # The old code took the token's word: `affirming`, hardware 2.
    assert failure is not None, f"an emulated device was {_status(result)} as secured"
    assert failure["check"] == "LifecycleNotEndorsed"
    assert _status(result) == "contraindicated"
    _assert_honest_device_served(verifier, session)


def test_the_lifecycle_comes_from_the_chain_everywhere(
    device: Device, session: WasmSession, hello: bytes
) -> None:
    """Siblings: appraisal itself (the CLI, RA-TLS and the deployer's local appraisal)."""
    anchors = TrustAnchors.from_pem((device.home / "manufacturer" / "ca.pem").read_bytes())
    nonce = bytes(range(32))
    forged = forge(device.home, session.attest(nonce), nonce, measure(hello), lifecycle="secured")
    with pytest.raises(LifecycleNotEndorsed):
        verify(forged.evidence, anchors, nonce=nonce)
    honest = verify(session.attest(nonce), anchors, nonce=nonce)
    assert honest.lifecycle == honest.endorsed_lifecycle == "emulated"
    refs = json.loads((device.home / "manufacturer" / "reference-values.json").read_text())
    appraiser = LocalAppraiser(anchors, ReferenceValues.from_json(refs))
    verdict = appraiser.appraise(
        lambda n: (
            forge(device.home, session.attest(n), n, measure(hello), lifecycle="secured").evidence
        ),
        Expected("hello", measure(hello), bytes(32), b""),
    )
    assert not verdict.acceptable and verdict.reasons[0].startswith("LifecycleNotEndorsed")


# -- the profile, in memory ------------------------------------------------------------------------


def _chain(endorses: str, device_endorses: str) -> tuple[x509.Certificate, x509.Certificate]:
    now = dt.datetime.now(dt.UTC)
    ca_key, ca = _new_ca(now, endorses=endorses)
    dak = ec.generate_private_key(ec.SECP256R1())
    cert = _device_cert(dak.public_key(), b"\x01" * 33, ca_key, ca, now, endorses=device_endorses)
    return cert, ca


@pytest.mark.parametrize(
    ("ca", "device", "endorsed"),
    [
        ("emulated", "emulated", "emulated"),
        ("secured", "emulated", "emulated"),  # an external CA: device init still says emulated
        ("secured", "debug", "debug"),
        ("secured", "secured", "secured"),
        ("emulated", "secured", "emulated"),  # a device certificate cannot raise its CA's mark
    ],
)
def test_endorsed_lifecycle_is_the_lowest_over_the_chain(
    ca: str, device: str, endorsed: str
) -> None:
    cert, anchor = _chain(ca, device)
    path = certs.validate_device_chain([cert], (anchor,), dt.datetime.now(dt.UTC))
    assert path.lifecycle == endorsed


def _ca(
    *, path_length: int | None = 0, mark: bytes | None = None, key_cert_sign: bool = True
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A CA that is off the profile in the ways the arguments say."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "External CA")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, key_cert_sign, True, False, False),
            critical=True,
        )
    )
    if mark is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(certs.LIFECYCLE_OID, mark), critical=False
        )
    return key, builder.sign(key, hashes.SHA256())


def _issue(ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate) -> x509.Certificate:
    dak = ec.generate_private_key(ec.SECP256R1())
    return _device_cert(dak.public_key(), b"\x01" * 33, ca_key, ca, dt.datetime.now(dt.UTC))


def test_a_ca_without_the_mark_endorses_only_emulated() -> None:
    ca_key, ca = _ca()
    dak = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = _device_cert(dak.public_key(), b"\x01" * 33, ca_key, ca, now, endorses="secured")
    assert certs.validate_device_chain([cert], (ca,), now).lifecycle == "emulated"


@pytest.mark.parametrize(
    ("ca_args", "match"),
    [
        ({"path_length": None}, "pathlen 0"),
        ({"path_length": 1}, "pathlen 0"),
        ({"key_cert_sign": False}, "keyCertSign"),
        ({"mark": b"\x0c\x08secured"}, "malformed lifecycle endorsement"),  # bad length
        ({"mark": b"\x0c\x06unreal"}, "malformed lifecycle endorsement"),
    ],
)
def test_a_ca_off_the_profile_is_refused(ca_args: dict[str, object], match: str) -> None:
    ca_key, ca = _ca(**ca_args)  # type: ignore[arg-type]
    with pytest.raises(UntrustedDevice, match=match):
        certs.validate_device_chain([_issue(ca_key, ca)], (ca,), dt.datetime.now(dt.UTC))


def test_a_device_certificate_that_is_a_ca_is_refused() -> None:
    ca_key, ca = _ca()
    cert, _ = _chain("emulated", "emulated")
    # The trust anchor itself as the "device certificate": CA:true, keyCertSign.
    with pytest.raises(UntrustedDevice, match="CA:false"):
        certs.validate_device_chain([ca], (ca,), dt.datetime.now(dt.UTC))
    # Extra certificates past the CA are not the profile, whatever they are.
    with pytest.raises(UntrustedDevice, match="at most its CA"):
        certs.validate_device_chain([_issue(ca_key, ca), ca, cert], (ca,), dt.datetime.now(dt.UTC))
    # The device certificate followed by its CA is the profile.
    assert certs.validate_device_chain([_issue(ca_key, ca), ca], (ca,), dt.datetime.now(dt.UTC))


def test_device_init_refuses_an_external_ca_off_the_profile(tmp_path: Path) -> None:
    ca_key, ca = _ca(path_length=None)
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    (ca_dir / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pem = ca_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (ca_dir / "ca.key").write_bytes(pem)
    (ca_dir / "ca.key").chmod(0o600)
    home = Device(tmp_path / "home")
    proc = home.cli("device", "init", "--ca", ca_dir)
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert "device-certificate profile" in err and "Traceback" not in err
    assert not (tmp_path / "home" / "device" / "dak.pem").exists()
    # An external CA on the profile but without the lifecycle mark: its devices are emulated.
    ca_key, ca = _ca()
    (ca_dir / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pem = ca_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (ca_dir / "ca.key").write_bytes(pem)
    home.ok("device", "init", "--ca", ca_dir)
    cert = x509.load_pem_x509_certificate((tmp_path / "home" / "device" / "dak.pem").read_bytes())
    assert certs.validate_device_chain([cert], (ca,), dt.datetime.now(dt.UTC)).lifecycle == (
        "emulated"
    )
