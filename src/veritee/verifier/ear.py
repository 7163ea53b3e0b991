"""EAT Attestation Results (EAR, draft-ietf-rats-ear) as ES256 JWTs: model, sign, verify, describe.

An EAR is what the verifier tells relying parties: per submodule, a status (a trust tier) and an
AR4SI trustworthiness vector of eight claims, each a small signed integer whose range gives its
tier (draft-ietf-rats-ar4si section 2.3):

=================  ===========================
tier               codes
=================  ===========================
none               -1 .. 1
affirming          2 .. 31     and -32 .. -2
warning            32 .. 95    and -96 .. -33
contraindicated    96 .. 127   and -128 .. -97
=================  ===========================

Negative codes mirror the positive tiers, as AR4SI reserves them and as Veraison's reference
``ear`` library implements; we do **not** read every negative code as a cryptographic failure
(AR4SI's own -1, "verifier malfunction", is in the none tier; its crypto-failure code is 99,
contraindicated). A status is the worst tier of its vector, ordered none < affirming < warning <
contraindicated: claims that were not made (none) never lower a status, any warning raises it
to warning at least. That is Veraison's ``UpdateStatusFromTrustVector``.

Verification never takes a key from the token (its ``jwk``/``x5c``/``kid`` headers are ignored):
the caller passes the verifier's public key, and only ES256 is accepted.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import time
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwt.algorithms import ECAlgorithm
from jwt.types import Options

from veritee.errors import EvidenceError, UsageError
from veritee.evidence.errors import BadSignature, MalformedToken

__all__ = [
    "ALGORITHM",
    "EAR_PROFILE",
    "IETF_DRAFT_PROFILES",
    "MEANINGS",
    "READ_PROFILES",
    "STATUSES",
    "TIER_CODES",
    "TRUSTEE_PROFILE",
    "Appraisal",
    "ClaimReport",
    "Ear",
    "ResultExpired",
    "ResultNotYetValid",
    "TrustVector",
    "VerifierId",
    "decode_nonce",
    "describe",
    "encode_nonce",
    "public_key_from_jwk",
    "sign",
    "status_from_vector",
    "tier_of",
    "verify",
]

EAR_PROFILE = "tag:github.com,2023:veraison/ear"
# Trustee's attestation service signs EARs under its own alias of the same claims set.
TRUSTEE_PROFILE = "tag:github.com,2024:confidential-containers/Trustee"
# draft-ietf-rats-ear-01 to -03 name their profile under ietf.org (-03:
# "tag:ietf.org,2026:rats/ear#03") and spell the EAR claims with underscores (ear_status,
# ear_trustworthiness_vector, ear_appraisal_policy_ids, ear_verifier_id); read both spellings.
IETF_DRAFT_PROFILES = frozenset(
    f"tag:ietf.org,{year}:rats/ear#{draft:02d}"
    for year in (2024, 2025, 2026)
    for draft in (1, 2, 3)
)
# What verify() reads unless told otherwise; results are always signed under EAR_PROFILE.
READ_PROFILES = frozenset({EAR_PROFILE, TRUSTEE_PROFILE}) | IETF_DRAFT_PROFILES
ALGORITHM = "ES256"

# Clock skew tolerated between the verifier that issued a result and whoever checks it.
DEFAULT_LEEWAY_SECONDS = 60
# An EAR is a few KiB (the Trustee one with annotated evidence: 3.3 KiB); bigger is an attack.
MAX_JWT_CHARS = 64 * 1024
# One submodule per attested component; a result about more than this is not one we issue.
MAX_SUBMODS = 64
# Trust claims are int8 in AR4SI.
CLAIM_MIN = -128
CLAIM_MAX = 127
# eat_nonce in JSON: 8 to 64 bytes, base64url-encoded (at most 88 characters), EAT section 4.1.
NONCE_MIN_CHARS = 8
NONCE_MAX_CHARS = 88
NONCE_MIN_BYTES = 8
NONCE_MAX_BYTES = 64

TIER_NONE, TIER_AFFIRMING, TIER_WARNING, TIER_CONTRAINDICATED = 0, 2, 32, 96
# Status names, least to most severe; the index is the severity rank.
STATUSES = ("none", "affirming", "warning", "contraindicated")
# The code AR4SI gives each tier as a whole (what Veraison's TrustTier serialises to).
TIER_CODES: Mapping[str, int] = {
    "none": TIER_NONE,
    "affirming": TIER_AFFIRMING,
    "warning": TIER_WARNING,
    "contraindicated": TIER_CONTRAINDICATED,
}

# JSON claim names.
_PROFILE, _IAT, _EXP, _NBF, _NONCE = "eat_profile", "iat", "exp", "nbf", "eat_nonce"
_VERIFIER_ID, _SUBMODS = "ear.verifier-id", "submods"
_STATUS, _VECTOR, _POLICY = "ear.status", "ear.trustworthiness-vector", "ear.appraisal-policy-id"
# The verifier's id of one appraisal (a JWT ID, RFC 7519 section 4.1.7): its log line and the
# deployer's output carry it too. Kept as an extension, so results without one still verify.
APPRAISAL_ID = "jti"
_TOP_KNOWN = frozenset({_PROFILE, _IAT, _EXP, _NONCE, _VERIFIER_ID, _SUBMODS})
_SUBMOD_KNOWN = frozenset({_STATUS, _VECTOR, _POLICY})


class ResultExpired(EvidenceError):
    """The attestation result is past its ``exp``: appraise the evidence again."""


class ResultNotYetValid(EvidenceError):
    """The attestation result is dated in the future (``iat`` or ``nbf``): a clock is wrong."""


@dataclass(frozen=True)
class TrustVector:
    """The eight AR4SI trustworthiness claims; 0 means no claim was made."""

    instance_identity: int = 0
    configuration: int = 0
    executables: int = 0
    file_system: int = 0
    hardware: int = 0
    runtime_opaque: int = 0
    storage_opaque: int = 0
    sourced_data: int = 0

    def __post_init__(self) -> None:
        for name, attribute in _VECTOR_NAMES:
            code = getattr(self, attribute)
            if type(code) is not int and (not isinstance(code, int) or isinstance(code, bool)):
                raise MalformedToken(f"trustworthiness claim '{name}' is not an integer")
            if not CLAIM_MIN <= code <= CLAIM_MAX:
                raise MalformedToken(
                    f"trustworthiness claim '{name}' is {code}, outside {CLAIM_MIN}..{CLAIM_MAX}"
                )

    def items(self) -> Iterator[tuple[str, int]]:
        """(JSON claim name, code) for all eight claims, in AR4SI order."""
        for name, attribute in _VECTOR_NAMES:
            yield name, getattr(self, attribute)

    def codes(self) -> tuple[int, ...]:
        """The eight codes, in AR4SI order."""
        return tuple(getattr(self, attribute) for _, attribute in _VECTOR_NAMES)

    def to_json(self) -> dict[str, int]:
        """The claims that were made (non-zero), as EAR's JSON serialisation omits the rest."""
        out = {}
        for name, attribute in _VECTOR_NAMES:
            code = getattr(self, attribute)
            if code != 0:
                out[name] = code
        return out

    @classmethod
    def from_json(cls, value: Any) -> TrustVector:
        if not isinstance(value, dict):
            raise MalformedToken(f"'{_VECTOR}' is not a JSON object")
        known = {f.name.replace("_", "-"): f.name for f in fields(cls)}
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise MalformedToken(f"'{_VECTOR}' has unknown claims: {', '.join(unknown[:5])}")
        return cls(**{known[name]: code for name, code in value.items()})


# (JSON claim name, attribute) of TrustVector's claims, in AR4SI order.
_VECTOR_NAMES = tuple((f.name.replace("_", "-"), f.name) for f in fields(TrustVector))


@dataclass(frozen=True)
class VerifierId:
    """Who produced the result: the verifier's developer and build."""

    developer: str
    build: str


@dataclass(frozen=True)
class Appraisal:
    """One submodule's appraisal: status, trustworthiness vector, policy, extra claims.

    ``extensions`` keeps every other claim (e.g. ``ear.veraison.annotated-evidence``),
    frozen. Construction refuses a status better than its vector warrants.
    """

    status: str
    trust_vector: TrustVector = field(default_factory=TrustVector)
    policy_id: str | None = None
    extensions: Mapping[str, Any] = field(default_factory=lambda: _freeze({}))

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise MalformedToken(f"'{_STATUS}' {self.status!r} is not one of {', '.join(STATUSES)}")
        warranted = status_from_vector(self.trust_vector)
        if STATUSES.index(self.status) < STATUSES.index(warranted):
            raise MalformedToken(
                f"'{_STATUS}' is {self.status!r} but its trustworthiness vector makes it "
                f"{warranted!r}: a status may not be better than its claims"
            )
        if not _SUBMOD_KNOWN.isdisjoint(self.extensions):
            clash = _SUBMOD_KNOWN.intersection(self.extensions)
            raise MalformedToken(f"appraisal extensions redefine {', '.join(sorted(clash))}")
        object.__setattr__(self, "extensions", _freeze(self.extensions))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {_STATUS: self.status}
        vector = self.trust_vector.to_json()
        if vector:
            out[_VECTOR] = vector
        if self.policy_id is not None:
            out[_POLICY] = self.policy_id
        out.update(_thaw(self.extensions))
        return out


@dataclass(frozen=True)
class Ear:
    """An EAT Attestation Result: who appraised, when, and the appraisal of each submodule."""

    iat: int
    verifier_id: VerifierId
    submods: Mapping[str, Appraisal]
    profile: str = EAR_PROFILE
    nonce: str | None = None
    exp: int | None = None
    extensions: Mapping[str, Any] = field(default_factory=lambda: _freeze({}))

    def __post_init__(self) -> None:
        if not self.submods:
            raise MalformedToken(f"'{_SUBMODS}' is empty: a result must appraise something")
        if len(self.submods) > MAX_SUBMODS:
            raise MalformedToken(
                f"'{_SUBMODS}' has {len(self.submods)} entries, over {MAX_SUBMODS}"
            )
        if not _TOP_KNOWN.isdisjoint(self.extensions):
            clash = _TOP_KNOWN.intersection(self.extensions)
            raise MalformedToken(f"result extensions redefine {', '.join(sorted(clash))}")
        object.__setattr__(self, "submods", types.MappingProxyType(dict(self.submods)))
        object.__setattr__(self, "extensions", _freeze(self.extensions))

    def to_json(self) -> dict[str, Any]:
        """The JWT claims set."""
        out: dict[str, Any] = {
            _PROFILE: self.profile,
            _IAT: self.iat,
            _VERIFIER_ID: {
                "developer": self.verifier_id.developer,
                "build": self.verifier_id.build,
            },
            _SUBMODS: {name: a.to_json() for name, a in self.submods.items()},
        }
        if self.nonce is not None:
            out[_NONCE] = self.nonce
        if self.exp is not None:
            out[_EXP] = self.exp
        out.update(_thaw(self.extensions))
        return out


class ClaimReport(NamedTuple):
    """One line of a human printout of a result."""

    submod: str
    claim: str
    tier: str
    meaning: str


def _rank(code: int) -> int:
    """The index in STATUSES of a code's tier (see the module docstring)."""
    if -1 <= code <= 1:
        return 0
    if 2 <= code <= 31 or -32 <= code <= -2:
        return 1
    if 32 <= code <= 95 or -96 <= code <= -33:
        return 2
    return 3


# Every code's rank, looked up by code - CLAIM_MIN: a status is computed for every submodule
# of every result, twice.
_RANKS = tuple(_rank(code) for code in range(CLAIM_MIN, CLAIM_MAX + 1))


def tier_of(code: int) -> str:
    """The AR4SI tier name of a trustworthiness claim code (see the module docstring)."""
    if not CLAIM_MIN <= code <= CLAIM_MAX:
        raise MalformedToken(f"trustworthiness claim {code} is outside {CLAIM_MIN}..{CLAIM_MAX}")
    return STATUSES[_RANKS[code - CLAIM_MIN]]


def status_from_vector(vector: TrustVector) -> str:
    """The status a vector warrants: its worst tier (none, affirming, warning, contraindicated)."""
    return STATUSES[max(_RANKS[code - CLAIM_MIN] for code in vector.codes())]


def encode_nonce(nonce: bytes) -> str:
    """``eat_nonce`` as results carry it: base64url *with* padding, as Veraison writes it (Go's
    ``base64.URLEncoding``). Relying parties tuned to Veraison decode it strictly: Trustee's
    Veraison verifier refuses the unpadded form of a 64-byte nonce (86 characters, not 88)."""
    return base64.urlsafe_b64encode(nonce).decode()


def decode_nonce(text: str) -> bytes:
    """The bytes of an ``eat_nonce``, padded or not (results of older Veritee versions are
    unpadded); raise :class:`MalformedToken` if it is not base64url of 8 to 64 bytes."""
    if not isinstance(text, str) or not NONCE_MIN_CHARS <= len(text) <= NONCE_MAX_CHARS:
        raise MalformedToken(
            f"'{_NONCE}' is not a {NONCE_MIN_CHARS}..{NONCE_MAX_CHARS}-char string"
        )
    bare = text.rstrip("=")
    if len(text) - len(bare) > 2 or not bare.isascii():
        raise MalformedToken(f"'{_NONCE}' is not base64url")
    try:
        raw = base64.urlsafe_b64decode(bare + "=" * (-len(bare) % 4))
    except (ValueError, binascii.Error):
        raise MalformedToken(f"'{_NONCE}' is not base64url") from None
    # Only the canonical spelling: one nonce, one string (padded or not).
    if base64.urlsafe_b64encode(raw).decode().rstrip("=") != bare:
        raise MalformedToken(f"'{_NONCE}' is not canonical base64url")
    if not NONCE_MIN_BYTES <= len(raw) <= NONCE_MAX_BYTES:
        raise MalformedToken(
            f"'{_NONCE}' is {len(raw)} bytes, not {NONCE_MIN_BYTES}..{NONCE_MAX_BYTES}"
        )
    return raw


def sign(result: Ear, private_key: ec.EllipticCurvePrivateKey, kid: str | None = None) -> str:
    """Sign ``result`` as a compact ES256 JWT; ``kid`` names the key for relying parties."""
    if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(
        private_key.curve, ec.SECP256R1
    ):
        raise UsageError("an EAR is signed with ES256: the key must be a P-256 private key")
    # JWS compact serialisation (RFC 7515 section 7.1), written out: it is three base64url
    # parts, and PyJWT's layers around it cost as much as the signature on the verifier's hot
    # path. verify() reads it back with PyJWT, and the tests check each against the other.
    header = _jws_header(kid)
    payload = _b64url(json.dumps(result.to_json(), separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}"
    r, s = decode_dss_signature(private_key.sign(signing_input.encode(), _ES256))
    signature = _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    return f"{signing_input}.{signature}"


_ES256 = ec.ECDSA(hashes.SHA256())


@functools.lru_cache(maxsize=64)
def _jws_header(kid: str | None) -> str:
    header = {"alg": ALGORITHM, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    return _b64url(json.dumps(header, separators=(",", ":")).encode())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def verify(
    token: str,
    public_key: ec.EllipticCurvePublicKey,
    *,
    now: int | None = None,
    leeway: int = DEFAULT_LEEWAY_SECONDS,
    profiles: frozenset[str] = READ_PROFILES,
) -> Ear:
    """Check an EAR JWT's ES256 signature under ``public_key``, its times, profile and claims.

    ``now`` (Unix seconds) defaults to the system clock. Raises :class:`BadSignature` (wrong
    key, bad signature, an algorithm other than ES256), :class:`ResultExpired`,
    :class:`ResultNotYetValid`, or :class:`MalformedToken` (bad JSON, claims or profile).
    A key that is not P-256 is the caller's mistake: :class:`~veritee.errors.UsageError`.
    """
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise UsageError("an EAR is verified with ES256: the key must be a P-256 public key")
    if not isinstance(token, str) or len(token) > MAX_JWT_CHARS:
        raise MalformedToken(f"EAR is not a JWT string of at most {MAX_JWT_CHARS} characters")
    claims = _decode(token, public_key)
    iat = _check_times(claims, int(time.time()) if now is None else now, leeway)
    profile = claims.get(_PROFILE)
    if not isinstance(profile, str) or profile not in profiles:
        shown = f"{profile!r:.80}"  # attacker-chosen: never echo all of it
        raise MalformedToken(f"EAR profile {shown} is not one this reader accepts")
    if profile in IETF_DRAFT_PROFILES:
        claims = _from_ietf_spelling(claims)
    return _ear_from_json(claims, iat)


# The IETF drafts' claim names (underscores) and the names of the Veraison profile.
_IETF_TOP = {"ear_verifier_id": _VERIFIER_ID, "ear_raw_evidence": "ear.raw-evidence"}
_IETF_SUBMOD = {"ear_status": _STATUS, "ear_trustworthiness_vector": _VECTOR}
_IETF_POLICIES = "ear_appraisal_policy_ids"


def _from_ietf_spelling(claims: Mapping[str, Any]) -> dict[str, Any]:
    """An IETF-draft EAR's claims with Veraison's names (the model is one)."""
    out = {_IETF_TOP.get(k, k): v for k, v in claims.items()}
    nonce = out.get(_NONCE)
    if isinstance(nonce, list):  # eat.nonce-type: one nonce or an array of them
        if len(nonce) != 1:
            raise MalformedToken(f"EAR claim '{_NONCE}' holds {len(nonce)} nonces, not one")
        out[_NONCE] = nonce[0]
    submods = out.get(_SUBMODS)
    if isinstance(submods, dict):
        renamed = {}
        for name, value in submods.items():
            if isinstance(value, dict):
                value = {_IETF_SUBMOD.get(k, k): v for k, v in value.items()}
                ids = value.get(_IETF_POLICIES)
                if isinstance(ids, list) and ids and _POLICY not in value:
                    value[_POLICY] = ids[0]  # the first; the list stays as it came
            renamed[name] = value
        out[_SUBMODS] = renamed
    return out


def describe(ear: Ear) -> list[ClaimReport]:
    """Every trustworthiness claim of every submodule, with its tier and what it means."""
    rows = []
    for submod, appraisal in ear.submods.items():
        for claim, code in appraisal.trust_vector.items():
            rows.append(ClaimReport(submod, claim, tier_of(code), _meaning(claim, code)))
    return rows


def public_key_from_jwk(jwk: Mapping[str, Any] | str) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from a JWK (object or JSON text); private JWKs are refused."""
    try:
        parsed = json.loads(jwk) if isinstance(jwk, str) else dict(jwk)
    except ValueError:
        raise UsageError("the JWK is not JSON") from None
    if not isinstance(parsed, dict) or "d" in parsed:
        raise UsageError("expected a public JWK object (one without 'd')")
    try:
        key = ECAlgorithm.from_jwk(parsed)
    except jwt.PyJWTError as exc:
        raise UsageError(f"the JWK is not a usable EC key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise UsageError("the JWK is not a P-256 public key")
    return key


def _decode(token: str, public_key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    # PyJWT checks the signature before it parses the claims. Its own time checks are off:
    # ours take an injected ``now``.
    options: Options = {
        "verify_signature": True,
        "verify_exp": False,
        "verify_nbf": False,
        "verify_iat": False,
        "verify_aud": False,
        "verify_iss": False,
        "require": [],
    }
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key=public_key, algorithms=[ALGORITHM], options=options
        )
    except jwt.InvalidSignatureError:
        raise BadSignature("EAR signature does not verify with the given key") from None
    except (jwt.InvalidAlgorithmError, jwt.InvalidKeyError) as exc:
        raise BadSignature(f"EAR is not signed with {ALGORITHM}: {exc}") from None
    except jwt.InvalidTokenError as exc:
        raise MalformedToken(f"EAR is not a well-formed JWT: {exc}") from None
    return claims


def _check_times(claims: Mapping[str, Any], now: int, leeway: int) -> int:
    """Check iat, nbf and exp against ``now``; return iat."""
    iat = _int(claims, _IAT)
    if iat is None:
        raise MalformedToken(f"EAR claim '{_IAT}' is missing")
    if iat > now + leeway:
        raise ResultNotYetValid(f"EAR was issued at {iat}, after now ({now})")
    nbf = _int(claims, _NBF)
    if nbf is not None and nbf > now + leeway:
        raise ResultNotYetValid(f"EAR is not valid before {nbf}; now is {now}")
    exp = _int(claims, _EXP)
    if exp is not None and now - leeway >= exp:
        raise ResultExpired(f"EAR expired at {exp}; now is {now}")
    return iat


def _int(claims: Mapping[str, Any], name: str) -> int | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedToken(f"EAR claim '{name}' is not a non-negative integer")
    return value


def _ear_from_json(claims: Mapping[str, Any], iat: int) -> Ear:
    verifier = claims.get(_VERIFIER_ID)
    if (
        not isinstance(verifier, dict)
        or not isinstance(verifier.get("developer"), str)
        or not isinstance(verifier.get("build"), str)
    ):
        raise MalformedToken(f"EAR claim '{_VERIFIER_ID}' lacks a 'developer' and a 'build' string")
    nonce = claims.get(_NONCE)
    if nonce is not None and (
        not isinstance(nonce, str) or not NONCE_MIN_CHARS <= len(nonce) <= NONCE_MAX_CHARS
    ):
        raise MalformedToken(
            f"EAR claim '{_NONCE}' is not a {NONCE_MIN_CHARS} to {NONCE_MAX_CHARS}-char string"
        )
    submods = claims.get(_SUBMODS)
    if not isinstance(submods, dict):
        raise MalformedToken(f"EAR claim '{_SUBMODS}' is not a JSON object")
    if len(submods) > MAX_SUBMODS:
        raise MalformedToken(
            f"EAR claim '{_SUBMODS}' has {len(submods)} entries, over {MAX_SUBMODS}"
        )
    return Ear(
        iat=iat,
        verifier_id=VerifierId(developer=verifier["developer"], build=verifier["build"]),
        submods={name: _appraisal_from_json(name, value) for name, value in submods.items()},
        profile=claims[_PROFILE],
        nonce=nonce,
        exp=_int(claims, _EXP),
        extensions={k: v for k, v in claims.items() if k not in _TOP_KNOWN},
    )


def _appraisal_from_json(name: str, value: Any) -> Appraisal:
    if not isinstance(value, dict):
        raise MalformedToken(f"EAR submod {name!r} is not a JSON object")
    status = value.get(_STATUS)
    if not isinstance(status, str):
        raise MalformedToken(f"EAR submod {name!r} has no '{_STATUS}' string")
    policy = value.get(_POLICY)
    if policy is not None and not isinstance(policy, str):
        raise MalformedToken(f"EAR submod {name!r}: '{_POLICY}' is not a string")
    vector = TrustVector.from_json(value[_VECTOR]) if _VECTOR in value else TrustVector()
    return Appraisal(
        status=status,
        trust_vector=vector,
        policy_id=policy,
        extensions={k: v for k, v in value.items() if k not in _SUBMOD_KNOWN},
    )


# Scalars end the recursion below without an ABC check (isinstance against Mapping is the
# slow part of freezing a result's claims).
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _freeze(value: Any) -> Any:
    """Deep read-only copy of JSON data: objects become mapping proxies, arrays tuples."""
    if type(value) in _SCALARS:
        return value
    if isinstance(value, Mapping):
        return types.MappingProxyType(
            {k: v if type(v) in _SCALARS else _freeze(v) for k, v in value.items()}
        )
    if isinstance(value, list | tuple):
        return tuple(v if type(v) in _SCALARS else _freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    """Plain JSON data again from :func:`_freeze`'s output, for signing."""
    if type(value) in _SCALARS:
        return value
    if isinstance(value, Mapping):
        return {k: v if type(v) in _SCALARS else _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [v if type(v) in _SCALARS else _thaw(v) for v in value]
    return value


# AR4SI section 2.3.4: what each code means for each claim (the short forms Veraison prints).
_COMMON_MEANINGS: Mapping[int, str] = {
    -1: "verifier malfunction",
    0: "no claim being made",
    1: "unexpected evidence",
    99: "cryptographic validation of the evidence failed",
}
MEANINGS: Mapping[str, Mapping[int, str]] = {
    "instance-identity": {
        2: "recognized and not compromised",
        96: "recognized but not trustworthy",
        97: "not recognized",
    },
    "configuration": {
        2: "all recognized and approved",
        3: "no known vulnerabilities",
        32: "known vulnerabilities",
        96: "unacceptable security vulnerabilities",
    },
    "executables": {
        2: "recognized and approved boot- and run-time",
        3: "recognized and approved boot-time",
        32: "recognized but known bugs or vulnerabilities",
        33: "unrecognized run-time",
        96: "contraindicated run-time",
    },
    "file-system": {
        2: "all recognized and approved",
        32: "unrecognized item(s) found",
        96: "contraindicated item(s) found",
    },
    "hardware": {
        2: "genuine",
        32: "genuine but known bugs or vulnerabilities",
        96: "genuine but contraindicated",
        97: "unrecognized",
    },
    "runtime-opaque": {
        2: "memory encryption",
        32: "memory isolation",
        96: "visible to the host",
    },
    "storage-opaque": {
        2: "encrypted secrets with hardware-backed keys",
        32: "encrypted secrets with non hardware-backed keys",
        96: "unencrypted secrets",
    },
    "sourced-data": {
        2: "from attesters in the affirming tier",
        32: "from unattested sources or attesters in the warning tier",
        96: "from attesters in the contraindicated tier",
    },
}


def _meaning(claim: str, code: int) -> str:
    specific = MEANINGS.get(claim, {})
    if code in specific:
        return specific[code]
    if code in _COMMON_MEANINGS:
        return _COMMON_MEANINGS[code]
    return f"code {code} has no meaning defined by AR4SI ({tier_of(code)} tier)"
