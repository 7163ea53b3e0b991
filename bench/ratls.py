"""Attested TLS benchmark: handshake plus appraisal, against a plain TLS handshake, on loopback.

All measured in the same run, client in this process, servers in their own processes:

* plain TLS 1.3     a pyOpenSSL server (P-256 self-signed certificate): TCP connect + handshake
* RA-TLS challenge  ``veritee ratls serve``: TCP connect + handshake with the challenge in the
                    server name (the module's certificate carries evidence over it, made in
                    the secure world during the handshake) + local appraisal of the certificate
* RA-TLS exporter   the same server: TCP connect + handshake + the module's evidence over the
                    TLS exporter, made after the handshake + local appraisal
* appraisal alone   ``ratls.verify.appraise`` on a captured certificate (no I/O), to split the
                    cost between the appraisal and the secure world's part

Medians over ``--runs`` connections each (after warm-up), and the ratio of each RA-TLS
handshake to the plain one.

Run:  .venv/bin/python bench/ratls.py [--runs 200] [--json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

from veritee import ratls
from veritee.evidence.appraisal import ReferenceValues, TrustAnchors
from veritee.tls import certificate, verify
from veritee.tls.engine import tls_context
from veritee.tls.verify import Freshness
from veritee.wasm.runtime import measure, to_binary

# The handshake never runs the module: the smallest WASI command will do.
MODULE = b'(module (memory (export "memory") 1) (func (export "_start")))'
WARMUP = 10
START_BOUND = 60.0  # seconds for a server to listen


def _cli(home: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "veritee", "--home", str(home), *args],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )


def _wait_for(path: Path, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    deadline = time.monotonic() + START_BOUND
    while not path.exists() or not path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"a benchmark server did not start ({path.name})")
        time.sleep(0.05)
    value: dict[str, Any] = json.loads(path.read_text())
    return value


def plain_server(ready: Path) -> None:
    """A plain TLS 1.3 server: handshake, close; one connection at a time (runs in a child)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certificate.build_plain(key, name="plain", now=dt.datetime.now(dt.UTC))
    ctx = tls_context("server", cert, key, peer=False)
    listener = socket.create_server(("127.0.0.1", 0))
    ready.write_text(json.dumps({"port": listener.getsockname()[1]}))
    while True:
        sock, _ = listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = SSL.Connection(ctx, sock)
        conn.set_accept_state()
        try:
            conn.do_handshake()
            conn.recv(1)  # until the client hangs up
        except SSL.Error:
            pass
        sock.close()


def _plain_handshake(port: int) -> None:
    ctx = tls_context("client", None, None, peer=True)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = SSL.Connection(ctx, sock)
    conn.set_connect_state()
    conn.do_handshake()
    sock.close()


def _time(fn: Callable[[], object], runs: int) -> list[float]:
    for _ in range(WARMUP):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="connections per configuration")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--plain-server", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_server:
        plain_server(args.plain_server)
        return 0

    with tempfile.TemporaryDirectory(prefix="veritee-bench-ratls-") as tmp:
        root = Path(tmp)
        home = root / "home"
        print("provisioning a device and booting its secure world…", file=sys.stderr)
        _cli(home, "device", "init")
        _cli(home, "tee", "start")
        procs: list[subprocess.Popen[bytes]] = []
        try:
            module = root / "module.wat"
            module.write_bytes(MODULE)
            ra_ready, plain_ready = root / "ra.json", root / "plain.json"
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "veritee",
                        "--home",
                        str(home),
                        "ratls",
                        "serve",
                        str(module),
                        "--port",
                        "0",
                        "--instances",
                        "1",
                        "--ready-file",
                        str(ra_ready),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            procs.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--plain-server", str(plain_ready)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            ra_port = int(_wait_for(ra_ready, procs[0])["port"])
            plain_port = int(_wait_for(plain_ready, procs[1])["port"])

            anchors = TrustAnchors.from_pem((home / "manufacturer" / "ca.pem").read_bytes())
            refs = ReferenceValues.from_json(
                json.loads((home / "manufacturer" / "reference-values.json").read_text())
            ).merge(ReferenceValues({}, {measure(to_binary(MODULE)): "bench"}))
            appraiser = ratls.LocalAppraiser(anchors, refs)

            def attested(mode: ratls.Mode) -> Callable[[], None]:
                def run() -> None:
                    ratls.connect("127.0.0.1", ra_port, appraiser, mode=mode).close()

                return run

            print(f"{args.runs} connections per configuration…", file=sys.stderr)
            samples = {
                "plain TLS 1.3": _time(lambda: _plain_handshake(plain_port), args.runs),
                "RA-TLS challenge": _time(attested("challenge"), args.runs),
                "RA-TLS exporter": _time(attested("exporter"), args.runs),
            }
            fresh = appraiser.challenge()
            captured: list[bytes] = []

            class Keep(ratls.LocalAppraiser):
                def challenge(self) -> Freshness:
                    return fresh

                def appraise(
                    self, cert: bytes, freshness: Freshness, evidence: bytes | None = None
                ) -> ratls.AttestedPeer:
                    captured.append(cert)
                    return super().appraise(cert, freshness, evidence)

            ratls.connect("127.0.0.1", ra_port, Keep(anchors, refs)).close()
            samples["appraisal alone"] = _time(
                lambda: verify.appraise(captured[0], fresh, anchors, refs), args.runs
            )
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=START_BOUND)
            _cli(home, "tee", "stop")

    base = statistics.median(samples["plain TLS 1.3"])
    rows = {
        name: {
            "median_ms": statistics.median(s) * 1000,
            "p90_ms": sorted(s)[int(len(s) * 0.9)] * 1000,
            "ratio": statistics.median(s) / base,
        }
        for name, s in samples.items()
    }
    if args.json:
        print(json.dumps({"runs": args.runs, "results": rows}, indent=2))
        return 0
    print(f"{'handshake (loopback)':24} {'median ms':>10} {'p90 ms':>8} {'vs plain':>9}")
    for name, row in rows.items():
        ratio = f"{row['ratio']:.2f}x" if name != "appraisal alone" else "-"
        print(f"{name:24} {row['median_ms']:10.2f} {row['p90_ms']:8.2f} {ratio:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
