"""What the operator provisions, as frozen values: trust anchors, revocations, reference values.

Everything here is I/O-free: provisioning bodies (JSON objects from the REST API or from a
deployment file) are parsed once into these models, which the store persists and appraisal
reads back as one :class:`Endorsements` snapshot. Each parser raises
:class:`~veritee.verifier.errors.ProvisioningError` naming the field at fault.
"""

from __future__ import annotations

import functools
import hashlib
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from veritee.evidence import certs as x509_profile
from veritee.evidence.appraisal import LinkCache, TrustAnchors
from veritee.evidence.certs import CERT_ERRORS, DEFAULT_CEILING
from veritee.evidence.claims import LIFECYCLES
from veritee.evidence.errors import UntrustedDevice
from veritee.verifier.errors import ProvisioningError
from veritee.verifier.media import SCHEMES, Scheme

RefKind = Literal["boot", "module", "realm"]
REF_KINDS: tuple[RefKind, ...] = ("boot", "module", "realm")
RevocationKind = Literal["device", "ca"]

# Digest sizes a measurement may have: SHA-256/384/512 (PSA and CCA allow all three).
MEASUREMENT_SIZES = frozenset({32, 48, 64})
# Names and versions are echoed into results and logs: bound them.
MAX_NAME_CHARS = 256
# A PEM bundle of more CAs than this is a mistake or an attack on the appraisal loop (every
# anchor is tried against every device certificate).
MAX_CAS_PER_ENTRY = 16
# Policies are compiled in every worker; a megabyte of Rego is far past any real policy.
MAX_POLICY_CHARS = 256 * 1024
# Instance ids (UEIDs) are 33 bytes for PSA/CCA and Veritee; allow other UEID forms up to this.
MAX_INSTANCE_ID_BYTES = 64
# A CCA realm has four extensible measurements (REM0..REM3).
MAX_REMS = 4


@dataclass(frozen=True)
class CaAnchor:
    """A manufacturer CA (Veritee evidence): devices whose certificate it issued are trusted,
    as far as ``max_lifecycle``: the operator's word when provisioning it, which caps the CA's
    own lifecycle mark (whoever holds the CA's key can re-mint it with any mark)."""

    pem: str
    id: str  # SHA-256 of the DER certificate, hex
    subject: str
    max_lifecycle: str = DEFAULT_CEILING
    key_id: str = ""  # SHA-256 of its SubjectPublicKeyInfo, hex: what revocations name


@dataclass(frozen=True)
class KeyAnchor:
    """A PSA/CCA attestation public key, endorsed for one device (its instance id)."""

    scheme: Scheme
    instance_id: bytes
    pem: str

    @property
    def id(self) -> str:
        return hashlib.sha256(f"{self.scheme}:{self.instance_id.hex()}".encode()).hexdigest()


@dataclass(frozen=True)
class TpmCaAnchor:
    """A TPM manufacturer CA: TPMs whose EK certificate it issued are genuine TPMs."""

    pem: str
    id: str  # SHA-256 of the DER certificate, hex
    subject: str


@dataclass(frozen=True)
class TpmRegistration:
    """An AK a registrar activated against an EK (``veritee evidence tpm-register``): quotes of
    that EK's device are believed from this AK only."""

    ek_fingerprint: bytes  # SHA-256 of the EK certificate (DER)
    ak_public: bytes  # the AK's TPM2B_PUBLIC

    @property
    def id(self) -> str:
        return hashlib.sha256(b"tpm-ak:" + self.ek_fingerprint).hexdigest()


Anchor = CaAnchor | KeyAnchor | TpmCaAnchor | TpmRegistration


@dataclass(frozen=True)
class Revocation:
    """A revoked device (its UEID / instance id) or CA (its key: SHA-256 of its
    SubjectPublicKeyInfo, so every certificate of that key is revoked)."""

    kind: RevocationKind
    value: bytes
    reason: str = ""

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.value.hex()}"


@dataclass(frozen=True)
class ReferenceValue:
    """An endorsed measurement: a boot component, a Wasm module, or a CCA realm (its RIM)."""

    scheme: Scheme
    kind: RefKind
    name: str
    measurement: bytes
    version: str = ""
    # A realm's endorsed extensible measurements (REM0..REM3) and personalization value: when
    # given, a realm of this RIM must also show these (empty: the RIM alone is endorsed).
    rems: tuple[bytes, ...] = ()
    personalization: bytes = b""
    # PSA/CCA: the implementation id (the CoMID's class id) these values are endorsed for;
    # when given, only a device of that implementation matches (empty: any).
    implementation: bytes = b""

    @property
    def id(self) -> str:
        key = f"{self.scheme}:{self.kind}:{self.name}:{self.measurement.hex()}"
        if self.rems or self.personalization:
            key += f":{','.join(r.hex() for r in self.rems)}:{self.personalization.hex()}"
        if self.implementation:
            key += f":impl={self.implementation.hex()}"
        return hashlib.sha256(key.encode()).hexdigest()[:32]

    def extra(self) -> dict[str, Any]:
        """The fields beyond name, version and measurement, as JSON values (empty if none)."""
        extra: dict[str, Any] = {}
        if self.implementation:
            extra["implementation-id"] = self.implementation.hex()
        if self.rems:
            extra["rems"] = [r.hex() for r in self.rems]
        if self.personalization:
            extra["personalization-value"] = self.personalization.hex()
        return extra

    def matches_implementation(self, implementation_id: bytes) -> bool:
        return not self.implementation or self.implementation == implementation_id

    def matches_realm(self, rems: tuple[bytes, ...], personalization: bytes) -> bool:
        """Whether a realm's REMs and personalization value are the endorsed ones (each
        compared only where endorsed)."""
        if self.rems and self.rems != tuple(rems):
            return False
        return not self.personalization or self.personalization == personalization

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "scheme": self.scheme,
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "measurement": self.measurement.hex(),
            **self.extra(),
        }


@dataclass(frozen=True)
class Endorsements:
    """One consistent snapshot of everything provisioned, indexed for appraisal.

    ``refs`` maps (scheme, kind) to {measurement: [reference values]}; boot components are
    also indexed by name in ``boot`` so appraisal can tell "altered" from "unknown".
    """

    cas: tuple[x509.Certificate, ...] = ()
    # The operator's ceiling per CA key (certs.key_id): the lowest over anchors of that key.
    ceilings: Mapping[bytes, str] = field(default_factory=lambda: types.MappingProxyType({}))
    keys: Mapping[tuple[Scheme, bytes], ec.EllipticCurvePublicKey] = field(
        default_factory=lambda: types.MappingProxyType({})
    )
    revoked_devices: frozenset[bytes] = frozenset()
    revoked_cas: frozenset[bytes] = frozenset()
    references: tuple[ReferenceValue, ...] = ()
    # TPM-backed devices: the TPM manufacturer CAs of their EK certificates, and the AKs a
    # registrar activated (EK fingerprint -> veritee.evidence.tpm.Registration).
    tpm_cas: tuple[x509.Certificate, ...] = ()
    tpm_registrations: Mapping[bytes, Any] = field(
        default_factory=lambda: types.MappingProxyType({})
    )
    # Indexes built from ``references``: (scheme, kind) -> measurement -> entries, and
    # (scheme, boot component name) -> endorsed measurements.
    _by_measurement: Mapping[tuple[str, str], Mapping[bytes, tuple[ReferenceValue, ...]]] = field(
        init=False, repr=False, compare=False
    )
    _boot: Mapping[tuple[str, str], frozenset[bytes]] = field(init=False, repr=False, compare=False)
    # Device → vTEE links verified under these CAs (one cache per snapshot: see LinkCache).
    links: LinkCache = field(default_factory=LinkCache, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_measurement: dict[tuple[str, str], dict[bytes, list[ReferenceValue]]] = {}
        boot: dict[tuple[str, str], set[bytes]] = {}
        for rv in self.references:
            by_measurement.setdefault((rv.scheme, rv.kind), {}).setdefault(
                rv.measurement, []
            ).append(rv)
            if rv.kind == "boot":
                boot.setdefault((rv.scheme, rv.name), set()).add(rv.measurement)
        frozen = {k: {m: tuple(v) for m, v in d.items()} for k, d in by_measurement.items()}
        object.__setattr__(self, "_by_measurement", frozen)
        object.__setattr__(self, "_boot", {k: frozenset(v) for k, v in boot.items()})
        object.__setattr__(self, "keys", types.MappingProxyType(dict(self.keys)))
        object.__setattr__(self, "ceilings", types.MappingProxyType(dict(self.ceilings)))

    @functools.cached_property
    def anchors(self) -> TrustAnchors:
        """The CAs as appraisal's trust anchors, with the operator's ceilings (revocations are
        checked by the caller, each with its own error)."""
        return TrustAnchors(
            self.cas,
            ceilings=self.ceilings,
            tpm_cas=self.tpm_cas,
            tpm_registrations=self.tpm_registrations,
        )

    @classmethod
    def build(
        cls,
        cas: Iterable[CaAnchor] = (),
        keys: Iterable[KeyAnchor] = (),
        revocations: Iterable[Revocation] = (),
        references: Iterable[ReferenceValue] = (),
        tpm: Iterable[TpmCaAnchor | TpmRegistration] = (),
    ) -> Endorsements:
        anchors = list(cas)
        tpm_cas, tpm_registrations = _tpm_endorsements(tpm)
        certs = tuple(x509.load_pem_x509_certificate(ca.pem.encode()) for ca in anchors)
        ceilings: dict[bytes, str] = {}
        for ca, cert in zip(anchors, certs, strict=True):
            kid = x509_profile.key_id(cert)
            bound = ca.max_lifecycle
            ceilings[kid] = x509_profile.lowest(ceilings.get(kid, bound), bound)
        key_map: dict[tuple[Scheme, bytes], ec.EllipticCurvePublicKey] = {}
        for k in keys:
            key_map[(k.scheme, k.instance_id)] = _load_ec_public_pem(k.pem)
        revs = list(revocations)
        revoked_cas = {r.value for r in revs if r.kind == "ca"}
        # A CA revocation recorded before CAs were revoked by key named the SHA-256 of one
        # certificate's DER: it revokes that certificate's key, so it is not lost.
        for ca, cert in zip(anchors, certs, strict=True):
            if bytes.fromhex(ca.id) in revoked_cas:
                revoked_cas.add(x509_profile.key_id(cert))
        return cls(
            cas=certs,
            ceilings=ceilings,
            keys=key_map,
            revoked_devices=frozenset(r.value for r in revs if r.kind == "device"),
            revoked_cas=frozenset(revoked_cas),
            references=tuple(references),
            tpm_cas=tpm_cas,
            tpm_registrations=types.MappingProxyType(tpm_registrations),
        )

    def endorsed(self, scheme: Scheme, kind: RefKind, measurement: bytes) -> ReferenceValue | None:
        """The reference value endorsing ``measurement`` (the first provisioned), or None."""
        found = self._by_measurement.get((scheme, kind), {}).get(measurement)
        return found[0] if found else None

    def candidates(
        self, scheme: Scheme, kind: RefKind, measurement: bytes
    ) -> tuple[ReferenceValue, ...]:
        """Every reference value endorsing ``measurement``, in provisioning order."""
        return self._by_measurement.get((scheme, kind), {}).get(measurement, ())

    def boot_names(self, scheme: Scheme) -> frozenset[str]:
        """Names of the boot components that have reference values for ``scheme``."""
        return frozenset(name for s, name in self._boot if s == scheme)

    def boot_values(self, scheme: Scheme, name: str) -> frozenset[bytes]:
        return self._boot.get((scheme, name), frozenset())


# -- parsing provisioning input ----------------------------------------------------------------


def ca_anchors_from_pem(pem: str, *, max_lifecycle: str = DEFAULT_CEILING) -> list[CaAnchor]:
    """Every certificate in a PEM bundle, as trust anchors the operator lets endorse at most
    ``max_lifecycle`` (emulated unless said otherwise). Each must fit the CA profile."""
    if max_lifecycle not in LIFECYCLES:
        raise ProvisioningError(f"a CA's 'max-lifecycle' must be one of {', '.join(LIFECYCLES)}")
    if not isinstance(pem, str) or "-----BEGIN CERTIFICATE-----" not in pem:
        raise ProvisioningError("a CA trust anchor must be PEM text holding a certificate")
    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
    except CERT_ERRORS:
        raise ProvisioningError("the CA PEM does not parse as X.509 certificates") from None
    if len(certs) > MAX_CAS_PER_ENTRY:
        raise ProvisioningError(f"a PEM bundle may hold at most {MAX_CAS_PER_ENTRY} CAs")
    out = []
    for cert in certs:
        try:
            x509_profile.check_anchor(cert)
            der = cert.public_bytes(serialization.Encoding.DER)
            subject = cert.subject.rfc4514_string()
            kid = x509_profile.key_id(cert).hex()
        except UntrustedDevice as exc:
            raise ProvisioningError(str(exc)) from None
        except CERT_ERRORS:
            raise ProvisioningError("the CA PEM holds a certificate that does not parse") from None
        out.append(
            CaAnchor(
                pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
                id=hashlib.sha256(der).hexdigest(),
                subject=subject,
                max_lifecycle=max_lifecycle,
                key_id=kid,
            )
        )
    return out


def ca_id(pem_or_hex: str) -> bytes:
    """The SHA-256 of a CA's DER certificate (a trust anchor's id), from its PEM or from the
    hex digest itself."""
    if "-----BEGIN" in pem_or_hex:
        return bytes.fromhex(ca_anchors_from_pem(pem_or_hex)[0].id)
    return _hex(pem_or_hex, "CA id", sizes=frozenset({32}))


def ca_key_of(pem_or_hex: str) -> bytes:
    """What a CA revocation names: the CA's key id (SHA-256 of its SubjectPublicKeyInfo),
    from a certificate of that key (PEM), or a hex digest: a key id, or a trust anchor's id
    (see :func:`resolve_revocation`, which maps it to its key)."""
    if "-----BEGIN" in pem_or_hex:
        try:
            certs = x509.load_pem_x509_certificates(pem_or_hex.encode())
            return x509_profile.key_id(certs[0])
        except CERT_ERRORS:
            raise ProvisioningError("the CA PEM does not parse as an X.509 certificate") from None
    return _hex(pem_or_hex, "CA id", sizes=frozenset({32}))


def resolve_revocation(revocation: Revocation, cas: Iterable[CaAnchor]) -> Revocation:
    """A CA revocation must name the key of a trusted CA (by a certificate of that key, the
    key id, or an anchor's id from 'provision show'): refuse one no trust anchor has, so the
    operator learns that the file they revoke is not the CA they trust, instead of a silent
    no-op (the owner of an emulated device can re-mint their CA under another digest)."""
    if revocation.kind != "ca":
        return revocation
    for ca in cas:
        kid = bytes.fromhex(ca.key_id) if ca.key_id else _key_id_of(ca)
        if revocation.value in (kid, bytes.fromhex(ca.id)):
            return Revocation("ca", kid, revocation.reason)
    raise ProvisioningError(
        f"no trust anchor has the CA key {revocation.value.hex()[:16]}…: a CA is revoked by "
        "its key, and this is not the key of a trusted CA (see 'provision show')"
    )


def _key_id_of(ca: CaAnchor) -> bytes:
    return x509_profile.key_id(x509.load_pem_x509_certificate(ca.pem.encode()))


def key_anchor(value: Mapping[str, Any]) -> KeyAnchor:
    """``{"scheme": "psa"|"cca", "instance-id": HEX, "key": PEM | JWK}``.

    A PSA instance id may be left out: it is then derived from the key as TF-M does
    (0x01 || SHA-256 of the uncompressed point). CCA instance ids are not derivable.
    """
    scheme = value.get("scheme")
    if scheme not in ("psa", "cca"):
        raise ProvisioningError("a key trust anchor needs 'scheme': 'psa' or 'cca'")
    key = _public_key(value.get("key"))
    raw_id = value.get("instance-id")
    if raw_id is None:
        if scheme != "psa":
            raise ProvisioningError("a CCA key trust anchor needs its 'instance-id' (hex)")
        from veritee.evidence.psa import instance_id_of

        instance_id = instance_id_of(key)
    else:
        instance_id = _hex(raw_id, "instance-id", max_size=MAX_INSTANCE_ID_BYTES)
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return KeyAnchor(scheme=cast(Scheme, scheme), instance_id=instance_id, pem=pem)


def trust_anchors(value: Any) -> list[Anchor]:
    """One trust-anchor entry: ``{"ca": PEM}``, a key anchor (see :func:`key_anchor`), a TPM
    manufacturer CA ``{"tpm-ca": PEM}`` or a registered AK ``{"tpm-registration": {"ek-sha256":
    HEX, "ak": HEX}}`` (one entry of ``veritee evidence tpm-register``'s file)."""
    if not isinstance(value, Mapping):
        raise ProvisioningError("a trust anchor entry must be an object")
    if "tpm-ca" in value or "tpm-registration" in value:
        return _tpm_anchors(value)
    if "ca" in value:
        unknown = sorted(str(k) for k in value if k not in ("ca", "max-lifecycle"))
        if unknown:
            raise ProvisioningError(f"a CA trust anchor has unknown field(s) {unknown[:5]}")
        return list(
            ca_anchors_from_pem(
                value["ca"], max_lifecycle=value.get("max-lifecycle", DEFAULT_CEILING)
            )
        )
    if "key" in value:
        return [key_anchor(value)]
    raise ProvisioningError("a trust anchor entry needs 'ca' (PEM) or 'key' (PEM or JWK)")


def _tpm_anchors(value: Mapping[str, Any]) -> list[Anchor]:
    if len(value) != 1:
        raise ProvisioningError(
            "a TPM trust anchor entry holds 'tpm-ca' or 'tpm-registration' alone"
        )
    if "tpm-registration" in value:
        from veritee.evidence.errors import MalformedToken
        from veritee.evidence.tpm import registrations_from_json

        try:
            found = registrations_from_json({"tpm-registrations": [value["tpm-registration"]]})
        except MalformedToken as exc:
            raise ProvisioningError(f"tpm-registration: {exc}") from None
        return [TpmRegistration(r.ek_fingerprint, r.ak_public) for r in found.values()]
    pem = value["tpm-ca"]
    if not isinstance(pem, str) or "-----BEGIN CERTIFICATE-----" not in pem:
        raise ProvisioningError("a TPM CA trust anchor must be PEM text holding a certificate")
    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
        if len(certs) > MAX_CAS_PER_ENTRY:
            raise ProvisioningError(f"a PEM bundle may hold at most {MAX_CAS_PER_ENTRY} CAs")
        return [
            TpmCaAnchor(
                pem=c.public_bytes(serialization.Encoding.PEM).decode(),
                id=hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).hexdigest(),
                subject=c.subject.rfc4514_string(),
            )
            for c in certs
        ]
    except CERT_ERRORS:
        raise ProvisioningError("the TPM CA PEM does not parse as X.509 certificates") from None


def _tpm_endorsements(
    anchors: Iterable[TpmCaAnchor | TpmRegistration],
) -> tuple[tuple[x509.Certificate, ...], dict[bytes, Any]]:
    """The TPM CAs and registrations as appraisal takes them (evidence/tpm.py, imported only
    when some are provisioned: a verifier without tpm2-pytss serves everything else)."""
    cas, registrations = [], {}
    for a in anchors:
        if isinstance(a, TpmCaAnchor):
            cas.append(x509.load_pem_x509_certificate(a.pem.encode()))
        else:
            from veritee.evidence.tpm import Registration

            registrations[a.ek_fingerprint] = Registration(a.ek_fingerprint, a.ak_public)
    return tuple(cas), registrations


def revocation(value: Any) -> Revocation:
    """``{"device": HEX}`` or ``{"ca": PEM | HEX-SHA256}``, with an optional ``reason``. A CA
    is named by its key (see :func:`ca_key_of`, :func:`resolve_revocation`)."""
    if not isinstance(value, Mapping):
        raise ProvisioningError("a revocation entry must be an object")
    reason = _text(value.get("reason", ""), "reason", allow_empty=True)
    if "device" in value:
        ueid = _hex(value["device"], "device", max_size=MAX_INSTANCE_ID_BYTES)
        return Revocation("device", ueid, reason)
    if "ca" in value:
        if not isinstance(value["ca"], str):
            raise ProvisioningError("revocation 'ca' must be a PEM certificate or a hex SHA-256")
        return Revocation("ca", ca_key_of(value["ca"]), reason)
    raise ProvisioningError("a revocation entry needs 'device' (UEID hex) or 'ca'")


def reference_values(value: Any, *, scheme: str | None = None) -> list[ReferenceValue]:
    """One entry, a list of entries, or a manufacturer file (``{"boot": [...], "modules": [...]}``).

    An entry is ``{"scheme", "kind", "name", "version", "measurement"}``; ``scheme`` defaults
    to ``veritee``. The manufacturer's file names boot entries' ``component``.
    """
    if isinstance(value, list):
        return [rv for item in value for rv in reference_values(item, scheme=scheme)]
    if not isinstance(value, Mapping):
        raise ProvisioningError("reference values must be an object or a list of objects")
    if "kind" not in value and ("boot" in value or "modules" in value or "realms" in value):
        out: list[ReferenceValue] = []
        for key, section_kind in (("boot", "boot"), ("modules", "module"), ("realms", "realm")):
            entries = value.get(key, [])
            if not isinstance(entries, list):
                raise ProvisioningError(f"reference values '{key}' must be a list")
            for entry in entries:
                if not isinstance(entry, Mapping):
                    raise ProvisioningError(f"reference values '{key}' entries must be objects")
                named = dict(entry)
                if "component" in named and "name" not in named:
                    named["name"] = named.pop("component")
                named.setdefault("kind", section_kind)
                named.setdefault("scheme", value.get("scheme", scheme or "veritee"))
                out.extend(reference_values(named))
        return out
    s = value.get("scheme", scheme or "veritee")
    if s not in SCHEMES:
        raise ProvisioningError(f"reference value 'scheme' must be one of {', '.join(SCHEMES)}")
    kind: Any = value.get("kind")
    if kind not in REF_KINDS:
        raise ProvisioningError(f"reference value 'kind' must be one of {', '.join(REF_KINDS)}")
    version = value.get("version", "")
    rems: tuple[bytes, ...] = ()
    personalization = b""
    if "rems" in value or "personalization-value" in value:
        if kind != "realm":
            raise ProvisioningError("'rems' and 'personalization-value' are for realm values")
        raw_rems = value.get("rems", [])
        if not isinstance(raw_rems, list) or len(raw_rems) > MAX_REMS:
            raise ProvisioningError(f"'rems' must be a list of at most {MAX_REMS} hex digests")
        rems = tuple(_hex(r, "rems", sizes=MEASUREMENT_SIZES) for r in raw_rems)
        if "personalization-value" in value:
            personalization = _hex(
                value["personalization-value"], "personalization-value", sizes=frozenset({64})
            )
    implementation = b""
    if "implementation-id" in value:
        if s == "veritee":
            raise ProvisioningError("'implementation-id' is for psa and cca reference values")
        implementation = _hex(value["implementation-id"], "implementation-id", max_size=64)
    return [
        ReferenceValue(
            scheme=cast(Scheme, s),
            kind=cast(RefKind, kind),
            name=_text(value.get("name", ""), "name", allow_empty=kind != "boot"),
            measurement=_hex(value.get("measurement"), "measurement", sizes=MEASUREMENT_SIZES),
            version=_text(
                str(version) if isinstance(version, int | float) else version,
                "version",
                allow_empty=True,
            ),
            rems=rems,
            personalization=personalization,
            implementation=implementation,
        )
    ]


def policy_source(value: Any) -> tuple[str, str]:
    """``{"name": NAME, "rego": TEXT}`` -> (name, text); compiled by :mod:`policy`."""
    if not isinstance(value, Mapping):
        raise ProvisioningError("a policy entry must be an object with 'name' and 'rego'")
    name = policy_name(value.get("name"))
    rego = value.get("rego")
    if not isinstance(rego, str) or not rego.strip():
        raise ProvisioningError(f"policy {name!r} has no 'rego' text")
    if len(rego) > MAX_POLICY_CHARS:
        raise ProvisioningError(f"policy {name!r} is over {MAX_POLICY_CHARS} characters")
    return name, rego


def policy_name(value: Any) -> str:
    name = _text(value, "policy name")
    if not all(c.isalnum() or c in "-_./" for c in name):
        raise ProvisioningError("a policy name may hold letters, digits and - _ . / only")
    return name


@dataclass(frozen=True)
class Deployment:
    """A whole provisioning document, applied in one transaction (``provision --file``)."""

    anchors: tuple[Anchor, ...] = ()
    revocations: tuple[Revocation, ...] = ()
    references: tuple[ReferenceValue, ...] = ()
    policies: tuple[tuple[str, str], ...] = ()
    active_policy: str | None = None

    @classmethod
    def parse(cls, doc: Any) -> Deployment:
        """``{"trust-anchors": [...], "revocations": [...], "reference-values": [...],
        "policies": [{"name", "rego", "activate"?}], "active-policy": NAME}``."""
        if not isinstance(doc, Mapping):
            raise ProvisioningError("a deployment document must be an object")
        known = {"trust-anchors", "revocations", "reference-values", "policies", "active-policy"}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ProvisioningError(f"deployment has unknown sections: {', '.join(unknown[:5])}")
        anchors = [a for entry in _list(doc, "trust-anchors") for a in trust_anchors(entry)]
        revs = [revocation(entry) for entry in _list(doc, "revocations")]
        refs = [rv for entry in _list(doc, "reference-values") for rv in reference_values(entry)]
        policies = []
        active = doc.get("active-policy")
        for entry in _list(doc, "policies"):
            policies.append(policy_source(entry))
            if isinstance(entry, Mapping) and entry.get("activate"):
                active = entry["name"]
        return cls(
            anchors=tuple(anchors),
            revocations=tuple(revs),
            references=tuple(refs),
            policies=tuple(policies),
            active_policy=None if active is None else policy_name(active),
        )


def _list(doc: Mapping[str, Any], key: str) -> list[Any]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise ProvisioningError(f"deployment section '{key}' must be a list")
    return value


def _public_key(value: Any) -> ec.EllipticCurvePublicKey:
    if isinstance(value, Mapping) or (isinstance(value, str) and value.lstrip().startswith("{")):
        from veritee.verifier.jwk import ec_public_key_from_jwk

        return ec_public_key_from_jwk(value)
    if not isinstance(value, str):
        raise ProvisioningError("'key' must be a PEM public key or a JWK")
    return _load_ec_public_pem(value)


def ec_public_key_pem(pem: str) -> ec.EllipticCurvePublicKey:
    """An EC P-256/P-384 public key from PEM (a CoRIM signer's, an attester's)."""
    return _load_ec_public_pem(pem)


def _load_ec_public_pem(pem: str) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        raise ProvisioningError("'key' is not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
        key.curve, ec.SECP256R1 | ec.SECP384R1
    ):
        raise ProvisioningError("'key' must be an EC P-256 or P-384 public key")
    return key


def _hex(
    value: Any,
    what: str,
    *,
    sizes: frozenset[int] | None = None,
    max_size: int | None = None,
) -> bytes:
    if not isinstance(value, str):
        raise ProvisioningError(f"'{what}' must be a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ProvisioningError(f"'{what}' is not hex") from None
    if sizes is not None and len(raw) not in sizes:
        allowed = ", ".join(str(s) for s in sorted(sizes))
        raise ProvisioningError(f"'{what}' is {len(raw)} bytes; {allowed} accepted")
    if not raw or (max_size is not None and len(raw) > max_size):
        raise ProvisioningError(f"'{what}' must be 1 to {max_size} bytes")
    return raw


def _text(value: Any, what: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ProvisioningError(f"'{what}' must be a string")
    if (not value and not allow_empty) or len(value) > MAX_NAME_CHARS:
        raise ProvisioningError(f"'{what}' must be 1 to {MAX_NAME_CHARS} characters")
    return value
