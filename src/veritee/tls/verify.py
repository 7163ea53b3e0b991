"""Is the peer at the other end of this TLS session an endorsed module? I/O-free.

Bytes and values in (the peer's certificate, the evidence, the freshness input this end holds,
trust anchors and reference values, the time), an :class:`AttestedPeer` out or one error.
The checks, in order, each with its own exception:

1. the certificate parses and is valid now              MalformedCertificate, CertificateExpired
2. evidence is there and well-formed                    NoEvidence, MalformedExtension
3. the evidence verifies: device chain, signatures,
   token bindings (``evidence.appraisal.verify``)       UntrustedDevice, BadSignature, ...
4. it is fresh for *this* connection: over the
   challenge we sent, or over this session's exporter   StaleChallenge, ExporterMismatch
5. it vouches for the certificate's key: the module
   token's user data is SHA-256(SubjectPublicKeyInfo)   KeyNotBound
   and that key is the module attestation key the
   secure world minted (the vtee token binds it)        KeyOutsideSecureWorld
6. boot and module measurements are endorsed            MeasurementNotEndorsed

Step 5's second half is what stops an untrusted host: it may ask the runtime TA for evidence
with any user data, so user data alone could vouch for a key the host holds; it can never get
a vtee token for a key it holds.
"""

from __future__ import annotations

import datetime as dt
import hmac
from dataclasses import dataclass
from typing import Any

from veritee.evidence import appraisal, cose
from veritee.evidence.appraisal import STATUS_AFFIRMING as STATUS_AFFIRMING
from veritee.evidence.appraisal import STATUS_WARNING as STATUS_WARNING
from veritee.evidence.appraisal import ReferenceValues, TrustAnchors, Verified
from veritee.evidence.appraisal import local_status as local_status
from veritee.evidence.claims import (
    Evidence,
    ModuleClaims,
    PlatformClaims,
    VteeClaims,
    unverified_platform_claims,
)
from veritee.tls import certificate, wire
from veritee.tls.certificate import PeerCertificate
from veritee.tls.errors import (
    ExporterMismatch,
    KeyNotBound,
    KeyOutsideSecureWorld,
    NoEvidence,
    StaleChallenge,
)
from veritee.tls.wire import Mode


@dataclass(frozen=True)
class Freshness:
    """What this end expects the peer's evidence to be over.

    ``nonce`` is the challenge we sent (challenge mode) or the exporter value of this TLS
    session for the peer's role (exporter mode); ``session`` is the verification service's
    session that issued or registered it, when one is used.
    """

    mode: Mode
    nonce: bytes
    session: str | None = None


@dataclass(frozen=True)
class AttestedPeer:
    """A peer whose evidence passed every check, and what it proved."""

    mode: Mode
    status: str  # EAR status (affirming, warning); locally: affirming only on secured hardware
    appraised_by: str  # "local" or the verification service's URL
    module_name: str
    measurement: bytes
    config: bytes
    endorsed_as: str
    device: bytes  # UEID
    lifecycle: str
    secure_boot: bool
    hwmodel: str
    vtee: str
    vtee_id: bytes
    key_sha256: bytes  # SHA-256 of the certificate's SubjectPublicKeyInfo
    nonce: bytes
    ear: str | None = None  # the verification service's signed result (JWT), if it was asked

    def claims(self) -> dict[str, Any]:
        """The verified claims as JSON-friendly values."""
        return {
            "status": self.status,
            "mode": self.mode,
            "appraised_by": self.appraised_by,
            "module": {
                "name": self.module_name,
                "measurement": self.measurement.hex(),
                "config": self.config.hex(),
                "endorsed_as": self.endorsed_as,
            },
            "platform": {
                "device": self.device.hex(),
                "lifecycle": self.lifecycle,
                "secure_boot": self.secure_boot,
                "hwmodel": self.hwmodel,
                "vtee": self.vtee,
                "vtee_id": self.vtee_id.hex(),
            },
            "tls_key_sha256": self.key_sha256.hex(),
            "freshness": self.nonce.hex(),
        }


def evidence_of(cert: PeerCertificate, freshness: Freshness, message: bytes | None) -> bytes:
    """The evidence that counts: the certificate's (challenge mode) or the message's (exporter)."""
    if freshness.mode == "challenge":
        if cert.evidence is None:
            raise NoEvidence(
                "the peer's certificate carries no evidence extension: not an attested endpoint"
            )
        return cert.evidence
    if message is None:
        raise NoEvidence("the peer sent no evidence over the TLS exporter")
    return message


def check_freshness(nonce: bytes, freshness: Freshness) -> None:
    """Step 4: the evidence's challenge is this connection's."""
    if hmac.compare_digest(nonce, freshness.nonce):
        return
    if freshness.mode == "exporter":
        raise ExporterMismatch(
            "the evidence is over another TLS session's exported keying material: "
            "it was relayed or replayed from another connection"
        )
    if wire.is_no_challenge(nonce):
        raise StaleChallenge(
            "the evidence is over a nonce the peer chose itself (marked no-challenge), "
            "not over the challenge this connection sent"
        )
    raise StaleChallenge(
        "the evidence answers another challenge than this connection's: "
        "it was replayed from an earlier connection"
    )


def check_key(cert: PeerCertificate, module: ModuleClaims, vtee: VteeClaims) -> None:
    """Step 5: the module token vouches for the certificate's key, minted in the secure world."""
    if not hmac.compare_digest(module.user_data, cert.spki_sha256):
        raise KeyNotBound(
            "the module token vouches for another key than the certificate's "
            f"(user data {module.user_data.hex()[:16]}…, certificate key "
            f"{cert.spki_sha256.hex()[:16]}…)"
        )
    minted = certificate.spki_of(cose.cose_to_ec_key(vtee.module_key))
    if not hmac.compare_digest(minted, cert.spki):
        raise KeyOutsideSecureWorld(
            "the certificate's key is not the module attestation key the secure world minted "
            "for this module: evidence was obtained for a key held outside the secure world"
        )


def appraise(
    cert_der: bytes,
    freshness: Freshness,
    anchors: TrustAnchors,
    refs: ReferenceValues,
    *,
    evidence: bytes | None = None,
    now: dt.datetime | None = None,
) -> AttestedPeer:
    """Steps 1-6 against local trust anchors and reference values.

    ``evidence`` is the evidence message of exporter mode; in challenge mode the certificate's
    own evidence counts.
    """
    when = now or dt.datetime.now(dt.UTC)
    cert = certificate.read(cert_der)
    certificate.check_validity(cert, when)
    data = evidence_of(cert, freshness, evidence)
    verified = appraisal.verify(data, anchors, nonce=None, now=when)
    check_freshness(verified.module.nonce, freshness)
    check_key(cert, verified.module, verified.vtee)
    appraisal.check_reference_values(verified, refs)
    return peer_of(
        cert,
        freshness,
        verified.platform,
        verified.module,
        lifecycle=verified.lifecycle,
        status=local_status(verified),
        appraised_by="local",
        endorsed_as=refs.modules.get(verified.module.measurement, ""),
    )


def decode_unverified(data: bytes) -> tuple[PlatformClaims, VteeClaims, ModuleClaims]:
    """The claims of evidence that someone else (the verification service) verified."""
    ev = Evidence.decode(data)
    return (
        unverified_platform_claims(ev.platform),
        VteeClaims.from_cbor(cose.decode(ev.vtee).claims()),
        ModuleClaims.from_cbor(cose.decode(ev.module).claims()),
    )


def peer_of(
    cert: PeerCertificate,
    freshness: Freshness,
    platform: PlatformClaims,
    module: ModuleClaims,
    *,
    lifecycle: str,
    status: str,
    appraised_by: str,
    endorsed_as: str = "",
    ear: str | None = None,
) -> AttestedPeer:
    """The peer's claims; ``lifecycle`` is the appraiser's endorsed value, never the token's."""
    return AttestedPeer(
        mode=freshness.mode,
        status=status,
        appraised_by=appraised_by,
        module_name=module.name,
        measurement=module.measurement,
        config=module.config,
        endorsed_as=endorsed_as,
        device=platform.ueid,
        lifecycle=lifecycle,
        secure_boot=platform.secure_boot,
        hwmodel=platform.hwmodel,
        vtee=platform.vtee_name,
        vtee_id=platform.vtee_id,
        key_sha256=cert.spki_sha256,
        nonce=freshness.nonce,
        ear=ear,
    )


__all__ = [
    "AttestedPeer",
    "Freshness",
    "Verified",
    "appraise",
    "check_freshness",
    "check_key",
    "decode_unverified",
    "evidence_of",
]
