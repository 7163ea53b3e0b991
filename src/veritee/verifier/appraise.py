"""The verifier's decision, I/O-free: evidence bytes, a nonce, endorsements and a policy in; an
(unsigned) EAR out.

Each scheme computes, per submodule, the claims it verified and an AR4SI trustworthiness
vector from its checks (the *facts*); the Rego policy then judges them (see
:mod:`veritee.verifier.policy`). Outcomes:

* a media type not appraised here raises
  :class:`~veritee.verifier.errors.UnsupportedMediaType` (the service answers 415);
* bytes that are not well-formed evidence (or a malformed CMW around them) give a result
  whose every submodule is contraindicated (instance-identity 99, as Veraison), the failed
  check in ``ear.veritee.failure``; a CMW whose scheme cannot be told, in submodule ``ERROR``;
* a failed cryptographic or identity check (bad signature, broken binding, nonce mismatch,
  unknown, untrusted or revoked device or CA) gives a result whose every submodule is
  contraindicated, with the failed check and its reason in ``ear.veritee.failure``; the
  policy is not asked, as no policy may accept forged evidence;
* otherwise the facts as the policy judged them: an unendorsed measurement makes
  ``executables`` contraindicated in its submodule, with the reason in ``ear.veritee.reasons``.

Claims the schemes compute (the policy may change any of them):

=================  ===========================================================================
claim              code
=================  ===========================================================================
instance-identity  2 the identity checked out; on failure 97 unknown/untrusted, 96 revoked,
                   99 cryptographic failure (signature, binding, nonce)
hardware           2 lifecycle ``secured``; 32 ``emulated``, ``debug`` and PSA/CCA debug
                   states; 96 other PSA/CCA states. A module or realm inherits its platform's
executables        2 every measurement endorsed; 96 one is not (named in the reasons)
configuration      Veritee platform only: 2 secure boot on, 32 off
storage-opaque     no claim; 96 when the policy sets ``require_rollback_protection`` and the
                   platform's counters are not in hardware (``rpmb``, ``tpm-nv``)
=================  ===========================================================================

Every Veritee submodule carries its platform's rollback protection as appraised in
``ear.veritee.rollback-protection`` (``host-file`` for the emulated device: its counters are a
file that whoever acts as its user can roll back with older sealed state).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from veritee.errors import EvidenceError
from veritee.evidence.claims import HARDWARE_ROLLBACK_PROTECTIONS
from veritee.evidence.errors import (
    BadSignature,
    BindingMismatch,
    MalformedToken,
    NonceMismatch,
    UntrustedDevice,
)
from veritee.verifier import _arm, _veritee, cmw, ear
from veritee.verifier._scheme import (
    CONTRAINDICATED,
    CRYPTO_FAILED,
    NOT_RECOGNISED,
    RESULT_VALIDITY_SECONDS,
    Context,
    Submod,
)
from veritee.verifier.errors import (
    CaRevoked,
    DeviceRevoked,
    PolicyFailed,
    UnsupportedMediaType,
)
from veritee.verifier.media import Scheme, scheme_of
from veritee.verifier.policy import CLAIMS, Policy

__all__ = [
    "ANNOTATED",
    "FAILURE",
    "REASONS",
    "RESULT_NAMES",
    "RESULT_VALIDITY_SECONDS",
    "ROLLBACK_PROTECTION",
    "SUBMODS",
    "VERITEE_CLAIMS",
    "Context",
    "Failure",
    "Outcome",
    "appraise",
    "failure_code",
]

SUBMODS: Mapping[Scheme, tuple[str, ...]] = {
    "veritee": ("platform", "module"),
    "psa": ("psa",),
    "cca": ("cca-platform", "cca-realm"),
}
# The names results carry, Veraison's for its schemes (its PSA_IOT and arm-cca plugins'
# submods), so a relying party written for Veraison finds its submodules. The policy sees the
# internal names above (``input.submods.psa`` ...); only the result is renamed.
RESULT_NAMES: Mapping[str, str] = {
    "psa": "PSA_IOT",
    "cca-platform": "CCA_SSD_PLATFORM",
    "cca-realm": "CCA_REALM",
}

ANNOTATED = "ear.veraison.annotated-evidence"
# Veritee's reading of a PSA/CCA submodule's claims (lifecycle state names, which measurement
# is endorsed), next to Veraison's annotated evidence, which carries the token's claims only.
VERITEE_CLAIMS = "ear.veritee.claims"
REASONS = "ear.veritee.reasons"
FAILURE = "ear.veritee.failure"
ROLLBACK_PROTECTION = "ear.veritee.rollback-protection"


@dataclass(frozen=True)
class Failure:
    """The check that failed (its exception class name) and why."""

    check: str
    reason: str


@dataclass(frozen=True)
class Outcome:
    """An appraisal's result: the EAR to sign, its worst status, and what failed if anything."""

    result: ear.Ear
    scheme: Scheme | str  # "cmw" for a CMW whose scheme could not be told
    status: str
    failure: Failure | None = None

    @property
    def reasons(self) -> list[str]:
        """Every finding the submodules list (e.g. unendorsed measurements)."""
        out: list[str] = []
        for appraisal in self.result.submods.values():
            out.extend(appraisal.extensions.get(REASONS, ()))
        return out


_SCHEMES: Mapping[Scheme, Callable[[bytes, bytes, Context], list[Submod]]] = {
    "veritee": _veritee.appraise,
    "psa": _arm.psa,
    "cca": _arm.cca,
}


def appraise(evidence: bytes, media_type: str, nonce: bytes, context: Context) -> Outcome:
    """Appraise ``evidence`` of ``media_type`` against the session's ``nonce``.

    A CMW (:mod:`veritee.verifier.cmw`) is unwrapped and its value appraised as the media type
    it names. Raises :class:`~veritee.verifier.errors.UnsupportedMediaType` for a media type
    not appraised here (the request is wrong); every failed check of the evidence, including
    evidence that is malformed, is in the outcome, as Veraison signs a result for bad
    evidence too.
    """
    if cmw.is_cmw(media_type):
        try:
            media_type, evidence = cmw.unwrap(evidence, media_type)
            scheme = scheme_of(media_type)
        except (MalformedToken, UnsupportedMediaType) as err:
            return _failed_unknown(nonce, context, err)
    else:
        scheme = scheme_of(media_type)
    try:
        submods = _SCHEMES[scheme](evidence, nonce, context)
        judged = _judge(scheme, submods, context.policy)
    except EvidenceError as err:
        return _failed(scheme, nonce, context, err)
    return _outcome(scheme, nonce, context, judged, None)


def failure_code(err: EvidenceError) -> int:
    """The instance-identity code (AR4SI) a failed check earns."""
    if isinstance(err, DeviceRevoked | CaRevoked):
        return CONTRAINDICATED  # recognised, but not trustworthy any more
    if isinstance(err, UntrustedDevice):
        return NOT_RECOGNISED
    if isinstance(err, BadSignature | BindingMismatch | NonceMismatch | MalformedToken):
        # Malformed evidence cannot be validated at all: Veraison gives it 99 as well.
        return CRYPTO_FAILED
    return CONTRAINDICATED


def _judge(scheme: Scheme, submods: list[Submod], policy: Policy) -> list[tuple[Submod, str]]:
    judgements = policy.judge(
        {
            "scheme": scheme,
            "submods": {
                s.name: {"claims": s.claims, "trust_vector": _full(s.vector)} for s in submods
            },
        }
    )
    judged = []
    for s in submods:
        judgement = judgements.get(s.name)
        if judgement is not None:
            s.vector = {**s.vector, **judgement.claims}
        if judgements.require_rollback_protection:
            _require_rollback_protection(s)
        status = ear.status_from_vector(ear.TrustVector(**s.vector))
        if judgement is not None and judgement.status is not None:
            status = max(status, judgement.status, key=ear.STATUSES.index)
        judged.append((s, status))
    return judged


def _require_rollback_protection(s: Submod) -> None:
    """The policy's knob: a platform whose counters the host can roll back is refused."""
    if s.rollback_protection in HARDWARE_ROLLBACK_PROTECTIONS:
        return
    if ear.tier_of(s.vector.get("storage_opaque", 0)) != "contraindicated":
        s.vector["storage_opaque"] = CONTRAINDICATED  # never better than the policy made it
    said = (
        "this platform's evidence does not say which it has"
        if s.rollback_protection is None
        else f"this platform's is '{s.rollback_protection}'"
    )
    needed = " or ".join(sorted(HARDWARE_ROLLBACK_PROTECTIONS))
    s.reasons.append(
        f"the policy requires rollback protection in hardware ({needed}); {said}: a host "
        "that can roll its counters back has accepted events accepted again"
    )


def _outcome(
    scheme: Scheme | str,
    nonce: bytes,
    context: Context,
    judged: list[tuple[Submod, str]],
    failure: Failure | None,
) -> Outcome:
    submods = {}
    for s, status in judged:
        extensions: dict[str, Any] = {}
        if s.annotated is not None:
            extensions[ANNOTATED] = s.annotated
            if s.claims:
                extensions[VERITEE_CLAIMS] = s.claims
        elif s.claims:
            extensions[ANNOTATED] = s.claims
        if s.reasons:
            extensions[REASONS] = list(s.reasons)
        if s.rollback_protection is not None:
            extensions[ROLLBACK_PROTECTION] = s.rollback_protection
        submods[RESULT_NAMES.get(s.name, s.name)] = ear.Appraisal(
            status=status,
            trust_vector=ear.TrustVector(**s.vector),
            policy_id=context.policy.id,
            extensions=extensions,
        )
    iat = int(context.now.timestamp())
    top: dict[str, Any] = {}
    if failure is not None:
        top[FAILURE] = {"check": failure.check, "reason": failure.reason}
    result = ear.Ear(
        iat=iat,
        verifier_id=context.verifier_id,
        submods=submods,
        nonce=ear.encode_nonce(nonce),
        exp=iat + context.result_validity,
        extensions=top,
    )
    worst = max((status for _, status in judged), key=ear.STATUSES.index)
    return Outcome(result, scheme, worst, failure)


def _failed(scheme: Scheme, nonce: bytes, context: Context, err: EvidenceError) -> Outcome:
    failure = Failure(type(err).__name__, str(err))
    # A policy that cannot be evaluated says nothing about the device: no claim, but no pass.
    vector = {} if isinstance(err, PolicyFailed) else {"instance_identity": failure_code(err)}
    judged = [(Submod(name, {}, dict(vector)), "contraindicated") for name in SUBMODS[scheme]]
    return _outcome(scheme, nonce, context, judged, failure)


# The submodule of a result about evidence whose scheme could not be told (a malformed CMW, or
# one wrapping a media type not appraised here): Veraison's name for it.
UNKNOWN_SUBMOD = "ERROR"


def _failed_unknown(nonce: bytes, context: Context, err: Exception) -> Outcome:
    failure = Failure(type(err).__name__, str(err))
    vector = {"instance_identity": CRYPTO_FAILED}
    judged = [(Submod(UNKNOWN_SUBMOD, {}, vector), "contraindicated")]
    return _outcome("cmw", nonce, context, judged, failure)


def _full(vector: Mapping[str, int]) -> dict[str, int]:
    return {claim: vector.get(claim, 0) for claim in CLAIMS}
