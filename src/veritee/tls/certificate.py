"""X.509 certificates that carry evidence: built in the secure world, read by relying parties.

The certificate is self-signed by the key it certifies (the module attestation key, which the
secure world generated and never releases) and carries the evidence once, in the TCG DICE
conceptual-message-wrapper extension (``wire.OID_DICE_CMW``), non-critical so that ordinary
TLS stacks accept it (OpenSSL refuses unknown critical extensions). Its value is a CMW CBOR
record ``[media type, evidence bytes]`` (RFC 9999, draft-ietf-rats-msg-wrap).

Certificates of the old format (the evidence under a private OID and again under the DICE OID
with an unregistered CBOR tag) are still read, for one release, and said to be old.
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
# The evidence (at most wire.MAX_EVIDENCE_BYTES; twice in the old format) and the rest.
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
    carriers: tuple[str, ...]  # which extensions carried the evidence: "dice" (, "veritee")
    old_format: bool = False  # Veritee's format before the CMW: read for one more release

    @property
    def format_note(self) -> str:
        """How the evidence was carried, for people."""
        if self.evidence is None:
            return "none: not an RA-TLS certificate"
        if self.old_format:
            return (
                "old format (private OID and an unregistered CBOR tag), read for one more "
                "release: update the attester"
            )
        return f"TCG DICE conceptual message wrapper (CMW record, {wire.CMW_TYPE})"

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


def cmw_value(evidence: bytes) -> bytes:
    """extnValue of the DICE conceptual-message-wrapper extension: a CMW CBOR record."""
    return bytes(cbor2.dumps([wire.CMW_TYPE, evidence]))


def old_dice_value(evidence: bytes) -> bytes:
    """The old format's DICE extension value, #6.OLD_EVIDENCE_CBOR_TAG(bstr) (read only)."""
    return bytes(cbor2.dumps(cbor2.CBORTag(wire.OLD_EVIDENCE_CBOR_TAG, evidence)))


def build(
    key: ec.EllipticCurvePrivateKey, evidence: bytes, *, name: str, now: dt.datetime
) -> bytes:
    """A self-signed DER certificate of ``key`` carrying ``evidence`` in a DICE CMW."""
    builder = _builder(key, name, ORGANIZATION, now).add_extension(
        x509.UnrecognizedExtension(wire.OID_DICE_CMW, cmw_value(evidence)), critical=False
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
    except x509.DuplicateExtension as exc:
        raise MalformedExtension(
            f"the certificate carries extension {exc.oid.dotted_string} more than once: "
            "which copy counts would be up to the reader, so none does"
        ) from None
    except CERT_ERRORS as exc:
        raise MalformedExtension(f"certificate extensions do not parse ({exc})") from None
    evidence, carriers, old = _evidence(extensions)
    if evidence is not None and not evidence:
        raise MalformedExtension("the evidence extension holds empty evidence")
    if evidence is not None and len(evidence) > wire.MAX_EVIDENCE_BYTES:
        raise MalformedExtension(
            f"the evidence extension holds {len(evidence)} bytes of evidence; "
            f"at most {wire.MAX_EVIDENCE_BYTES}"
        )
    return PeerCertificate(
        der=der,
        spki=spki,
        subject=subject,
        not_before=not_before,
        not_after=not_after,
        evidence=evidence,
        carriers=carriers,
        old_format=old,
    )


_Extensions = dict[x509.ObjectIdentifier, x509.Extension[x509.ExtensionType]]


def _evidence(extensions: _Extensions) -> tuple[bytes | None, tuple[str, ...], bool]:
    """(evidence, the extensions that carried it, whether in the old format)."""
    dice = extensions.get(wire.OID_DICE_CMW)
    private = extensions.get(wire.OLD_OID_VERITEE_EVIDENCE)
    if dice is None and private is None:
        return None, (), False
    if dice is not None:
        value = _der_octets(_raw(dice, "DICE conceptual message wrapper"))
        decoded = _cbor(value)
        if isinstance(decoded, cbor2.CBORTag) and decoded.tag == wire.OLD_EVIDENCE_CBOR_TAG:
            evidence = _old_untag(decoded, value)
        else:
            evidence = _unwrap(decoded, value)
            if private is not None:
                raise MalformedExtension(
                    "the certificate carries the evidence twice, in the CMW and under the old "
                    "private OID: one certificate carries one evidence"
                )
            return evidence, ("dice",), False
        if private is not None and _raw(private, "old Veritee evidence") != evidence:
            raise MalformedExtension("the old Veritee and the DICE evidence extensions disagree")
        return evidence, ("dice", "veritee") if private is not None else ("dice",), True
    assert private is not None
    return _raw(private, "old Veritee evidence"), ("veritee",), True


def _der_octets(value: bytes) -> bytes:
    """The CMW in the extension: the extnValue itself (as Veritee, Gramine and the interoperable
    RA-TLS profile write it), or a DER OCTET STRING around it (the ``cbor`` choice of RFC 9999's
    id-pe-cmw syntax). The two never mix up: 0x04 starts no CMW (in CBOR it is the number 4)."""
    if not value or value[0] != 0x04:
        return value
    if len(value) < 2:
        raise MalformedExtension("the DICE extension's OCTET STRING is truncated")
    size, start = value[1], 2
    if size & 0x80:
        count = size & 0x7F
        if not 1 <= count <= 4 or len(value) < 2 + count:
            raise MalformedExtension("the DICE extension's OCTET STRING has a bad length")
        size, start = int.from_bytes(value[2 : 2 + count], "big"), 2 + count
        if size < 0x80 or size >> (8 * (count - 1)) == 0:
            raise MalformedExtension("the DICE extension's OCTET STRING length is not DER")
    if len(value) != start + size:
        raise MalformedExtension("the DICE extension's OCTET STRING has trailing or odd bytes")
    return value[start:]


def _cbor(value: bytes) -> object:
    try:
        return cbor2.loads(value)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError):
        raise MalformedExtension(
            "the DICE conceptual message wrapper extension is not valid CBOR"
        ) from None


def _unwrap(decoded: object, value: bytes) -> bytes:
    """The evidence in a CMW CBOR record, which must be Veritee evidence as a byte string."""
    if isinstance(decoded, cbor2.CBORTag):
        raise MalformedExtension(
            f"the DICE extension holds a CMW CBOR tag ({decoded.tag}), "
            f"not a CMW record of {wire.CMW_TYPE}"
        )
    if not isinstance(decoded, list) or len(decoded) not in (2, 3):
        raise MalformedExtension(
            "the DICE extension holds no CMW record (a CBOR array [type, value, ?ind])"
        )
    kind, evidence = decoded[0], decoded[1]
    if isinstance(kind, int) and not isinstance(kind, bool):
        raise MalformedExtension(
            f"the CMW holds CoAP content format {kind}; Veritee evidence is {wire.CMW_TYPE}"
        )
    if not isinstance(kind, str):
        raise MalformedExtension("the CMW record's type is neither a media type nor a number")
    if kind.lower() != wire.CMW_TYPE:
        raise MalformedExtension(
            f"the CMW holds {_short(kind)}; Veritee evidence is {wire.CMW_TYPE}"
        )
    if not isinstance(evidence, bytes):
        raise MalformedExtension("the CMW record's value must be a byte string")
    if len(decoded) == 3 and decoded[2] != wire.CMW_IND_EVIDENCE:
        raise MalformedExtension(
            f"the CMW record's indicator {_short(str(decoded[2]))} does not say evidence "
            f"({wire.CMW_IND_EVIDENCE})"
        )
    if bytes(cbor2.dumps(decoded)) != value:
        # Trailing bytes or a non-canonical length: accept one encoding only.
        raise MalformedExtension("the CMW extension has trailing or odd bytes")
    return evidence


def _old_untag(decoded: cbor2.CBORTag, value: bytes) -> bytes:
    if not isinstance(decoded.value, bytes):
        raise MalformedExtension("old-format DICE tagged evidence must be a byte string")
    if old_dice_value(decoded.value) != value:
        raise MalformedExtension("the old-format DICE extension has trailing or odd bytes")
    return decoded.value


def _short(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


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


def _printable(name: str) -> str:
    text = "".join(c if c.isprintable() else "?" for c in name)[:MAX_NAME]
    return text or "module"
