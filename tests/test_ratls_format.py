"""RA-TLS formats and checks, without sockets: the challenge in the server name, frames,
certificates with evidence (a DICE CMW; the old format still read), and every verification
step on real evidence from a real secure world."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from veritee import ratls
from veritee.errors import EvidenceError
from veritee.evidence.appraisal import ReferenceValues, TrustAnchors
from veritee.evidence.errors import MalformedToken, MeasurementNotEndorsed, NonceMismatch
from veritee.evidence.readable import describe
from veritee.ratls.appraisers import judge_ear, wire_nonce
from veritee.tls import certificate, verify, wire
from veritee.tls.errors import (
    CertificateExpired,
    ExporterMismatch,
    KeyNotBound,
    KeyOutsideSecureWorld,
    MalformedCertificate,
    MalformedChallenge,
    MalformedExtension,
    NoEvidence,
    ProtocolViolation,
    StaleChallenge,
)
from veritee.tls.verify import Freshness
from veritee.verifier import ear
from veritee.wasm.runtime import measure

from ._certs import duplicate_extension
from .conftest import Device

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
KEY = ec.generate_private_key(ec.SECP256R1())


# -- the challenge in the TLS server name, and the frames ----------------------------------


@pytest.mark.parametrize("size", [8, 16, 17, 32, 64])
def test_challenge_names_round_trip_in_dns_labels(size: int) -> None:
    challenge = bytes(range(200, 200 + size)) if size <= 56 else bytes(range(size))
    name = wire.challenge_name(challenge)
    assert name.endswith(".challenge.veritee") and len(name) <= wire.MAX_SERVER_NAME
    assert all(0 < len(label) <= 63 for label in name.split("."))
    assert wire.parse_server_name(name.encode()) == challenge
    # DNS names are case-insensitive, a trailing dot is the same name: a proxy may do either.
    assert wire.parse_server_name(name.upper().encode() + b".") == challenge
    routed = wire.challenge_name(challenge, "db.example.com")
    assert routed.endswith(".challenge.db.example.com")
    assert wire.parse_server_name(routed.encode()) == challenge


@pytest.mark.parametrize(
    "name", [None, b"", b"localhost", b"db.example.com", b"challenge.example.com", b"veritee"]
)
def test_names_without_a_challenge_are_exporter_mode(name: bytes | None) -> None:
    assert wire.parse_server_name(name) is None


@pytest.mark.parametrize(
    ("name", "match"),
    [
        (b"zz00zz00zz00zz00.challenge.veritee", "must be hex labels"),
        (b"0011223344.5566778899.x.challenge.veritee", "must be hex labels"),
        (b"00112233445566778.challenge.veritee", "odd number of hex digits"),
        (b"00112233445566.challenge.veritee", "is 7 bytes; 8 to 64"),
        (("00" * 32 + ".") * 2 + b"00.challenge.veritee".decode(), "must be hex labels"),
        (b".".join([b"00" * 16] * 4 + [b"00", b"challenge", b"veritee"]), "65 bytes; 8 to 64"),
        (b"\xff\xfe.challenge.veritee", "not ASCII"),
    ],
)
def test_bad_challenges_in_the_server_name_are_named(name: bytes | str, match: str) -> None:
    raw = name.encode() if isinstance(name, str) else name
    with pytest.raises(MalformedChallenge, match=match):
        wire.parse_server_name(raw)


def test_challenge_names_refuse_what_no_sni_can_carry() -> None:
    with pytest.raises(ValueError, match="8 to 64 bytes"):
        wire.challenge_name(b"short")
    with pytest.raises(ValueError, match="not a DNS host name"):
        wire.challenge_name(bytes(32), "bad_name!")
    with pytest.raises(ValueError, match="leave room for a challenge"):
        wire.challenge_name(bytes(32), "a" * 60 + "." + "b" * 60)


def test_the_old_pre_handshake_hello_is_told_apart_and_named() -> None:
    with pytest.raises(ProtocolViolation, match="hello of older Veritee clients"):
        wire.check_first_byte(ord("V"))
    wire.check_first_byte(0x16)  # a TLS handshake record: on to OpenSSL


def test_frames_split_anywhere_and_oversized_ones_are_refused_from_the_header() -> None:
    stream = wire.frame(wire.FRAME_EVIDENCE, b"e" * 100) + wire.frame(wire.FRAME_DATA, b"hi")
    reader, got = wire.FrameReader(), []
    for i in range(len(stream)):
        got += reader.feed(stream[i : i + 1])
    assert got == [(wire.FRAME_EVIDENCE, b"e" * 100), (wire.FRAME_DATA, b"hi")]
    with pytest.raises(ProtocolViolation, match="announces 65537 bytes; at most 65536"):
        wire.FrameReader().feed(bytes([wire.FRAME_EVIDENCE]) + (65537).to_bytes(4, "big"))
    with pytest.raises(ProtocolViolation, match="unknown frame kind 0x68"):
        wire.FrameReader().feed(b"hello")


def test_error_frames_carry_the_check_and_are_bounded() -> None:
    (kind, body), *_ = wire.FrameReader().feed(wire.error_frame("StaleChallenge", "old"))
    assert kind == wire.FRAME_ERROR and wire.parse_error(body) == ("StaleChallenge", "old")
    long = wire.error_frame("X", "é" * 5000)
    assert len(long) <= wire.FRAME_HEADER + wire.MAX_ERROR_BYTES
    assert wire.parse_error(b"no check here") == ("PeerRefused", "no check here")


def test_no_challenge_nonces_are_marked_and_fit_a_module_token() -> None:
    nonce = wire.no_challenge_nonce()
    assert wire.is_no_challenge(nonce) and 8 <= len(nonce) <= 64
    assert nonce != wire.no_challenge_nonce()


# -- certificates ---------------------------------------------------------------------------


def _cert(extensions: list[tuple[x509.ObjectIdentifier, bytes]], key: Any = KEY) -> bytes:
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "t")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(hours=1))
    )
    for oid, value in extensions:
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_certificate_carries_the_evidence_once_in_a_dice_cmw() -> None:
    der = certificate.build(KEY, b"evidence bytes", name="directory", now=NOW)
    cert = x509.load_der_x509_certificate(der)
    dice = cert.extensions.get_extension_for_oid(wire.OID_DICE_CMW)
    assert not dice.critical
    assert [e.oid for e in cert.extensions] == [x509.oid.ExtensionOID.BASIC_CONSTRAINTS, dice.oid]
    # A CMW CBOR record: array(2), the media type as text, the evidence as a byte string.
    value = dice.value.public_bytes()
    evidence_type = 'application/cmw+cbor; cmwc_t="tag:veritee.dev,2026:evidence"'
    assert cbor2.loads(value) == [evidence_type, b"evidence bytes"]
    assert value[:2] == b"\x82\x78"  # array(2), text of 24..255 bytes: no CBOR tag around it
    read = certificate.read(der)
    assert read.evidence == b"evidence bytes" and read.carriers == ("dice",)
    assert not read.old_format and "conceptual message wrapper" in read.format_note
    assert read.spki_sha256 == hashlib.sha256(certificate.spki_of(KEY.public_key())).digest()
    assert wire.OID_DICE_CMW.dotted_string == "2.23.133.5.4.9"
    assert wire.OLD_OID_VERITEE_EVIDENCE.dotted_string not in str(cert.extensions)


def test_old_format_certificates_are_still_read_and_said_to_be_old() -> None:
    both = _cert(
        [
            (wire.OLD_OID_VERITEE_EVIDENCE, b"ev"),
            (wire.OID_DICE_CMW, certificate.old_dice_value(b"ev")),
        ]
    )
    dice_only = _cert([(wire.OID_DICE_CMW, certificate.old_dice_value(b"ev"))])
    ours_only = _cert([(wire.OLD_OID_VERITEE_EVIDENCE, b"ev")])
    for der, carriers in (
        (both, ("dice", "veritee")),
        (dice_only, ("dice",)),
        (ours_only, ("veritee",)),
    ):
        read = certificate.read(der)
        assert read.evidence == b"ev" and read.carriers == carriers and read.old_format
        assert "old format" in read.format_note
    assert certificate.read(_cert([])).evidence is None
    assert certificate.old_dice_value(b"ev")[:5] == b"\xda\x56\x52\x41\x01"


def _octet_string(body: bytes) -> bytes:
    """DER: the length in the fewest bytes."""
    n = len(body)
    if n < 0x80:
        return b"\x04" + bytes([n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\x04" + bytes([0x80 | len(size)]) + size + body


@pytest.mark.parametrize("size", [10, 300])
def test_a_dice_cmw_wrapped_in_a_der_octet_string_is_read_too(size: int) -> None:
    evidence = b"e" * size
    value = _octet_string(certificate.cmw_value(evidence))
    assert certificate.read(_cert([(wire.OID_DICE_CMW, value)])).evidence == evidence
    for bad, match in [
        (value + b"\x00", "trailing or odd bytes"),
        (value[:-1], "trailing or odd bytes"),
        (b"\x04", "truncated"),
        (b"\x04\x85" + value[2:], "bad length"),
        (b"\x04\x82\x00\x05" + certificate.cmw_value(b"abc")[:5], "not DER"),
        (_octet_string(b"\xff\x00"), "not valid CBOR"),
    ]:
        with pytest.raises(MalformedExtension, match=match):
            certificate.read(_cert([(wire.OID_DICE_CMW, bad)]))


def test_a_dice_cmw_may_say_it_is_evidence() -> None:
    value = cbor2.dumps([wire.CMW_TYPE, b"ev", wire.CMW_IND_EVIDENCE])
    assert certificate.read(_cert([(wire.OID_DICE_CMW, value)])).evidence == b"ev"


@pytest.mark.parametrize(
    ("extensions", "match"),
    [
        (
            [
                (wire.OLD_OID_VERITEE_EVIDENCE, b"one"),
                (wire.OID_DICE_CMW, certificate.old_dice_value(b"two")),
            ],
            "disagree",
        ),
        (
            [
                (wire.OLD_OID_VERITEE_EVIDENCE, b"ev"),
                (wire.OID_DICE_CMW, certificate.cmw_value(b"ev")),
            ],
            "carries the evidence twice",
        ),
        ([(wire.OID_DICE_CMW, b"\xff\x00garbage")], "not valid CBOR"),
        ([(wire.OID_DICE_CMW, cbor2.dumps(b"untagged"))], "no CMW record"),
        ([(wire.OID_DICE_CMW, cbor2.dumps([wire.CMW_TYPE]))], "no CMW record"),
        ([(wire.OID_DICE_CMW, cbor2.dumps({"type": wire.CMW_TYPE}))], "no CMW record"),
        ([(wire.OID_DICE_CMW, cbor2.dumps(cbor2.CBORTag(60000, b"sgx")))], "CMW CBOR tag"),
        ([(wire.OID_DICE_CMW, cbor2.dumps([10571, b"ev"]))], "CoAP content format 10571"),
        (
            [(wire.OID_DICE_CMW, cbor2.dumps(["application/eat+cwt", b"ev"]))],
            "holds 'application/eat\\+cwt'",
        ),
        ([(wire.OID_DICE_CMW, cbor2.dumps([[1], b"ev"]))], "neither a media type"),
        ([(wire.OID_DICE_CMW, cbor2.dumps([wire.CMW_TYPE, "ev"]))], "must be a byte string"),
        ([(wire.OID_DICE_CMW, cbor2.dumps([wire.CMW_TYPE, b"ev", 8]))], "does not say evidence"),
        (
            [(wire.OID_DICE_CMW, cbor2.dumps(cbor2.CBORTag(0x56524101, [1])))],
            "must be a byte string",
        ),
        ([(wire.OID_DICE_CMW, certificate.cmw_value(b"ev") + b"\x00")], "trailing"),
        ([(wire.OID_DICE_CMW, certificate.old_dice_value(b"ev") + b"\x00")], "trailing"),
        ([(wire.OID_DICE_CMW, certificate.cmw_value(b"ev")[:-1])], "not valid"),
        ([(wire.OID_DICE_CMW, certificate.cmw_value(b""))], "empty"),
        ([(wire.OLD_OID_VERITEE_EVIDENCE, b"")], "empty"),
        (
            [(wire.OID_DICE_CMW, certificate.cmw_value(b"x" * (wire.MAX_EVIDENCE_BYTES + 1)))],
            "at most",
        ),
    ],
)
def test_malformed_extensions_are_named(
    extensions: list[tuple[x509.ObjectIdentifier, bytes]], match: str
) -> None:
    with pytest.raises(MalformedExtension, match=match):
        certificate.read(_cert(extensions))


def test_a_duplicated_evidence_extension_is_refused() -> None:
    der = duplicate_extension(KEY, certificate.cmw_value(b"ev"))
    with pytest.raises(x509.DuplicateExtension):
        x509.load_der_x509_certificate(der).extensions  # noqa: B018 - the parse is the point
    with pytest.raises(MalformedExtension, match=r"2\.23\.133\.5\.4\.9 more than once"):
        certificate.read(der)
    other = duplicate_extension(KEY, certificate.cmw_value(b"ev"), second=b"\x82\x60\x40")
    with pytest.raises(MalformedExtension, match="more than once"):
        certificate.read(other)


def test_garbage_and_truncated_certificates() -> None:
    der = certificate.build(KEY, b"evidence", name="m", now=NOW)
    for bad in (b"", b"\x30\x82garbage", der[: len(der) // 2], der[:-1]):
        with pytest.raises(MalformedCertificate):
            certificate.read(bad)


def test_a_certificate_with_an_impossible_version_is_malformed() -> None:
    # cryptography raises InvalidVersion (no ValueError) for this: it must still read as malformed.
    der = certificate.build(KEY, b"evidence", name="m", now=NOW)
    v3 = b"\xa0\x03\x02\x01\x02"
    assert v3 in der
    with pytest.raises(MalformedCertificate, match="does not parse"):
        certificate.read(der.replace(v3, b"\xa0\x03\x02\x01\x01", 1))


@settings(max_examples=200, deadline=None)
@given(value=st.binary(max_size=300))
def test_any_dice_extension_value_reads_or_fails_cleanly(value: bytes) -> None:
    try:
        read = certificate.read(_cert([(wire.OID_DICE_CMW, value)]))
    except MalformedExtension:
        return
    encode = certificate.old_dice_value if read.old_format else certificate.cmw_value
    exact = encode(read.evidence or b"")
    assert value in (exact, _octet_string(exact))  # only exact encodings pass


@settings(max_examples=100, deadline=None)
@given(value=st.binary(min_size=1, max_size=300))
def test_any_evidence_bytes_fail_appraisal_cleanly(value: bytes) -> None:
    der = _cert([(wire.OID_DICE_CMW, certificate.cmw_value(value))])
    with pytest.raises(EvidenceError):
        verify.appraise(
            der, Freshness("challenge", bytes(32)), TrustAnchors(()), ReferenceValues(), now=NOW
        )


def test_validity_period() -> None:
    cert = certificate.read(certificate.build(KEY, b"ev", name="m", now=NOW))
    certificate.check_validity(cert, NOW)
    with pytest.raises(CertificateExpired, match="expired at"):
        certificate.check_validity(cert, NOW + certificate.CERT_LIFETIME + dt.timedelta(seconds=1))
    with pytest.raises(CertificateExpired, match="check the clocks"):
        certificate.check_validity(cert, NOW - dt.timedelta(hours=1))


def test_freshness_failures_say_which_kind() -> None:
    challenge = Freshness("challenge", b"c" * 32)
    with pytest.raises(StaleChallenge, match="replayed from an earlier connection"):
        verify.check_freshness(b"d" * 32, challenge)
    with pytest.raises(StaleChallenge, match="marked no-challenge"):
        verify.check_freshness(wire.no_challenge_nonce(), challenge)
    with pytest.raises(ExporterMismatch, match="another TLS session"):
        verify.check_freshness(b"d" * 32, Freshness("exporter", b"c" * 32))
    assert issubclass(StaleChallenge, NonceMismatch) and issubclass(ExporterMismatch, NonceMismatch)


# -- every check on real evidence from a real secure world ----------------------------------


class Recorder(ratls.LocalAppraiser):
    """A relying party that keeps what it appraised (what an eavesdropper could keep too)."""

    def __init__(self, anchors: TrustAnchors, refs: ReferenceValues) -> None:
        super().__init__(anchors, refs)
        self.seen: list[tuple[bytes, Freshness, bytes | None]] = []

    def appraise(
        self, cert_der: bytes, freshness: Freshness, evidence: bytes | None = None
    ) -> ratls.AttestedPeer:
        self.seen.append((cert_der, freshness, evidence))
        return super().appraise(cert_der, freshness, evidence)


@dataclass
class Real:
    anchors: TrustAnchors
    refs: ReferenceValues
    cert: bytes  # challenge mode, over `challenge`
    challenge: Freshness
    exporter_cert: bytes
    exporter: Freshness
    exporter_evidence: bytes
    module: bytes


@pytest.fixture(scope="module")
def real(device: Device, wasm: Callable[..., Path]) -> Iterator[Real]:
    module = wasm("examples/ratls/directory.c").read_bytes()
    anchors = TrustAnchors.from_pem((device.home / "manufacturer" / "ca.pem").read_bytes())
    refs = ReferenceValues.from_json(
        json.loads((device.home / "manufacturer" / "reference-values.json").read_text())
    ).merge(ReferenceValues({}, {measure(module): "directory"}))
    server = ratls.ModuleServer(device.context, module, ("127.0.0.1", 0), instances=1)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        recorder = Recorder(anchors, refs)
        for mode in ratls.MODES:
            with ratls.connect(*server.address, recorder, mode=mode) as conn:
                assert conn.request(b"alice").startswith(b"alice: room 4.12")
        (cert, challenge, _), (exp_cert, exporter, exp_evidence) = recorder.seen
        assert exp_evidence is not None
        yield Real(anchors, refs, cert, challenge, exp_cert, exporter, exp_evidence, module)
    finally:
        server.shutdown()
        server.close()


def test_real_certificate_passes_and_says_what_it_proves(real: Real) -> None:
    peer = verify.appraise(real.cert, real.challenge, real.anchors, real.refs)
    assert peer.module_name == "module" and peer.endorsed_as == "directory"
    assert peer.measurement == measure(real.module)
    assert peer.lifecycle == "emulated" and peer.status == "warning"
    assert peer.key_sha256 == certificate.read(real.cert).spki_sha256
    assert json.loads(json.dumps(peer.claims()))["module"]["measurement"] == peer.measurement.hex()


def test_replayed_certificate_fails_as_a_stale_challenge(real: Real) -> None:
    later = Freshness("challenge", bytes(32))
    with pytest.raises(StaleChallenge):
        verify.appraise(real.cert, later, real.anchors, real.refs)


def test_exporter_evidence_over_another_session_fails(real: Real) -> None:
    other = Freshness("exporter", bytes(32))
    with pytest.raises(ExporterMismatch):
        verify.appraise(
            real.exporter_cert, other, real.anchors, real.refs, evidence=real.exporter_evidence
        )
    # The exporter-mode certificate itself only proves a marked, self-chosen nonce.
    with pytest.raises(StaleChallenge, match="no-challenge"):
        verify.appraise(real.exporter_cert, real.challenge, real.anchors, real.refs)


def test_exporter_mode_needs_the_evidence_message(real: Real) -> None:
    with pytest.raises(NoEvidence):
        verify.appraise(real.exporter_cert, real.exporter, real.anchors, real.refs)
    peer = verify.appraise(
        real.exporter_cert, real.exporter, real.anchors, real.refs, evidence=real.exporter_evidence
    )
    assert peer.mode == "exporter"


def test_expired_and_not_yet_valid_certificates(real: Real) -> None:
    cert = certificate.read(real.cert)
    for when in (cert.not_after + dt.timedelta(seconds=1), cert.not_before - dt.timedelta(1)):
        with pytest.raises(CertificateExpired):
            verify.appraise(real.cert, real.challenge, real.anchors, real.refs, now=when)


def test_evidence_copied_into_a_certificate_of_another_key(real: Real) -> None:
    evidence = certificate.read(real.cert).evidence
    assert evidence is not None
    forged = certificate.build(KEY, evidence, name="mitm", now=dt.datetime.now(dt.UTC))
    with pytest.raises(KeyNotBound, match="vouches for another key"):
        verify.appraise(forged, real.challenge, real.anchors, real.refs)


def test_a_key_the_host_holds_is_refused_its_data_lands_in_host_data(
    real: Real, device: Device
) -> None:
    """The host asks the runtime TA for evidence carrying its own key's digest: it lands in
    host-data, so the user data the certificate's key is bound through does not match."""
    from veritee.tee.ta import WasmSession

    spki = certificate.spki_of(KEY.public_key())
    with device.context() as ctx:
        session = WasmSession(ctx)
        session.load(real.module)
        evidence = session.attest(real.challenge.nonce, hashlib.sha256(spki).digest())
    forged = certificate.build(KEY, evidence, name="host", now=dt.datetime.now(dt.UTC))
    with pytest.raises(KeyNotBound, match="vouches for another key"):
        verify.appraise(forged, real.challenge, real.anchors, real.refs)
    assert describe(evidence)["module"]["host_data"] == hashlib.sha256(spki).hexdigest()
    assert describe(evidence)["module"]["user_data"] == ""


def test_user_data_naming_a_key_outside_the_secure_world_is_refused() -> None:
    """Check 5' holds on its own: were user data ever to name a key the secure world did not
    mint (a module passing a host's key digest through WASI-RA, say), the certificate's key
    must still be the module attestation key the vtee token binds."""
    from cryptography.hazmat.primitives.asymmetric import x25519

    from veritee.evidence import cose
    from veritee.evidence.claims import ModuleClaims, VteeClaims

    cert = certificate.read(certificate.build(KEY, b"\xa0", name="m", now=dt.datetime.now(dt.UTC)))
    minted = ec.generate_private_key(ec.SECP256R1()).public_key()
    vtee = VteeClaims(bytes(16), bytes(32), bytes(32), cose.ec_key_to_cose(minted), 0)
    provisioning = cose.x25519_key_to_cose(x25519.X25519PrivateKey.generate().public_key())
    module = ModuleClaims(
        bytes(32), bytes(32), bytes(32), "m", provisioning, 0, user_data=cert.spki_sha256
    )
    with pytest.raises(KeyOutsideSecureWorld, match="held outside the secure world"):
        verify.check_key(cert, module, vtee)


def test_module_not_in_the_reference_values(real: Real) -> None:
    boot_only = ReferenceValues(real.refs.boot, {})
    with pytest.raises(MeasurementNotEndorsed, match="not among the reference values"):
        verify.appraise(real.cert, real.challenge, real.anchors, boot_only)


# -- judging a verification service's result (EAR) --------------------------------------------


def _ear(nonce: bytes, *, failure: dict[str, str] | None = None, executables: int = 2) -> ear.Ear:
    vector = ear.TrustVector(instance_identity=2, hardware=32, executables=executables)
    status = ear.status_from_vector(vector)
    extensions = {"ear.veritee.failure": failure} if failure else {}
    return ear.Ear(
        iat=0,
        verifier_id=ear.VerifierId("test", "0"),
        submods={"module": ear.Appraisal(status=status, trust_vector=vector)},
        nonce=wire_nonce(nonce),
        extensions=extensions,
    )


def test_judge_ear(real: Real) -> None:
    evidence = certificate.read(real.cert).evidence
    assert evidence is not None
    accept = frozenset({"affirming", "warning"})

    def judge(result: ear.Ear, cert: bytes = real.cert, fr: Freshness = real.challenge) -> Any:
        return judge_ear(result, "jwt", cert, evidence, fr, accept=accept, verifier="v")

    assert judge(_ear(real.challenge.nonce)).status == "warning"
    # The peer's lifecycle is the one the service vouched for (endorsed by the device's chain),
    # never the unverified token's; a result that names none gives the least.
    assert judge(_ear(real.challenge.nonce)).lifecycle == "emulated"
    vouched = _ear(real.challenge.nonce)
    platform = ear.Appraisal(
        status="warning",
        trust_vector=ear.TrustVector(instance_identity=2, hardware=32),
        extensions={"ear.veraison.annotated-evidence": {"lifecycle": "debug"}},
    )
    vouched = dataclasses.replace(vouched, submods={**vouched.submods, "platform": platform})
    assert judge(vouched).lifecycle == "debug"  # the token says "emulated": the EAR counts
    nonce_failure = {"check": "NonceMismatch", "reason": "not the session's nonce"}
    with pytest.raises(StaleChallenge, match="verification service says"):
        judge(_ear(real.challenge.nonce, failure=nonce_failure))
    with pytest.raises(ExporterMismatch):
        judge(_ear(real.exporter.nonce, failure=nonce_failure), fr=real.exporter)
    with pytest.raises(StaleChallenge, match="another nonce"):
        judge(_ear(bytes(32)))
    with pytest.raises(MeasurementNotEndorsed):
        judge(_ear(real.challenge.nonce, executables=96))
    untrusted = {"check": "UntrustedDevice", "reason": "unknown CA"}
    with pytest.raises(EvidenceError, match="unknown CA"):
        judge(_ear(real.challenge.nonce, failure=untrusted))
    forged = certificate.build(KEY, evidence, name="mitm", now=dt.datetime.now(dt.UTC))
    with pytest.raises(KeyNotBound):
        judge(_ear(real.challenge.nonce), cert=forged)


def test_garbage_evidence_is_malformed_not_a_crash(real: Real) -> None:
    with pytest.raises(MalformedToken):
        judge_ear(
            _ear(real.challenge.nonce),
            "jwt",
            real.cert,
            b"\xa1garbage",
            real.challenge,
            accept=frozenset({"warning"}),
            verifier="v",
        )
