"""Why the secret service refused: one exception per failed check.

Two families, so callers can tell them apart:

* the release **decision** (:mod:`veritee.secrets.release`) raises only
  :class:`~veritee.errors.EvidenceError` subclasses: the appraisal's own (``MalformedToken``,
  ``BadSignature``, ``UntrustedDevice``, ``BindingMismatch``, ``NonceMismatch``,
  ``MeasurementNotEndorsed``) and the ones below;
* the **request** around it (body, nonce, secret name) raises :class:`RequestRefused`
  subclasses.

Messages never carry a secret's value.
"""

from __future__ import annotations

from veritee.errors import Error, EvidenceError, UsageError
from veritee.evidence.errors import MalformedToken, PolicyRejected


class ConfigError(UsageError):
    """The service configuration is invalid; the message names the field."""


class PolicyCompileError(ConfigError):
    """A release policy (Rego) does not compile or does not answer ``allow``."""


# -- the decision ------------------------------------------------------------------------


class UnknownSuite(EvidenceError):
    """The requested HPKE suite is not one the service offers."""


class NoKeyForSuite(MalformedToken):
    """The module token carries no provisioning key for the requested suite."""


class ReleaseDenied(PolicyRejected):
    """The evidence is genuine, but the secret's release policy does not accept it."""

    def __init__(self, message: str, reasons: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.reasons = reasons


class VerifierContraindicated(ReleaseDenied):
    """The trusted verifier's result for this evidence is not releasable (contraindicated: a
    revoked device or CA, an unendorsed boot): nothing is released, whatever the policy says."""


class PolicyFailed(EvidenceError):
    """The release policy could not be evaluated (an operator's bug: nothing is released)."""


# -- the request -------------------------------------------------------------------------


class RequestRefused(Error):
    """A release or challenge request the service refuses before or around the decision."""

    exit_code = 9  # the README's table: the secret service is on the verifier's row


class BadRequest(RequestRefused):
    """The request body is not the protocol's JSON (missing or mistyped field, bad hex)."""


class BodyTooLarge(RequestRefused):
    """The request body is over its named limit; it was not read to the end."""


class UnknownSecret(RequestRefused):
    """No secret of that name is configured."""


class NonceGone(RequestRefused):
    """The nonce cannot be used: never issued here, already used, or expired."""


class NonceUnknown(NonceGone):
    """This service never issued the nonce (or forgot it long after it expired)."""


class NonceUsed(NonceGone):
    """The nonce was already presented once; every release consumes its nonce."""


class NonceExpired(NonceGone):
    """The nonce's lifetime ran out before the release request arrived."""


class TooManyChallenges(RequestRefused):
    """Too many unused, unexpired nonces are outstanding; try again shortly."""


class VerifierUnavailable(RequestRefused):
    """The verification service the secrets rely on did not appraise the evidence."""


class TooManyChallengesFromClient(TooManyChallenges):
    """This client holds too many unused, unexpired nonces; others are still served."""
