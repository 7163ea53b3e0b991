"""Results exactly as Veraison emits them, submissions as Veraison takes them (issue 21,
sections 2 and 3), through a real ``veritee verifier serve`` process.

Evidence is Veraison's own end-to-end evidence (tests/vectors/psa, tests/vectors/cca); results
are read with joserfc, a JWT library Veritee itself does not use, as a foreign relying party
would read them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey

from veritee.verifier import media
from veritee.verifier.jwk import to_jwk

from .test_verifier_service import Server, e2e_reference_values, start_verifier

Vector = Callable[[str], Path]
VECTORS = Path(__file__).parent / "vectors"
SESSION_TYPE = "application/vnd.veraison.challenge-response-session+json"


def _expected(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / f"{name}.expected.json").read_text())
    return data


PSA = _expected("psa/veraison-e2e-psa-evidence")["claims"]
CCA = _expected("cca/veraison-e2e-cca-evidence")
PSA_TOKEN = (VECTORS / "psa/veraison-e2e-psa-evidence.cbor").read_bytes()
CCA_TOKEN = (VECTORS / "cca/veraison-e2e-cca-evidence.cbor").read_bytes()
PSA_NONCE = bytes.fromhex(PSA["nonce"])
CCA_NONCE = bytes.fromhex(CCA["realm"]["claims"]["challenge"])  # 64 bytes


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A verifier trusting Veraison's end-to-end PSA and CCA attesters."""
    yield from _serve(tmp_path_factory)


@pytest.fixture
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Another such verifier: the vectors' nonces are fixed, and each serves one session."""
    yield from _serve(tmp_path_factory)


def _serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("home")
    s = start_verifier(home, tmp_path_factory.mktemp("verifier"))
    refs = e2e_reference_values(PSA, CCA)
    try:
        with s.client(token=True) as admin:
            admin.add_trust_anchors(
                [
                    {
                        "scheme": "psa",
                        "key": (VECTORS / "psa/veraison-e2e-iak-pub.pem").read_text(),
                        "instance-id": PSA["instance_id"],
                    },
                    {
                        "scheme": "cca",
                        "key": (VECTORS / "cca/veraison-e2e-cpak-pub.pem").read_text(),
                        "instance-id": CCA["platform"]["claims"]["instance_id"],
                    },
                ]
            )
            admin.add_reference_values(refs)
        yield s
    finally:
        s.stop()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _new_session(server: Server, nonce: bytes | None = None) -> httpx.Response:
    params = {} if nonce is None else {"nonce": _b64url(nonce)}
    return httpx.post(
        f"{server.url}/challenge-response/v1/newSession",
        params=params,
        headers={"Accept": SESSION_TYPE},
    )


def _submit(server: Server, nonce: bytes, body: bytes, media_type: str) -> httpx.Response:
    created = _new_session(server, nonce)
    assert created.status_code == 201, created.text
    url = f"{server.url}/challenge-response/v1/{created.headers['Location']}"
    return httpx.post(url, content=body, headers={"Content-Type": media_type})


def _read_with_joserfc(server: Server, token: str) -> dict[str, Any]:
    """The claims of ``token`` as joserfc reads them, under the verifier's published key."""
    with server.client() as client:
        public: ec.EllipticCurvePublicKey = client.public_key()
    key = ECKey.import_key(dict(to_jwk(public)))
    decoded = jose_jwt.decode(token, key, algorithms=["ES256"])
    claims: dict[str, Any] = dict(decoded.claims)
    assert decoded.header["alg"] == "ES256"
    return claims


def _veraison_components(comps: list[dict[str, str]]) -> list[dict[str, str]]:
    def b64(hex_text: str) -> str:
        return base64.b64encode(bytes.fromhex(hex_text)).decode()

    return [
        {
            "measurement-type": c["measurement_type"],
            "measurement-value": b64(c["measurement_value"]),
            "version": c["version"],
            "signer-id": b64(c["signer_id"]),
        }
        for c in comps
    ]


# -- section 2: results exactly as Veraison emits them ----------------------------------------


def test_psa_result_as_veraison_emits_it(server: Server) -> None:
    done = _submit(server, PSA_NONCE, PSA_TOKEN, media.PSA_2_0_0)
    assert done.status_code == 200, done.text
    claims = _read_with_joserfc(server, done.json()["result"])
    assert claims["eat_profile"] == "tag:github.com,2023:veraison/ear"
    assert list(claims["submods"]) == ["PSA_IOT"]
    submod = claims["submods"]["PSA_IOT"]
    assert submod["ear.status"] == "affirming"
    annotated = submod["ear.veraison.annotated-evidence"]
    assert annotated["eat-profile"] == "http://arm.com/psa/2.0.0"
    assert annotated["psa-security-lifecycle"] == 12288
    assert base64.b64decode(annotated["psa-instance-id"]) == bytes.fromhex(PSA["instance_id"])
    assert base64.b64decode(annotated["psa-nonce"]) == PSA_NONCE
    assert annotated["psa-software-components"] == _veraison_components(PSA["software_components"])
    # Veritee's own claims only under ear.veritee.*; nothing else is Veritee's.
    extra = {k for k in {*claims, *submod} if not k.startswith(("ear.veraison.", "ear.veritee."))}
    assert extra <= {
        "eat_profile",
        "iat",
        "exp",
        "jti",  # RFC 7519's JWT ID: the appraisal id that ties the verifier's log to the result
        "eat_nonce",
        "ear.verifier-id",
        "submods",
        "ear.status",
        "ear.trustworthiness-vector",
        "ear.appraisal-policy-id",
    }


def test_cca_result_as_veraison_emits_it_and_its_64_byte_nonce_padded(server: Server) -> None:
    """The realm challenge is 64 bytes: unpadded base64url (86 characters) is what a strict
    decoder such as Trustee's refuses; the result carries the padded form Veraison writes."""
    assert len(CCA_NONCE) == 64
    done = _submit(server, CCA_NONCE, CCA_TOKEN, media.CCA_TOKEN)
    assert done.status_code == 200, done.text
    claims = _read_with_joserfc(server, done.json()["result"])
    assert len(claims["eat_nonce"]) == 88
    assert base64.urlsafe_b64decode(claims["eat_nonce"]) == CCA_NONCE  # strict: needs padding
    submods = claims["submods"]
    assert {n: s["ear.status"] for n, s in submods.items()} == {
        "CCA_SSD_PLATFORM": "affirming",
        "CCA_REALM": "affirming",
    }
    realm = submods["CCA_REALM"]["ear.veraison.annotated-evidence"]
    platform = submods["CCA_SSD_PLATFORM"]["ear.veraison.annotated-evidence"]
    assert base64.b64decode(realm["cca-realm-challenge"]) == CCA_NONCE
    assert realm["cca-realm-hash-algo-id"] == "sha-256"
    assert platform["cca-platform-lifecycle"] == 12288
    assert platform["cca-platform-sw-components"] == _veraison_components(
        CCA["platform"]["claims"]["software_components"]
    )


# -- section 3: submissions as Veraison takes them ---------------------------------------------


def test_a_used_client_nonce_is_refused_when_the_session_is_created(server: Server) -> None:
    """Attacker: a client (or a party replaying a client's request) asks for a session with a
    nonce an earlier session already used. The old verifier said 201 and refused only the
    submission (409), after the attester had produced evidence for nothing."""
    nonce = bytes(range(100, 132))
    first = _new_session(server, nonce)
    assert first.status_code == 201, first.text
    # A second session over the same nonce, while the first still waits: refused now.
    again = _new_session(server, nonce)
    assert again.status_code == 409, again.text
    assert again.headers["content-type"] == "application/problem+json"
    assert again.json()["check"] == "NonceAlreadyUsed"
    # The first session is untouched: it takes its evidence and reads back as waiting before.
    url = f"{server.url}/challenge-response/v1/{first.headers['Location']}"
    assert httpx.get(url).json()["status"] == "waiting"
    done = httpx.post(url, content=PSA_TOKEN, headers={"Content-Type": media.PSA_TOKEN})
    assert done.status_code == 200 and done.json()["status"] == "complete"
    # After its submission, the nonce is still refused at creation.
    assert _new_session(server, nonce).status_code == 409
    # Server-minted nonces are unaffected, and Veraison's own flow goes on.
    assert _new_session(server).status_code == 201


def _cmw_cbor(media_type: str, value: bytes) -> bytes:
    return cbor2.dumps([media_type, value])


def _cmw_json(media_type: str, value: bytes) -> bytes:
    return json.dumps([media_type, _b64url(value), 4]).encode()  # 4: the evidence indicator


@pytest.mark.parametrize(
    "content_type", ["application/cmw+cbor", "application/vnd.veraison.cmw+cbor"]
)
def test_cmw_cbor_wrapped_psa_evidence_is_appraised(fresh: Server, content_type: str) -> None:
    """Attester: a Veraison client that wraps its evidence in a CMW (as Veraison takes it). The
    old verifier answered 415."""
    body = _cmw_cbor(media.PSA_2_0_0, PSA_TOKEN)
    done = _submit(fresh, PSA_NONCE, body, content_type)
    assert done.status_code == 200, done.text
    claims = _read_with_joserfc(fresh, done.json()["result"])
    assert {n: s["ear.status"] for n, s in claims["submods"].items()} == {"PSA_IOT": "affirming"}


@pytest.mark.parametrize(
    "content_type", ["application/cmw+json", "application/vnd.veraison.cmw+json"]
)
def test_cmw_json_wrapped_cca_evidence_is_appraised(fresh: Server, content_type: str) -> None:
    body = _cmw_json(media.CCA_TOKEN, CCA_TOKEN)
    done = _submit(fresh, CCA_NONCE, body, content_type)
    assert done.status_code == 200, done.text
    claims = _read_with_joserfc(fresh, done.json()["result"])
    assert {n: s["ear.status"] for n, s in claims["submods"].items()} == {
        "CCA_SSD_PLATFORM": "affirming",
        "CCA_REALM": "affirming",
    }


def _submit_fresh_nonce(server: Server, body: bytes, media_type: str) -> httpx.Response:
    created = _new_session(server)
    url = f"{server.url}/challenge-response/v1/{created.headers['Location']}"
    return httpx.post(url, content=body, headers={"Content-Type": media_type})


@pytest.mark.parametrize(
    ("body", "content_type", "check", "submods"),
    [
        (b"\xff\xfe not cbor", "application/cmw+cbor", "MalformedToken", {"ERROR"}),
        (
            cbor2.dumps(cbor2.CBORTag(1668576818, b"x")),
            "application/cmw+cbor",
            "MalformedCmw",
            {"ERROR"},
        ),
        (cbor2.dumps([10001, PSA_TOKEN]), "application/cmw+cbor", "MalformedCmw", {"ERROR"}),
        (cbor2.dumps({"a": ["x", b"y"]}), "application/cmw+cbor", "MalformedCmw", {"ERROR"}),
        (cbor2.dumps([media.PSA_TOKEN]), "application/cmw+cbor", "MalformedCmw", {"ERROR"}),
        (
            cbor2.dumps([media.PSA_TOKEN, b"x", 999]),
            "application/cmw+cbor",
            "MalformedCmw",
            {"ERROR"},
        ),
        (
            cbor2.dumps(["application/cmw+cbor", _cmw_cbor(media.PSA_TOKEN, PSA_TOKEN)]),
            "application/cmw+cbor",
            "MalformedCmw",
            {"ERROR"},
        ),
        (
            b'["application/psa-attestation-token", "not base64!"]',
            "application/cmw+json",
            "MalformedCmw",
            {"ERROR"},
        ),
        (b"{not json", "application/cmw+json", "MalformedCmw", {"ERROR"}),
        (
            _cmw_cbor("application/octet-stream", b"whatever"),
            "application/cmw+cbor",
            "UnsupportedMediaType",
            {"ERROR"},
        ),
        (
            _cmw_cbor(media.PSA_TOKEN, b"garbage"),
            "application/cmw+cbor",
            "MalformedToken",
            {"PSA_IOT"},
        ),
    ],
    ids=[
        "not-cbor",
        "tag-form",
        "content-format",
        "collection",
        "short",
        "bad-indicator",
        "nested",
        "bad-base64",
        "not-json",
        "unsupported-inside",
        "malformed-inside",
    ],
)
def test_malformed_cmw_gets_a_signed_contraindicated_result(
    server: Server, body: bytes, content_type: str, check: str, submods: set[str]
) -> None:
    """Attacker: any client, sending a CMW that is not one. The verifier signs a result saying
    so (Veraison's ERROR submodule where the scheme cannot be told), never a 500."""
    done = _submit_fresh_nonce(server, body, content_type)
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "complete"
    claims = _read_with_joserfc(server, done.json()["result"])
    assert claims["ear.veritee.failure"]["check"] == check
    assert set(claims["submods"]) == submods
    for submod in claims["submods"].values():
        assert submod["ear.status"] == "contraindicated"
        assert submod["ear.trustworthiness-vector"]["instance-identity"] == 99
        assert "ear.veraison.annotated-evidence" not in submod
    # The request itself being wrong is still a problem document.
    unknown = _submit_fresh_nonce(server, body, "application/octet-stream")
    assert unknown.status_code == 415
    assert unknown.json()["check"] == "UnsupportedMediaType"
    assert server.proc.poll() is None


def test_discovery_and_sessions_offer_the_cmw_types(server: Server) -> None:
    offered = _new_session(server).json()["accept"]
    for cmw_type in (*media.CMW_CBOR_TYPES, *media.CMW_JSON_TYPES):
        assert cmw_type in offered
    discovery = httpx.get(f"{server.url}/.well-known/veraison/verification").json()
    assert set(media.CMW_CBOR_TYPES) <= set(discovery["media-types"])
