"""Red team: device certificate chains, the lifecycle mark, revocation (after issue 18's fixes).

Adversaries: the owner of an emulated device (reads HOME/device/dak.key and
HOME/manufacturer/ca.key), the holder of a leaked or revoked device key, the network. Every
test runs one attack. A test whose docstring starts with ``HOLE:`` asserts the secure
behaviour and FAILS on the code it was written against: the attack works. The others pass:
the attack is refused, and the docstring names the check that refuses it.

Holes found (most severe first; each test's docstring tells the attack and the gain):

1. test_trust_device_refuses_an_owner_reminted_secured_ca,
   test_a_secret_service_trusting_the_owners_ca_file_keeps_secured_only_secrets,
   test_the_deployer_trusting_a_node_home_requires_secured_in_vain: every consumer that takes
   a device's ``HOME/manufacturer/ca.pem`` as its trust anchor (verifier ``trust-device``, the
   secret service's ``trust.ca``, the deployer's ``--trust-home``, the cluster helper) trusts
   whatever mark the owner, who holds ca.key, re-mints into it: an emulated device becomes
   ``secured`` / affirming everywhere. The twin keeps the subject "Veritee emulated
   manufacturer CA", and ``provision show`` prints subject and id only, never the mark.
2. test_a_device_revoked_at_the_verifier_gets_no_secret: the secret service releases to a
   device its trusted verifier finds revoked (contraindicated), unless a secret sets
   min_ear_status; without trust.verifier it has no revocation at all.
3. test_revoking_an_emulated_ca_from_its_home_revokes_it: CA revocation is by the DER digest
   of a file the owner controls, accepted for a CA that is not trusted: a silent no-op.
4. test_a_trust_anchor_off_the_profile_is_not_a_device_ca: a self-signed CA:false device
   certificate provisioned as an anchor validates as its own path, the CA profile unchecked.
5. test_cli_appraise_json_does_not_call_an_emulated_device_affirming: ``veritee evidence
   appraise --json`` says "affirming" for an emulated device.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from veritee.errors import EvidenceError
from veritee.evidence import certs, cose, provisioning
from veritee.evidence.appraisal import LinkCache, TrustAnchors, verify
from veritee.evidence.claims import (
    Evidence,
    ModuleClaims,
    PlatformClaims,
    VteeClaims,
    encode_claims,
    ueid_of,
)
from veritee.evidence.errors import (
    BadSignature,
    BindingMismatch,
    LifecycleNotEndorsed,
    MalformedToken,
    UntrustedDevice,
)
from veritee.tee.device import _device_cert, _name
from veritee.tee.ta import WasmSession
from veritee.wasm.runtime import measure

from . import _forge
from ._forge import Forged, dak_of, forge
from ._forge import der as _der
from ._forge import sign1 as _sign1
from .conftest import Device
from .test_attack_chain import _attest, _status, _ueid
from .test_secrets_service import Service, refused, start_service, write_config
from .test_verifier_service import Server, start_verifier

NOW = dt.datetime.now(dt.UTC)


# -- what the owner of an emulated device builds --------------------------------------------------


def _ca_key(home: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The manufacturer CA's key and certificate: files of the device owner."""
    key = serialization.load_pem_private_key((home / "manufacturer" / "ca.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate((home / "manufacturer" / "ca.pem").read_bytes())
    return key, ca


def _twin_ca(
    key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, mark: str | None = "secured"
) -> x509.Certificate:
    """The trusted CA re-minted by its key's holder: same subject, same key, another mark."""
    b = (
        x509.CertificateBuilder()
        .subject_name(ca.subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if mark is not None:
        b = b.add_extension(certs.lifecycle_extension(mark), critical=False)
    return b.sign(key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _release_opened(service: Service, nonce: bytes, forged: Forged, name: str) -> bytes | None:
    """Ask for ``name`` with forged evidence; the secret, opened outside any TEE, or None."""
    response = service.release(nonce, forged.evidence, name)
    if response.status_code != 200:
        return None
    body = response.json()
    env = provisioning.Envelope(
        body["name"],
        body["suite"],
        bytes.fromhex(body["ciphertext"]),
        bytes.fromhex(body["signature"]),
    )
    return provisioning.open_(env, nonce=nonce, keys=forged.keys, service_key=service.public_key())


# The module-scoped hello module, its session and a verifier that trusts the device.
hello = _forge.hello
session = _forge.session
verifier = _forge.verifier

# -- the services ----------------------------------------------------------------------------------


def _provision_proc(server: Server, home: Path, *args: str | Path) -> tuple[int, str]:
    proc = server.cli(
        home, "verifier", "provision", "--verifier", server.url, "--token", server.token, *args
    )
    return proc.returncode, (proc.stdout + proc.stderr).decode()


def _platform_claims(result: object) -> dict:
    return dict(result.submods["platform"].extensions["ear.veraison.annotated-evidence"])  # type: ignore[attr-defined]


# == 1. the verifier's provisioning: an owner-minted twin CA marked `secured` =====================


def test_trust_device_refuses_an_owner_reminted_secured_ca(
    device: Device,
    session: WasmSession,
    hello: bytes,
    wasm: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """HOLE: ``veritee verifier provision trust-device`` ("trust this HOME's *emulated* device")
    provisions whatever CA the HOME holds, with whatever lifecycle mark it carries. The owner of
    an emulated device holds ``manufacturer/ca.key``: they re-mint their CA (same subject, same
    key) marked ``secured``, re-issue their device certificate under it marked ``secured``, and
    replace ``manufacturer/ca.pem`` before the operator runs the documented command. Nothing in
    provisioning looks at the mark, and nothing tells the operator: from then on the emulated
    device is ``affirming``, hardware 2, lifecycle ``secured``, and every relying party that asks
    for secured hardware accepts a device whose keys are files of its owner.

    Secure behaviour asserted: trust-device refuses a CA that endorses more than ``emulated``
    (or the evidence is not appraised as secured)."""
    ca_key, ca = _ca_key(device.home)
    twin = _twin_ca(ca_key, ca, "secured")
    owner_home = tmp_path / "owner-home"
    (owner_home / "manufacturer").mkdir(parents=True)
    (owner_home / "manufacturer" / "ca.pem").write_bytes(_pem(twin))
    shutil.copy(
        device.home / "manufacturer" / "reference-values.json",
        owner_home / "manufacturer" / "reference-values.json",
    )
    dak, _ = dak_of(device.home)
    ueid = ueid_of(cose.ec_key_to_cose(dak.public_key()))
    secured_cert = _device_cert(dak.public_key(), ueid, ca_key, twin, NOW, endorses="secured")
    real = session.attest(bytes(32))

    server = start_verifier(device.home, tmp_path / "verifier")
    try:
        rc, out = _provision_proc(server, owner_home, "trust-device")
        if rc != 0:
            return  # refused at provisioning: the secure behaviour
        server.provision(device.home, "module", wasm("examples/hello/hello.c"), "--name", "hello")

        def secured(nonce: bytes) -> bytes:
            return forge(
                real,
                nonce,
                measure(hello),
                signer=dak,
                chain=[_der(secured_cert)],
                lifecycle="secured",
            ).evidence

        result, failure = _attest(server, secured)
        claims = _platform_claims(result) if failure is None else {}
        assert failure is not None or claims.get("lifecycle") != "secured", (
            f"emulated device (its DAK a file of its owner) appraised {_status(result)}, "
            f"lifecycle {claims.get('lifecycle')!r}, after `trust-device` of {owner_home}: {out}"
        )
    finally:
        server.stop()


def test_a_secret_service_trusting_the_owners_ca_file_keeps_secured_only_secrets(
    device: Device, session: WasmSession, hello: bytes, tmp_path: Path
) -> None:
    """HOLE (the same root cause as the test above, at the secret service): its ``trust.ca``
    names the device's ``manufacturer/ca.pem`` (as docs/secrets.md and the tests configure it);
    the owner has re-minted it marked ``secured`` with their ca.key, and re-issued their device
    certificate under it. The service loads the CA without looking at its mark, the default
    policy's ``lifecycles: [secured]`` is met, and the ``secured-only`` secret is released to
    keys the owner holds outside any TEE.

    Secure behaviour asserted: the secured-only secret is not released."""
    ca_key, ca = _ca_key(device.home)
    twin = _twin_ca(ca_key, ca, "secured")
    owner_home = tmp_path / "owner-home"
    (owner_home / "manufacturer").mkdir(parents=True)
    (owner_home / "manufacturer" / "ca.pem").write_bytes(_pem(twin))
    shutil.copy(
        device.home / "manufacturer" / "reference-values.json",
        owner_home / "manufacturer" / "reference-values.json",
    )
    dak, _ = dak_of(device.home)
    ueid = ueid_of(cose.ec_key_to_cose(dak.public_key()))
    secured_cert = _device_cert(dak.public_key(), ueid, ca_key, twin, NOW, endorses="secured")
    root = tmp_path / "secrets"
    root.mkdir()
    config = write_config(root, Device(owner_home), measure(hello))
    service = start_service(device.home, config, root / "st")
    try:
        nonce = service.challenge()
        forged = forge(
            session.attest(bytes(32)),
            nonce,
            measure(hello),
            signer=dak,
            chain=[_der(secured_cert)],
            lifecycle="secured",
        )
        secret = _release_opened(service, nonce, forged, "secured-only")
        assert secret is None, (
            f"secured-only secret {secret.hex()} released to an emulated device whose owner "
            "re-minted its CA file, and opened outside any TEE"
        )
    finally:
        service.stop()


# == 2. CA revocation by the DER digest of a file the owner controls ==============================


def test_revoking_an_emulated_ca_from_its_home_revokes_it(
    verifier: Server, device: Device, session: WasmSession, hello: bytes, tmp_path: Path
) -> None:
    """HOLE: docs/verifier.md tells the operator to revoke an emulated device for good with
    ``revoke --ca HOME/manufacturer/ca.pem``. A CA revocation names the SHA-256 of a
    certificate's DER, and the verifier accepts a revocation for a CA it does not trust without
    a word. The owner (who holds ca.key) replaces ``ca.pem`` with a twin of the trusted CA (same
    subject and key, new serial, even the same ``emulated`` mark): the revocation lands on the
    twin's digest, the operator is told "revoked", and the trusted CA, hence every device
    certificate the owner issues under it (fresh UEIDs), stays accepted.

    Secure behaviour asserted: either ``revoke --ca`` refuses a certificate that is not a trust
    anchor, or, once it succeeded, devices under that CA's key are refused."""
    ca_key, ca = _ca_key(device.home)
    swapped = tmp_path / "ca.pem"  # what HOME/manufacturer/ca.pem holds when the operator looks
    swapped.write_bytes(_pem(_twin_ca(ca_key, ca, "emulated")))
    real = session.attest(bytes(32))
    new_dak = ec.generate_private_key(ec.SECP256R1())
    new_ueid = ueid_of(cose.ec_key_to_cose(new_dak.public_key()))
    new_cert = _device_cert(new_dak.public_key(), new_ueid, ca_key, ca, NOW)

    def reissued(nonce: bytes) -> bytes:
        return forge(
            real,
            nonce,
            measure(hello),
            signer=new_dak,
            chain=[_der(new_cert)],
            lifecycle="emulated",
        ).evidence

    rc, out = _provision_proc(verifier, device.home, "--json", "revoke", "--ca", swapped)
    if rc != 0:
        return  # refused: the operator learns the file is not the CA they trust
    try:
        result, failure = _attest(verifier, reissued)
        assert failure is not None, (
            f"`revoke --ca` answered {out.strip()!r}, yet a new device under the same CA key "
            f"is still {_status(result)}"
        )
    finally:
        verifier.provision(device.home, "remove", "revocations", json.loads(out)["id"])


# == 3. the secret service and revocation ==========================================================


@pytest.fixture
def secrets_with_verifier(
    verifier: Server, device: Device, hello: bytes, tmp_path: Path
) -> Iterator[Service]:
    root = tmp_path / "secrets"
    root.mkdir()
    manufacturer = device.home / "manufacturer"
    trust = {
        "ca": [str(manufacturer / "ca.pem")],
        "reference_values": [str(manufacturer / "reference-values.json"), "modules.json"],
        "verifier": verifier.url,
    }
    import yaml

    path = write_config(root, device, measure(hello), trust=trust)
    config = yaml.safe_load(path.read_text())
    config["secrets"].append(
        {
            "name": "needs-ear",
            "value_hex": "0102",
            "allow": {
                "measurements": [measure(hello).hex()],
                "lifecycles": ["emulated"],
                "min_ear_status": "warning",
            },
        }
    )
    path.write_text(yaml.safe_dump(config))
    service = start_service(device.home, path, root / "st")
    try:
        yield service
    finally:
        service.stop()


def test_a_device_revoked_at_the_verifier_gets_no_secret(
    secrets_with_verifier: Service,
    verifier: Server,
    device: Device,
    session: WasmSession,
    hello: bytes,
) -> None:
    """HOLE (not from the chain commits; the revocation side of the same adversary): the secret
    service has no revocation of its own, and when it is configured with ``trust.verifier`` it
    passes the verifier's status to the policy only; the default policy ignores it unless the
    secret sets ``min_ear_status``. So the holder of a leaked DAK, revoked at the verifier
    (whose result is then ``contraindicated``, DeviceRevoked), still gets every secret whose
    policy admits its lifecycle, and opens it outside any TEE.

    Secure behaviour asserted: a device the trusted verifier finds revoked gets no secret."""
    ueid = _ueid(device)
    dak, device_cert = dak_of(device.home)
    verifier.provision(device.home, "revoke", "--device", ueid, "--reason", "key leaked")
    try:
        nonce = secrets_with_verifier.challenge()
        forged = forge(
            session.attest(bytes(32)),
            nonce,
            measure(hello),
            signer=dak,
            chain=[_der(device_cert)],
            lifecycle="emulated",
        )
        # The verifier was asked, and said so: a secret that sets min_ear_status is refused.
        assert "contraindicated" in refused(
            secrets_with_verifier.release(nonce, forged.evidence, "needs-ear"),
            403,
            "policy_refused",
        )
        nonce = secrets_with_verifier.challenge()
        forged = forge(
            session.attest(bytes(32)),
            nonce,
            measure(hello),
            signer=dak,
            chain=[_der(device_cert)],
            lifecycle="emulated",
        )
        secret = _release_opened(secrets_with_verifier, nonce, forged, "data-key")
        assert secret is None, (
            f"secret {secret.hex()} released to device {ueid[:16]}…, revoked at the service's "
            "trusted verifier, and opened with the leaked key outside any TEE"
        )
    finally:
        verifier.provision(device.home, "remove", "revocations", f"device:{ueid}")


# == 4. chains the owner builds with its CA key, through the verifier ==============================


def test_a_twin_ca_in_x5chain_does_not_raise_the_lifecycle(
    verifier: Server, device: Device, session: WasmSession, hello: bytes
) -> None:
    """Refused (UntrustedDevice, appraisal._check_shape; the path validator would end at the
    store's CA anyway): x5chain = [device certificate marked secured, a twin of the trusted CA
    with the same subject and key but marked secured], claiming ``secured``."""
    ca_key, ca = _ca_key(device.home)
    twin = _twin_ca(ca_key, ca, "secured")
    dak, _ = dak_of(device.home)
    ueid = ueid_of(cose.ec_key_to_cose(dak.public_key()))
    cert = _device_cert(dak.public_key(), ueid, ca_key, twin, NOW, endorses="secured")
    real = session.attest(bytes(32))
    for lifecycle in ("secured", "emulated"):

        def build(nonce: bytes, lc: str = lifecycle) -> bytes:
            return forge(
                real,
                nonce,
                measure(hello),
                signer=dak,
                chain=[_der(cert), _der(twin)],
                lifecycle=lc,
            ).evidence

        result, failure = _attest(verifier, build)
        assert failure is not None and failure["check"] == "UntrustedDevice", failure
        assert _status(result) == "contraindicated"
    # Without the twin, the device certificate issued by the same key: capped by the store's CA.
    result, failure = _attest(
        verifier,
        lambda n: (
            forge(
                real, n, measure(hello), signer=dak, chain=[_der(cert)], lifecycle="secured"
            ).evidence
        ),
    )
    assert failure is not None and failure["check"] == "LifecycleNotEndorsed", failure


def test_odd_device_keys_through_the_verifier(
    verifier: Server, device: Device, session: WasmSession, hello: bytes
) -> None:
    """Refused, and the verifier keeps serving: device certificates the owner issues under its CA
    for an RSA, Ed25519 or secp256k1 key (UntrustedDevice "does not certify an EC attestation
    key"; secp256k1: BadSignature, the key's curve does not match ES256)."""
    ca_key, ca = _ca_key(device.home)
    real = session.attest(bytes(32))
    k1 = ec.generate_private_key(ec.SECP256K1())
    others: list[tuple[object, str]] = [
        (rsa.generate_private_key(65537, 2048), "UntrustedDevice"),
        (ed25519.Ed25519PrivateKey.generate(), "UntrustedDevice"),
        (k1, "BadSignature"),
    ]
    for key, check in others:
        pub = key.public_key()  # type: ignore[attr-defined]
        cert = _device_cert(pub, b"\x01" * 33, ca_key, ca, NOW)
        signer = k1 if key is k1 else ec.generate_private_key(ec.SECP256R1())

        def build(
            nonce: bytes, c: x509.Certificate = cert, s: ec.EllipticCurvePrivateKey = signer
        ) -> bytes:
            return forge(
                real, nonce, measure(hello), signer=s, chain=[_der(c)], lifecycle="emulated"
            ).evidence

        _, failure = _attest(verifier, build)
        assert failure is not None and failure["check"] == check, (type(key).__name__, failure)
    assert verifier.proc.poll() is None


def test_removing_a_trust_anchor_is_not_outlived_by_the_link_cache(
    verifier: Server, device: Device, session: WasmSession
) -> None:
    """Refused (a new Endorsements snapshot, hence a new LinkCache, per provisioning
    generation): the device's platform and vtee tokens are the same bytes in every evidence, so
    its links are cached; after the operator removes its CA, the cached links are not reused."""
    _, failure = _attest(verifier, session.attest)
    assert failure is None
    _, failure = _attest(verifier, session.attest)  # a cache hit
    assert failure is None
    ca_der = _der(
        x509.load_pem_x509_certificate((device.home / "manufacturer" / "ca.pem").read_bytes())
    )
    import hashlib

    ca_id = hashlib.sha256(ca_der).hexdigest()
    verifier.provision(device.home, "remove", "trust-anchors", ca_id)
    try:
        _, failure = _attest(verifier, session.attest)
        assert failure is not None and failure["check"] == "UntrustedDevice", failure
    finally:
        verifier.provision(device.home, "trust-ca", device.home / "manufacturer" / "ca.pem")
    _, failure = _attest(verifier, session.attest)
    assert failure is None


# == 5. tee-config.json claiming `secured` on an emulated device ===================================


def test_an_emulated_secure_world_configured_secured_is_refused(fresh_device: Device) -> None:
    """Refused: the owner sets ``"lifecycle": "secured"`` in tee-config.json, has the vendor
    key (also theirs) re-sign the boot image so secure boot and the reference values agree,
    and restarts the real secure world. It stops at boot: its certificate (marked
    ``emulated``) endorses no more. (A token the owner signs with the DAK claiming ``secured``
    anyway is refused by appraisal: test_attack_chain.py, LifecycleNotEndorsed.)"""
    home = fresh_device.home
    honest = json.loads((home / "device" / "tee-config.json").read_text())
    fresh_device.stop()
    (home / "device" / "tee-config.json").write_text(json.dumps({**honest, "lifecycle": "secured"}))
    fresh_device.ok("device", "sign-boot")
    proc = fresh_device.cli("tee", "start")
    assert proc.returncode == 4, proc.stderr
    assert b"endorses at most 'emulated'; refusing to boot" in proc.stderr
    (home / "device" / "tee-config.json").write_text(json.dumps(honest))
    fresh_device.ok("device", "sign-boot")
    fresh_device.start()  # the honest configuration boots again


# == 6. the profile and the mark, in memory ========================================================


def _ca(
    mark: str | None = "secured",
    *,
    extra: tuple[tuple[x509.ExtensionType, bool], ...] = (),
    not_after: dt.datetime | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A hardware-manufacturer CA the verifier trusts (the attacker does not hold its key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("Hardware manufacturer CA")
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=2))
        .not_valid_after(not_after or NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    )
    if mark is not None:
        b = b.add_extension(certs.lifecycle_extension(mark), critical=False)
    for ext, critical in extra:
        b = b.add_extension(ext, critical=critical)
    return key, b.sign(key, hashes.SHA256())


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    pub: object,
    *,
    extra: tuple[tuple[x509.ExtensionType, bool], ...] = (),
    not_after: dt.datetime | None = None,
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(_name("device"))
        .issuer_name(ca.subject)
        .public_key(pub)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=5))
        .not_valid_after(not_after or NOW + dt.timedelta(days=20))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
    )
    for ext, critical in extra:
        b = b.add_extension(ext, critical=critical)
    return b.sign(ca_key, hashes.SHA256())


def _validate(
    chain: list[x509.Certificate], cas: tuple[x509.Certificate, ...], when: dt.datetime = NOW
) -> str:
    return certs.validate_device_chain(chain, cas, when).lifecycle


_PLACEHOLDER = x509.ObjectIdentifier("2.25.236139353109395264848835231284066416807")


def _oid_der(oid: x509.ObjectIdentifier) -> bytes:
    """The DER of ``oid`` as it appears inside an encoded extension."""
    ext = x509.UnrecognizedExtension(oid, b"\x05\x00")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(key, _ca(None)[1], key.public_key(), extra=((ext, False),))
    tbs = cert.tbs_certificate_bytes
    body = oid.dotted_string
    parts = [int(p) for p in body.split(".")]
    enc = bytearray()
    for n in [parts[0] * 40 + parts[1], *parts[2:]]:
        chunk = [n & 0x7F]
        n >>= 7
        while n:
            chunk.append(0x80 | (n & 0x7F))
            n >>= 7
        enc.extend(reversed(chunk))
    der = bytes([0x06, len(enc)]) + bytes(enc)
    assert der in tbs
    return der


def _with_duplicate_marks(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, first: str, second: str
) -> x509.Certificate:
    """A device certificate carrying the lifecycle mark twice (``first``, then ``second``),
    signed by ``ca_key``: cryptography's builder refuses duplicates, so the TBS is patched and
    signed by hand."""
    dak = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(
        ca_key,
        ca,
        dak.public_key(),
        extra=(
            (certs.lifecycle_extension(first), False),
            (
                x509.UnrecognizedExtension(_PLACEHOLDER, certs.lifecycle_extension(second).value),
                False,
            ),
        ),
    )
    tbs = cert.tbs_certificate_bytes.replace(_oid_der(_PLACEHOLDER), _oid_der(certs.LIFECYCLE_OID))
    sig = ca_key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    # Certificate ::= SEQUENCE { tbs, signatureAlgorithm, signatureValue }: keep the algorithm.
    alg = der[der.index(cert.tbs_certificate_bytes) + len(cert.tbs_certificate_bytes) :]
    alg = alg[: 2 + alg[1]]
    bitstring = b"\x00" + sig
    body = tbs + alg + bytes([0x03, len(bitstring)]) + bitstring
    return x509.load_der_x509_certificate(_seq(body))


def _seq(body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return b"\x30" + bytes([n]) + body
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\x30" + bytes([0x80 | len(raw)]) + raw + body


@pytest.mark.parametrize(("first", "second"), [("debug", "secured"), ("secured", "debug")])
def test_duplicate_lifecycle_marks_are_refused(first: str, second: str) -> None:
    """Refused (the path validator: a repeated extension fails to parse; had it got past,
    ``cert.extensions`` raises DuplicateExtension, one of CERT_ERRORS -> MalformedToken): a
    device certificate with contradictory marks, as a buggy hardware CA might issue for a
    ``debug`` part, is never read as ``secured`` (first or last wins)."""
    ca_key, ca = _ca("secured")
    cert = _with_duplicate_marks(ca_key, ca, first, second)
    with pytest.raises((UntrustedDevice, *certs.CERT_ERRORS)):
        got = _validate([cert], (ca,))
        pytest.fail(f"duplicate marks ({first}, {second}) read as {got!r}")


@pytest.mark.parametrize(
    "raw",
    [
        b"\x0c\x81\x07secured",  # long-form length (BER, not DER)
        b"\x13\x07secured",  # PrintableString
        b"\x16\x07secured",  # IA5String
        b"\x04\x09\x0c\x07secured",  # wrapped once more in an OCTET STRING
        b"\x0c\x07secured\x00",  # trailing byte
        b"\x0c\x07SECURED",  # case
        b"\x0c\x08secured\x00",  # NUL inside
        b"\x2c\x09\x0c\x07secured",  # constructed UTF8String (BER)
        b"",
    ],
)
def test_odd_encodings_of_the_mark_are_refused(raw: bytes) -> None:
    """Refused (certs.lifecycle_mark compares whole DER byte strings: "malformed lifecycle
    endorsement"), on a device certificate under a CA that endorses ``debug`` and on the CA
    itself: an odd encoding of ``secured`` is never read as ``secured``."""
    ext = x509.UnrecognizedExtension(certs.LIFECYCLE_OID, raw)
    ca_key, ca = _ca("debug")
    cert = _leaf(
        ca_key, ca, ec.generate_private_key(ec.SECP256R1()).public_key(), extra=((ext, False),)
    )
    with pytest.raises(UntrustedDevice, match="malformed lifecycle endorsement"):
        _validate([cert], (ca,))
    ca_key, ca = _ca(None, extra=((ext, False),))
    cert = _leaf(ca_key, ca, ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(UntrustedDevice, match="malformed lifecycle endorsement"):
        _validate([cert], (ca,))


def test_critical_extensions_are_refused() -> None:
    """Refused (the path validator: "unaccounted-for critical extensions", even under
    ExtensionPolicy.permit_all): an unknown critical extension, or the mark itself made
    critical, on the device certificate or on the CA."""
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    mark = certs.lifecycle_extension("secured")
    for ext in (unknown, mark):
        ca_key, ca = _ca("secured")
        cert = _leaf(
            ca_key, ca, ec.generate_private_key(ec.SECP256R1()).public_key(), extra=((ext, True),)
        )
        with pytest.raises(UntrustedDevice, match="critical"):
            _validate([cert], (ca,))
    ca_key, ca = _ca(None, extra=((mark, True),))
    cert = _leaf(ca_key, ca, ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(UntrustedDevice, match="critical"):
        _validate([cert], (ca,))


def test_expired_ca_and_a_device_certificate_outliving_its_ca() -> None:
    """Refused (the path validator checks the anchor's validity too; appraisal's
    _check_validity also on a LinkCache hit): a CA past its notAfter; a device certificate
    whose validity outlives its CA is accepted only while the CA is valid, also from the cache."""
    ca_key, expired = _ca("secured", not_after=NOW - dt.timedelta(days=1))
    cert = _leaf(ca_key, expired, ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(UntrustedDevice, match="not valid"):
        _validate([cert], (expired,))
    ca_key, ca = _ca("secured", not_after=NOW + dt.timedelta(days=1))
    long_lived = _leaf(
        ca_key,
        ca,
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        not_after=NOW + dt.timedelta(days=3650),
    )
    assert _validate([long_lived], (ca,)) == "secured"
    with pytest.raises(UntrustedDevice):
        _validate([long_lived], (ca,), NOW + dt.timedelta(days=2))


def _evidence_for(
    dak: ec.EllipticCurvePrivateKey,
    chain: list[x509.Certificate],
    lifecycle: str,
    nonce: bytes,
    *,
    ueid: bytes | None = None,
) -> bytes:
    """Self-contained evidence (no device needed): a plausible boot log, every key fresh."""
    vtee_key, module_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
    keys = provisioning.ProvisioningKeys()
    iat = int(time.time())
    from veritee.evidence.claims import BootEntry

    platform = PlatformClaims(
        ueid=ueid if ueid is not None else ueid_of(cose.ec_key_to_cose(dak.public_key())),
        lifecycle=lifecycle,
        secure_boot=True,
        boot_log=(BootEntry("bl", bytes(32), bytes(32), "1"),),
        vtee_id=bytes(16),
        vtee_name="default",
        vtee_config=bytes(32),
        vtee_key=cose.ec_key_to_cose(vtee_key.public_key()),
        iat=iat,
    )
    vtee = VteeClaims(
        platform.vtee_id, bytes(32), bytes(32), cose.ec_key_to_cose(module_key.public_key()), iat
    )
    module = ModuleClaims(
        nonce=nonce,
        measurement=bytes(32),
        config=bytes(32),
        name="m",
        provisioning_key=cose.x25519_key_to_cose(keys.x25519.public_key()),
        iat=iat,
    )
    return Evidence(
        cose.sign1(
            encode_claims(platform), dak, unprotected={cose.HDR_X5CHAIN: [_der(c) for c in chain]}
        ),
        cose.sign1(encode_claims(vtee), vtee_key),
        cose.sign1(encode_claims(module), module_key),
    ).encode()


def test_link_cache_is_keyed_by_the_chain_too() -> None:
    """Refused (LinkCache keys on the exact bytes of the platform token, x5chain included, and
    re-checks validity on a hit): an emulated device whose honest evidence is cached cannot have
    a second evidence, with the same signed claims but a twin CA appended to x5chain (the
    unprotected header: a network attacker or the owner can change it), reuse the first's links;
    nor does a cached link outlive its CA."""
    ca_key, ca = _ca("emulated", not_after=NOW + dt.timedelta(days=1))
    dak = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(
        ca_key, ca, dak.public_key(), extra=((certs.lifecycle_extension("secured"), False),)
    )
    anchors = TrustAnchors((ca,))
    cache = LinkCache()
    nonce = bytes(32)
    honest = _evidence_for(dak, [cert], "emulated", nonce)
    assert verify(honest, anchors, nonce=nonce, links=cache).lifecycle == "emulated"
    assert len(cache) == 1
    # Same signed payload, x5chain rewritten in the unprotected header.
    ev = Evidence.decode(honest)
    import cbor2

    tag = cbor2.loads(ev.platform)
    protected, _, payload, sig = tag.value
    twin = _twin_ca(ca_key, ca, "secured")
    rewritten = bytes(
        cbor2.dumps(
            cbor2.CBORTag(
                tag.tag, [protected, {cose.HDR_X5CHAIN: [_der(cert), _der(twin)]}, payload, sig]
            )
        )
    )
    with pytest.raises(UntrustedDevice):
        verify(Evidence(rewritten, ev.vtee, ev.module).encode(), anchors, nonce=nonce, links=cache)
    # The cached link itself, once the CA expired.
    with pytest.raises(UntrustedDevice, match="not valid"):
        verify(honest, anchors, nonce=nonce, links=cache, now=NOW + dt.timedelta(days=2))
    # Claiming secured under that chain: refused even though the device certificate says secured.
    with pytest.raises(LifecycleNotEndorsed):
        verify(_evidence_for(dak, [cert], "secured", nonce), anchors, nonce=nonce, links=cache)


@pytest.mark.parametrize("form", ["no-type-byte", "imei-type", "trailing-byte"])
def test_revocation_cannot_be_dodged_by_another_ueid_encoding(form: str) -> None:
    """Refused (BindingMismatch: the platform token's UEID must be exactly 0x01 || SHA-256 of the
    certified key's canonical COSE_Key, so a revoked device's UEID is what it must claim): the
    holder of a revoked DAK claims its UEID in another encoding to miss the revocation list."""
    ca_key, ca = _ca("secured")
    dak = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(ca_key, ca, dak.public_key())
    real = ueid_of(cose.ec_key_to_cose(dak.public_key()))
    other = {
        "no-type-byte": real[1:],
        "imei-type": b"\x03" + real[1:],
        "trailing-byte": real + b"\x00",
    }[form]
    anchors = TrustAnchors((ca,), revoked_devices=frozenset({real}))
    nonce = bytes(32)
    with pytest.raises(BindingMismatch):
        verify(_evidence_for(dak, [cert], "secured", nonce, ueid=other), anchors, nonce=nonce)
    with pytest.raises(UntrustedDevice, match="revoked"):
        verify(_evidence_for(dak, [cert], "secured", nonce), anchors, nonce=nonce)


def test_device_key_types_in_memory() -> None:
    """Refused (UntrustedDevice "does not certify an EC attestation key" for RSA/Ed25519;
    BadSignature for secp256k1, whose curve is not ES256's): no odd key type gets past the
    signature check, and every refusal is an EvidenceError (never a traceback)."""
    ca_key, ca = _ca("secured")
    anchors = TrustAnchors((ca,))
    nonce = bytes(32)
    signer = ec.generate_private_key(ec.SECP256R1())
    for pub in (
        rsa.generate_private_key(65537, 2048).public_key(),
        ed25519.Ed25519PrivateKey.generate().public_key(),
    ):
        cert = _leaf(ca_key, ca, pub)
        with pytest.raises(UntrustedDevice, match="EC attestation key"):
            verify(_evidence_for(signer, [cert], "secured", nonce), anchors, nonce=nonce)
    k1 = ec.generate_private_key(ec.SECP256K1())
    cert = _leaf(ca_key, ca, k1.public_key())
    ev = _evidence_for(
        signer, [cert], "secured", nonce, ueid=ueid_of(cose.ec_key_to_cose(k1.public_key()))
    )
    # Re-sign the platform token with the k1 key under ES256.
    d = Evidence.decode(ev)
    claims = PlatformClaims.from_cbor(cose.decode(d.platform).claims())
    token = _sign1(encode_claims(claims), k1, {cose.HDR_X5CHAIN: [_der(cert)]})
    with pytest.raises(EvidenceError) as info:
        verify(Evidence(token, d.vtee, d.module).encode(), anchors, nonce=nonce)
    assert isinstance(info.value, BadSignature | UntrustedDevice | MalformedToken)


def test_a_secured_store_twin_decides_by_store_order() -> None:
    """Refused (certs.anchor_ceilings: CA identity is the key, and a key's bound is the lowest
    over every anchor of it): with two trust anchors for one CA key (one marked emulated, one
    secured), the endorsed lifecycle was that of whichever the path validator tried first (the
    store's order). It is now ``emulated`` whatever the store's order or x5chain; and a ceiling
    recorded for the key at provisioning caps even a store of secured twins only.

    (Changed with the fix: this test asserted ``secured`` for the order (secured, emulated),
    the insecure behaviour it recorded.)"""
    ca_key, emulated = _ca("emulated")
    secured = _twin_ca(ca_key, emulated, "secured")
    cert = _leaf(ca_key, emulated, ec.generate_private_key(ec.SECP256R1()).public_key())
    assert _validate([cert], (emulated, secured)) == "emulated"
    assert _validate([cert], (secured, emulated)) == "emulated"
    assert _validate([cert, emulated], (secured, emulated)) == "emulated"
    assert _validate([cert], (secured,)) == "secured"  # the marks alone, no ceiling recorded
    capped = certs.validate_device_chain([cert], (secured,), NOW, {certs.key_id(secured): "debug"})
    assert capped.lifecycle == "debug"
    anchors = TrustAnchors.from_pem(_pem(secured))  # a CA file: capped at emulated
    assert anchors.ceilings == {certs.key_id(secured): "emulated"}


@pytest.mark.parametrize(
    "bad",
    [[123], [None], ["text"], [[b"\x30\x00"]], {"a": 1}, [b""], [b"\x30\x03\x02\x01\x01"]],
    ids=["int", "null", "text", "nested", "map", "empty", "truncated"],
)
def test_a_mangled_x5chain_is_malformed_not_a_crash(bad: object) -> None:
    """Refused (MalformedToken; CERT_ERRORS covers TypeError): the network rewrites x5chain in
    the unprotected header, which no signature covers, with values that are not certificates."""
    import cbor2

    ca_key, ca = _ca("secured")
    dak = ec.generate_private_key(ec.SECP256R1())
    ev = Evidence.decode(
        _evidence_for(dak, [_leaf(ca_key, ca, dak.public_key())], "secured", bytes(32))
    )
    tag = cbor2.loads(ev.platform)
    protected, _, payload, sig = tag.value
    token = bytes(
        cbor2.dumps(cbor2.CBORTag(tag.tag, [protected, {cose.HDR_X5CHAIN: bad}, payload, sig]))
    )
    with pytest.raises(MalformedToken):
        verify(Evidence(token, ev.vtee, ev.module).encode(), TrustAnchors((ca,)), nonce=bytes(32))


def test_cli_appraise_json_does_not_call_an_emulated_device_affirming(
    device: Device, session: WasmSession, wasm: Callable[..., Path], tmp_path: Path
) -> None:
    """HOLE (low; the CLI's JSON output): ``veritee evidence appraise --json`` prints
    ``"status": "affirming"`` for every evidence that verifies, whatever its endorsed lifecycle,
    while the verifier's EAR and RA-TLS's local appraisal (ratls.verify.local_status) call an
    emulated device ``warning``. A script that gates on ``status == "affirming"`` (the EAR's
    meaning: genuine, locked-down hardware) accepts an emulated device.

    Secure behaviour asserted: the CLI's status for an ``emulated`` device is not affirming."""
    nonce = bytes(range(32))
    ev = tmp_path / "ev.cbor"
    ev.write_bytes(session.attest(nonce))
    out = json.loads(
        device.ok(
            "evidence",
            "appraise",
            ev,
            "--nonce",
            nonce.hex(),
            "--module",
            wasm("examples/hello/hello.c"),
            "--json",
        )
    )
    assert out["lifecycle"] == "emulated"
    assert out["status"] != "affirming", out


def test_the_deployer_trusting_a_node_home_requires_secured_in_vain(
    device: Device, session: WasmSession, hello: bytes, tmp_path: Path
) -> None:
    """HOLE (the root cause of test 1, in the deployer): ``veritee app deploy --trust-home DIR``
    (app/deployer.py ``_appraiser``) and the cluster helper (app/cluster.py
    ``_trust_devices``) trust each node's ``HOME/manufacturer/ca.pem`` as is. That HOME is the
    node host user's, an adversary of docs/threat-model.md, who also holds ca.key: re-minted
    ``secured``, it makes an emulated node pass a deployment that accepts ``affirming`` only.

    Secure behaviour asserted: the deployer's appraisal does not call that node secured."""
    from veritee.app.attest import Expected, LocalAppraiser, x25519_of
    from veritee.evidence.appraisal import ReferenceValues

    ca_key, ca = _ca_key(device.home)
    twin = _twin_ca(ca_key, ca, "secured")
    node_home = tmp_path / "node-home"
    (node_home / "manufacturer").mkdir(parents=True)
    (node_home / "manufacturer" / "ca.pem").write_bytes(_pem(twin))
    shutil.copy(
        device.home / "manufacturer" / "reference-values.json",
        node_home / "manufacturer" / "reference-values.json",
    )
    dak, _ = dak_of(device.home)
    ueid = ueid_of(cose.ec_key_to_cose(dak.public_key()))
    cert = _device_cert(dak.public_key(), ueid, ca_key, twin, NOW, endorses="secured")
    real = session.attest(bytes(32))
    config = VteeClaims.from_cbor(cose.decode(Evidence.decode(real).vtee).claims()).config
    keys = provisioning.ProvisioningKeys()
    # What Deployer._appraiser builds from --trust-home node_home:
    anchors = TrustAnchors.from_pem((node_home / "manufacturer" / "ca.pem").read_bytes())
    refs = ReferenceValues.from_json(
        json.loads((node_home / "manufacturer" / "reference-values.json").read_text())
    )
    appraiser = LocalAppraiser(anchors, refs, "affirming")

    def attester(nonce: bytes) -> bytes:
        return forge(
            real,
            nonce,
            measure(hello),
            signer=dak,
            chain=[_der(cert)],
            lifecycle="secured",
            keys=keys,
        ).evidence

    probe = forge(
        real,
        bytes(32),
        measure(hello),
        signer=dak,
        chain=[_der(cert)],
        lifecycle="secured",
        keys=keys,
    )
    reported = x25519_of(
        ModuleClaims.from_cbor(cose.decode(Evidence.decode(probe.evidence).module).claims())
    )
    verdict = appraiser.appraise(attester, Expected("hello", measure(hello), config, reported))
    assert not (verdict.acceptable and verdict.lifecycle == "secured"), (
        f"emulated node accepted by an affirming-only deployment: {verdict.status}, "
        f"lifecycle {verdict.lifecycle!r}"
    )


def _self_signed_device(key: ec.EllipticCurvePrivateKey, mark: str = "secured") -> x509.Certificate:
    """A device certificate (CA:false, digitalSignature) that is its own issuer."""
    name = _name("self-endorsed device")
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(certs.lifecycle_extension(mark), critical=False)
        .sign(key, hashes.SHA256())
    )


def test_a_trust_anchor_off_the_profile_is_not_a_device_ca(
    verifier: Server, device: Device, session: WasmSession, hello: bytes, tmp_path: Path
) -> None:
    """HOLE (low: it needs the operator to provision the file, as test 1 does): the profile says
    a trust anchor is a CA (CA:true, pathlen 0, keyCertSign) that issues device certificates,
    and validate_device_chain claims to refuse "a path that is not CA -> device certificate".
    But cryptography's validator takes a leaf that is itself in the store as trusted without
    applying the CA policy, and provisioning (``trust-ca``) accepts any certificate. A
    self-signed *device* certificate (CA:false) marked ``secured``, handed to the operator as
    "my CA", is then its own anchor: the path is [device certificate], the CA checks never run,
    and the device is affirming / secured.

    Secure behaviour asserted: provisioning refuses the non-CA anchor, or appraisal refuses it."""
    dak, _ = dak_of(device.home)
    leaf = _self_signed_device(dak, "secured")
    try:
        in_memory: str | None = _validate([leaf], (leaf,))
    except UntrustedDevice:
        in_memory = None
    pem = tmp_path / "ca.pem"
    pem.write_bytes(_pem(leaf))
    rc, out = _provision_proc(verifier, device.home, "--json", "trust-ca", pem)
    served = "refused at provisioning"
    if rc == 0:
        real = session.attest(bytes(32))
        try:
            result, failure = _attest(
                verifier,
                lambda n: (
                    forge(
                        real, n, measure(hello), signer=dak, chain=[_der(leaf)], lifecycle="secured"
                    ).evidence
                ),
            )
            served = failure["check"] if failure else f"{_status(result)}"
        finally:
            for anchor in json.loads(out)["ids"]:
                verifier.provision(device.home, "remove", "trust-anchors", anchor)
    assert in_memory is None and served != "affirming", (
        f"a self-signed CA:false certificate is its own anchor: validate_device_chain endorses "
        f"{in_memory!r}; through the verifier after `trust-ca`: {served}"
    )
