"""Appraisal of Arm PSA attestation tokens (one submodule) and CCA tokens (platform, realm).

Each submodule's ``annotated`` claims are the token's claims as Veraison's scheme plugins emit
them in ``ear.veraison.annotated-evidence`` (veraison/services scheme/psa-iot and arm-cca:
``common.ClaimsToMap`` of veraison/psatoken's and veraison/ccatoken's claims structs, i.e.
their JSON names, bytes in padded standard base64 as Go's encoding/json writes them). What
Veritee derives from them (lifecycle state names, which measurement is endorsed) stays in
``claims``: the policy's input, and ``ear.veritee.claims`` in the result.

The device's attestation key (IAK / CPAK) is looked up by the instance id the token claims,
among the keys the operator provisioned; only then is the signature checked. Software
components are matched by measurement against the scheme's ``boot`` reference values; a
realm's initial measurement (RIM) against its ``realm`` reference values.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from veritee.evidence import cca as cca_token
from veritee.evidence import psa as psa_token
from veritee.evidence.errors import NonceMismatch
from veritee.evidence.psa import Lifecycle, SoftwareComponent
from veritee.verifier._scheme import (
    AFFIRM,
    CONTRAINDICATED,
    WARN,
    Context,
    Submod,
    b64,
    b64url,
)
from veritee.verifier.endorsements import Endorsements
from veritee.verifier.errors import DeviceRevoked, UnknownDevice
from veritee.verifier.media import Scheme

# Lifecycle states whose hardware is genuine but open to debugging: a warning, not a failure.
DEBUG_STATES = frozenset(
    {
        "non-psa-rot-debug",
        "recoverable-psa-rot-debug",
        "non-cca-platform-rot-debug",
        "recoverable-cca-platform-rot-debug",
    }
)


def psa(evidence: bytes, nonce: bytes, context: Context) -> list[Submod]:
    """Submodule ``psa``; raises the first failed check's error."""
    unverified = psa_token.parse(evidence)
    key = _device_key(context.endorsements, "psa", unverified.instance_id)
    claims = psa_token.verify(evidence, key)
    _check_nonce(claims.nonce, nonce, "PSA token's nonce")
    components, reasons = _components(
        context.endorsements, "psa", claims.software_components, claims.implementation_id
    )
    submod = Submod(
        "psa",
        {
            "profile": claims.profile,
            "instance-id": claims.instance_id.hex(),
            "implementation-id": claims.implementation_id.hex(),
            "client-id": claims.client_id,
            **_lifecycle(claims.lifecycle),
            "certification-reference": claims.certification_reference,
            "software-components": components,
        },
        {
            "instance_identity": AFFIRM,
            "hardware": _hardware(claims.lifecycle),
            "executables": CONTRAINDICATED if reasons else AFFIRM,
        },
        reasons,
        annotated=_psa_annotated(claims),
    )
    return [submod]


def cca(evidence: bytes, nonce: bytes, context: Context) -> list[Submod]:
    """Submodules ``cca-platform`` and ``cca-realm``; raises the first failed check's error."""
    unverified = cca_token.parse(evidence)
    key = _device_key(context.endorsements, "cca", unverified.platform.instance_id)
    claims = cca_token.verify(evidence, key)
    p, r = claims.platform, claims.realm
    _check_nonce(r.challenge, nonce, "CCA realm token's challenge")
    components, reasons = _components(
        context.endorsements, "cca", p.software_components, p.implementation_id
    )
    hardware = _hardware(p.lifecycle)
    platform = Submod(
        "cca-platform",
        {
            "profile": p.profile,
            "instance-id": p.instance_id.hex(),
            "implementation-id": p.implementation_id.hex(),
            **_lifecycle(p.lifecycle),
            "config": p.config.hex(),
            "hash-algo": p.hash_algo,
            "software-components": components,
        },
        {
            "instance_identity": AFFIRM,
            "hardware": hardware,
            "executables": CONTRAINDICATED if reasons else AFFIRM,
        },
        reasons,
        annotated=_platform_annotated(p),
    )
    # The RIM must be endorsed, and where that endorsement also names the REMs and the
    # personalization value, the realm must show those: a realm that booted the endorsed
    # image and then extended something else into a REM is not the endorsed realm.
    candidates = context.endorsements.candidates("cca", "realm", r.initial_measurement)
    rim = next(
        (
            c
            for c in candidates
            if c.matches_realm(tuple(r.extensible_measurements), r.personalization_value)
        ),
        None,
    )
    realm = Submod(
        "cca-realm",
        {
            "profile": r.profile,
            "initial-measurement": r.initial_measurement.hex(),
            "extensible-measurements": [m.hex() for m in r.extensible_measurements],
            "personalization-value": r.personalization_value.hex(),
            "hash-algo": r.hash_algo,
            "public-key": b64url(r.public_key),
            "endorsed-as": None if rim is None else {"name": rim.name, "version": rim.version},
        },
        {
            "instance_identity": AFFIRM,
            "hardware": hardware,
            "executables": AFFIRM if rim is not None else CONTRAINDICATED,
        },
        annotated=_realm_annotated(r),
    )
    if rim is None and candidates:
        realm.reasons.append(
            f"realm initial measurement {r.initial_measurement.hex()[:16]}… is endorsed, but "
            "its extensible measurements or personalization value are not the endorsed ones"
        )
    elif rim is None:
        realm.reasons.append(
            f"realm initial measurement {r.initial_measurement.hex()[:16]}… is not among the "
            "reference values"
        )
    return [platform, realm]


def _device_key(e: Endorsements, scheme: Scheme, instance_id: bytes) -> Any:
    key = e.keys.get((scheme, instance_id))
    if key is None:
        raise UnknownDevice(
            f"no {scheme.upper()} attestation key is provisioned for instance id "
            f"{instance_id.hex()}"
        )
    if instance_id in e.revoked_devices:
        raise DeviceRevoked(f"device {instance_id.hex()} is revoked")
    return key


def _check_nonce(claimed: bytes, nonce: bytes, what: str) -> None:
    if not hmac.compare_digest(claimed, nonce):
        raise NonceMismatch(f"{what} is not the session's nonce (stale or replayed)")


def _lifecycle(lifecycle: Lifecycle) -> Mapping[str, Any]:
    return {"lifecycle": lifecycle.state, "lifecycle-value": lifecycle.value}


def _hardware(lifecycle: Lifecycle) -> int:
    if lifecycle.state == "secured":
        return AFFIRM
    return WARN if lifecycle.state in DEBUG_STATES else CONTRAINDICATED


def _components(
    e: Endorsements,
    scheme: Scheme,
    components: tuple[SoftwareComponent, ...],
    implementation_id: bytes,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Match each component against the boot values endorsed for this implementation (or
    for any): a value a CoRIM endorses for another implementation does not count."""
    out, reasons = [], []
    for i, c in enumerate(components):
        ref = next(
            (
                r
                for r in e.candidates(scheme, "boot", c.measurement_value)
                if r.matches_implementation(implementation_id)
            ),
            None,
        )
        label = c.measurement_type or f"#{i}"
        out.append(
            {
                "type": c.measurement_type,
                "version": c.version,
                "measurement": c.measurement_value.hex(),
                "signer": c.signer_id.hex(),
                "endorsed": ref is not None,
            }
        )
        if ref is None:
            reasons.append(
                f"software component '{label}' measures {c.measurement_value.hex()[:16]}…, "
                "which is not an endorsed value"
            )
    return out, reasons


# veraison/psatoken's profile 1 (PSA_IOT_PROFILE_1) names two claims differently.
PSA_PROFILE_1 = "PSA_IOT_PROFILE_1"


def _psa_annotated(c: psa_token.PsaClaims) -> dict[str, Any]:
    """psatoken's JSON of a PSA token's claims (P1Claims, P2Claims, or the RFC 9783 ones)."""
    p1 = c.profile == PSA_PROFILE_1
    out: dict[str, Any] = {
        "psa-profile" if p1 else "eat-profile": c.profile,
        "psa-client-id": c.client_id,
        "psa-security-lifecycle": c.lifecycle.value,
        "psa-implementation-id": b64(c.implementation_id),
    }
    if c.boot_seed is not None:
        out["psa-boot-seed"] = b64(c.boot_seed)
    if c.certification_reference is not None:
        out["psa-hwver" if p1 else "psa-certification-reference"] = c.certification_reference
    out["psa-software-components"] = [_component(sc) for sc in c.software_components]
    out["psa-nonce"] = b64(c.nonce)
    out["psa-instance-id"] = b64(c.instance_id)
    if c.verification_service is not None:
        out["psa-verification-service-indicator"] = c.verification_service
    return out


def _platform_annotated(p: cca_token.PlatformClaims) -> dict[str, Any]:
    """ccatoken's JSON of a CCA platform token's claims."""
    out: dict[str, Any] = {
        "cca-platform-profile": p.profile,
        "cca-platform-challenge": b64(p.challenge),
        "cca-platform-implementation-id": b64(p.implementation_id),
        "cca-platform-instance-id": b64(p.instance_id),
        "cca-platform-config": b64(p.config),
        "cca-platform-lifecycle": p.lifecycle.value,
        "cca-platform-sw-components": [_component(sc) for sc in p.software_components],
    }
    if p.verification_service is not None:
        out["cca-platform-service-indicator"] = p.verification_service
    out["cca-platform-hash-algo-id"] = p.hash_algo
    return out


def _realm_annotated(r: cca_token.RealmClaims) -> dict[str, Any]:
    """ccatoken's JSON of a CCA realm token's claims."""
    out: dict[str, Any] = {} if r.profile is None else {"cca-realm-profile": r.profile}
    out.update(
        {
            "cca-realm-challenge": b64(r.challenge),
            "cca-realm-personalization-value": b64(r.personalization_value),
            "cca-realm-initial-measurement": b64(r.initial_measurement),
            "cca-realm-extensible-measurements": [b64(m) for m in r.extensible_measurements],
            "cca-realm-hash-algo-id": r.hash_algo,
            "cca-realm-public-key": b64(r.public_key),
            "cca-realm-public-key-hash-algo-id": r.public_key_hash_algo,
        }
    )
    return out


def _component(sc: SoftwareComponent) -> dict[str, Any]:
    """psatoken's SwComponent JSON (optional members omitted when absent, as it does)."""
    out: dict[str, Any] = {}
    if sc.measurement_type is not None:
        out["measurement-type"] = sc.measurement_type
    out["measurement-value"] = b64(sc.measurement_value)
    if sc.version is not None:
        out["version"] = sc.version
    out["signer-id"] = b64(sc.signer_id)
    if sc.measurement_description is not None:
        out["measurement-description"] = sc.measurement_description
    return out
