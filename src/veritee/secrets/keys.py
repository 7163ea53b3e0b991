"""The service's signing key: P-256, in the state directory, mode 0600, created on first use.

Modules carry the public half in their measured code and accept only envelopes it signs, so
this key is the service's identity: losing it means rebuilding every module that pins it.
Creation is race-free across processes (written under a temporary name, then linked).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from veritee.secrets.errors import ConfigError

KEY_FILE = "service-key.pem"
ALG = "ES256"


def service_key(state: Path, *, create: bool = True) -> tuple[ec.EllipticCurvePrivateKey, bool]:
    """The service key in ``state`` and whether it was just created; raise ConfigError."""
    path = state / KEY_FILE
    created = False
    if not path.exists():
        if not create:
            raise ConfigError(
                f"no service key in {state}: start 'veritee secrets serve --state {state}' "
                "once, or run 'veritee secrets key --state DIR' to create it"
            )
        _create(path)
        created = True
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path} is readable by other users (mode {stat.filemode(mode)}); chmod 600 it"
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is not an unencrypted PEM private key") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the service key {path}: {exc.strerror}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"{path} must hold a P-256 key (envelopes are signed {ALG})")
    return key, created


def public_key_hex(key: ec.EllipticCurvePublicKey) -> str:
    """The 65-byte uncompressed point, hex: what ``GET /secrets/v1/key`` and modules carry."""
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    ).hex()


def parse_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """The inverse of :func:`public_key_hex`; raise ValueError."""
    raw = bytes.fromhex(text)
    if len(raw) != 65:
        raise ValueError("a P-256 public key is a 65-byte uncompressed point")
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)


def _create(path: Path) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process created it first: theirs wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the service key {path}: {exc.strerror}") from None
