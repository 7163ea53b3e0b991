"""Key material of the emulated device: the one place that touches the HUK and private keys.

The hardware-unique key (HUK) never leaves the device monitor. Everything a vTEE holds is
derived from it with HKDF under a label naming the purpose, the vTEE id and the vTEE's
configuration digest, so a vTEE restarted with another configuration gets other keys, and no
vTEE can compute another's.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from veritee.errors import DeviceError

HUK_BYTES = 32
_P256_ORDER = int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16)


def derive(secret: bytes, label: str, *context: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 of ``secret`` bound to a purpose ``label`` and length-prefixed context."""
    info = bytearray(f"veritee/v1/{label}".encode())
    for part in context:
        info += len(part).to_bytes(4, "big") + part
    return HKDF(hashes.SHA256(), length, salt=None, info=bytes(info)).derive(secret)


def derive_p256(secret: bytes, label: str, *context: bytes) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key derived deterministically (FIPS 186-5 A.2.1 style, extra 64 bits)."""
    seed = derive(secret, label, *context, length=40)
    scalar = int.from_bytes(seed, "big") % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def write_secret(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only (0600), created that way, not chmod-ed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def read_secret(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise DeviceError(
            f"device secret {path.name} is missing in {path.parent}: run 'veritee device init'"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise DeviceError(f"device secret {path} is readable by others; expected mode 0600")
    return data


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    write_secret(
        path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def read_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(read_secret(path), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DeviceError(f"{path} does not hold an EC private key")
    return key


def public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def spki_digest(key: ec.EllipticCurvePublicKey) -> bytes:
    """SHA-256 of a public key's DER SubjectPublicKeyInfo (how boot entries name their signer)."""
    import hashlib

    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()
