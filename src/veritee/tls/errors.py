"""Why an attested TLS channel was refused: one exception per failed check.

Appraisal failures are :class:`~veritee.errors.EvidenceError` (exit code 7), refined from the
evidence checks they specialise (a stale challenge *is* a nonce mismatch), so a caller that
catches the general check still catches the RA-TLS one. Failures of the channel itself (the
peer is unreachable, breaks the protocol, or refuses us) are :class:`ChannelError` (exit 1).
Messages name what failed and never carry key material.
"""

from __future__ import annotations

from veritee.errors import Error, EvidenceError
from veritee.evidence.errors import (
    BadSignature,
    BindingMismatch,
    LifecycleNotEndorsed,
    MalformedToken,
    MeasurementNotEndorsed,
    NonceMismatch,
    UntrustedDevice,
)

# -- the peer's certificate and evidence ------------------------------------------------------


class MalformedCertificate(MalformedToken):
    """The peer's certificate is not a DER X.509 certificate we can read."""


class MalformedExtension(MalformedToken):
    """An evidence extension is garbage, truncated, of an unknown format, or two disagree."""


class NoEvidence(EvidenceError):
    """The peer presented no evidence (a plain TLS endpoint, or it sent none in time)."""


class CertificateExpired(EvidenceError):
    """The peer's certificate is outside its validity period (expired or not yet valid)."""


class StaleChallenge(NonceMismatch):
    """Challenge mode: the evidence answers another challenge than this connection's."""


class ExporterMismatch(NonceMismatch):
    """Exporter mode: the evidence is over another TLS session's exported keying material."""


class KeyNotBound(BindingMismatch):
    """The module token vouches for another key than the certificate's (user data binding)."""


class KeyOutsideSecureWorld(BindingMismatch):
    """The certificate's key is not the module attestation key minted in the secure world."""


class AttestationRejected(EvidenceError):
    """The verification service's result (EAR) does not affirm the peer."""


# -- the channel ----------------------------------------------------------------------------


class ChannelError(Error):
    """The attested channel could not be set up or broke down."""

    # The peer is a module in a secure world that did not serve (README's table); evidence
    # that does not pass is an EvidenceError (7) instead.
    exit_code = 4


class Unreachable(ChannelError):
    """No TCP connection to the peer, or it went silent past a time limit."""


class HandshakeFailed(ChannelError):
    """The TLS handshake failed (not TLS 1.3, a bad signature, the peer hung up)."""


class ProtocolViolation(ChannelError):
    """The peer sent bytes that are not this protocol (unknown or oversized frame, ...)."""


class MalformedChallenge(ProtocolViolation):
    """The challenge in the client's TLS server name is not hex, or of the wrong size."""


class PeerRefused(ChannelError):
    """The peer refused the channel and said why (e.g. our attestation did not pass there)."""


# The checks a secure-world endpoint reports by name, so the normal world re-raises the same
# class the secure world raised (see veritee.tee.tls_ta).
_BY_NAME: dict[str, type[Error]] = {
    cls.__name__: cls
    for cls in (
        MalformedToken,
        BadSignature,
        UntrustedDevice,
        LifecycleNotEndorsed,
        BindingMismatch,
        NonceMismatch,
        MeasurementNotEndorsed,
        MalformedCertificate,
        MalformedExtension,
        NoEvidence,
        CertificateExpired,
        StaleChallenge,
        ExporterMismatch,
        KeyNotBound,
        KeyOutsideSecureWorld,
        AttestationRejected,
        HandshakeFailed,
        ProtocolViolation,
        MalformedChallenge,
        PeerRefused,
        Unreachable,
    )
}


def named(check: str, reason: str) -> Error:
    """The error a check named ``check`` raises, carrying ``reason``; unknown names are refusals."""
    cls = _BY_NAME.get(check, PeerRefused)
    return cls(reason)
