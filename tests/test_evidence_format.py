"""Veritee's evidence on standard ground: a CMW collection of three EAT records, registered
claims where they exist, read by an independent COSE library; the old format still read."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from pycose.keys import EC2Key
from pycose.messages import Sign1Message

from veritee.evidence.claims import Evidence
from veritee.evidence.errors import MalformedToken

from .conftest import Device

REPO = Path(__file__).resolve().parent.parent
OLD = REPO / "tests" / "vectors" / "veritee-old-format"
PROFILE = "tag:veritee.dev,2026:evidence"
NONCE = "ab" * 32


@pytest.fixture(scope="module")
def evidence(
    device: Device, wasm: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> bytes:
    out = tmp_path_factory.mktemp("fmt") / "ev.cbor"
    device.ok("attest", wasm("examples/hello/hello.c"), "--nonce", NONCE, "-o", out)
    return out.read_bytes()


def test_the_envelope_is_a_cmw_collection_of_three_eat_records(evidence: bytes) -> None:
    collection = cbor2.loads(evidence)
    assert set(collection) == {"__cmwc_t", "platform", "vtee", "module"}
    assert collection["__cmwc_t"] == PROFILE
    for part in ("platform", "vtee", "module"):
        kind, token = collection[part]
        assert kind == f'application/eat+cwt; eat_profile="tag:veritee.dev,2026:{part}"'
        assert isinstance(token, bytes) and cbor2.loads(token).tag == 18  # COSE_Sign1


def test_an_independent_cose_library_verifies_the_platform_token(evidence: bytes) -> None:
    token = cbor2.loads(cbor2.loads(evidence)["platform"][1])
    assert token.tag == 18
    # pycose wants the unprotected header as a dict; cbor2 6 hands maps in arrays back as
    # frozendicts, so the array goes to pycose by hand (the check is pycose's own).
    protected, unprotected, payload, signature = token.value
    message = Sign1Message.from_cose_obj([protected, dict(unprotected), payload, signature], True)
    # x5chain (33): one certificate is that certificate's bytes (RFC 9360), not an array.
    der = unprotected[33]
    assert isinstance(der, bytes)
    public = x509.load_der_x509_certificate(der).public_key().public_numbers()  # type: ignore[union-attr]
    size = (public.curve.key_size + 7) // 8
    message.key = EC2Key(
        crv="P_256" if size == 32 else "P_384",
        x=public.x.to_bytes(size, "big"),
        y=public.y.to_bytes(size, "big"),
    )
    assert message.verify_signature()
    claims = cbor2.loads(message.payload)
    assert claims[265] == "tag:veritee.dev,2026:platform"  # eat_profile
    assert isinstance(claims[256], bytes)  # ueid
    assert claims[259] == b"veritee-emulated-tee"  # hwmodel: bytes (RFC 9711)
    assert claims[263] == 0  # dbgstat: enabled, as an emulated secure world is
    assert claims[262] is True  # secboot


def test_the_module_token_names_the_module_with_swname(evidence: bytes) -> None:
    claims = cbor2.loads(cbor2.loads(cbor2.loads(evidence)["module"][1]).value[2])
    assert claims[270].startswith("hello")  # swname: the module's name (its file's)
    assert -76012 not in claims  # the private key it replaces
    assert len(claims[10]) == 32 and claims[10] == bytes.fromhex(NONCE)  # eat_nonce


def _collection(evidence: bytes) -> dict[str, object]:
    value: dict[str, object] = cbor2.loads(evidence)
    return value


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(__cmwc_t="tag:example.com,2026:other"), "not Veritee evidence"),
        (lambda c: c.pop("vtee"), "entry 'vtee' is missing"),
        (lambda c: c.update(extra=["a/b", b"x"]), "unknown entries"),
        (lambda c: c.update(module=[c["module"][1]]), "entry 'module' is missing or not a CMW"),  # type: ignore[index]
        (lambda c: c.update(module=["text/plain", c["module"][1]]), "says it is 'text/plain'"),  # type: ignore[index]
        (lambda c: c.update(platform=[c["platform"][0], "text"]), "not a CMW record"),  # type: ignore[index]
    ],
)
def test_a_malformed_collection_is_refused_with_what_is_wrong(
    evidence: bytes, change: Callable[[dict[str, object]], object], message: str
) -> None:
    collection = _collection(evidence)
    change(collection)
    with pytest.raises(MalformedToken, match=message):
        Evidence.decode(cbor2.dumps(collection))


def test_a_module_name_given_both_ways_is_refused(evidence: bytes) -> None:
    from veritee.evidence.claims import ModuleClaims

    token = cbor2.loads(cbor2.loads(evidence)["module"][1])
    claims = cbor2.loads(token.value[2])
    claims[-76012] = "other"
    with pytest.raises(MalformedToken, match="given twice"):
        ModuleClaims.from_cbor(claims)


def test_dbgstat_that_contradicts_the_lifecycle_is_refused(evidence: bytes) -> None:
    from veritee.evidence.claims import PlatformClaims

    claims = cbor2.loads(cbor2.loads(cbor2.loads(evidence)["platform"][1]).value[2])
    claims[263] = 3  # "disabled permanently", from an emulated secure world
    with pytest.raises(MalformedToken, match="dbgstat"):
        PlatformClaims.from_cbor(claims)


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "veritee", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_old_format_is_still_read_and_says_so(tmp_path: Path) -> None:
    evidence = OLD / "evidence.cbor"
    assert Evidence.decode(evidence.read_bytes()).old_format
    assert "profile" in cbor2.loads(evidence.read_bytes())  # it is the old envelope
    refs = json.loads((OLD / "reference-values.json").read_text())
    refs["modules"] = json.loads((OLD / "module.json").read_text())
    merged = tmp_path / "refs.json"
    merged.write_text(json.dumps(refs))
    nonce = (OLD / "nonce.hex").read_text().strip()
    shown = _cli("evidence", "show", evidence)
    assert shown.returncode == 0, shown.stderr
    assert "old format" in shown.stderr and "hello" in shown.stdout
    proc = _cli(
        "--home", tmp_path / "nohome", "evidence", "appraise", evidence, "--nonce", nonce,
        "--ca", OLD / "ca.pem", "--refs", merged,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "every check passed" in proc.stdout and "old format" in proc.stderr


def test_the_verifier_takes_both_formats_under_their_media_types(
    device: Device, evidence: bytes, wasm: Callable[..., Path], tmp_path: Path
) -> None:
    from veritee.evidence.claims import MEDIA_TYPE, OLD_MEDIA_TYPE
    from veritee.verifier import ear

    from .test_verifier_service import start_verifier

    server = start_verifier(device.home, tmp_path / "verifier")
    try:
        server.provision(device.home, "trust-device")
        server.provision(device.home, "trust-ca", OLD / "ca.pem")
        server.provision(device.home, "refs", OLD / "reference-values.json")
        server.provision(device.home, "refs", OLD / "module.json")
        name = cbor2.loads(cbor2.loads(cbor2.loads(evidence)["module"][1]).value[2])[270]
        server.provision(device.home, "module", wasm("examples/hello/hello.c"), "--name", name)
        with server.client() as client:
            key = client.public_key()
            for data, media_type, nonce in (
                (evidence, MEDIA_TYPE, bytes.fromhex(NONCE)),
                ((OLD / "evidence.cbor").read_bytes(), OLD_MEDIA_TYPE,
                 bytes.fromhex((OLD / "nonce.hex").read_text().strip())),
            ):  # fmt: skip
                url, _ = client.new_session(nonce=nonce)
                answer = client.submit(url, data, media_type)
                result = ear.verify(answer["result"], key)
                statuses = {n: a.status for n, a in result.submods.items()}
                assert set(statuses.values()) == {"warning"}, (media_type, statuses)
    finally:
        server.stop()
