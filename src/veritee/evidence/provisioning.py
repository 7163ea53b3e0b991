"""Secret provisioning envelopes: a secret HPKE-encrypted to an attested module, and signed.

The secret service encrypts a secret to the provisioning key from the module token (RFC 9180
HPKE, base mode), so whatever relays it learns nothing, and signs the envelope (ES256) so the
module knows who sent it: the secure world checks the signature against the service key that
the module carries in its own (measured) code. Two suites:

* ``x25519``: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM
* ``mlkem768-x25519``: the hybrid post-quantum KEM ML-KEM-768 + X25519, same KDF and AEAD

The HPKE ``info`` and the signature bind the suite, the challenge (nonce), the secret's name and
the *binding*: a fresh nonce the secure world drew for this one request and put in its
evidence (the module token's user data), which the service echoes. The challenge comes from
the service through the untrusted relay, so it alone cannot tell the secure world an answer
is fresh; the binding can, since only the secure world chose it, and it is used once. So an
envelope cannot be replayed under another challenge, name or request. Pure functions, no I/O.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.hpke import (
    AEAD,
    KDF,
    KEM,
    MLKEM768X25519PrivateKey,
    MLKEM768X25519PublicKey,
    Suite,
)

from veritee.evidence.errors import BadSignature, MalformedToken, ReplayedRelease

LABEL = "veritee-secret-v2"  # v2: the secure world's binding nonce is signed and in the info
SUITE_X25519 = "x25519"
SUITE_PQ = "mlkem768-x25519"
SUITES = (SUITE_X25519, SUITE_PQ)
MAX_SECRET_BYTES = 64 * 1024  # a key or a credential, not a data set
MAX_NAME = 128

_SUITES = {
    SUITE_X25519: Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM),
    SUITE_PQ: Suite(KEM.MLKEM768_X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM),
}
# Claim value of the post-quantum provisioning key: {1: ML-KEM-768 public, 2: X25519 public}.
_PQ_MLKEM, _PQ_X25519 = 1, 2


@dataclass(frozen=True)
class Envelope:
    name: str
    suite: str
    ciphertext: bytes
    signature: bytes  # ES256, raw r || s, over :func:`signed_bytes`
    binding: bytes = b""  # the secure world's nonce for this request, from its evidence


class ProvisioningKeys:
    """A module instance's private provisioning keys (held by the secure world only)."""

    def __init__(self) -> None:
        self.x25519 = x25519.X25519PrivateKey.generate()
        self.mlkem = mlkem.MLKEM768PrivateKey.generate()
        self.pq_x25519 = x25519.X25519PrivateKey.generate()

    def pq_public_claim(self) -> dict[int, bytes]:
        return {
            _PQ_MLKEM: self.mlkem.public_key().public_bytes_raw(),
            _PQ_X25519: self.pq_x25519.public_key().public_bytes_raw(),
        }

    def export(self) -> dict[str, bytes]:
        """Raw private keys, to hand to the worker process that runs this module."""
        return {
            "x25519": self.x25519.private_bytes_raw(),
            "mlkem": self.mlkem.private_bytes_raw(),
            "pq_x25519": self.pq_x25519.private_bytes_raw(),
        }

    @classmethod
    def restore(cls, raw: dict[str, bytes]) -> ProvisioningKeys:
        keys = cls.__new__(cls)
        keys.x25519 = x25519.X25519PrivateKey.from_private_bytes(raw["x25519"])
        keys.mlkem = mlkem.MLKEM768PrivateKey.from_seed_bytes(raw["mlkem"])
        keys.pq_x25519 = x25519.X25519PrivateKey.from_private_bytes(raw["pq_x25519"])
        return keys


def _info(suite: str, nonce: bytes, name: str, binding: bytes) -> bytes:
    return bytes(cbor2.dumps([LABEL, suite, nonce, name, binding]))


def signed_bytes(nonce: bytes, env: Envelope) -> bytes:
    return hashlib.sha256(
        cbor2.dumps([LABEL, nonce, env.name, env.suite, env.ciphertext, env.binding])
    ).digest()


@functools.lru_cache(maxsize=1024)
def _mlkem_key(raw: bytes) -> mlkem.MLKEM768PublicKey:
    # Checking an ML-KEM key is the costly part of reading a module token; a module presents
    # the same key with each attestation, and the same bytes always give the same key.
    return mlkem.MLKEM768PublicKey.from_public_bytes(raw)


def pq_public_key(claim: Any) -> MLKEM768X25519PublicKey:
    """Parse the post-quantum provisioning key claim; raise MalformedToken."""
    if not isinstance(claim, dict):
        raise MalformedToken("post-quantum provisioning key claim is not a map")
    try:
        return MLKEM768X25519PublicKey(
            _mlkem_key(claim[_PQ_MLKEM]),
            x25519.X25519PublicKey.from_public_bytes(claim[_PQ_X25519]),
        )
    except (KeyError, TypeError, ValueError):
        raise MalformedToken("post-quantum provisioning key claim does not parse") from None


def seal(
    secret: bytes,
    *,
    name: str,
    nonce: bytes,
    suite: str,
    recipient: x25519.X25519PublicKey | MLKEM768X25519PublicKey,
    signer: ec.EllipticCurvePrivateKey,
    binding: bytes,
) -> Envelope:
    """Service side: encrypt ``secret`` to the module and sign the envelope.

    ``binding``: the user data of the module token the release was judged on (the secure
    world's nonce for this request).
    """
    if suite not in _SUITES:
        raise MalformedToken(f"unknown suite {suite!r}; use one of {SUITES}")
    if len(secret) > MAX_SECRET_BYTES:
        raise MalformedToken(f"secret is over {MAX_SECRET_BYTES} bytes")
    info = _info(suite, nonce, name, binding)
    ciphertext = _SUITES[suite].encrypt(secret, recipient, info=info)
    unsigned = Envelope(name, suite, ciphertext, b"", binding)
    der = signer.sign(signed_bytes(nonce, unsigned), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return Envelope(name, suite, ciphertext, raw, binding)


def open_(
    env: Envelope,
    *,
    nonce: bytes,
    binding: bytes,
    keys: ProvisioningKeys,
    service_key: ec.EllipticCurvePublicKey,
) -> bytes:
    """Secure-world side: check the binding, the service's signature, then decrypt.

    ``binding``: the fresh nonce this secure world drew for this request (never one from
    the answer). Raise ReplayedRelease for an answer to another request, else EvidenceError.
    """
    if not hmac.compare_digest(env.binding, binding):
        raise ReplayedRelease(
            "the secret's answer is not for this request (a replayed or stale answer)"
        )
    if env.suite not in _SUITES or len(env.signature) != 64:
        raise MalformedToken("secret envelope has an unknown suite or a malformed signature")
    r = int.from_bytes(env.signature[:32], "big")
    s = int.from_bytes(env.signature[32:], "big")
    try:
        service_key.verify(
            encode_dss_signature(r, s), signed_bytes(nonce, env), ec.ECDSA(hashes.SHA256())
        )
    except InvalidSignature:
        raise BadSignature("secret envelope is not signed by the expected service") from None
    private: Any = (
        keys.x25519
        if env.suite == SUITE_X25519
        else MLKEM768X25519PrivateKey(keys.mlkem, keys.pq_x25519)
    )
    try:
        return _SUITES[env.suite].decrypt(
            env.ciphertext, private, info=_info(env.suite, nonce, env.name, binding)
        )
    except Exception:
        raise BadSignature("secret envelope does not decrypt for this module") from None
