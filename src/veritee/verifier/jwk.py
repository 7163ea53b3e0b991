"""JSON Web Keys (RFC 7517) for EC public keys: the verifier's key and provisioned PSA/CCA keys."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from veritee.verifier.errors import ProvisioningError

_CURVES = {"P-256": (ec.SECP256R1, 32), "P-384": (ec.SECP384R1, 48)}


def ec_public_key_from_jwk(value: Mapping[str, Any] | str) -> ec.EllipticCurvePublicKey:
    """A P-256 or P-384 public key from a JWK; private JWKs are refused."""
    try:
        parsed = json.loads(value) if isinstance(value, str) else dict(value)
    except ValueError:
        raise ProvisioningError("the JWK is not JSON") from None
    if not isinstance(parsed, dict) or "d" in parsed:
        raise ProvisioningError("expected a public JWK object (one without 'd')")
    if parsed.get("crv") not in _CURVES:
        raise ProvisioningError("the JWK must be an EC key on P-256 or P-384")
    try:
        key = ECAlgorithm.from_jwk(parsed)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise ProvisioningError(f"the JWK is not a usable EC key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ProvisioningError("the JWK is not an EC public key")
    return key


def to_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The public JWK of ``key``, with ``alg`` (ES256 / ES384) and ``kid`` (its thumbprint)."""
    name = "P-384" if isinstance(key.curve, ec.SECP384R1) else "P-256"
    size = _CURVES[name][1]
    numbers = key.public_numbers()
    jwk = {
        "kty": "EC",
        "crv": name,
        "x": _b64(numbers.x.to_bytes(size, "big")),
        "y": _b64(numbers.y.to_bytes(size, "big")),
    }
    return {**jwk, "alg": "ES384" if name == "P-384" else "ES256", "kid": thumbprint(jwk)}


def thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256) of an EC key, base64url."""
    canonical = json.dumps(
        {k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True
    )
    return _b64(hashlib.sha256(canonical.encode()).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
