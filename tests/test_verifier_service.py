"""The verification service as a real process on loopback, attested to by a real device.

``veritee verifier serve`` runs as a subprocess on a free port; evidence comes from the
``device`` fixture's running secure world. Every attack of issue 5 is its own test, asserting
the specific failed check, and each ends by showing the service still serves an honest client.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from veritee.evidence import cose
from veritee.evidence.claims import MEDIA_TYPE, Evidence
from veritee.servicetls import client_verify
from veritee.tee.ta import WasmSession
from veritee.verifier import ear, media
from veritee.verifier.client import VerifierClient, nonce_of
from veritee.verifier.errors import VerifierRefused
from veritee.wasm.runtime import measure

from .conftest import Device

Vector = Callable[[str], Path]

START_TIMEOUT = 60.0  # seconds; a bound that only catches a hang
SESSION_TYPE = "application/vnd.veraison.challenge-response-session+json"


# -- a verifier process ------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    state: Path
    proc: subprocess.Popen[bytes]
    log: Path
    cert: str | None = None  # its TLS certificate, if it serves TLS

    @property
    def token(self) -> str:
        return (self.state / "admin-token").read_text().strip()

    def client(self, *, token: bool = False) -> VerifierClient:
        return VerifierClient(self.url, token=self.token if token else None, ca=self.cert)

    def cli(self, home: Path, *args: str | Path) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "veritee", "--home", str(home), *map(str, args)],
            capture_output=True,
            timeout=120,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def provision(self, home: Path, *args: str | Path) -> str:
        proc = self.cli(
            home, "verifier", "provision", "--verifier", self.url, "--token", self.token, *args
        )
        assert proc.returncode == 0, proc.stderr.decode()
        return proc.stdout.decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


def start_verifier(home: Path, state: Path, *extra: str) -> Server:
    """Start ``veritee verifier serve --port 0`` and wait until it answers /health."""
    state.mkdir(parents=True, exist_ok=True)
    ready = state / "ready.json"
    ready.unlink(missing_ok=True)
    log = state / f"serve-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "veritee",
                "--home",
                str(home),
                "verifier",
                "serve",
                "--port",
                "0",
                "--state",
                str(state),
                "--ready-file",
                str(ready),
                *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: workers end with it
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"verifier exited {proc.returncode}: {log.read_text()}")
        if ready.exists() and ready.read_text():
            info = json.loads(ready.read_text())
            url, cert = info["url"], info.get("cert")  # cert: it serves TLS (test_service_tls)
            verify = client_verify(cert) if cert else True
            try:
                if httpx.get(f"{url}/health", timeout=5, verify=verify).status_code == 200:
                    return Server(url, state, proc, log, cert)
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"verifier did not start: {log.read_text()}")


class Attester:
    """A module loaded in the device's secure world, producing evidence over any nonce."""

    def __init__(self, session: WasmSession, module: bytes) -> None:
        self.session = session
        self.measurement = measure(module)

    def evidence(self, nonce: bytes) -> bytes:
        return self.session.attest(nonce)

    def builder(self, nonce: bytes, accept: list[str]) -> tuple[bytes, str]:
        assert MEDIA_TYPE in accept
        return self.evidence(nonce), MEDIA_TYPE


@pytest.fixture(scope="module")
def hello(wasm: Callable[..., Path]) -> Path:
    return wasm("examples/hello/hello.c")


@pytest.fixture(scope="module")
def attesters(
    device: Device, hello: Path, wasm: Callable[..., Path]
) -> Iterator[dict[str, Attester]]:
    other = wasm("tests/assets/c/echo_stdin.c").read_bytes()  # never endorsed
    with device.context() as ctx:
        good, stranger = WasmSession(ctx), WasmSession(ctx)
        good.load(hello.read_bytes(), name="hello")
        stranger.load(other, name="hello")
        yield {"hello": Attester(good, hello.read_bytes()), "other": Attester(stranger, other)}


@pytest.fixture(scope="module")
def server(
    device: Device, hello: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One verifier for this module, trusting the device and endorsing hello.wasm."""
    s = start_verifier(device.home, tmp_path_factory.mktemp("verifier"))
    try:
        s.provision(device.home, "trust-device")
        s.provision(device.home, "module", hello, "--name", "hello", "--version", "1.0")
        yield s
    finally:
        s.stop()


def _round_trip(server: Server, attester: Attester) -> ear.Ear:
    with server.client() as client:
        token = client.attest(attester.builder)
        return ear.verify(token, client.public_key())


def assert_still_serves(server: Server, attesters: dict[str, Attester]) -> None:
    """After an attack: an honest client still gets its result."""
    result = _round_trip(server, attesters["hello"])
    assert result.submods["module"].status == "warning"
    assert server.proc.poll() is None


def _submit(server: Server, evidence: bytes, *, nonce: bytes | None = None, **kw: Any) -> Any:
    with server.client() as client:
        url, _ = client.new_session(nonce=nonce)
        return url, client.submit(url, evidence, kw.get("media_type", MEDIA_TYPE))


def _failure(session: dict[str, Any], server: Server) -> tuple[ear.Ear, dict[str, str]]:
    with server.client() as client:
        result = ear.verify(session["result"], client.public_key())
    return result, dict(result.extensions["ear.veritee.failure"])


def _refused(call: Callable[[], Any]) -> VerifierRefused:
    with pytest.raises(VerifierRefused) as caught:
        call()
    return caught.value


# -- the honest path ---------------------------------------------------------------------------


def test_round_trip_gives_a_signed_warning_for_an_emulated_device(
    server: Server, attesters: dict[str, Attester], device: Device
) -> None:
    with server.client() as client:
        disco = client.discovery()
        assert MEDIA_TYPE in disco["media-types"]
        assert media.CCA_TOKEN in disco["media-types"]
        assert disco["api-endpoints"]["newChallengeResponseSession"] == (
            "/challenge-response/v1/newSession"
        )
        url, session = client.new_session(nonce_size=48)
        assert session["status"] == "waiting"
        assert len(nonce_of(session)) == 48
        evidence = attesters["hello"].evidence(nonce_of(session))
        done = client.submit(url, evidence, MEDIA_TYPE)
        assert done["status"] == "complete"
        assert base64.b64decode(done["evidence"]["value"]) == evidence
        assert done["evidence"]["type"] == MEDIA_TYPE
        result = ear.verify(done["result"], client.public_key())
        assert client.session(url)["result"] == done["result"]
        client.delete(url)
        assert _refused(lambda: client.session(url)).status == 404
    assert result.profile == "tag:github.com,2023:veraison/ear"
    assert result.nonce is not None and ear.decode_nonce(result.nonce) == nonce_of(session)
    platform, module = result.submods["platform"], result.submods["module"]
    assert platform.status == module.status == "warning"
    assert platform.trust_vector.hardware == 32
    assert module.trust_vector.executables == 2
    assert platform.policy_id and platform.policy_id.startswith("policy:default@")
    annotated = platform.extensions["ear.veraison.annotated-evidence"]
    assert annotated["lifecycle"] == "emulated"
    assert annotated["vtee-name"] == "default"
    assert annotated["ueid"] == _ueid(device)
    assert module.extensions["ear.veraison.annotated-evidence"]["endorsed-as"] == {
        "name": "hello",
        "version": "1.0",
    }


def test_session_resource_is_veraisons(server: Server) -> None:
    response = httpx.post(
        f"{server.url}/challenge-response/v1/newSession?nonceSize=32",
        headers={"Accept": SESSION_TYPE},
    )
    assert response.status_code == 201
    assert response.headers["content-type"] == SESSION_TYPE
    assert response.headers["location"].startswith("session/")
    body = response.json()
    assert set(body) == {"status", "nonce", "expiry", "accept"}
    assert body["expiry"].endswith("Z")
    assert "=" not in body["nonce"]
    wrong_accept = httpx.post(
        f"{server.url}/challenge-response/v1/newSession", headers={"Accept": "text/html"}
    )
    assert wrong_accept.status_code == 406


def test_strict_policy_and_back(
    server: Server, attesters: dict[str, Attester], device: Device
) -> None:
    server.provision(device.home, "activate", "strict")
    try:
        result = _round_trip(server, attesters["hello"])
        assert result.submods["platform"].status == "contraindicated"
        assert result.submods["platform"].trust_vector.hardware == 96
        assert result.submods["module"].policy_id.startswith("policy:strict@")  # type: ignore[union-attr]
    finally:
        server.provision(device.home, "activate", "default")
    assert_still_serves(server, attesters)


def test_custom_policy_from_a_file(
    server: Server, attesters: dict[str, Attester], device: Device, tmp_path: Path
) -> None:
    rego = tmp_path / "lenient.rego"
    rego.write_text(
        "package veritee\nimport rego.v1\n"
        "# Accept emulated hardware as genuine: for a lab only.\n"
        "hardware[name] := 2 if { some name, _ in input.submods }\n"
    )
    out = server.provision(device.home, "policy", "lab", rego, "--activate")
    assert "policy:lab@" in out
    try:
        result = _round_trip(server, attesters["hello"])
        assert result.submods["module"].status == "affirming"
    finally:
        server.provision(device.home, "activate", "default")
    broken = tmp_path / "broken.rego"
    broken.write_text("package veritee\nhardware := [")
    proc = server.cli(
        device.home,
        "verifier",
        "provision",
        "--verifier",
        server.url,
        "--token",
        server.token,
        "policy",
        "broken",
        broken,
    )
    assert proc.returncode == 9
    assert b"PolicyCompileError" in proc.stderr and b"Traceback" not in proc.stderr
    assert_still_serves(server, attesters)


# -- attacks -----------------------------------------------------------------------------------


def test_replayed_evidence(server: Server, attesters: dict[str, Attester]) -> None:
    with server.client() as client:
        url, session = client.new_session()
        evidence = attesters["hello"].evidence(nonce_of(session))
        first = client.submit(url, evidence, MEDIA_TYPE)
        assert first["status"] == "complete"
        # The same session again: a nonce is good for one submission.
        again = _refused(lambda: client.submit(url, evidence, MEDIA_TYPE))
        assert (again.status, again.check) == (409, "SessionAlreadyUsed")
        # The same evidence to a fresh session: its nonce is not this session's.
        url2, _ = client.new_session()
        replay = client.submit(url2, evidence, MEDIA_TYPE)
    result, failure = _failure(replay, server)
    assert failure["check"] == "NonceMismatch"
    assert result.submods["module"].trust_vector.instance_identity == 99
    assert result.submods["module"].status == "contraindicated"
    assert_still_serves(server, attesters)


def test_evidence_for_another_nonce(server: Server, attesters: dict[str, Attester]) -> None:
    _, done = _submit(server, attesters["hello"].evidence(os.urandom(32)))
    result, failure = _failure(done, server)
    assert failure["check"] == "NonceMismatch"
    assert all(a.status == "contraindicated" for a in result.submods.values())
    assert_still_serves(server, attesters)


def test_client_chosen_nonce_serves_once(server: Server, attesters: dict[str, Attester]) -> None:
    nonce = os.urandom(32)
    _, done = _submit(server, attesters["hello"].evidence(nonce), nonce=nonce)
    assert done["status"] == "complete"
    again = _refused(lambda: _submit(server, attesters["hello"].evidence(nonce), nonce=nonce))
    assert (again.status, again.check) == (409, "NonceAlreadyUsed")
    bad = _refused(lambda: server.client().new_session(nonce=b"short"))
    assert (bad.status, bad.check) == (400, "BadNonceRequest")
    assert_still_serves(server, attesters)


def test_unknown_device(
    server: Server, attesters: dict[str, Attester], fresh_device: Device, hello: Path
) -> None:
    with fresh_device.context() as ctx, server.client() as client:
        session = WasmSession(ctx)
        session.load(hello.read_bytes(), name="hello")
        token = client.attest(lambda nonce, _: (session.attest(nonce), MEDIA_TYPE))
        result = ear.verify(token, client.public_key())
    failure = result.extensions["ear.veritee.failure"]
    assert failure["check"] == "UntrustedDevice"
    assert "not a trusted CA" in failure["reason"]
    assert result.submods["platform"].trust_vector.instance_identity == 97
    assert_still_serves(server, attesters)


def _ueid(device: Device) -> str:
    return str(json.loads(device.ok("device", "show", "--json"))["ueid"])


def test_revoked_device(server: Server, attesters: dict[str, Attester], device: Device) -> None:
    ueid = _ueid(device)
    server.provision(device.home, "revoke", "--device", ueid, "--reason", "stolen")
    try:
        result = _round_trip(server, attesters["hello"])
        assert result.extensions["ear.veritee.failure"]["check"] == "DeviceRevoked"
        assert result.submods["platform"].trust_vector.instance_identity == 96
    finally:
        server.provision(device.home, "remove", "revocations", f"device:{ueid}")
    assert_still_serves(server, attesters)


def test_revoked_ca(server: Server, attesters: dict[str, Attester], device: Device) -> None:
    ca = device.home / "manufacturer" / "ca.pem"
    out = json.loads(server.provision(device.home, "--json", "revoke", "--ca", ca))
    try:
        result = _round_trip(server, attesters["hello"])
        assert result.extensions["ear.veritee.failure"]["check"] == "CaRevoked"
        assert result.submods["module"].status == "contraindicated"
    finally:
        server.provision(device.home, "remove", "revocations", out["id"])
    assert_still_serves(server, attesters)


def test_module_not_in_reference_values(server: Server, attesters: dict[str, Attester]) -> None:
    result = _round_trip(server, attesters["other"])
    module = result.submods["module"]
    assert module.status == "contraindicated"
    assert module.trust_vector.executables == 96
    assert attesters["other"].measurement.hex() in module.extensions["ear.veritee.reasons"][0]
    assert "ear.veritee.failure" not in result.extensions
    assert_still_serves(server, attesters)


def test_altered_boot_measurement(
    server: Server, attesters: dict[str, Attester], device: Device
) -> None:
    state = json.loads(server.provision(device.home, "--json", "show"))
    runtime = next(r for r in state["reference-values"] if r["name"] == "wasm-runtime")
    altered = {**runtime, "measurement": "ab" * 32}
    altered.pop("id")
    with server.client(token=True) as client:
        client.remove("reference-values", runtime["id"])
        [new_id] = client.add_reference_values(altered)
        try:
            result = _round_trip(server, attesters["hello"])
        finally:
            client.remove("reference-values", new_id)
            client.add_reference_values({k: v for k, v in runtime.items() if k != "id"})
    platform = result.submods["platform"]
    assert platform.status == "contraindicated"
    assert platform.trust_vector.executables == 96
    assert "boot component 'wasm-runtime'" in platform.extensions["ear.veritee.reasons"][0]
    assert_still_serves(server, attesters)


def _resigned_module_token(evidence: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    ev = Evidence.decode(evidence)
    module = cose.decode(ev.module)
    forged = cose.sign1(module.payload, key)
    return Evidence(ev.platform, ev.vtee, forged).encode()


def test_token_signed_with_a_wrong_key(server: Server, attesters: dict[str, Attester]) -> None:
    with server.client() as client:
        url, session = client.new_session()
        good = attesters["hello"].evidence(nonce_of(session))
        forged = _resigned_module_token(good, ec.generate_private_key(ec.SECP256R1()))
        done = client.submit(url, forged, MEDIA_TYPE)
    result, failure = _failure(done, server)
    assert failure["check"] == "BadSignature"
    assert "module token" in failure["reason"]
    assert result.submods["platform"].trust_vector.instance_identity == 99
    assert_still_serves(server, attesters)


def test_expired_session(device: Device, attesters: dict[str, Attester], tmp_path: Path) -> None:
    short = start_verifier(
        device.home, tmp_path / "short", "--session-ttl", "0.5", "--server-nonces-only"
    )
    try:
        short.provision(device.home, "trust-device")
        with short.client() as client:
            url, session = client.new_session()
            time.sleep(0.8)
            err = _refused(
                lambda: client.submit(
                    url, attesters["hello"].evidence(nonce_of(session)), MEDIA_TYPE
                )
            )
            assert (err.status, err.check) == (410, "SessionExpired")
            # A fresh session works at once.
            assert client.attest(attesters["hello"].builder)
            # This verifier mints every nonce itself.
            refused = _refused(lambda: client.new_session(nonce=os.urandom(32)))
            assert (refused.status, refused.check) == (400, "BadNonceRequest")
    finally:
        short.stop()


@pytest.mark.parametrize(
    ("body", "media_type", "status", "check"),
    [
        (b"x" * (64 * 1024 + 1), MEDIA_TYPE, 413, "BodyTooLarge"),
        (b"", MEDIA_TYPE, 400, "BadRequestBody"),
        (b"\xa0", "application/octet-stream", 415, "UnsupportedMediaType"),
        (b"\xa0", "", 415, "UnsupportedMediaType"),
    ],
    ids=["oversized", "empty", "media", "no-media"],
)
def test_bad_bodies_get_problems(
    server: Server,
    attesters: dict[str, Attester],
    body: bytes,
    media_type: str,
    status: int,
    check: str,
) -> None:
    with server.client() as client:
        url, _ = client.new_session()
    response = httpx.post(url, content=body, headers={"Content-Type": media_type})
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["check"] == check
    assert problem["status"] == status
    assert problem["detail"]
    assert_still_serves(server, attesters)


@pytest.mark.parametrize(
    ("body", "media_type", "submods"),
    [
        (b"\xa1garbage", MEDIA_TYPE, {"platform", "module"}),
        (b"not cbor at all", media.PSA_TOKEN, {"PSA_IOT"}),
        (b"\xd9\x01\x8f\xa0", media.CCA_TOKEN, {"CCA_SSD_PLATFORM", "CCA_REALM"}),
    ],
    ids=["garbage", "psa-garbage", "cca-empty"],
)
def test_malformed_evidence_gets_a_signed_result(
    server: Server,
    attesters: dict[str, Attester],
    body: bytes,
    media_type: str,
    submods: set[str],
) -> None:
    """Evidence that is not well-formed is the evidence's fault, not the request's: a signed
    result says so (every submodule contraindicated, instance-identity 99), as Veraison's."""
    url, done = _submit(server, body, media_type=media_type)
    assert done["status"] == "complete"
    result, failure = _failure(done, server)
    assert failure["check"] == "MalformedToken"
    assert set(result.submods) == submods
    for appraisal in result.submods.values():
        assert appraisal.status == "contraindicated"
        assert appraisal.trust_vector.instance_identity == 99
    with server.client() as client:
        assert "evidence" not in client.session(url)  # anybody's bytes are not kept
    assert_still_serves(server, attesters)


def test_truncated_evidence(server: Server, attesters: dict[str, Attester]) -> None:
    with server.client() as client:
        url, session = client.new_session()
        good = attesters["hello"].evidence(nonce_of(session))
        done = client.submit(url, good[: len(good) // 2], MEDIA_TYPE)
        # The session took its one submission, and its signed result says why it failed.
        assert done["status"] == "complete"
        _, failure = _failure(done, server)
        assert failure["check"] == "MalformedToken"
        assert client.session(url)["result"] == done["result"]
        again = _refused(lambda: client.submit(url, good, MEDIA_TYPE))
        assert (again.status, again.check) == (409, "SessionAlreadyUsed")
    assert_still_serves(server, attesters)


def test_unknown_session_and_routes(server: Server, attesters: dict[str, Attester]) -> None:
    for method, path in [
        ("GET", "/challenge-response/v1/session/nope"),
        ("POST", "/challenge-response/v1/session/0b83db32-a0ef-49a7-afaf-c7a250abc227"),
        ("DELETE", "/challenge-response/v1/session/nope"),
        ("GET", "/no/such/route"),
    ]:
        response = httpx.request(
            method, f"{server.url}{path}", content=b"\xa0", headers={"Content-Type": MEDIA_TYPE}
        )
        assert response.status_code == 404, (method, path)
        assert response.headers["content-type"] == "application/problem+json"
    assert_still_serves(server, attesters)


def test_sessions_cost_no_storage_and_their_ids_cannot_be_forged(
    server: Server, attesters: dict[str, Attester]
) -> None:
    with server.client(token=True) as client:
        before = len(client.sessions(limit=1000))
        urls = [client.new_session()[0] for _ in range(200)]  # an unauthenticated flood
        assert len(client.sessions(limit=1000)) == before  # ... stored nothing
        url = urls[0]
        assert client.session(url)["status"] == "waiting"  # yet each session is there
        # An id with its expiry pushed out, or another nonce, is no session at all.
        sid = url.rsplit("/", 1)[1]
        raw = bytearray(base64.urlsafe_b64decode(sid + "=" * (-len(sid) % 4)))
        raw[9:17] = (2**62).to_bytes(8, "big")
        forged = url.rsplit("/", 1)[0] + "/" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        err = _refused(lambda: client.session(forged))
        assert (err.status, err.check) == (404, "SessionNotFound")
        # Deleted, a session takes no evidence, from any worker, ever.
        client.delete(url)
        evidence = attesters["hello"].evidence(nonce_of(client.session(urls[1])))
        err = _refused(lambda: client.submit(url, evidence, MEDIA_TYPE))
        assert (err.status, err.check) == (404, "SessionNotFound")
        assert _refused(lambda: client.delete(url)).status == 404
        assert client.submit(urls[1], evidence, MEDIA_TYPE)["status"] == "complete"
    assert_still_serves(server, attesters)


@pytest.mark.parametrize("header", [None, "Bearer wrong-token-0123456789", "Basic abc", "Bearer"])
def test_provisioning_needs_the_token(
    server: Server, attesters: dict[str, Attester], header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}
    for method, path, body in [
        ("GET", "/provisioning/v1/state", None),
        ("POST", "/provisioning/v1/revocations", {"device": "01" * 33}),
        ("POST", "/provisioning/v1/trust-anchors", {"ca": "x"}),
        ("POST", "/provisioning/v1/active-policy", {"name": "strict"}),
        ("DELETE", "/provisioning/v1/trust-anchors/x", None),
    ]:
        response = httpx.request(method, f"{server.url}{path}", json=body, headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.json()["check"] == "Unauthorized"
        assert response.headers["www-authenticate"].startswith("Bearer")
    with server.client(token=False) as client:
        err = _refused(client.state)
        assert err.status == 401 and "--token-file STATE/admin-token" in str(err)  # what to do
    with server.client(token=True) as client:
        assert client.state()["active-policy"] == "default"
        assert client.state()["revocations"] == []
    assert_still_serves(server, attesters)


def test_bad_provisioning_input_is_a_problem(
    server: Server, attesters: dict[str, Attester]
) -> None:
    with server.client(token=True) as client:
        for call, check in [
            (lambda: client.add_trust_anchors([{"ca": "not pem"}]), "ProvisioningError"),
            (lambda: client.add_reference_values({"kind": "module"}), "ProvisioningError"),
            (lambda: client.revoke({"device": "zz"}), "ProvisioningError"),
            (lambda: client.activate_policy("nope"), "NotFound"),
            (lambda: client.put_policy("default", "package veritee"), "ProvisioningError"),
            (lambda: client.remove("policies", "default"), "ProvisioningError"),
            (lambda: client.remove("policies", "strict"), "NotFound"),
        ]:
            assert _refused(call).check == check
    response = httpx.post(
        f"{server.url}/provisioning/v1/deployment",
        content=b"{not json",
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert response.json()["check"] == "BadRequestBody"
    assert_still_serves(server, attesters)


# -- PSA and CCA through the service -----------------------------------------------------------


def _vector_claims(vector: Vector, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(vector(f"{name}.expected.json").read_text())
    return data


def e2e_reference_values(psa: dict[str, Any], cca: dict[str, Any]) -> list[dict[str, str]]:
    """Reference values (the verifier's JSON form) for Veraison's e2e PSA and CCA evidence,
    read from the vectors' expected claims."""
    refs: list[dict[str, str]] = [
        {
            "scheme": scheme,
            "kind": "boot",
            "name": c["measurement_type"],
            "version": c["version"],
            "measurement": c["measurement_value"],
        }
        for scheme, comps in (
            ("psa", psa["software_components"]),
            ("cca", cca["platform"]["claims"]["software_components"]),
        )
        for c in comps
    ]
    refs.append(
        {
            "scheme": "cca",
            "kind": "realm",
            "name": "e2e realm",
            "measurement": cca["realm"]["claims"]["initial_measurement"],
        }
    )
    return refs


def test_psa_and_cca_vectors_through_the_service(
    server: Server, attesters: dict[str, Attester], vector: Vector
) -> None:
    psa = _vector_claims(vector, "psa/veraison-e2e-psa-evidence")["claims"]
    cca = _vector_claims(vector, "cca/veraison-e2e-cca-evidence")
    platform = cca["platform"]["claims"]
    refs = e2e_reference_values(psa, cca)
    with server.client(token=True) as admin:
        admin.add_trust_anchors(
            [
                {
                    "scheme": "psa",
                    "key": vector("psa/veraison-e2e-iak-pub.pem").read_text(),
                    "instance-id": psa["instance_id"],
                },
                {
                    "scheme": "cca",
                    "key": json.loads(vector("cca/veraison-e2e-cpak-pub.jwk").read_text()),
                    "instance-id": platform["instance_id"],
                },
            ]
        )
        admin.add_reference_values(refs)
    token = vector("psa/veraison-e2e-psa-evidence.cbor").read_bytes()
    _, done = _submit(server, token, nonce=bytes.fromhex(psa["nonce"]), media_type=media.PSA_2_0_0)
    with server.client() as client:
        key = client.public_key()
    result = ear.verify(done["result"], key)
    assert list(result.submods) == ["PSA_IOT"]
    assert result.submods["PSA_IOT"].status == "affirming"
    # The same token with a changed nonce: a different session cannot take it.
    _, replay = _submit(server, token, media_type=media.PSA_TOKEN)
    assert ear.verify(replay["result"], key).extensions["ear.veritee.failure"]["check"] == (
        "NonceMismatch"
    )
    cca_token = vector("cca/veraison-e2e-cca-evidence.cbor").read_bytes()
    _, done = _submit(
        server,
        cca_token,
        nonce=bytes.fromhex(cca["realm"]["claims"]["challenge"]),
        media_type='application/eat-collection; profile="http://arm.com/CCA-SSD/1.0.0"',
    )
    result = ear.verify(done["result"], key)
    assert {n: a.status for n, a in result.submods.items()} == {
        "CCA_SSD_PLATFORM": "affirming",
        "CCA_REALM": "affirming",
    }
    assert_still_serves(server, attesters)


# -- operations --------------------------------------------------------------------------------


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_health_and_logs(server: Server, attesters: dict[str, Attester]) -> None:
    before = httpx.get(f"{server.url}/metrics").text
    for _ in range(3):
        _round_trip(server, attesters["hello"])
    after = httpx.get(f"{server.url}/metrics").text
    warn = {"scheme": "veritee", "outcome": "warning"}
    assert _metric(after, "veritee_appraisals_total", **warn) == (
        _metric(before, "veritee_appraisals_total", **warn) + 3
    )
    assert _metric(after, "veritee_appraisal_seconds_count") >= 3
    assert "veritee_appraisal_seconds_bucket" in after
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok"
    appraised = [r for r in server.logs() if r.get("msg") == "evidence appraised"]
    assert appraised and {"session", "scheme", "outcome", "policy", "ms"} <= set(appraised[-1])
    refused = [r for r in server.logs() if r.get("check") == "NonceMismatch"]
    assert refused, "a failed appraisal is logged with its check"


def test_ear_show_checks_the_signature(
    server: Server, device: Device, hello: Path, tmp_path: Path
) -> None:
    out = tmp_path / "result.jwt"
    proc = server.cli(
        device.home,
        "verifier",
        "attest",
        hello,  # the CLI loads its own copy into the secure world
        "--verifier",
        server.url,
        "-o",
        out,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"module: warning" in proc.stdout
    shown = server.cli(device.home, "ear", "show", out, "--verifier", server.url, "--json")
    assert shown.returncode == 0, shown.stderr.decode()
    claims = json.loads(shown.stdout)["claims"]
    assert claims["submods"]["platform"]["ear.status"] == "warning"
    # Checked against another key, the same result does not verify: exit 7.
    other = json.dumps(_jwk_of(ec.generate_private_key(ec.SECP256R1())))
    wrong = server.cli(device.home, "ear", "show", out, "--key", other)
    assert wrong.returncode == 7
    assert b"signature does not verify" in wrong.stderr and b"Traceback" not in wrong.stderr
    tampered = tmp_path / "tampered.jwt"
    head, payload, sig = out.read_text().strip().split(".")
    tampered.write_text(f"{head}.{payload[:-4]}AAAA.{sig}")
    assert (
        server.cli(device.home, "ear", "show", tampered, "--verifier", server.url).returncode == 7
    )
    assert server.cli(device.home, "ear", "show", "nothing-here").returncode == 2


def _jwk_of(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    from veritee.verifier.jwk import to_jwk

    return to_jwk(key.public_key())


def test_deployment_file(
    device: Device, hello: Path, attesters: dict[str, Attester], tmp_path: Path
) -> None:
    """A whole deployment from one YAML file, then a restart: nothing is lost."""
    state = tmp_path / "state"
    (tmp_path / "lab.rego").write_text(
        'package veritee\nimport rego.v1\nstatus.module := "warning"\n'
    )
    deploy = tmp_path / "deploy.yaml"
    deploy.write_text(
        f"""
trust-anchors:
  - ca: {device.home / "manufacturer" / "ca.pem"}
reference-values:
  - file: {device.home / "manufacturer" / "reference-values.json"}
  - kind: module
    wasm: {hello}
    name: hello
    version: "2.0"
policies:
  - name: lab
    file: lab.rego
    activate: true
"""
    )
    first = start_verifier(device.home, state)
    try:
        out = first.provision(device.home, "--file", deploy)
        assert "applied" in out
        result = _round_trip(first, attesters["hello"])
        assert result.submods["module"].policy_id.startswith("policy:lab@")  # type: ignore[union-attr]
        with first.client() as client:
            url, session = client.new_session()
            jwk = client.discovery()["ear-verification-key"]
    finally:
        first.stop()
    second = start_verifier(device.home, state)
    try:
        with second.client() as client:
            # Same key, same sessions, same endorsements and policy after the restart.
            assert client.discovery()["ear-verification-key"] == jwk
            # The session opened before the restart (the port changed, its path did not).
            moved = second.url + url[len(first.url) :]
            done = client.submit(moved, attesters["hello"].evidence(nonce_of(session)), MEDIA_TYPE)
            result = ear.verify(done["result"], client.public_key())
            assert result.submods["module"].extensions["ear.veraison.annotated-evidence"][
                "endorsed-as"
            ] == {"name": "hello", "version": "2.0"}
            assert result.submods["module"].policy_id.startswith("policy:lab@")  # type: ignore[union-attr]
        assert (state / "verifier-key.pem").stat().st_mode & 0o777 == 0o600
        assert (state / "admin-token").stat().st_mode & 0o777 == 0o600
    finally:
        second.stop()


def test_two_workers_share_key_and_state(
    device: Device, attesters: dict[str, Attester], hello: Path, tmp_path: Path
) -> None:
    s = start_verifier(device.home, tmp_path / "multi", "--workers", "2")
    try:
        s.provision(device.home, "trust-device")
        s.provision(device.home, "module", hello, "--name", "hello")
        pids: set[int] = set()
        for _ in range(300):
            pids.add(httpx.get(f"{s.url}/health").json()["pid"])
            if len(pids) == 2:
                break
        assert len(pids) == 2, "both workers answer on the one port"
        for _ in range(6):
            # New connections land on either worker: every result verifies with the one key.
            assert _round_trip(s, attesters["hello"]).submods["module"].status == "warning"
        metrics = httpx.get(f"{s.url}/metrics").text
        assert _metric(metrics, "veritee_appraisals_total", outcome="warning") == 6
    finally:
        s.stop()


def test_no_cbor_from_the_service_is_echoed_raw(server: Server) -> None:
    # A result names the check and its reason, never the attacker's bytes.
    with server.client() as client:
        url, _ = client.new_session()
    payload = cbor2.dumps({"profile": "<script>alert(1)</script>"})
    response = httpx.post(url, content=payload, headers={"Content-Type": MEDIA_TYPE})
    assert response.status_code == 200
    assert "<script>" not in response.text
    _, failure = _failure(response.json(), server)
    assert failure["check"] == "MalformedToken"
    assert "<script>" not in failure["reason"]


# -- the session body, written partly by hand ---------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=4_102_444_800_000))
def test_expiry_is_printed_as_datetime_prints_it(ms: int) -> None:
    # Sessions keep their times in milliseconds; the printed expiry must be exactly that.
    from veritee.verifier.service import _rfc3339

    t = ms / 1000
    expected = dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")
    assert _rfc3339(t) == expected.replace("+00:00", "Z")


@settings(max_examples=100, deadline=None)
@given(
    evidence=st.binary(min_size=1, max_size=4096),
    result=st.none() | st.text(max_size=200),
    reason=st.text(max_size=200),
    status=st.sampled_from(["complete", "failed"]),
)
def test_session_body_is_json_whatever_it_carries(
    evidence: bytes, result: str | None, reason: str, status: str
) -> None:
    # The evidence's base64 is appended to the encoder's output: the body must still be one
    # JSON object with every field, whatever the other (attacker-influenced) strings hold.
    from veritee.verifier.service import SessionRecord, _session_response

    failure = {"check": "MalformedToken", "reason": reason + '"},"x":"\\'}
    record = SessionRecord(
        "id",
        b"n" * 32,
        1.0,
        2.5,
        status,
        media.ACCEPT_LIST[0],
        evidence,
        result,
        failure=failure,
    )
    body = json.loads(_session_response(record, 200).body)
    assert body["evidence"] == {
        "type": media.ACCEPT_LIST[0],
        "value": base64.b64encode(evidence).decode(),
    }
    assert body["expiry"] == "1970-01-01T00:00:02.500Z"
    assert body.get("result") == result
    assert body.get("failure") == (failure if status == "failed" else None)
    assert body["accept"] == list(media.ACCEPT_LIST)
