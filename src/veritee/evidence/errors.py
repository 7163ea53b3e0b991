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


# -- TPM 2.0 platform evidence (evidence/tpm.py) ---------------------------------------------


class UntrustedEk(UntrustedDevice):
    """The TPM's EK certificate does not chain to a trusted TPM manufacturer CA."""


class AkRejected(EvidenceError):
    """The attestation key is not a restricted, fixedTPM signing key of an accepted type."""


class AkNotActivated(EvidenceError):
    """The AK did not activate the verifier's credential: it is not in the trusted EK's TPM."""


class MalformedQuote(MalformedToken):
    """A TPM quote, its attestation structure or its event log is not well formed."""


class QuoteSignatureInvalid(BadSignature):
    """The TPM quote is not signed by the activated AK."""


class QuoteNotFresh(NonceMismatch):
    """The quote's qualifying data does not bind this vTEE key and challenge (a replay)."""


class PcrDigestMismatch(EvidenceError):
    """The event log does not replay to the PCR values the TPM quoted."""


class TpmEventNotEndorsed(MeasurementNotEndorsed):
    """A measured boot record in the TPM event log is not among the reference values."""


class TpmBootIncomplete(MeasurementNotEndorsed):
    """The TPM event log lacks a boot stage the reference values name, or repeats one."""
