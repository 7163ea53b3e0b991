"""NATS JetStream against direct links: one-way latency module → module across two nodes
(p50, p99) and events per second, both transports in one run on the same two nodes.

Everything is real: a nats-server with JetStream (file storage, a temp store), two node
agents each with its own device and secure world, the relay app of bench/events.py deployed
twice (one copy with ``transport: direct``, one with ``transport: nats://…``) and attested
against the nodes' own devices. Baselines in the same run: each transport alone, agent to
agent with no secure world (bench/events.py's ``transport_alone`` for TCP, the same for NATS).

Then the cost of fan-out, on the same nodes and broker: for each N of ``--fanout``, an app
whose relay ``a`` on home-hub has its output connected to N relays' input, all N on
home-server (so every delivery crosses the transport), deployed once over direct links and
once over NATS. ``a`` sends a burst of ``--fanout-burst`` events; from the relays' clocks,
the time from the first one's sending to the last one's arrival at the slowest sink gives
source events per second and deliveries (events × N) per second, set against N=1 of the
same transport (the smallest N given, if not 1); each the median of ``--fanout-rounds``
bursts, the two transports' alternating. On the broker, the messages each
source event added to the app's fan-out stream and to its node stream, and the events and
wraps the fan-out messages held (read by an operator's consumer of the bench's own).

Run:  .venv/bin/python bench/events_nats.py [--hops 1000] [--burst 5000]
          [--fanout 1,4,16] [--fanout-burst 5000] [--fanout-rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
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
from veritee.app.transport_nats import (
    NatsTransport,
    fanout_stream_name,
    fanout_subject,
    stream_name,
    unpack,
)
from veritee.tee import channels
from veritee.wasm.build import build

REPO = Path(__file__).resolve().parent.parent
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
WAIT = events.WAIT
SOURCE_NODE, SINK_NODE = "home-hub", "home-server"  # fan-out: the source, and all its sinks
FANOUT_WARM = 200  # events of the burst before each measured one, not reported


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


# -- fan-out --------------------------------------------------------------------------------------


def fanout_descriptor(
    app: str, n: int, cluster: LocalCluster, relay: Path, transport: str, out: Path
) -> Path:
    """Relay ``a`` on SOURCE_NODE, its output to the input of relays s0..s{n-1}, all on
    SINK_NODE; ``burst`` into ``a``, ``stats-sI`` to each sink's stats handler."""
    sinks = [f"s{i}" for i in range(n)]
    conns: list[dict[str, Any]] = [
        {"from_module": "a", "from_output": "out", "to_module": s, "to_input": "in"} for s in sinks
    ]
    conns.append({"name": "burst", "direct": True, "to_module": "a", "to_input": "burst"})
    conns += [
        {"name": f"stats-{s}", "direct": True, "to_module": s, "to_handler": "stats"} for s in sinks
    ]
    modules = [{"name": "a", "node": SOURCE_NODE, "binary": str(relay)}]
    modules += [{"name": s, "node": SINK_NODE, "binary": str(relay)} for s in sinks]
    out.write_text(
        json.dumps(
            {
                "app": app,
                "transport": transport,
                "nodes": [
                    {"name": n.name, "host": n.host, "port": n.port} for n in cluster.nodes.values()
                ],
                "modules": modules,
                "connections": conns,
            },
            indent=1,
        )
    )
    return out


def fan_burst(driver: events.Driver, sinks: list[str], burst: int) -> dict[str, Any]:
    """Relay ``a`` sends ``burst`` events at once, each to every sink.

    As events.throughput, from the relays' clocks: from the first event's sending to the
    last arrival at the slowest sink. The bench asks one sink every 0.1 s until it has the
    burst, then each of the others until it has (each question runs a handler in a sink:
    asking all N every 0.1 s would take the nodes' cores from the burst).
    """
    start = {s: driver.stats(f"stats-{s}").received for s in sinks}  # opens every window
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    got = dict.fromkeys(sinks, 0)
    t0 = time.perf_counter()
    driver.send("burst", burst)
    emitted = time.perf_counter() - t0
    deadline = time.monotonic() + WAIT
    for sink in [sinks[-1], *sinks[:-1]]:
        while time.monotonic() < deadline:
            st = driver.stats(f"stats-{sink}")
            if st.first_sent_ns and sink not in first:
                first[sink] = st.first_sent_ns
            last[sink] = st.last_ns or last.get(sink, 0)
            got[sink] = st.received - start[sink]
            if got[sink] >= burst:
                break
            time.sleep(0.1)
    seconds = (max(last.values()) - min(first.values())) / 1e9 if first else 0.0
    received = min(got.values())
    deliveries = sum(got.values())
    return {
        "events": burst,
        "received": received,  # by the sink that received fewest
        "deliveries": deliveries,
        "seconds": seconds,
        "events_per_s": received / seconds if seconds > 0 else 0.0,
        "deliveries_per_s": deliveries / seconds if seconds > 0 else 0.0,
        # The user tool's call: relay a ran, sealing the burst (one event per source event,
        # with a wrap per sink), and its node agent took the events into its outbox.
        "emit_seconds": emitted,
    }


class BrokerView:
    """What an operator of the broker sees of an app: its streams' sequences, and the
    fan-out messages, through a consumer of the bench's own (it keeps the stream's interest
    in them until the bench has read them, then is deleted)."""

    WATCHER = "bench-watch"

    def __init__(self, url: str, app: str) -> None:
        self.url, self.app = url, app

    def _run(self, work: Any) -> Any:
        import nats

        async def main() -> Any:
            nc = await nats.connect(self.url)
            try:
                return await work(nc.jetstream())
            finally:
                await nc.close()

        return asyncio.run(main())

    def last_seqs(self) -> dict[str, int]:
        """The last sequence of the app's node stream and of its fan-out stream (0: none)."""

        async def work(js: Any) -> dict[str, int]:
            out = {}
            for key, name in (
                ("node", stream_name(self.app)),
                ("fanout", fanout_stream_name(self.app)),
            ):
                try:
                    out[key] = int((await js.stream_info(name)).state.last_seq)
                except Exception:  # not made: this app has no event of that kind yet
                    out[key] = 0
            return out

        result: dict[str, int] = self._run(work)
        return result

    def watch(self) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        async def work(js: Any) -> None:
            await js.add_consumer(
                fanout_stream_name(self.app),
                ConsumerConfig(
                    durable_name=self.WATCHER,
                    filter_subject=fanout_subject(self.app, SOURCE_NODE),
                    deliver_policy=DeliverPolicy.NEW,
                    ack_policy=AckPolicy.EXPLICIT,
                ),
            )

        self._run(work)

    def taken(self) -> dict[str, int]:
        """Messages, bytes, events and wraps published to the fan-out subject since
        :meth:`watch`; deletes the watcher."""

        async def work(js: Any) -> dict[str, int]:
            stream = fanout_stream_name(self.app)
            sub = await js.pull_subscribe_bind(durable=self.WATCHER, stream=stream)
            out = {"messages": 0, "bytes": 0, "events": 0, "wraps": 0}
            while True:
                try:
                    msgs = await sub.fetch(256, timeout=1)
                except Exception:  # nothing more
                    break
                for m in msgs:
                    out["messages"] += 1
                    out["bytes"] += len(m.data)
                    for event in unpack(bytes(m.data)):
                        out["events"] += 1
                        out["wraps"] += len(channels.split(event))
                    await m.ack()
            await sub.unsubscribe()
            await js.delete_consumer(stream, self.WATCHER)
            return out

        result: dict[str, int] = self._run(work)
        return result


def fanout(
    cluster: LocalCluster,
    relay: Path,
    url: str,
    work: Path,
    ns: list[int],
    burst: int,
    rounds: int,
) -> list[dict[str, Any]]:
    """For each N, the fan-out app over direct links and over NATS, a row each: the round
    of median time out of ``rounds``, the two transports' rounds alternating (so that a
    slow spell of the machine falls on both)."""
    homes = [n.home for n in cluster.nodes.values()]
    rows = []
    for n in ns:
        sinks = [f"s{i}" for i in range(n)]
        drivers, deploy_s = {}, {}
        for label, transport in (("direct", "direct"), ("nats", url)):
            app = f"fan{n}-{label}"
            path = fanout_descriptor(app, n, cluster, relay, transport, work / f"{app}.json")
            state = work / f"{app}-state.json"
            t0 = time.perf_counter()
            Deployer(state, trust_homes=homes).deploy(desc_mod.load(path))
            deploy_s[label] = time.perf_counter() - t0
            drivers[label] = events.Driver(state)
            fan_burst(drivers[label], sinks, min(FANOUT_WARM, burst))
        view = BrokerView(url, f"fan{n}-nats")
        if n > 1:
            view.watch()
        before = view.last_seqs()
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label in drivers}
        for _ in range(rounds):
            for label, driver in drivers.items():
                runs[label].append(fan_burst(driver, sinks, burst))
        after = view.last_seqs()
        broker = {f"{k}_messages": after[k] - before[k] for k in ("node", "fanout")}
        if n > 1:
            broker |= {f"fanout_{k}": v for k, v in view.taken().items()}
        for label, done in runs.items():
            ordered = sorted(done, key=lambda r: r["seconds"] / max(r["received"], 1))
            row = {"n": n, "transport": label, "deploy_s": deploy_s[label]}
            row |= ordered[len(ordered) // 2]
            row["rounds_events_per_s"] = [r["events_per_s"] for r in done]
            if label == "nats":
                row["broker"] = broker | {"source_events": burst * rounds}
            rows.append(row)
        events._say(f"fan-out to {n} measured")
    return rows


def fanout_counts(text: str) -> list[int]:
    try:
        ns = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list like 1,4,16") from None
    if any(n < 1 or n > MAX_FANOUT for n in ns):
        raise argparse.ArgumentTypeError(f"each N from 1 to {MAX_FANOUT}")
    return ns


# Sinks of one source: each is a module (a session) in home-server's secure world.
MAX_FANOUT = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hops", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=5000)
    parser.add_argument(
        "--fanout",
        type=fanout_counts,
        default=[1, 4, 16],
        help="how many inputs one output fans out to, comma-separated ('' for none)",
    )
    parser.add_argument("--fanout-burst", type=int, default=5000)
    parser.add_argument(
        "--fanout-rounds", type=int, default=3, help="bursts per N and transport (the median)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.hops < 2 or min(args.burst, args.fanout_burst, args.fanout_rounds) < 1:
        parser.error("--hops must be at least 2; --burst, --fanout-burst, --fanout-rounds 1")
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
                results["fanout"] = fanout(
                    cluster, relay, url, work, args.fanout, args.fanout_burst, args.fanout_rounds
                )
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
    if r.get("fanout"):
        print()
        report_fanout(r["fanout"])


def report_fanout(rows: list[dict[str, Any]]) -> None:
    base: dict[str, dict[str, Any]] = {}
    for row in rows:  # rows go up in N: the first of each transport is its baseline
        base.setdefault(row["transport"], row)
    first = min(row["n"] for row in rows)
    print(
        f"Fan-out: relay a on {SOURCE_NODE}, its output to N inputs on {SINK_NODE};"
        f" bursts of {rows[0]['events']} events, the median round"
    )
    print()
    print(
        f"{'':14} {'events/s':>9} {'deliveries/s':>13} {'ms/event':>9} {'vs N=' + str(first):>7}"
        f" {'source ms':>10}  broker messages/event"
    )
    for row in rows:
        b = base[row["transport"]]
        per_event = row["seconds"] / max(row["received"], 1)
        ratio = per_event / max(b["seconds"] / max(b["received"], 1), 1e-12)
        broker = row.get("broker")
        stored = ""
        if broker:
            k = broker["source_events"]
            fan, node = broker["fanout_messages"] / k, broker["node_messages"] / k
            stored = f"fan-out {fan:.4f}, node {node:.4f}"
        name = f"N={row['n']:<3}{'NATS' if row['transport'] == 'nats' else 'direct'}"
        source_ms = row["emit_seconds"] * 1e3 / row["events"]
        print(
            f"{'  ' + name:14} {row['events_per_s']:9.0f} {row['deliveries_per_s']:13.0f}"
            f" {per_event * 1e3:9.3f} {ratio:6.2f}x {source_ms:10.3f}  {stored}"
        )
        if row["received"] < row["events"]:
            print(f"    only {row['received']} of the {row['events']} events arrived in {WAIT} s")
        if broker and "fanout_events" in broker:
            print(
                f"    fan-out stream: {broker['fanout_events']} events of"
                f" {broker['source_events']} sent, in {broker['fanout_messages']} messages,"
                f" {broker['fanout_wraps'] / max(broker['fanout_events'], 1):.0f} wraps and"
                f" {broker['fanout_bytes'] / max(broker['fanout_events'], 1):.0f} bytes an event"
            )
    print(
        "  ms/event: time per source event, first sent to last arrived at the slowest sink;"
        " source ms: relay a's burst call, per event"
    )


if __name__ == "__main__":
    sys.exit(main())
