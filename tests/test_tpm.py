"""The TPM 2.0 backend on a real software TPM (swtpm), one per test: identity and credential
activation, quotes and their appraisal, sealing under the boot PCR, NV counters; and each
attack on them, as the adversary would run it against real TPMs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPMA_NV, TPMA_OBJECT
from tpm2_pytss.types import TPM2B_NV_PUBLIC, TPM2B_PUBLIC, TPMS_NV_PUBLIC

from veritee.errors import EvidenceError, SealingError
from veritee.evidence import tpm as appraisal
from veritee.evidence.errors import (
    AkNotActivated,
    AkRejected,
    MalformedQuote,
    PcrDigestMismatch,
    QuoteNotFresh,
    TpmEventNotEndorsed,
    UntrustedEk,
)
from veritee.tee.backends.tpm import (
    NV_COUNTER_BASE,
    CounterRolledBack,
    CounterTampered,
    CredentialRefused,
    TpmBackend,
    UnsealRefused,
)

from ._swtpm import EkCa, Swtpm, ek_ca, make_ek_ca, provision_swtpm, swtpm

__all__ = ["ek_ca", "swtpm"]  # fixtures, re-exported so pytest finds them here

STAGES = [
    ("interpreter", hashlib.sha256(b"python 3.11").digest()),
    ("libraries", hashlib.sha256(b"cryptography, cbor2, wasmtime").digest()),
    ("secure-world", hashlib.sha256(b"veritee secure world").digest()),
    ("runtime", hashlib.sha256(b"wasmtime 30").digest()),
    ("config", hashlib.sha256(b"boot config").digest()),
]
REFERENCE = {name: [digest] for name, digest in STAGES}
MODIFIED = hashlib.sha256(b"veritee secure world, with a backdoor").digest()


def _software_ak() -> bytes:
    """A well-formed AK public area with no TPM behind it (for the parser tests)."""
    attrs = (
        TPMA_OBJECT.RESTRICTED
        | TPMA_OBJECT.SIGN_ENCRYPT
        | TPMA_OBJECT.FIXEDTPM
        | TPMA_OBJECT.FIXEDPARENT
        | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.USERWITHAUTH
    )
    pub = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=attrs)
    numbers = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    pub.publicArea.unique.ecc.x = numbers.x.to_bytes(32, "big")
    pub.publicArea.unique.ecc.y = numbers.y.to_bytes(32, "big")
    return bytes(pub.marshal())


_AK = _software_ak()
VTEE_KEY_DIGEST = hashlib.sha256(b"the vTEE's attestation key").digest()


def boot(tpm: TpmBackend, stages: list[tuple[str, bytes]] = STAGES) -> None:
    for name, digest in stages:
        tpm.extend(name, digest)


def modified_stages() -> list[tuple[str, bytes]]:
    return [(n, MODIFIED if n == "secure-world" else d) for n, d in STAGES]


@pytest.fixture
def backend(swtpm: Swtpm, tmp_path: Path) -> Iterator[TpmBackend]:
    with TpmBackend(tmp_path / "tpm-state", swtpm.tcti) as tpm:
        yield tpm


def activated_ak(tpm: TpmBackend, ca: EkCa) -> bytes:
    """The verifier's registrar flow: EK chain, then credential activation of the AK."""
    ident = tpm.identity()
    ek = appraisal.verify_ek_certificate(ident.ek_certificate, [ca.cert])
    challenge = appraisal.make_activation_challenge(ek, ident.ak_public)
    answer = tpm.activate_credential(challenge.credential_blob, challenge.secret)
    appraisal.check_activation(challenge, answer)
    return ident.ak_public


# -- identity ------------------------------------------------------------------------------


def test_ek_chain_and_credential_activation(backend: TpmBackend, swtpm: Swtpm) -> None:
    ak = activated_ak(backend, swtpm.ca)
    # The AK survives a reboot of the TPM (its blobs are kept) and activates again.
    swtpm.restart()
    with TpmBackend(swtpm.dir.parent / "tpm-state", swtpm.tcti) as again:
        assert activated_ak(again, swtpm.ca) == ak


def test_ek_certificate_from_untrusted_ca_is_refused(tmp_path: Path, ek_ca: EkCa) -> None:
    """Adversary: a machine owner who runs their own (software) TPM with an EK certificate
    from a CA of their own, to pass it off as a manufacturer's TPM."""
    rogue = provision_swtpm(tmp_path / "rogue", make_ek_ca("Rogue TPM manufacturer"))
    rogue.start()
    try:
        with TpmBackend(tmp_path / "rogue-state", rogue.tcti) as tpm:
            ident = tpm.identity()
            with pytest.raises(UntrustedEk, match="does not chain to a trusted"):
                appraisal.verify_ek_certificate(ident.ek_certificate, [ek_ca.cert])
            # The same TPM passes against its own CA: the refusal is the anchor's.
            appraisal.verify_ek_certificate(ident.ek_certificate, [rogue.ca.cert])
    finally:
        rogue.stop()


def test_ak_from_another_tpm_does_not_activate(
    tmp_path: Path, backend: TpmBackend, swtpm: Swtpm
) -> None:
    """Adversary: holds a genuine TPM A (trusted EK) and a TPM B (or a software key store)
    whose AK they control; presents A's EK certificate with B's AK."""
    other = provision_swtpm(tmp_path / "other", swtpm.ca)
    other.start()
    try:
        with TpmBackend(tmp_path / "other-state", other.tcti) as tpm_b:
            genuine_ek = backend.identity().ek_certificate
            foreign_ak = tpm_b.identity().ak_public
            ek = appraisal.verify_ek_certificate(genuine_ek, [swtpm.ca.cert])
            challenge = appraisal.make_activation_challenge(ek, foreign_ak)
            # TPM B holds the AK but not A's EK; TPM A holds the EK but not the AK: neither
            # can recover the secret.
            for tpm in (tpm_b, backend):
                with pytest.raises(CredentialRefused):
                    tpm.activate_credential(challenge.credential_blob, challenge.secret)
            # What the adversary can send back is a guess.
            with pytest.raises(AkNotActivated):
                appraisal.check_activation(challenge, bytes(appraisal.CREDENTIAL_BYTES))
            # B's own EK with B's AK still activates: the check is the pairing.
            ident_b = tpm_b.identity()
            ek_b = appraisal.verify_ek_certificate(ident_b.ek_certificate, [other.ca.cert])
            ch_b = appraisal.make_activation_challenge(ek_b, ident_b.ak_public)
            appraisal.check_activation(
                ch_b, tpm_b.activate_credential(ch_b.credential_blob, ch_b.secret)
            )
    finally:
        other.stop()
    # The owner's TPM still activates its own AK.
    activated_ak(backend, swtpm.ca)


# -- quotes --------------------------------------------------------------------------------


def test_quote_appraises(backend: TpmBackend, swtpm: Swtpm) -> None:
    ak = activated_ak(backend, swtpm.ca)
    boot(backend)
    binding = appraisal.quote_binding(VTEE_KEY_DIGEST, b"nonce-1")
    quote = backend.quote(binding)
    result = appraisal.verify_quote(quote, ak, binding, REFERENCE)
    assert [e.description for e in result.events] == [n for n, _ in STAGES]
    assert result.pcrs[appraisal.VERITEE_PCR] == backend.pcr_value()


def test_quote_replayed_with_an_old_nonce_is_refused(backend: TpmBackend, swtpm: Swtpm) -> None:
    """Adversary: the host's owner (or a relay) who recorded a quote answering an earlier
    challenge and replays it to a new one (or for another vTEE key)."""
    ak = activated_ak(backend, swtpm.ca)
    boot(backend)
    old = backend.quote(appraisal.quote_binding(VTEE_KEY_DIGEST, b"nonce-old"))
    fresh = appraisal.quote_binding(VTEE_KEY_DIGEST, b"nonce-new")
    with pytest.raises(QuoteNotFresh, match="does not bind"):
        appraisal.verify_quote(old, ak, fresh, REFERENCE)
    other_vtee = appraisal.quote_binding(hashlib.sha256(b"another key").digest(), b"nonce-old")
    with pytest.raises(QuoteNotFresh):
        appraisal.verify_quote(old, ak, other_vtee, REFERENCE)
    # A quote made for the fresh challenge passes.
    appraisal.verify_quote(backend.quote(fresh), ak, fresh, REFERENCE)


def test_quote_over_a_modified_stage_is_refused(backend: TpmBackend, swtpm: Swtpm) -> None:
    """Adversary: the host's owner boots a modified secure-world stage (honest log)."""
    ak = activated_ak(backend, swtpm.ca)
    boot(backend, modified_stages())
    binding = appraisal.quote_binding(VTEE_KEY_DIGEST, b"nonce")
    with pytest.raises(TpmEventNotEndorsed, match="secure-world"):
        appraisal.verify_quote(backend.quote(binding), ak, binding, REFERENCE)
    # After a reboot into the genuine stages, the quote passes.
    swtpm.restart()
    with TpmBackend(swtpm.dir.parent / "tpm-state", swtpm.tcti) as tpm:
        boot(tpm)
        appraisal.verify_quote(tpm.quote(binding), ak, binding, REFERENCE)


def test_event_log_altered_to_match_references_is_refused(
    backend: TpmBackend, swtpm: Swtpm
) -> None:
    """Adversary: boots a modified stage, then rewrites the event log so every record is a
    reference value; the PCR the TPM quotes still holds the modified stage's extension."""
    ak = activated_ak(backend, swtpm.ca)
    boot(backend, modified_stages())
    binding = appraisal.quote_binding(VTEE_KEY_DIGEST, b"nonce")
    quote = backend.quote(binding)
    forged_log = appraisal.encode_event_log(
        appraisal.TpmEvent(appraisal.VERITEE_PCR, d, n) for n, d in STAGES
    )
    forged = appraisal.TpmQuote(quote.attest, quote.signature, forged_log)
    with pytest.raises(PcrDigestMismatch, match="does not replay"):
        appraisal.verify_quote(forged, ak, binding, REFERENCE)
    # A log that drops the modified record instead does not replay either.
    dropped = appraisal.encode_event_log(
        appraisal.TpmEvent(appraisal.VERITEE_PCR, d, n)
        for n, d in modified_stages()
        if d != MODIFIED
    )
    with pytest.raises(PcrDigestMismatch):
        appraisal.verify_quote(
            appraisal.TpmQuote(quote.attest, quote.signature, dropped), ak, binding, REFERENCE
        )


# -- sealing -------------------------------------------------------------------------------


def test_root_unseals_only_under_the_genuine_boot(swtpm: Swtpm, tmp_path: Path) -> None:
    """Adversary: the host's owner changes a boot stage and asks the TPM to unseal the
    secure world's root that the genuine boot sealed."""
    root = hashlib.sha256(b"the secure world's root").digest()
    state = tmp_path / "tpm-state"
    with TpmBackend(state, swtpm.tcti) as tpm:
        boot(tpm)
        blob = tpm.seal(root)
        assert tpm.unseal(blob) == root
    swtpm.restart()
    with TpmBackend(state, swtpm.tcti) as tpm:
        boot(tpm, modified_stages())
        with pytest.raises(UnsealRefused, match="boot measurements differ"):
            tpm.unseal(blob)
    swtpm.restart()
    with TpmBackend(state, swtpm.tcti) as tpm:
        with pytest.raises(UnsealRefused):  # before any stage is measured
            tpm.unseal(blob)
        boot(tpm)
        assert tpm.unseal(blob) == root


# -- counters ------------------------------------------------------------------------------


def test_counter_rollback_is_refused(backend: TpmBackend, tmp_path: Path) -> None:
    """Adversary: the host's owner snapshots the secure world's state file (and the emulated
    backend's counter file) and restores both after the state moved on."""
    counter = backend.counter(0)
    state_file = tmp_path / "state.bin"
    counter_file = tmp_path / "counter.ctr"  # what the emulated backend keeps, restorable
    first = counter.increment()
    state_file.write_bytes(first.to_bytes(8, "big") + b"state v1")
    counter_file.write_bytes(first.to_bytes(8, "big"))
    snapshot = (state_file.read_bytes(), counter_file.read_bytes())
    second = counter.increment()
    assert second > first
    state_file.write_bytes(second.to_bytes(8, "big") + b"state v2")
    counter_file.write_bytes(second.to_bytes(8, "big"))
    # Restore the older state and counter files together.
    state_file.write_bytes(snapshot[0])
    counter_file.write_bytes(snapshot[1])
    recorded = int.from_bytes(state_file.read_bytes()[:8], "big")
    with pytest.raises(CounterRolledBack, match="older copy"):
        backend.counter(0).check(recorded)
    # The current state is still accepted, and the counter did not move back.
    backend.counter(0).check(second)
    assert backend.counter(0).read() == second


# -- bad input -----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    attest=st.binary(max_size=300), signature=st.binary(max_size=120), log=st.binary(max_size=200)
)
def test_garbage_quotes_fail_with_one_clear_error(
    attest: bytes, signature: bytes, log: bytes
) -> None:
    """Any bytes a device sends as a quote end in one EvidenceError, never a crash."""
    with pytest.raises(EvidenceError):
        appraisal.verify_quote(
            appraisal.TpmQuote(attest, signature, log), _AK, bytes(32), REFERENCE
        )


def test_garbage_identity_fails_with_one_clear_error(ek_ca: EkCa) -> None:
    for junk in (b"", b"\x00\x01", b"\xff" * 40):
        with pytest.raises(AkRejected):
            appraisal.parse_ak_public(junk)
        with pytest.raises(UntrustedEk):
            appraisal.verify_ek_certificate(junk, [ek_ca.cert])
    with pytest.raises(MalformedQuote):
        appraisal.decode_event_log(b"\xa1\x01")


# -- platform evidence, as the verifier appraises it ---------------------------------------


def registered(tpm: TpmBackend, ca: EkCa) -> dict[bytes, appraisal.Registration]:
    ident = tpm.identity()
    ek = appraisal.verify_ek_certificate(ident.ek_certificate, [ca.cert])
    challenge = appraisal.make_activation_challenge(ek, ident.ak_public)
    answer = tpm.activate_credential(challenge.credential_blob, challenge.secret)
    reg = appraisal.register(ident.ek_certificate, ident.ak_public, challenge, answer)
    return {reg.ek_fingerprint: reg}


def test_platform_evidence_appraises_into_its_own_submodule(
    backend: TpmBackend, swtpm: Swtpm
) -> None:
    registrations = registered(backend, swtpm.ca)
    boot(backend)
    sent = backend.platform_evidence(VTEE_KEY_DIGEST, b"nonce").encode()
    claims = appraisal.appraise_platform(
        appraisal.TpmPlatformEvidence.decode(sent),
        anchors=[swtpm.ca.cert],
        registrations=registrations,
        vtee_key_digest=VTEE_KEY_DIGEST,
        challenge=b"nonce",
        reference_values=REFERENCE,
    )
    assert claims["backend"] == "tpm2"
    assert claims["protection"] == "tpm-rooted-os-isolated"
    assert claims["rollback-protection"] == "tpm-nv"
    assert [b["component"] for b in claims["boot"]] == [n for n, _ in STAGES]


def test_platform_evidence_with_an_unactivated_ak_is_refused(
    tmp_path: Path, backend: TpmBackend, swtpm: Swtpm
) -> None:
    """Adversary: presents a registered TPM's EK certificate with a quote by an AK of another
    TPM it controls (which quotes whatever boot it ran)."""
    registrations = registered(backend, swtpm.ca)
    other = provision_swtpm(tmp_path / "other", swtpm.ca)
    other.start()
    try:
        with TpmBackend(tmp_path / "other-state", other.tcti) as tpm_b:
            boot(tpm_b)
            theirs = tpm_b.platform_evidence(VTEE_KEY_DIGEST, b"nonce")
            forged = appraisal.TpmPlatformEvidence(
                backend.identity().ek_certificate, theirs.ak_public, theirs.quote
            )
            for evidence in (forged, theirs):  # B's own EK was never registered either
                with pytest.raises(AkNotActivated):
                    appraisal.appraise_platform(
                        evidence,
                        anchors=[swtpm.ca.cert],
                        registrations=registrations,
                        vtee_key_digest=VTEE_KEY_DIGEST,
                        challenge=b"nonce",
                        reference_values=REFERENCE,
                    )
    finally:
        other.stop()
    boot(backend)
    appraisal.appraise_platform(
        backend.platform_evidence(VTEE_KEY_DIGEST, b"nonce"),
        anchors=[swtpm.ca.cert],
        registrations=registrations,
        vtee_key_digest=VTEE_KEY_DIGEST,
        challenge=b"nonce",
        reference_values=REFERENCE,
    )


def _define_ordinary_index(tcti: str, index: int, value: int) -> None:
    """What a holder of owner authorisation can do with the TPM before the secure world."""
    with ESAPI(tcti) as ctx:
        public = TPM2B_NV_PUBLIC(
            nvPublic=TPMS_NV_PUBLIC(
                nvIndex=index,
                nameAlg=TPM2_ALG.SHA256,
                attributes=TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE | TPMA_NV.NO_DA,
                dataSize=8,
            )
        )
        handle = ctx.nv_define_space(None, public)
        ctx.nv_write(handle, value.to_bytes(8, "big"), 0)


def test_counter_index_squatted_by_an_ordinary_index_is_refused(
    backend: TpmBackend, swtpm: Swtpm
) -> None:
    """Adversary: the machine's owner (owner authorisation) defines the counter's NV index
    first, as an ordinary index whose value they write at will (so an old state's value can
    be written back)."""
    index = 7
    _define_ordinary_index(swtpm.tcti, NV_COUNTER_BASE + index, 1)
    with pytest.raises(CounterTampered, match="not a TPM counter"):
        backend.counter(index)
    # Other counters are unaffected.
    assert backend.counter(index + 1).increment() > 0


def test_counter_deleted_and_redefined_does_not_restart_lower(
    backend: TpmBackend, swtpm: Swtpm
) -> None:
    """Adversary: the machine's owner deletes the counter's NV index so that the secure world
    defines it afresh, hoping it restarts below the value an old state recorded."""
    counter = backend.counter(0)
    old = counter.increment()
    current = counter.increment()
    with ESAPI(swtpm.tcti) as ctx:
        ctx.nv_undefine_space(ctx.tr_from_tpmpublic(NV_COUNTER_BASE), ESYS_TR.OWNER)
    swtpm.restart()
    with TpmBackend(swtpm.dir.parent / "tpm-state", swtpm.tcti) as tpm:
        again = tpm.counter(0)
        assert again.read() >= current
        with pytest.raises(CounterRolledBack):
            again.check(old)


def test_root_is_provisioned_once_and_opens_only_on_the_genuine_boot(
    swtpm: Swtpm, tmp_path: Path
) -> None:
    state = tmp_path / "tpm-state"
    with TpmBackend(state, swtpm.tcti) as tpm:
        boot(tpm)
        root = tpm.provision_root()
        assert len(root) == 32 and tpm.root() == root
        with pytest.raises(SealingError, match="already holds"):
            tpm.provision_root()
    swtpm.restart()
    with TpmBackend(state, swtpm.tcti) as tpm:
        boot(tpm, modified_stages())
        with pytest.raises(UnsealRefused):
            tpm.root()


def test_sealed_blob_altered_or_from_another_tpm_is_refused(
    tmp_path: Path, backend: TpmBackend, swtpm: Swtpm
) -> None:
    """Adversary: the host's owner swaps in a sealed blob of its own TPM (sealed under PCRs
    it chose), or alters the stored one."""
    boot(backend)
    blob = backend.seal(bytes(range(32)))
    other = provision_swtpm(tmp_path / "other", swtpm.ca)
    other.start()
    try:
        with TpmBackend(tmp_path / "other-state", other.tcti) as tpm_b:
            foreign = tpm_b.seal(bytes(32))
    finally:
        other.stop()
    altered = bytearray(blob)
    altered[-5] ^= 1
    for bad in (foreign, bytes(altered), b"", blob[:10]):
        with pytest.raises(SealingError):
            backend.unseal(bad)
    assert backend.unseal(blob) == bytes(range(32))


def test_root_sealed_ahead_for_an_upgraded_boot(swtpm: Swtpm, tmp_path: Path) -> None:
    """An upgrade seals the root for the new stages' PCR value before rebooting into them."""
    state = tmp_path / "tpm-state"
    new_stages = modified_stages()
    with TpmBackend(state, swtpm.tcti) as tpm:
        boot(tpm)
        blob = tpm.seal(bytes(32), appraisal.expected_pcr(new_stages))
        with pytest.raises(UnsealRefused):
            tpm.unseal(blob)
    swtpm.restart()
    with TpmBackend(state, swtpm.tcti) as tpm:
        boot(tpm, new_stages)
        assert tpm.unseal(blob) == bytes(32)


def test_the_secure_worlds_real_boot_stages_measure_and_appraise(
    backend: TpmBackend, swtpm: Swtpm
) -> None:
    from veritee.tee.boot import measure_stages

    ak = activated_ak(backend, swtpm.ca)
    stages = measure_stages({})
    backend.measure_boot(stages)
    binding = appraisal.quote_binding(VTEE_KEY_DIGEST, b"nonce")
    refs = {s.component: [s.measurement] for s in stages}
    result = appraisal.verify_quote(backend.quote(binding), ak, binding, refs)
    assert [e.description for e in result.events] == [s.component for s in stages]


def test_policies_tell_a_tpm_rooted_device_from_a_hardware_tee(
    backend: TpmBackend, swtpm: Swtpm
) -> None:
    from veritee.verifier._tpm import platform_submod
    from veritee.verifier.policy import (
        DEFAULT_NAME,
        DEFAULT_POLICY,
        STRICT_NAME,
        STRICT_POLICY,
        compile_policy,
    )

    registrations = registered(backend, swtpm.ca)
    boot(backend)
    claims = appraisal.appraise_platform(
        backend.platform_evidence(VTEE_KEY_DIGEST, b"nonce"),
        anchors=[swtpm.ca.cert],
        registrations=registrations,
        vtee_key_digest=VTEE_KEY_DIGEST,
        challenge=b"nonce",
        reference_values=REFERENCE,
    )
    sub = platform_submod(claims)
    assert sub.name == "tpm-platform" and sub.rollback_protection == "tpm-nv"
    policy_input = {
        "scheme": "veritee",
        "submods": {
            sub.name: {"claims": sub.claims, "trust_vector": sub.vector},
            "module": {"claims": {}, "trust_vector": {}},
        },
    }
    default = compile_policy(DEFAULT_NAME, DEFAULT_POLICY).judge(policy_input)
    strict = compile_policy(STRICT_NAME, STRICT_POLICY).judge(policy_input)
    for name in ("tpm-platform", "module"):
        assert default.get(name).claims["hardware"] == 32  # accepted, with a warning
        assert strict.get(name).claims["hardware"] == 96  # not a secured TEE


def test_a_ca_certificate_is_not_an_ek_certificate(ek_ca: EkCa) -> None:
    """Adversary: presents a certificate the trusted CA issued for another purpose (a CA or
    signing certificate) as an EK certificate."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import Encoding

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)

    def issue(ku_sign: bool) -> bytes:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(ek_ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(
                x509.SubjectAlternativeName([x509.DirectoryName(x509.Name([]))]), critical=True
            )
            .add_extension(
                x509.KeyUsage(
                    digital_signature=ku_sign,
                    content_commitment=False,
                    key_encipherment=not ku_sign,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ek_ca.key.public_key()),
                critical=False,
            )
            .sign(ek_ca.key, hashes.SHA256())
            .public_bytes(Encoding.DER)
        )

    with pytest.raises(UntrustedEk, match="keyEncipherment"):
        appraisal.verify_ek_certificate(issue(ku_sign=True), [ek_ca.cert])
    appraisal.verify_ek_certificate(issue(ku_sign=False), [ek_ca.cert])
    with pytest.raises(UntrustedEk):
        appraisal.verify_ek_certificate(ek_ca.cert.public_bytes(Encoding.DER), [ek_ca.cert])


def test_quote_over_a_resettable_pcr_is_refused(backend: TpmBackend, swtpm: Swtpm) -> None:
    """Adversary: any process that can open the TPM (the AK has no secret of its own) resets
    the debug PCR 16, extends the genuine stages into it and quotes it with the AK, with an
    honest log of what it extended there."""
    from tpm2_pytss.types import TPML_DIGEST_VALUES, TPMT_HA

    ak = activated_ak(backend, swtpm.ca)
    boot(backend, modified_stages())
    ctx = backend._ctx  # the same TPM device, as any other process would open it
    ctx.pcr_reset(ESYS_TR.PCR16)
    for _, digest in STAGES:
        ha = TPMT_HA(hashAlg=TPM2_ALG.SHA256)
        ha.digest.sha256 = digest
        ctx.pcr_extend(ESYS_TR.PCR16, TPML_DIGEST_VALUES([ha]))
    binding = appraisal.quote_binding(VTEE_KEY_DIGEST, b"nonce")
    attest, sig = ctx.quote(backend._ak_handle(), appraisal.pcr_selection([16]), binding)
    log = appraisal.encode_event_log(appraisal.TpmEvent(16, d, n) for n, d in STAGES)
    forged = appraisal.TpmQuote(bytes(attest), bytes(sig.marshal()), log)
    with pytest.raises(MalformedQuote, match="PCRs"):
        appraisal.verify_quote(forged, ak, binding, REFERENCE)


def test_boot_that_skips_or_repeats_a_stage_is_refused(backend: TpmBackend, swtpm: Swtpm) -> None:
    """Adversary: boots a secure world that leaves a stage it changed unmeasured (the log and
    the PCR agree, and every record present is genuine)."""
    from veritee.evidence.errors import TpmBootIncomplete

    ak = activated_ak(backend, swtpm.ca)
    boot(backend, [s for s in STAGES if s[0] != "config"])
    binding = appraisal.quote_binding(VTEE_KEY_DIGEST, b"nonce")
    with pytest.raises(TpmBootIncomplete, match="lacks"):
        appraisal.verify_quote(backend.quote(binding), ak, binding, REFERENCE)
    swtpm.restart()
    with TpmBackend(swtpm.dir.parent / "tpm-state", swtpm.tcti) as tpm:
        boot(tpm, [*STAGES, STAGES[0]])
        with pytest.raises(TpmBootIncomplete, match="more than once"):
            appraisal.verify_quote(tpm.quote(binding), ak, binding, REFERENCE)
