"""CCA attestation tokens against the published vectors in tests/vectors/cca.

Each vector is a platform token (CPAK) and a realm token (RAK), bound by the platform challenge
being the hash of the realm public key. The tests show every part verifies, decodes to what its
``*.expected.json`` records, and that each way of breaking a token fails on the right check.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veritee.evidence import cca, cose, psa
from veritee.evidence.errors import BadSignature, BindingMismatch, MalformedToken

Vector = Callable[[str], Path]

VECTORS = [
    ("tfrmm-cca-token", "cca-cpak-pub.pem"),
    ("tfmtools-cca-example-token", "cca-cpak-pub.pem"),
    ("veraison-e2e-cca-evidence", "veraison-e2e-cpak-pub.pem"),
]


def _pem(vector: Vector, name: str) -> ec.EllipticCurvePublicKey:
    key = load_pem_public_key(vector(name).read_bytes())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def _token(vector: Vector, name: str) -> bytes:
    return vector(f"cca/{name}.cbor").read_bytes()


def _expected(vector: Vector, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(vector(f"cca/{name}.expected.json").read_text())
    return data


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def _assert_platform_matches(got: cca.PlatformClaims, expected: dict[str, Any]) -> None:
    want = expected["claims"]
    assert got.algorithm == expected["cose"]["protected"]["1"]
    assert got.profile == want["profile"]
    assert got.challenge.hex() == want["challenge"]
    assert got.implementation_id.hex() == want["implementation_id"]
    assert got.instance_id.hex() == want["instance_id"]
    assert got.config.hex() == want["config"]
    lifecycle = want["security_lifecycle"]
    assert (got.lifecycle.value, got.lifecycle.state, got.lifecycle.sub_state) == (
        lifecycle["value"],
        lifecycle["state"],
        lifecycle["sub_state"],
    )
    assert got.hash_algo == want["hash_algo_id"]
    assert got.verification_service == want.get("verification_service_indicator")
    assert len(got.software_components) == len(want["software_components"])
    for comp, wanted in zip(got.software_components, want["software_components"], strict=True):
        assert comp.measurement_value.hex() == wanted["measurement_value"]
        assert comp.signer_id.hex() == wanted["signer_id"]
        assert comp.measurement_type == wanted.get("measurement_type")
        assert comp.version == wanted.get("version")
        assert comp.measurement_description == wanted.get("measurement_description")


def _assert_realm_matches(got: cca.RealmClaims, expected: dict[str, Any]) -> None:
    want = expected["claims"]
    assert got.algorithm == expected["cose"]["protected"]["1"]
    assert got.profile == want.get("profile")
    assert got.challenge.hex() == want["challenge"]
    assert got.personalization_value.hex() == want["personalization_value"]
    assert _hex(got.instance_id) == want.get("instance_id")
    assert got.initial_measurement.hex() == want["initial_measurement"]
    assert [m.hex() for m in got.extensible_measurements] == want["extensible_measurements"]
    assert got.hash_algo == want["hash_algo_id"]
    assert got.public_key_hash_algo == want["public_key_hash_algo_id"]
    assert got.public_key.hex() == want["public_key"]
    assert got.mec_policy == want.get("mec_policy")


# --- positive vectors -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "key_file"), VECTORS)
def test_vector_verifies_and_matches_expected(vector: Vector, name: str, key_file: str) -> None:
    expected = _expected(vector, name)
    assert expected["platform"]["signature"]["verified"] is True
    assert expected["realm"]["signature"]["verified"] is True
    assert expected["binding"]["holds"] is True
    claims = cca.verify(_token(vector, name), _pem(vector, f"cca/{key_file}"))
    assert claims.collection_tag == expected["outer"]["cbor_tag"]
    _assert_platform_matches(claims.platform, expected["platform"])
    _assert_realm_matches(claims.realm, expected["realm"])
    assert cca.parse(_token(vector, name)) == claims


@pytest.mark.parametrize(("name", "key_file"), VECTORS)
def test_rak_is_the_published_realm_key(vector: Vector, name: str, key_file: str) -> None:
    expected = _expected(vector, name)["realm"]
    rak = cca.realm_key(cca.parse(_token(vector, name)).realm)
    assert isinstance(rak.curve, ec.SECP384R1)
    raw = "raw" in expected["rak_encoding"]
    assert (cca.parse(_token(vector, name)).realm.profile is None) == raw
    rak_file = expected["signature"].get("rak_file")
    if rak_file is not None:
        assert expected["signature"]["same_as_rak_file"] is True
        assert rak == _pem(vector, f"cca/{rak_file}")


def test_tfrmm_rak_is_the_tfmtools_realm_key(vector: Vector) -> None:
    # The README records that the raw TF-RMM RAK is the key of tfmtools-cca-rak-pub.pem.
    rak = cca.realm_key(cca.parse(_token(vector, "tfrmm-cca-token")).realm)
    assert rak == _pem(vector, "cca/tfmtools-cca-rak-pub.pem")


@pytest.mark.parametrize(("name", "key_file"), VECTORS)
def test_binding_is_the_named_hash_of_the_realm_key_bytes(
    vector: Vector, name: str, key_file: str
) -> None:
    claims = cca.parse(_token(vector, name))
    hash_name = claims.realm.public_key_hash_algo
    assert hash_name in _expected(vector, name)["binding"]["rule"]
    digest = hashlib.new(hash_name.replace("-", ""), claims.realm.public_key).digest()
    assert digest == claims.platform.challenge


# --- rebuilding tokens ------------------------------------------------------------------------


def _open(token: bytes) -> tuple[int, bytes, bytes]:
    outer = cbor2.loads(token)
    assert isinstance(outer, cbor2.CBORTag)

    def raw(entry: Any) -> bytes:
        return entry if isinstance(entry, bytes) else entry[1]

    return outer.tag, raw(outer.value[cca.PLATFORM_TOKEN]), raw(outer.value[cca.REALM_TOKEN])


def _collection(tag: int, platform: bytes, realm: bytes) -> bytes:
    def entry(raw: bytes) -> Any:
        return [cca.CMW_CONTENT_FORMAT, raw] if tag == cca.TAG_CMW_COLLECTION else raw

    body = {cca.PLATFORM_TOKEN: entry(platform), cca.REALM_TOKEN: entry(realm)}
    return bytes(cbor2.dumps(cbor2.CBORTag(tag, body)))


def _sign1_parts(raw: bytes) -> list[Any]:
    tagged = cbor2.loads(raw)
    assert isinstance(tagged, cbor2.CBORTag)
    return list(tagged.value)


def _with_claims(raw: bytes, change: Callable[[dict[Any, Any]], None]) -> bytes:
    """The same COSE_Sign1 with its claims changed and its (now wrong) signature kept."""
    protected, unprotected, payload, signature = _sign1_parts(raw)
    claims = cbor2.loads(payload)
    change(claims)
    body = [protected, dict(unprotected), cbor2.dumps(claims), signature]
    return bytes(cbor2.dumps(cbor2.CBORTag(cose.TAG_SIGN1, body)))


def _claims_of(raw: bytes) -> dict[Any, Any]:
    claims: dict[Any, Any] = cbor2.loads(_sign1_parts(raw)[2])
    return claims


def _flip(token: bytes, part: bytes, at: int | None = None) -> bytes:
    start = token.index(part)
    pos = start + (len(part) // 2 if at is None else at % len(part))
    return token[:pos] + bytes([token[pos] ^ 0x01]) + token[pos + 1 :]


def _set(key: int, value: Any) -> Callable[[dict[Any, Any]], None]:
    def change(claims: dict[Any, Any]) -> None:
        claims[key] = value

    return change


def _drop(key: int) -> Callable[[dict[Any, Any]], None]:
    def change(claims: dict[Any, Any]) -> None:
        del claims[key]

    return change


# --- the binding ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "key_file"), VECTORS)
def test_altered_platform_challenge_fails_on_the_platform_signature_first(
    vector: Vector, name: str, key_file: str
) -> None:
    tag, platform, realm = _open(_token(vector, name))
    challenge = _claims_of(platform)[cca.CHALLENGE]
    token = _collection(tag, _flip(platform, challenge), realm)
    # verify() checks the platform signature before anything else the platform says ...
    with pytest.raises(BadSignature, match="CCA platform token: signature does not verify"):
        cca.verify(token, _pem(vector, f"cca/{key_file}"))
    # ... and parse(), which checks no signature, catches the broken binding.
    with pytest.raises(BindingMismatch, match="challenge"):
        cca.parse(token)


def _substitute_rak(token: bytes) -> bytes:
    """Swap in an attacker's RAK (same encoding), re-sign the realm token with it."""
    tag, platform, realm = _open(token)
    attacker = ec.generate_private_key(ec.SECP384R1())
    claims = _claims_of(realm)
    if cca.PROFILE in claims:
        claims[cca.REALM_PUBLIC_KEY] = cbor2.dumps(cose.ec_key_to_cose(attacker.public_key()))
    else:
        claims[cca.REALM_PUBLIC_KEY] = attacker.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    return _collection(tag, platform, cose.sign1(cbor2.dumps(claims), attacker))


@pytest.mark.parametrize(("name", "key_file"), VECTORS)
def test_attacker_rak_with_a_valid_realm_signature_fails_the_binding(
    vector: Vector, name: str, key_file: str
) -> None:
    # Both signatures verify (the RAK is self-asserted); only the binding stops this.
    token = _substitute_rak(_token(vector, name))
    with pytest.raises(BindingMismatch, match="not issued on this platform"):
        cca.verify(token, _pem(vector, f"cca/{key_file}"))
    with pytest.raises(BindingMismatch):
        cca.parse(token)


# --- one byte flipped, the wrong key ----------------------------------------------------------


# Where a payload byte is flipped: a claim that is neither the RAK nor what it binds.
PAYLOAD_FLIPS = {
    "platform": cca.IMPLEMENTATION_ID,
    "realm": cca.REALM_PERSONALIZATION,
}


@pytest.mark.parametrize(("name", "key_file"), VECTORS)
@pytest.mark.parametrize("which", ["platform", "realm"])
@pytest.mark.parametrize("part", ["signature", "payload"])
def test_flipped_byte_fails_on_that_tokens_signature(
    vector: Vector, name: str, key_file: str, which: str, part: str
) -> None:
    tag, platform, realm = _open(_token(vector, name))
    raw = platform if which == "platform" else realm
    signature = _sign1_parts(raw)[3]
    target = signature if part == "signature" else _claims_of(raw)[PAYLOAD_FLIPS[which]]
    if which == "platform":
        token = _collection(tag, _flip(platform, target), realm)
    else:
        token = _collection(tag, platform, _flip(realm, target))
    with pytest.raises(BadSignature, match=f"CCA {which} token"):
        cca.verify(token, _pem(vector, f"cca/{key_file}"))


@pytest.mark.parametrize(("name", "key_file"), VECTORS)
def test_flipped_rak_byte_fails_before_any_realm_signature_check(
    vector: Vector, name: str, key_file: str
) -> None:
    # The RAK must be decoded to check the realm signature; a flipped coordinate byte takes
    # it off the curve, so the token is malformed rather than badly signed.
    tag, platform, realm = _open(_token(vector, name))
    rak = _claims_of(realm)[cca.REALM_PUBLIC_KEY]
    token = _collection(tag, platform, _flip(realm, rak, -1))
    with pytest.raises(MalformedToken, match="point on"):
        cca.verify(token, _pem(vector, f"cca/{key_file}"))


@pytest.mark.parametrize(("name", "key_file"), VECTORS)
@pytest.mark.parametrize("which", ["platform", "realm"])
def test_flipped_protected_header_byte_fails(
    vector: Vector, name: str, key_file: str, which: str
) -> None:
    tag, platform, realm = _open(_token(vector, name))
    protected = _sign1_parts(platform if which == "platform" else realm)[0]
    if which == "platform":
        token = _collection(tag, _flip(platform, protected, -1), realm)
    else:
        token = _collection(tag, platform, _flip(realm, protected, -1))
    with pytest.raises(BadSignature, match=f"CCA {which} token"):
        cca.verify(token, _pem(vector, f"cca/{key_file}"))


@pytest.mark.parametrize(
    ("name", "wrong_key"),
    [
        ("tfrmm-cca-token", "cca/veraison-e2e-cpak-pub.pem"),  # P-256 key, ES384 token
        ("veraison-e2e-cca-evidence", "cca/cca-cpak-pub.pem"),  # P-384 key, ES256 token
        ("tfmtools-cca-example-token", "cca/tfmtools-cca-rak-pub.pem"),  # the RAK is no CPAK
        ("veraison-e2e-cca-evidence", "psa/tfm-iak-pub.pem"),  # right curve, wrong key
    ],
)
def test_wrong_platform_key_fails(vector: Vector, name: str, wrong_key: str) -> None:
    with pytest.raises(BadSignature, match="CCA platform token"):
        cca.verify(_token(vector, name), _pem(vector, wrong_key))


def test_psa_and_cca_tokens_are_not_mistaken_for_each_other(vector: Vector) -> None:
    with pytest.raises(MalformedToken):
        cca.parse(vector("psa/tfm-psa-2_0_0-sign1.cbor").read_bytes())
    with pytest.raises(MalformedToken):
        psa.parse(_token(vector, "tfrmm-cca-token"))
    _, platform, _ = _open(_token(vector, "tfrmm-cca-token"))
    with pytest.raises(BadSignature):  # a CCA platform token is not a PSA token (ES384)
        psa.parse(platform)


# --- malformed collections --------------------------------------------------------------------


def _mangled(vector: Vector) -> dict[str, bytes]:
    token = _token(vector, "tfmtools-cca-example-token")
    tag, platform, realm = _open(token)
    cmw = cca.TAG_CMW_COLLECTION
    return {
        "empty": b"",
        "truncated": token[: len(token) // 2],
        "minus-last-byte": token[:-1],
        "garbage": b"\xfe\xed\xfa\xce",
        "untagged": cbor2.dumps({cca.PLATFORM_TOKEN: platform, cca.REALM_TOKEN: realm}),
        "wrong-tag": cbor2.dumps(cbor2.CBORTag(398, {cca.PLATFORM_TOKEN: platform})),
        "not-a-map": cbor2.dumps(cbor2.CBORTag(cca.TAG_EAT_COLLECTION, [platform, realm])),
        "no-realm": cbor2.dumps(
            cbor2.CBORTag(cca.TAG_EAT_COLLECTION, {cca.PLATFORM_TOKEN: platform})
        ),
        "no-platform": cbor2.dumps(cbor2.CBORTag(cca.TAG_EAT_COLLECTION, {cca.REALM_TOKEN: realm})),
        "bare-entries-in-907": cbor2.dumps(
            cbor2.CBORTag(cmw, {cca.PLATFORM_TOKEN: platform, cca.REALM_TOKEN: realm})
        ),
        "records-in-399": cbor2.dumps(
            cbor2.CBORTag(
                cca.TAG_EAT_COLLECTION,
                {cca.PLATFORM_TOKEN: [263, platform], cca.REALM_TOKEN: [263, realm]},
            )
        ),
        "wrong-content-format": cbor2.dumps(
            cbor2.CBORTag(cmw, {cca.PLATFORM_TOKEN: [262, platform], cca.REALM_TOKEN: [263, realm]})
        ),
        "platform-not-cose": _collection(tag, cbor2.dumps({1: 2}), realm),
        "realm-truncated": _collection(tag, platform, realm[:-10]),
        "realm-is-mac0": _collection(
            tag, platform, cbor2.dumps(cbor2.CBORTag(cose.TAG_MAC0, _sign1_parts(realm)))
        ),
        "oversized": b"\x00" * (cose.MAX_TOKEN_BYTES + 1),
    }


@pytest.mark.parametrize(
    "case",
    [
        "empty",
        "truncated",
        "minus-last-byte",
        "garbage",
        "untagged",
        "wrong-tag",
        "not-a-map",
        "no-realm",
        "no-platform",
        "bare-entries-in-907",
        "records-in-399",
        "wrong-content-format",
        "platform-not-cose",
        "realm-truncated",
        "realm-is-mac0",
        "oversized",
    ],
)
def test_malformed_collection_fails_as_malformed(vector: Vector, case: str) -> None:
    token = _mangled(vector)[case]
    with pytest.raises(MalformedToken):
        cca.parse(token)
    with pytest.raises(MalformedToken):
        cca.verify(token, _pem(vector, "cca/cca-cpak-pub.pem"))


# --- claim validation (parse: the binding is kept, signatures are not checked) ----------------

PLATFORM_BAD = [
    ("profile", _set(cca.PROFILE, "http://arm.com/psa/2.0.0")),
    ("profile", _drop(cca.PROFILE)),
    ("implementation id", _set(cca.IMPLEMENTATION_ID, b"\x00" * 16)),
    ("instance id", _set(cca.INSTANCE_ID, b"\x00" * 33)),
    ("config", _set(cca.PLATFORM_CONFIG, b"")),
    ("config", _drop(cca.PLATFORM_CONFIG)),
    ("security lifecycle", _set(cca.SECURITY_LIFECYCLE, 0x9000)),
    ("hash algorithm", _set(cca.PLATFORM_HASH_ALGO, "sha256")),
    ("software components", _set(cca.SW_COMPONENTS, [])),
    ("signer id", _set(cca.SW_COMPONENTS, [{2: b"\x00" * 32}])),
    ("verification service", _set(cca.VERIFICATION_SERVICE, b"bytes")),
    ("challenge", _set(cca.CHALLENGE, b"\x00" * 33)),
]


@pytest.mark.parametrize(("claim", "change"), PLATFORM_BAD)
def test_bad_platform_claim_is_named(
    vector: Vector, claim: str, change: Callable[[dict[Any, Any]], None]
) -> None:
    tag, platform, realm = _open(_token(vector, "tfmtools-cca-example-token"))
    with pytest.raises(MalformedToken, match=f"^CCA platform token: claim .*'{claim}'"):
        cca.parse(_collection(tag, _with_claims(platform, change), realm))


REALM_BAD = [
    ("challenge", _set(cca.CHALLENGE, b"\x00" * 32)),
    ("personalization value", _set(cca.REALM_PERSONALIZATION, b"\x00" * 63)),
    ("initial measurement", _set(cca.REALM_INITIAL_MEASUREMENT, b"\x00" * 20)),
    ("extensible measurements", _set(cca.REALM_EXTENSIBLE_MEASUREMENTS, [b"\x00" * 32] * 3)),
    ("extensible measurements", _set(cca.REALM_EXTENSIBLE_MEASUREMENTS, [b"\x00" * 31] * 4)),
    ("hash algorithm", _set(cca.REALM_HASH_ALGO, "")),
    ("public key hash algorithm", _set(cca.REALM_PUBLIC_KEY_HASH_ALGO, "sha-1")),
    ("public key hash algorithm", _drop(cca.REALM_PUBLIC_KEY_HASH_ALGO)),
    ("public key", _set(cca.REALM_PUBLIC_KEY, b"\x04" + b"\x00" * 96)),
    ("public key", _set(cca.REALM_PUBLIC_KEY, cbor2.dumps({1: 2, -1: [1]}))),
    ("public key", _drop(cca.REALM_PUBLIC_KEY)),
    ("profile", _set(cca.PROFILE, "tag:arm.com,2099:realm#9.0.0")),
    ("instance id", _set(cca.INSTANCE_ID, b"\x01" * 10)),
    ("MEC policy", _set(cca.REALM_MEC_POLICY, 2)),
]


@pytest.mark.parametrize(("claim", "change"), REALM_BAD)
def test_bad_realm_claim_is_named(
    vector: Vector, claim: str, change: Callable[[dict[Any, Any]], None]
) -> None:
    tag, platform, realm = _open(_token(vector, "tfmtools-cca-example-token"))
    with pytest.raises(MalformedToken, match=claim):
        cca.parse(_collection(tag, platform, _with_claims(realm, change)))


def test_legacy_raw_rak_must_be_a_p384_point(vector: Vector) -> None:
    tag, platform, realm = _open(_token(vector, "tfrmm-cca-token"))
    not_on_curve = b"\x04" + b"\x01" * 96
    broken = _with_claims(realm, _set(cca.REALM_PUBLIC_KEY, not_on_curve))
    with pytest.raises(MalformedToken, match="not a point on P-384"):
        cca.parse(_collection(tag, platform, broken))
    cose_key = cbor2.dumps(
        cose.ec_key_to_cose(cca.realm_key(cca.parse(_token(vector, "tfrmm-cca-token")).realm))
    )
    broken = _with_claims(realm, _set(cca.REALM_PUBLIC_KEY, cose_key))
    with pytest.raises(MalformedToken, match="uncompressed P-384 point"):
        cca.parse(_collection(tag, platform, broken))


# --- fresh tokens: our own CPAK and RAK, every binding hash, both collection forms -------------


def _fresh_token(
    tag: int, binding_hash: str, platform_curve: ec.EllipticCurve
) -> tuple[bytes, ec.EllipticCurvePublicKey]:
    cpak = ec.generate_private_key(platform_curve)
    rak = ec.generate_private_key(ec.SECP384R1())
    rak_bytes = cbor2.dumps(cose.ec_key_to_cose(rak.public_key()))
    realm_claims = {
        cca.PROFILE: cca.PROFILE_REALM_1,
        cca.CHALLENGE: b"\x11" * 64,
        cca.REALM_PERSONALIZATION: b"\x22" * 64,
        cca.REALM_INITIAL_MEASUREMENT: b"\x33" * 48,
        cca.REALM_EXTENSIBLE_MEASUREMENTS: [b"\x44" * 48] * 4,
        cca.REALM_HASH_ALGO: "sha-384",
        cca.REALM_PUBLIC_KEY: rak_bytes,
        cca.REALM_PUBLIC_KEY_HASH_ALGO: binding_hash,
    }
    platform_claims = {
        cca.PROFILE: cca.PROFILE_PLATFORM,
        cca.CHALLENGE: hashlib.new(binding_hash.replace("-", ""), rak_bytes).digest(),
        cca.IMPLEMENTATION_ID: b"\x55" * 32,
        cca.INSTANCE_ID: b"\x01" + b"\x66" * 32,
        cca.PLATFORM_CONFIG: b"\x77",
        cca.SECURITY_LIFECYCLE: 0x3000,
        cca.PLATFORM_HASH_ALGO: "sha-256",
        cca.SW_COMPONENTS: [{1: "BL", 2: b"\x88" * 32, 5: b"\x99" * 32}],
    }
    platform = cose.sign1(cbor2.dumps(platform_claims), cpak)
    realm = cose.sign1(cbor2.dumps(realm_claims), rak)
    return _collection(tag, platform, realm), cpak.public_key()


@pytest.mark.parametrize("tag", [cca.TAG_EAT_COLLECTION, cca.TAG_CMW_COLLECTION])
@pytest.mark.parametrize("binding_hash", sorted(cca.BINDING_HASHES))
@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1()], ids=["ES256", "ES384"])
def test_fresh_token_verifies(tag: int, binding_hash: str, curve: ec.EllipticCurve) -> None:
    token, cpak = _fresh_token(tag, binding_hash, curve)
    claims = cca.verify(token, cpak)
    assert claims.collection_tag == tag
    assert claims.realm.public_key_hash_algo == binding_hash
    assert claims.platform.lifecycle.state == "secured"
    assert claims.realm.instance_id is None and claims.realm.mec_policy is None


def test_cca_lifecycle_names() -> None:
    assert cca.CCA_LIFECYCLE_STATES[0x2000] == "cca-platform-rot-provisioning"
    assert cca.CCA_LIFECYCLE_STATES[0x4000] == "non-cca-platform-rot-debug"
    assert set(cca.CCA_LIFECYCLE_STATES) == set(psa.PSA_LIFECYCLE_STATES)


# --- fuzzing ----------------------------------------------------------------------------------

ESCAPES: tuple[type[Exception], ...] = (MalformedToken, BadSignature, BindingMismatch)
FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _run_all(data: bytes, key: ec.EllipticCurvePublicKey) -> None:
    calls: tuple[Callable[[], object], ...] = (
        lambda: cca.parse(data),
        lambda: cca.verify(data, key),
    )
    for call in calls:
        with contextlib.suppress(*ESCAPES):
            call()


@FUZZ
@given(data=st.binary(max_size=2048))
def test_fuzz_arbitrary_bytes(vector: Vector, data: bytes) -> None:
    _run_all(data, _pem(vector, "cca/cca-cpak-pub.pem"))


@FUZZ
@given(
    which=st.sampled_from(VECTORS),
    edits=st.lists(st.tuples(st.integers(0, 8192), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.none() | st.integers(0, 8192),
)
def test_fuzz_mutated_vectors(
    vector: Vector, which: tuple[str, str], edits: list[tuple[int, int]], cut: int | None
) -> None:
    name, key_file = which
    data = bytearray(_token(vector, name))
    for pos, byte in edits:
        data[pos % len(data)] = byte
    if cut is not None:
        del data[cut % len(data) :]
    _run_all(bytes(data), _pem(vector, f"cca/{key_file}"))


_CBOR = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.binary(max_size=100)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.integers(-4, 4), inner, max_size=4)
    ),
    max_leaves=12,
)
_REALM_KEYS = st.sampled_from(
    [
        cca.CHALLENGE,
        cca.PROFILE,
        cca.INSTANCE_ID,
        cca.REALM_PERSONALIZATION,
        cca.REALM_HASH_ALGO,
        cca.REALM_PUBLIC_KEY,
        cca.REALM_INITIAL_MEASUREMENT,
        cca.REALM_EXTENSIBLE_MEASUREMENTS,
        cca.REALM_PUBLIC_KEY_HASH_ALGO,
        cca.REALM_MEC_POLICY,
    ]
)
_PLATFORM_KEYS = st.sampled_from(
    [
        cca.CHALLENGE,
        cca.PROFILE,
        cca.INSTANCE_ID,
        cca.IMPLEMENTATION_ID,
        cca.SECURITY_LIFECYCLE,
        cca.SW_COMPONENTS,
        cca.VERIFICATION_SERVICE,
        cca.PLATFORM_CONFIG,
        cca.PLATFORM_HASH_ALGO,
    ]
)


@FUZZ
@given(
    which=st.sampled_from(VECTORS),
    platform_changes=st.dictionaries(_PLATFORM_KEYS, _CBOR, max_size=3),
    realm_changes=st.dictionaries(_REALM_KEYS, _CBOR, max_size=3),
)
def test_fuzz_claim_values(
    vector: Vector,
    which: tuple[str, str],
    platform_changes: dict[int, Any],
    realm_changes: dict[int, Any],
) -> None:
    name, key_file = which
    tag, platform, realm = _open(_token(vector, name))
    token = _collection(
        tag,
        _with_claims(platform, lambda c: c.update(platform_changes)),
        _with_claims(realm, lambda c: c.update(realm_changes)),
    )
    _run_all(token, _pem(vector, f"cca/{key_file}"))
