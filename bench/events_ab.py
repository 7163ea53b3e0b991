"""Cross-node event latency of this tree against another revision, measured side by side.

On the virtual machines these benchmarks run on, the same code measured a few minutes apart
differs by a fifth or more: the hypervisor's share and what its other guests do to the
caches drift. A change worth tens of µs cannot be told from that drift by running one
version, then the other. So both run at once here: a cluster each (two nodes with their own
devices and secure worlds, a verifier, the relay modules of bench/events.py), the rounds of
ping-pong alternating between them while the other cluster idles, so that a drift falls on
both. Each cluster is placed as bench/events.py places its nodes.

Prints, for each placement, each version's p50 per round, the medians, their ratio, in how
many rounds this tree was the lower, and the CPU time each cluster's nodes (agents, secure
worlds, module workers) used per hop. ``--poll-us``/``--base-poll-us`` set each side's node
agents' ``--poll-us`` (``events_ab.py HEAD --base-poll-us 0`` weighs polling itself).

BASE's nodes and verifier run from a git worktree of BASE, and its devices are provisioned
by it (secure boot measures the code that runs). This tree's deployer and user tool drive
both clusters, so BASE must speak the node agent's API as this tree does.

Run:  .venv/bin/python bench/events_ab.py BASE [--rounds 8] [--hops 1000]
                                         [--placement own|shared|both] [--json]
                                         [--burst N] [--poll-us N] [--base-poll-us N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import _machine as machine  # bench/_machine.py
import events  # bench/events.py, beside this script

from veritee.app import descriptor as desc_mod
from veritee.app.cluster import LocalCluster
from veritee.app.deployer import Deployer
from veritee.wasm.build import build

REPO = events.REPO


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise SystemExit("events_ab: needs git, to check the base revision out") from None


def _worktree(revision: str, where: Path) -> str:
    """Check ``revision`` out at ``where``; returns its commit. SystemExit if it cannot."""
    found = _git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    if found.returncode != 0:
        raise SystemExit(f"events_ab: {revision!r} is not a revision of {REPO}")
    commit = found.stdout.strip()
    added = _git("worktree", "add", "--detach", "--quiet", str(where), commit)
    if added.returncode != 0:
        raise SystemExit(f"events_ab: cannot check {revision} out: {added.stderr.strip()}")
    return commit


def _cluster(
    work: Path,
    label: str,
    relay: Path,
    source: Path | None,
    started: list[LocalCluster],
    poll_us: int | None,
) -> events.Driver:
    """A cluster running ``source`` (None: this tree) with the relay app deployed; it is
    added to ``started`` before it starts, so that the caller stops it whatever happens."""
    cluster = LocalCluster(work / label, source=source, poll_us=poll_us)
    started.append(cluster)
    cluster.start()
    cluster.endorse([("relay", relay.read_bytes())])
    hub, server = list(cluster.nodes)
    desc = events.relay_descriptor(
        f"ab-{label}", hub, server, cluster, relay, work / f"{label}-app.json"
    )
    state = work / f"{label}-state.json"
    Deployer(state, verifier=cluster.verifier_url).deploy(desc_mod.load(desc))
    return events.Driver(state)


def _cpu_s(cluster: LocalCluster) -> float:
    return sum(
        machine.tree_cpu_s(node.process.pid)
        for node in cluster.nodes.values()
        if node.process is not None
    )


def measure(
    drivers: list[events.Driver],
    clusters: list[LocalCluster],
    rounds: int,
    hops: int,
    burst: int,
) -> dict[str, Any]:
    """Alternate rounds between the two clusters (ABAB, then BABA, ...); with ``burst``,
    then as many rounds of a burst each, for events per second."""
    p50: list[list[float]] = [[], []]
    cpu: list[list[float]] = [[], []]  # ms of CPU per hop, the nodes' process trees
    stolen: list[float] = []
    for driver in drivers:
        events.ping_pong(driver, min(hops, events.WARM_HOPS))  # warm; sets how long to wait
    for r in range(rounds):
        for k in (0, 1) if r % 2 == 0 else (1, 0):
            before = _cpu_s(clusters[k])
            out = events.ping_pong(drivers[k], hops)
            cpu[k].append((_cpu_s(clusters[k]) - before) * 1e3 / hops)
            p50[k].append(out["p50_ms"])
            stolen.append(out["stolen"])
        events._say(f"round {r + 1} of {rounds}: {p50[0][-1]:.3f} / {p50[1][-1]:.3f} ms")
    rates: list[list[float]] = [[], []]
    for r in range(rounds if burst else 0):
        for k in (0, 1) if r % 2 == 0 else (1, 0):
            rates[k].append(events.throughput(drivers[k], burst)["events_per_s"])
        events._say(f"burst {r + 1} of {rounds}: {rates[0][-1]:.0f} / {rates[1][-1]:.0f} events/s")
    base, this = (statistics.median(v) for v in p50)
    result: dict[str, Any] = {
        "base_p50_ms": p50[0],
        "this_p50_ms": p50[1],
        "base_median_ms": base,
        "this_median_ms": this,
        "ratio": this / base,
        "this_lower_in": sum(b > t for b, t in zip(p50[0], p50[1], strict=True)),
        "base_cpu_ms_per_hop": statistics.median(cpu[0]),
        "this_cpu_ms_per_hop": statistics.median(cpu[1]),
        "rounds": rounds,
        "max_stolen": max(stolen),
    }
    if burst:
        result["base_events_per_s"], result["this_events_per_s"] = rates
        result["events_per_s_ratio"] = statistics.median(rates[1]) / statistics.median(rates[0])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the git revision to compare with (e.g. HEAD~1, main)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--hops", type=int, default=1000)
    parser.add_argument("--placement", choices=sorted(events.PLACEMENT_CHOICES), default="both")
    parser.add_argument(
        "--burst", type=int, default=0, metavar="N", help="also compare bursts of N events"
    )
    parser.add_argument("--json", action="store_true")
    for flag, whose in (("--poll-us", "this tree's"), ("--base-poll-us", "BASE's")):
        parser.add_argument(
            flag, type=int, default=None, metavar="N", help=f"{whose} node agents' --poll-us"
        )
    args = parser.parse_args()
    if args.rounds < 1 or args.hops < 2 or args.burst < 0:
        parser.error("--rounds must be at least 1, --hops at least 2, --burst at least 0")
    if min(args.poll_us or 0, args.base_poll_us or 0) < 0:
        parser.error("--poll-us and --base-poll-us must be at least 0")
    placements = events.chosen_placements(parser, args.placement)

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="veritee-bench-ab-") as tmp:
        work = Path(tmp)
        checkout = work / "base"
        results["base"] = _worktree(args.base, checkout)
        results["this"] = _git("rev-parse", "HEAD").stdout.strip()[:12] + (
            " + changes" if _git("status", "--porcelain", "--untracked-files=no").stdout else ""
        )
        clusters: list[LocalCluster] = []
        try:
            relay = work / "relay.wasm"
            build(REPO / "bench" / "apps" / "relay.c", relay)
            drivers = [
                _cluster(work, "base", relay, checkout / "src", clusters, args.base_poll_us),
                _cluster(work, "this", relay, None, clusters, args.poll_us),
            ]
            events._say("both clusters deployed")
            for placement in placements:
                for cluster in clusters:
                    events.place(cluster, placement)
                name = events.PLACEMENT_NAMES[placement]
                results[name] = measure(drivers, clusters, args.rounds, args.hops, args.burst)
        finally:
            for cluster in clusters:
                cluster.stop()
            _git("worktree", "remove", "--force", str(checkout))

    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"cross-node p50, base {results['base'][:12]} against this tree {results['this']}")
    for placement in placements:
        name = events.PLACEMENT_NAMES[placement]
        r = results[name]
        print(f"  {name}")
        for who in ("base", "this"):
            rounds = " ".join(f"{v:.3f}" for v in r[f"{who}_p50_ms"])
            print(f"    {who:5} median {r[f'{who}_median_ms']:.3f} ms   rounds: {rounds}")
        print(
            f"    this / base {r['ratio']:.2f}; this tree lower in {r['this_lower_in']} of "
            f"{r['rounds']} rounds; the host stole up to {r['max_stolen']:.0%}"
        )
        print(
            f"    CPU per hop, all processes of the nodes: base {r['base_cpu_ms_per_hop']:.2f}"
            f" ms, this {r['this_cpu_ms_per_hop']:.2f} ms (medians)"
        )
        if "events_per_s_ratio" in r:
            for who in ("base", "this"):
                rates = " ".join(f"{v:.0f}" for v in r[f"{who}_events_per_s"])
                print(f"    {who:5} events/s in bursts of {args.burst}: {rates}")
            print(f"    events/s, this / base {r['events_per_s_ratio']:.2f} (medians)")


if __name__ == "__main__":
    sys.exit(main())
