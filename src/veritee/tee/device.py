"""Provisioning of an emulated device: what a manufacturer does once, at the factory.

``provision`` creates (or takes) a manufacturer CA, a vendor secure-boot key, and for the
device a hardware-unique key (HUK), a device attestation key (DAK, ECDSA P-256) with an X.509
certificate issued by the CA, and a boot manifest signed by the vendor over the secure world
as it is now. Secrets are written 0600. The default vTEE is created with a fresh random id.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from veritee.errors import DeviceError, UsageError
from veritee.evidence import certs, cose
from veritee.evidence.claims import ueid_of
from veritee.evidence.errors import UntrustedDevice
from veritee.home import DEFAULT_VTEE, Home
from veritee.tee import boot, keys, vtees

CA_VALIDITY = dt.timedelta(days=3650)
DEVICE_VALIDITY = dt.timedelta(days=3650)

# File names (device/ is the device's fuses and ROM; manufacturer/ is the factory's side).
HUK = "huk.bin"
DAK_KEY = "dak.key"
DAK_CERT = "dak.pem"
CA_CERT = "ca.pem"
CA_KEY = "ca.key"
VENDOR_KEY = "vendor.key"
VENDOR_PUB = "vendor.pub.pem"
MANIFEST = "boot-manifest.cbor"
REFERENCE_VALUES = "reference-values.json"

DEFAULT_TEE_CONFIG: dict[str, Any] = {"lifecycle": "emulated", "secure_boot": True}
# What an emulated device's certificates endorse (evidence.certs, the lifecycle mark): its DAK
# is a file its owner can read, so nothing it signs may claim more (issue 18, attack 4).
EMULATED = "emulated"


@dataclass(frozen=True)
class DeviceInfo:
    ueid: bytes
    certificate: x509.Certificate
    ca: x509.Certificate
    vendor_pub: ec.EllipticCurvePublicKey


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Veritee emulated devices"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _new_ca(
    now: dt.datetime, *, endorses: str = EMULATED
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A manufacturer CA under Veritee's device-certificate profile, marked with the highest
    lifecycle its devices may claim (``device init`` makes an emulated one; tests may stand in
    for a hardware manufacturer with ``endorses="secured"``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("Veritee emulated manufacturer CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(certs.lifecycle_extension(endorses), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _device_cert(
    dak: ec.EllipticCurvePublicKey,
    ueid: bytes,
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    now: dt.datetime,
    *,
    endorses: str = EMULATED,
) -> x509.Certificate:
    """The device certificate: CA:false, digitalSignature, marked with what the device may
    claim (``device init`` always marks ``emulated``, whatever its CA endorses)."""
    return (
        x509.CertificateBuilder()
        .subject_name(_name(f"Veritee device {ueid.hex()[:40]}"))
        .issuer_name(ca.subject)
        .public_key(dak)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + DEVICE_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(dak), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),  # type: ignore[arg-type]
            False,
        )
        .add_extension(certs.lifecycle_extension(endorses), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _load_ca(ca_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    try:
        cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
    except FileNotFoundError:
        raise UsageError(f"--ca {ca_dir}: no {CA_CERT} there") from None
    except ValueError:
        raise UsageError(f"--ca {ca_dir}: {CA_CERT} is not a PEM certificate") from None
    key = keys.read_private_key(ca_dir / CA_KEY)
    if key.public_key() != cert.public_key():
        raise UsageError(f"--ca {ca_dir}: {CA_KEY} does not match {CA_CERT}")
    return key, cert


def is_provisioned(home: Home) -> bool:
    return (home.device / DAK_CERT).exists()


def provision(
    home: Home, *, ca_dir: Path | None = None, force: bool = False, huk: bytes | None = None
) -> DeviceInfo:
    """Provision a device in ``home``; refuse to overwrite one unless ``force``.

    ``huk``: the secure world's root secret, when a hardware backend keeps it (the TPM
    backend seals it in the TPM): then neither it nor the attestation key is written to a
    file, and the device certificate only names the device (its evidence is the backend's)."""
    if is_provisioned(home) and not force:
        raise DeviceError(
            f"a device is already provisioned in {home.root} (use --force to replace it, "
            "which destroys its keys and sealed data)"
        )
    if force:
        for sub in (home.device, home.vtees, home.manufacturer):
            shutil.rmtree(sub, ignore_errors=True)
    now = dt.datetime.now(dt.UTC)
    if ca_dir is not None:
        ca_key, ca = _load_ca(ca_dir)
    else:
        ca_key, ca = _new_ca(now)
    dak = ec.generate_private_key(ec.SECP256R1())
    ueid = ueid_of(cose.ec_key_to_cose(dak.public_key()))
    cert = _device_cert(dak.public_key(), ueid, ca_key, ca, now)
    try:
        # The same judgement every verifier makes: refuse a CA that cannot certify devices.
        certs.validate_device_chain([cert], (ca,), now)
    except UntrustedDevice as exc:
        raise UsageError(
            f"--ca {ca_dir}: {CA_CERT} does not fit Veritee's device-certificate profile "
            f"(CA:true, pathlen 0, keyCertSign): {exc}"
        ) from None
    if ca_dir is None:
        keys.write_private_key(home.manufacturer / CA_KEY, ca_key)
    (home.manufacturer).mkdir(parents=True, exist_ok=True)
    (home.manufacturer / CA_CERT).write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    vendor = ec.generate_private_key(ec.SECP256R1())
    keys.write_private_key(home.manufacturer / VENDOR_KEY, vendor)

    if huk is None:
        huk = secrets.token_bytes(keys.HUK_BYTES)
        keys.write_secret(home.device / HUK, huk)
        keys.write_private_key(home.device / DAK_KEY, dak)
    else:
        home.device.mkdir(parents=True, exist_ok=True)
    (home.device / DAK_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (home.device / CA_CERT).write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (home.device / VENDOR_PUB).write_bytes(keys.public_pem(vendor.public_key()))
    (home.device / "tee-config.json").write_text(json.dumps(DEFAULT_TEE_CONFIG, indent=2))
    sign_boot_image(home)
    vtees.create(home, huk, DEFAULT_VTEE, vtees.make_config())
    return load_info(home)


def sign_boot_image(home: Home) -> list[boot.Stage]:
    """The vendor signs the secure world as installed now; publish its reference values."""
    vendor = keys.read_private_key(home.manufacturer / VENDOR_KEY)
    stages = boot.measure_stages(tee_config(home))
    (home.device / MANIFEST).write_bytes(boot.sign_manifest(stages, vendor))
    refs = {
        "boot": [
            {"component": s.component, "measurement": s.measurement.hex(), "version": s.version}
            for s in stages
        ]
    }
    (home.manufacturer / REFERENCE_VALUES).write_text(json.dumps(refs, indent=2) + "\n")
    return stages


def tee_config(home: Home) -> dict[str, Any]:
    try:
        value = json.loads((home.device / "tee-config.json").read_text())
    except FileNotFoundError:
        raise DeviceError(f"no device in {home.root}: run 'veritee device init' first") from None
    except json.JSONDecodeError as exc:
        raise DeviceError(f"device tee-config.json is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise DeviceError("device tee-config.json must hold a JSON object")
    return value


def load_info(home: Home) -> DeviceInfo:
    """The device's public identity (no secret is read)."""
    try:
        cert = x509.load_pem_x509_certificate((home.device / DAK_CERT).read_bytes())
        ca = x509.load_pem_x509_certificate((home.device / CA_CERT).read_bytes())
        vendor = serialization.load_pem_public_key((home.device / VENDOR_PUB).read_bytes())
    except FileNotFoundError:
        raise DeviceError(f"no device in {home.root}: run 'veritee device init' first") from None
    except ValueError as exc:
        raise DeviceError(f"device files in {home.device} are corrupt: {exc}") from None
    dak = cert.public_key()
    if not isinstance(dak, ec.EllipticCurvePublicKey) or not isinstance(
        vendor, ec.EllipticCurvePublicKey
    ):
        raise DeviceError("device certificate or vendor key is not an EC key")
    return DeviceInfo(ueid_of(cose.ec_key_to_cose(dak)), cert, ca, vendor)
