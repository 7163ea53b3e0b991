"""COSE_Sign1 / COSE_Mac0 (RFC 9052) and COSE_Key (EC2, OKP), over cbor2 and cryptography.

Kept small and strict on purpose: this is the parser attackers talk to first. It accepts only
the algorithms listed in ``ALGORITHMS``, takes ``alg`` from the *protected* header only, and
bounds input size before decoding. ECDSA signatures are raw ``r || s`` as COSE requires.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from veritee.evidence.errors import BadSignature, MalformedToken

# An attacker-sized token must not exhaust memory: evidence here is a few KiB.
MAX_TOKEN_BYTES = 64 * 1024

TAG_SIGN1 = 18
TAG_MAC0 = 17

# Header labels (RFC 9052 section 3.1, RFC 9360 for x5chain).
HDR_ALG = 1
HDR_KID = 4
HDR_X5CHAIN = 33

ES256 = -7
ES384 = -35
HMAC256 = 5

# alg -> (curve, hash, coordinate size in bytes)
_ECDSA: dict[int, tuple[type[ec.EllipticCurve], hashes.HashAlgorithm, int]] = {
    ES256: (ec.SECP256R1, hashes.SHA256(), 32),
    ES384: (ec.SECP384R1, hashes.SHA384(), 48),
}
ALGORITHMS = frozenset([*_ECDSA, HMAC256])

# COSE_Key labels (RFC 9053).
_KTY, _CRV, _X, _Y = 1, -1, -2, -3
_KTY_OKP, _KTY_EC2 = 1, 2
_CRV_P256, _CRV_P384, _CRV_X25519 = 1, 2, 4
_EC_CURVES: dict[int, tuple[type[ec.EllipticCurve], int]] = {
    _CRV_P256: (ec.SECP256R1, 32),
    _CRV_P384: (ec.SECP384R1, 48),
}


@dataclass(frozen=True)
class Sign1:
    """A decoded, not yet verified, COSE_Sign1 or COSE_Mac0 message."""

    protected: bytes
    protected_map: dict[int, Any]
    unprotected: dict[int, Any]
    payload: bytes
    signature: bytes
    mac: bool = False
    tagged: bool = field(default=True)

    @property
    def alg(self) -> int:
        alg = self.protected_map.get(HDR_ALG)
        if not isinstance(alg, int):
            raise MalformedToken("COSE protected header has no integer 'alg'")
        return alg

    def claims(self) -> dict[Any, Any]:
        """Decode the payload as a CBOR map of claims."""
        value = loads(self.payload, what="token payload")
        if not isinstance(value, dict):
            raise MalformedToken("token payload is not a CBOR map of claims")
        return value

    def to_be_signed(self, external_aad: bytes = b"") -> bytes:
        context = "MAC0" if self.mac else "Signature1"
        return bytes(cbor2.dumps([context, self.protected, external_aad, self.payload]))


def loads(data: bytes, *, what: str) -> Any:
    """Decode bounded CBOR, turning every decoder failure into :class:`MalformedToken`."""
    if len(data) > MAX_TOKEN_BYTES:
        raise MalformedToken(f"{what} is {len(data)} bytes, over the {MAX_TOKEN_BYTES}-byte limit")
    try:
        # Duplicate map keys are refused: another verifier might keep the first, we the last.
        return cbor2.loads(data, allow_duplicate_keys=False)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise MalformedToken(f"{what} is not valid CBOR ({type(exc).__name__})") from None


def decode(data: bytes, *, what: str = "COSE message") -> Sign1:
    """Parse a (tagged or untagged) COSE_Sign1 or COSE_Mac0 without verifying it."""
    value = loads(data, what=what)
    tagged = False
    mac = False
    if isinstance(value, cbor2.CBORTag):
        if value.tag not in (TAG_SIGN1, TAG_MAC0):
            raise MalformedToken(
                f"{what}: CBOR tag {value.tag} is not COSE_Sign1 (18) or COSE_Mac0 (17)"
            )
        tagged, mac, value = True, value.tag == TAG_MAC0, value.value
    # cbor2 decodes the contents of a tag as immutable types (tuple, frozendict).
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise MalformedToken(f"{what} is not a 4-element COSE array")
    protected, unprotected, payload, signature = value
    if not isinstance(protected, bytes) or not isinstance(unprotected, Mapping):
        raise MalformedToken(f"{what}: COSE headers have the wrong types")
    unprotected = {k: list(v) if isinstance(v, tuple) else v for k, v in unprotected.items()}
    if not isinstance(payload, bytes) or not isinstance(signature, bytes):
        raise MalformedToken(f"{what}: COSE payload or signature is not a byte string")
    protected_map = loads(protected, what=f"{what} protected header") if protected else {}
    if not isinstance(protected_map, dict):
        raise MalformedToken(f"{what}: COSE protected header is not a map")
    return Sign1(protected, protected_map, unprotected, payload, signature, mac, tagged)


def sign1(
    payload: bytes,
    key: ec.EllipticCurvePrivateKey,
    *,
    unprotected: dict[int, Any] | None = None,
) -> bytes:
    """Return a tagged COSE_Sign1 over ``payload`` (ES256 on P-256, ES384 on P-384)."""
    alg = ES384 if isinstance(key.curve, ec.SECP384R1) else ES256
    _, hash_alg, size = _ECDSA[alg]
    protected = bytes(cbor2.dumps({HDR_ALG: alg}))
    msg = Sign1(protected, {HDR_ALG: alg}, unprotected or {}, payload, b"")
    der = key.sign(msg.to_be_signed(), ec.ECDSA(hash_alg))
    r, s = decode_dss_signature(der)
    signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    body = [protected, unprotected or {}, payload, signature]
    return bytes(cbor2.dumps(cbor2.CBORTag(TAG_SIGN1, body)))


def verify(msg: Sign1, key: ec.EllipticCurvePublicKey | bytes, *, what: str = "token") -> None:
    """Check ``msg``'s signature (or MAC, with a ``bytes`` key); raise :class:`BadSignature`."""
    alg = msg.alg
    if msg.mac:
        if alg != HMAC256 or not isinstance(key, bytes):
            raise BadSignature(f"{what}: MAC algorithm {alg} is not accepted")
        tag = hmac.new(key, msg.to_be_signed(), hashlib.sha256).digest()
        if not hmac.compare_digest(tag, msg.signature):
            raise BadSignature(f"{what}: MAC does not verify")
        return
    if alg not in _ECDSA or isinstance(key, bytes):
        raise BadSignature(f"{what}: signature algorithm {alg} is not accepted")
    curve, hash_alg, size = _ECDSA[alg]
    if not isinstance(key.curve, curve):
        raise BadSignature(f"{what}: key curve {key.curve.name} does not match algorithm {alg}")
    if len(msg.signature) != 2 * size:
        raise BadSignature(f"{what}: signature is {len(msg.signature)} bytes, not {2 * size}")
    r = int.from_bytes(msg.signature[:size], "big")
    s = int.from_bytes(msg.signature[size:], "big")
    try:
        key.verify(encode_dss_signature(r, s), msg.to_be_signed(), ec.ECDSA(hash_alg))
    except InvalidSignature:
        raise BadSignature(f"{what}: signature does not verify") from None


def ec_key_to_cose(key: ec.EllipticCurvePublicKey) -> dict[int, Any]:
    """COSE_Key map (EC2) of a P-256 or P-384 public key."""
    numbers = key.public_numbers()
    crv, size = (_CRV_P384, 48) if isinstance(key.curve, ec.SECP384R1) else (_CRV_P256, 32)
    return {
        _KTY: _KTY_EC2,
        _CRV: crv,
        _X: numbers.x.to_bytes(size, "big"),
        _Y: numbers.y.to_bytes(size, "big"),
    }


def x25519_key_to_cose(key: x25519.X25519PublicKey) -> dict[int, Any]:
    """COSE_Key map (OKP, X25519) of a key-agreement public key."""
    from cryptography.hazmat.primitives import serialization

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {_KTY: _KTY_OKP, _CRV: _CRV_X25519, _X: raw}


def cose_to_ec_key(value: Any) -> ec.EllipticCurvePublicKey:
    """Parse an EC2 COSE_Key (map) into a public key; raise :class:`MalformedToken`."""
    if not isinstance(value, dict) or value.get(_KTY) != _KTY_EC2:
        raise MalformedToken("key is not an EC2 COSE_Key")
    crv = value.get(_CRV)
    curve_info = _EC_CURVES.get(crv) if isinstance(crv, int) else None
    x, y = value.get(_X), value.get(_Y)
    if curve_info is None or not isinstance(x, bytes) or not isinstance(y, bytes):
        raise MalformedToken("EC2 COSE_Key has an unknown curve or bad coordinates")
    curve, size = curve_info
    if len(x) != size or len(y) != size:
        raise MalformedToken("EC2 COSE_Key coordinates have the wrong length")
    try:
        return ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve()
        ).public_key()
    except ValueError:
        raise MalformedToken("EC2 COSE_Key is not a point on its curve") from None


def cose_to_x25519_key(value: Any) -> x25519.X25519PublicKey:
    """Parse an OKP/X25519 COSE_Key; raise :class:`MalformedToken`."""
    return x25519.X25519PublicKey.from_public_bytes(x25519_public_bytes(value))


def x25519_public_bytes(value: Any) -> bytes:
    """The public value of an OKP/X25519 COSE_Key; raise :class:`MalformedToken`.

    This is the whole of checking such a key: every 32-byte string is an X25519 public
    key (RFC 7748 section 5), so building the key object would refuse nothing more.
    """
    if not isinstance(value, dict) or value.get(_KTY) != _KTY_OKP or value.get(_CRV) != _CRV_X25519:
        raise MalformedToken("key is not an X25519 COSE_Key")
    x = value.get(_X)
    if not isinstance(x, bytes) or len(x) != 32:
        raise MalformedToken("X25519 COSE_Key has a bad public value")
    return x


def key_digest(cose_key: dict[int, Any]) -> bytes:
    """SHA-256 of the canonical CBOR encoding of a COSE_Key: how tokens bind a key."""
    return hashlib.sha256(cbor2.dumps(cose_key, canonical=True)).digest()
