"""X.509 certificates that carry evidence: built in the secure world, read by relying parties.

The certificate is self-signed by the key it certifies (the module attestation key, which the
secure world generated and never releases) and carries the same evidence twice, non-critical
so that ordinary TLS stacks accept it (OpenSSL refuses unknown critical extensions):

* Veritee's extension (``wire.OID_VERITEE_EVIDENCE``): the evidence bytes as they are;
* TCG DICE tagged evidence (``wire.OID_DICE_TAGGED_EVIDENCE``): ``#6.EVIDENCE_CBOR_TAG(bstr)``.

Readers accept either; when both are present they must carry the same bytes, or a tool that
reads one and a verifier that reads the other could be shown different evidence.
Everything here is pure: bytes in, a value or one error out.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from veritee.evidence.certs import CERT_ERRORS
from veritee.tls import wire
from veritee.tls.errors import CertificateExpired, MalformedCertificate, MalformedExtension

# A certificate is made per connection, so it only needs to outlive one handshake and the
# session after it; a short life bounds how long a captured one would be shown as current.
CERT_LIFETIME = dt.timedelta(hours=1)
# Backdating absorbs clocks that disagree by a few minutes between the two ends.
CLOCK_SKEW = dt.timedelta(minutes=5)
# Two copies of evidence (each at most wire.MAX_EVIDENCE_BYTES) and the certificate around them.
MAX_CERTIFICATE_BYTES = 3 * wire.MAX_EVIDENCE_BYTES
MAX_NAME = 64
ORGANIZATION = "Veritee attested module"


@dataclass(frozen=True)
class PeerCertificate:
    """A certificate as read: its key (DER SubjectPublicKeyInfo), validity and evidence."""

    der: bytes
    spki: bytes
    subject: str
    not_before: dt.datetime
    not_after: dt.datetime
    evidence: bytes | None
    carriers: tuple[str, ...]  # which extensions carried the evidence: "veritee", "dice"

    @property
    def spki_sha256(self) -> bytes:
        return hashlib.sha256(self.spki).digest()

    def public_key(self) -> ec.EllipticCurvePublicKey | None:
        key = serialization.load_der_public_key(self.spki)
        return key if isinstance(key, ec.EllipticCurvePublicKey) else None


def spki_of(key: ec.EllipticCurvePublicKey) -> bytes:
    """DER SubjectPublicKeyInfo of ``key``: what evidence binds (SHA-256 of it)."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def dice_value(evidence: bytes) -> bytes:
    """extnValue of the DICE tagged-evidence extension for ``evidence``."""
    return bytes(cbor2.dumps(cbor2.CBORTag(wire.EVIDENCE_CBOR_TAG, evidence)))


def build(
    key: ec.EllipticCurvePrivateKey, evidence: bytes, *, name: str, now: dt.datetime
) -> bytes:
    """A self-signed DER certificate of ``key`` carrying ``evidence`` in both extensions."""
    builder = _builder(key, name, ORGANIZATION, now)
    builder = builder.add_extension(
        x509.UnrecognizedExtension(wire.OID_VERITEE_EVIDENCE, evidence), critical=False
    ).add_extension(
        x509.UnrecognizedExtension(wire.OID_DICE_TAGGED_EVIDENCE, dice_value(evidence)),
        critical=False,
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def build_plain(key: ec.EllipticCurvePrivateKey, *, name: str, now: dt.datetime) -> bytes:
    """A self-signed DER certificate without evidence (a relying party that is no module)."""
    builder = _builder(key, name, "Veritee relying party", now)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _builder(
    key: ec.EllipticCurvePrivateKey, name: str, organization: str, now: dt.datetime
) -> x509.CertificateBuilder:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, _printable(name)),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CERT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )


def read(der: bytes) -> PeerCertificate:
    """Parse a certificate and its evidence extensions (not yet trusted: see ``verify``)."""
    if len(der) > MAX_CERTIFICATE_BYTES:
        raise MalformedCertificate(
            f"certificate is {len(der)} bytes, over the {MAX_CERTIFICATE_BYTES}-byte limit"
        )
    try:
        cert = x509.load_der_x509_certificate(der)
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        subject = cert.subject.rfc4514_string()
        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    except CERT_ERRORS as exc:
        # cryptography parses lazily: a mangled field fails on first use.
        raise MalformedCertificate(f"peer certificate does not parse ({exc})") from None
    try:
        extensions = {ext.oid: ext for ext in cert.extensions}
    except CERT_ERRORS as exc:
        raise MalformedExtension(f"certificate extensions do not parse ({exc})") from None
    found: dict[str, bytes] = {}
    ours = extensions.get(wire.OID_VERITEE_EVIDENCE)
    if ours is not None:
        found["veritee"] = _raw(ours, "Veritee evidence")
    dice = extensions.get(wire.OID_DICE_TAGGED_EVIDENCE)
    if dice is not None:
        found["dice"] = _untag(_raw(dice, "DICE tagged evidence"))
    for name, value in found.items():
        if not value:
            raise MalformedExtension(f"the {name} evidence extension is empty")
        if len(value) > wire.MAX_EVIDENCE_BYTES:
            raise MalformedExtension(
                f"the {name} evidence extension holds {len(value)} bytes; "
                f"at most {wire.MAX_EVIDENCE_BYTES}"
            )
    if len(set(found.values())) > 1:
        raise MalformedExtension("the Veritee and the DICE evidence extensions disagree")
    return PeerCertificate(
        der=der,
        spki=spki,
        subject=subject,
        not_before=not_before,
        not_after=not_after,
        evidence=next(iter(found.values()), None),
        carriers=tuple(found),
    )


def check_validity(cert: PeerCertificate, now: dt.datetime) -> None:
    """Raise CertificateExpired unless ``now`` is within the certificate's validity period."""
    if now > cert.not_after:
        raise CertificateExpired(
            f"peer certificate expired at {cert.not_after.isoformat()} "
            f"(now {now.isoformat(timespec='seconds')})"
        )
    if now < cert.not_before:
        raise CertificateExpired(
            f"peer certificate is not valid before {cert.not_before.isoformat()} "
            f"(now {now.isoformat(timespec='seconds')}): check the clocks"
        )


def _raw(ext: x509.Extension[x509.ExtensionType], what: str) -> bytes:
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise MalformedExtension(f"the {what} extension is not an opaque value")
    return value.value


def _untag(value: bytes) -> bytes:
    """The evidence inside DICE tagged evidence, which must be our tag over a byte string."""
    try:
        decoded = cbor2.loads(value)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError):
        raise MalformedExtension("the DICE tagged evidence extension is not valid CBOR") from None
    if not isinstance(decoded, cbor2.CBORTag):
        raise MalformedExtension("the DICE tagged evidence extension holds no CBOR tag")
    if decoded.tag != wire.EVIDENCE_CBOR_TAG:
        raise MalformedExtension(
            f"DICE tagged evidence of format {decoded.tag} (CBOR tag); "
            f"Veritee evidence is tag {wire.EVIDENCE_CBOR_TAG}"
        )
    if not isinstance(decoded.value, bytes):
        raise MalformedExtension("DICE tagged Veritee evidence must be a byte string")
    if dice_value(decoded.value) != value:
        # Trailing bytes or a non-canonical length: accept one encoding only.
        raise MalformedExtension("the DICE tagged evidence extension has trailing or odd bytes")
    return decoded.value


def _printable(name: str) -> str:
    text = "".join(c if c.isprintable() else "?" for c in name)[:MAX_NAME]
    return text or "module"
