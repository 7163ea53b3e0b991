"""The TPM platform as the EAR's own submodule (``tpm-platform``), from the claims that
veritee.evidence.tpm.appraise_platform returns once every check on the quote passed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from veritee.evidence.tpm import BACKEND_TPM, PROTECTION_TPM
from veritee.verifier._scheme import AFFIRM, CONTRAINDICATED, WARN, Submod

SUBMOD = "tpm-platform"


def platform_submod(claims: Mapping[str, Any], reasons: Sequence[str] = ()) -> Submod:
    """The ``tpm-platform`` submodule. Its hardware claim is never better than 32: the TPM
    roots keys and measurements, but the secure world above it is isolated by the OS, not by
    hardware, whatever the evidence says of itself. ``reasons``: the boot records that are
    not reference values (the quoted log is the platform's boot log), which contraindicate
    its executables."""
    if claims.get("backend") != BACKEND_TPM:
        raise ValueError("not the claims of a TPM platform")
    return Submod(
        SUBMOD,
        {**claims, "protection": PROTECTION_TPM},
        {
            # The EK chain and credential activation passed: a genuine, known TPM.
            "instance_identity": AFFIRM,
            "hardware": WARN,
            # Every boot record a reference value (appraise_platform refuses otherwise).
            "executables": CONTRAINDICATED if reasons else AFFIRM,
        },
        list(reasons),
        rollback_protection=str(claims["rollback-protection"]),
    )
