"""Evidence as people read it: decoded claims under names, byte strings as hex. No checks."""

from __future__ import annotations

from typing import Any

from cryptography import x509

from veritee.evidence import cose
from veritee.evidence.certs import CERT_ERRORS
from veritee.evidence.claims import Evidence, ModuleClaims, PlatformClaims, VteeClaims
from veritee.evidence.errors import MalformedToken


def describe(data: bytes) -> dict[str, Any]:
    """Decode evidence without verifying it; raise MalformedToken if it does not decode."""
    ev = Evidence.decode(data)
    vmsg, mmsg = cose.decode(ev.vtee), cose.decode(ev.module)
    signer: dict[str, Any]
    if ev.platform[:1] and 0xA0 <= ev.platform[0] <= 0xBF:  # a TPM-backed device's quote
        from veritee.evidence import tpm

        quoted = tpm.TpmPlatformEvidence.decode(ev.platform)
        raw = cose.loads(quoted.claims, what="TPM platform claims")
        if not isinstance(raw, dict):
            raise MalformedToken("TPM platform claims are not a map")
        platform = PlatformClaims.from_cbor(raw)
        events = tpm.decode_event_log(quoted.quote.event_log)
        signer = {
            "signed_by": f"TPM quote by the AK (backend tpm2, protection {tpm.PROTECTION_TPM})",
            "ek_sha256": tpm.ek_fingerprint(quoted.ek_certificate).hex(),
            "event_log": [{"description": e.description, "digest": e.digest.hex()} for e in events],
        }
        chain: Any = [quoted.ek_certificate]
    else:
        pmsg = cose.decode(ev.platform)
        platform = PlatformClaims.from_cbor(pmsg.claims())
        signer = {"signed_by": "device attestation key (x5chain)", "alg": pmsg.alg}
        chain = pmsg.unprotected.get(cose.HDR_X5CHAIN) or []
    vtee = VteeClaims.from_cbor(vmsg.claims())
    module = ModuleClaims.from_cbor(mmsg.claims())
    certs = []
    for der in chain if isinstance(chain, list) else [chain]:
        try:
            cert = x509.load_der_x509_certificate(der)
            certs.append(
                {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string()}
            )
        except CERT_ERRORS:
            certs.append({"error": "not a DER certificate"})
    return {
        "platform": {
            **signer,
            "ueid": platform.ueid.hex(),
            "hwmodel": platform.hwmodel,
            "lifecycle": platform.lifecycle,
            "secure_boot": platform.secure_boot,
            "rollback_protection": platform.rollback_protection,
            "boot_log": [
                {
                    "component": e.component,
                    "version": e.version,
                    "measurement": e.measurement.hex(),
                    "signer": e.signer.hex(),
                }
                for e in platform.boot_log
            ],
            "vtee_id": platform.vtee_id.hex(),
            "vtee_name": platform.vtee_name,
            "vtee_config": platform.vtee_config.hex(),
            "vtee_key_digest": cose.key_digest(platform.vtee_key).hex(),
            "iat": platform.iat,
            "x5chain": certs,
        },
        "vtee": {
            "signed_by": "vTEE attestation key",
            "vtee_id": vtee.vtee_id.hex(),
            "module_measurement": vtee.measurement.hex(),
            "module_config": vtee.config.hex(),
            "module_key_digest": cose.key_digest(vtee.module_key).hex(),
            "grants": [{"host": h, "guest": g, "writable": w} for h, g, w in vtee.grants],
            "iat": vtee.iat,
        },
        "module": {
            "signed_by": "module attestation key",
            "name": module.name,
            "nonce": module.nonce.hex(),
            "measurement": module.measurement.hex(),
            "config": module.config.hex(),
            "provisioning_key": module.provisioning_key[-2].hex(),
            "user_data": module.user_data.hex(),
            "host_data": module.host_data.hex(),
            "iat": module.iat,
        },
    }
