"""Arm CCA attestation tokens: the platform token, the realm token, and the binding between them.

A CCA token is a CBOR-tagged map of two COSE_Sign1 messages:

* key 44234, the **platform token**, signed by the CCA platform attestation key (CPAK), which the
  verifier knows from an endorsement (it is passed in);
* key 44241, the **realm token**, signed by the realm attestation key (RAK) whose public part the
  realm token itself carries (claim 44237).

The RAK is self-asserted, so the realm signature alone proves nothing: what ties the realm to
the platform is the **binding**, platform challenge (10) == H(realm claim 44237 bytes) with H
named by realm claim 44240. Without it, anyone could mint a realm token under their own key.

Two collection forms exist: tag 399 (EAT collection, bare bstr entries, the older form) and
tag 907 (CMW collection, entries ``[263, bstr]``). The checks and sizes follow Veraison's
ccatoken and the RMM specification.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

from veritee.evidence import cose
from veritee.evidence.errors import BadSignature, BindingMismatch, MalformedToken
from veritee.evidence.psa import (
    HASH_SIZES,
    IMPLEMENTATION_ID_BYTES,
    ClaimReader,
    Lifecycle,
    SoftwareComponent,
)

__all__ = [
    "ACCEPTED_ALGORITHMS",
    "CCA_LIFECYCLE_STATES",
    "PLATFORM_PROFILES",
    "REALM_PROFILES",
    "CcaClaims",
    "PlatformClaims",
    "RealmClaims",
    "parse",
    "realm_key",
    "verify",
]

PROFILE_PLATFORM_LEGACY = "http://arm.com/CCA-SSD/1.0.0"
PROFILE_PLATFORM = "tag:arm.com,2023:cca_platform#1.0.0"
PLATFORM_PROFILES = frozenset({PROFILE_PLATFORM_LEGACY, PROFILE_PLATFORM})
PROFILE_REALM_1 = "tag:arm.com,2023:realm#1.0.0"
PROFILE_REALM_2 = "tag:arm.com,2024:realm#2.0.0"
# A realm token without a profile is the legacy (pre-1.0) form: its RAK is a raw EC point.
REALM_PROFILES = frozenset({PROFILE_REALM_1, PROFILE_REALM_2})

TAG_EAT_COLLECTION = 399
TAG_CMW_COLLECTION = 907
# The CoAP content-format ccatoken and TF-RMM put in each CMW record of a tag-907 collection.
# It is the only one defined for CCA tokens; an unknown one is refused, not guessed at.
CMW_CONTENT_FORMAT = 263
PLATFORM_TOKEN = 44234
REALM_TOKEN = 44241

# Platforms sign with P-256 or P-384; the RAK is P-384 (RMM) but ES256 costs nothing to allow.
ACCEPTED_ALGORITHMS = frozenset({cose.ES256, cose.ES384})

# Platform claim keys.
CHALLENGE = 10
INSTANCE_ID = 256
PROFILE = 265
SECURITY_LIFECYCLE = 2395
IMPLEMENTATION_ID = 2396
SW_COMPONENTS = 2399
VERIFICATION_SERVICE = 2400
PLATFORM_CONFIG = 2401
PLATFORM_HASH_ALGO = 2402
# Realm claim keys.
REALM_PERSONALIZATION = 44235
REALM_HASH_ALGO = 44236
REALM_PUBLIC_KEY = 44237
REALM_INITIAL_MEASUREMENT = 44238
REALM_EXTENSIBLE_MEASUREMENTS = 44239
REALM_PUBLIC_KEY_HASH_ALGO = 44240
REALM_MEC_POLICY = 44243

# The realm challenge and personalization value are fixed 64-byte fields in the RMM ABI.
REALM_CHALLENGE_BYTES = 64
REALM_PERSONALIZATION_BYTES = 64
# RMM has exactly four REMs; a different count is not an RMM token.
REALM_EXTENSIBLE_MEASUREMENTS_COUNT = 4
# Legacy RAK: an uncompressed P-384 point (0x04 || X || Y).
RAW_RAK_BYTES = 97
_UNCOMPRESSED_POINT = 0x04
_COSE_KEY_KTY, _COSE_KEY_CRV = 1, -1
# MEC (memory encryption context) policy, realm 2.0: the only two values RMM defines.
MEC_SHARED = 0
MEC_PRIVATE = 1
# IANA "Named Information Hash Algorithm" textual names, as ccatoken accepts for hash-algo ids.
HASH_ALGORITHM_NAMES = frozenset(
    {"md2", "md5", "sha-1", "sha-224", "sha-256", "sha-384", "sha-512", "shake128", "shake256"}
)
# The binding hash: the digest must fit the platform challenge (32, 48 or 64 bytes), and only
# collision-resistant functions may bind a key.
# (IANA name -> hashlib name)
BINDING_HASHES: Mapping[str, str] = {"sha-256": "sha256", "sha-384": "sha384", "sha-512": "sha512"}

CCA_LIFECYCLE_STATES: Mapping[int, str] = {
    0x0000: "unknown",
    0x1000: "assembly-and-test",
    0x2000: "cca-platform-rot-provisioning",
    0x3000: "secured",
    0x4000: "non-cca-platform-rot-debug",
    0x5000: "recoverable-cca-platform-rot-debug",
    0x6000: "decommissioned",
}

_PLATFORM = "CCA platform token"
_REALM = "CCA realm token"


@dataclass(frozen=True)
class PlatformClaims:
    """The platform token's claims: the CCA platform, its boot chain and its lifecycle."""

    profile: str
    algorithm: int  # COSE alg: ES256 (-7) or ES384 (-35)
    challenge: bytes  # == H(realm public key) when the binding holds
    implementation_id: bytes
    instance_id: bytes
    config: bytes
    lifecycle: Lifecycle
    hash_algo: str
    software_components: tuple[SoftwareComponent, ...]
    verification_service: str | None = None


@dataclass(frozen=True)
class RealmClaims:
    """The realm token's claims: the realm's measurements, challenge and attestation key.

    ``public_key`` is the claim's bytes as carried (a raw P-384 point for the legacy form, a
    CBOR COSE_Key otherwise): those bytes are what the binding hashes.
    """

    profile: str | None  # None: legacy realm token without a profile claim
    algorithm: int
    challenge: bytes
    personalization_value: bytes
    initial_measurement: bytes
    extensible_measurements: tuple[bytes, ...]
    hash_algo: str
    public_key_hash_algo: str
    public_key: bytes
    instance_id: bytes | None = None
    mec_policy: int | None = None


@dataclass(frozen=True)
class CcaClaims:
    """A CCA token whose two parts were validated and found bound to each other."""

    collection_tag: int  # 399 (EAT collection) or 907 (CMW collection)
    platform: PlatformClaims
    realm: RealmClaims


@dataclass(frozen=True)
class _Token:
    tag: int
    platform: cose.Sign1
    realm: cose.Sign1


def parse(token: bytes) -> CcaClaims:
    """Decode and validate a CCA token, and check the platform-realm binding, **without
    checking either signature**.

    Raises :class:`MalformedToken`, :class:`BindingMismatch` when the platform challenge is
    not the hash of the realm public key, or :class:`BadSignature` for a COSE algorithm that
    is not accepted (refused even unverified).
    """
    t = _open(token)
    realm_reader = ClaimReader(t.realm.claims(), _REALM)
    _realm_key(realm_reader)  # the RAK must at least be a key, signed or not
    return _claims(t, realm_reader)


def verify(token: bytes, platform_key: ec.EllipticCurvePublicKey) -> CcaClaims:
    """Verify a CCA token: platform signature under ``platform_key`` (the CPAK), realm signature
    under the RAK the realm token carries, claims, then the binding, in that order.

    Raises :class:`MalformedToken`, :class:`BadSignature` (algorithm not accepted, or either
    signature does not verify), or :class:`BindingMismatch`.
    """
    t = _open(token)
    cose.verify(t.platform, platform_key, what=_PLATFORM)
    realm_reader = ClaimReader(t.realm.claims(), _REALM)
    cose.verify(t.realm, _realm_key(realm_reader), what=_REALM)
    return _claims(t, realm_reader)


def realm_key(realm: RealmClaims) -> ec.EllipticCurvePublicKey:
    """The realm attestation key (RAK) of validated realm claims, as a key object."""
    return _decode_rak(realm.public_key, realm.profile, f"{_REALM}: claim 'public key'")


def _open(token: bytes) -> _Token:
    value = cose.loads(token, what="CCA token")
    if not isinstance(value, cbor2.CBORTag) or value.tag not in (
        TAG_EAT_COLLECTION,
        TAG_CMW_COLLECTION,
    ):
        raise MalformedToken(
            f"CCA token is not a collection tagged {TAG_EAT_COLLECTION} or {TAG_CMW_COLLECTION}"
        )
    entries = value.value
    if not isinstance(entries, Mapping):
        raise MalformedToken("CCA token collection is not a map")
    platform = _entry(entries, PLATFORM_TOKEN, value.tag, _PLATFORM)
    realm = _entry(entries, REALM_TOKEN, value.tag, _REALM)
    return _Token(value.tag, platform, realm)


def _entry(entries: Mapping[Any, Any], key: int, tag: int, what: str) -> cose.Sign1:
    if key not in entries:
        raise MalformedToken(f"CCA token has no {what} (key {key})")
    entry = entries[key]
    if tag == TAG_CMW_COLLECTION:
        # A CMW record: [content-format, bstr].
        if not isinstance(entry, list | tuple) or len(entry) != 2:
            raise MalformedToken(f"{what} (key {key}) is not a [content-format, bstr] record")
        content_format, entry = entry
        if content_format != CMW_CONTENT_FORMAT or isinstance(content_format, bool):
            shown = content_format if isinstance(content_format, int) else "a non-integer"
            raise MalformedToken(
                f"{what} (key {key}) has content-format {shown}, not {CMW_CONTENT_FORMAT}"
            )
    if not isinstance(entry, bytes):
        raise MalformedToken(f"{what} (key {key}) is not a byte string")
    msg = cose.decode(entry, what=what)
    if msg.mac:
        raise MalformedToken(f"{what} is a COSE_Mac0; CCA tokens are COSE_Sign1")
    if msg.alg not in ACCEPTED_ALGORITHMS:
        raise BadSignature(f"{what}: COSE algorithm {msg.alg} is not accepted (ES256 or ES384)")
    return msg


def _realm_key(r: ClaimReader) -> ec.EllipticCurvePublicKey:
    """The RAK, decoded from realm claim 44237 as the realm profile says it is encoded."""
    raw = r.bytes_(REALM_PUBLIC_KEY, "public key")
    return _decode_rak(raw, _realm_profile(r), r.where(REALM_PUBLIC_KEY, "public key"))


def _decode_rak(raw: bytes, profile: str | None, where: str) -> ec.EllipticCurvePublicKey:
    if profile is None:
        if len(raw) != RAW_RAK_BYTES or raw[0] != _UNCOMPRESSED_POINT:
            raise MalformedToken(f"{where} is not a {RAW_RAK_BYTES}-byte uncompressed P-384 point")
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), raw)
        except ValueError:
            raise MalformedToken(f"{where} is not a point on P-384") from None
    cose_key = cose.loads(raw, what=where)
    # cose.cose_to_ec_key looks crv up in a dict: an array there would raise TypeError.
    if not isinstance(cose_key, dict) or not all(
        isinstance(cose_key.get(label), int) for label in (_COSE_KEY_KTY, _COSE_KEY_CRV)
    ):
        raise MalformedToken(f"{where} is not a COSE_Key with integer kty and crv")
    return cose.cose_to_ec_key(cose_key)


def _realm_profile(r: ClaimReader) -> str | None:
    if not r.has(PROFILE):
        return None
    profile = r.text(PROFILE, "profile")
    if profile not in REALM_PROFILES:
        known = " or ".join(sorted(REALM_PROFILES))
        where = r.where(PROFILE, "profile")
        raise MalformedToken(f"{where} is {profile!r}, not {known} (nor absent)")
    return profile


def _hash_algo(r: ClaimReader, key: int, name: str) -> str:
    value = r.text(key, name)
    if value not in HASH_ALGORITHM_NAMES:
        raise MalformedToken(f"{r.where(key, name)} is {value!r}, not an IANA hash name")
    return value


def _claims(t: _Token, realm_reader: ClaimReader) -> CcaClaims:
    platform = _platform_claims(ClaimReader(t.platform.claims(), _PLATFORM), t.platform.alg)
    realm = _realm_claims(realm_reader, t.realm.alg)
    _check_binding(platform, realm)
    return CcaClaims(collection_tag=t.tag, platform=platform, realm=realm)


def _platform_claims(r: ClaimReader, alg: int) -> PlatformClaims:
    profile = r.text(PROFILE, "profile")
    if profile not in PLATFORM_PROFILES:
        known = " or ".join(sorted(PLATFORM_PROFILES))
        raise MalformedToken(f"{r.where(PROFILE, 'profile')} is {profile!r}, not {known}")
    return PlatformClaims(
        profile=profile,
        algorithm=alg,
        challenge=r.bytes_(CHALLENGE, "challenge", sizes=HASH_SIZES),
        implementation_id=r.bytes_(
            IMPLEMENTATION_ID, "implementation id", sizes=frozenset({IMPLEMENTATION_ID_BYTES})
        ),
        instance_id=r.instance_id(INSTANCE_ID),
        config=r.bytes_(PLATFORM_CONFIG, "config"),
        lifecycle=r.lifecycle(SECURITY_LIFECYCLE, CCA_LIFECYCLE_STATES),
        hash_algo=_hash_algo(r, PLATFORM_HASH_ALGO, "hash algorithm"),
        software_components=r.software_components(SW_COMPONENTS),
        verification_service=r.optional_text(VERIFICATION_SERVICE, "verification service"),
    )


def _realm_claims(r: ClaimReader, alg: int) -> RealmClaims:
    rems = r.value(REALM_EXTENSIBLE_MEASUREMENTS, "extensible measurements")
    where = r.where(REALM_EXTENSIBLE_MEASUREMENTS, "extensible measurements")
    if not isinstance(rems, list | tuple) or len(rems) != REALM_EXTENSIBLE_MEASUREMENTS_COUNT:
        raise MalformedToken(
            f"{where} is not an array of {REALM_EXTENSIBLE_MEASUREMENTS_COUNT} measurements"
        )
    for i, rem in enumerate(rems):
        if not isinstance(rem, bytes) or len(rem) not in HASH_SIZES:
            raise MalformedToken(f"{where}[{i}] is not a 32, 48 or 64-byte measurement")
    instance_id = r.instance_id(INSTANCE_ID) if r.has(INSTANCE_ID) else None
    return RealmClaims(
        profile=_realm_profile(r),
        algorithm=alg,
        challenge=r.bytes_(CHALLENGE, "challenge", sizes=frozenset({REALM_CHALLENGE_BYTES})),
        personalization_value=r.bytes_(
            REALM_PERSONALIZATION,
            "personalization value",
            sizes=frozenset({REALM_PERSONALIZATION_BYTES}),
        ),
        initial_measurement=r.bytes_(
            REALM_INITIAL_MEASUREMENT, "initial measurement", sizes=HASH_SIZES
        ),
        extensible_measurements=tuple(rems),
        hash_algo=_hash_algo(r, REALM_HASH_ALGO, "hash algorithm"),
        public_key_hash_algo=_binding_hash_name(r),
        public_key=r.bytes_(REALM_PUBLIC_KEY, "public key"),
        instance_id=instance_id,
        mec_policy=_mec_policy(r),
    )


def _binding_hash_name(r: ClaimReader) -> str:
    name = r.text(REALM_PUBLIC_KEY_HASH_ALGO, "public key hash algorithm")
    if name not in BINDING_HASHES:
        allowed = ", ".join(sorted(BINDING_HASHES))
        raise MalformedToken(
            f"{r.where(REALM_PUBLIC_KEY_HASH_ALGO, 'public key hash algorithm')} "
            f"is {name!r}; {allowed} are accepted"
        )
    return name


def _mec_policy(r: ClaimReader) -> int | None:
    return r.optional_integer(REALM_MEC_POLICY, "MEC policy", low=MEC_SHARED, high=MEC_PRIVATE)


def _check_binding(platform: PlatformClaims, realm: RealmClaims) -> None:
    expected = hashlib.new(BINDING_HASHES[realm.public_key_hash_algo], realm.public_key).digest()
    if not hmac.compare_digest(expected, platform.challenge):
        raise BindingMismatch(
            f"{_PLATFORM}'s challenge is not the {realm.public_key_hash_algo} of the realm "
            "public key: the realm token was not issued on this platform"
        )
