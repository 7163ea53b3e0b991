"""The TPM platform as the EAR's own submodule (``tpm-platform``), from the claims that
veritee.evidence.tpm.appraise_platform returns once every check on the quote passed."""

from __future__ import annotations

from typing import Any

from veritee.evidence.tpm import BACKEND_TPM, PROTECTION_TPM
from veritee.verifier._scheme import AFFIRM, WARN, Submod

SUBMOD = "tpm-platform"


def platform_submod(claims: dict[str, Any]) -> Submod:
    """The ``tpm-platform`` submodule. Its hardware claim is never better than 32: the TPM
    roots keys and measurements, but the secure world above it is isolated by the OS, not by
    hardware, whatever the evidence says of itself."""
    if claims.get("backend") != BACKEND_TPM:
        raise ValueError("not the claims of a TPM platform")
    return Submod(
        SUBMOD,
        {**claims, "protection": PROTECTION_TPM},
        {
            # The EK chain and credential activation passed: a genuine, known TPM.
            "instance_identity": AFFIRM,
            "hardware": WARN,
            # Every boot record was a reference value (appraise_platform refuses otherwise).
            "executables": AFFIRM,
        },
        rollback_protection=str(claims["rollback-protection"]),
    )
