"""Arm PSA Initial Attestation Tokens: decode, validate and verify (bytes in, frozen claims out).

Two claim numberings are understood, told apart by the keys a token uses:

* PSA 2.0.0 (``http://arm.com/psa/2.0.0``, draft-tschofenig-rats-psa-token-08 and later) and
  RFC 9783 (``tag:psacertified.org,2023:psa#tfm``): EAT keys 10 (nonce), 256 (instance id),
  265 (profile) and Arm's 2394-2400.
* the legacy ``PSA_IOT_PROFILE_1`` (draft -07 and earlier): private keys -75000 to -75010.

A token is a COSE_Sign1 (ES256) or a COSE_Mac0 (HMAC 256/256). :func:`parse` decodes and
validates without checking the signature; :func:`verify` checks it first, then validates.
Every failed check raises one of :mod:`veritee.evidence.errors`, naming the claim at fault.
The size and format rules follow Veraison's psatoken, the reference verifier for these tokens.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from veritee.errors import UsageError
from veritee.evidence import cose
from veritee.evidence.errors import BadSignature, MalformedToken

__all__ = [
    "ACCEPTED_ALGORITHMS",
    "PROFILE_PSA_2_0_0",
    "PROFILE_PSA_IOT_1",
    "PROFILE_PSA_RFC9783",
    "PSA_LIFECYCLE_STATES",
    "ClaimReader",
    "Lifecycle",
    "PsaClaims",
    "SoftwareComponent",
    "instance_id_of",
    "parse",
    "verify",
]

PROFILE_PSA_2_0_0 = "http://arm.com/psa/2.0.0"
PROFILE_PSA_RFC9783 = "tag:psacertified.org,2023:psa#tfm"
PROFILE_PSA_IOT_1 = "PSA_IOT_PROFILE_1"

ClaimSet = Literal["psa-2.0.0", "psa-iot-1"]
CLAIM_SET_P2: ClaimSet = "psa-2.0.0"
CLAIM_SET_P1: ClaimSet = "psa-iot-1"
_PROFILES: dict[ClaimSet, frozenset[str]] = {
    CLAIM_SET_P2: frozenset({PROFILE_PSA_2_0_0, PROFILE_PSA_RFC9783}),
    CLAIM_SET_P1: frozenset({PROFILE_PSA_IOT_1}),
}

# What TF-M emits. Anything else is refused before any key is used, so an attacker cannot pick
# a weaker or confused algorithm (ES384 etc. would be added here when a vector needs it).
ACCEPTED_ALGORITHMS = frozenset({cose.ES256, cose.HMAC256})

# psa-hash-type: a SHA-256, SHA-384 or SHA-512 digest. Nonces, measurements and signer ids.
HASH_SIZES = frozenset({32, 48, 64})
# UEID of type RAND (0x01) followed by 32 bytes: the only instance-id form PSA defines.
INSTANCE_ID_BYTES = 33
UEID_TYPE_RAND = 0x01
IMPLEMENTATION_ID_BYTES = 32
# P2 lets the boot seed be 8 to 32 bytes; P1 fixed it at 32.
BOOT_SEED_P2_MIN_BYTES = 8
BOOT_SEED_P2_MAX_BYTES = 32
BOOT_SEED_P1_BYTES = 32
# psa-client-id is a signed 32-bit partition id; a bigger integer is not a client id.
CLIENT_ID_MIN = -(2**31)
CLIENT_ID_MAX = 2**31 - 1
# The security lifecycle is a 16-bit value: state in the high byte, sub-state in the low.
LIFECYCLE_MAX = 0xFFFF
LIFECYCLE_STATE_MASK = 0xFF00
LIFECYCLE_SUB_STATE_MASK = 0x00FF
# Each component is matched against reference values at appraisal: bound that work. Real
# platforms report a handful (TF-M: 2 to 4, the CCA example: 13).
MAX_SW_COMPONENTS = 128
# Strings are echoed into logs, reports and attestation results; longer is an attack.
MAX_TEXT_CHARS = 1024
# A MAC under a key shorter than its hash proves little (HMAC 256/256 wants 32 bytes).
MIN_HMAC_KEY_BYTES = 32

# EAN-13 (+5 in P2): the PSA Certified certificate number.
_CERT_REF_P2 = re.compile(r"[0-9]{13}-[0-9]{5}")
_CERT_REF_P1 = re.compile(r"[0-9]{13}(-[0-9]{5})?")

PSA_LIFECYCLE_STATES: Mapping[int, str] = {
    0x0000: "unknown",
    0x1000: "assembly-and-test",
    0x2000: "psa-rot-provisioning",
    0x3000: "secured",
    0x4000: "non-psa-rot-debug",
    0x5000: "recoverable-psa-rot-debug",
    0x6000: "decommissioned",
}

# Claim keys, PSA 2.0.0 / RFC 9783.
NONCE = 10
INSTANCE_ID = 256
PROFILE = 265
CLIENT_ID = 2394
SECURITY_LIFECYCLE = 2395
IMPLEMENTATION_ID = 2396
BOOT_SEED = 2397
CERTIFICATION_REFERENCE = 2398
SW_COMPONENTS = 2399
VERIFICATION_SERVICE = 2400
# Claim keys, PSA_IOT_PROFILE_1.
P1_PROFILE = -75000
P1_CLIENT_ID = -75001
P1_SECURITY_LIFECYCLE = -75002
P1_IMPLEMENTATION_ID = -75003
P1_BOOT_SEED = -75004
P1_HARDWARE_VERSION = -75005
P1_SW_COMPONENTS = -75006
P1_NO_SW_MEASUREMENTS = -75007
P1_NONCE = -75008
P1_INSTANCE_ID = -75009
P1_VERIFICATION_SERVICE = -75010
_P1_KEYS = frozenset(range(P1_VERIFICATION_SERVICE, P1_PROFILE + 1))
_P2_ONLY_KEYS = frozenset(
    {
        PROFILE,
        CLIENT_ID,
        SECURITY_LIFECYCLE,
        IMPLEMENTATION_ID,
        BOOT_SEED,
        CERTIFICATION_REFERENCE,
        SW_COMPONENTS,
        VERIFICATION_SERVICE,
    }
)

# Software component map keys (3 is reserved and ignored).
_SC_TYPE, _SC_VALUE, _SC_VERSION, _SC_SIGNER, _SC_DESCRIPTION = 1, 2, 4, 5, 6


class ClaimReader:
    """A decoded claims map, read claim by claim; a bad claim raises :class:`MalformedToken`.

    Messages name the token, the claim and its key, and never echo claim bytes. Required
    readers raise when the claim is absent; ``optional_*`` readers return ``None``.
    """

    def __init__(self, claims: Mapping[Any, Any], token: str) -> None:
        self._claims = claims
        self.token = token

    def has(self, key: int) -> bool:
        return key in self._claims

    def where(self, key: int, name: str) -> str:
        return f"{self.token}: claim '{name}' ({key})"

    def value(self, key: int, name: str) -> Any:
        if key not in self._claims:
            raise MalformedToken(f"{self.where(key, name)} is missing")
        return self._claims[key]

    def bytes_(
        self,
        key: int,
        name: str,
        *,
        sizes: frozenset[int] | None = None,
        min_size: int = 1,
        max_size: int | None = None,
    ) -> bytes:
        value = self.value(key, name)
        if not isinstance(value, bytes):
            raise MalformedToken(f"{self.where(key, name)} is not a byte string")
        n = len(value)
        if sizes is not None and n not in sizes:
            allowed = ", ".join(str(s) for s in sorted(sizes))
            raise MalformedToken(f"{self.where(key, name)} is {n} bytes; {allowed} accepted")
        if n < min_size or (max_size is not None and n > max_size):
            upper = "" if max_size is None else f" to {max_size}"
            raise MalformedToken(
                f"{self.where(key, name)} is {n} bytes; {min_size}{upper} accepted"
            )
        return value

    def optional_bytes(
        self, key: int, name: str, *, min_size: int = 1, max_size: int | None = None
    ) -> bytes | None:
        if not self.has(key):
            return None
        return self.bytes_(key, name, min_size=min_size, max_size=max_size)

    def text(self, key: int, name: str) -> str:
        value = self.value(key, name)
        if not isinstance(value, str):
            raise MalformedToken(f"{self.where(key, name)} is not a text string")
        if not value or len(value) > MAX_TEXT_CHARS:
            raise MalformedToken(
                f"{self.where(key, name)} must be 1 to {MAX_TEXT_CHARS} characters"
            )
        return value

    def optional_text(self, key: int, name: str) -> str | None:
        return self.text(key, name) if self.has(key) else None

    def integer(self, key: int, name: str, *, low: int, high: int) -> int:
        value = self.value(key, name)
        # bool is an int subclass in Python but a distinct CBOR type: never accept it as one.
        if not isinstance(value, int) or isinstance(value, bool):
            raise MalformedToken(f"{self.where(key, name)} is not an integer")
        if not low <= value <= high:
            raise MalformedToken(f"{self.where(key, name)} is {value}, outside {low}..{high}")
        return value

    def optional_integer(self, key: int, name: str, *, low: int, high: int) -> int | None:
        return self.integer(key, name, low=low, high=high) if self.has(key) else None

    def instance_id(self, key: int, name: str = "instance id") -> bytes:
        """A UEID of type RAND: 0x01 followed by 32 bytes."""
        value = self.bytes_(key, name, sizes=frozenset({INSTANCE_ID_BYTES}))
        if value[0] != UEID_TYPE_RAND:
            raise MalformedToken(
                f"{self.where(key, name)} is a UEID of type {value[0]:#04x}, "
                f"not RAND ({UEID_TYPE_RAND:#04x})"
            )
        return value

    def lifecycle(self, key: int, states: Mapping[int, str]) -> Lifecycle:
        name = "security lifecycle"
        value = self.integer(key, name, low=0, high=LIFECYCLE_MAX)
        state = states.get(value & LIFECYCLE_STATE_MASK)
        if state is None:
            raise MalformedToken(f"{self.where(key, name)} is {value:#06x}, which names no state")
        return Lifecycle(value=value, state=state)

    def software_components(self, key: int) -> tuple[SoftwareComponent, ...]:
        """A software-components array (PSA 2399 / -75006, CCA 2399)."""
        where = self.where(key, "software components")
        value = self.value(key, "software components")
        if not isinstance(value, list | tuple):
            raise MalformedToken(f"{where} is not an array")
        if not value:
            raise MalformedToken(f"{where} is empty; at least one component is required")
        if len(value) > MAX_SW_COMPONENTS:
            raise MalformedToken(f"{where} has {len(value)} entries, over {MAX_SW_COMPONENTS}")
        return tuple(_software_component(e, f"{where}[{i}]") for i, e in enumerate(value))


@dataclass(frozen=True)
class Lifecycle:
    """Security lifecycle: the raw 16-bit value and the state it names (by ``value & 0xff00``)."""

    value: int
    state: str

    @property
    def sub_state(self) -> int:
        return self.value & LIFECYCLE_SUB_STATE_MASK


@dataclass(frozen=True)
class SoftwareComponent:
    """One measured software component, as the platform's boot chain reported it."""

    measurement_value: bytes
    signer_id: bytes
    measurement_type: str | None = None
    version: str | None = None
    measurement_description: str | None = None


@dataclass(frozen=True)
class PsaClaims:
    """The claims of a PSA token, validated; which claim set it used is in ``claim_set``.

    For ``psa-iot-1`` tokens, ``certification_reference`` holds the hardware version (-75005,
    the same EAN-13 number), ``profile`` defaults to ``PSA_IOT_PROFILE_1`` when absent, and an
    empty ``software_components`` means the token asserted "no software measurements" (-75007).
    """

    profile: str
    claim_set: ClaimSet
    algorithm: int  # COSE alg of the protected header: ES256 (-7) or HMAC 256/256 (5)
    nonce: bytes
    instance_id: bytes
    implementation_id: bytes
    client_id: int
    lifecycle: Lifecycle
    software_components: tuple[SoftwareComponent, ...]
    boot_seed: bytes | None = None
    certification_reference: str | None = None
    verification_service: str | None = None


def parse(token: bytes, *, allow_unknown_profile: bool = False) -> PsaClaims:
    """Decode and validate a PSA token **without checking its signature**.

    ``allow_unknown_profile`` accepts a profile string this module does not know (test tokens
    such as tf-m-tools' ``http://example.com``); the claim keys still decide the claim set.
    Raises :class:`MalformedToken`, or :class:`BadSignature` for a COSE algorithm that is not
    accepted (refused even unverified, so no caller ever handles such a token).
    """
    msg = _open(token)
    return _claims(msg, allow_unknown_profile=allow_unknown_profile)


def verify(
    token: bytes,
    key: ec.EllipticCurvePublicKey | bytes,
    *,
    allow_unknown_profile: bool = False,
) -> PsaClaims:
    """Check a PSA token's signature (EC public key) or MAC (``bytes`` key), then its claims.

    Raises :class:`MalformedToken`, or :class:`BadSignature` when the algorithm is not
    accepted or the signature/MAC does not verify under ``key``. A short HMAC key is the
    caller's mistake and raises :class:`~veritee.errors.UsageError`.
    """
    if isinstance(key, bytes) and len(key) < MIN_HMAC_KEY_BYTES:
        raise UsageError(f"HMAC key is {len(key)} bytes; at least {MIN_HMAC_KEY_BYTES} needed")
    msg = _open(token)
    cose.verify(msg, key, what="PSA token")
    return _claims(msg, allow_unknown_profile=allow_unknown_profile)


def instance_id_of(key: ec.EllipticCurvePublicKey) -> bytes:
    """The instance id TF-M derives from its key: 0x01 || SHA-256(uncompressed EC point)."""
    point = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return bytes([UEID_TYPE_RAND]) + hashlib.sha256(point).digest()


def _software_component(entry: Any, where: str) -> SoftwareComponent:
    if not isinstance(entry, Mapping):
        raise MalformedToken(f"{where} is not a map")

    def digest(k: int, name: str) -> bytes:
        v = entry.get(k)
        if not isinstance(v, bytes) or len(v) not in HASH_SIZES:
            raise MalformedToken(f"{where} '{name}' ({k}) is missing or not a 32/48/64-byte hash")
        return v

    def text(k: int, name: str) -> str | None:
        if k not in entry:
            return None
        v = entry[k]
        if not isinstance(v, str) or not v or len(v) > MAX_TEXT_CHARS:
            raise MalformedToken(f"{where} '{name}' ({k}) is not a 1 to {MAX_TEXT_CHARS}-char text")
        return v

    return SoftwareComponent(
        measurement_value=digest(_SC_VALUE, "measurement value"),
        signer_id=digest(_SC_SIGNER, "signer id"),
        measurement_type=text(_SC_TYPE, "measurement type"),
        version=text(_SC_VERSION, "version"),
        measurement_description=text(_SC_DESCRIPTION, "measurement description"),
    )


def _open(token: bytes) -> cose.Sign1:
    msg = cose.decode(token, what="PSA token")
    alg = msg.alg
    if alg not in ACCEPTED_ALGORITHMS:
        raise BadSignature(f"PSA token: COSE algorithm {alg} is not accepted (ES256 or HMAC 256)")
    return msg


def _claims(msg: cose.Sign1, *, allow_unknown_profile: bool) -> PsaClaims:
    claims = msg.claims()
    keys = set(claims)
    has_p2 = bool(keys & _P2_ONLY_KEYS)
    has_p1 = bool(keys & _P1_KEYS)
    if has_p1 and has_p2:
        raise MalformedToken("PSA token mixes PSA 2.0.0 and PSA_IOT_PROFILE_1 claim keys")
    if not (has_p1 or has_p2):
        raise MalformedToken("token carries no PSA claims (neither PSA 2.0.0 nor P1 keys)")
    if has_p2:
        return _p2_claims(ClaimReader(claims, "PSA token"), msg.alg, allow_unknown_profile)
    return _p1_claims(ClaimReader(claims, "PSA token"), msg.alg, allow_unknown_profile)


def _check_profile(profile: str, claim_set: ClaimSet, allow_unknown: bool) -> None:
    if profile not in _PROFILES[claim_set] and not allow_unknown:
        known = " or ".join(sorted(_PROFILES[claim_set]))
        raise MalformedToken(f"PSA token: claim 'profile' is {profile!r}, not {known}")


def _p2_claims(r: ClaimReader, alg: int, allow_unknown_profile: bool) -> PsaClaims:
    profile = r.text(PROFILE, "profile")
    _check_profile(profile, CLAIM_SET_P2, allow_unknown_profile)
    cert_ref = r.optional_text(CERTIFICATION_REFERENCE, "certification reference")
    if cert_ref is not None and not _CERT_REF_P2.fullmatch(cert_ref):
        where = r.where(CERTIFICATION_REFERENCE, "certification reference")
        raise MalformedToken(f"{where} is not in EAN-13+5 form")
    return PsaClaims(
        profile=profile,
        claim_set=CLAIM_SET_P2,
        algorithm=alg,
        nonce=r.bytes_(NONCE, "nonce", sizes=HASH_SIZES),
        instance_id=r.instance_id(INSTANCE_ID),
        implementation_id=r.bytes_(
            IMPLEMENTATION_ID, "implementation id", sizes=frozenset({IMPLEMENTATION_ID_BYTES})
        ),
        client_id=r.integer(CLIENT_ID, "client id", low=CLIENT_ID_MIN, high=CLIENT_ID_MAX),
        lifecycle=r.lifecycle(SECURITY_LIFECYCLE, PSA_LIFECYCLE_STATES),
        software_components=r.software_components(SW_COMPONENTS),
        boot_seed=r.optional_bytes(
            BOOT_SEED, "boot seed", min_size=BOOT_SEED_P2_MIN_BYTES, max_size=BOOT_SEED_P2_MAX_BYTES
        ),
        certification_reference=cert_ref,
        verification_service=r.optional_text(VERIFICATION_SERVICE, "verification service"),
    )


def _p1_claims(r: ClaimReader, alg: int, allow_unknown_profile: bool) -> PsaClaims:
    profile = r.optional_text(P1_PROFILE, "profile") or PROFILE_PSA_IOT_1
    _check_profile(profile, CLAIM_SET_P1, allow_unknown_profile)
    hw_version = r.optional_text(P1_HARDWARE_VERSION, "hardware version")
    if hw_version is not None and not _CERT_REF_P1.fullmatch(hw_version):
        where = r.where(P1_HARDWARE_VERSION, "hardware version")
        raise MalformedToken(f"{where} is not in EAN-13 or EAN-13+5 form")
    has_components = r.has(P1_SW_COMPONENTS)
    if has_components == r.has(P1_NO_SW_MEASUREMENTS):
        raise MalformedToken(
            f"PSA token: exactly one of 'software components' ({P1_SW_COMPONENTS}) and "
            f"'no software measurements' ({P1_NO_SW_MEASUREMENTS}) must be present"
        )
    components: tuple[SoftwareComponent, ...] = ()
    if has_components:
        components = r.software_components(P1_SW_COMPONENTS)
    else:
        r.integer(P1_NO_SW_MEASUREMENTS, "no software measurements", low=1, high=1)
    return PsaClaims(
        profile=profile,
        claim_set=CLAIM_SET_P1,
        algorithm=alg,
        nonce=r.bytes_(P1_NONCE, "nonce", sizes=HASH_SIZES),
        instance_id=r.instance_id(P1_INSTANCE_ID),
        implementation_id=r.bytes_(
            P1_IMPLEMENTATION_ID, "implementation id", sizes=frozenset({IMPLEMENTATION_ID_BYTES})
        ),
        client_id=r.integer(P1_CLIENT_ID, "client id", low=CLIENT_ID_MIN, high=CLIENT_ID_MAX),
        lifecycle=r.lifecycle(P1_SECURITY_LIFECYCLE, PSA_LIFECYCLE_STATES),
        software_components=components,
        boot_seed=r.bytes_(P1_BOOT_SEED, "boot seed", sizes=frozenset({BOOT_SEED_P1_BYTES})),
        certification_reference=hw_version,
        verification_service=r.optional_text(P1_VERIFICATION_SERVICE, "verification service"),
    )
