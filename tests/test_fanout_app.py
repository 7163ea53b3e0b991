"""Fan-out through the real processes: one output connected to four inputs on three nodes
(one beside it, two on a second node, one on a third), each node an agent with its own
secure world, modules attested by a real verifier, over a real nats-server and over
direct links.

On a broker, each event of the output is published once for every node (the test reads
the broker's stream: each message's events carry one wrap per remote input, and no event
goes to the nodes' own subjects); each input gets every event once. A receiving node's
agent killed mid-stream loses and repeats nothing. The broker as adversary (a hostile NATS
client on the fan-out subject): replays, splices and garbage are refused and counted.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._nats import NatsServer, tree_source
from tests.test_app_deploy import SmartHome, until
from veritee.app import state as state_mod
from veritee.app.cluster import LocalCluster
from veritee.app.transport_nats import (
    fanout_stream_name,
    fanout_subject,
    pack,
    stream_name,
    unpack,
)
from veritee.tee import channels

NODES = ("n1", "n2", "n3")
SINKS = {"b1": "n2", "b2": "n2", "b3": "n3", "c": "n1"}  # input -> its node; the source on n1
REMOTE = [s for s, n in SINKS.items() if n != "n1"]
TIMEOUT = 60.0


def descriptor(
    app: str, cluster: LocalCluster, relay: Path, db: Path, transport: str, out: Path
) -> Path:
    """The relay's output (bench/apps/relay.c: a burst of N events) to four counters (the
    smart home's db: it keeps its count sealed on disk, across a restart of its node)."""
    conns: list[dict[str, Any]] = [
        {"from_module": "a", "from_output": "out", "to_module": s, "to_input": "increment_presses"}
        for s in SINKS
    ]
    conns.append({"name": "burst", "direct": True, "to_module": "a", "to_input": "burst"})
    conns += [
        {"name": f"count-{s}", "direct": True, "to_module": s, "to_handler": "get_presses"}
        for s in SINKS
    ]
    out.write_text(
        json.dumps(
            {
                "app": app,
                "transport": transport,
                "nodes": [
                    {"name": n.name, "host": n.host, "port": n.port} for n in cluster.nodes.values()
                ],
                "modules": [
                    {"name": "a", "node": "n1", "binary": str(relay)},
                    *({"name": s, "node": n, "binary": str(db)} for s, n in SINKS.items()),
                ],
                "connections": conns,
            },
            indent=1,
        )
    )
    return out


class Fan(SmartHome):
    """The deployed fan-out app (SmartHome's CLI and status helpers serve any app)."""

    def burst(self, n: int) -> None:
        dep, tool = self.tool()
        tool.send(dep.connection("burst"), struct.pack("<I", n))
        state_mod.save(self.state, dep)

    def received(self, sink: str) -> int:
        dep, tool = self.tool()
        raw = tool.request(dep.connection(f"count-{sink}"), b"")
        state_mod.save(self.state, dep)
        return int(raw.decode())

    def all_received(self) -> dict[str, int]:
        return {s: self.received(s) for s in SINKS}

    def dropped(self, sink: str) -> dict[str, int]:
        by_name = {c["name"]: c for c in self.status()["connections"]}
        return dict(by_name[f"a.out->{sink}.increment_presses"]["dropped"])

    def settle(self, expected: dict[str, int]) -> None:
        deadline = time.monotonic() + TIMEOUT
        while (got := self.all_received()) != expected:
            assert time.monotonic() < deadline, f"counted {got}, not {expected}"
            time.sleep(0.1)
        time.sleep(0.5)
        assert self.all_received() == expected  # and nothing twice after


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats") / "store").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, wasm: Callable[..., Path]) -> Iterator[Any]:
    relay, db = wasm("bench/apps/relay.c"), wasm("examples/smart-home/db.c")
    cluster = LocalCluster(tmp_path_factory.mktemp("fan") / "cluster", NODES, source=tree_source())
    cluster.start()
    try:
        cluster.endorse([("relay", relay.read_bytes()), ("db", db.read_bytes())])
        yield cluster, relay, db
    finally:
        cluster.stop()


def _deploy(cluster: Any, app: str, transport: str, work: Path) -> Fan:
    c, relay, db = cluster
    work.mkdir(parents=True, exist_ok=True)
    fan = Fan(c, work / "deployment.json", {"relay": relay, "db": db}, work)
    d = descriptor(app, c, relay, db, transport, work / "app.json")
    fan.ok("deploy", d, "--verifier", str(c.verifier_url))
    return fan


@pytest.fixture(scope="module")
def over_nats(cluster: Any, broker: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Fan:
    return _deploy(cluster, "fan-nats", broker.url, tmp_path_factory.mktemp("fan-nats"))


@pytest.fixture(scope="module")
def over_links(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Fan:
    return _deploy(cluster, "fan-direct", "direct", tmp_path_factory.mktemp("fan-direct"))


class Broker:
    """A NATS client of the broker's operator: reads the app's streams, publishes into them."""

    def __init__(self, url: str, app: str) -> None:
        self.url, self.app = url, app

    def run(self, work: Any) -> Any:
        import nats

        async def main() -> Any:
            nc = await nats.connect(self.url)
            try:
                return await work(nc.jetstream())
            finally:
                await nc.close()

        return asyncio.run(main())

    def last_seq(self, stream: str) -> int:
        async def work(js: Any) -> int:
            return int((await js.stream_info(stream)).state.last_seq)

        result: int = self.run(work)
        return result

    def watch(self, name: str) -> None:
        """A consumer of the operator's own on the fan-out subject: it sees every message
        (and, as every consumer does, keeps the stream's interest in them)."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        async def work(js: Any) -> None:
            await js.add_consumer(
                fanout_stream_name(self.app),
                ConsumerConfig(
                    durable_name=name,
                    filter_subject=fanout_subject(self.app, "n1"),
                    deliver_policy=DeliverPolicy.NEW,
                    ack_policy=AckPolicy.EXPLICIT,
                ),
            )

        self.run(work)

    def taken(self, name: str) -> list[list[bytes]]:
        """The events of each message the watcher has not taken yet."""

        async def work(js: Any) -> list[list[bytes]]:
            sub = await js.pull_subscribe_bind(durable=name, stream=fanout_stream_name(self.app))
            out: list[list[bytes]] = []
            while True:
                try:
                    msgs = await sub.fetch(256, timeout=1)
                except Exception:
                    return out
                for m in msgs:
                    out.append(unpack(bytes(m.data)))
                    await m.ack()

        result: list[list[bytes]] = self.run(work)
        return result

    def publish(self, *messages: list[bytes], framed: bool = True) -> None:
        async def work(js: Any) -> None:
            for events in messages:
                data = pack(events) if framed else b"".join(events)
                await js.publish(fanout_subject(self.app, "n1"), data)

        self.run(work)


def test_fan_out_over_direct_links_reaches_every_input_once(over_links: Fan) -> None:
    before = over_links.all_received()
    over_links.burst(300)
    over_links.settle({s: n + 300 for s, n in before.items()})
    assert all(not over_links.dropped(s) for s in SINKS)


def test_fan_out_over_a_broker_is_one_publish_for_every_node(
    over_nats: Fan, broker: NatsServer
) -> None:
    ops = Broker(broker.url, "fan-nats")
    ops.watch("operator")
    nodes_before = ops.last_seq(stream_name("fan-nats"))
    before = over_nats.all_received()
    over_nats.burst(300)
    over_nats.settle({s: n + 300 for s, n in before.items()})
    # Nothing of it went to a node's own subject: the output's events went out once.
    assert ops.last_seq(stream_name("fan-nats")) == nodes_before
    events = [e for message in ops.taken("operator") for e in message]
    assert len(events) == 300  # each once, not once per node
    dep = state_mod.load(over_nats.state)
    remote = {dep.connection(f"a.out->{s}.increment_presses").conn for s in REMOTE}
    for event in events:
        assert {conn for conn, _, _ in channels.split(event)} == remote
    assert all(not over_nats.dropped(s) for s in SINKS)


def test_a_broker_that_replays_splices_and_injects_fan_outs_gets_each_refused(
    over_nats: Fan, broker: NatsServer
) -> None:
    ops = Broker(broker.url, "fan-nats")
    ops.watch("replayer")
    before = over_nats.all_received()
    drops = {s: over_nats.dropped(s) for s in REMOTE}
    over_nats.burst(2)
    over_nats.settle({s: n + 2 for s, n in before.items()})
    first, second = [e for m in ops.taken("replayer") for e in m]
    with over_nats.node("n2") as n2:
        malformed = n2.status()["counters"].get("malformed", 0)
    # Forged: the first event's payload under the second's wraps, their counters moved past
    # what the inputs took (a broker has no key to make a wrap for a fresh counter).
    cut = 3 + len(REMOTE) * channels.WRAP_BYTES
    forged = bytearray(second[:cut] + first[cut:])
    for i in range(len(REMOTE)):
        at = 3 + i * channels.WRAP_BYTES + 16
        forged[at : at + 8] = (2**62 + i).to_bytes(8, "big")
    ops.publish([first, second], [second], [bytes(forged)])  # replays, and a forgery
    ops.publish([b"\x02\x00\x01 not a fan-out"], [bytes(7)])  # framed garbage
    ops.publish([b"\x02 not even framed"], framed=False)

    def refused(sink: str) -> bool:
        now, then = over_nats.dropped(sink), drops[sink]
        return (
            now.get("replay", 0) - then.get("replay", 0) >= 3
            and now.get("altered", 0) - then.get("altered", 0) >= 1
        )

    until(lambda: all(refused(s) for s in REMOTE), TIMEOUT)
    assert over_nats.all_received() == {s: n + 2 for s, n in before.items()}
    with over_nats.node("n2") as n2:  # the agent counted the garbage, and runs on
        until(lambda: n2.status()["counters"].get("malformed", 0) >= malformed + 2, TIMEOUT)
    over_nats.burst(5)  # and the app runs on
    over_nats.settle({s: n + 7 for s, n in before.items()})


@pytest.mark.parametrize("path", ["over_links", "over_nats"])
def test_a_receiving_node_killed_mid_stream_loses_and_repeats_nothing(
    path: str, request: pytest.FixtureRequest
) -> None:
    """The agent of n3 (input b3) killed by its PID while bursts are on their way to it,
    its secure world left running: the module was mid-batch, and its count is sealed on
    disk as it goes; back up, b3 has every event once, and the others never stopped."""
    fan: Fan = request.getfixturevalue(path)
    before = fan.all_received()
    fan.burst(200)
    fan.cluster.kill_node("n3")
    fan.burst(200)
    until(lambda: fan.received("b1") >= before["b1"] + 400, TIMEOUT)  # the rest runs on
    fan.cluster.start_node("n3")
    fan.settle({s: n + 400 for s, n in before.items()})
