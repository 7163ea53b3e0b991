"""Appraisal of TPM 2.0 platform evidence: EK chain, AK activation, quote, event log.

Pure and I/O-free: it runs on a verifier machine with no TPM. The secure world's side (the
TPM that makes keys, extends PCRs and quotes) is ``veritee.tee.backends.tpm``.

The trust chain, as Keylime's registrar and verifier build it::

    TPM manufacturer CA --X.509--> EK certificate (the EK's public key)
    credential activation: a secret encrypted to the EK, bound to the AK's name, comes back
                           only from the TPM that holds both the EK and the AK
    AK signs TPM2_Quote: PCR digest + qualifying data = H(vTEE key digest, challenge)
    event log: (pcr, digest, description) records whose replay gives the quoted PCR digest,
               each record a reference value

The TPM holds the keys and the PCRs; what runs on top of it (the secure world) is isolated by
the operating system, not by hardware: evidence made this way says so (``PROTECTION_TPM``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509 import verification
from tpm2_pytss import TSS2_Exception
from tpm2_pytss.constants import TPM2_ALG, TPM2_ECC, TPM2_GENERATED, TPM2_ST, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_PUBLIC,
    TPML_PCR_SELECTION,
    TPMS_ATTEST,
    TPMS_PCR_SELECTION,
    TPMT_PUBLIC,
    TPMT_SIGNATURE,
)
from tpm2_pytss.utils import create_ek_template, make_credential

from veritee.evidence import cose
from veritee.evidence.claims import ROLLBACK_TPM_NV, PlatformClaims
from veritee.evidence.errors import (
    AkNotActivated,
    AkRejected,
    BindingMismatch,
    MalformedQuote,
    MalformedToken,
    PcrDigestMismatch,
    QuoteNotFresh,
    QuoteSignatureInvalid,
    TpmBootIncomplete,
    TpmEventNotEndorsed,
    UntrustedEk,
)

# What the platform evidence says about its backend (the verifier's policy tells them apart).
BACKEND_TPM = "tpm2"
# A TPM roots the device's keys and boot measurements; the secure world's memory is isolated
# by the operating system (processes, users), not by hardware as in a TEE.
PROTECTION_TPM = "tpm-rooted-os-isolated"

# The PCR the secure world's boot stages extend. Not 16 or 23: those are resettable from
# locality 0, so any process with TPM access could reset them and replay the genuine chain,
# and sealing under them would hold nothing. 8-15 are the OS's and cannot be reset until the
# next platform reset; 15 is the one least used by boot loaders (systemd extends it only
# with the machine id / volume keys, after the initrd).
VERITEE_PCR = 15
PCR_BANK = TPM2_ALG.SHA256
DIGEST_SIZE = 32

QUOTE_BINDING_CONTEXT = b"veritee/tpm-quote/v1\x00"
# The event the secure world extends into VERITEE_PCR once it has unsealed its root: from then
# until the next platform reset the PCR holds a value no sealed root opens under, so a host
# process that opens the TPM after the genuine boot cannot unseal the root again. Quotes made
# after it show it as their last event; a constant, so every verifier knows its digest.
CAP_EVENT = "veritee/root-unsealed"
CAP_DIGEST = hashlib.sha256(b"veritee: the secure world holds its root until the reset").digest()
CREDENTIAL_BYTES = 32  # the activation secret's size: a guess must be as hard as a key's

MAX_EVENT_LOG_BYTES = 64 * 1024  # an attacker-sized event log must not exhaust memory
MAX_EVENT_LOG_ENTRIES = 256  # nor its replay cost CPU
MAX_DESCRIPTION = 256  # bound on one record's description
MAX_ATTEST_BYTES = 1024  # a TPMS_ATTEST is a few hundred bytes; more is an attack on the parser
MAX_EK_CERT_BYTES = 8 * 1024  # EK certificates are ~1 KB; bound what the chain builder reads
MAX_EK_CHAIN = 4  # intermediates a device may present with its EK certificate
MAX_CLAIMS_BYTES = 64 * 1024  # the platform claims a quote vouches for (a boot log and a key)

# The EK template of the TCG EK Credential Profile (the "low range" RSA 2048 EK at NV index
# 0x01c00002): the verifier rebuilds the EK's public area from this template and the
# certificate's key, so it never trusts an EK public area that the device reports.
EK_TYPE = "EK-RSA2048"

# An attestation key must be a restricted signing key that never left its TPM: restricted
# so it signs only TPM-generated structures (a quote cannot be forged by signing chosen bytes).
_AK_REQUIRED = (
    TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
    | TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
)


def claims_binding(vtee_key_digest: bytes, claims: bytes) -> bytes:
    """The qualifying data of a vTEE's platform quote: the vTEE key it endorses and the
    platform claims (vTEE id, name, configuration, boot log) it vouches for, so that a
    quote cannot be moved to other claims or another key."""
    return quote_binding(vtee_key_digest, hashlib.sha256(claims).digest())


def tpm_ueid(ek_cert_der: bytes) -> bytes:
    """The UEID of a TPM-backed device (EAT RAND type): that of its EK certificate."""
    return b"\x01" + ek_fingerprint(ek_cert_der)


def quote_binding(vtee_key_digest: bytes, challenge: bytes) -> bytes:
    """The qualifying data of a quote: binds the vTEE key it endorses and the challenge
    (as the emulated platform token's challenge binds the vTEE key)."""
    h = hashlib.sha256(QUOTE_BINDING_CONTEXT)
    for part in (vtee_key_digest, challenge):
        h.update(len(part).to_bytes(4, "big") + part)
    return h.digest()


# -- the event log -------------------------------------------------------------------------


@dataclass(frozen=True)
class TpmEvent:
    """One measured boot record: ``digest`` was extended into ``pcr`` for ``description``."""

    pcr: int
    digest: bytes
    description: str


def encode_event_log(events: Iterable[TpmEvent]) -> bytes:
    return bytes(cbor2.dumps([[e.pcr, e.digest, e.description] for e in events]))


def decode_event_log(data: bytes) -> list[TpmEvent]:
    """Parse a CBOR event log; raises :class:`MalformedQuote` on anything else."""
    if len(data) > MAX_EVENT_LOG_BYTES:
        raise MalformedQuote(f"event log is larger than {MAX_EVENT_LOG_BYTES} bytes")
    try:
        raw = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError):
        raise MalformedQuote("event log is not CBOR") from None
    if not isinstance(raw, list) or len(raw) > MAX_EVENT_LOG_ENTRIES:
        raise MalformedQuote(f"event log must be a list of at most {MAX_EVENT_LOG_ENTRIES}")
    events = []
    for item in raw:
        if not (
            isinstance(item, list)
            and len(item) == 3
            and isinstance(item[0], int)
            and 0 <= item[0] < 24
            and isinstance(item[1], bytes)
            and len(item[1]) == DIGEST_SIZE
            and isinstance(item[2], str)
            and len(item[2]) <= MAX_DESCRIPTION
        ):
            raise MalformedQuote("event log record is not [pcr, sha256 digest, description]")
        events.append(TpmEvent(item[0], item[1], item[2]))
    return events


def replay(events: Sequence[TpmEvent], pcrs: Iterable[int]) -> dict[int, bytes]:
    """The PCR values the log implies, each PCR starting at zero (a platform reset)."""
    values = {p: bytes(DIGEST_SIZE) for p in pcrs}
    for e in events:
        if e.pcr not in values:
            raise MalformedQuote(f"event log extends PCR {e.pcr}, which the quote does not cover")
        values[e.pcr] = hashlib.sha256(values[e.pcr] + e.digest).digest()
    return values


def expected_pcr(stages: Iterable[tuple[str, bytes]], pcr: int = VERITEE_PCR) -> bytes:
    """The value ``pcr`` holds after booting ``stages`` (to seal for a boot not yet run)."""
    return replay([TpmEvent(pcr, d, n) for n, d in stages], [pcr])[pcr]


def pcr_selection(pcrs: Iterable[int]) -> TPML_PCR_SELECTION:
    select = bytearray(3)
    for p in pcrs:
        select[p // 8] |= 1 << (p % 8)
    return TPML_PCR_SELECTION(
        [TPMS_PCR_SELECTION(hash=PCR_BANK, sizeofSelect=3, pcrSelect=bytes(select))]
    )


def pcr_composite_digest(values: Mapping[int, bytes]) -> bytes:
    """TPM2_Quote's pcrDigest: the hash of the selected PCRs' values in ascending order."""
    return hashlib.sha256(b"".join(values[p] for p in sorted(values))).digest()


# -- identity: the EK certificate and credential activation --------------------------------


# tcg-kp-EKCertificate (TCG EK Credential Profile 2.0, section 3.2.16).
TCG_KP_EK_CERTIFICATE = x509.ObjectIdentifier("2.23.133.8.1")


def _ek_not_ca(_policy: Any, _cert: x509.Certificate, bc: x509.BasicConstraints | None) -> None:
    if bc is not None and bc.ca:
        raise ValueError("an EK certificate must not be a CA certificate")


def _ek_usage(_policy: Any, _cert: x509.Certificate, ku: x509.KeyUsage) -> None:
    # An EK decrypts (credentials, salts); a certificate whose key signs is not an EK's.
    if not ku.key_encipherment or ku.key_cert_sign or ku.digital_signature:
        raise ValueError("an RSA EK certificate's keyUsage must be keyEncipherment only")


def _ek_eku(_policy: Any, _cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None) -> None:
    if eku is not None and TCG_KP_EK_CERTIFICATE not in eku:
        raise ValueError("the certificate's extendedKeyUsage is not tcg-kp-EKCertificate")


def _ek_policy() -> tuple[verification.ExtensionPolicy, verification.ExtensionPolicy]:
    # EK certificates (TCG EK Credential Profile 2.0, section 3.2) have an empty or
    # placeholder subject, a critical SAN holding the TPM manufacturer/model/version as a
    # directoryName, subjectDirectoryAttributes, key usage keyEncipherment and a TCG EKU:
    # not what the Web PKI's end-entity profile permits, so the EK profile is ours, checked
    # by cryptography's path validator. The CAs above must satisfy the CA profile.
    crit = verification.Criticality
    ee = (
        verification.ExtensionPolicy.permit_all()
        .may_be_present(x509.BasicConstraints, crit.AGNOSTIC, _ek_not_ca)
        .require_present(x509.KeyUsage, crit.AGNOSTIC, _ek_usage)
        .may_be_present(x509.ExtendedKeyUsage, crit.AGNOSTIC, _ek_eku)
    )
    return ee, verification.ExtensionPolicy.webpki_defaults_ca()


def verify_ek_certificate(
    ek_cert_der: bytes,
    anchors: Sequence[x509.Certificate],
    intermediates: Sequence[bytes] = (),
    *,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """The EK certificate, once its chain to one of the manufacturer CAs in ``anchors`` is
    verified (cryptography's path validation); raises :class:`UntrustedEk`."""
    if len(ek_cert_der) > MAX_EK_CERT_BYTES or len(intermediates) > MAX_EK_CHAIN:
        raise UntrustedEk("EK certificate or its chain is larger than this verifier accepts")
    if not anchors:
        raise UntrustedEk("no TPM manufacturer CA is trusted (add one to the trust anchors)")
    try:
        leaf = x509.load_der_x509_certificate(ek_cert_der)
        chain = [x509.load_der_x509_certificate(c) for c in intermediates]
    except ValueError:
        raise UntrustedEk("EK certificate is not a DER X.509 certificate") from None
    ee_policy, ca_policy = _ek_policy()
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(list(anchors)))
        .time(now or dt.datetime.now(dt.UTC))
        .max_chain_depth(MAX_EK_CHAIN)
        .extension_policies(ee_policy=ee_policy, ca_policy=ca_policy)
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, chain)
    except verification.VerificationError as exc:
        raise UntrustedEk(
            f"EK certificate does not chain to a trusted TPM manufacturer CA ({exc})"
        ) from None
    if not isinstance(leaf.public_key(), rsa.RSAPublicKey):
        raise UntrustedEk("EK certificate does not hold an RSA endorsement key")
    return leaf


def ek_public_from_certificate(cert: x509.Certificate) -> TPM2B_PUBLIC:
    """The EK's public area: the TCG default template with the certificate's key."""
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size != 2048:
        raise UntrustedEk("EK certificate does not hold an RSA 2048 endorsement key")

    def _no_nv(index: int) -> bytes:
        from tpm2_pytss.utils import NoSuchIndex

        raise NoSuchIndex(index)

    _, template = create_ek_template(EK_TYPE, _no_nv)
    template.publicArea.unique.rsa = key.public_numbers().n.to_bytes(256, "big")
    return template


def parse_ak_public(ak_public: bytes) -> TPMT_PUBLIC:
    """The AK's public area, once it is a restricted ECDSA P-256 signing key that never left
    its TPM; raises :class:`AkRejected`."""
    try:
        pub2b, used = TPM2B_PUBLIC.unmarshal(ak_public)
    except TSS2_Exception:  # the TSS's unmarshal refuses any malformed byte
        raise AkRejected("AK public area is not a TPM2B_PUBLIC") from None
    if used != len(ak_public):
        raise AkRejected("AK public area has trailing bytes")
    pub = pub2b.publicArea
    attrs = int(pub.objectAttributes)
    if (
        pub.type != TPM2_ALG.ECC
        or pub.nameAlg != TPM2_ALG.SHA256
        or attrs & _AK_REQUIRED != _AK_REQUIRED
        or attrs & TPMA_OBJECT.DECRYPT
        or pub.parameters.eccDetail.curveID != TPM2_ECC.NIST_P256
        or pub.parameters.eccDetail.scheme.scheme != TPM2_ALG.ECDSA
        or pub.parameters.eccDetail.scheme.details.anySig.hashAlg != TPM2_ALG.SHA256
    ):
        raise AkRejected(
            "AK is not a restricted, fixedTPM ECDSA P-256/SHA-256 signing key made by the TPM"
        )
    return pub


def ak_name(ak_public: bytes) -> bytes:
    """The TPM name of the AK (nameAlg || H(TPMT_PUBLIC))."""
    return bytes(parse_ak_public(ak_public).get_name())


@dataclass(frozen=True)
class ActivationChallenge:
    """What the verifier sends the device (``credential_blob``, ``secret``) and keeps
    (``expected``, never sent)."""

    credential_blob: bytes
    secret: bytes
    expected: bytes


def make_activation_challenge(ek: x509.Certificate, ak_public: bytes) -> ActivationChallenge:
    """TPM2_MakeCredential in software: a fresh secret that only the TPM holding the private
    EK of ``ek`` can decrypt, and only into an object named as the AK (so only if that TPM
    also holds the AK)."""
    name = ak_name(ak_public)
    credential = secrets.token_bytes(CREDENTIAL_BYTES)
    blob, secret = make_credential(ek_public_from_certificate(ek), credential, name)
    return ActivationChallenge(
        credential_blob=bytes(blob.marshal()),
        secret=bytes(secret.marshal()),
        expected=credential,
    )


def check_activation(challenge: ActivationChallenge, answer: bytes) -> None:
    """Raises :class:`AkNotActivated` unless ``answer`` is the activation secret."""
    if not hmac.compare_digest(answer, challenge.expected):
        raise AkNotActivated(
            "the AK did not activate the credential: it does not live in the TPM of the trusted EK"
        )


# -- the quote -----------------------------------------------------------------------------


def _ak_key(pub: TPMT_PUBLIC) -> ec.EllipticCurvePublicKey:
    point = pub.unique.ecc
    return ec.EllipticCurvePublicNumbers(
        int.from_bytes(bytes(point.x), "big"), int.from_bytes(bytes(point.y), "big"), ec.SECP256R1()
    ).public_key()


@dataclass(frozen=True)
class TpmQuote:
    """A TPM2_Quote as it travels: the TPMS_ATTEST bytes the AK signed, the marshalled
    TPMT_SIGNATURE and the CBOR event log."""

    attest: bytes
    signature: bytes
    event_log: bytes

    def encode(self) -> dict[int, bytes]:
        return {1: self.attest, 2: self.signature, 3: self.event_log}

    @classmethod
    def decode(cls, value: Any) -> TpmQuote:
        if not isinstance(value, dict) or not all(
            isinstance(value.get(k), bytes) for k in (1, 2, 3)
        ):
            raise MalformedQuote("TPM quote is not {1: attest, 2: signature, 3: event log}")
        return cls(value[1], value[2], value[3])


@dataclass(frozen=True)
class TpmAppraisal:
    """What a quote proved: the boot records it covers and the PCR values they produce."""

    events: tuple[TpmEvent, ...]
    pcrs: dict[int, bytes]
    clock: int


def verify_quote(
    quote: TpmQuote,
    ak_public: bytes,
    expected_binding: bytes,
    reference_values: Mapping[str, Iterable[bytes]],
    pcrs: Sequence[int] = (VERITEE_PCR,),
) -> TpmAppraisal:
    """Appraise a quote from an activated AK. In this order, each its own error: the quote's
    signature by the AK (:class:`QuoteSignatureInvalid`), its structure (magic, type, PCR
    selection: :class:`MalformedQuote`), its qualifying data against ``expected_binding``
    (:class:`QuoteNotFresh`), the PCR digest recomputed from the event log
    (:class:`PcrDigestMismatch`), then each log record against ``reference_values``, a map
    of description to accepted digests (:class:`TpmEventNotEndorsed`), and that every stage
    the reference values name was measured exactly once (:class:`TpmBootIncomplete`)."""
    if not reference_values:  # with none, an unmeasured boot (PCR 15 = 0) would pass
        raise TpmBootIncomplete("no reference values for the TPM boot stages: none endorsed")
    result = verify_quote_log(quote, ak_public, expected_binding, pcrs)
    check_events(result.events, reference_values)
    return result


def verify_quote_log(
    quote: TpmQuote,
    ak_public: bytes,
    expected_binding: bytes,
    pcrs: Sequence[int] = (VERITEE_PCR,),
) -> TpmAppraisal:
    """:func:`verify_quote` up to the PCR digest: what the quote proves of the event log,
    before any reference value is asked (the caller checks the records)."""
    pub = parse_ak_public(ak_public)
    if len(quote.attest) > MAX_ATTEST_BYTES:
        raise MalformedQuote(f"TPMS_ATTEST is larger than {MAX_ATTEST_BYTES} bytes")
    try:
        sig, used = TPMT_SIGNATURE.unmarshal(quote.signature)
    except TSS2_Exception:  # the TSS's unmarshal refuses any malformed byte
        raise MalformedQuote("quote signature is not a TPMT_SIGNATURE") from None
    if used != len(quote.signature) or sig.sigAlg != TPM2_ALG.ECDSA:
        raise QuoteSignatureInvalid("quote signature is not an ECDSA signature")
    if sig.signature.ecdsa.hash != TPM2_ALG.SHA256:
        raise QuoteSignatureInvalid("quote signature does not use SHA-256")
    der = encode_dss_signature(
        int.from_bytes(bytes(sig.signature.ecdsa.signatureR), "big"),
        int.from_bytes(bytes(sig.signature.ecdsa.signatureS), "big"),
    )
    try:
        _ak_key(pub).verify(der, quote.attest, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise QuoteSignatureInvalid("quote is not signed by the activated AK") from None
    try:
        attest, used = TPMS_ATTEST.unmarshal(quote.attest)
    except TSS2_Exception:  # the TSS's unmarshal refuses any malformed byte
        raise MalformedQuote("quote is not a TPMS_ATTEST") from None
    if used != len(quote.attest):
        raise MalformedQuote("TPMS_ATTEST has trailing bytes")
    if attest.magic != TPM2_GENERATED.VALUE or attest.type != TPM2_ST.ATTEST_QUOTE:
        raise MalformedQuote("attestation is not a TPM-generated quote")
    if not hmac.compare_digest(bytes(attest.extraData), expected_binding):
        raise QuoteNotFresh(
            "quote's qualifying data does not bind this vTEE key and challenge (replayed or "
            "made for another vTEE)"
        )
    quoted = attest.attested.quote
    if bytes(quoted.pcrSelect.marshal()) != bytes(pcr_selection(pcrs).marshal()):
        raise MalformedQuote(f"quote does not cover exactly the SHA-256 PCRs {list(pcrs)}")
    events = decode_event_log(quote.event_log)
    values = replay(events, pcrs)
    if not hmac.compare_digest(bytes(quoted.pcrDigest), pcr_composite_digest(values)):
        raise PcrDigestMismatch(
            "event log does not replay to the quoted PCRs (the log was altered or is incomplete)"
        )
    return TpmAppraisal(events=tuple(events), pcrs=values, clock=int(attest.clockInfo.clock))


def check_events(
    events: Sequence[TpmEvent], reference_values: Mapping[str, Iterable[bytes]]
) -> None:
    """Each record of a verified event log against ``reference_values`` (description to
    accepted digests), then that every stage named there was measured exactly once. The
    secure world's cap (``CAP_EVENT``, a constant) is accepted where it stands."""
    if not reference_values:
        raise TpmBootIncomplete("no reference values for the TPM boot stages: none endorsed")
    measured = [e for e in events if not _is_cap(e)]
    for e in measured:
        accepted = [bytes(d) for d in reference_values.get(e.description, ())]
        if not any(hmac.compare_digest(e.digest, d) for d in accepted):
            raise TpmEventNotEndorsed(
                f"boot stage '{e.description}' measures {e.digest.hex()[:16]}…, which is not "
                "among the reference values (a modified stage booted)"
            )
    seen = [e.description for e in measured]
    missing = sorted(set(reference_values) - set(seen))
    repeated = sorted({d for d in seen if seen.count(d) > 1})
    if missing or repeated:
        raise TpmBootIncomplete(
            f"event log lacks boot stage(s) {missing}"
            if missing
            else f"event log measures boot stage(s) {repeated} more than once"
        )


def _is_cap(e: TpmEvent) -> bool:
    return e.description == CAP_EVENT and hmac.compare_digest(e.digest, CAP_DIGEST)


# -- platform evidence and registration ----------------------------------------------------


@dataclass(frozen=True)
class Registration:
    """What a verifier's registrar keeps once an AK activated: the EK certificate's
    fingerprint and the AK it vouches for. Quotes are believed only from such an AK."""

    ek_fingerprint: bytes
    ak_public: bytes


def ek_fingerprint(ek_cert_der: bytes) -> bytes:
    return hashlib.sha256(ek_cert_der).digest()


def register(
    ek_cert_der: bytes, ak_public: bytes, challenge: ActivationChallenge, answer: bytes
) -> Registration:
    """The registrar's last step: raises :class:`AkNotActivated` unless the TPM answered."""
    check_activation(challenge, answer)
    return Registration(ek_fingerprint(ek_cert_der), ak_public)


@dataclass(frozen=True)
class TpmPlatformEvidence:
    """The platform part of evidence on the TPM backend (in place of the emulated platform
    token): the EK certificate, the AK, and a quote binding the vTEE key and challenge. It
    names its backend and what that protects, so a policy can tell it from a hardware TEE."""

    ek_certificate: bytes
    ak_public: bytes
    quote: TpmQuote
    # The platform claims (encoded PlatformClaims) the quote vouches for: its qualifying data
    # is claims_binding(vTEE key, claims). Empty in a quote made for a bare challenge.
    claims: bytes = b""

    def encode(self) -> bytes:
        body: dict[str, Any] = {
            "backend": BACKEND_TPM,
            "protection": PROTECTION_TPM,
            "ek": self.ek_certificate,
            "ak": self.ak_public,
            "quote": self.quote.encode(),
        }
        if self.claims:
            body["claims"] = self.claims
        return bytes(cbor2.dumps(body))

    @classmethod
    def decode(cls, data: bytes) -> TpmPlatformEvidence:
        if len(data) > (
            MAX_EVENT_LOG_BYTES + MAX_EK_CERT_BYTES + 2 * MAX_ATTEST_BYTES + MAX_CLAIMS_BYTES
        ):
            raise MalformedQuote("TPM platform evidence is larger than this verifier accepts")
        try:
            raw = cbor2.loads(data)
        except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError):
            raise MalformedQuote("TPM platform evidence is not CBOR") from None
        if (
            not isinstance(raw, dict)
            or raw.get("backend") != BACKEND_TPM
            or not isinstance(raw.get("ek"), bytes)
            or not isinstance(raw.get("ak"), bytes)
        ):
            raise MalformedQuote("not TPM platform evidence (backend, ek, ak, quote)")
        claims = raw.get("claims", b"")
        if not isinstance(claims, bytes) or len(claims) > MAX_CLAIMS_BYTES:
            raise MalformedQuote("TPM platform evidence's claims are not bytes of a bounded size")
        return cls(raw["ek"], raw["ak"], TpmQuote.decode(raw.get("quote")), claims)


def appraise_platform(
    evidence: TpmPlatformEvidence,
    *,
    anchors: Sequence[x509.Certificate],
    registrations: Mapping[bytes, Registration],
    vtee_key_digest: bytes,
    challenge: bytes,
    reference_values: Mapping[str, Iterable[bytes]],
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Every check on TPM platform evidence, in order: the EK chain (:class:`UntrustedEk`),
    that this EK's AK was activated and is the one presented (:class:`AkNotActivated`), then
    :func:`verify_quote` against the binding of ``vtee_key_digest`` and ``challenge``.
    Returns the claims of the EAR's own ``tpm-platform`` submodule."""
    verify_ek_certificate(evidence.ek_certificate, anchors, now=now)
    registered = registrations.get(ek_fingerprint(evidence.ek_certificate))
    if registered is None or not hmac.compare_digest(registered.ak_public, evidence.ak_public):
        raise AkNotActivated(
            "the quote's AK was never activated against this EK (register the TPM first)"
        )
    result = verify_quote(
        evidence.quote,
        evidence.ak_public,
        quote_binding(vtee_key_digest, challenge),
        reference_values,
    )
    return {
        "backend": BACKEND_TPM,
        # Its own word, never the device's: the secure world on a TPM is OS-isolated.
        "protection": PROTECTION_TPM,
        "ek": ek_fingerprint(evidence.ek_certificate).hex(),
        "pcrs": {str(p): v.hex() for p, v in result.pcrs.items()},
        "boot": [
            {"component": e.description, "measurement": e.digest.hex()} for e in result.events
        ],
        "rollback-protection": ROLLBACK_TPM_NV,
    }


# -- a vTEE's platform token on the TPM backend --------------------------------------------

# The most a TPM-backed device is appraised as: the TPM roots its keys and boot, but the
# secure world is ordinary processes the OS isolates, as on an emulated device.
TPM_LIFECYCLE_CEILING = "emulated"


@dataclass(frozen=True)
class VerifiedTpmPlatform:
    """A vTEE's TPM platform token whose every check passed."""

    claims: PlatformClaims
    ek_certificate: x509.Certificate
    anchor: x509.Certificate  # the TPM manufacturer CA that issued it
    submod: dict[str, Any]  # the EAR's tpm-platform submodule claims


def verify_platform_token(
    data: bytes,
    anchors: Sequence[x509.Certificate],
    registrations: Mapping[bytes, Registration],
    *,
    now: dt.datetime | None = None,
) -> VerifiedTpmPlatform:
    """Every check on a vTEE's TPM platform token, in order, each its own error: the EK chain
    to a TPM manufacturer CA (:class:`UntrustedEk`); that this EK's AK was activated and is the
    one presented (:class:`AkNotActivated`); the quote (:func:`verify_quote_log`) against
    the binding of the vTEE key and the claims; the cap as the log's last record
    (:class:`TpmBootIncomplete`); the claims' boot log equal to the quoted records and their
    UEID to the EK's (:class:`BindingMismatch`). The records are checked against reference
    values by the caller, through the claims' boot log (appraisal.check_boot)."""
    evidence = TpmPlatformEvidence.decode(data)
    if not evidence.claims:
        raise MalformedQuote("TPM platform token carries no platform claims")
    leaf = verify_ek_certificate(evidence.ek_certificate, anchors, now=now)
    registered = registrations.get(ek_fingerprint(evidence.ek_certificate))
    if registered is None or not hmac.compare_digest(registered.ak_public, evidence.ak_public):
        raise AkNotActivated(
            "the quote's AK was never activated against this EK (register the TPM first)"
        )
    raw = cose.loads(evidence.claims, what="TPM platform claims")
    if not isinstance(raw, dict):
        raise MalformedToken("TPM platform claims are not a map")
    claims = PlatformClaims.from_cbor(raw)
    binding = claims_binding(cose.key_digest(claims.vtee_key), evidence.claims)
    result = verify_quote_log(evidence.quote, evidence.ak_public, binding)
    events = result.events
    if not events or not _is_cap(events[-1]) or any(_is_cap(e) for e in events[:-1]):
        raise TpmBootIncomplete(
            "the quote's event log does not end with the secure world's cap: it was not made "
            "by a secure world holding its root"
        )
    quoted = [(e.description, e.digest) for e in events[:-1]]
    claimed = [(b.component, b.measurement) for b in claims.boot_log]
    if quoted != claimed:
        raise BindingMismatch("the platform claims' boot log is not the event log the TPM quoted")
    if not hmac.compare_digest(claims.ueid, tpm_ueid(evidence.ek_certificate)):
        raise BindingMismatch("the platform claims' UEID is not that of the TPM's EK")
    anchor = next(ca for ca in anchors if ca.subject == leaf.issuer)
    submod = {
        "backend": BACKEND_TPM,
        # Its own word, never the device's: the secure world on a TPM is OS-isolated.
        "protection": PROTECTION_TPM,
        "ek": ek_fingerprint(evidence.ek_certificate).hex(),
        "ek-ca": anchor.subject.rfc4514_string(),
        "pcrs": {str(p): v.hex() for p, v in result.pcrs.items()},
        "boot": [{"component": e.description, "measurement": e.digest.hex()} for e in events],
        "rollback-protection": ROLLBACK_TPM_NV,
    }
    return VerifiedTpmPlatform(claims, leaf, anchor, submod)


# -- the registrar's record ----------------------------------------------------------------

MAX_REGISTRATIONS = 4096  # a registrations file is the verifier's own; bound what it parses


def registrations_to_json(registrations: Iterable[Registration]) -> dict[str, Any]:
    return {
        "tpm-registrations": [
            {"ek-sha256": r.ek_fingerprint.hex(), "ak": r.ak_public.hex()} for r in registrations
        ]
    }


def registrations_from_json(value: Any) -> dict[bytes, Registration]:
    """The registrations a verifier recorded (EK fingerprint -> Registration); each AK is
    parsed again, so a file edited to hold another kind of key is refused."""
    items = value.get("tpm-registrations") if isinstance(value, dict) else None
    if not isinstance(items, list) or len(items) > MAX_REGISTRATIONS:
        raise MalformedToken('TPM registrations must be {"tpm-registrations": [...]}')
    out: dict[bytes, Registration] = {}
    for item in items:
        try:
            fingerprint = bytes.fromhex(item["ek-sha256"])
            ak = bytes.fromhex(item["ak"])
        except (KeyError, TypeError, ValueError):
            raise MalformedToken("TPM registration lacks a hex 'ek-sha256' or 'ak'") from None
        if len(fingerprint) != DIGEST_SIZE:
            raise MalformedToken("TPM registration's 'ek-sha256' is not a SHA-256 digest")
        try:
            parse_ak_public(ak)
        except AkRejected as exc:
            raise MalformedToken(f"TPM registration's AK: {exc}") from None
        out[fingerprint] = Registration(fingerprint, ak)
    return out
