"""TPM 2.0 backend benchmark: what rooting the secure world in a TPM costs, against the
emulated backend, both measured in the same run on this machine.

The TPM is swtpm (a software TPM, a process on loopback), so TPM operations here cost what
swtpm's software crypto and its socket cost; a discrete TPM is slower per operation (tens of
milliseconds for a quote or an NV increment), a firmware TPM in between. Measured, for each
backend, the median of ``--reps`` runs (boots: fewer, as each needs a TPM reset):

  boot          ``tee start``: the monitor measures the stages (and on the TPM extends PCR 15,
                unseals the root and caps the PCR) and starts the default vTEE (whose platform
                token is a TPM quote)
  vtee start    ``vtee start`` of a second vTEE: its keys and its platform token
  evidence      one module's evidence for a fresh challenge (the module token; the platform
                token was made at the vTEE's start, on either backend)
  appraise      appraisal.verify of that evidence, no link cache: on the TPM the EK chain,
                the registration, the quote and its event log, instead of the device chain and
                the platform token's signature
  seal          one sealing of an app module's state, which advances its rollback counter (on
                the TPM an NV increment, opening the TPM for it)

Run:  .venv/bin/python bench/tpm.py [--reps 50] [--boots 3] [--json]
Exit codes: 0 done, 2 swtpm is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the tests' swtpm helper (a TPM with an EK certificate of a CA)

MODULE = b'(module (memory (export "memory") 1) (func (export "_start")))'
COUNTER = REPO / "tests" / "assets" / "c" / "app_counter.c"


def _cli(home: Path, *args: str | Path) -> float:
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "veritee", "--home", str(home), *map(str, args)],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    return time.perf_counter() - t


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def _timed(reps: int, work: Callable[[], object]) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        work()
        out.append(time.perf_counter() - t)
    return out


def bench_device(home: Path, reps: int, boots: int, reset: Callable[[], None]) -> dict[str, Any]:
    """Every figure for one provisioned device (its secure world stopped)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from veritee.evidence import appraisal
    from veritee.home import Home
    from veritee.tee import client as teec
    from veritee.tee.ta import AppSession, WasmSession
    from veritee.wasm.build import build

    reset()  # a first boot warms the caches (imports, the AOT cache): not counted
    _cli(home, "tee", "start")
    _cli(home, "tee", "stop")
    boot = []
    for _ in range(boots):
        reset()
        boot.append(_cli(home, "tee", "start"))
        _cli(home, "tee", "stop")
    reset()
    _cli(home, "tee", "start")
    try:
        _cli(home, "vtee", "create", "second", "--memory", "128", "--workers", "1")
        vtee = []
        for _ in range(max(1, min(reps, 10))):
            vtee.append(_cli(home, "vtee", "start", "second"))
            _cli(home, "vtee", "stop", "second")
        h = Home(home)
        nonce = os.urandom(32)
        with teec.Context(home=h) as ctx:
            session = WasmSession(ctx)
            session.load(MODULE)
            evidence_s = _timed(reps, lambda: session.attest(nonce))
            evidence = session.attest(nonce)
            anchors = appraisal.TrustAnchors.from_pem((h.manufacturer / "ca.pem").read_bytes())
            anchors = _tpm_anchors(home, anchors)
            appraisal.verify(evidence, anchors, nonce=nonce)  # it checks out
            appraise_s = _timed(reps, lambda: appraisal.verify(evidence, anchors, nonce=nonce))
            out = Path(tempfile.mkdtemp()) / "counter.wasm"
            build(COUNTER, out)
            key = ec.generate_private_key(ec.SECP256R1()).public_key()
            raw = key.public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            app = AppSession(ctx)
            app.load(out.read_bytes(), name="counter", app="bench", deployment_key=raw)
            seal_s = _timed(max(1, reps // 2), lambda: app.deliver_batch([]))
    finally:
        _cli(home, "tee", "stop")
    return {
        "boot_ms": _median_ms(boot),
        "vtee_start_ms": _median_ms(vtee),
        "evidence_ms": _median_ms(evidence_s),
        "appraise_ms": _median_ms(appraise_s),
        "seal_ms": _median_ms(seal_s),
        "evidence_bytes": len(evidence),
    }


_REGISTRATIONS: dict[str, Any] = {}


def _tpm_anchors(home: Path, anchors: Any) -> Any:
    found = _REGISTRATIONS.get(str(home))
    if found is None:
        return anchors
    import dataclasses

    return dataclasses.replace(anchors, tpm_cas=found["cas"], tpm_registrations=found["regs"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("swtpm_setup") is None:
        print("swtpm is not installed (scripts/setup.sh --test installs it)", file=sys.stderr)
        return 2
    from tests._swtpm import make_ek_ca, provision_swtpm
    from veritee.evidence import tpm as tpm_evidence

    work = Path(tempfile.mkdtemp(prefix="veritee-bench-tpm-"))
    results: dict[str, dict[str, Any]] = {}
    try:
        emulated = work / "emulated"
        _cli(emulated, "device", "init")
        print("emulated device ...", file=sys.stderr)
        results["emulated"] = bench_device(emulated, args.reps, args.boots, lambda: None)

        swtpm = provision_swtpm(work / "swtpm", make_ek_ca())
        swtpm.start()
        try:
            home = work / "tpm"
            _cli(home, "device", "init", "--backend", "tpm", "--tpm", swtpm.tcti)
            _cli(home, "tee", "start")
            regs = work / "regs.json"
            ca = work / "tpm-ca.pem"
            ca.write_bytes(swtpm.ca.pem)
            _cli(home, "evidence", "tpm-register", "--tpm-ca", ca, "-o", regs)
            _cli(home, "tee", "stop")
            _REGISTRATIONS[str(home)] = {
                "cas": (swtpm.ca.cert,),
                "regs": tpm_evidence.registrations_from_json(json.loads(regs.read_text())),
            }
            print("TPM device (swtpm) ...", file=sys.stderr)
            results["tpm"] = bench_device(home, args.reps, args.boots, swtpm.restart)
        finally:
            swtpm.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratios = {
        k.removesuffix("_ms") + "_ratio": results["tpm"][k] / results["emulated"][k]
        for k in results["emulated"]
        if k.endswith("_ms")
    }
    report = {**results, "ratios": ratios, "reps": args.reps, "boots": args.boots}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'':12} {'emulated':>10} {'tpm (swtpm)':>12} {'tpm/emulated':>13}")
    for k in ("boot", "vtee_start", "evidence", "appraise", "seal"):
        e, t = results["emulated"][f"{k}_ms"], results["tpm"][f"{k}_ms"]
        print(f"{k:12} {e:8.2f}ms {t:10.2f}ms {t / e:12.2f}x")
    print(
        f"evidence size: {results['emulated']['evidence_bytes']} B emulated, "
        f"{results['tpm']['evidence_bytes']} B tpm"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
