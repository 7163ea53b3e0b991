"""The TPM 2.0 backend end to end, through the real processes: ``device init --backend tpm``
on a swtpm of the test's own, ``tee start`` (the monitor extends PCR 15, unseals the root and
caps the PCR), ``attest``, the registrar's credential activation (``evidence tpm-register``)
and ``evidence appraise``; and each attack on it, as its adversary would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cbor2
import pytest

from ._swtpm import EkCa, Swtpm, make_ek_ca, provision_swtpm

OK_WAT = '(module (memory (export "memory") 1) (func (export "_start")))'
NONCE = "42" * 32
EXIT_EVIDENCE = 7  # README: a failed appraisal check


def _veritee(home: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "veritee", "--home", str(home), *map(str, args)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


@dataclass
class TpmDevice:
    """A device provisioned on its own swtpm, and a verifier's files for it."""

    home: Path
    tpm: Swtpm
    work: Path

    def cli(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return _veritee(self.home, *args)

    def ok(self, *args: str | Path) -> str:
        proc = self.cli(*args)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    @property
    def ek_ca(self) -> Path:
        path = self.work / "tpm-ca.pem"
        if not path.exists():
            path.write_bytes(self.tpm.ca.pem)
        return path

    @property
    def registrations(self) -> Path:
        return self.work / "tpm-registrations.json"

    def register(self) -> None:
        self.ok("evidence", "tpm-register", "--tpm-ca", self.ek_ca, "-o", self.registrations)

    def attest(self, nonce: str = NONCE, name: str = "ev.cbor") -> Path:
        wat = self.work / "ok.wat"
        wat.write_text(OK_WAT)
        out = self.work / name
        self.ok("attest", wat, "--nonce", nonce, "-o", out)
        return out

    def appraise(
        self, evidence: Path, nonce: str = NONCE, *extra: str | Path
    ) -> subprocess.CompletedProcess[str]:
        return self.cli(
            *("evidence", "appraise", evidence, "--nonce", nonce, "--json"),
            *("--module", self.work / "ok.wat"),
            *("--tpm-ca", self.ek_ca, "--tpm-registrations", self.registrations),
            *extra,
        )

    def reboot(self) -> None:
        """A power cycle: the secure world stops, the TPM resets its PCRs, NV survives."""
        self.cli("tee", "stop")
        self.tpm.restart()


def _tpm_device(base: Path, ca: EkCa) -> Iterator[TpmDevice]:
    tpm = provision_swtpm(base / "swtpm", ca)
    tpm.start()
    dev = TpmDevice(base / "home", tpm, base)
    try:
        dev.ok("device", "init", "--backend", "tpm", "--tpm", tpm.tcti)
        dev.ok("tee", "start")
        dev.register()
        yield dev
    finally:
        dev.cli("tee", "stop")
        tpm.stop()


@pytest.fixture
def tpm_device(tmp_path: Path) -> Iterator[TpmDevice]:
    yield from _tpm_device(tmp_path / "a", make_ek_ca())


def _evidence(path: Path) -> dict[str, bytes]:
    value = cbor2.loads(path.read_bytes())
    assert isinstance(value, dict)
    return value


def _platform(evidence: dict[str, bytes]) -> dict[str, object]:
    value = cbor2.loads(evidence["platform"])
    assert isinstance(value, dict)
    return value


def _write(path: Path, evidence: dict[str, bytes], platform: dict[str, object]) -> Path:
    path.write_bytes(cbor2.dumps({**evidence, "platform": cbor2.dumps(platform)}))
    return path


def _failed(proc: subprocess.CompletedProcess[str], reason: str) -> None:
    assert proc.returncode == EXIT_EVIDENCE, (proc.returncode, proc.stdout, proc.stderr)
    assert reason in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# -- the device on its TPM ------------------------------------------------------------------


def test_tpm_device_boots_attests_and_appraises(tpm_device: TpmDevice) -> None:
    dev = tpm_device
    record = json.loads((dev.home / "device" / "backend.json").read_text())
    assert record == {"backend": "tpm", "options": {"tpm": dev.tpm.tcti}}
    status = json.loads(dev.ok("tee", "status", "--json"))
    described = status["monitor"]["backend"]
    assert described["name"] == "tpm" and described["rollback_protection"] == "tpm-nv"
    assert described["protection"] == "tpm-rooted-os-isolated"
    assert "backend tpm" in dev.ok("tee", "status")
    # No software secret of the device is a file: the root is sealed in the TPM.
    assert not (dev.home / "device" / "huk.bin").exists()
    assert not (dev.home / "device" / "dak.key").exists()
    evidence = dev.attest()
    platform = _platform(_evidence(evidence))
    assert platform["backend"] == "tpm2" and platform["protection"] == "tpm-rooted-os-isolated"
    proc = dev.appraise(evidence)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["backend"] == "tpm" and result["status"] == "warning"
    assert result["lifecycle"] == "emulated"


def test_evidence_replayed_for_a_new_nonce_is_refused(tpm_device: TpmDevice) -> None:
    """Adversary: a man in the middle (or the host) who kept a device's evidence for an old
    challenge and answers a verifier's new challenge with it."""
    old = tpm_device.attest("01" * 32, "old.cbor")
    assert tpm_device.appraise(old, "01" * 32).returncode == 0
    _failed(tpm_device.appraise(old, NONCE), "not the verifier's nonce")


def test_quote_moved_onto_another_vtee_key_is_refused(tpm_device: TpmDevice) -> None:
    """Adversary: the host user, who keeps a genuine quote (its nonce, the platform claims'
    digest, is the challenge of an earlier vTEE boot) and presents it with platform claims
    naming a vTEE key of their own, so that a verifier would endorse their key."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from veritee.evidence import cose
    from veritee.evidence.claims import PlatformClaims, encode_claims

    evidence = _evidence(tpm_device.attest())
    platform = _platform(evidence)
    claims = PlatformClaims.from_cbor(cbor2.loads(platform["claims"]))
    theirs = cose.ec_key_to_cose(ec.generate_private_key(ec.SECP256R1()).public_key())
    forged = {
        **platform,
        "claims": encode_claims(claims.__class__(**{**claims.__dict__, "vtee_key": theirs})),
    }
    path = _write(tpm_device.work / "moved.cbor", evidence, forged)
    _failed(tpm_device.appraise(path), "does not bind this vTEE key")


def test_event_log_altered_to_match_the_references_is_refused(tpm_device: TpmDevice) -> None:
    """Adversary: the host user, whose secure world booted a stage the verifier does not
    endorse. They rewrite the quote's event log (and the claims' boot log) so that every
    record is a reference value; the PCR the TPM quoted still holds the real boot."""
    from veritee.evidence.claims import BootEntry, PlatformClaims, encode_claims
    from veritee.evidence.tpm import TpmQuote, decode_event_log, encode_event_log

    evidence = _evidence(tpm_device.attest())
    platform = _platform(evidence)
    refs = json.loads((tpm_device.home / "manufacturer" / "reference-values.json").read_text())
    # The verifier endorses another secure-world build than the one that booted.
    endorsed = "ab" * 32
    for entry in refs["boot"]:
        if entry["component"] == "secure-world":
            entry["measurement"] = endorsed
    verifier_refs = tpm_device.work / "verifier-refs.json"
    verifier_refs.write_text(json.dumps(refs))
    genuine = _write(tpm_device.work / "genuine.cbor", evidence, platform)
    _failed(
        tpm_device.appraise(genuine, NONCE, "--refs", verifier_refs),
        "boot component 'secure-world' measures",
    )
    quote = TpmQuote.decode(platform["quote"])
    events = decode_event_log(quote.event_log)
    altered = [
        e.__class__(e.pcr, bytes.fromhex(endorsed), e.description)
        if e.description == "secure-world"
        else e
        for e in events
    ]
    log_only = {
        **platform,
        "quote": TpmQuote(quote.attest, quote.signature, encode_event_log(altered)).encode(),
    }
    path = _write(tpm_device.work / "log.cbor", evidence, log_only)
    _failed(
        tpm_device.appraise(path, NONCE, "--refs", verifier_refs),
        "event log does not replay to the quoted PCRs",
    )
    claims = PlatformClaims.from_cbor(cbor2.loads(platform["claims"]))
    boot_log = tuple(
        BootEntry(b.component, bytes.fromhex(endorsed), b.signer, b.version)
        if b.component == "secure-world"
        else b
        for b in claims.boot_log
    )
    both = {
        **log_only,
        "claims": encode_claims(claims.__class__(**{**claims.__dict__, "boot_log": boot_log})),
    }
    path = _write(tpm_device.work / "both.cbor", evidence, both)
    _failed(tpm_device.appraise(path, NONCE, "--refs", verifier_refs), "does not bind")
