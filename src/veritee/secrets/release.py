"""The release decision: may this evidence have this secret, and to which key? I/O-free.

Bytes and values in, a :class:`Recipient` out or one exception naming the failed check:

1. the evidence verifies: well-formed, chained to a trusted CA, every signature and binding,
   the module token answers the nonce *this service issued*    (``veritee.evidence.appraisal``)
2. the boot log matches the service's boot reference values     MeasurementNotEndorsed
3. the trusted verifier (if any) did not contraindicate it       VerifierContraindicated
   and the secret's Rego policy allows the module on this platform ReleaseDenied / PolicyFailed
4. the module token carries a provisioning key for the suite     NoKeyForSuite

Only :class:`~veritee.errors.EvidenceError` subclasses escape. The module's measurement is
judged by the policy, not by the reference values: a secret may name a module that no
reference value lists. The module token's name claim is self-asserted (whoever loads a module
picks it) and is never consulted; names come from the reference values only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.hpke import MLKEM768X25519PublicKey

from veritee.evidence import appraisal, provisioning
from veritee.evidence.appraisal import (
    ReferenceValues,
    TrustAnchors,
    Verified,
    verify,
)
from veritee.evidence.cose import cose_to_x25519_key
from veritee.secrets.errors import (
    NoKeyForSuite,
    ReleaseDenied,
    UnknownSuite,
    VerifierContraindicated,
)
from veritee.secrets.policy import ReleasePolicy

RecipientKey = x25519.X25519PublicKey | MLKEM768X25519PublicKey

# The trusted verifier's results a secret may be released on at all, whatever its policy: a
# device the verifier finds revoked (contraindicated) must get nothing, even from a secret
# whose policy sets no min_ear_status (the holder of a leaked, revoked DAK would open it).
RELEASABLE_EAR_STATUSES = ("affirming", "warning")


@dataclass(frozen=True)
class Trust:
    """What the service trusts: manufacturer CAs, endorsed boot values, endorsed module names."""

    anchors: TrustAnchors
    boot: Mapping[str, frozenset[bytes]] = field(default_factory=dict)
    module_names: Mapping[bytes, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def from_reference_values(
        cls, anchors: TrustAnchors, references: Iterable[ReferenceValues]
    ) -> Trust:
        """Merge several reference-value sets: boot values and module names both accumulate."""
        boot: dict[str, frozenset[bytes]] = {}
        names: dict[bytes, set[str]] = {}
        for refs in references:
            for component, values in refs.boot.items():
                boot[component] = boot.get(component, frozenset()) | values
            for measurement, name in refs.modules.items():
                if name:
                    names.setdefault(measurement, set()).add(name)
        return cls(anchors, boot, {m: frozenset(n) for m, n in names.items()})


@dataclass(frozen=True)
class Recipient:
    """Whom to encrypt the secret to: the attested module instance's provisioning key."""

    suite: str
    key: RecipientKey
    measurement: bytes
    ueid: bytes


def decide(
    evidence: bytes,
    *,
    nonce: bytes,
    secret: str,
    suite: str,
    policy: ReleasePolicy,
    trust: Trust,
    now: dt.datetime | None = None,
) -> Recipient:
    """Every check for releasing ``secret`` against ``evidence`` over ``nonce``.

    ``nonce`` must be the one the service issued (never one taken from the request alone).
    Raises an :class:`~veritee.errors.EvidenceError` subclass naming the failed check.
    """
    check_suite(suite)
    return judge(
        appraise(evidence, nonce=nonce, trust=trust, now=now),
        secret=secret,
        suite=suite,
        policy=policy,
        trust=trust,
    )


def check_suite(suite: str) -> None:
    if suite not in provisioning.SUITES:
        raise UnknownSuite(f"suite {suite[:40]!r} is not offered; use one of {provisioning.SUITES}")


def appraise(
    evidence: bytes, *, nonce: bytes, trust: Trust, now: dt.datetime | None = None
) -> Verified:
    """Checks 1 and 2: genuine evidence, over ``nonce``, from a device that booted as endorsed.

    The service runs this before it looks the secret up, so only a genuine device learns
    which secret names exist.
    """
    verified = verify(evidence, trust.anchors, nonce=nonce, now=now)
    check_boot(verified, trust)
    return verified


def judge(
    verified: Verified,
    *,
    secret: str,
    suite: str,
    policy: ReleasePolicy,
    trust: Trust,
    ear_status: str | None = None,
) -> Recipient:
    """Checks 3 and 4: the secret's policy, then the recipient key for ``suite``.

    ``ear_status``: the overall status of the trusted verifier's result for this evidence,
    when the service consults one (policies see it as ``input.ear.status``).
    """
    check_suite(suite)
    if ear_status is not None and ear_status not in RELEASABLE_EAR_STATUSES:
        raise VerifierContraindicated(
            f"the trusted verifier's result for this evidence is '{ear_status}': secret "
            f"'{secret}' is never released on it, whatever its policy",
            (f"the verifier's result is '{ear_status}'",),
        )
    value = policy_input(secret, verified, trust)
    if ear_status is not None:
        value["ear"] = {"status": ear_status}
    decision = policy.evaluate(value)
    if not decision.allow:
        why = "; ".join(decision.reasons) or "the module or platform is not allowed"
        raise ReleaseDenied(
            f"release policy of secret '{secret}' ({policy.source}) refuses: {why}",
            decision.reasons,
        )
    return Recipient(
        suite, recipient_key(verified, suite), verified.module.measurement, verified.platform.ueid
    )


def check_boot(verified: Verified, trust: Trust) -> None:
    """The boot log against the service's boot reference values; raise MeasurementNotEndorsed.

    The module itself is judged by the release policy, not by reference values.
    """
    appraisal.check_boot(verified, ReferenceValues(trust.boot))


def policy_input(secret: str, verified: Verified, trust: Trust) -> dict[str, Any]:
    """The policy's ``input``: verified claims only, never the self-asserted module name."""
    measurement = verified.module.measurement
    platform = verified.platform
    return {
        "secret": secret,
        "module": {
            "measurement": measurement.hex(),
            "endorsed_names": sorted(trust.module_names.get(measurement, ())),
        },
        "platform": {
            "lifecycle": verified.lifecycle,  # endorsed by the chain, not the token's word
            "vtee_id": platform.vtee_id.hex(),
            "vtee_name": platform.vtee_name,
            "ueid": platform.ueid.hex(),
            "secure_boot": platform.secure_boot,
            # "host-file" for the emulated device: its counters can be rolled back by its user.
            "rollback_protection": verified.rollback_protection,
        },
    }


def recipient_key(verified: Verified, suite: str) -> RecipientKey:
    """The module's provisioning public key for ``suite``; raise NoKeyForSuite."""
    if suite == provisioning.SUITE_PQ:
        if verified.module.provisioning_key_pq is None:
            raise NoKeyForSuite(
                f"the module token carries no {provisioning.SUITE_PQ} provisioning key; "
                f"ask for suite '{provisioning.SUITE_X25519}'"
            )
        return provisioning.pq_public_key(verified.module.provisioning_key_pq)
    return cose_to_x25519_key(verified.module.provisioning_key)
