"""EAR attestation results: the published Veraison and Trustee JWTs, our own, and the tiers."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veritee.errors import EvidenceError, UsageError
from veritee.evidence.errors import BadSignature, MalformedToken
from veritee.verifier import ear

Vector = Callable[[str], Path]

TRUSTEE_PROFILE = "tag:github.com,2024:confidential-containers/Trustee"


def _jwt(vector: Vector, name: str) -> str:
    return vector(f"ear/{name}.jwt").read_text().strip()


def _expected(vector: Vector, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(vector(f"ear/{name}.expected.json").read_text())
    return data


def _ear_key(vector: Vector) -> ec.EllipticCurvePublicKey:
    return ear.public_key_from_jwk(vector("ear/ear-pkey.json").read_text())


def _trustee_header_key(vector: Vector) -> ec.EllipticCurvePublicKey:
    """The key the Trustee JWT asserts about itself. Tests only use it to reach the checks that
    come after the signature; a verifier must never take a key from the token."""
    jwk = _expected(vector, "trustee-ear-cca-expired")["jws_header"]["jwk"]
    return ear.public_key_from_jwk(jwk)


def _assert_matches(result: ear.Ear, claims: dict[str, Any]) -> None:
    """Field by field against the expected JSON's claims."""
    assert result.profile == claims["eat_profile"]
    assert result.iat == claims["iat"]
    assert result.exp == claims.get("exp")
    assert result.nonce == claims.get("eat_nonce")
    assert result.verifier_id.developer == claims["ear.verifier-id"]["developer"]
    assert result.verifier_id.build == claims["ear.verifier-id"]["build"]
    assert set(result.submods) == set(claims["submods"])
    for name, want in claims["submods"].items():
        got = result.submods[name]
        assert got.status == want["ear.status"]
        assert got.policy_id == want.get("ear.appraisal-policy-id")
        vector = want.get("ear.trustworthiness-vector", {})
        for claim, code in got.trust_vector.items():
            assert code == vector.get(claim, 0), claim
        assert ear.status_from_vector(got.trust_vector) == want["ear.status"]
        extras = {k: v for k, v in want.items() if not k.startswith(("ear.status", "ear.trust"))}
        extras.pop("ear.appraisal-policy-id", None)
        assert ear._thaw(got.extensions) == extras
    top = {"eat_profile", "iat", "exp", "eat_nonce", "ear.verifier-id", "submods"}
    assert ear._thaw(result.extensions) == {k: v for k, v in claims.items() if k not in top}
    # And the whole claims set round-trips.
    assert result.to_json() == claims


# --- the published vectors --------------------------------------------------------------------


def test_veraison_ear_verifies_and_matches_expected(vector: Vector) -> None:
    expected = _expected(vector, "veraison-ear-affirming")
    assert expected["signature"][0]["verified"] is True
    result = ear.verify(_jwt(vector, "veraison-ear-affirming"), _ear_key(vector))
    _assert_matches(result, expected["claims"])
    assert result.extensions["ear.raw-evidence"] == "3q2-7w"


def test_trustee_ear_does_not_verify_with_the_veraison_key(vector: Vector) -> None:
    expected = _expected(vector, "trustee-ear-cca-expired")
    record = next(s for s in expected["signature"] if s["key"] == "ear-pkey.json")
    assert record["verified"] is False
    with pytest.raises(BadSignature):
        ear.verify(_jwt(vector, "trustee-ear-cca-expired"), _ear_key(vector))


def test_trustee_ear_is_expired(vector: Vector) -> None:
    token = _jwt(vector, "trustee-ear-cca-expired")
    exp = _expected(vector, "trustee-ear-cca-expired")["claims"]["exp"]
    key = _trustee_header_key(vector)
    with pytest.raises(ear.ResultExpired, match=str(exp)):
        ear.verify(token, key)  # today
    with pytest.raises(ear.ResultExpired):
        ear.verify(token, key, now=exp + ear.DEFAULT_LEEWAY_SECONDS)


def test_trustee_ear_profile_alias_is_read(vector: Vector) -> None:
    """Trustee's alias of the EAR profile is read by default (at a time it was valid); a
    caller that names its profiles refuses every other, and an unlisted profile is refused."""
    token = _jwt(vector, "trustee-ear-cca-expired")
    claims = _expected(vector, "trustee-ear-cca-expired")["claims"]
    key = _trustee_header_key(vector)
    assert TRUSTEE_PROFILE in ear.READ_PROFILES
    result = ear.verify(token, key, now=claims["iat"])
    _assert_matches(result, claims)
    with pytest.raises(MalformedToken, match="profile"):
        ear.verify(token, key, now=claims["iat"], profiles=frozenset({ear.EAR_PROFILE}))
    result = ear.verify(token, key, now=claims["iat"], profiles=frozenset({TRUSTEE_PROFILE}))
    _assert_matches(result, claims)
    assert "ear.veraison.annotated-evidence" in result.submods["cpu0"].extensions


def test_key_in_the_header_is_never_used(vector: Vector) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(attacker.public_key()))
    claims = _expected(vector, "veraison-ear-affirming")["claims"]
    token = jwt.encode(claims, attacker, algorithm="ES256", headers={"jwk": jwk, "kid": "x"})
    with pytest.raises(BadSignature):
        ear.verify(token, _ear_key(vector))


# --- algorithms and keys ----------------------------------------------------------------------


def _segments(token: str) -> list[str]:
    return token.split(".")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_hs256_with_the_public_key_as_secret_is_refused(vector: Vector) -> None:
    # The classic algorithm-confusion attack: sign HS256 with the verifier's public key bytes.
    pem = _ear_key(vector).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = _expected(vector, "veraison-ear-affirming")["claims"]
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims).encode())
    mac = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    with pytest.raises(BadSignature, match="ES256"):
        ear.verify(f"{header}.{payload}.{_b64(mac)}", _ear_key(vector))


def test_alg_none_is_refused(vector: Vector) -> None:
    _, payload, _ = _segments(_jwt(vector, "veraison-ear-affirming"))
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    with pytest.raises(BadSignature):
        ear.verify(f"{header}.{payload}.", _ear_key(vector))


def test_missing_alg_is_refused(vector: Vector) -> None:
    _, payload, signature = _segments(_jwt(vector, "veraison-ear-affirming"))
    with pytest.raises(BadSignature, match="ES256"):
        ear.verify(f"e30.{payload}.{signature}", _ear_key(vector))


def test_es384_is_refused(vector: Vector) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    claims = _expected(vector, "veraison-ear-affirming")["claims"]
    token = jwt.encode(claims, key, algorithm="ES384")
    with pytest.raises(BadSignature):
        ear.verify(token, _ear_key(vector))
    with pytest.raises(UsageError, match="P-256"):
        ear.verify(token, key.public_key())


@pytest.mark.parametrize("segment", [0, 1, 2])
def test_flipped_character_fails(vector: Vector, segment: int) -> None:
    parts = _segments(_jwt(vector, "veraison-ear-affirming"))
    # Flip a character in the middle of the segment without leaving the base64url alphabet.
    seg = parts[segment]
    i = len(seg) // 2
    parts[segment] = seg[:i] + ("A" if seg[i] != "A" else "B") + seg[i + 1 :]
    with pytest.raises((BadSignature, MalformedToken)) as caught:
        ear.verify(".".join(parts), _ear_key(vector))
    if segment == 2:
        assert caught.type is BadSignature


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b", "a.b.c", "....", "x" * (ear.MAX_JWT_CHARS + 1), "W10.e30.AA"],
)
def test_malformed_jwt_fails_as_malformed(vector: Vector, token: str) -> None:
    with pytest.raises(MalformedToken):
        ear.verify(token, _ear_key(vector))


def test_public_key_from_jwk_refuses_private_and_foreign_keys() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    private_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))
    with pytest.raises(UsageError, match="without 'd'"):
        ear.public_key_from_jwk(private_jwk)
    p384 = json.loads(
        jwt.algorithms.ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key())
    )
    with pytest.raises(UsageError, match="P-256"):
        ear.public_key_from_jwk(p384)
    with pytest.raises(UsageError):
        ear.public_key_from_jwk("not json")
    with pytest.raises(UsageError):
        ear.public_key_from_jwk({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"})


# --- our own results: sign, verify, times -----------------------------------------------------


def _result(**changes: Any) -> ear.Ear:
    fields: dict[str, Any] = {
        "iat": 1_700_000_000,
        "verifier_id": ear.VerifierId(developer="Veritee", build="0.1.0"),
        "submods": {
            "module": ear.Appraisal(
                status="affirming",
                trust_vector=ear.TrustVector(instance_identity=2, executables=2, hardware=2),
                policy_id="veritee/default",
                extensions={"ear.veraison.annotated-evidence": {"measurement": "00" * 32}},
            )
        },
        "nonce": "bm9uY2Utbm9uY2Utbm9uY2U",
        "exp": 1_700_000_600,
    }
    fields.update(changes)
    return ear.Ear(**fields)


def test_sign_and_verify_round_trip() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    result = _result()
    token = ear.sign(result, key, kid="verifier-1")
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": "verifier-1", "typ": "JWT"}
    assert ear.verify(token, key.public_key(), now=result.iat) == result


@pytest.mark.parametrize("kid", ["verifier-1", None])
def test_signed_result_is_a_standard_jws_that_another_library_reads(kid: str | None) -> None:
    # sign() writes the JWS itself: PyJWT, used directly, must read it as any ES256 JWT.
    key = ec.generate_private_key(ec.SECP256R1())
    result = _result()
    token = ear.sign(result, key, kid=kid)
    signature = token.split(".")[2]
    assert "=" not in token
    assert len(base64.urlsafe_b64decode(signature + "==")) == 64  # r || s, not DER
    claims = jwt.decode(
        token, key.public_key(), algorithms=["ES256"], options={"verify_exp": False}
    )
    assert claims == result.to_json()
    expected = {"alg": "ES256", "typ": "JWT"} | ({"kid": kid} if kid else {})
    assert jwt.get_unverified_header(token) == expected


def test_sign_refuses_a_non_p256_key() -> None:
    with pytest.raises(UsageError):
        ear.sign(_result(), ec.generate_private_key(ec.SECP384R1()))


@pytest.mark.parametrize(
    ("now", "error"),
    [
        (1_700_000_000, None),
        (1_700_000_600 - 1, None),
        (1_700_000_600 + ear.DEFAULT_LEEWAY_SECONDS - 1, None),  # inside the leeway
        (1_700_000_600 + ear.DEFAULT_LEEWAY_SECONDS, ear.ResultExpired),
        (1_700_000_000 - ear.DEFAULT_LEEWAY_SECONDS, None),
        (1_700_000_000 - ear.DEFAULT_LEEWAY_SECONDS - 1, ear.ResultNotYetValid),  # iat ahead
    ],
)
def test_validity_window(now: int, error: type[Exception] | None) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    token = ear.sign(_result(), key)
    if error is None:
        ear.verify(token, key.public_key(), now=now)
    else:
        with pytest.raises(error):
            ear.verify(token, key.public_key(), now=now)


def test_not_before_in_the_future_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    token = ear.sign(_result(extensions={"nbf": 1_700_000_300}), key)
    with pytest.raises(ear.ResultNotYetValid, match="before"):
        ear.verify(token, key.public_key(), now=1_700_000_000)
    ear.verify(token, key.public_key(), now=1_700_000_300)


def _signed_claims(claims: dict[str, Any]) -> tuple[str, ec.EllipticCurvePublicKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(claims, key, algorithm="ES256"), key.public_key()


def _good_claims() -> dict[str, Any]:
    return _result().to_json()


BAD_CLAIMS: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("iat", lambda c: c.pop("iat")),
    ("iat", lambda c: c.update(iat="1700000000")),
    ("iat", lambda c: c.update(iat=True)),
    ("exp", lambda c: c.update(exp=1.5)),
    ("verifier-id", lambda c: c.pop("ear.verifier-id")),
    ("verifier-id", lambda c: c.update({"ear.verifier-id": {"developer": "x"}})),
    ("submods", lambda c: c.update(submods={})),
    ("submods", lambda c: c.update(submods=[])),
    ("submods", lambda c: c.update(submods={str(i): {"ear.status": "none"} for i in range(65)})),
    ("ear.status", lambda c: c["submods"]["module"].pop("ear.status")),
    ("ear.status", lambda c: c["submods"]["module"].update({"ear.status": "great"})),
    ("ear.status", lambda c: c["submods"]["module"].update({"ear.status": 2})),
    (
        "better than",
        lambda c: c["submods"]["module"]["ear.trustworthiness-vector"].update(hardware=32),
    ),
    (
        "unknown claims",
        lambda c: c["submods"]["module"]["ear.trustworthiness-vector"].update(speed=2),
    ),
    (
        "not an integer",
        lambda c: c["submods"]["module"]["ear.trustworthiness-vector"].update(hardware=2.0),
    ),
    (
        "not an integer",
        lambda c: c["submods"]["module"]["ear.trustworthiness-vector"].update(hardware=True),
    ),
    (
        "outside",
        lambda c: c["submods"]["module"]["ear.trustworthiness-vector"].update(hardware=128),
    ),
    (
        "appraisal-policy-id",
        lambda c: c["submods"]["module"].update({"ear.appraisal-policy-id": 1}),
    ),
    ("eat_nonce", lambda c: c.update(eat_nonce="short")),
    ("profile", lambda c: c.update(eat_profile="tag:github.com,2022:veraison/ear")),
    ("profile", lambda c: c.pop("eat_profile")),
]


@pytest.mark.parametrize(("what", "change"), BAD_CLAIMS)
def test_bad_claims_are_named(what: str, change: Callable[[dict[str, Any]], None]) -> None:
    claims = _good_claims()
    change(claims)
    token, key = _signed_claims(claims)
    with pytest.raises(MalformedToken, match=what):
        ear.verify(token, key, now=1_700_000_000)


def test_models_are_frozen() -> None:
    result = _result()
    with pytest.raises(FrozenInstanceError):
        result.iat = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        result.submods["other"] = result.submods["module"]  # type: ignore[index]
    extensions = result.submods["module"].extensions
    with pytest.raises(TypeError):
        extensions["ear.veraison.annotated-evidence"]["measurement"] = "ff"


def test_a_status_may_not_be_better_than_its_vector() -> None:
    with pytest.raises(MalformedToken, match="better than its claims"):
        ear.Appraisal(status="affirming", trust_vector=ear.TrustVector(hardware=96))
    # Worse than the vector is allowed: a verifier may be stricter than its claims.
    ear.Appraisal(status="contraindicated", trust_vector=ear.TrustVector(hardware=2))


# --- tiers, status, description ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "tier"),
    [
        (-128, "contraindicated"),
        (-97, "contraindicated"),
        (-96, "warning"),
        (-33, "warning"),
        (-32, "affirming"),
        (-2, "affirming"),
        (-1, "none"),
        (0, "none"),
        (1, "none"),
        (2, "affirming"),
        (31, "affirming"),
        (32, "warning"),
        (95, "warning"),
        (96, "contraindicated"),
        (99, "contraindicated"),
        (127, "contraindicated"),
    ],
)
def test_tier_of(code: int, tier: str) -> None:
    assert ear.tier_of(code) == tier


def test_tier_codes_name_their_own_tier() -> None:
    assert list(ear.TIER_CODES) == list(ear.STATUSES)
    for name, code in ear.TIER_CODES.items():
        assert ear.tier_of(code) == name


@pytest.mark.parametrize("code", [-129, 128, 1000])
def test_tier_of_out_of_range(code: int) -> None:
    with pytest.raises(MalformedToken):
        ear.tier_of(code)


@pytest.mark.parametrize(
    ("vector", "status"),
    [
        ({}, "none"),
        ({"hardware": 2}, "affirming"),
        ({"hardware": 2, "executables": 3, "configuration": 0}, "affirming"),
        ({"hardware": 2, "executables": 33}, "warning"),
        ({"hardware": 2, "executables": 33, "configuration": 99}, "contraindicated"),
        ({"hardware": -1, "executables": 2}, "affirming"),
        ({"sourced_data": -40}, "warning"),
    ],
)
def test_status_from_vector_is_the_worst_tier(vector: dict[str, int], status: str) -> None:
    assert ear.status_from_vector(ear.TrustVector(**vector)) == status


def test_describe(vector: Vector) -> None:
    rows = ear.describe(ear.verify(_jwt(vector, "veraison-ear-affirming"), _ear_key(vector)))
    assert len(rows) == 8
    by_claim = {row.claim: row for row in rows}
    assert by_claim["executables"] == ear.ClaimReport(
        "test", "executables", "affirming", "recognized and approved boot-time"
    )
    assert by_claim["hardware"].meaning == "genuine"
    odd = _result(
        submods={
            "m": ear.Appraisal(
                status="contraindicated", trust_vector=ear.TrustVector(hardware=99, file_system=5)
            )
        }
    )
    meanings = {row.claim: row.meaning for row in ear.describe(odd)}
    assert meanings["hardware"] == "cryptographic validation of the evidence failed"
    assert "no meaning defined" in meanings["file-system"]
    assert meanings["configuration"] == "no claim being made"


# --- fuzzing ----------------------------------------------------------------------------------

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
_JWT_CHARS = st.sampled_from(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ "
)


@FUZZ
@given(data=st.text(max_size=600) | st.text(_JWT_CHARS, max_size=600))
def test_fuzz_arbitrary_text(vector: Vector, data: str) -> None:
    with contextlib.suppress(EvidenceError):
        ear.verify(data, _ear_key(vector), now=1_700_000_000)


@FUZZ
@given(
    which=st.sampled_from(["veraison-ear-affirming", "trustee-ear-cca-expired"]),
    edits=st.lists(st.tuples(st.integers(0, 8192), _JWT_CHARS), min_size=1, max_size=6),
    cut=st.none() | st.integers(0, 8192),
)
def test_fuzz_mutated_vectors(
    vector: Vector, which: str, edits: list[tuple[int, str]], cut: int | None
) -> None:
    data = list(_jwt(vector, which))
    for pos, char in edits:
        data[pos % len(data)] = char
    if cut is not None:
        del data[cut % len(data) :]
    for key in (_ear_key(vector), _trustee_header_key(vector)):
        with contextlib.suppress(EvidenceError):
            ear.verify("".join(data), key, now=1_752_059_200)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-300, 300)
    | st.floats(allow_nan=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


@FUZZ
@given(
    top=st.dictionaries(
        st.sampled_from(
            ["iat", "exp", "nbf", "eat_nonce", "eat_profile", "ear.verifier-id", "submods"]
        ),
        _JSON,
        max_size=3,
    ),
    submod=st.dictionaries(
        st.sampled_from(
            ["ear.status", "ear.trustworthiness-vector", "ear.appraisal-policy-id", "x"]
        ),
        _JSON,
        max_size=3,
    ),
)
def test_fuzz_signed_claims(top: dict[str, Any], submod: dict[str, Any]) -> None:
    # Even a validly signed result with hostile claims only ever raises an EvidenceError.
    claims = _good_claims()
    claims["submods"]["module"].update(submod)
    claims.update(top)
    token, key = _signed_claims(claims)
    with contextlib.suppress(EvidenceError):
        ear.verify(token, key, now=1_700_000_000)


@pytest.mark.parametrize("draft", [1, 2, 3])
def test_ietf_draft_profiles_are_read(draft: int) -> None:
    """draft-ietf-rats-ear-01..-03 results, underscore claim names, read into the one model."""
    key = ec.generate_private_key(ec.SECP256R1())
    nonce = bytes(range(64))
    claims = {
        "eat_profile": f"tag:ietf.org,2026:rats/ear#{draft:02d}",
        "iat": 1_780_315_200,
        "ear_verifier_id": {"developer": "https://veraison-project.org", "build": "vts 0.0.1"},
        "eat_nonce": [ear.encode_nonce(nonce)],
        "submods": {
            "PSA": {
                "ear_status": "contraindicated",
                "ear_trustworthiness_vector": {"instance-identity": 2, "executables": 96},
                "ear_appraisal_policy_ids": ["https://veraison.example/policy/1/60a0068d"],
            }
        },
    }
    token = jwt.encode(claims, key, algorithm="ES256")
    result = ear.verify(token, key.public_key(), now=claims["iat"])
    psa = result.submods["PSA"]
    assert psa.status == "contraindicated"
    assert psa.trust_vector.executables == 96
    assert psa.policy_id == "https://veraison.example/policy/1/60a0068d"
    assert result.verifier_id.build == "vts 0.0.1"
    assert result.nonce is not None and ear.decode_nonce(result.nonce) == nonce
    # A status better than its vector is refused in this spelling too.
    claims["submods"]["PSA"]["ear_status"] = "affirming"
    with pytest.raises(MalformedToken, match="better than its claims"):
        ear.verify(jwt.encode(claims, key, algorithm="ES256"), key.public_key(), now=claims["iat"])


def test_eat_nonce_is_padded_base64url_as_veraison_writes_it() -> None:
    nonce = bytes(range(64))
    text = ear.encode_nonce(nonce)
    assert len(text) == 88 and text.endswith("==")
    # As a strict (padding-requiring) decoder reads it, the one Trustee uses.
    assert base64.urlsafe_b64decode(text) == nonce
    # Results of earlier Veritee versions, unpadded, still read.
    assert ear.decode_nonce(text.rstrip("=")) == nonce
    for bad in ("x" * 7, "not base64!!", text + "=", text[:-3] + "B=="):
        with pytest.raises(MalformedToken):
            ear.decode_nonce(bad)
