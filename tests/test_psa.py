"""PSA attestation tokens against the published vectors in tests/vectors/psa.

Positive vectors must verify and decode to exactly what their ``*.expected.json`` records;
every tampering must fail with the one exception that names the failed check.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veritee.errors import UsageError
from veritee.evidence import cose, psa
from veritee.evidence.errors import BadSignature, BindingMismatch, MalformedToken

Vector = Callable[[str], Path]

# (token, key file, parse with allow_unknown_profile): the tfmtools ones carry the placeholder
# profile "http://example.com" and serve as signature/MAC tests only.
SIGN1 = [
    ("tfm-psa-2_0_0-sign1", "tfm-iak-pub.pem", False),
    ("tfm-psa-iot-1-sign1", "tfm-iak-pub.pem", False),
    ("veraison-e2e-psa-evidence", "veraison-e2e-iak-pub.pem", False),
    ("tfmtools-iat-p1-sign1", "tfmtools-iak-pub.pem", True),
]
MAC0 = ("tfmtools-iat-p1-mac0", "tfmtools-hmac-key.hex", True)
ALL = [*SIGN1, MAC0]


def _key(vector: Vector, name: str) -> ec.EllipticCurvePublicKey | bytes:
    path = vector(f"psa/{name}")
    if name.endswith(".hex"):
        return bytes.fromhex(path.read_text().strip())
    key = load_pem_public_key(path.read_bytes())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def _token(vector: Vector, name: str) -> bytes:
    return vector(f"psa/{name}.cbor").read_bytes()


def _expected(vector: Vector, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(vector(f"psa/{name}.expected.json").read_text())
    return data


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def _assert_claims_match(claims: psa.PsaClaims, expected: dict[str, Any]) -> None:
    """Compare field by field with the expected JSON (absent optional claims are None)."""
    want = expected["claims"]
    assert claims.profile == want["profile"]
    assert claims.algorithm == expected["cose"]["protected"]["1"]
    assert claims.nonce.hex() == want["nonce"]
    assert claims.instance_id.hex() == want["instance_id"]
    assert claims.implementation_id.hex() == want["implementation_id"]
    assert claims.client_id == want["client_id"]
    assert _hex(claims.boot_seed) == want.get("boot_seed")
    lifecycle = want["security_lifecycle"]
    assert claims.lifecycle.value == lifecycle["value"]
    assert claims.lifecycle.state == lifecycle["state"]
    assert claims.lifecycle.sub_state == lifecycle["sub_state"]
    # P1 calls the EAN-13 number "hardware version"; PSA 2.0.0 "certification reference".
    reference = want.get("certification_reference", want.get("hardware_version"))
    assert claims.certification_reference == reference
    assert claims.verification_service == want.get("verification_service_indicator")
    assert len(claims.software_components) == len(want["software_components"])
    for got, comp in zip(claims.software_components, want["software_components"], strict=True):
        assert got.measurement_value.hex() == comp["measurement_value"]
        assert got.signer_id.hex() == comp["signer_id"]
        assert got.measurement_type == comp.get("measurement_type")
        assert got.version == comp.get("version")
        assert got.measurement_description == comp.get("measurement_description")


# --- positive vectors -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "key_file", "allow"), ALL)
def test_vector_verifies_and_matches_expected(
    vector: Vector, name: str, key_file: str, allow: bool
) -> None:
    expected = _expected(vector, name)
    assert expected["signature"]["verified"] is True
    claims = psa.verify(_token(vector, name), _key(vector, key_file), allow_unknown_profile=allow)
    _assert_claims_match(claims, expected)
    # parse() reads the same claims without the key.
    assert psa.parse(_token(vector, name), allow_unknown_profile=allow) == claims


@pytest.mark.parametrize(("name", "key_file", "allow"), SIGN1)
def test_instance_id_is_derived_from_the_key_where_the_vector_says_so(
    vector: Vector, name: str, key_file: str, allow: bool
) -> None:
    expected = _expected(vector, name)
    check = "instance_id == 0x01 || sha256(uncompressed IAK point)"
    key = _key(vector, key_file)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    claims = psa.parse(_token(vector, name), allow_unknown_profile=allow)
    if expected.get("checks", {}).get(check):
        assert psa.instance_id_of(key) == claims.instance_id
    else:
        # Not recorded either way: the derivation is TF-M's, not a rule of the format.
        assert len(psa.instance_id_of(key)) == psa.INSTANCE_ID_BYTES


def test_claim_sets_are_told_apart_by_their_keys(vector: Vector) -> None:
    p2 = psa.parse(_token(vector, "tfm-psa-2_0_0-sign1"))
    p1 = psa.parse(_token(vector, "tfm-psa-iot-1-sign1"))
    assert (p2.claim_set, p1.claim_set) == (psa.CLAIM_SET_P2, psa.CLAIM_SET_P1)
    # Same device, same key, two encodings: only the SPE measurement differs.
    assert (p1.nonce, p1.instance_id, p1.client_id) == (p2.nonce, p2.instance_id, p2.client_id)
    assert p1.software_components[1] == p2.software_components[1]
    assert p1.software_components[0] != p2.software_components[0]


def test_placeholder_profile_is_refused_unless_allowed(vector: Vector) -> None:
    token = _token(vector, "tfmtools-iat-p1-sign1")
    with pytest.raises(MalformedToken, match=re.escape("claim 'profile' is 'http://example.com'")):
        psa.parse(token)
    with pytest.raises(MalformedToken, match="profile"):
        psa.verify(token, _key(vector, "tfmtools-iak-pub.pem"))
    assert psa.parse(token, allow_unknown_profile=True).profile == "http://example.com"


def test_claims_are_frozen(vector: Vector) -> None:
    claims = psa.parse(_token(vector, "tfm-psa-2_0_0-sign1"))
    with pytest.raises(AttributeError):
        claims.nonce = b"\x00" * 32  # type: ignore[misc]
    assert isinstance(claims.software_components, tuple)
    hash(claims)  # frozen and built of immutable parts


# --- tampering: one byte, the wrong key, bad CBOR ---------------------------------------------


def _parts(token: bytes) -> tuple[int, list[Any]]:
    tagged = cbor2.loads(token)
    assert isinstance(tagged, cbor2.CBORTag)
    return tagged.tag, list(tagged.value)


def _flip(token: bytes, part: bytes, at: int | None = None) -> bytes:
    """Flip one byte of ``part`` where it sits in ``token`` (middle byte by default)."""
    start = token.index(part)
    pos = start + (len(part) // 2 if at is None else at % len(part))
    return token[:pos] + bytes([token[pos] ^ 0x01]) + token[pos + 1 :]


@pytest.mark.parametrize(("name", "key_file", "allow"), ALL)
def test_flipped_signature_byte_fails(
    vector: Vector, name: str, key_file: str, allow: bool
) -> None:
    token = _token(vector, name)
    _, (_, _, _, signature) = _parts(token)
    for at in (0, len(signature) // 2, -1):
        with pytest.raises(BadSignature):
            psa.verify(
                _flip(token, signature, at), _key(vector, key_file), allow_unknown_profile=allow
            )


@pytest.mark.parametrize(("name", "key_file", "allow"), ALL)
def test_flipped_payload_byte_fails(vector: Vector, name: str, key_file: str, allow: bool) -> None:
    token = _token(vector, name)
    _, (_, _, payload, _) = _parts(token)
    for at in (1, len(payload) // 2, -1):
        with pytest.raises(BadSignature):
            psa.verify(
                _flip(token, payload, at), _key(vector, key_file), allow_unknown_profile=allow
            )


@pytest.mark.parametrize(("name", "key_file", "allow"), ALL)
def test_flipped_protected_header_byte_fails(
    vector: Vector, name: str, key_file: str, allow: bool
) -> None:
    token = _token(vector, name)
    _, (protected, _, _, _) = _parts(token)
    # The last byte is the alg value: -7 (0x26) becomes -8 (0x27); HMAC 5 becomes 4.
    with pytest.raises(BadSignature, match="not accepted"):
        psa.verify(_flip(token, protected, -1), _key(vector, key_file), allow_unknown_profile=allow)


@pytest.mark.parametrize(("name", "key_file", "allow"), SIGN1)
def test_protected_header_is_signed_as_bytes_not_as_meaning(
    vector: Vector, name: str, key_file: str, allow: bool
) -> None:
    # Same alg (-7), encoded in two bytes instead of one: the Sig_structure changes.
    tag, (_, unprotected, payload, signature) = _parts(_token(vector, name))
    reencoded = bytes.fromhex("a1013806")
    assert cbor2.loads(reencoded) == {1: -7}
    token = cbor2.dumps(cbor2.CBORTag(tag, [reencoded, dict(unprotected), payload, signature]))
    with pytest.raises(BadSignature, match="does not verify"):
        psa.verify(token, _key(vector, key_file), allow_unknown_profile=allow)


def test_changed_nonce_fails(vector: Vector) -> None:
    token = _token(vector, "tfm-psa-2_0_0-sign1")
    nonce = psa.parse(token).nonce
    with pytest.raises(BadSignature):
        psa.verify(_flip(token, nonce), _key(vector, "tfm-iak-pub.pem"))


@pytest.mark.parametrize(("name", "key_file", "allow"), SIGN1)
def test_cca_platform_key_does_not_verify_a_psa_token(
    vector: Vector, name: str, key_file: str, allow: bool
) -> None:
    cpak = load_pem_public_key(vector("cca/cca-cpak-pub.pem").read_bytes())
    assert isinstance(cpak, ec.EllipticCurvePublicKey)
    with pytest.raises(BadSignature):
        psa.verify(_token(vector, name), cpak, allow_unknown_profile=allow)


def test_another_p256_key_does_not_verify(vector: Vector) -> None:
    with pytest.raises(BadSignature, match="does not verify"):
        psa.verify(_token(vector, "tfm-psa-2_0_0-sign1"), _key(vector, "veraison-e2e-iak-pub.pem"))


def test_mac_with_the_wrong_key_or_kind_of_key_fails(vector: Vector) -> None:
    token = _token(vector, "tfmtools-iat-p1-mac0")
    good = _key(vector, "tfmtools-hmac-key.hex")
    assert isinstance(good, bytes)
    wrong = bytes(b ^ 0xFF for b in good)
    with pytest.raises(BadSignature, match="MAC does not verify"):
        psa.verify(token, wrong, allow_unknown_profile=True)
    with pytest.raises(BadSignature):
        psa.verify(token, _key(vector, "tfmtools-iak-pub.pem"), allow_unknown_profile=True)
    with pytest.raises(BadSignature):  # a signed token never passes as MAC'd
        psa.verify(_token(vector, "tfmtools-iat-p1-sign1"), good, allow_unknown_profile=True)
    with pytest.raises(UsageError, match="HMAC key"):
        psa.verify(token, good[:16], allow_unknown_profile=True)


MANGLED = {
    "empty": lambda t: b"",
    "one-byte": lambda t: t[:1],
    "half": lambda t: t[: len(t) // 2],
    "minus-last-byte": lambda t: t[:-1],
    "garbage": lambda t: b"\xff\x00garbage",
    "not-cose": lambda t: cbor2.dumps({1: 2}),
    "wrong-tag": lambda t: cbor2.dumps(cbor2.CBORTag(99, [b"", {}, b"", b""])),
    "three-elements": lambda t: cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b""])),
    "no-alg": lambda t: cbor2.dumps(cbor2.CBORTag(18, [b"\xa0", {}, t, b"\x00" * 64])),
    "detached-payload": lambda t: cbor2.dumps(
        cbor2.CBORTag(18, [b"\xa1\x01\x26", {}, None, b"\x00" * 64])
    ),
    "oversized": lambda t: b"\x00" * (cose.MAX_TOKEN_BYTES + 1),
}


@pytest.mark.parametrize("mangle", MANGLED.values(), ids=MANGLED.keys())
def test_malformed_input_fails_as_malformed(
    vector: Vector, mangle: Callable[[bytes], bytes]
) -> None:
    token = mangle(_token(vector, "tfm-psa-2_0_0-sign1"))
    with pytest.raises(MalformedToken):
        psa.parse(token)
    with pytest.raises(MalformedToken):
        psa.verify(token, _key(vector, "tfm-iak-pub.pem"))


@pytest.mark.parametrize("payload", [b"\xa0", b"\x80", b"\xff", b"\xa1\x0a"])
def test_bad_payload_fails_parse_as_malformed_and_verify_on_the_signature(
    vector: Vector, payload: bytes
) -> None:
    # verify() never reads claims it has not authenticated: the signature fails first.
    token = cbor2.dumps(cbor2.CBORTag(18, [b"\xa1\x01\x26", {}, payload, b"\x00" * 64]))
    with pytest.raises(MalformedToken):
        psa.parse(token)
    with pytest.raises(BadSignature):
        psa.verify(token, _key(vector, "tfm-iak-pub.pem"))


# --- claim validation (parse: no key needed, the claims are rebuilt) ---------------------------


def _with_claims(token: bytes, change: Callable[[dict[Any, Any]], None]) -> bytes:
    tag, (protected, unprotected, payload, signature) = _parts(token)
    claims = cbor2.loads(payload)
    change(claims)
    body = [protected, dict(unprotected), cbor2.dumps(claims), signature]
    return bytes(cbor2.dumps(cbor2.CBORTag(tag, body)))


def _set(key: int, value: Any) -> Callable[[dict[Any, Any]], None]:
    def change(claims: dict[Any, Any]) -> None:
        claims[key] = value

    return change


def _drop(key: int) -> Callable[[dict[Any, Any]], None]:
    def change(claims: dict[Any, Any]) -> None:
        del claims[key]

    return change


def _component(index: int, field: int, value: Any) -> Callable[[dict[Any, Any]], None]:
    def change(claims: dict[Any, Any]) -> None:
        components = claims[psa.SW_COMPONENTS]
        if value is None:
            del components[index][field]
        else:
            components[index][field] = value

    return change


P2_BAD = [
    ("nonce", _set(psa.NONCE, b"\x00" * 31)),
    ("nonce", _set(psa.NONCE, "text")),
    ("nonce", _drop(psa.NONCE)),
    ("instance id", _set(psa.INSTANCE_ID, b"\x02" + b"\x00" * 32)),
    ("instance id", _set(psa.INSTANCE_ID, b"\x01" * 32)),
    ("implementation id", _set(psa.IMPLEMENTATION_ID, b"\xaa" * 31)),
    ("client id", _set(psa.CLIENT_ID, True)),
    ("client id", _set(psa.CLIENT_ID, 2**31)),
    ("client id", _set(psa.CLIENT_ID, "3002")),
    ("security lifecycle", _set(psa.SECURITY_LIFECYCLE, 0x7000)),
    ("security lifecycle", _set(psa.SECURITY_LIFECYCLE, 0x1100)),
    ("security lifecycle", _set(psa.SECURITY_LIFECYCLE, 0x10000)),
    ("security lifecycle", _set(psa.SECURITY_LIFECYCLE, -1)),
    ("boot seed", _set(psa.BOOT_SEED, b"\x00" * 7)),
    ("boot seed", _set(psa.BOOT_SEED, b"\x00" * 33)),
    ("certification reference", _set(psa.CERTIFICATION_REFERENCE, "0604565272829")),
    ("verification service", _set(psa.VERIFICATION_SERVICE, "")),
    ("verification service", _set(psa.VERIFICATION_SERVICE, "x" * (psa.MAX_TEXT_CHARS + 1))),
    ("software components", _set(psa.SW_COMPONENTS, [])),
    ("software components", _set(psa.SW_COMPONENTS, {})),
    ("software components", _set(psa.SW_COMPONENTS, [{2: b"\x00" * 32, 5: b"\x00" * 32}] * 129)),
    ("software components", _drop(psa.SW_COMPONENTS)),
    ("signer id", _component(0, 5, None)),
    ("measurement value", _component(1, 2, b"\x00" * 20)),
    ("version", _component(0, 4, 1)),
    ("profile", _set(psa.PROFILE, "http://arm.com/psa/1.0.0")),
    ("profile", _set(psa.PROFILE, 265)),
    ("mixes", _set(psa.P1_NONCE, b"\x00" * 32)),
]


@pytest.mark.parametrize(("claim", "change"), P2_BAD)
def test_bad_p2_claim_is_named(
    vector: Vector, claim: str, change: Callable[[dict[Any, Any]], None]
) -> None:
    token = _with_claims(_token(vector, "tfm-psa-2_0_0-sign1"), change)
    with pytest.raises(MalformedToken, match=claim):
        psa.parse(token)


P1_BAD = [
    ("nonce", _set(psa.P1_NONCE, b"\x00" * 16)),
    ("boot seed", _set(psa.P1_BOOT_SEED, b"\x00" * 16)),
    ("boot seed", _drop(psa.P1_BOOT_SEED)),
    ("hardware version", _set(psa.P1_HARDWARE_VERSION, "06045652728")),
    ("instance id", _set(psa.P1_INSTANCE_ID, b"")),
    ("exactly one", _set(psa.P1_NO_SW_MEASUREMENTS, 1)),
    ("exactly one", _drop(psa.P1_SW_COMPONENTS)),
    ("profile", _set(psa.P1_PROFILE, "PSA_IOT_PROFILE_2")),
]


@pytest.mark.parametrize(("claim", "change"), P1_BAD)
def test_bad_p1_claim_is_named(
    vector: Vector, claim: str, change: Callable[[dict[Any, Any]], None]
) -> None:
    token = _with_claims(_token(vector, "tfm-psa-iot-1-sign1"), change)
    with pytest.raises(MalformedToken, match=claim):
        psa.parse(token)


def test_no_psa_claims_at_all(vector: Vector) -> None:
    token = _with_claims(_token(vector, "tfm-psa-2_0_0-sign1"), lambda c: c.clear())
    with pytest.raises(MalformedToken, match="no PSA claims"):
        psa.parse(token)


@pytest.mark.parametrize(
    ("value", "state", "sub_state"),
    [
        (0x0000, "unknown", 0),
        (0x00FF, "unknown", 0xFF),
        (0x1000, "assembly-and-test", 0),
        (0x2001, "psa-rot-provisioning", 1),
        (0x30FF, "secured", 0xFF),
        (0x4000, "non-psa-rot-debug", 0),
        (0x5002, "recoverable-psa-rot-debug", 2),
        (0x6000, "decommissioned", 0),
    ],
)
def test_lifecycle_states(vector: Vector, value: int, state: str, sub_state: int) -> None:
    token = _with_claims(_token(vector, "tfm-psa-2_0_0-sign1"), _set(psa.SECURITY_LIFECYCLE, value))
    lifecycle = psa.parse(token).lifecycle
    assert (lifecycle.value, lifecycle.state, lifecycle.sub_state) == (value, state, sub_state)


def _resign(
    token: bytes, change: Callable[[dict[Any, Any]], None]
) -> tuple[bytes, ec.EllipticCurvePublicKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    _, (_, _, payload, _) = _parts(token)
    claims = cbor2.loads(payload)
    change(claims)
    return cose.sign1(cbor2.dumps(claims), key), key.public_key()


def test_p1_without_software_measurements_verifies(vector: Vector) -> None:
    def no_measurements(claims: dict[Any, Any]) -> None:
        del claims[psa.P1_SW_COMPONENTS]
        claims[psa.P1_NO_SW_MEASUREMENTS] = 1

    token, key = _resign(_token(vector, "tfm-psa-iot-1-sign1"), no_measurements)
    assert psa.verify(token, key).software_components == ()


def test_rfc9783_profile_and_optional_claims(vector: Vector) -> None:
    def rfc9783_minimal(claims: dict[Any, Any]) -> None:
        claims[psa.PROFILE] = psa.PROFILE_PSA_RFC9783
        for key in (psa.BOOT_SEED, psa.CERTIFICATION_REFERENCE, psa.VERIFICATION_SERVICE):
            del claims[key]

    token, key = _resign(_token(vector, "tfm-psa-2_0_0-sign1"), rfc9783_minimal)
    claims = psa.verify(token, key)
    assert claims.profile == psa.PROFILE_PSA_RFC9783
    assert (claims.boot_seed, claims.certification_reference, claims.verification_service) == (
        None,
        None,
        None,
    )


def test_es384_is_not_accepted_for_psa(vector: Vector) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    _, (_, _, payload, _) = _parts(_token(vector, "tfm-psa-2_0_0-sign1"))
    token = cose.sign1(payload, key)
    with pytest.raises(BadSignature, match="not accepted"):
        psa.verify(token, key.public_key())


# --- fuzzing: nothing but MalformedToken / BadSignature / BindingMismatch escapes --------------

ESCAPES: tuple[type[Exception], ...] = (MalformedToken, BadSignature, BindingMismatch)
FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _run_all(data: bytes, key: ec.EllipticCurvePublicKey | bytes) -> None:
    calls: tuple[Callable[[], object], ...] = (
        lambda: psa.parse(data),
        lambda: psa.parse(data, allow_unknown_profile=True),
        lambda: psa.verify(data, key, allow_unknown_profile=True),
    )
    for call in calls:
        with contextlib.suppress(*ESCAPES):
            call()


@FUZZ
@given(data=st.binary(max_size=2048))
def test_fuzz_arbitrary_bytes(vector: Vector, data: bytes) -> None:
    _run_all(data, _key(vector, "tfm-iak-pub.pem"))


@FUZZ
@given(
    which=st.sampled_from(ALL),
    edits=st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.none() | st.integers(0, 4096),
)
def test_fuzz_mutated_vectors(
    vector: Vector,
    which: tuple[str, str, bool],
    edits: list[tuple[int, int]],
    cut: int | None,
) -> None:
    name, key_file, _ = which
    data = bytearray(_token(vector, name))
    for pos, byte in edits:
        data[pos % len(data)] = byte
    if cut is not None:
        del data[cut % len(data) :]
    _run_all(bytes(data), _key(vector, key_file))


# Any CBOR a hostile signer could put in a claim, under the keys the parser looks at.
_CBOR = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.binary(max_size=70)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.integers(-8, 8), inner, max_size=4)
    ),
    max_leaves=12,
)
_PSA_KEYS = st.sampled_from(
    sorted(
        {
            psa.NONCE,
            psa.INSTANCE_ID,
            *psa._P2_ONLY_KEYS,
            *psa._P1_KEYS,
        }
    )
)


@FUZZ
@given(
    which=st.sampled_from(["tfm-psa-2_0_0-sign1", "tfm-psa-iot-1-sign1"]),
    replacements=st.dictionaries(_PSA_KEYS, _CBOR, min_size=1, max_size=4),
)
def test_fuzz_claim_values(vector: Vector, which: str, replacements: dict[int, Any]) -> None:
    token = _with_claims(_token(vector, which), lambda c: c.update(replacements))
    _run_all(token, _key(vector, "tfm-iak-pub.pem"))
