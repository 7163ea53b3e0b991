"""The smart-home app over NATS JetStream: two node agents with their own secure worlds and a
real nats-server, the transport named in the descriptor.

Durability: the broker and each node agent killed (by PID) mid-stream and restarted: every
press is counted once. The broker as adversary: a hostile NATS client replays, reorders,
duplicates, injects and redirects events on the app's subjects; the secure worlds refuse
and count each, and the app runs on.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests._nats import NatsServer, tree_source
from tests.test_app_deploy import (
    REPO,
    SmartHome,
    build_smart_home,
    deploy_trusting_homes,
    until,
)
from veritee.app import state as state_mod
from veritee.app.cluster import LocalCluster, descriptor_for
from veritee.app.transport_nats import events_subject, pack, requests_subject, stream_name, unpack
from veritee.tee.channels import HEADER_BYTES

APP = "smart-home"
BUTTON = "button_driver.button_pressed->controller.button_pressed"
TIMEOUT = 60.0  # seconds for what a restart holds back to arrive; it takes about one


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats") / "store").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def home(
    tmp_path_factory: pytest.TempPathFactory, wasm: Any, broker: NatsServer
) -> Iterator[SmartHome]:
    workdir = tmp_path_factory.mktemp("smart-home-nats")
    binaries = build_smart_home(wasm)
    cluster = LocalCluster(workdir / "cluster", verifier=False, source=tree_source())
    cluster.start()
    try:
        descriptor = descriptor_for(
            REPO / "examples/smart-home/app.yaml", cluster, binaries, workdir / "app.yaml"
        )
        data = yaml.safe_load(descriptor.read_text())
        data["transport"] = broker.url  # one line: the app's events go through the broker
        descriptor.write_text(yaml.safe_dump(data, sort_keys=False))
        yield deploy_trusting_homes(cluster, descriptor, binaries, workdir)
    finally:
        cluster.stop()


def press(home: SmartHome, n: int) -> None:
    """``n`` presses of the button, as the user's tool seals them, handed to the hub."""
    dep, tool = home.tool()
    events = [tool.seal(dep.connection("trigger-btn"), b"press") for _ in range(n)]
    state_mod.save(home.state, dep)
    with home.node("home-hub") as hub:
        for event in events:
            assert hub.submit(event, wait=True).get("dropped") is None


def counted(home: SmartHome) -> int:
    return int(home.http().text)


def settle(home: SmartHome, expected: int) -> None:
    """Wait for ``expected`` presses counted, then make sure no more come (a duplicate)."""
    until(lambda: counted(home) >= expected, TIMEOUT)
    time.sleep(1.0)
    assert counted(home) == expected
    assert home.count() == expected  # the db's own answer, asked directly


def restart(home: SmartHome, node: str) -> None:
    home.cluster.start_node(node)
    if node == "home-server":
        home.ok("output", "init-server", "start")  # the web server's start is not kept


def dropped(home: SmartHome) -> dict[str, int]:
    report = home.status()
    by_name = {c["name"]: c for c in report["connections"]}
    return dict(by_name[BUTTON]["dropped"])


def test_the_app_runs_over_the_broker_not_direct_links(home: SmartHome, broker: NatsServer) -> None:
    before = counted(home)
    led = home.led()
    press(home, 3)
    settle(home, before + 3)
    until(lambda: home.led() == {"on": "off", "off": "on"}[led])  # controller -> hub, too
    with home.node("home-hub") as hub:
        links = hub.status()["links"]
    assert links[broker.url] == {"up": True, "queued": 0, "dropped": 0}
    # No direct link was ever made to the other node: nothing went over TCP.
    assert [a for a in links if not a.startswith("nats://")] == []
    dep = state_mod.load(home.state)
    assert dep.transport == broker.url


def _press_in_background(home: SmartHome, n: int) -> threading.Thread:
    def run() -> None:
        for _ in range(n):
            press(home, 1)
            time.sleep(0.02)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_a_broker_killed_mid_stream_loses_and_repeats_nothing(
    home: SmartHome, broker: NatsServer
) -> None:
    before = counted(home)
    presses = _press_in_background(home, 40)
    until(lambda: counted(home) > before + 3)
    broker.kill()
    time.sleep(1.0)  # presses go on meanwhile: the hub keeps them in its outbox
    broker.start()
    presses.join()
    settle(home, before + 40)


@pytest.mark.parametrize("node", ["home-server", "home-hub"])
def test_a_node_agent_killed_mid_stream_loses_and_repeats_nothing(
    home: SmartHome, node: str
) -> None:
    before = counted(home)
    if node == "home-server":
        presses = _press_in_background(home, 30)
        until(lambda: counted(home) > before + 3)
        home.cluster.kill_node(node)  # its events wait on the broker meanwhile
        presses.join()
    else:
        press(home, 10)
        home.cluster.kill_node(node)  # right after: some are still in its outbox
    restart(home, node)
    if node == "home-hub":
        press(home, 20)
    settle(home, before + 30)


class Hostile:
    """A NATS client that the broker's operator (or anyone it lets in) runs."""

    def __init__(self, url: str) -> None:
        self.url = url

    def run(self, work: Any) -> Any:
        import nats

        async def main() -> Any:
            nc = await nats.connect(self.url)
            try:
                return await work(nc, nc.jetstream())
            finally:
                await nc.close()

        return asyncio.run(main())

    def take_all(self, subject: str) -> list[bytes]:
        """Every event waiting on ``subject``, deleted from the stream (held back)."""

        async def work(nc: Any, js: Any) -> list[bytes]:
            info = await js.stream_info(stream_name(APP))
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                try:
                    msg = await js.get_msg(stream_name(APP), seq)
                except Exception:
                    continue
                if msg.subject == subject:
                    out += unpack(bytes(msg.data))
                    await js.delete_msg(stream_name(APP), seq)
            return out

        result: list[bytes] = self.run(work)
        return result

    def publish(self, subject: str, *events: bytes, framed: bool = True) -> None:
        """Each event as a message of its own, framed as node agents frame them."""

        async def work(nc: Any, js: Any) -> None:
            for event in events:
                await js.publish(subject, pack([event]) if framed else event)

        self.run(work)


def hold_back(home: SmartHome, broker: NatsServer, n: int) -> tuple[int, list[bytes]]:
    """The server's agent away, ``n`` presses sent: the hostile client takes their events
    off the broker before it can deliver them. Returns the count before, and the events."""
    before = counted(home)
    home.cluster.kill_node("home-server")  # events for it wait on the broker
    press(home, n)
    hostile = Hostile(broker.url)
    held: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    while len(held) < n and time.monotonic() < deadline:
        held += hostile.take_all(events_subject(APP, "home-server"))
        time.sleep(0.05)
    assert len(held) == n, "the presses were held back on the broker"
    return before, held


def test_a_broker_that_replays_and_duplicates_events_gets_each_counted_once(
    home: SmartHome, broker: NatsServer
) -> None:
    drops = dropped(home)
    before, (event,) = hold_back(home, broker, 1)
    Hostile(broker.url).publish(events_subject(APP, "home-server"), event, event, event)
    restart(home, "home-server")
    settle(home, before + 1)
    until(lambda: dropped(home).get("replay", 0) >= drops.get("replay", 0) + 2, TIMEOUT)
    press(home, 1)  # and the app runs on
    settle(home, before + 2)


def test_a_broker_that_reorders_events_gets_the_older_dropped_and_counted(
    home: SmartHome, broker: NatsServer
) -> None:
    drops = dropped(home)
    before, (first, second) = hold_back(home, broker, 2)
    Hostile(broker.url).publish(events_subject(APP, "home-server"), second, first)
    restart(home, "home-server")
    # The newer counts; the older, below the counter now, is dropped (as a broker may drop).
    settle(home, before + 1)
    until(lambda: dropped(home).get("replay", 0) >= drops.get("replay", 0) + 1, TIMEOUT)


def test_a_broker_that_injects_events_gets_them_refused(
    home: SmartHome, broker: NatsServer
) -> None:
    drops = dropped(home)
    before, (event,) = hold_back(home, broker, 1)
    altered = bytearray(event)
    altered[HEADER_BYTES - 8 : HEADER_BYTES] = (2**62).to_bytes(8, "big")  # past the counter
    altered[HEADER_BYTES + 2] ^= 0x01
    hostile = Hostile(broker.url)
    to_server = events_subject(APP, "home-server")
    hostile.publish(to_server, bytes(altered))  # a forged event with a fresh counter
    hostile.publish(to_server, os.urandom(64), b"", framed=False)  # not events at all
    hostile.publish(to_server, os.urandom(64))  # framed, but not an event
    hostile.publish(to_server, event)  # the real one, after them
    restart(home, "home-server")
    settle(home, before + 1)
    until(lambda: dropped(home).get("altered", 0) >= drops.get("altered", 0) + 1, TIMEOUT)
    with home.node("home-server") as server:
        assert server.status()["counters"].get("malformed", 0) >= 1  # the agent, unharmed


def test_a_broker_that_redirects_events_to_another_node_gets_them_refused(
    home: SmartHome, broker: NatsServer
) -> None:
    drops = dropped(home)
    before, (event,) = hold_back(home, broker, 1)
    hostile = Hostile(broker.url)
    hostile.publish(events_subject(APP, "home-server"), event)
    restart(home, "home-server")
    settle(home, before + 1)
    # Delivered once; now sent to the hub instead, whose agent routes it back by its
    # connection: the controller's secure world has taken it already.
    hostile.publish(events_subject(APP, "home-hub"), event)
    until(lambda: dropped(home).get("replay", 0) >= drops.get("replay", 0) + 1, TIMEOUT)
    time.sleep(0.5)
    assert counted(home) == before + 1


def test_a_node_started_with_a_broker_uses_it_for_apps_that_name_none(
    tmp_path: Path, wasm: Any, broker: NatsServer
) -> None:
    binaries = build_smart_home(wasm)
    cluster = LocalCluster(
        tmp_path / "cluster", verifier=False, transport=broker.url, source=tree_source()
    )
    cluster.start()
    try:
        descriptor = descriptor_for(
            REPO / "examples/smart-home/app.yaml", cluster, binaries, tmp_path / "app.yaml"
        )
        data = yaml.safe_load(descriptor.read_text())
        data["app"] = "smart-home-2"
        descriptor.write_text(yaml.safe_dump(data, sort_keys=False))
        sh = deploy_trusting_homes(cluster, descriptor, binaries, tmp_path)
        dep, tool = sh.tool()
        event = tool.seal(dep.connection("trigger-btn"), b"press")
        state_mod.save(sh.state, dep)
        with sh.node("home-hub") as hub:
            hub.submit(event, wait=True)
            until(lambda: int(sh.ok("request", "get-presses").strip()) == 1, TIMEOUT)
            assert broker.url in hub.status()["links"]
    finally:
        cluster.stop()


class Responder:
    """A hostile NATS client that records replies and answers requests itself."""

    def __init__(self, url: str) -> None:
        import nats

        self.replies: list[bytes] = []
        self.answer: bytes | None = None
        self.answered = 0
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

        async def connect() -> Any:
            nc = await nats.connect(url)

            async def record(msg: Any) -> None:
                self.replies.append(bytes(msg.data))

            await nc.subscribe("_INBOX.>", cb=record)
            return nc

        self.nc = asyncio.run_coroutine_threadsafe(connect(), self.loop).result(10)

    def answer_on(self, subject: str, answer: bytes) -> None:
        """Answer every request on ``subject`` with ``answer`` (the latest one given)."""
        first = self.answer is None
        self.answer = answer

        async def respond(msg: Any) -> None:
            self.answered += 1
            await msg.respond(self.answer)

        async def sub() -> None:
            await self.nc.subscribe(subject, cb=respond)
            await self.nc.flush()

        if first:
            asyncio.run_coroutine_threadsafe(sub(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.nc.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_requests_cross_nodes_over_the_broker_and_a_hostile_answer_is_refused(
    home: SmartHome, broker: NatsServer, tmp_path: Path
) -> None:
    import httpx

    app = "smart-home-split"  # the web server on the hub: its request to db crosses nodes
    descriptor = descriptor_for(
        REPO / "examples/smart-home/app.yaml", home.cluster, home.binaries, tmp_path / "a.yaml"
    )
    data = yaml.safe_load(descriptor.read_text())
    data["app"], data["transport"] = app, broker.url
    for m in data["modules"]:
        if m["name"] == "webserver":
            m["node"] = "home-hub"
    descriptor.write_text(yaml.safe_dump(data, sort_keys=False))
    split = deploy_trusting_homes(home.cluster, descriptor, home.binaries, tmp_path)
    url = f"{home.cluster.nodes['home-hub'].url}/v1/public/{app}/webserver/http/presses"

    hostile = Responder(broker.url)
    try:
        first = httpx.get(url, timeout=30)
        assert (first.status_code, first.text) == (200, "0\n")  # db answered across nodes
        until(lambda: len(hostile.replies) >= 1)
        recorded = hostile.replies[-1]  # the sealed answer "0", as it crossed the broker

        dep, tool = split.tool()
        event = tool.seal(dep.connection("trigger-btn"), b"press")
        state_mod.save(split.state, dep)
        with split.node("home-hub") as hub:
            hub.submit(event, wait=True)
        until(lambda: httpx.get(url, timeout=30).text == "1\n")

        # The db's node away: the hostile client alone answers, with the recorded answer
        # (which would say 0), then with bytes of its own.
        home.cluster.kill_node("home-server")
        hostile.answer_on(requests_subject(app, "home-server"), recorded)
        replayed = httpx.get(url, timeout=30)
        assert hostile.answered >= 1
        assert (replayed.status_code, replayed.text) == (502, "the database did not answer\n")
        hostile.answer_on(requests_subject(app, "home-server"), b"\x00" + os.urandom(80))
        forged = httpx.get(url, timeout=30)
        assert forged.status_code == 502
    finally:
        hostile.close()
        restart(home, "home-server")
    until(lambda: httpx.get(url, timeout=30).text == "1\n")  # and it answers again


def test_nodes_started_with_and_without_a_broker_are_refused_together(
    home: SmartHome, broker: NatsServer, tmp_path: Path
) -> None:
    home.cluster.stop_node("home-server")
    home.cluster.transport = broker.url  # home-server alone defaults to the broker
    try:
        restart(home, "home-server")
        descriptor = descriptor_for(
            REPO / "examples/smart-home/app.yaml", home.cluster, home.binaries, tmp_path / "a.yaml"
        )
        data = yaml.safe_load(descriptor.read_text())
        data["app"] = "smart-home-mixed"  # and no transport line
        descriptor.write_text(yaml.safe_dump(data, sort_keys=False))
        mixed = SmartHome(home.cluster, tmp_path / "state.json", home.binaries, tmp_path)
        trust = [a for n in home.cluster.nodes.values() for a in ("--trust-home", str(n.home))]
        proc = mixed.cli("deploy", descriptor, *trust)
        assert proc.returncode != 0
        assert "the nodes use different transports (home-hub: direct, home-server: nats)" in (
            proc.stderr
        )
        assert "Traceback" not in proc.stderr
    finally:
        home.cluster.stop_node("home-server")
        home.cluster.transport = None
        restart(home, "home-server")
    before = counted(home)
    press(home, 1)  # the app that names its broker runs on
    settle(home, before + 1)
