"""Attested TLS between real processes on loopback: the module server (`veritee ratls serve`),
relying parties through the API, the CLI, openssl s_client and Python's ssl (the challenge in
the server name), mutual attestation, and the attacks."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from veritee import ratls
from veritee.errors import Error
from veritee.evidence.appraisal import ReferenceValues, TrustAnchors
from veritee.evidence.errors import MeasurementNotEndorsed
from veritee.ratls.channel import AttestedConnection, dial
from veritee.tee.ta import WasmSession
from veritee.tls import certificate, verify, wire
from veritee.tls.engine import Engine, Identity
from veritee.tls.errors import (
    CertificateExpired,
    ExporterMismatch,
    HandshakeFailed,
    KeyNotBound,
    MalformedExtension,
    NoEvidence,
    PeerRefused,
    StaleChallenge,
    Unreachable,
)
from veritee.tls.verify import Freshness
from veritee.wasm.runtime import measure

from ._certs import duplicate_extension
from .conftest import REPO, Device

START_BOUND = 60  # seconds for a server process to listen; generous, catches a hang only


@dataclass
class Server:
    host: str
    port: int
    measurement: bytes
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def output(self) -> str:
        return self.log.read_text()


def _start(device: Device, tmp: Path, *args: str | Path) -> Iterator[Server]:
    ready, log = tmp / "ready.json", tmp / "server.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "veritee",
                "--home",
                str(device.home),
                "ratls",
                "serve",
                *map(str, args),
                "--port",
                "0",
                "--ready-file",
                str(ready),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + START_BOUND
    while not ready.exists():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    try:
        yield Server(info["host"], info["port"], bytes.fromhex(info["measurement"]), proc, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=START_BOUND)


@pytest.fixture(scope="module")
def modules(wasm: Callable[..., Path]) -> dict[str, Path]:
    return {
        "directory": wasm("examples/ratls/directory.c"),
        "badge": wasm("examples/ratls/badge.c"),
        "hello": wasm("examples/hello/hello.c"),
    }


@pytest.fixture(scope="module")
def server(
    device: Device, modules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    yield from _start(device, tmp_path_factory.mktemp("ratls"), modules["directory"])


@pytest.fixture(scope="module")
def mutual_server(
    device: Device, modules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("ratls-mutual")
    yield from _start(device, tmp, modules["directory"], "--client-module", modules["badge"])


def _refs(device: Device, *wasm: Path) -> ReferenceValues:
    base = json.loads((device.home / "manufacturer" / "reference-values.json").read_text())
    return ReferenceValues.from_json(base).merge(
        ReferenceValues({}, {measure(p.read_bytes()): _name(p) for p in wasm})
    )


def _name(module: Path) -> str:
    return module.stem.rsplit("-", 1)[0]  # the wasm fixture numbers what it builds


def _anchors(device: Device) -> TrustAnchors:
    return TrustAnchors.from_pem((device.home / "manufacturer" / "ca.pem").read_bytes())


def _appraiser(device: Device, *wasm: Path) -> ratls.LocalAppraiser:
    return ratls.LocalAppraiser(_anchors(device), _refs(device, *wasm))


def _policy(device: Device, *wasm: Path) -> ratls.PeerPolicy:
    pem = (device.home / "manufacturer" / "ca.pem").read_bytes()
    base = json.loads((device.home / "manufacturer" / "reference-values.json").read_text())
    endorsed = [{"name": _name(p), "measurement": measure(p.read_bytes()).hex()} for p in wasm]
    return ratls.PeerPolicy(pem, {"boot": base["boot"], "modules": endorsed})


def _no_traceback(proc: subprocess.CompletedProcess[bytes]) -> str:
    err = proc.stderr.decode()
    assert "Traceback" not in err, err
    return err


# -- the happy paths ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ratls.MODES)
def test_client_talks_only_after_attestation(
    device: Device, server: Server, modules: dict[str, Path], mode: ratls.Mode
) -> None:
    appraiser = _appraiser(device, modules["directory"])
    with ratls.connect(server.host, server.port, appraiser, mode=mode) as conn:
        peer = conn.peer
        assert peer is not None
        assert peer.mode == mode and peer.measurement == server.measurement
        assert peer.endorsed_as == "directory" and peer.status == "warning"
        assert peer.lifecycle == "emulated" and peer.vtee == "default"
        assert conn.request(b"carol\n") == b"carol: room 1.01, ext 1101, facilities\n"


@pytest.mark.parametrize("mode", ratls.MODES)
def test_cli_connect_prints_the_verified_claims(
    device: Device, server: Server, modules: dict[str, Path], mode: str
) -> None:
    proc = device.cli(
        "ratls",
        "connect",
        server.address,
        "--mode",
        mode,
        "--module",
        modules["directory"],
        "--send",
        "bob",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["attested"] is True and out["mode"] == mode and out["status"] == "warning"
    assert out["module"]["measurement"] == server.measurement.hex()
    assert out["platform"]["lifecycle"] == "emulated"
    assert out["response"] == "bob: room 2.07, ext 2207, security team\n"
    assert out["certificate"].startswith("TCG DICE conceptual message wrapper")
    human = device.cli("ratls", "connect", server.address, "--module", modules["directory"])
    assert human.returncode == 0
    assert b"every check passed" in human.stderr and b"status     warning" in human.stderr


def test_openssl_s_client_sees_a_valid_tls_server(device: Device, server: Server) -> None:
    proc = subprocess.run(
        ["openssl", "s_client", "-connect", server.address, "-showcerts"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )
    # After the handshake the server sends its evidence frame (binary CBOR); when it reaches
    # s_client before s_client closes, s_client prints it raw after the text it prints.
    out = proc.stdout.decode("utf-8", "replace")
    assert proc.returncode == 0, proc.stderr
    assert "BEGIN CERTIFICATE" in out
    assert "New, TLSv1.3, Cipher is" in out
    assert "O = Veritee attested module" in out
    # Piped on, as docs/ratls.md shows, whether or not the raw frame came along.
    raw_frame = b"\x01\x00\x00\x00\x04\xa4\xff\xfe\x00"
    shown = device.cli("ratls", "show", "-", "--json", input=proc.stdout + raw_frame)
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["evidence_in"] == ["dice"] and info["binds_this_key"] is True
    assert info["format"].startswith("TCG DICE conceptual message wrapper")
    assert info["freshness"].startswith("no challenge")
    assert info["claims"]["module"]["measurement"] == server.measurement.hex()


def _first_certificate(text: str) -> bytes:
    """The first PEM certificate in s_client's output, as DER (parsed by cryptography)."""
    found = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)
    assert found, text
    cert = x509.load_pem_x509_certificate(found.group(0).encode())
    return cert.public_bytes(serialization.Encoding.DER)


def _evidence_by_hand(der: bytes) -> bytes:
    """The evidence, read with cryptography and cbor2 alone: the DICE CMW record."""
    ext = x509.load_der_x509_certificate(der).extensions.get_extension_for_oid(
        x509.ObjectIdentifier("2.23.133.5.4.9")
    )
    assert isinstance(ext.value, x509.UnrecognizedExtension) and not ext.critical
    media_type, evidence = cbor2.loads(ext.value.value)
    assert media_type == 'application/cmw+cbor; cmwc_t="tag:veritee.dev,2026:evidence"'
    assert isinstance(evidence, bytes)
    return evidence


def test_openssl_s_client_with_a_challenge_gets_evidence_over_it(
    device: Device, server: Server, modules: dict[str, Path]
) -> None:
    challenge = bytes(range(100, 132))
    name = wire.challenge_name(challenge)
    proc = subprocess.run(
        ["openssl", "s_client", "-connect", server.address, "-servername", name, "-showcerts"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )
    out = proc.stdout.decode("utf-8", "replace")
    assert proc.returncode == 0, proc.stderr
    assert "New, TLSv1.3, Cipher is" in out
    der = _first_certificate(out)
    evidence = _evidence_by_hand(der)
    # Veritee's own appraisal of what the plain client got: every check, over our challenge.
    appraiser = _appraiser(device, modules["directory"])
    peer = verify.appraise(
        der, Freshness("challenge", challenge), appraiser.anchors, appraiser.refs
    )
    assert peer.measurement == server.measurement and peer.nonce == challenge
    assert peer.endorsed_as == "directory"
    assert verify.decode_unverified(evidence)[2].nonce == challenge
    # The same certificate is no answer to any other challenge.
    with pytest.raises(StaleChallenge, match="replayed from an earlier connection"):
        verify.appraise(der, Freshness("challenge", bytes(32)), appraiser.anchors, appraiser.refs)
    # ... and the CLI says so too, from s_client's output.
    shown = device.cli("ratls", "show", "-", "--json", input=proc.stdout)
    info = json.loads(shown.stdout)
    assert info["freshness"] == f"over the challenge {challenge.hex()}"


def test_the_cli_makes_a_challenge_and_appraises_what_s_client_got(
    device: Device, server: Server, modules: dict[str, Path]
) -> None:
    made = device.cli("ratls", "challenge")
    assert made.returncode == 0, made.stderr
    name = made.stdout.decode().strip()
    challenge = wire.parse_server_name(name.encode())
    assert challenge is not None and len(challenge) == wire.CHALLENGE_BYTES
    proc = subprocess.run(
        ["openssl", "s_client", "-connect", server.address, "-servername", name],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    args = ("ratls", "show", "-", "--module", modules["directory"])
    good = device.cli(*args, "--challenge", name, input=proc.stdout)
    assert good.returncode == 0, good.stderr
    assert b"certificate (verified: every check passed)" in good.stdout
    assert b"[endorsed as directory" in good.stdout
    as_hex = device.cli(*args, "--challenge", challenge.hex(), "--json", input=proc.stdout)
    assert json.loads(as_hex.stdout)["verified"]["freshness"] == challenge.hex()
    other = device.cli(*args, "--challenge", wire.challenge_name(bytes(32)), input=proc.stdout)
    assert other.returncode == 7
    assert "answers another challenge" in _no_traceback(other)
    unendorsed = device.cli(
        "ratls", "show", "-", "--challenge", name, "--module", modules["hello"], input=proc.stdout
    )
    assert (
        unendorsed.returncode == 7
        and "not among the reference values" in unendorsed.stderr.decode()
    )
    for bad in ("zz.challenge.veritee", "abcd"):
        usage = device.cli(*args, "--challenge", bad, input=proc.stdout)
        assert usage.returncode == 2 and "neither a challenge server name" in _no_traceback(usage)
    assert device.cli("ratls", "show", "-", "--module", modules["directory"]).returncode == 2
    routed = device.cli("ratls", "challenge", "--server-name", "db.example.com")
    assert routed.stdout.decode().strip().endswith(".challenge.db.example.com")
    bad_name = device.cli("ratls", "challenge", "--server-name", "no_such host")
    assert bad_name.returncode == 2 and "not a DNS host name" in _no_traceback(bad_name)


def test_connect_through_a_routing_name(
    device: Device, server: Server, modules: dict[str, Path]
) -> None:
    # What an SNI router in front of the server would route on: *.challenge.db.example.com.
    for mode in ratls.MODES:
        proc = device.cli(
            "ratls",
            "connect",
            server.address,
            "--mode",
            mode,
            "--server-name",
            "db.example.com",
            "--module",
            modules["directory"],
            "--send",
            "bob",
            "--json",
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["mode"] == mode


HAPROXY_CONFIG = """
defaults
  mode tcp
  retries 0
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend sni_router
  bind 127.0.0.1:{port}
  tcp-request inspect-delay 5s
  tcp-request content accept if {{ req_ssl_hello_type 1 }}
  use_backend module if {{ req.ssl_sni -m end .challenge.db.example.com }}
  use_backend module if {{ req.ssl_sni -m str db.example.com }}
  default_backend elsewhere
backend module
  server directory {module}
backend elsewhere
  server nobody 127.0.0.1:{closed}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def sni_router(server: Server, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """HAProxy routing on the ClientHello's server name, as an ingress in front of modules."""
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if haproxy is None:
        pytest.skip("HAProxy is not installed (scripts/setup.sh --test installs it)")
    port = _free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(port=port, module=server.address, closed=_free_port()))
    log = tmp_path / "haproxy.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=sink, stderr=sink)
    try:
        deadline = time.monotonic() + START_BOUND
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(timeout=START_BOUND)


@pytest.mark.parametrize("mode", ratls.MODES)
def test_an_sni_router_passes_the_challenge_unchanged(
    device: Device,
    server: Server,
    modules: dict[str, Path],
    sni_router: tuple[str, int],
    mode: ratls.Mode,
) -> None:
    appraiser = _appraiser(device, modules["directory"])
    with ratls.connect(*sni_router, appraiser, mode=mode, server_name="db.example.com") as conn:
        assert conn.peer is not None and conn.peer.mode == mode
        assert conn.peer.measurement == server.measurement
        assert conn.request(b"carol\n") == b"carol: room 1.01, ext 1101, facilities\n"
    # It routes on the name: another one goes elsewhere (nobody listens there).
    with pytest.raises((Unreachable, HandshakeFailed)):
        ratls.connect(
            *sni_router, appraiser, mode=mode, server_name="other.example.com", timeout=10
        )


def test_python_ssl_client_with_a_challenge_is_served(
    device: Device, server: Server, modules: dict[str, Path]
) -> None:
    challenge = bytes(range(64))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # self-signed by design: the evidence vouches for it
    with (
        socket.create_connection((server.host, server.port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname=wire.challenge_name(challenge)) as tls,
    ):
        assert tls.version() == "TLSv1.3"
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        appraiser = _appraiser(device, modules["directory"])
        peer = verify.appraise(
            der, Freshness("challenge", challenge), appraiser.anchors, appraiser.refs
        )
        assert peer.measurement == server.measurement
        assert _evidence_by_hand(der)
        # Only now, attested: one DATA frame out, one back.
        tls.sendall(wire.frame(wire.FRAME_DATA, b"carol\n"))
        reader, frames = wire.FrameReader(), []
        while not frames:
            chunk = tls.recv(65536)
            assert chunk, "the module server closed without answering"
            frames = reader.feed(chunk)
    assert frames[0] == (wire.FRAME_DATA, b"carol: room 1.01, ext 1101, facilities\n")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("zz.challenge.veritee", "must be hex labels"),
        ("0011.challenge.veritee", "is 2 bytes; 8 to 64"),
    ],
)
def test_a_bad_challenge_in_the_server_name_is_refused_by_name(
    server: Server, name: str, reason: str
) -> None:
    proc = subprocess.run(
        ["openssl", "s_client", "-connect", server.address, "-servername", name],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode != 0 and b"BEGIN CERTIFICATE" not in proc.stdout
    assert b"alert handshake failure" in proc.stderr, proc.stderr
    deadline = time.monotonic() + 10
    while (
        "refused: MalformedChallenge: the challenge in the TLS server name"
        not in (log := server.output())
        or reason not in log
    ):
        assert time.monotonic() < deadline, log
        time.sleep(0.05)
    assert "Traceback" not in log and server.proc.poll() is None


def test_example_client_refuses_a_server_whose_measurement_differs(
    device: Device, server: Server, modules: dict[str, Path]
) -> None:
    script = REPO / "examples" / "ratls" / "client.py"
    base = [sys.executable, str(script), server.address, "--home", str(device.home)]
    good = subprocess.run(
        [*base, "alice", "--module", str(modules["directory"])],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert good.returncode == 0, good.stderr
    assert good.stdout == b"alice: room 4.12, ext 4412, on call Mondays\n"
    bad = subprocess.run(
        [*base, "alice", "--module", str(modules["hello"])],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1 and bad.stdout == b""
    assert b"refused: MeasurementNotEndorsed" in bad.stderr


# -- mutual attestation ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ratls.MODES)
def test_mutual_attestation_between_two_modules(
    device: Device, mutual_server: Server, modules: dict[str, Path], mode: ratls.Mode
) -> None:
    with device.context() as ctx:
        result = ratls.module_request(
            ctx,
            modules["badge"].read_bytes(),
            mutual_server.host,
            mutual_server.port,
            b"alice",
            mode=mode,
            peer=_policy(device, modules["directory"]),
            name="badge",
            server_name="db.example.com",  # what an SNI router in front would route on
        )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == b"badge: alice: room 4.12\n"  # the extension never left the TEE
    assert result.server is not None
    assert result.server["module"]["measurement"] == mutual_server.measurement.hex()
    deadline = time.monotonic() + 10
    while f"{mode} client badge: served" not in mutual_server.output():
        assert time.monotonic() < deadline, mutual_server.output()
        time.sleep(0.05)


@pytest.mark.parametrize("mode", ratls.MODES)
def test_a_server_that_requires_attestation_refuses_a_plain_client(
    device: Device, mutual_server: Server, modules: dict[str, Path], mode: ratls.Mode
) -> None:
    appraiser = _appraiser(device, modules["directory"])
    host, port = mutual_server.host, mutual_server.port
    # No challenge reaches a client: an attested client's evidence follows the handshake over
    # the exporter, in both modes, and a client that sends data instead is refused by name.
    with pytest.raises(PeerRefused) as caught, ratls.connect(host, port, appraiser, mode=mode) as c:
        c.request(b"alice")
    assert "NoEvidence: the peer sent data before its evidence" in str(caught.value)


def test_a_server_refuses_a_client_module_it_does_not_endorse(
    device: Device, mutual_server: Server, modules: dict[str, Path]
) -> None:
    with device.context() as ctx, pytest.raises(PeerRefused, match="MeasurementNotEndorsed"):
        ratls.module_request(
            ctx,
            modules["hello"].read_bytes(),
            mutual_server.host,
            mutual_server.port,
            b"alice",
            peer=_policy(device, modules["directory"]),
        )


def test_a_client_module_refuses_a_server_it_does_not_endorse(
    device: Device, mutual_server: Server, modules: dict[str, Path]
) -> None:
    with device.context() as ctx, pytest.raises(MeasurementNotEndorsed):
        ratls.module_request(
            ctx,
            modules["badge"].read_bytes(),
            mutual_server.host,
            mutual_server.port,
            b"alice",
            peer=_policy(device, modules["hello"]),
            name="badge",
        )


@pytest.mark.parametrize("mode", ratls.MODES)
def test_a_relying_server_admits_an_attested_client_module(
    device: Device, modules: dict[str, Path], mode: ratls.Mode
) -> None:
    got: dict[str, Any] = {}
    appraiser = _appraiser(device, modules["badge"])
    with ratls.RelyingServer(("127.0.0.1", 0), appraiser) as relying:

        def serve() -> None:
            with relying.accept() as conn:
                got["peer"] = conn.peer
                got["request"] = conn.receive()
                conn.send(b"dave: room 9.99, ext 9999\n")

        thread = threading.Thread(target=serve)
        thread.start()
        with device.context() as ctx:
            result = ratls.module_request(
                ctx,
                modules["badge"].read_bytes(),
                *relying.address,
                b"dave",
                mode=mode,
                peer=None,
                name="badge",
            )
        thread.join(timeout=30)
    assert got["request"] == b"dave"
    # A client's evidence is over the client exporter in either mode (no challenge reaches it).
    assert got["peer"].module_name == "badge" and got["peer"].mode == "exporter"
    assert result.stdout == b"badge: dave: room 9.99\n" and result.server is None


# -- attacks: rogue servers in this process, the victim a real relying party ----------------------


def _rogue(identity: Identity) -> tuple[ratls.RelyingServer, threading.Thread]:
    """An RA-TLS server that presents whatever ``identity`` makes, for one connection."""
    rogue = ratls.RelyingServer(("127.0.0.1", 0), None, identity=identity, timeout=10)

    def run() -> None:
        try:
            with rogue.accept() as conn:
                conn.receive()
        except (Error, OSError):
            pass  # the victim hangs up on it: that is the point

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return rogue, thread


class Recorder(ratls.LocalAppraiser):
    """A relying party that keeps what it appraised, as an eavesdropper could."""

    def __init__(self, base: ratls.LocalAppraiser, challenge: bytes | None = None) -> None:
        super().__init__(base.anchors, base.refs)
        self.fixed = challenge
        self.seen: list[tuple[bytes, bytes | None]] = []

    def challenge(self) -> Freshness:
        return Freshness("challenge", self.fixed) if self.fixed else super().challenge()

    def appraise(self, cert: bytes, fr: Freshness, ev: bytes | None = None) -> ratls.AttestedPeer:
        self.seen.append((cert, ev))
        return super().appraise(cert, fr, ev)


def _capture(
    server: Server,
    appraiser: ratls.LocalAppraiser,
    mode: ratls.Mode,
    challenge: bytes | None = None,
) -> tuple[bytes, bytes | None]:
    recorder = Recorder(appraiser, challenge)
    with ratls.connect(server.host, server.port, recorder, mode=mode):
        pass
    cert, evidence = recorder.seen[0]
    return cert, evidence


ATTACKER = ec.generate_private_key(ec.SECP256R1())


def _forge(evidence: bytes, *, now: dt.datetime | None = None) -> bytes:
    return certificate.build(ATTACKER, evidence, name="module", now=now or dt.datetime.now(dt.UTC))


def _victim(
    device: Device,
    rogue: ratls.RelyingServer,
    modules: dict[str, Path],
    mode: ratls.Mode = "challenge",
) -> None:
    appraiser = _appraiser(device, modules["directory"])
    with ratls.connect(*rogue.address, appraiser, mode=mode, timeout=10) as conn:
        conn.request(b"alice")  # pragma: no cover - never reached: connect raises
    raise AssertionError("the victim was fooled")  # pragma: no cover


def test_replayed_certificate_is_a_stale_challenge(
    device: Device, server: Server, modules: dict[str, Path]
) -> None:
    old_cert, _ = _capture(server, _appraiser(device, modules["directory"]), "challenge")
    old = certificate.read(old_cert).evidence
    assert old is not None
    rogue, thread = _rogue(Identity(ATTACKER, certify=lambda _nonce: _forge(old)))
    with rogue, pytest.raises(StaleChallenge, match="replayed from an earlier connection"):
        _victim(device, rogue, modules)
    thread.join(timeout=10)


def test_a_reused_challenge_gets_new_evidence_and_no_freshness_of_its_own(
    device: Device, server: Server, modules: dict[str, Path]
) -> None:
    # As docs/ratls.md says: the server keeps no record of challenges and answers each
    # ClientHello anew; freshness is the relying party's, who must not reuse a challenge.
    appraiser = _appraiser(device, modules["directory"])
    challenge = bytes(range(1, 33))
    first, _ = _capture(server, appraiser, "challenge", challenge)
    second, _ = _capture(server, appraiser, "challenge", challenge)
    assert first != second  # a new certificate, with new evidence, each time
    for der in (first, second):
        peer = verify.appraise(
            der, Freshness("challenge", challenge), appraiser.anchors, appraiser.refs
        )
        assert peer.nonce == challenge


def _swapping_relay(
    upstream: Server, old: bytes, new: bytes
) -> tuple[socket.socket, threading.Thread]:
    """An on-path attacker: relays one connection to ``upstream``, replacing ``old`` by ``new``
    (same length) in what the client sends first, its ClientHello."""
    listener = socket.create_server(("127.0.0.1", 0))

    def pipe(src: socket.socket, dst: socket.socket, first: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if first:
                    data, first = data.replace(old, new), False
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def run() -> None:
        client, _ = listener.accept()
        with client, socket.create_connection((upstream.host, upstream.port)) as server_side:
            back = threading.Thread(target=pipe, args=(server_side, client, False), daemon=True)
            back.start()
            pipe(client, server_side, True)
            back.join(timeout=10)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return listener, thread


def test_an_on_path_attacker_who_swaps_the_challenge_breaks_the_handshake(
    device: Device, server: Server, modules: dict[str, Path]
) -> None:
    # The server name is in the clear, so a relay can swap the victim's challenge for one it
    # holds evidence for, or just another: the module then answers that one, but the
    # ClientHello is part of the handshake transcript the module signs, so the victim's TLS
    # refuses the handshake before any appraisal.
    mine, theirs = bytes(range(32)), bytes(range(32, 64))
    recorder = Recorder(_appraiser(device, modules["directory"]), mine)
    label = wire.challenge_name(mine).split(".")[0].encode()  # one label: 16 bytes in hex
    assert label == mine[:16].hex().encode()
    listener, thread = _swapping_relay(server, label, theirs[:16].hex().encode())
    with listener, pytest.raises(HandshakeFailed, match="TLS handshake failed"):
        ratls.connect(*listener.getsockname()[:2], recorder, timeout=10)
    thread.join(timeout=10)
    assert recorder.seen == []  # nothing reached appraisal
    # The same relay, swapping nothing, passes: it was the swap that broke the handshake.
    listener, thread = _swapping_relay(server, label, label)
    with listener, ratls.connect(*listener.getsockname()[:2], recorder, timeout=10) as conn:
        assert conn.peer is not None and conn.peer.nonce == mine
    thread.join(timeout=10)


def test_replayed_exporter_evidence_is_over_another_session(
    device: Device, server: Server, modules: dict[str, Path]
) -> None:
    _, old = _capture(server, _appraiser(device, modules["directory"]), "exporter")
    assert old is not None
    # The rogue lacks the module's key, so it presents its own certificate and replays the
    # evidence message of the earlier session.
    rogue, thread = _rogue(
        Identity(ATTACKER, certify=lambda _n: _forge(old), evidence=lambda _exporter: old)
    )
    with rogue, pytest.raises(ExporterMismatch, match="another TLS session"):
        _victim(device, rogue, modules, "exporter")
    thread.join(timeout=10)


def test_relay_forwarding_the_modules_evidence_in_exporter_mode(
    device: Device, server: Server, modules: dict[str, Path]
) -> None:
    upstream = _appraiser(device, modules["directory"])

    def relay_evidence(_own_exporter: bytes) -> bytes:
        _, evidence = _capture(server, upstream, "exporter")  # the module's, over ITS session
        assert evidence is not None
        return evidence

    def certify(_nonce: bytes) -> bytes:
        return certificate.build_plain(ATTACKER, name="relay", now=dt.datetime.now(dt.UTC))

    rogue, thread = _rogue(Identity(ATTACKER, certify=certify, evidence=relay_evidence))
    with rogue, pytest.raises(ExporterMismatch):
        _victim(device, rogue, modules, "exporter")
    thread.join(timeout=10)


def test_relay_forwarding_the_challenge_cannot_bind_its_own_key(
    device: Device, server: Server, modules: dict[str, Path]
) -> None:
    upstream = _appraiser(device, modules["directory"])

    def certify(victims_challenge: bytes) -> bytes:
        # Forward the victim's challenge to the module: its evidence is fresh, but for the
        # module's key, and the relay can only present it with its own.
        cert, _ = _capture(server, upstream, "challenge", victims_challenge)
        evidence = certificate.read(cert).evidence
        assert evidence is not None
        return _forge(evidence)

    rogue, thread = _rogue(Identity(ATTACKER, certify=certify))
    with rogue, pytest.raises(KeyNotBound, match="vouches for another key"):
        _victim(device, rogue, modules)
    thread.join(timeout=10)


@pytest.mark.parametrize(
    ("user_data", "error"),
    # The host's data lands in the token's host-data claim, never in the user data the
    # certificate's key is bound through (issue 18, 11a): both are KeyNotBound now. (Before,
    # the attacker's key digest reached user data, and only KeyOutsideSecureWorld stopped it.)
    [("attacker key", KeyNotBound), ("another key", KeyNotBound)],
)
def test_host_with_runtime_ta_evidence_for_its_own_key(
    device: Device, modules: dict[str, Path], user_data: str, error: type[Error]
) -> None:
    # The untrusted host loads the endorsed module in the runtime TA, asks for evidence over
    # the victim's challenge with user data of its choosing, and terminates TLS itself.
    spki = certificate.spki_of(ATTACKER.public_key())
    data = hashlib.sha256(spki if user_data == "attacker key" else b"other").digest()
    ctx = device.context()
    session = WasmSession(ctx)
    session.load(modules["directory"].read_bytes())
    rogue, thread = _rogue(Identity(ATTACKER, certify=lambda n: _forge(session.attest(n, data))))
    try:
        with rogue, pytest.raises(error):
            _victim(device, rogue, modules)
    finally:
        ctx.close()
    thread.join(timeout=10)


def test_evidence_for_a_module_not_in_the_reference_values(
    device: Device, server: Server, modules: dict[str, Path]
) -> None:
    with pytest.raises(MeasurementNotEndorsed):
        ratls.connect(server.host, server.port, _appraiser(device, modules["hello"]))
    proc = device.cli("ratls", "connect", server.address, "--module", modules["hello"])
    assert proc.returncode == 7
    assert "is not among the reference values" in _no_traceback(proc)


def test_expired_certificate(device: Device, server: Server, modules: dict[str, Path]) -> None:
    stale = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)

    def certify(nonce: bytes) -> bytes:
        return _forge(b"whatever", now=stale)

    rogue, thread = _rogue(Identity(ATTACKER, certify=certify))
    with rogue:
        proc = device.cli("ratls", "connect", f"{rogue.address[0]}:{rogue.address[1]}")
    thread.join(timeout=10)
    assert proc.returncode == 7
    assert "peer certificate expired at" in _no_traceback(proc)
    rogue, thread = _rogue(Identity(ATTACKER, certify=certify))
    with rogue, pytest.raises(CertificateExpired):
        _victim(device, rogue, modules)
    thread.join(timeout=10)


def _rogue_cli(device: Device, identity: Identity, *args: str) -> str:
    """The CLI's ``ratls connect`` against a rogue: it must refuse with exit 7 and one line."""
    rogue, thread = _rogue(identity)
    with rogue:
        proc = device.cli("ratls", "connect", f"{rogue.address[0]}:{rogue.address[1]}", *args)
    thread.join(timeout=10)
    assert proc.returncode == 7, proc.stderr
    return _no_traceback(proc)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (certificate.cmw_value(b"\xa4" * 40)[:-3], "not valid CBOR"),  # truncated
        (b"\x00garbage", "no CMW record"),
        (cbor2.dumps(["application/eat+cwt", b"\xd2\x84"]), "Veritee evidence is"),
        (cbor2.dumps([10571, b"\xd9\x02\x3b"]), "CoAP content format 10571"),
        (cbor2.dumps(cbor2.CBORTag(1668557429, b"ce")), "CMW CBOR tag (1668557429)"),
        (certificate.cmw_value(b"evidence") + b"\x00", "trailing or odd bytes"),
    ],
)
def test_a_malformed_cmw_is_a_clear_error(device: Device, value: bytes, match: str) -> None:
    def certify(_nonce: bytes) -> bytes:
        name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "garbage")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(ATTACKER.public_key())
            .serial_number(7)
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(minutes=10))
            .add_extension(x509.UnrecognizedExtension(wire.OID_DICE_CMW, value), critical=False)
            .sign(ATTACKER, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.DER)

    assert match in _rogue_cli(device, Identity(ATTACKER, certify=certify))


def test_a_certificate_with_the_evidence_stripped_is_no_attested_endpoint(
    device: Device, server: Server, modules: dict[str, Path]
) -> None:
    # The host terminates TLS with its own key and a certificate without the extension (what a
    # stripping proxy shows): a plain TLS server as far as TLS goes, no RA-TLS endpoint.
    def certify(_nonce: bytes) -> bytes:
        return certificate.build_plain(ATTACKER, name="directory", now=dt.datetime.now(dt.UTC))

    text = _rogue_cli(device, Identity(ATTACKER, certify=certify))
    assert "carries no evidence extension" in text
    rogue, thread = _rogue(Identity(ATTACKER, certify=certify))
    with rogue, pytest.raises(NoEvidence, match="not an attested endpoint"):
        _victim(device, rogue, modules)
    thread.join(timeout=10)


@pytest.mark.parametrize("second", ["same", "other"])
def test_a_certificate_with_the_evidence_extension_twice_is_refused(
    device: Device, server: Server, modules: dict[str, Path], second: str
) -> None:
    # The real module's evidence over the victim's challenge, next to a second copy (the same,
    # or other bytes a tool that reads the second one would see): neither copy counts.
    upstream = _appraiser(device, modules["directory"])

    def certify(victims_challenge: bytes) -> bytes:
        cert, _ = _capture(server, upstream, "challenge", victims_challenge)
        evidence = certificate.read(cert).evidence
        assert evidence is not None
        value = certificate.cmw_value(evidence)
        return duplicate_extension(
            ATTACKER, value, second=value if second == "same" else certificate.cmw_value(b"x")
        )

    rogue, thread = _rogue(Identity(ATTACKER, certify=certify))
    with rogue, pytest.raises(MalformedExtension, match=r"2\.23\.133\.5\.4\.9 more than once"):
        _victim(device, rogue, modules)
    thread.join(timeout=10)


def test_the_server_keeps_serving_after_garbage(
    device: Device, mutual_server: Server, modules: dict[str, Path]
) -> None:
    host, port = mutual_server.host, mutual_server.port
    for junk in (b"GET / HTTP/1.0\r\n\r\n", b"VRA\x01\x00\x03abc", b"\x16\x03\x01\x00\x05hello"):
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(junk)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(10)
            while sock.recv(4096):
                pass

    # A client that attests with garbage in its certificate's extension, and garbage evidence.
    def certify(_nonce: bytes) -> bytes:
        return _forge(b"\xa1\x01garbage-evidence")

    identity = Identity(ATTACKER, certify=certify, evidence=lambda _n: b"\xff\xfe")
    for mode in ratls.MODES:
        engine = Engine("client", identity, _appraiser(device, modules["directory"]), mode=mode)
        conn = AttestedConnection(dial(host, port, 10), engine, timeout=10)
        engine.start()
        with pytest.raises(PeerRefused, match="MalformedToken"):
            conn.handshake()
            conn.request(b"alice")
        conn.close()
    # ... and then a good client module is served as before.
    with device.context() as ctx:
        result = ratls.module_request(
            ctx,
            modules["badge"].read_bytes(),
            host,
            port,
            b"bob",
            peer=_policy(device, modules["directory"]),
            name="badge",
        )
    assert result.stdout == b"badge: bob: room 2.07\n"
    assert mutual_server.proc.poll() is None
    log = mutual_server.output()
    assert "Traceback" not in log
    assert "refused: HandshakeFailed: TLS handshake failed: http request" in log
    assert "refused: ProtocolViolation: the stream starts with the pre-handshake hello" in log
    assert "refused: MalformedToken" in log


def test_connect_usage_errors_are_one_line(device: Device, modules: dict[str, Path]) -> None:
    for args, code, text in [
        (("nowhere",), 2, "expected HOST:PORT"),
        (("127.0.0.1:1",), 4, "cannot connect to 127.0.0.1:1"),  # README's table: 4
        (
            ("127.0.0.1:9", "--verifier", "http://x", "--module", str(modules["hello"])),
            2,
            "leave out --ca",
        ),
    ]:
        proc = device.cli("ratls", "connect", *args)
        assert proc.returncode == code, proc.stderr
        assert text in _no_traceback(proc)
    missing = device.cli("ratls", "serve", modules["hello"], "--port", "0", "--vtee", "nope")
    assert missing.returncode == 4 and "not running" in _no_traceback(missing)


def test_every_command_has_help_with_an_example(device: Device) -> None:
    for command in ("connect", "serve", "show", "challenge"):
        proc = device.cli("ratls", command, "--help")
        assert proc.returncode == 0
        assert "Example" in proc.stdout.decode()


# -- through the verification service -------------------------------------------------------------


@pytest.fixture(scope="module")
def verifier(
    device: Device, modules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("verifier")
    ready = tmp / "ready.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "veritee",
            "--home",
            str(device.home),
            "verifier",
            "serve",
            "--port",
            "0",
            "--state",
            str(tmp / "state"),
            "--ready-file",
            str(ready),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + START_BOUND
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        url = json.loads(ready.read_text())["url"]
        token = (tmp / "state" / "admin-token").read_text().strip()
        for args in (
            ("trust-device",),
            ("module", str(modules["directory"]), "--name", "directory"),
        ):
            out = device.cli("verifier", "provision", "--verifier", url, "--token", token, *args)
            assert out.returncode == 0, out.stderr
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=START_BOUND)


@pytest.mark.parametrize("mode", ratls.MODES)
def test_appraisal_through_the_verification_service(
    device: Device, server: Server, verifier: str, mode: str
) -> None:
    proc = device.cli(
        "ratls",
        "connect",
        server.address,
        "--verifier",
        verifier,
        "--mode",
        mode,
        "--send",
        "alice",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["appraised_by"] == verifier and out["status"] == "warning"
    assert out["module"]["endorsed_as"] == "directory" and out["ear"].count(".") == 2
    assert out["response"].startswith("alice: room 4.12")


def test_the_verification_service_refuses_an_unendorsed_module(
    device: Device, verifier: str, modules: dict[str, Path], tmp_path: Path
) -> None:
    for server in _start(device, tmp_path, modules["badge"]):
        proc = device.cli("ratls", "connect", server.address, "--verifier", verifier)
        assert proc.returncode == 7
        assert "not among the reference values" in _no_traceback(proc)


def test_the_tls_ta_refuses_malformed_requests(device: Device, modules: dict[str, Path]) -> None:
    import cbor2

    from veritee.tee import client as teec
    from veritee.tee.ta import CMD_TLS_FEED, CMD_TLS_LOAD, CMD_TLS_OPEN, TLS_TA

    def call(session: teec.Session, cmd: int, request: Any) -> None:
        raw = request if isinstance(request, bytes) else cbor2.dumps(request)
        session.invoke(cmd, teec.Operation([teec.memref_in(raw), teec.memref_out(1 << 16)]))

    with device.context() as ctx:
        session = ctx.open_session(TLS_TA)
        for cmd, request, text in [
            (CMD_TLS_OPEN, {"role": "server"}, "LOAD one first"),
            (CMD_TLS_LOAD, b"\xff\xff", "not valid CBOR"),
            (CMD_TLS_LOAD, {"module": "not bytes"}, "module's bytes"),
            (CMD_TLS_LOAD, {"module": b"\x00asm", "args": "x"}, "args must be a list"),
        ]:
            with pytest.raises(teec.TeecError, match=text):
                call(session, cmd, request)
        call(session, CMD_TLS_LOAD, {"module": modules["directory"].read_bytes()})
        for cmd, request, text in [
            (CMD_TLS_LOAD, {"module": b""}, "already holds a module"),
            (CMD_TLS_OPEN, {"role": "both"}, "role must be"),
            (CMD_TLS_OPEN, {"role": "client", "mode": "psk"}, "mode must be one of"),
            (CMD_TLS_OPEN, {"role": "client", "server_name": 7}, "server_name must be"),
            (CMD_TLS_OPEN, {"role": "client", "server_name": "a b"}, "not a DNS host name"),
            (CMD_TLS_OPEN, {"role": "client", "server_name": "a" * 112}, "leave room"),
            (CMD_TLS_FEED, {"conn": 99, "data": b"x"}, "no open connection 99"),
            (0x7F, {}, "has no command"),
        ]:
            with pytest.raises(teec.TeecError, match=text):
                call(session, cmd, request)
        # What an older client sends first is refused by name, inside the answer (no TA error).
        out = teec.memref_out(1 << 16)
        raw = cbor2.dumps({"role": "server", "data": b"VRA\x01\x00\x20" + bytes(32)})
        session.invoke(CMD_TLS_OPEN, teec.Operation([teec.memref_in(raw), out]))
        answer = cbor2.loads(out.buffer)
        assert answer["done"] and answer["error"]["check"] == "ProtocolViolation"
        assert "pre-handshake hello of older Veritee clients" in answer["error"]["reason"]
        session.close()
