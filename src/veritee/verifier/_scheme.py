"""What every appraisal scheme shares: its inputs (:class:`Context`), its output per
submodule (:class:`Submod`), and the AR4SI codes it uses."""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from veritee.verifier import ear
from veritee.verifier.endorsements import Endorsements
from veritee.verifier.policy import Policy

# How long a result stays valid for relying parties (its ``exp``): long enough to reach them,
# short enough that a revocation takes effect soon.
RESULT_VALIDITY_SECONDS = 600

# Trust codes (AR4SI section 2.3).
AFFIRM = 2
WARN = 32
CONTRAINDICATED = 96
NOT_RECOGNISED = 97
CRYPTO_FAILED = 99


@dataclass(frozen=True)
class Context:
    """Everything an appraisal depends on besides the evidence and its nonce."""

    endorsements: Endorsements
    policy: Policy
    verifier_id: ear.VerifierId
    now: dt.datetime
    result_validity: int = RESULT_VALIDITY_SECONDS


@dataclass
class Submod:
    """One submodule as a scheme verified it: claims (JSON values), facts, findings."""

    name: str
    claims: dict[str, Any]
    vector: dict[str, int] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    # The rollback protection of the platform the submodule runs on, as appraised (one of
    # veritee.evidence.claims.ROLLBACK_PROTECTIONS); None where the evidence does not say.
    rollback_protection: str | None = None
    # The evidence's claims in the schema its scheme's reference verifier emits (Veraison's
    # psatoken / ccatoken JSON names, bytes in padded base64), for the result's
    # ``ear.veraison.annotated-evidence``; None where that schema is Veritee's own (``claims``).
    annotated: dict[str, Any] | None = None


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64(data: bytes) -> str:
    """Bytes as Go's encoding/json writes them (standard base64, padded): Veraison's form."""
    return base64.b64encode(data).decode()
