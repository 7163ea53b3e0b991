"""Appraisal of Veritee evidence (platform -> vtee -> module tokens) into two submodules."""

from __future__ import annotations

from veritee.evidence import appraisal
from veritee.verifier._scheme import AFFIRM, CONTRAINDICATED, WARN, Context, Submod, b64url
from veritee.verifier.errors import CaRevoked, DeviceRevoked


def appraise(evidence: bytes, nonce: bytes, context: Context) -> list[Submod]:
    """Submodules ``platform`` and ``module`` (and ``tpm-platform`` for a TPM-backed device);
    raises the first failed check's error."""
    e = context.endorsements
    # Revocations are checked here rather than by appraisal.verify, so each has its own error.
    # The anchors carry the operator's ceiling per CA key: a CA's own mark counts up to it.
    v = appraisal.verify(evidence, e.anchors, nonce=nonce, now=context.now, links=e.links)
    if v.ca_key_id in e.revoked_cas:
        raise CaRevoked(f"CA '{v.ca_name}' is revoked")
    if v.platform.ueid in e.revoked_devices:
        raise DeviceRevoked(f"device {v.platform.ueid.hex()} is revoked")

    p = v.platform
    boot = []
    reasons = []
    for entry in p.boot_log:
        endorsed_values = e.boot_values("veritee", entry.component)
        endorsed = entry.measurement in endorsed_values
        boot.append(
            {
                "component": entry.component,
                "version": entry.version,
                "measurement": entry.measurement.hex(),
                "endorsed": endorsed,
            }
        )
        if not endorsed_values:
            reasons.append(f"boot component '{entry.component}' has no reference value")
        elif not endorsed:
            reasons.append(
                f"boot component '{entry.component}' measures {entry.measurement.hex()[:16]}…, "
                "which is not an endorsed value"
            )
    missing = e.boot_names("veritee") - {entry.component for entry in p.boot_log}
    if missing:
        reasons.append(f"boot log lacks endorsed component(s): {sorted(missing)}")
    # The endorsed lifecycle (the chain's word, capping the token's), never the token's alone.
    hardware = AFFIRM if v.lifecycle == "secured" else WARN
    # What the device reports keeps its counters, believed only as far as what it is: an
    # emulated device's counters are a file of its user, whatever its token says.
    rollback = v.rollback_protection
    if rollback != p.rollback_protection:
        reasons.append(
            f"an emulated device reports '{p.rollback_protection}' rollback protection; "
            f"it is appraised as '{rollback}'"
        )
    platform = Submod(
        "platform",
        {
            "ueid": p.ueid.hex(),
            "lifecycle": v.lifecycle,
            # The most the chain (and the operator's ceiling for its CA) lets this device
            # claim: a cap, not the device's state (that is "lifecycle").
            "lifecycle-ceiling": v.endorsed_lifecycle,
            "secure-boot": p.secure_boot,
            "hwmodel": p.hwmodel,
            "vtee-id": p.vtee_id.hex(),
            "vtee-name": p.vtee_name,
            "vtee-config": p.vtee_config.hex(),
            "ca": v.ca_name,
            "boot": boot,
            "rollback-protection": rollback,
        },
        {
            "instance_identity": AFFIRM,
            "hardware": hardware,
            "executables": CONTRAINDICATED if reasons else AFFIRM,
            "configuration": AFFIRM if p.secure_boot else WARN,
        },
        reasons,
        rollback,
    )

    m = v.module
    ref = e.endorsed("veritee", "module", m.measurement)
    module = Submod(
        "module",
        {
            "name": m.name,
            "measurement": m.measurement.hex(),
            "config": m.config.hex(),
            "endorsed-as": None if ref is None else {"name": ref.name, "version": ref.version},
            "provisioning-key": b64url(m.provisioning_key[-2]),
            "user-data": m.user_data.hex(),
            # Chosen by whoever asked for the evidence, not by the module: never a binding.
            "host-data": m.host_data.hex(),
            "vtee-name": p.vtee_name,
            # The host directories the module may reach (its config digest covers them too).
            "grants": [
                {"host": host, "guest": guest, "writable": writable}
                for host, guest, writable in v.vtee.grants
            ],
        },
        {
            "instance_identity": AFFIRM,
            "hardware": hardware,
            "executables": AFFIRM if ref is not None else CONTRAINDICATED,
        },
        rollback_protection=rollback,
    )
    if ref is None:
        module.reasons.append(
            f"module measurement {m.measurement.hex()} is not among the reference values"
        )
    if v.tpm is None:
        return [platform, module]
    # A TPM-backed device: its quote, EK and AK checked out (appraisal.verify), and the
    # quoted event log is the boot log above, so it shares the platform's findings.
    from veritee.verifier import _tpm

    return [platform, module, _tpm.platform_submod(v.tpm, reasons)]
