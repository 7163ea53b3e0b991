"""NATS JetStream against direct links: one-way latency module → module across two nodes
(p50, p99) and events per second, both transports in one run on the same two nodes.

Everything is real: a nats-server with JetStream (file storage, a temp store), two node
agents each with its own device and secure world, the relay app of bench/events.py deployed
twice (one copy with ``transport: direct``, one with ``transport: nats://…``) and attested
against the nodes' own devices. Baselines in the same run: each transport alone, agent to
agent with no secure world (bench/events.py's ``transport_alone`` for TCP, the same for NATS).

Run:  .venv/bin/python bench/events_nats.py [--hops 1000] [--burst 5000] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import events  # bench/events.py, beside this script

from veritee.app import descriptor as desc_mod
from veritee.app.cluster import LocalCluster
from veritee.app.deployer import Deployer
from veritee.app.transport import Peer
from veritee.app.transport_nats import NatsTransport
from veritee.wasm.build import build

REPO = Path(__file__).resolve().parent.parent
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
WAIT = events.WAIT


def start_broker(store: Path) -> tuple[subprocess.Popen[bytes], str]:
    if not Path(NATS_SERVER).exists():
        raise SystemExit("bench/events_nats.py needs nats-server: run scripts/setup.sh --test")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [NATS_SERVER, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"nats://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit("nats-server did not start")


def nats_alone(n: int, workdir: Path, url: str) -> dict[str, float]:
    """One-way latency and events/s agent to agent through the broker, no secure world."""
    got: list[float] = []
    done = threading.Event()

    def take(batch: list[bytes]) -> None:
        now = time.perf_counter()
        got.extend(now - struct.unpack(">d", e[:8])[0] for e in batch)
        if len(got) >= n:
            done.set()

    b = NatsTransport(workdir / "nb", url)
    b.start(take, lambda e: e)
    b.serve("bench", "b")
    a = NatsTransport(workdir / "na", url)
    a.start(lambda e: None, lambda e: e)
    to = Peer("bench", "b", ("", 0))
    a.send(to, struct.pack(">d", time.perf_counter()) + bytes(80))
    deadline = time.monotonic() + WAIT
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    got.clear()
    for i in range(200):  # latency: one at a time
        a.send(to, struct.pack(">d", time.perf_counter()) + bytes(80))
        while len(got) < i + 1:
            time.sleep(0)
    latency = events.summary(got)
    got.clear()
    t0 = time.perf_counter()
    a.send_all(to, [struct.pack(">d", time.perf_counter()) + bytes(80) for _ in range(n)])
    done.wait(WAIT)
    rate = len(got) / (time.perf_counter() - t0)
    a.close()
    b.close()
    return {**latency, "events_per_s": rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hops", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=5000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.hops < 2 or args.burst < 1:
        parser.error("--hops must be at least 2, --burst at least 1")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="veritee-bench-nats-") as tmp:
        work = Path(tmp)
        broker, url = start_broker(work / "store")
        try:
            relay = work / "relay.wasm"
            build(REPO / "bench" / "apps" / "relay.c", relay)
            results["tcp_alone"] = events.transport_alone(args.burst, work)
            results["nats_alone"] = nats_alone(args.burst, work, url)
            events._say("baselines measured")
            cluster = LocalCluster(work / "cluster", verifier=False)
            cluster.start()
            try:
                homes = [n.home for n in cluster.nodes.values()]
                drivers = {}
                for label, transport in (("direct", "direct"), ("nats", url)):
                    path = events.relay_descriptor(
                        f"bench-{label}",
                        "home-hub",
                        "home-server",
                        cluster,
                        relay,
                        work / f"{label}.json",
                    )
                    data = json.loads(path.read_text())
                    data["transport"] = transport
                    path.write_text(json.dumps(data))
                    state = work / f"{label}-state.json"
                    Deployer(state, trust_homes=homes).deploy(desc_mod.load(path))
                    drivers[label] = events.Driver(state)
                for label, driver in drivers.items():
                    events.ping_pong(driver, events.WARM_HOPS)
                    results[f"latency_{label}"] = events.ping_pong(driver, args.hops)
                    results[f"throughput_{label}"] = events.throughput(driver, args.burst)
                    events._say(f"{label} measured")
            finally:
                cluster.stop()
        finally:
            broker.kill()
            broker.wait(10)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    report(results)


def report(r: dict[str, Any]) -> None:
    d, n = r["latency_direct"], r["latency_nats"]
    td, tn = r["throughput_direct"], r["throughput_nats"]
    print("Events across two nodes: NATS JetStream against direct links (same run, loopback)")
    print()
    print(f"{'':36} {'p50 ms':>9} {'p99 ms':>9} {'events/s':>10}")
    rows = [
        ("module → module, direct links", d, td["events_per_s"]),
        ("module → module, NATS JetStream", n, tn["events_per_s"]),
        ("transport alone, TCP", r["tcp_alone"], r["tcp_alone"]["events_per_s"]),
        ("transport alone, NATS", r["nats_alone"], r["nats_alone"]["events_per_s"]),
    ]
    for name, lat, rate in rows:
        print(f"{'  ' + name:36} {lat['p50_ms']:9.3f} {lat['p99_ms']:9.3f} {rate:10.0f}")
    print()
    print(
        f"NATS / direct: p50 x{n['p50_ms'] / d['p50_ms']:.2f},"
        f" p99 x{n['p99_ms'] / d['p99_ms']:.2f},"
        f" events/s x{tn['events_per_s'] / max(td['events_per_s'], 1e-9):.2f}"
    )


if __name__ == "__main__":
    sys.exit(main())
