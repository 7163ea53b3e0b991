"""One exception per failed appraisal check, so callers and tests know exactly which failed."""

from __future__ import annotations

from veritee.errors import EvidenceError


class MalformedToken(EvidenceError):
    """Bytes that are not a well-formed token (CBOR, COSE, claims of the wrong type)."""


class BadSignature(EvidenceError):
    """A signature or MAC does not verify, or uses an algorithm we do not accept."""


class UntrustedDevice(EvidenceError):
    """The device certificate does not chain to a trusted manufacturer CA, or is revoked."""


class BindingMismatch(EvidenceError):
    """A token does not bind the key that signs the next token in the chain."""


class NonceMismatch(EvidenceError):
    """The module token's challenge is not the verifier's nonce."""


class MeasurementNotEndorsed(EvidenceError):
    """A boot or module measurement is not among the reference values."""


class PolicyRejected(EvidenceError):
    """Every check passed but the appraisal policy does not accept the claims."""


class LifecycleNotEndorsed(EvidenceError):
    """The platform token claims a lifecycle above the one its certificate chain endorses
    (an emulated device claiming ``secured``)."""


class ReplayedRelease(EvidenceError):
    """A secret's answer is not bound to the secure world's fresh nonce of this request: a
    relay replays an answer it recorded (after the secret rotated or its policy changed)."""
