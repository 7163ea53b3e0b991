"""Cross-node event latency with and without guest halt polling, on one cluster.

On a virtual machine, a virtual CPU with nothing to run halts, and the hypervisor must run
it again when work arrives: a cost the guest sees as time stolen. Every hop of an event
wakes such a CPU, at least once on each node. Linux's ``haltpoll`` cpuidle driver can make
an idle virtual CPU poll for a while before it halts (``guest_halt_poll_ns``, adapted
between ``guest_halt_poll_grow_start`` and that bound); a wake-up within the window then
costs no exit to the hypervisor. It is a setting of the machine that runs the nodes, not
of Veritee: this bench measures what it is worth.

Rounds of ping-pong between the relays of bench/events.py alternate between the values
given (ABBA...), on the same nodes, so that the host's drift falls on all of them. The
setting is restored at the end. Needs root and the haltpoll driver (see
/sys/devices/system/cpu/cpuidle/current_driver).

Run:  sudo .venv/bin/python bench/haltpoll.py [--values 0,1000000] [--rounds 6]
                                             [--hops 1000] [--placement own|shared|both]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _machine as machine  # bench/_machine.py, beside this script
import events  # bench/events.py, beside this script

from veritee.app import descriptor as desc_mod
from veritee.app.cluster import LocalCluster
from veritee.app.deployer import Deployer
from veritee.wasm.build import build

REPO = events.REPO
PARAM = machine.HALT_POLL


def usable(param: Path) -> str | None:
    """Why ``param`` cannot be set here, or None."""
    if not param.exists():
        return f"{param} does not exist: this kernel has no haltpoll cpuidle driver loaded"
    try:
        param.write_text(param.read_text().strip())
    except OSError as exc:
        return f"cannot write {param} ({exc.strerror}): run as root"
    return None


def measure(
    driver: events.Driver, param: Path, values: list[int], rounds: int, hops: int
) -> dict[str, Any]:
    p50: dict[int, list[float]] = {v: [] for v in values}
    p99: dict[int, list[float]] = {v: [] for v in values}
    stolen: dict[int, list[float]] = {v: [] for v in values}
    for r in range(rounds):
        for v in values if r % 2 == 0 else values[::-1]:
            param.write_text(str(v))
            events.ping_pong(driver, events.WARM_HOPS)  # settles the new setting
            out = events.ping_pong(driver, hops)
            p50[v].append(out["p50_ms"])
            p99[v].append(out["p99_ms"])
            stolen[v].append(out["stolen"])
        events._say(
            f"round {r + 1} of {rounds}: "
            + " / ".join(f"{v} ns {p50[v][-1]:.3f} ms" for v in values)
        )
    base = values[0]
    return {
        str(v): {
            "p50_ms": p50[v],
            "p99_ms": p99[v],
            "stolen": stolen[v],
            "p50_median_ms": statistics.median(p50[v]),
            "p99_median_ms": statistics.median(p99[v]),
            "ratio_to_first": statistics.median(p50[v]) / statistics.median(p50[base]),
            "lower_than_first_in": sum(a < b for a, b in zip(p50[v], p50[base], strict=True)),
        }
        for v in values
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--values", default="0,1000000", help="poll bounds in ns, the first the baseline"
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--hops", type=int, default=1000)
    parser.add_argument("--placement", choices=sorted(events.PLACEMENT_CHOICES), default="both")
    parser.add_argument("--param", type=Path, default=PARAM, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        values = [int(v) for v in args.values.split(",")]
    except ValueError:
        parser.error("--values takes poll bounds in nanoseconds, e.g. 0,1000000")
    if len(values) < 2 or len(set(values)) != len(values) or min(values) < 0:
        parser.error("--values needs two or more distinct bounds of 0 ns or more")
    if args.rounds < 1 or args.hops < 2:
        parser.error("--rounds must be at least 1 and --hops at least 2")
    placements = events.chosen_placements(parser, args.placement)
    why = usable(args.param)
    if why is not None:
        parser.exit(2, f"haltpoll: {why}\n")

    # Put the setting back however the run ends: Ctrl-C raises, and so does SIGTERM here.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    original = args.param.read_text().strip()
    results: dict[str, Any] = {"original_ns": int(original), "values_ns": values}
    with tempfile.TemporaryDirectory(prefix="veritee-bench-haltpoll-") as tmp:
        work = Path(tmp)
        relay = work / "relay.wasm"
        build(REPO / "bench" / "apps" / "relay.c", relay)
        cluster = LocalCluster(work / "cluster")
        try:
            cluster.start()
            cluster.endorse([("relay", relay.read_bytes())])
            hub, server = list(cluster.nodes)
            desc = events.relay_descriptor("haltpoll", hub, server, cluster, relay, work / "a.json")
            state = work / "state.json"
            Deployer(state, verifier=cluster.verifier_url).deploy(desc_mod.load(desc))
            driver = events.Driver(state)
            for placement in placements:
                events.place(cluster, placement)
                events.ping_pong(driver, events.WARM_HOPS)
                results[events.PLACEMENT_NAMES[placement]] = measure(
                    driver, args.param, values, args.rounds, args.hops
                )
        finally:
            args.param.write_text(original)
            cluster.stop()
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"cross-node p50, guest halt polling bound (was {original} ns, restored)")
    for placement in placements:
        name = events.PLACEMENT_NAMES[placement]
        print(f"  {name}")
        for v in values:
            r = results[name][str(v)]
            line = (
                f"    {v:>9} ns  p50 median {r['p50_median_ms']:.3f} ms  "
                f"p99 median {r['p99_median_ms']:.2f} ms  "
                f"host stole {min(r['stolen']):.0%}-{max(r['stolen']):.0%}"
            )
            if v != values[0]:
                line += (
                    f"  x{r['ratio_to_first']:.2f}, lower in {r['lower_than_first_in']}"
                    f" of {args.rounds} rounds"
                )
            print(line)


if __name__ == "__main__":
    main()
