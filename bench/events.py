"""Event benchmark: latency module→module within a node and across two nodes, events per
second across two nodes, deploy time per phase, update time.

Everything runs for real on this machine: two node agents, each with its own device and
secure world, a verifier, modules deployed and attested. Printed against baselines measured
in the same run:

* a raw TCP round trip on loopback (Python sockets): what any two processes pay;
* the secure world alone: one event delivered to a module through the TEE Client API, no
  node agent (what the application TA costs per event);
* the transport alone: node agent to node agent over TCP, no secure world.

Latency is measured inside the modules (bench/apps/relay.c): each event carries its
sender's CLOCK_REALTIME, the receiver records the difference; two relays in a ring
ping-pong an event N times, after a warm-up of 300 hops, and the bench asks the relays
for their samples only once the run should be over (asking meanwhile slows it). Throughput:
one relay sends a burst, the other counts it and notes when the first event was sent and
the last arrived.

Both are measured twice on the same nodes: first with each node (its agent, and the secure
world and module workers it started) pinned to a core of its own, as two devices would each
have theirs; then with every process free to run on any core. On a virtual machine a
wake-up across cores costs several times one on the same core, and every hop is a chain of
such wake-ups, so the placement moves the figure. Deploy figures are taken unpinned.

Last, on the cross-node app, the p50 after its owner ended 4096 connections, against the
p50 just before: a batch's cost must not grow with the app's history.

Targets (issue 7): cross-node p50 under 1 ms, at least 10,000 events/s, the demo deployed
in under 3 s. The Authentic Execution paper: 432 ms round trip in its smart-home case,
3 to 6 s to update one module.

The node agents poll their links as ``veritee node start`` does by default; ``--poll-us``
sets it (0: never), for the nodes and the transport-alone baseline alike.

Run:  .venv/bin/python bench/events.py [--hops 1000] [--burst 10000] [--poll-us N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import _machine as machine  # bench/_machine.py, beside this script

from veritee.app import changes
from veritee.app import descriptor as desc_mod
from veritee.app import state as state_mod
from veritee.app.cluster import LocalCluster, descriptor_for
from veritee.app.deployer import Deployer, Step
from veritee.app.transport import POLL, TcpTransport
from veritee.app.user import UserTool
from veritee.evidence.deployment import Connect, Peer, sign_connect
from veritee.home import Home
from veritee.tee import client as teec
from veritee.tee.channels import establish
from veritee.tee.ta import AppSession
from veritee.wasm.build import build

REPO = Path(__file__).resolve().parent.parent
SMART_HOME = REPO / "examples" / "smart-home"
MODULES = ("button_driver", "led_driver", "controller", "db", "webserver")
WAIT = 120.0  # seconds: a bound that only catches a hang


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def summary(samples_s: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples_s]
    return {"p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99), "n": len(ms)}


# -- baselines ------------------------------------------------------------------------------------


def tcp_round_trip(n: int) -> dict[str, float]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def echo() -> None:
        conn, _ = server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(64):
            conn.sendall(data)
        conn.close()

    threading.Thread(target=echo, daemon=True).start()
    client = socket.create_connection(server.getsockname())
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.sendall(b"x" * 60)
        got = 0
        while got < 60:
            got += len(client.recv(64))
        samples.append(time.perf_counter() - t0)
    client.close()
    server.close()
    return summary(samples)


def transport_alone(n: int, workdir: Path, poll: float = POLL) -> dict[str, float]:
    """One-way latency and events/s node agent to node agent, no secure world."""
    got: list[float] = []
    done = threading.Event()
    b = TcpTransport(workdir / "tb", "127.0.0.1", 0, poll=poll)

    def take(events: list[bytes]) -> None:
        now = time.perf_counter()
        got.extend(now - struct.unpack(">d", e[:8])[0] for e in events)
        if len(got) >= n:
            done.set()

    b.start(take, lambda e: e)
    a = TcpTransport(workdir / "ta", "127.0.0.1", 0, poll=poll)
    a.start(lambda e: None, lambda e: e)
    a.send(b.address, struct.pack(">d", time.perf_counter()) + bytes(80))  # connect first
    while not got:
        time.sleep(0.01)
    got.clear()
    for _ in range(200):  # latency: one at a time
        a.send(b.address, struct.pack(">d", time.perf_counter()) + bytes(80))
        while len(got) < _ + 1:
            time.sleep(0)
    latency = summary(got)
    got.clear()
    t0 = time.perf_counter()
    for _ in range(n):
        a.send(b.address, struct.pack(">d", time.perf_counter()) + bytes(80))
    done.wait(WAIT)
    rate = n / (time.perf_counter() - t0)
    a.close()
    b.close()
    return {**latency, "events_per_s": rate}


def secure_world_alone(home: Path, relay: bytes, n: int) -> dict[str, float]:
    """Deliver sealed events straight into a module through the TEE Client API."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, x25519

    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    user = x25519.X25519PrivateKey.generate()
    with teec.Context(home=Home(home)) as ctx:
        session = AppSession(ctx)
        info = session.load(relay, name="relay", app="bench-tee", deployment_key=public)
        conn = os.urandom(16)
        user_pub = user.public_key().public_bytes_raw()
        session.connect(
            sign_connect(
                Connect(
                    "bench-tee",
                    conn,
                    "input",
                    "in",
                    info["key"],
                    Peer(bytes(32), user_pub, "user", "user"),
                    False,
                ),
                key,
            )
        )
        channel = establish(
            user,
            bytes(32),
            Connect(
                "bench-tee",
                conn,
                "output",
                "user",
                user_pub,
                Peer(info["measurement"], info["key"], "n", "in"),
                True,
            ),
        )
        payload = struct.pack("<QII", 0, 0, 0)
        samples = []
        for _ in range(n):
            event = channel.seal(payload)
            t0 = time.perf_counter()
            session.deliver(event)
            samples.append(time.perf_counter() - t0)
        session.close()
    return summary(samples)


# -- the relay app ------------------------------------------------------------------------------


def relay_descriptor(
    app: str, node_a: str, node_b: str, cluster: LocalCluster, relay: Path, out: Path
) -> Path:
    nodes = {n: cluster.nodes[n] for n in {node_a, node_b}}
    out.write_text(
        json.dumps(
            {
                "app": app,
                "nodes": [{"name": n.name, "host": n.host, "port": n.port} for n in nodes.values()],
                "modules": [
                    {"name": "a", "node": node_a, "binary": str(relay)},
                    {"name": "b", "node": node_b, "binary": str(relay)},
                ],
                "connections": [
                    {"from_module": "a", "from_output": "out", "to_module": "b", "to_input": "in"},
                    {"from_module": "b", "from_output": "out", "to_module": "a", "to_input": "in"},
                    {"name": "start", "direct": True, "to_module": "a", "to_input": "start"},
                    {"name": "burst", "direct": True, "to_module": "a", "to_input": "burst"},
                    {"name": "stats-a", "direct": True, "to_module": "a", "to_handler": "stats"},
                    {"name": "stats-b", "direct": True, "to_module": "b", "to_handler": "stats"},
                ],
            },
            indent=1,
        )
    )
    return out


class Driver:
    def __init__(self, state: Path) -> None:
        self.state = state
        # Mean one-way latency of this app's last ping-pong: how long the next one should
        # take per hop (see ping_pong). None before the first.
        self.hop_s: float | None = None

    def _tool(self) -> tuple[state_mod.Deployment, UserTool]:
        dep = state_mod.load(self.state)
        return dep, UserTool(dep, state_mod.load_keys(self.state))

    def send(self, conn: str, value: int) -> None:
        dep, tool = self._tool()
        tool.send(dep.connection(conn), struct.pack("<I", value))
        state_mod.save(self.state, dep)

    def stats(self, conn: str) -> Stats:
        """Ask a relay what it saw since the last call (bench/apps/relay.c, handler stats)."""
        dep, tool = self._tool()
        raw = tool.request(dep.connection(conn), b"")
        state_mod.save(self.state, dep)
        received, _, first_sent_ns, last_ns = struct.unpack_from("<IIQQ", raw)
        latencies = struct.unpack_from(f"<{(len(raw) - 24) // 4}I", raw, 24)
        return Stats(received, first_sent_ns, last_ns, [v / 1e6 for v in latencies])


class Stats(NamedTuple):
    """One relay's answer. ``received`` counts every event it ever received; the rest is
    about those received since the previous call (its window)."""

    received: int
    first_sent_ns: int  # when the window's first event was sent (CLOCK_REALTIME; 0: none)
    last_ns: int  # when its last one arrived
    latencies: list[float]  # one-way, seconds


# Hops of the ping-pong run before each measured one, not reported: it settles a new
# placement and tells the measured run how long to leave the nodes alone.
WARM_HOPS = 300


def ping_pong(driver: Driver, hops: int) -> dict[str, float]:
    """Ping-pong an event ``hops`` times between the two relays; their one-way latencies.

    The bench leaves the run alone while it lasts. Every stats call runs a relay's
    handler, which holds its module while the next event waits, and the tool's own work
    takes a core from the nodes: asked every 0.2 s from the start, those calls moved the
    p50 by 4-13% and set the p99. So the bench first sleeps for as long as the run should
    take (``hops`` times the mean hop of the app's previous run), then asks every 0.1 s.
    A driver's first run, with nothing to go by, asks from the start: make it a warm-up.
    """
    received_a = driver.stats("stats-a").received  # also drops samples of earlier runs
    received_b = driver.stats("stats-b").received
    before = machine.jiffies()
    driver.send("start", hops)
    samples: list[float] = []
    deadline = time.monotonic() + WAIT
    if driver.hop_s is not None:
        time.sleep(min(hops * driver.hop_s, WAIT / 2))
    while time.monotonic() < deadline:
        a, b = driver.stats("stats-a"), driver.stats("stats-b")
        samples += a.latencies + b.latencies
        if (a.received - received_a) + (b.received - received_b) >= hops - 1:
            break
        time.sleep(0.1 if driver.hop_s is not None else 0.2)
    if samples:
        driver.hop_s = sum(samples) / len(samples)
    return {**summary(samples), "stolen": machine.stolen_share(before, machine.jiffies())}


# Where the nodes' processes run. OWN_CORE: each node (its agent, and the secure world and
# module workers it started) pinned to a core of its own, as two devices would each have
# theirs; SHARED: every process free to run on any core. Result keys carry the suffix.
OWN_CORE, SHARED = "", "_shared_cores"
PLACEMENT_NAMES = {OWN_CORE: "each node on its own core", SHARED: "nodes sharing all cores"}


# --placement of the benchmarks that run one placement or both (events_ab.py, haltpoll.py).
PLACEMENT_CHOICES = {"own": [OWN_CORE], "shared": [SHARED], "both": [OWN_CORE, SHARED]}


def chosen_placements(parser: argparse.ArgumentParser, choice: str) -> list[str]:
    """The placements ``--placement`` names; a parser error if this process cannot give
    each node a core of its own."""
    placements = PLACEMENT_CHOICES[choice]
    if OWN_CORE in placements and not can_pin(2):
        parser.error("a core per node needs two cores this process may use; use --placement shared")
    return placements


def can_pin(nodes: int) -> bool:
    """Whether this process may use a core per node (Linux; a cpuset may allow fewer cores
    than the machine has)."""
    return hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) >= nodes


def place(cluster: LocalCluster, placement: str) -> None:
    """Pin each node's process tree to one core (OWN_CORE), or let it use all (SHARED)."""
    allowed = sorted(os.sched_getaffinity(0))
    for index, node in enumerate(cluster.nodes.values()):
        assert node.process is not None
        cores = {allowed[index % len(allowed)]} if placement == OWN_CORE else set(allowed)
        _pin_tree(node.process.pid, cores)


def _pin_tree(pid: int, cores: set[int]) -> None:
    """Every thread of ``pid`` and of its descendants (Linux /proc); later children inherit."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return
    for task in tasks:
        try:
            os.sched_setaffinity(int(task), cores)
            children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for child in children:
            _pin_tree(int(child), cores)


def throughput(driver: Driver, burst: int) -> dict[str, Any]:
    """Relay a sends ``burst`` events at once to relay b, across the nodes.

    The rate is taken from the relays' clocks: the events received over the time from the
    first one's sending to the last one's arrival. Asking relay b every 0.1 s whether it is
    done then only costs the burst a handler call each time; it no longer rounds the figure
    up to the next question (up to a fifth of a burst of 10,000).
    """
    start = driver.stats("stats-b")  # opens relay b's window
    t0 = time.perf_counter()
    driver.send("burst", burst)
    sent = time.perf_counter()
    first_sent_ns = last_ns = 0
    got = 0
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        b = driver.stats("stats-b")
        first_sent_ns = first_sent_ns or b.first_sent_ns
        last_ns = b.last_ns or last_ns
        got = b.received - start.received
        if got >= burst:
            break
        time.sleep(0.1)
    seconds = (last_ns - first_sent_ns) / 1e9 if got else 0.0
    return {
        "events": burst,
        "received": got,
        "seconds": seconds,
        "events_per_s": got / seconds if seconds > 0 else 0.0,
        # How long the user tool's call took: the direct event to relay a, which the node
        # acknowledges once the module has run and emitted the burst.
        "emit_seconds": sent - t0,
    }


# Connections the owner ends before the last measurement (the most a module remembers).
ENDED = 4096


def after_history(driver: Driver, hops: int, ended: int) -> dict[str, Any]:
    """The app's p50 before and after its owner ended ``ended`` connections.

    A module's secure world remembers every connection the owner ended (so that a replayed
    connect statement cannot revive one), and an app that lives long and is updated often
    ends many. What a batch costs must not grow with that history: the secure world seals
    the ended connections when they change, not after every batch. Two runs each side;
    ending connections cannot be undone, so this is measured last.
    """
    before = [ping_pong(driver, hops) for _ in range(2)]
    failed: list[Step] = []

    def note(step: Step) -> None:
        if step.state == "failed":
            failed.append(step)

    # As `veritee update` and `disable` end connections: statements signed with the app's
    # key, handed to every node at an end of the app's connections.
    dep = state_mod.load(driver.state)
    conns = [os.urandom(16) for _ in range(ended)]
    keys = state_mod.load_keys(driver.state)
    changes._disconnect(
        Deployer(driver.state, progress=note), dep, keys, conns, list(dep.connections.values())
    )
    if failed:
        raise SystemExit(
            "nodes could not end connections: " + "; ".join(f"{s.what}: {s.detail}" for s in failed)
        )
    ping_pong(driver, WARM_HOPS)
    after = [ping_pong(driver, hops) for _ in range(2)]
    return {
        "ended": ended,
        "p50_before_ms": [r["p50_ms"] for r in before],
        "p50_after_ms": [r["p50_ms"] for r in after],
        "stolen_before": max(r["stolen"] for r in before),
        "stolen_after": max(r["stolen"] for r in after),
    }


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hops", type=int, default=1000)
    # Long enough that the burst's first events, sent before the pipeline fills, do not set
    # the figure.
    parser.add_argument("--burst", type=int, default=10000)
    parser.add_argument(
        "--poll-us", type=int, default=round(POLL * 1e6), help="the node agents' --poll-us"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.hops < 2 or args.burst < 1 or args.poll_us < 0:
        parser.error("--hops must be at least 2, --burst at least 1, --poll-us at least 0")

    results: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "halt_poll_ns": machine.halt_poll_ns(),
        "poll_us": args.poll_us,
    }
    with tempfile.TemporaryDirectory(prefix="veritee-bench-events-") as tmp:
        work = Path(tmp)
        relay = work / "relay.wasm"
        build(REPO / "bench" / "apps" / "relay.c", relay)
        binaries = {}
        for m in MODULES:
            binaries[m] = work / f"{m}.wasm"
            build(SMART_HOME / f"{m}.c", binaries[m])
        web2 = work / "webserver-v2.wasm"
        build(SMART_HOME / "webserver.c", web2, defines=["WEB_V2"])

        results["tcp_round_trip"] = tcp_round_trip(2000)
        results["transport_alone"] = transport_alone(args.burst, work, args.poll_us / 1e6)
        _say("baselines measured")

        cluster = LocalCluster(work / "cluster", poll_us=args.poll_us)
        cluster.start()
        try:
            cluster.endorse(
                [
                    ("relay", relay.read_bytes()),
                    ("webserver", web2.read_bytes()),
                    *((m, p.read_bytes()) for m, p in binaries.items()),
                ]
            )
            hub, server = "home-hub", "home-server"

            # Deploy the demo: cold (modules compiled for the first time), then warm.
            desc = descriptor_for(SMART_HOME / "app.yaml", cluster, binaries, work / "home.yaml")
            t0 = time.perf_counter()
            dep = Deployer(work / "home.json", verifier=cluster.verifier_url).deploy(
                desc_mod.load(desc)
            )
            results["deploy_cold"] = {**dep.timings, "total": time.perf_counter() - t0}
            t0 = time.perf_counter()
            dep = Deployer(work / "home.json", verifier=cluster.verifier_url).deploy(
                desc_mod.load(desc), force=True
            )
            results["deploy_warm"] = {**dep.timings, "total": time.perf_counter() - t0}
            _say("demo deployed")
            t0 = time.perf_counter()
            changes.update(Deployer(work / "home.json"), "webserver", web2)
            results["update_one_module_s"] = time.perf_counter() - t0

            results["secure_world_alone"] = secure_world_alone(
                cluster.nodes[hub].home, relay.read_bytes(), 500
            )
            _say("secure world alone measured")

            drivers = {}
            for label, a, b in (("within_node", hub, hub), ("across_nodes", hub, server)):
                d = relay_descriptor(
                    f"bench-{label.replace('_', '-')}", a, b, cluster, relay, work / f"{label}.json"
                )
                state = work / f"{label}-state.json"
                Deployer(state, verifier=cluster.verifier_url).deploy(desc_mod.load(d))
                drivers[label] = Driver(state)
            # Each placement in turn, on the same nodes and modules: own cores first when
            # the machine has a core per node, then every process free to use any core.
            placements = [SHARED]
            if can_pin(len(cluster.nodes)):
                placements.insert(0, OWN_CORE)
            results["placements"] = placements
            for placement in placements:
                place(cluster, placement)
                for label, driver in drivers.items():
                    ping_pong(driver, WARM_HOPS)
                    results[f"latency_{label}{placement}"] = ping_pong(driver, args.hops)
                    _say(f"latency {label}{placement} measured")
                results[f"throughput_across_nodes{placement}"] = throughput(
                    drivers["across_nodes"], args.burst
                )
                _say(f"throughput{placement} measured")
            results["history"] = after_history(drivers["across_nodes"], args.hops, ENDED)
            _say("latency after the owner ended connections measured")
        finally:
            cluster.stop()

    if args.json:
        print(json.dumps(results, indent=2))
        return
    report(results)
    out = REPO / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "events.json").write_text(json.dumps(results, indent=2) + "\n")


def _say(text: str) -> None:
    print(f"… {text}", file=sys.stderr, flush=True)


def report(r: dict[str, Any]) -> None:
    tcp = r["tcp_round_trip"]
    tee = r["secure_world_alone"]
    tr = r["transport_alone"]
    first = r["placements"][0]
    print(f"Veritee events on {r['cpus']} CPU(s), loopback")
    poll = r.get("halt_poll_ns")
    if poll is not None:
        print(
            "idle virtual CPUs "
            + (f"poll up to {poll} ns before they halt" if poll else "halt at once")
            + " (haltpoll; see bench/haltpoll.py)"
        )
    if "poll_us" in r:
        print(f"node agents poll a busy link for up to {r['poll_us']} µs (--poll-us)")
    print()
    print(f"{'one-way latency, module → module':40} {'p50 ms':>9} {'p99 ms':>9} {'host stole':>11}")
    for placement in r["placements"]:
        print(f"  {PLACEMENT_NAMES[placement]}")
        for label, name in (("within_node", "within a node"), ("across_nodes", "across two")):
            s = r[f"latency_{label}{placement}"]
            print(f"{'    ' + name:40} {s['p50_ms']:9.3f} {s['p99_ms']:9.3f} {s['stolen']:11.0%}")
    print("baselines (same run)")
    print(f"{'  raw TCP round trip (Python)':40} {tcp['p50_ms']:9.3f} {tcp['p99_ms']:9.3f}")
    print(f"{'  transport alone, agent → agent':40} {tr['p50_ms']:9.3f} {tr['p99_ms']:9.3f}")
    print(f"{'  secure world alone, one delivery':40} {tee['p50_ms']:9.3f} {tee['p99_ms']:9.3f}")
    across = r[f"latency_across_nodes{first}"]
    print(
        f"  cross-node p50 ({PLACEMENT_NAMES[first]}) is "
        f"{across['p50_ms'] / tcp['p50_ms']:.1f}x a raw TCP round trip, "
        f"{across['p50_ms'] / tee['p50_ms']:.2f}x one secure-world delivery (target < 1 ms)"
    )
    if len(r["placements"]) > 1:
        shared = r[f"latency_across_nodes{SHARED}"]
        print(
            f"  nodes sharing all cores: cross-node p50 x{shared['p50_ms'] / across['p50_ms']:.2f}"
            f" the figure with a core per node"
        )
    h = r["history"]
    before, after = statistics.median(h["p50_before_ms"]), statistics.median(h["p50_after_ms"])
    where = PLACEMENT_NAMES[r["placements"][-1]]
    print(
        f"  after the owner ended {h['ended']} connections ({where}):"
        f" cross-node p50 {after:.3f} ms, x{after / before:.2f} the p50 just before"
        f" (host stole up to {h['stolen_before']:.0%} / {h['stolen_after']:.0%})"
    )
    print()
    for placement in r["placements"]:
        tput = r[f"throughput_across_nodes{placement}"]
        print(
            f"events/s across two nodes, {PLACEMENT_NAMES[placement]:26} "
            f"{tput['events_per_s']:7.0f}"
        )
        if tput["received"] < tput["events"]:
            print(f"  only {tput['received']} of the {tput['events']} events arrived in {WAIT} s")
    print(
        f"  (transport alone {tr['events_per_s']:.0f}/s, one delivery at a time in the TEE "
        f"{1000 / tee['p50_ms']:.0f}/s; target 10,000)"
    )
    print()
    for label in ("deploy_cold", "deploy_warm"):
        t = r[label]
        phases = "  ".join(
            f"{k} {t[k]:.2f}" for k in ("build", "nodes", "load", "attest", "connect")
        )
        print(f"{label.replace('_', ' '):14} {t['total']:5.2f} s   ({phases}; target < 3 s)")
    print(
        f"update one module  {r['update_one_module_s']:.2f} s   "
        "(Authentic Execution paper: 3 to 6 s)"
    )
    print("smart-home round trip: press → count over HTTP is in the demo; AE paper: 432 ms")


if __name__ == "__main__":
    main()
