"""Sealed storage: data only the same module, in the same (v)TEE of the same device, can open.

The key is derived from the vTEE's sealing root (itself HKDF(HUK, vTEE id, vTEE config)) and
the module's measurement, so another module, the same module modified, the same module in
another vTEE or on another device all derive a different key. AES-256-GCM with a random
96-bit nonce; the format version and measurement are authenticated as associated data.

Blob: ``version (1) || nonce (12) || ciphertext || tag (16)``.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from veritee.errors import SealingError
from veritee.tee.keys import derive

VERSION = 1
NONCE_BYTES = 12
OVERHEAD = 1 + NONCE_BYTES + 16  # = VERITEE_SEAL_OVERHEAD in sdk/veritee.h


def module_key(seal_root: bytes, measurement: bytes) -> bytes:
    """The sealing key of one module in one vTEE."""
    return derive(seal_root, "seal", measurement)


class Sealer:
    """Seals for one module instance with its key (see :func:`module_key`).

    ``predecessors``: (key, measurement) of earlier builds whose sealed data this one may
    open, because the app owner signed a succession (see evidence/deployment.py). New data
    is always sealed for this build.
    """

    def __init__(
        self, key: bytes, measurement: bytes, predecessors: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self.measurement = measurement
        self._aead = AESGCM(key)
        self._aad = bytes([VERSION]) + measurement
        self._openers = [(self._aead, self._aad)] + [
            (AESGCM(k), bytes([VERSION]) + m) for k, m in predecessors or []
        ]

    def seal(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return bytes([VERSION]) + nonce + self._aead.encrypt(nonce, plaintext, self._aad)

    def unseal(self, blob: bytes) -> bytes:
        if len(blob) < OVERHEAD or blob[0] != VERSION:
            raise SealingError("sealed blob is truncated or of an unknown format version")
        for aead, aad in self._openers:
            try:
                return aead.decrypt(blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :], aad)
            except InvalidTag:
                continue
        raise SealingError(
            "sealed blob does not open: it was altered, or sealed by another module or TEE"
        )
