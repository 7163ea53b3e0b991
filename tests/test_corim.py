"""Endorsements as CoRIM through Veraison's provisioning API, against a real verifier process.

Veraison's own end-to-end CoRIMs (tests/vectors/corim/) are submitted as Veraison's cocli
does, and Veraison's end-to-end PSA and CCA evidence then appraises affirming. Every bad
CoRIM (tampered, unsigned where signed, signed with no signer key, unknown profile,
truncated, half good) gets its own problem and changes nothing in the store. Veritee's own
CoMID profile round-trips: made from the JSON forms, provisioned, and a module appraises.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from veritee.verifier import corim, ear, media
from veritee.verifier.endorsements import ReferenceValue

from . import test_verifier_service as _service
from .conftest import Device
from .test_verifier_service import (
    Attester,
    Server,
    _round_trip,
    _submit,
    start_verifier,
)

Vector = Callable[[str], Path]

# The service tests' fixtures: a module loaded in the device's secure world, and hello.wasm.
attesters = _service.attesters
hello = _service.hello

SUBMIT = "/endorsement-provisioning/v1/submit"
SESSION_TYPE = "application/vnd.veraison.provisioning-session+json"
# As Veraison's end-to-end test submits them (cocli corim submit --media-type ...).
VENDORED = [
    (
        "psa-endorsements.cbor",
        'application/corim-unsigned+cbor; profile="http://arm.com/psa/iot/1"',
    ),
    (
        "cca-endorsements.cbor",
        'application/corim-unsigned+cbor; profile="http://arm.com/cca/ssd/1"',
    ),
    ("cca-realm-endorsements.cbor", "application/rim+cbor"),
]


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A verifier with nothing provisioned and no CoRIM signer key."""
    home = tmp_path_factory.mktemp("home")
    s = start_verifier(home, tmp_path_factory.mktemp("verifier"))
    try:
        yield s
    finally:
        s.stop()


def _post(server: Server, body: bytes, media_type: str, *, token: str | None = "") -> Any:
    headers = {"Content-Type": media_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token or server.token}"
    return httpx.post(f"{server.url}{SUBMIT}", content=body, headers=headers, timeout=30)


def _counts(server: Server) -> tuple[int, int, int]:
    with server.client(token=True) as admin:
        state = admin.state()
    return state["generation"], len(state["trust-anchors"]), len(state["reference-values"])


def _refused(server: Server, body: bytes, media_type: str, check: str, **kw: Any) -> str:
    """Submit a bad CoRIM: assert its problem names ``check`` and nothing changed."""
    before = _counts(server)
    response = _post(server, body, media_type, **kw)
    assert response.status_code in (400, 401, 403, 413, 415, 422), response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["check"] == check, problem
    assert problem["status"] == response.status_code
    if response.status_code != 401:  # Veraison's failed-session reason, for its clients
        assert problem["failure-reason"] == problem["detail"]
    assert _counts(server) == before
    assert server.proc.poll() is None
    return str(problem["detail"])


def _vector_claims(vector: Vector, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(vector(f"{name}.expected.json").read_text())
    return data


def _appraise_e2e(server: Server, vector: Vector) -> dict[str, str]:
    psa = _vector_claims(vector, "psa/veraison-e2e-psa-evidence")["claims"]
    cca = _vector_claims(vector, "cca/veraison-e2e-cca-evidence")
    with server.client() as client:
        key = client.public_key()
    statuses = {}
    token = vector("psa/veraison-e2e-psa-evidence.cbor").read_bytes()
    _, done = _submit(server, token, nonce=bytes.fromhex(psa["nonce"]), media_type=media.PSA_TOKEN)
    statuses.update({n: a.status for n, a in ear.verify(done["result"], key).submods.items()})
    token = vector("cca/veraison-e2e-cca-evidence.cbor").read_bytes()
    nonce = bytes.fromhex(cca["realm"]["claims"]["challenge"])
    _, done = _submit(server, token, nonce=nonce, media_type=media.CCA_TOKEN)
    statuses.update({n: a.status for n, a in ear.verify(done["result"], key).submods.items()})
    return statuses


# -- Veraison's end-to-end CoRIMs ---------------------------------------------------------------


def test_well_known_provisioning_is_veraisons(bare: Server) -> None:
    response = httpx.get(f"{bare.url}/.well-known/veraison/provisioning")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.veraison.discovery+json"
    doc = response.json()
    assert doc["service-state"] == "READY"
    assert doc["api-endpoints"] == {"provisioningSubmit": SUBMIT}
    for profile in (
        "tag:arm.com,2025:psa#1.0.0",
        "http://arm.com/psa/iot/1",
        "http://arm.com/cca/ssd/1",
        "http://arm.com/cca/realm/1",
        corim.VERITEE_PROFILE,
    ):
        assert f'application/corim-unsigned+cbor; profile="{profile}"' in doc["media-types"]
    assert "application/rim+cbor" in doc["media-types"]


def test_vendored_corims_make_veraisons_e2e_evidence_affirm(bare: Server, vector: Vector) -> None:
    # Before: nothing endorses Veraison's devices, so the e2e evidence is refused.
    with bare.client() as client:
        url, _ = client.new_session(nonce=b"\0" * 32)
        evidence = vector("psa/veraison-e2e-psa-evidence.cbor").read_bytes()
        done = client.submit(url, evidence, media.PSA_TOKEN)
        failure = ear.verify(done["result"], client.public_key()).extensions
    assert failure["ear.veritee.failure"]["check"] == "UnknownDevice"
    for name, media_type in VENDORED:
        response = _post(bare, vector(f"corim/{name}").read_bytes(), media_type)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == SESSION_TYPE
        session = response.json()
        assert session["status"] == "success"
        assert session["expiry"].endswith("Z")
    state = bare.client(token=True).state()
    assert len(state["trust-anchors"]) == 2
    assert {(r["scheme"], r["kind"]) for r in state["reference-values"]} == {
        ("psa", "boot"),
        ("cca", "boot"),
        ("cca", "realm"),
    }
    assert _appraise_e2e(bare, vector) == {
        "PSA_IOT": "affirming",
        "CCA_SSD_PLATFORM": "affirming",
        "CCA_REALM": "affirming",
    }
    # Submitting the same CoRIM again is idempotent: nothing is duplicated.
    before = _counts(bare)[1:]
    assert (
        _post(bare, vector("corim/psa-endorsements.cbor").read_bytes(), VENDORED[0][1]).json()[
            "status"
        ]
        == "success"
    )
    assert _counts(bare)[1:] == before


def test_submit_needs_the_provisioning_token(bare: Server, vector: Vector) -> None:
    body = vector("corim/psa-endorsements.cbor").read_bytes()
    assert "Bearer" in _refused(bare, body, VENDORED[0][1], "Unauthorized", token=None)
    _refused(bare, body, VENDORED[0][1], "Unauthorized", token="not-the-token")


# -- bad CoRIMs: each its own problem, nothing changed ------------------------------------------


def _retagged(corim_bytes: bytes, **changes: Any) -> bytes:
    value = cbor2.loads(corim_bytes)
    body = dict(value.value)
    for key, v in changes.items():
        body[int(key.removeprefix("k"))] = v
    return bytes(cbor2.dumps(cbor2.CBORTag(501, body)))


def _comid(body: dict[int, Any]) -> cbor2.CBORTag:
    return cbor2.CBORTag(506, cbor2.dumps(body))


def test_bad_corims_are_refused_and_change_nothing(bare: Server, vector: Vector) -> None:
    good = vector("corim/psa-endorsements.cbor").read_bytes()
    unsigned = "application/corim-unsigned+cbor"
    # Truncated anywhere: a clear "truncated", not a traceback.
    for cut in (1, len(good) // 2, len(good) - 1):
        assert "truncated" in _refused(bare, good[:cut], unsigned, "CorimMalformed")
    # Unknown profile: in the CoRIM, in the media type, or the two disagreeing.
    _refused(bare, _retagged(good, k3="tag:evil.example,2026:x"), unsigned, "CorimUnknownProfile")
    _refused(bare, good, f'{unsigned}; profile="tag:evil.example,2026:x"', "CorimUnknownProfile")
    detail = _refused(
        bare, good, f'{unsigned}; profile="http://arm.com/cca/realm/1"', "CorimUnknownProfile"
    )
    assert "Content-Type" in detail
    _refused(bare, _retagged(good, k3=None), "application/rim+cbor", "CorimUnknownProfile")
    # Tampered: a digest cut short, a key that is no key, an unknown triple, a CoSWID.
    tags = list(cbor2.loads(good).value[1])
    refval = cbor2.loads(tags[0].value)
    triple = refval[4][0][0]
    measurement = dict(triple[1][0])
    measurement[1] = {2: [[1, b"\x87" * 20]]}
    short = {**refval, 4: {0: [[triple[0], [measurement]]]}}
    assert "size" in _refused(bare, _retagged(good, k1=[_comid(short)]), unsigned, "CorimMalformed")
    ta = cbor2.loads(tags[1].value)
    env, _keys = ta[4][3][0]
    bad_key = {**ta, 4: {3: [[env, [cbor2.CBORTag(554, "-----BEGIN PUBLIC KEY-----\nAA==")]]]}}
    _refused(bare, _retagged(good, k1=[_comid(bad_key)]), unsigned, "CorimMalformed")
    identity = {**ta, 4: {2: ta[4][3]}}
    _refused(bare, _retagged(good, k1=[_comid(identity)]), unsigned, "CorimUnsupported")
    _refused(bare, _retagged(good, k1=[cbor2.CBORTag(505, b"\xa0")]), unsigned, "CorimUnsupported")
    # All or nothing: a good trust-anchor CoMID followed by a bad one stores neither.
    half = _retagged(good, k1=[tags[1], _comid(short)])
    _refused(bare, half, unsigned, "CorimMalformed")
    # Not a CoRIM at all; nested past the depth limit; a JSON body; another media type.
    _refused(bare, cbor2.dumps({"a": 1}), unsigned, "CorimMalformed")
    deep: Any = 0
    for _ in range(200):
        deep = [deep]
    _refused(bare, _retagged(good, k2=deep), unsigned, "CorimMalformed")
    many = _retagged(good, k1=[tags[1]] * (corim.MAX_TAGS + 1))
    assert str(corim.MAX_TAGS) in _refused(bare, many, unsigned, "CorimMalformed")
    _refused(bare, b'{"corim": 1}', "application/json", "UnsupportedMediaType")
    # Signed, and this verifier has no signer key: refused, never taken unchecked.
    signed = cbor2.dumps(cbor2.CBORTag(18, [b"\xa1\x01\x26", {}, good, b"\0" * 64]))
    detail = _refused(bare, signed, "application/rim+cose", "CorimSignerMissing")
    assert "no signer key configured" in detail
    # Veraison's CoRIM sent to Veritee's JSON endpoints: pointed to the submit endpoint.
    before = _counts(bare)
    for path in ("reference-values", "trust-anchors", "deployment"):
        response = httpx.post(
            f"{bare.url}/provisioning/v1/{path}",
            content=good,
            headers={"Authorization": f"Bearer {bare.token}", "Content-Type": unsigned},
        )
        assert response.json()["check"] == "BadRequestBody"
        assert SUBMIT in response.json()["detail"]
    assert _counts(bare) == before
    # The legitimate CoRIM still provisions afterwards.
    assert _post(bare, good, VENDORED[0][1]).json()["status"] == "success"


def test_signed_corims_against_a_configured_signer(tmp_path: Path, vector: Vector) -> None:
    signer = ec.generate_private_key(ec.SECP256R1())
    pub = tmp_path / "corim-signer.pem"
    pub.write_bytes(
        signer.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    server = start_verifier(tmp_path, tmp_path / "verifier", "--corim-signer", str(pub))
    try:
        good = vector("corim/psa-endorsements.cbor").read_bytes()
        signed = _sign(good, signer)
        # Unsigned where signed is required.
        _refused(server, good, VENDORED[0][1], "CorimUnsigned")
        # Signed by another key.
        other = _sign(good, ec.generate_private_key(ec.SECP256R1()))
        _refused(server, other, "application/rim+cose", "CorimBadSignature")
        # Tampered after signing: one byte of the payload (an instance id byte) flipped.
        msg = cbor2.loads(signed)
        payload = bytearray(msg.value[2])
        payload[payload.index(b"\x01\xce\xeb\xae") + 1] ^= 1
        tampered = cbor2.dumps(cbor2.CBORTag(18, [*msg.value[:2], bytes(payload), msg.value[3]]))
        _refused(server, tampered, "application/rim+cose", "CorimBadSignature")
        # The signer's own CoRIM is taken.
        response = _post(server, signed, "application/rim+cose")
        assert response.json()["status"] == "success", response.text
        assert response.json()["veritee"]["signed"] is True
        assert _counts(server)[1:] == (1, 3)
    finally:
        server.stop()


def _sign(payload: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    from veritee.evidence import cose

    return cose.sign1(payload, key)


# -- Veritee's own CoMID profile ---------------------------------------------------------------


def test_veritee_profile_round_trips() -> None:
    refs = [
        ReferenceValue("veritee", "boot", "bl1", b"\x01" * 32, "1.0"),
        ReferenceValue("veritee", "module", "hello", b"\x02" * 48),
    ]
    decoded = corim.decode(corim.make(refs))
    assert decoded.profile == corim.VERITEE_PROFILE
    assert list(decoded.deployment.references) == refs
    with pytest.raises(Exception, match="veritee boot and module"):
        corim.make([ReferenceValue("psa", "boot", "BL", b"\x01" * 32)])


def test_veritee_corim_make_provision_and_a_module_appraises(
    device: Device, attesters: dict[str, Attester], hello: Path, tmp_path: Path
) -> None:
    server = start_verifier(device.home, tmp_path / "verifier")
    try:
        deploy = tmp_path / "deploy.json"  # the deployment file form, paths and all
        manufacturer = device.home / "manufacturer"
        deploy.write_text(
            json.dumps(
                {
                    "trust-anchors": [{"ca": str(manufacturer / "ca.pem")}],
                    "reference-values": [{"file": str(manufacturer / "reference-values.json")}],
                }
            )
        )
        platform_corim, module_corim = tmp_path / "platform.corim", tmp_path / "hello.corim"
        made = server.cli(device.home, "verifier", "corim", "make", deploy, "-o", platform_corim)
        assert made.returncode == 0, made.stderr.decode()
        out = server.cli(
            device.home, "verifier", "provision", "module", hello, "--name", "hello",
            "--version", "1.0", "--corim-out", module_corim,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr.decode()
        assert _counts(server)[1:] == (0, 0)  # --corim-out writes, provisions nothing
        shown = server.cli(device.home, "verifier", "corim", "show", module_corim)
        assert json.loads(shown.stdout)["reference-values"][0]["name"] == "hello"
        for path in (platform_corim, module_corim):
            server.provision(device.home, "corim", path)
        result = _round_trip(server, attesters["hello"])
        module = result.submods["module"]
        assert module.trust_vector.executables == 2
        assert module.extensions["ear.veraison.annotated-evidence"]["endorsed-as"] == {
            "name": "hello",
            "version": "1.0",
        }
        assert result.submods["platform"].status == "warning"  # emulated, as by JSON
    finally:
        server.stop()


def _realm_corim(vector: Vector, rem0: bytes) -> bytes:
    """Veraison's realm CoRIM with another REM0 endorsed for the same RIM."""
    outer = cbor2.loads(vector("corim/cca-realm-endorsements.cbor").read_bytes())
    comid = cbor2.loads(outer.value[1][0].value)
    env, measurements = comid[4][0][0]
    mval = dict(measurements[0][1])
    mval[14] = {**mval[14], "rem0": [[8, rem0]]}
    comid = {**comid, 4: {0: [[env, [{**measurements[0], 1: mval}]]]}}
    return _retagged(vector("corim/cca-realm-endorsements.cbor").read_bytes(), k1=[_comid(comid)])


def test_realm_with_other_extensible_measurements_is_not_endorsed(
    tmp_path: Path, vector: Vector
) -> None:
    """A realm that booted the endorsed image (its RIM) but then extended something else into
    a REM (a payload the workload owner did not endorse) must not appraise affirming."""
    server = start_verifier(tmp_path, tmp_path / "verifier")
    try:
        platform = vector("corim/cca-endorsements.cbor").read_bytes()
        assert _post(server, platform, VENDORED[1][1]).json()["status"] == "success"
        other = _realm_corim(vector, b"D" * 64)
        assert _post(server, other, "application/rim+cbor").json()["status"] == "success"
        cca = _vector_claims(vector, "cca/veraison-e2e-cca-evidence")
        token = vector("cca/veraison-e2e-cca-evidence.cbor").read_bytes()
        nonce = bytes.fromhex(cca["realm"]["claims"]["challenge"])
        _, done = _submit(server, token, nonce=nonce, media_type=media.CCA_TOKEN)
        with server.client() as client:
            result = ear.verify(done["result"], client.public_key())
        realm = result.submods["CCA_REALM"]
        assert realm.status == "contraindicated"
        assert realm.trust_vector.executables == 96  # contraindicated
        assert "extensible measurements" in realm.extensions["ear.veritee.reasons"][0]
        # The owner's real endorsement (the REMs the realm extends) is kept beside it, not
        # merged: the same RIM with other REMs is another reference value. (The e2e nonce is
        # spent on this verifier; test_vendored_corims_... shows the real one affirming.)
        real = vector("corim/cca-realm-endorsements.cbor").read_bytes()
        assert _post(server, real, "application/rim+cbor").json()["status"] == "success"
        with server.client(token=True) as admin:
            realms = [r for r in admin.state()["reference-values"] if r["kind"] == "realm"]
        assert sorted(r["rems"][0][:4] for r in realms) == ["4343", "4444"]
        assert all(r["personalization-value"] == "4144" * 32 for r in realms)
    finally:
        server.stop()


def test_cli_refusal_is_one_clear_line(bare: Server, vector: Vector, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.corim"
    truncated.write_bytes(vector("corim/cca-endorsements.cbor").read_bytes()[:200])
    before = _counts(bare)
    proc = bare.cli(
        tmp_path, "verifier", "provision", "--verifier", bare.url, "--token", bare.token,
        "corim", truncated,
    )  # fmt: skip
    assert proc.returncode != 0
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "CorimMalformed" in lines[0] and "truncated" in lines[0], lines
    assert _counts(bare) == before


def test_reference_values_for_another_implementation_do_not_count(
    tmp_path: Path, vector: Vector
) -> None:
    """A CoRIM endorses firmware for one implementation (its class id); a device of another
    implementation running that firmware is not endorsed by it."""
    server = start_verifier(tmp_path, tmp_path / "verifier")
    try:
        good = vector("corim/psa-endorsements.cbor").read_bytes()
        tags = list(cbor2.loads(good).value[1])
        refval = cbor2.loads(tags[0].value)
        env, measurements = refval[4][0][0]
        other_env = {0: {**env[0], 0: cbor2.CBORTag(600, b"another-implementation-id-0000001")}}
        moved = {**refval, 4: {0: [[other_env, measurements]]}}
        corim_bytes = _retagged(good, k1=[tags[1], _comid(moved)])
        assert _post(server, corim_bytes, VENDORED[0][1]).json()["status"] == "success"
        psa = _vector_claims(vector, "psa/veraison-e2e-psa-evidence")["claims"]
        token = vector("psa/veraison-e2e-psa-evidence.cbor").read_bytes()
        _, done = _submit(
            server, token, nonce=bytes.fromhex(psa["nonce"]), media_type=media.PSA_TOKEN
        )
        with server.client() as client:
            result = ear.verify(done["result"], client.public_key())
        assert result.submods["PSA_IOT"].status == "contraindicated"
        assert (
            "not an endorsed value"
            in result.submods["PSA_IOT"].extensions["ear.veritee.reasons"][0]
        )
        with server.client(token=True) as admin:
            refs = admin.state()["reference-values"]
        assert {r["implementation-id"] for r in refs} == {
            b"another-implementation-id-0000001".hex()
        }
    finally:
        server.stop()
