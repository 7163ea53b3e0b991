"""The TPM 2.0 backend end to end, through the real processes: ``device init --backend tpm``
on a swtpm of the test's own, ``tee start`` (the monitor extends PCR 15, unseals the root and
caps the PCR), ``attest``, the registrar's credential activation (``evidence tpm-register``)
and ``evidence appraise``; and each attack on it, as its adversary would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import pytest

from veritee.evidence.claims import Evidence

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

    @property
    def wat(self) -> Path:
        path = self.work / "ok.wat"
        if not path.exists():
            path.write_text(OK_WAT)
        return path

    def attest(self, nonce: str = NONCE, name: str = "ev.cbor") -> Path:
        out = self.work / name
        self.ok("attest", self.wat, "--nonce", nonce, "-o", out)
        return out

    def appraise(
        self, evidence: Path, nonce: str = NONCE, *extra: str | Path
    ) -> subprocess.CompletedProcess[str]:
        return self.cli(
            *("evidence", "appraise", evidence, "--nonce", nonce, "--json"),
            *("--module", self.wat),
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


def _evidence(path: Path) -> Evidence:
    return Evidence.decode(path.read_bytes())


def _platform(evidence: Evidence) -> dict[str, Any]:
    value = cbor2.loads(evidence.platform)
    assert isinstance(value, dict)
    return value


def _write(path: Path, evidence: Evidence, platform: dict[str, Any]) -> Path:
    """``evidence`` with its platform token replaced by ``platform`` (a TPM token's map)."""
    path.write_bytes(Evidence(cbor2.dumps(platform), evidence.vtee, evidence.module).encode())
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
    shown = json.loads(dev.ok("device", "show", "--json"))
    assert shown["backend"] == "tpm" and shown["tpm"]["tpm"] == dev.tpm.tcti
    assert "EK        sha256:" in dev.ok("device", "show")
    # No software secret of the device is a file: the root is sealed in the TPM.
    assert not (dev.home / "device" / "huk.bin").exists()
    assert not (dev.home / "device" / "dak.key").exists()
    evidence = dev.attest()
    platform = _platform(_evidence(evidence))
    assert platform["backend"] == "tpm2" and platform["protection"] == "tpm-rooted-os-isolated"
    # The device is named by its TPM, the same in device show and in its evidence.
    described = json.loads(dev.ok("evidence", "show", evidence, "--json"))
    assert described["platform"]["ueid"] == shown["ueid"]
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


def test_ak_of_another_tpm_is_refused(tpm_device: TpmDevice, tmp_path: Path) -> None:
    """Adversary: the owner of a second machine with a genuine TPM of the same manufacturer.
    (a) They present the first device's EK certificate with their own AK for registration,
    activating the credential in their TPM; (b) they send evidence of their TPM (their AK's
    quote) under the first device's EK, which the verifier registered."""
    other = _tpm_device(tmp_path / "b", tpm_device.tpm.ca)
    dev_b = next(other)
    try:
        ident_a = cbor2.loads((tpm_device.home / "manufacturer" / "tpm-identity.cbor").read_bytes())
        ident_b = cbor2.loads((dev_b.home / "manufacturer" / "tpm-identity.cbor").read_bytes())
        forged = tmp_path / "forged-identity.cbor"
        forged.write_bytes(cbor2.dumps({"ek": ident_a["ek"], "ak": ident_b["ak"]}))
        regs = tmp_path / "regs.json"
        proc = dev_b.cli(
            *("evidence", "tpm-register", "--tpm-ca", tpm_device.ek_ca),
            *("--identity", forged, "-o", regs),
        )
        assert proc.returncode != 0 and "refused to activate the credential" in proc.stderr
        assert "Traceback" not in proc.stderr and not regs.exists()
        evidence = _evidence(dev_b.attest())
        platform = {**_platform(evidence), "ek": ident_a["ek"]}
        path = _write(tmp_path / "b-as-a.cbor", evidence, platform)
        _failed(tpm_device.appraise(path), "never activated against this EK")
    finally:
        next(other, None)


def test_ek_certificate_from_an_untrusted_ca_is_refused(tpm_device: TpmDevice) -> None:
    """Adversary: a software TPM (or a TPM of an untrusted maker) whose EK certificate a CA
    of the attacker's issued: neither registration nor appraisal trusts it."""
    stranger = tpm_device.work / "stranger-ca.pem"
    stranger.write_bytes(make_ek_ca("A TPM maker nobody trusts").pem)
    regs = tpm_device.work / "stranger-regs.json"
    proc = tpm_device.cli("evidence", "tpm-register", "--tpm-ca", stranger, "-o", regs)
    _failed(proc, "does not chain to a trusted TPM manufacturer CA")
    assert not regs.exists()
    evidence = tpm_device.attest()
    proc = tpm_device.cli(
        *(
            "evidence",
            "appraise",
            evidence,
            "--nonce",
            NONCE,
            "--module",
            tpm_device.work / "ok.wat",
        ),
        *("--tpm-ca", stranger, "--tpm-registrations", tpm_device.registrations),
    )
    _failed(proc, "does not chain to a trusted TPM manufacturer CA")


def test_a_changed_boot_stage_does_not_unseal_the_root(tpm_device: TpmDevice) -> None:
    """Adversary: the host user, who changes a boot stage (here the secure world's measured
    configuration, which secure boot does not sign) to boot a secure world of their making
    with the device's root. The TPM refuses to unseal: the secure world does not boot."""
    config_file = tpm_device.home / "device" / "tee-config.json"
    genuine = config_file.read_text()
    tpm_device.reboot()
    config_file.write_text(json.dumps({**json.loads(genuine), "workers": 7}))
    proc = tpm_device.cli("tee", "start")
    assert proc.returncode != 0
    log = (
        (tpm_device.home / "tee.log").read_text() if (tpm_device.home / "tee.log").exists() else ""
    )
    assert "the TPM refuses this boot" in proc.stderr + log, proc.stderr
    assert "Traceback" not in proc.stderr
    # The genuine boot, after a reset, opens it again.
    tpm_device.reboot()
    config_file.write_text(genuine)
    tpm_device.ok("tee", "start")
    assert tpm_device.appraise(tpm_device.attest()).returncode == 0


def test_a_second_boot_in_one_tpm_power_cycle_is_refused(tpm_device: TpmDevice) -> None:
    """The root unseals once per platform reset (the cap); a second start says so."""
    tpm_device.cli("tee", "stop")
    proc = tpm_device.cli("tee", "start")
    assert proc.returncode != 0
    assert "already extended since the last platform reset" in proc.stderr, proc.stderr
    tpm_device.tpm.restart()
    tpm_device.ok("tee", "start")


def test_no_tpm_and_a_wrong_tcti_are_clear_errors(tmp_path: Path) -> None:
    proc = _veritee(tmp_path / "a", "device", "init", "--backend", "tpm", "--tpm", "tpm0")
    assert proc.returncode == 2 and "is neither a TPM device path" in proc.stderr
    proc = _veritee(
        tmp_path / "b", "device", "init", "--backend", "tpm", "--tpm", "swtpm:host=127.0.0.1,port=9"
    )
    assert proc.returncode != 0 and "cannot open the TPM" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "b" / "device").exists()  # nothing half-provisioned
    proc = _veritee(tmp_path / "c", "device", "init", "--backend", "tpm", "--tpm", "/dev/no-tpm")
    assert proc.returncode != 0 and "cannot open the TPM" in proc.stderr, proc.stderr


def test_counter_rollback_with_the_counters_file_restored_is_refused(
    tpm_device: TpmDevice, wasm: Callable[..., Path]
) -> None:
    """Adversary: the host user, who snapshots an app module's sealed state AND the device's
    counters file (on the emulated device, the RPMB stand-in: restoring both replays, see
    test_attack_hygiene), lets the state advance, then restores both across a reboot. The
    file records the TPM NV counter it was written at; the TPM's counter has moved on."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from veritee.home import Home
    from veritee.tee import client as teec
    from veritee.tee.ta import AppSession

    raw = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    counter = wasm("tests/assets/c/app_counter.c").read_bytes()

    def load(ctx: teec.Context, state: bytes | None = None) -> AppSession:
        session = AppSession(ctx)
        session.load(counter, name="counter", app="tpm-app", deployment_key=raw, state=state)
        return session

    files = sorted((tpm_device.home / "device" / "counters").glob("*.ctr"))
    assert len(files) == 1
    with teec.Context(home=Home(tpm_device.home), vtee="default") as ctx:
        session = load(ctx)
        older = session.deliver_batch([]).state
        kept = files[0].read_bytes()  # the counters file as it was with `older`
        newest = session.deliver_batch([]).state
    tpm_device.reboot()
    current = files[0].read_bytes()
    files[0].write_bytes(kept)
    tpm_device.ok("tee", "start")
    with teec.Context(home=Home(tpm_device.home), vtee="default") as ctx:
        with pytest.raises(teec.TeecError, match="counters file was rolled back"):
            load(ctx, older)
        with pytest.raises(teec.TeecError, match="counters file was rolled back"):
            load(ctx, newest)  # the restored file opens nothing: a denial, never a replay
    # The old slots under the current file's header (which names the TPM counter's value
    # now): the header authenticates the slots it was written with.
    tpm_device.reboot()
    from veritee.tee.sealing import Counters

    header = Counters._HEADER.size  # before the slots
    files[0].write_bytes(current[:header] + kept[header:])
    tpm_device.ok("tee", "start")
    with (
        teec.Context(home=Home(tpm_device.home), vtee="default") as ctx,
        pytest.raises(teec.TeecError, match="counters file was altered"),
    ):
        load(ctx, older)
    # Without the restore, the newest state loads and the older one is refused.
    tpm_device.reboot()
    files[0].write_bytes(b"")  # (a fresh file: every lineage is gone with it)
    tpm_device.ok("tee", "start")
    with (
        teec.Context(home=Home(tpm_device.home), vtee="default") as ctx,
        pytest.raises(teec.TeecError, match="no rollback counter"),
    ):
        load(ctx, newest)


def test_counters_advance_with_the_tpm_and_survive_a_reboot(
    tpm_device: TpmDevice, wasm: Callable[..., Path]
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from veritee.home import Home
    from veritee.tee import client as teec
    from veritee.tee.ta import AppSession

    raw = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    counter = wasm("tests/assets/c/app_counter.c").read_bytes()

    def load(ctx: teec.Context, state: bytes | None = None) -> AppSession:
        session = AppSession(ctx)
        session.load(counter, name="counter", app="tpm-app", deployment_key=raw, state=state)
        return session

    with teec.Context(home=Home(tpm_device.home), vtee="default") as ctx:
        session = load(ctx)
        older = session.deliver_batch([]).state
        newest = session.deliver_batch([]).state
    tpm_device.reboot()
    tpm_device.ok("tee", "start")
    with teec.Context(home=Home(tpm_device.home), vtee="default") as ctx:
        with pytest.raises(teec.TeecError, match="rolled back: it carries counter"):
            load(ctx, older)
        load(ctx, newest)


# -- the verifier's appraisal: the EAR's tpm-platform submodule ------------------------------


def _endorsements(dev: TpmDevice, *, with_registrations: bool = True) -> Any:
    from cryptography import x509

    from veritee.evidence import tpm
    from veritee.verifier.endorsements import Endorsements, ReferenceValue
    from veritee.wasm.runtime import measure, to_binary

    refs = json.loads((dev.home / "manufacturer" / "reference-values.json").read_text())
    references = [
        ReferenceValue("veritee", "boot", e["component"], bytes.fromhex(e["measurement"]))
        for e in refs["boot"]
    ]
    references.append(
        ReferenceValue("veritee", "module", "ok", measure(to_binary(dev.wat.read_bytes())))
    )
    regs = tpm.registrations_from_json(json.loads(dev.registrations.read_text()))
    return Endorsements(
        cas=(x509.load_pem_x509_certificate((dev.home / "manufacturer" / "ca.pem").read_bytes()),),
        references=tuple(references),
        tpm_cas=(dev.tpm.ca.cert,),
        tpm_registrations=regs if with_registrations else {},
    )


def test_the_verifier_appraises_tpm_evidence_into_its_own_submodule(
    tpm_device: TpmDevice,
) -> None:
    """The EAR of TPM-backed evidence carries the TPM platform as its own submodule; the
    default policy accepts it with a warning (OS-isolated), the strict one refuses it; and a
    device whose AK no registrar activated is not recognised."""
    import datetime as dt

    from veritee.evidence.claims import MEDIA_TYPE
    from veritee.verifier import ear
    from veritee.verifier._scheme import Context
    from veritee.verifier.appraise import appraise
    from veritee.verifier.policy import (
        DEFAULT_POLICY,
        STRICT_POLICY,
        compile_policy,
    )

    evidence = tpm_device.attest().read_bytes()
    verifier = ear.VerifierId("Veritee", "test")
    now = dt.datetime.now(dt.UTC)
    e = _endorsements(tpm_device)
    nonce = bytes.fromhex(NONCE)
    default = compile_policy("default", DEFAULT_POLICY)
    outcome = appraise(evidence, MEDIA_TYPE, nonce, Context(e, default, verifier, now))
    assert outcome.failure is None, outcome.failure
    subs = outcome.result.submods
    assert set(subs) == {"platform", "module", "tpm-platform"}
    tpm_sub = subs["tpm-platform"]
    claims = tpm_sub.extensions["ear.veraison.annotated-evidence"]
    assert claims["backend"] == "tpm2" and claims["protection"] == "tpm-rooted-os-isolated"
    assert claims["boot"][-1]["component"] == "veritee/root-unsealed"
    assert tpm_sub.trust_vector.executables == 2 and tpm_sub.trust_vector.hardware == 32
    assert outcome.status == "warning"
    for sub in subs.values():
        assert sub.extensions["ear.veritee.rollback-protection"] == "tpm-nv"
    strict = compile_policy("strict", STRICT_POLICY)
    refused = appraise(evidence, MEDIA_TYPE, nonce, Context(e, strict, verifier, now))
    assert refused.status == "contraindicated"
    assert all(s.trust_vector.hardware == 96 for s in refused.result.submods.values())
    unregistered = _endorsements(tpm_device, with_registrations=False)
    failed = appraise(evidence, MEDIA_TYPE, nonce, Context(unregistered, default, verifier, now))
    assert failed.failure is not None and failed.failure.check == "AkNotActivated"
    assert failed.status == "contraindicated"


def test_a_vtee_on_the_tpm_runs_attests_and_is_shown(
    tpm_device: TpmDevice, wasm: Callable[..., Path]
) -> None:
    """A second vTEE on a TPM-backed device: its own quote binds its own key; a module runs
    in it; ``evidence show`` reads TPM evidence; garbage in its place is one clear error."""
    dev = tpm_device
    dev.ok("vtee", "create", "tenant-a", "--memory", "256", "--workers", "1", "--start")
    assert "argv[1] = x" in dev.ok("run", "--vtee", "tenant-a", wasm("examples/hello/hello.c"), "x")
    out = dev.work / "tenant.cbor"
    dev.ok("attest", "--vtee", "tenant-a", dev.wat, "--nonce", NONCE, "-o", out)
    result = json.loads(dev.appraise(out).stdout)
    assert result["vtee"] == "tenant-a" and result["backend"] == "tpm"
    shown = json.loads(dev.ok("evidence", "show", out, "--json"))
    assert shown["platform"]["signed_by"].startswith("TPM quote by the AK")
    assert shown["platform"]["vtee_name"] == "tenant-a"
    assert shown["platform"]["event_log"][-1]["description"] == "veritee/root-unsealed"
    default = _platform(_evidence(dev.attest()))
    assert _platform(_evidence(out))["quote"] != default["quote"]
    # Hostile TPM platform tokens: one clear error each, never a traceback.
    evidence = _evidence(out)
    for bad in (
        {"backend": "tpm2"},
        {**_platform(evidence), "claims": b"\xff"},
        {**_platform(evidence), "quote": {1: b"", 2: b"", 3: b""}},
        {**_platform(evidence), "ak": b"\x00\x01"},
        {**_platform(evidence), "ek": b"not a certificate"},
    ):
        path = _write(dev.work / "bad.cbor", evidence, bad)
        proc = dev.appraise(path)
        assert proc.returncode == EXIT_EVIDENCE, (bad, proc.stderr)
        assert "Traceback" not in proc.stderr
        shown_proc = dev.cli("evidence", "show", path)
        assert "Traceback" not in shown_proc.stderr


def test_without_tpm2_pytss_the_tpm_backend_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A machine without the TSS binding loses the TPM backend, with a clear error, and
    keeps the emulated one."""
    from veritee.errors import DeviceError
    from veritee.tee import backends

    for name in [
        m for m in sys.modules if m.startswith(("tpm2_pytss", "veritee.tee.backends.tpm"))
    ]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tpm2_pytss", None)  # import tpm2_pytss now fails
    with pytest.raises(DeviceError, match="the 'tpm' TEE backend needs tpm2_pytss"):
        backends.factory("tpm")
    assert backends.factory("emulated").name == "emulated"


def test_sign_boot_on_a_tpm_device_says_to_provision_again(tpm_device: TpmDevice) -> None:
    """Adversary: the host user, who holds this machine's vendor key: re-signing the boot
    (a stage of their choosing) must not get the root resealed for it."""
    manifest = (tpm_device.home / "device" / "boot-manifest.cbor").read_bytes()
    proc = tpm_device.cli("device", "sign-boot")
    assert proc.returncode == 2 and "provision it again" in proc.stderr, proc.stderr
    assert (tpm_device.home / "device" / "boot-manifest.cbor").read_bytes() == manifest


def test_the_verifier_service_attests_a_tpm_device(tpm_device: TpmDevice) -> None:
    """Through the real verifier service: the operator provisions the TPM manufacturer CA and
    the registrar's file (``verifier provision trust-tpm``); ``verifier attest`` on the device
    gets an EAR whose TPM platform is its own submodule. Before the registration is
    provisioned, the same device is not recognised."""
    from .test_verifier_service import start_verifier

    dev = tpm_device
    server = start_verifier(dev.home, dev.work / "verifier")
    try:
        server.provision(dev.home, "trust-device")
        server.provision(dev.home, "module", dev.wat, "--name", "ok")
        server.provision(dev.home, "trust-tpm", "--tpm-ca", dev.ek_ca)
        url = ("--verifier", server.url)
        before = json.loads(dev.ok("verifier", "attest", dev.wat, *url, "--json"))["claims"]
        assert before["ear.veritee.failure"]["check"] == "AkNotActivated"
        server.provision(dev.home, "trust-tpm", "--registrations", dev.registrations)
        with server.client(token=True) as admin:
            kinds = [a["kind"] for a in admin.state()["trust-anchors"]]
        assert kinds.count("tpm-ca") == 1 and kinds.count("tpm-ak") == 1, kinds
        claims = json.loads(dev.ok("verifier", "attest", dev.wat, *url, "--json"))["claims"]
        submods = claims["submods"]
        assert set(submods) == {"platform", "module", "tpm-platform"}, submods
        tpm_sub = submods["tpm-platform"]
        assert tpm_sub["ear.status"] == "warning"
        annotated = tpm_sub["ear.veraison.annotated-evidence"]
        assert annotated["protection"] == "tpm-rooted-os-isolated"
        assert submods["module"]["ear.veritee.rollback-protection"] == "tpm-nv"
    finally:
        server.stop()


def test_ratls_reaches_a_module_on_a_tpm_device_locally_and_through_the_service(
    tpm_device: TpmDevice, wasm: Callable[..., Path]
) -> None:
    """A relying party connects over RA-TLS to a module served on a TPM-backed device, and has
    the verification service appraise it (the EAR with its tpm-platform submodule), or
    appraises it itself with the TPM maker's CA and the registrar's file."""
    from .test_ratls import _start
    from .test_verifier_service import start_verifier

    dev = tpm_device
    directory = wasm("examples/ratls/directory.c")
    verifier = start_verifier(dev.home, dev.work / "verifier")
    (dev.work / "ratls").mkdir()
    servers = _start(dev, dev.work / "ratls", directory)  # type: ignore[arg-type]  # .home
    try:
        server = next(servers)
        verifier.provision(dev.home, "trust-device")
        verifier.provision(dev.home, "module", directory, "--name", "directory")
        verifier.provision(
            dev.home, "trust-tpm", "--tpm-ca", dev.ek_ca, "--registrations", dev.registrations
        )
        proc = dev.cli(
            *("ratls", "connect", server.address, "--verifier", verifier.url),
            *("--mode", "challenge", "--send", "alice", "--json"),
        )
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["status"] == "warning" and out["response"].startswith("alice: room 4.12")
        assert out["module"]["endorsed_as"] == "directory"
        # Appraised locally, by a relying party that trusts the TPM maker and registrar.
        local = ("ratls", "connect", server.address, "--module", directory, "--send", "bob")
        tpm = ("--tpm-ca", dev.ek_ca, "--tpm-registrations", dev.registrations)
        proc = dev.cli(*local, *tpm, "--mode", "exporter", "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["response"].startswith("bob: ")
        proc = dev.cli(*local)  # without them: no CA vouches for the EK
        assert proc.returncode != 0 and "no TPM manufacturer CA is trusted" in proc.stderr
    finally:
        next(servers, None)
        verifier.stop()


def test_an_app_deployed_on_a_tpm_node_is_attested_and_runs(
    tmp_path_factory: pytest.TempPathFactory, wasm: Callable[..., Path]
) -> None:
    """The smart home on two nodes, one of them TPM-backed: the deployer has the verification
    service attest every module (the TPM node's with its tpm-platform submodule), connects
    them, and a press crosses from the emulated node to the TPM node's db and back."""
    from veritee.app import state as state_mod
    from veritee.app.cluster import LocalCluster, descriptor_for
    from veritee.verifier.client import VerifierClient

    from .test_app_deploy import REPO, SmartHome, build_smart_home, until

    workdir = tmp_path_factory.mktemp("tpmapp")  # short: socket paths have a length limit
    binaries = build_smart_home(wasm)
    tpm = provision_swtpm(workdir / "swtpm", make_ek_ca())
    tpm.start()
    cluster = LocalCluster(workdir / "cluster")
    try:
        server = cluster.nodes["home-server"]
        node = TpmDevice(server.home, tpm, workdir)
        node.ok("device", "init", "--backend", "tpm", "--tpm", tpm.tcti)
        cluster.start()  # the node agent boots the TPM node's secure world
        node.register()
        entries = [{"tpm-ca": tpm.ca.pem.decode()}] + [
            {"tpm-registration": r}
            for r in json.loads(node.registrations.read_text())["tpm-registrations"]
        ]
        with VerifierClient(str(cluster.verifier_url), token=cluster._token) as client:
            client.add_trust_anchors(entries)
        cluster.endorse((m, p.read_bytes()) for m, p in binaries.items())
        descriptor = descriptor_for(
            REPO / "examples/smart-home/app.yaml", cluster, binaries, workdir / "app.yaml"
        )
        sh = SmartHome(cluster, workdir / "deployment.json", binaries, workdir)
        proc = sh.cli("deploy", descriptor, "--verifier", str(cluster.verifier_url))
        assert proc.returncode == 0, proc.stderr
        assert "5/5 modules attested and connected" in proc.stderr, proc.stderr
        dep = state_mod.load(sh.state)
        on_tpm = [m for m in dep.modules.values() if m.node == "home-server"]
        assert on_tpm and all(m.status == "connected" for m in on_tpm)
        assert all(m.attestation["status"] == "warning" for m in on_tpm)
        status = json.loads(node.ok("tee", "status", "--json"))
        assert status["monitor"]["backend"]["name"] == "tpm"
        sh.ok("output", "init-server", "start")
        sh.ok("output", "trigger-btn", "press")
        until(lambda: sh.cli("request", "get-presses").stdout.strip() == "1")
    finally:
        cluster.stop()
        tpm.stop()


def test_an_ak_of_the_hosts_own_in_place_of_the_devices_stops_the_boot(
    tpm_device: TpmDevice,
) -> None:
    """Adversary: the host user, who makes an AK of their own in the same TPM (no
    authorisation, so they can quote with it at will) and swaps its blobs in for the
    device's, so that the booted secure world would quote with a key they also hold. The
    secure world opens its root only if the root authorises the AK it finds: it does not
    boot. (Swapped in the identity file instead, the AK is not the registered one:
    AkNotActivated, test_ak_of_another_tpm_is_refused.)"""
    from veritee.tee.backends.tpm import TpmBackend

    state = tpm_device.home / "device" / "tpm"
    genuine = {n: (state / n).read_bytes() for n in ("ak.pub", "ak.priv")}
    tpm_device.reboot()
    with TpmBackend(tpm_device.work / "host-scratch", tpm_device.tpm.tcti) as host:
        host.identity()  # makes the host's AK, with an empty authValue
    for name in genuine:
        (state / name).write_bytes((tpm_device.work / "host-scratch" / name).read_bytes())
    proc = tpm_device.cli("tee", "start")
    assert proc.returncode != 0 and "does not authorise" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    for name, data in genuine.items():
        (state / name).write_bytes(data)
    tpm_device.reboot()
    tpm_device.ok("tee", "start")
    assert tpm_device.appraise(tpm_device.attest()).returncode == 0


def test_tpm_trust_anchors_parse_or_say_what_is_wrong(tmp_path: Path) -> None:
    """What an operator provisions (a deployment file, or the API's body): TPM CAs by path or
    PEM, registrations as the registrar wrote them; anything else one ProvisioningError."""
    from veritee.verifier import deployfile
    from veritee.verifier.endorsements import (
        Deployment,
        TpmCaAnchor,
        TpmRegistration,
        trust_anchors,
    )
    from veritee.verifier.errors import ProvisioningError

    from .test_tpm import _AK

    (tmp_path / "ca.pem").write_bytes(make_ek_ca().pem)
    registration = {"ek-sha256": "ab" * 32, "ak": _AK.hex()}
    (tmp_path / "deploy.yaml").write_text(
        f"trust-anchors:\n  - tpm-ca: ca.pem\n  - tpm-registration: {json.dumps(registration)}\n"
    )
    anchors = Deployment.parse(deployfile.load(tmp_path / "deploy.yaml")).anchors
    assert [type(a) for a in anchors] == [TpmCaAnchor, TpmRegistration]
    assert anchors[1].ek_fingerprint == bytes.fromhex("ab" * 32)
    for bad in (
        {"tpm-ca": "not a PEM"},
        {"tpm-ca": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"},
        {"tpm-registration": {"ek-sha256": "ab", "ak": _AK.hex()}},
        {"tpm-registration": {"ek-sha256": "ab" * 32, "ak": "00"}},
        {"tpm-registration": {"ek-sha256": "zz" * 32, "ak": _AK.hex()}},
        {"tpm-registration": "x"},
        {"tpm-ca": (tmp_path / "ca.pem").read_text(), "max-lifecycle": "secured"},
    ):
        with pytest.raises(ProvisioningError):
            trust_anchors(bad)


def test_the_secret_service_releases_a_rollback_protected_secret_to_a_tpm_device(
    tpm_device: TpmDevice, wasm: Callable[..., Path]
) -> None:
    """A secret that requires counters the host cannot roll back is refused to an emulated
    device (its counters are a file: tests/test_secrets_service.py) and released to a module
    on a TPM-backed device, whose service trusts its TPM maker and registrar's file."""
    import yaml

    from veritee.home import Home
    from veritee.tee import client as teec
    from veritee.tee.ta import WasmSession
    from veritee.wasm.runtime import measure

    from .test_secrets_service import start_service, write_config

    dev = tpm_device
    module = wasm("examples/hello/hello.c").read_bytes()
    root = dev.work / "secrets"
    root.mkdir()
    config = write_config(root, dev, measure(module))  # type: ignore[arg-type]  # .home
    body = yaml.safe_load(config.read_text())
    body["trust"]["tpm_ca"] = [str(dev.ek_ca)]
    body["trust"]["tpm_registrations"] = str(dev.registrations)
    config.write_text(yaml.safe_dump(body))
    service = start_service(dev.home, config, root / "state")
    try:
        with teec.Context(home=Home(dev.home), vtee="default") as ctx:
            session = WasmSession(ctx)
            session.load(module, name="self-named")
            for name in ("rollback-protected-only", "data-key"):
                nonce = service.challenge()
                response = service.release(nonce, session.attest(nonce), name)
                assert response.status_code == 200, response.text
            nonce = service.challenge()  # secured-only: a TPM-backed device is not secured
            response = service.release(nonce, session.attest(nonce), "secured-only")
            assert response.status_code == 403, response.text
    finally:
        service.stop()
