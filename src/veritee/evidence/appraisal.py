"""Appraisal of Veritee evidence: I/O-free, bytes and values in, a result out or one error.

Checks, in order, each with its own exception (see ``errors``):

1. well-formed evidence and tokens                              MalformedToken
2. device certificate chains to a trusted, unrevoked CA and is
   valid now, under the device-certificate profile (CA ->
   device certificate; ``certs.validate_device_chain``, which
   is cryptography's path validator); the device is not revoked UntrustedDevice
3. platform token signed by the certified device key (DAK)      BadSignature
   and claims no lifecycle above the one its chain endorses     LifecycleNotEndorsed
4. vtee token signed by the key the platform token endorses;
   module token signed by the key the vtee token binds          BadSignature / BindingMismatch
5. module token's challenge is the verifier's nonce             NonceMismatch
6. boot log and module measurement are endorsed                 MeasurementNotEndorsed

Steps 1–5 are :func:`verify`; :func:`appraise` adds step 6 against reference values.
"""

from __future__ import annotations

import datetime as dt
import hmac
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from veritee.evidence import certs, cose
from veritee.evidence.certs import CERT_ERRORS
from veritee.evidence.claims import (
    HARDWARE_ROLLBACK_PROTECTIONS,
    LIFECYCLES,
    ROLLBACK_HOST_FILE,
    ROLLBACK_TPM_NV,
    Evidence,
    ModuleClaims,
    PlatformClaims,
    VteeClaims,
)
from veritee.evidence.errors import (
    BadSignature,
    BindingMismatch,
    LifecycleNotEndorsed,
    MalformedToken,
    MeasurementNotEndorsed,
    NonceMismatch,
    UntrustedDevice,
)


@dataclass(frozen=True)
class TrustAnchors:
    """Manufacturer CAs the verifier trusts, the most each may endorse, and what has been
    revoked since.

    ``ceilings`` is the word of whoever provisioned the anchors: by CA key
    (:func:`certs.key_id`), the highest lifecycle that key's devices may be appraised as,
    whatever the certificates' marks say (the holder of a CA's key can re-mint it with any
    mark). A key without an entry is capped by the marks alone: building TrustAnchors from
    certificates directly is the caller's statement that it trusts their marks. Everything that
    reads anchors from a file (:meth:`from_pem`) or from an operator records a ceiling, and
    :data:`certs.DEFAULT_CEILING` (emulated) unless told otherwise.
    """

    cas: tuple[x509.Certificate, ...]
    revoked_devices: frozenset[bytes] = frozenset()  # UEIDs
    revoked_cas: frozenset[bytes] = frozenset()  # CA keys: certs.key_id (SHA-256 of the SPKI)
    ceilings: Mapping[bytes, str] = field(default_factory=dict)  # certs.key_id -> lifecycle
    # TPM-backed devices (evidence/tpm.py): the TPM manufacturer CAs their EK certificates
    # chain to, and the AKs that activated against a trusted EK (by EK fingerprint).
    tpm_cas: tuple[x509.Certificate, ...] = ()
    tpm_registrations: Mapping[bytes, Any] = field(default_factory=dict)

    @classmethod
    def from_pem(cls, pem: bytes, *, max_lifecycle: str = certs.DEFAULT_CEILING) -> TrustAnchors:
        """The CAs of a PEM file, each fitting the CA profile, endorsing at most
        ``max_lifecycle`` (emulated unless the caller vouches for the file's origin)."""
        try:
            cas = tuple(x509.load_pem_x509_certificates(pem))
            for ca in cas:
                certs.check_anchor(ca)
            return cls.of(cas, max_lifecycle=max_lifecycle)
        except CERT_ERRORS:
            raise UntrustedDevice("trust anchor file holds no PEM certificate") from None

    @classmethod
    def of(
        cls, cas: tuple[x509.Certificate, ...], *, max_lifecycle: str = certs.DEFAULT_CEILING
    ) -> TrustAnchors:
        """``cas``, every one capped at ``max_lifecycle``."""
        if max_lifecycle not in LIFECYCLES:
            raise ValueError(f"lifecycle {max_lifecycle!r} is not one of {LIFECYCLES}")
        return cls(cas, ceilings={certs.key_id(ca): max_lifecycle for ca in cas})

    def merge(self, other: TrustAnchors) -> TrustAnchors:
        """Both sets of anchors; a key in both keeps the lower ceiling."""
        ceilings = dict(self.ceilings)
        for kid, bound in other.ceilings.items():
            ceilings[kid] = certs.lowest(ceilings.get(kid, bound), bound)
        return TrustAnchors(
            self.cas + other.cas,
            self.revoked_devices | other.revoked_devices,
            self.revoked_cas | other.revoked_cas,
            ceilings,
            self.tpm_cas + other.tpm_cas,
            {**self.tpm_registrations, **other.tpm_registrations},
        )


@dataclass(frozen=True)
class ReferenceValues:
    """Endorsed measurements: boot components by name, modules by measurement."""

    boot: Mapping[str, frozenset[bytes]] = field(default_factory=dict)
    modules: Mapping[bytes, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, value: Any) -> ReferenceValues:
        """Parse ``{"boot": [{component, measurement}], "modules": [{name, measurement}]}``."""
        if not isinstance(value, dict):
            raise MalformedToken("reference values must be a JSON object")
        boot: dict[str, set[bytes]] = {}
        modules: dict[bytes, str] = {}
        try:
            for e in value.get("boot", []):
                boot.setdefault(str(e["component"]), set()).add(_hex32(e["measurement"]))
            for e in value.get("modules", []):
                modules[_hex32(e["measurement"])] = str(e.get("name", ""))
        except (KeyError, TypeError) as exc:
            raise MalformedToken(f"reference values entry lacks a field: {exc}") from None
        return cls({k: frozenset(v) for k, v in boot.items()}, modules)

    def merge(self, other: ReferenceValues) -> ReferenceValues:
        boot = {
            k: self.boot.get(k, frozenset()) | other.boot.get(k, frozenset())
            for k in {*self.boot, *other.boot}
        }
        return ReferenceValues(boot, {**self.modules, **other.modules})


@dataclass(frozen=True)
class Verified:
    """Evidence whose every signature, binding and the nonce checked out."""

    platform: PlatformClaims
    vtee: VteeClaims
    module: ModuleClaims
    device_certificate: x509.Certificate
    ca: x509.Certificate
    ca_key_id: bytes  # how revocations name the CA: its key (certs.key_id)
    ca_name: str  # the CA's subject (RFC 4514), as results and messages print it
    # The most this device may claim: its chain's marks, capped by its anchor's ceiling.
    endorsed_lifecycle: str
    # A TPM-backed device: the EAR's tpm-platform submodule claims (None: emulated device).
    tpm: Mapping[str, Any] | None = None

    @property
    def lifecycle(self) -> str:
        """The lifecycle appraisal vouches for: the token's claim, never above the endorsement.

        Every consumer (results, policies, peers) reads this, not ``platform.lifecycle``;
        :func:`verify` already refused a token that claims more than its endorsement.
        """
        return certs.lowest(self.platform.lifecycle, self.endorsed_lifecycle)

    @property
    def rollback_protection(self) -> str:
        """The rollback protection appraisal vouches for. A device its chain endorses as no
        more than emulated keeps its counters in a file of its user (host-file), whatever
        its token reports; so does one whose token says it is emulated. A TPM-backed
        device's counters are anchored in the TPM's NV counters, which its quote vouches for."""
        if self.tpm is not None:
            return ROLLBACK_TPM_NV
        if (
            self.endorsed_lifecycle == "emulated"
            and self.platform.rollback_protection in HARDWARE_ROLLBACK_PROTECTIONS
        ):
            return ROLLBACK_HOST_FILE
        return self.platform.appraised_rollback_protection()


class LinkCache:
    """Device → vTEE links already verified, keyed by the exact bytes of both tokens.

    A vTEE's platform and vtee tokens are signed once and sent with every module's evidence,
    so a verifier sees the same bytes again and again. Their chain walk and two signature
    checks give the same answer for the same bytes under the same trusted CAs: the cache
    holds that answer, and one cache belongs to one set of CAs (the verifier keeps one per
    endorsement snapshot, so a provisioning change starts afresh). What can change is still
    checked on every use: the certificates' validity against ``now``, and the revocation of
    the CA and of the device. A link that failed is not remembered. The module token, which
    carries the nonce, is always verified.
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[bytes, bytes], _Links] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, platform: bytes, vtee: bytes) -> _Links | None:
        with self._lock:
            found = self._entries.get((platform, vtee))
            if found is not None:
                self._entries.move_to_end((platform, vtee))
            return found

    def put(self, platform: bytes, vtee: bytes, links: _Links) -> None:
        with self._lock:
            self._entries[(platform, vtee)] = links
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


@dataclass(frozen=True)
class _Links:
    """What verifying the platform and vtee tokens established (see :class:`LinkCache`)."""

    platform: PlatformClaims
    vtee: VteeClaims
    module_key: ec.EllipticCurvePublicKey
    device_certificate: x509.Certificate
    ca: x509.Certificate
    ca_key_id: bytes  # how revocations name the CA: its key (certs.key_id)
    ca_name: str
    endorsed_lifecycle: str
    validity: _Validity
    tpm: Mapping[str, Any] | None = None


def verify(
    data: bytes,
    anchors: TrustAnchors,
    *,
    nonce: bytes | None,
    now: dt.datetime | None = None,
    links: LinkCache | None = None,
) -> Verified:
    """Steps 1–5. ``nonce=None`` skips the freshness check (for offline inspection only).

    ``links``, if given, remembers verified device → vTEE links; use one cache with one set
    of trusted CAs (revocations may change between uses: they are checked every time).
    """
    evidence = Evidence.decode(data)
    found = None if links is None else links.get(evidence.platform, evidence.vtee)
    if found is None:
        found = _verify_links(evidence, anchors, now)
        if links is not None:
            links.put(evidence.platform, evidence.vtee, found)
    else:
        _check_validity(found.validity, now)
    platform, vtee = found.platform, found.vtee
    if found.ca_key_id in anchors.revoked_cas:
        raise UntrustedDevice(f"CA '{found.ca_name}' is revoked")
    if platform.ueid in anchors.revoked_devices:
        raise UntrustedDevice(f"device {platform.ueid.hex()} is revoked")

    module_msg = cose.decode(evidence.module)
    cose.verify(module_msg, found.module_key, what="module token")
    module = ModuleClaims.from_cbor(module_msg.claims())
    if module.measurement != vtee.measurement or module.config != vtee.config:
        raise BindingMismatch("module token's measurement or config differs from its vtee token")
    if nonce is not None and not hmac.compare_digest(module.nonce, nonce):
        raise NonceMismatch(
            "module token's challenge is not the verifier's nonce (stale or replayed)"
        )
    return Verified(
        platform,
        vtee,
        module,
        found.device_certificate,
        found.ca,
        found.ca_key_id,
        found.ca_name,
        found.endorsed_lifecycle,
        found.tpm,
    )


def _verify_links(evidence: Evidence, anchors: TrustAnchors, now: dt.datetime | None) -> _Links:
    """The device certificate chain, the platform token and the vtee token, checked."""
    if evidence.platform[:1] and 0xA0 <= evidence.platform[0] <= 0xBF:  # a CBOR map
        return _verify_tpm_links(evidence, anchors, now)
    platform_msg = cose.decode(evidence.platform)
    path, dak, validity = _device_certificate(platform_msg, anchors, now)
    cose.verify(platform_msg, dak, what="platform token")
    platform = PlatformClaims.from_cbor(platform_msg.claims())
    expected_ueid = b"\x01" + cose.key_digest(cose.ec_key_to_cose(dak))
    if platform.ueid != expected_ueid:
        raise BindingMismatch("platform token's UEID is not that of the certified device key")
    # The token is the device's word; the chain is its manufacturer's. The word never wins.
    if certs.lowest(platform.lifecycle, path.lifecycle) != platform.lifecycle:
        raise LifecycleNotEndorsed(
            f"platform token claims lifecycle {platform.lifecycle!r}, but its device "
            f"certificate chain endorses at most {path.lifecycle!r}"
        )

    vtee_msg = cose.decode(evidence.vtee)
    cose.verify(vtee_msg, cose.cose_to_ec_key(platform.vtee_key), what="vtee token")
    vtee = VteeClaims.from_cbor(vtee_msg.claims())
    if vtee.vtee_id != platform.vtee_id:
        raise BindingMismatch("vtee token names another vTEE than the platform token endorses")
    module_key = cose.cose_to_ec_key(vtee.module_key)
    ca = path.ca
    ca_name = ca.subject.rfc4514_string()
    return _Links(
        platform,
        vtee,
        module_key,
        path.device_certificate,
        ca,
        certs.key_id(ca),
        ca_name,
        path.lifecycle,
        validity,
    )


def _verify_tpm_links(evidence: Evidence, anchors: TrustAnchors, now: dt.datetime | None) -> _Links:
    """A TPM-backed device's platform token (evidence/tpm.py: the quote, its EK and AK) and
    the vtee token it endorses."""
    try:
        from veritee.evidence import tpm
    except ImportError:  # tpm2-pytss (and its libtss2) is not installed on this verifier
        raise MalformedToken(
            "TPM platform evidence cannot be appraised here: tpm2-pytss is not installed"
        ) from None
    found = tpm.verify_platform_token(
        evidence.platform, anchors.tpm_cas, anchors.tpm_registrations, now=now
    )
    platform = found.claims
    ceiling = tpm.TPM_LIFECYCLE_CEILING
    if certs.lowest(platform.lifecycle, ceiling) != platform.lifecycle:
        raise LifecycleNotEndorsed(
            f"platform claims lifecycle {platform.lifecycle!r}; a TPM-backed device, whose "
            f"secure world the OS isolates, is appraised as at most {ceiling!r}"
        )
    vtee_msg = cose.decode(evidence.vtee)
    cose.verify(vtee_msg, cose.cose_to_ec_key(platform.vtee_key), what="vtee token")
    vtee = VteeClaims.from_cbor(vtee_msg.claims())
    if vtee.vtee_id != platform.vtee_id:
        raise BindingMismatch("vtee token names another vTEE than the platform token endorses")
    ca = found.anchor
    return _Links(
        platform,
        vtee,
        cose.cose_to_ec_key(vtee.module_key),
        found.ek_certificate,
        ca,
        certs.key_id(ca),
        ca.subject.rfc4514_string(),
        ceiling,
        _validity_of([found.ek_certificate, ca]),
        found.submod,
    )


# The status a local appraisal gives (the EAR's words): affirming only for genuine, locked-down
# hardware, so a script gating on "affirming" never accepts an emulated device.
STATUS_AFFIRMING = "affirming"
STATUS_WARNING = "warning"


def local_status(verified: Verified) -> str:
    """The status a local appraisal gives, as the verification service's default policy would:
    affirming only on hardware whose chain (and its anchor's ceiling) endorses ``secured``, with
    secure boot; otherwise a warning. The one place that decides it (RA-TLS, the CLI)."""
    if verified.lifecycle == "secured" and verified.platform.secure_boot:
        return STATUS_AFFIRMING
    return STATUS_WARNING


def appraise(
    data: bytes,
    anchors: TrustAnchors,
    refs: ReferenceValues,
    *,
    nonce: bytes,
    now: dt.datetime | None = None,
) -> Verified:
    """All checks; the result is evidence from an endorsed module on an endorsed platform."""
    verified = verify(data, anchors, nonce=nonce, now=now)
    check_reference_values(verified, refs)
    return verified


def check_reference_values(verified: Verified, refs: ReferenceValues) -> None:
    """Step 6: every boot component and the module measurement must be endorsed."""
    check_boot(verified, refs)
    if verified.module.measurement not in refs.modules:
        raise MeasurementNotEndorsed(
            f"module measurement {verified.module.measurement.hex()} is not among the "
            "reference values"
        )


def check_boot(verified: Verified, refs: ReferenceValues) -> None:
    """Every boot component must be endorsed, and every endorsed component present."""
    seen = set()
    for entry in verified.platform.boot_log:
        seen.add(entry.component)
        endorsed = refs.boot.get(entry.component)
        if endorsed is None:
            raise MeasurementNotEndorsed(
                f"boot component '{entry.component}' has no reference value"
            )
        if entry.measurement not in endorsed:
            raise MeasurementNotEndorsed(
                f"boot component '{entry.component}' measures {entry.measurement.hex()[:16]}…, "
                "which is not an endorsed value"
            )
    missing = set(refs.boot) - seen
    if missing:
        raise MeasurementNotEndorsed(f"boot log lacks endorsed component(s): {sorted(missing)}")


# Each certificate of the path with its validity period (read once: the getters parse).
_Validity = tuple[tuple[x509.Certificate, dt.datetime, dt.datetime], ...]


def _device_certificate(
    msg: cose.Sign1, anchors: TrustAnchors, now: dt.datetime | None
) -> tuple[certs.DeviceChain, ec.EllipticCurvePublicKey, _Validity]:
    """The device certificate's validated path, its (EC) key, and the validity periods of the
    path's certificates."""
    raw = msg.unprotected.get(cose.HDR_X5CHAIN)
    if isinstance(raw, bytes):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise MalformedToken("platform token carries no device certificate (x5chain)")
    if len(raw) > certs.MAX_X5CHAIN:
        raise UntrustedDevice(
            f"x5chain holds {len(raw)} certificates; the device-certificate profile has the "
            f"device certificate and at most its CA ({certs.MAX_X5CHAIN}): a longer chain "
            "would let a certified key certify another"
        )
    when = now or dt.datetime.now(dt.UTC)
    try:
        chain = [x509.load_der_x509_certificate(c) for c in raw]
        # For a clear message only; the judgement is the path validator's, below.
        _check_validity(_validity_of(chain), when)
        _check_shape(chain, anchors)
        path = certs.validate_device_chain(chain, anchors.cas, when, anchors.ceilings)
        validity = _validity_of([path.device_certificate, path.ca])
        key = path.device_certificate.public_key()
    except CERT_ERRORS:
        # cryptography parses certificate fields lazily: a mangled one fails on first use.
        raise MalformedToken(
            "platform token's x5chain holds a certificate that does not parse"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise UntrustedDevice("device certificate does not certify an EC attestation key")
    return path, key, validity


def _validity_of(chain: list[x509.Certificate]) -> _Validity:
    return tuple((cert, cert.not_valid_before_utc, cert.not_valid_after_utc) for cert in chain)


def _check_shape(chain: list[x509.Certificate], anchors: TrustAnchors) -> None:
    # Clear messages for the two ways a chain misses the profile's shape (CA -> device
    # certificate); the path validator would refuse both as well.
    if any(cert not in anchors.cas for cert in chain[1:]):
        raise UntrustedDevice(
            "x5chain holds a certificate that is not a trusted CA after the device "
            "certificate: under the device-certificate profile (CA -> device certificate) a "
            "device's key cannot certify another key"
        )
    if not any(ca.subject == chain[0].issuer for ca in anchors.cas):
        raise UntrustedDevice(
            f"device certificate issuer '{chain[0].issuer.rfc4514_string()}' is not a trusted CA"
        )


def _check_validity(validity: _Validity, now: dt.datetime | None) -> None:
    when = now or dt.datetime.now(dt.UTC)
    for cert, not_before, not_after in validity:
        if not not_before <= when <= not_after:
            raise UntrustedDevice(f"certificate '{cert.subject.rfc4514_string()}' is not valid now")


def _hex32(value: Any) -> bytes:
    try:
        raw = bytes.fromhex(str(value))
    except ValueError:
        raise MalformedToken(f"measurement {value!r} is not hex") from None
    if len(raw) != 32:
        raise MalformedToken(f"measurement {value!r} is not a SHA-256 digest")
    return raw


__all__ = [
    "BadSignature",
    "LifecycleNotEndorsed",
    "ReferenceValues",
    "TrustAnchors",
    "Verified",
    "appraise",
    "check_boot",
    "check_reference_values",
    "local_status",
    "verify",
]
