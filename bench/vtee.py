"""Virtual TEE benchmark: start-up, the cost of the extra link, idle memory per vTEE.

Prints ratios against baselines measured in the same run:

* create / start a vTEE            vs  booting the whole secure world (monitor + default vTEE)
* appraisal with the vTEE link     vs  a two-token chain (device key binds the module key
                                       directly, as a non-virtual device would), same code paths
* load with the vTEE link          vs  the same load minus one ECDSA signature (measured here)
* idle memory of one vTEE          (proportional set size of its process and warm workers,
                                       so shared library pages are split fairly), and how many
                                       would fit in this machine's memory

Run:  .venv/bin/python bench/vtee.py [--vtees 6] [--reps 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from veritee.evidence import cose
from veritee.evidence.appraisal import TrustAnchors, verify
from veritee.evidence.claims import Evidence, ModuleClaims, PlatformClaims, encode_claims
from veritee.home import Home
from veritee.tee import client as teec
from veritee.tee import monitor
from veritee.tee.ta import WasmSession

MODULE = b'(module (memory (export "memory") 1) (func (export "_start")))'


def _cli(home: Home, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "veritee", "--home", str(home.root), *args],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def _pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _two_link_verify(data: bytes, anchors: TrustAnchors, nonce: bytes) -> None:
    """The non-virtual chain, device key -> module key: verify() minus the vTEE link."""
    import hmac

    from veritee.evidence.appraisal import _device_certificate

    ev = Evidence.decode(data)
    pmsg = cose.decode(ev.platform)
    _, dak, _ = _device_certificate(pmsg, anchors, None)
    cose.verify(pmsg, dak, what="platform token")
    platform = PlatformClaims.from_cbor(pmsg.claims())
    assert platform.ueid == b"\x01" + cose.key_digest(cose.ec_key_to_cose(dak))
    mmsg = cose.decode(ev.module)
    cose.verify(mmsg, cose.cose_to_ec_key(platform.vtee_key), what="module token")
    module = ModuleClaims.from_cbor(mmsg.claims())
    assert hmac.compare_digest(module.nonce, nonce)


def bench_links(home: Home, reps: int) -> dict[str, float]:
    nonce = os.urandom(32)
    with teec.Context(home=home) as ctx:
        session = WasmSession(ctx)
        session.load(MODULE)
        evidence = session.attest(nonce)
    anchors = TrustAnchors.from_pem((home.manufacturer / "ca.pem").read_bytes())
    # Baseline evidence of a non-virtual device: the device key (the bench reads it, as the
    # host can in this emulation) binds the module key directly; same certificate chain.
    from cryptography.hazmat.primitives import serialization

    from veritee.tee.keys import read_private_key

    device_key = read_private_key(home.device / "dak.key")
    module_key = ec.generate_private_key(ec.SECP256R1())
    real = verify(evidence, anchors, nonce=nonce)
    platform = PlatformClaims(
        **{**real.platform.__dict__, "vtee_key": cose.ec_key_to_cose(module_key.public_key())}
    )
    chain = [real.device_certificate.public_bytes(serialization.Encoding.DER)]
    baseline = Evidence(
        cose.sign1(encode_claims(platform), device_key, unprotected={cose.HDR_X5CHAIN: chain}),
        b"",
        cose.sign1(encode_claims(real.module), module_key),
    ).encode()

    three, two = [], []
    for _ in range(reps):
        t = time.perf_counter()
        verify(evidence, anchors, nonce=nonce)
        three.append(time.perf_counter() - t)
        t = time.perf_counter()
        _two_link_verify(baseline, anchors, nonce)
        two.append(time.perf_counter() - t)
    key = ec.generate_private_key(ec.SECP256R1())
    signs = []
    for _ in range(reps):
        t = time.perf_counter()
        cose.sign1(b"x" * 200, key)
        signs.append(time.perf_counter() - t)
    loads = []
    with teec.Context(home=home) as ctx:
        for _ in range(min(reps, 50)):
            t = time.perf_counter()
            s = WasmSession(ctx)
            s.load(MODULE)
            loads.append(time.perf_counter() - t)
            s.close()
    return {
        "appraise_3link_ms": _median_ms(three),
        "appraise_2link_ms": _median_ms(two),
        "appraise_ratio": statistics.median(three) / statistics.median(two),
        "load_ms": _median_ms(loads),
        "ecdsa_sign_ms": _median_ms(signs),
        "load_ratio": statistics.median(loads)
        / (statistics.median(loads) - statistics.median(signs)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vtees", type=int, default=6, help="idle vTEEs to start [6]")
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Home(Path(tmp) / "home")
        _cli(home, "device", "init")
        boots = []
        for _ in range(3):
            t = time.perf_counter()
            _cli(home, "tee", "start")
            boots.append(time.perf_counter() - t)
            _cli(home, "tee", "stop")
        _cli(home, "tee", "start")
        try:
            creates, starts = [], []
            for i in range(args.vtees):
                t = time.perf_counter()
                monitor.control(
                    home, {"op": "vtee-create", "name": f"v{i}", "config": {"workers": 1}}
                )
                creates.append(time.perf_counter() - t)
                t = time.perf_counter()
                monitor.control(home, {"op": "vtee-start", "name": f"v{i}"})
                starts.append(time.perf_counter() - t)
                print(f"started vTEE v{i}", file=sys.stderr)
            time.sleep(1.0)  # let warm workers finish importing
            listing = monitor.control(home, {"op": "vtee-list"})["vtees"]
            pss = []
            for entry in listing:
                if entry["name"].startswith("v") and entry["pid"]:
                    pid = entry["pid"]
                    pss.append(_pss_kib(pid) + sum(_pss_kib(c) for c in _children(pid)))
            links = bench_links(home, args.reps)
        finally:
            _cli(home, "tee", "stop")
    total_kib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024
    per_vtee = statistics.median(pss)
    result: dict[str, Any] = {
        "secure_world_boot_ms": _median_ms(boots),
        "vtee_create_ms": _median_ms(creates),
        "vtee_start_ms": _median_ms(starts),
        "vtee_start_vs_boot": statistics.median(starts) / statistics.median(boots),
        "idle_vtee_pss_mib": per_vtee / 1024,
        "idle_vtees_fitting_in_memory": int(total_kib // per_vtee),
        **links,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"boot secure world (monitor + default vTEE): {result['secure_world_boot_ms']:8.1f} ms")
    print(f"create a vTEE:                              {result['vtee_create_ms']:8.1f} ms")
    print(
        f"start a vTEE:                               {result['vtee_start_ms']:8.1f} ms"
        f"   ({result['vtee_start_vs_boot']:.2f}x a whole boot)"
    )
    print(f"appraise, device->vTEE->module:             {result['appraise_3link_ms']:8.3f} ms")
    print(
        f"appraise, device->module (baseline):        {result['appraise_2link_ms']:8.3f} ms"
        f"   ratio {result['appraise_ratio']:.2f}x"
    )
    print(
        f"load a module (signs the vtee token):       {result['load_ms']:8.2f} ms"
        f"   ratio {result['load_ratio']:.3f}x vs without that signature"
        f" ({result['ecdsa_sign_ms']:.3f} ms)"
    )
    print(
        f"idle vTEE (process + 1 warm worker), PSS:   {result['idle_vtee_pss_mib']:8.1f} MiB"
        f"   -> about {result['idle_vtees_fitting_in_memory']} fit in "
        f"{total_kib / 2**20:.0f} GiB"
    )


if __name__ == "__main__":
    main()
