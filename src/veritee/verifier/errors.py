"""The verification service's own errors: one class per failed check, each a diagnosis.

Appraisal failures subclass :class:`~veritee.errors.EvidenceError` (exit code 7), so evidence
that does not appraise reads the same from the CLI and from the service. Session and request
errors carry the HTTP status the service answers with (``http_status``), so the REST layer
maps errors to RFC 7807 problems in one place.
"""

from __future__ import annotations

from veritee.errors import Error, EvidenceError, UsageError
from veritee.evidence.errors import UntrustedDevice


class VerifierError(Error):
    """A request the verification service refuses; ``http_status`` is its HTTP answer."""

    exit_code = 9
    http_status = 400


# -- appraisal ---------------------------------------------------------------------------------


class UnknownDevice(UntrustedDevice):
    """No trust anchor names this device (a PSA/CCA instance id without a provisioned key)."""


class DeviceRevoked(UntrustedDevice):
    """The device (its UEID / instance id) was revoked by the operator."""


class CaRevoked(UntrustedDevice):
    """The manufacturer CA that certifies the device was revoked by the operator."""


class PolicyFailed(EvidenceError):
    """The appraisal policy could not be evaluated (a Rego runtime error, a bad result)."""


# -- sessions and requests ---------------------------------------------------------------------


class SessionNotFound(VerifierError):
    """No challenge-response session has this id (never created, deleted, or purged)."""

    http_status = 404


class SessionExpired(VerifierError):
    """The session's nonce expired before evidence arrived: start a new session."""

    http_status = 410


class SessionAlreadyUsed(VerifierError):
    """Evidence was already submitted to this session: a nonce is good for one submission."""

    http_status = 409


class NonceAlreadyUsed(VerifierError):
    """A client-chosen nonce was used by an earlier session: it would allow a replay."""

    http_status = 409


class BadNonceRequest(VerifierError):
    """``nonce`` / ``nonceSize`` in a new-session request are malformed or out of range."""


class BadQueryParameter(VerifierError):
    """A numeric query parameter is not a plain decimal number in its range."""


class NotSessionCreator(VerifierError):
    """A session is deleted only with the capability its creator received: this request
    did not bring it (a stranger who saw the session id)."""

    http_status = 403


class UnsupportedMediaType(VerifierError):
    """The evidence's media type is not one this verifier appraises."""

    http_status = 415


class NotAcceptable(VerifierError):
    """The client's Accept header excludes every representation the service can send."""

    http_status = 406


class BodyTooLarge(VerifierError):
    """A request body is over its named size limit."""

    http_status = 413


class BadRequestBody(VerifierError):
    """A request body is empty, not JSON, or not the shape the endpoint expects."""


class Unauthorized(VerifierError):
    """Provisioning needs the operator's bearer token; it was missing or wrong."""

    http_status = 401


class TokenInClear(VerifierError):
    """The provisioning token came over plain HTTP from another host: a network saw it."""

    http_status = 403


class NotFound(VerifierError):
    """The provisioned item (anchor, reference value, policy, revocation) does not exist."""

    http_status = 404


class ProvisioningError(VerifierError, UsageError):
    """Provisioning input is malformed: a bad PEM, measurement, policy or deployment file."""

    http_status = 422


class PolicyCompileError(ProvisioningError):
    """A Rego policy does not compile, or lacks the rules the verifier queries."""


class VerifierUnreachable(Error):
    """The verification service did not answer (client side)."""

    exit_code = 9


class VerifierRefused(Error):
    """The verification service answered with a problem (client side); its detail follows."""

    exit_code = 9

    def __init__(self, message: str, *, status: int, check: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.check = check


__all__ = [
    "BadNonceRequest",
    "BadQueryParameter",
    "BadRequestBody",
    "BodyTooLarge",
    "CaRevoked",
    "DeviceRevoked",
    "NonceAlreadyUsed",
    "NotAcceptable",
    "NotFound",
    "NotSessionCreator",
    "PolicyCompileError",
    "PolicyFailed",
    "ProvisioningError",
    "SessionAlreadyUsed",
    "SessionExpired",
    "SessionNotFound",
    "Unauthorized",
    "UnknownDevice",
    "UnsupportedMediaType",
    "VerifierError",
    "VerifierRefused",
    "VerifierUnreachable",
]


class CorimMalformed(ProvisioningError):
    """A CoRIM/CoMID is not valid CBOR, truncated, over a limit, or not the shape its profile
    requires."""


class CorimUnknownProfile(ProvisioningError):
    """A CoRIM names no profile, or one this verifier does not know (or another than its
    Content-Type says)."""


class CorimUnsupported(ProvisioningError):
    """A CoRIM holds a tag, field or triple this verifier does not appraise: refused rather
    than silently ignored."""


class CorimSignerMissing(ProvisioningError):
    """A signed CoRIM arrived but no CoRIM signer key is configured to check it."""


class CorimUnsigned(ProvisioningError):
    """A CoRIM signer key is configured and the CoRIM is unsigned."""


class CorimBadSignature(ProvisioningError):
    """A signed CoRIM's signature does not verify under the configured signer key."""

    http_status = 403
