"""The NATS JetStream transport against a real nats-server: custody, order, requests, and a
broker killed (by its PID) mid-stream and restarted; descriptor and CLI choice of it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests._nats import NatsServer, free_port
from veritee.app import descriptor as desc_mod
from veritee.app.errors import DescriptorError, TransportError
from veritee.app.transport import Peer
from veritee.app.transport_nats import (
    BadTransport,
    NatsTransport,
    pack,
    parse_transport,
    stream_name,
    unpack,
)

TIMEOUT = 20.0


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "store").start()
    try:
        yield server
    finally:
        server.stop()


class Receiver:
    """An agent's side: takes events into custody (a list here), answers requests."""

    def __init__(self, directory: Path, url: str, app: str = "t", node: str = "b") -> None:
        self.events: list[bytes] = []
        self.lock = threading.Lock()
        self.transport = NatsTransport(directory, url)
        self.transport.start(self.take, lambda e: b"re:" + e)
        self.transport.serve(app, node)

    def take(self, events: list[bytes]) -> None:
        with self.lock:
            self.events.extend(events)

    def got(self) -> list[bytes]:
        with self.lock:
            return list(self.events)


def until(check: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError("not reached in time")


def assert_once_in_order(got: list[bytes], sent: list[bytes]) -> None:
    """Nothing lost, in order; a copy at most of what was in flight when a server died.

    A broker that dies having stored a message it had not acknowledged gets it again from
    the outbox; the message id lets it drop the copy, unless the message was consumed
    already (a work queue forgets it then). Such a copy reaches the receiving agent, and
    its secure world refuses it (tests/test_nats_app.py checks the module sees each once).
    """
    firsts = list(dict.fromkeys(got))
    assert firsts == sent
    assert len(got) - len(firsts) <= 16, "copies only of what was in flight"
    # A copy comes right after the events stored with it (the resend), never later.
    for i, e in enumerate(got):
        if got.index(e) != i:
            assert i - got.index(e) <= 300


def sender(tmp_path: Path, url: str) -> NatsTransport:
    t = NatsTransport(tmp_path / "a", url)
    t.start(lambda events: None, lambda e: b"")
    return t


TO_B = Peer("t", "b", ("", 0))


def test_events_reach_the_node_in_order_once_and_requests_are_answered(
    tmp_path: Path, broker: NatsServer
) -> None:
    b = Receiver(tmp_path / "b", broker.url)
    a = sender(tmp_path, broker.url)
    try:
        sent = [f"event {i}".encode() for i in range(300)]
        a.send_all(TO_B, sent[:100])
        for e in sent[100:]:
            a.send(TO_B, e)
        until(lambda: len(b.got()) >= len(sent))
        assert b.got() == sent
        until(lambda: a.links()[broker.url] == {"up": True, "queued": 0, "dropped": 0})
        until(lambda: b.transport.up)
        assert a.request(TO_B, b"ping") == b"re:ping"
        with pytest.raises(TransportError, match="no node agent serves"):
            a.request(Peer("t", "nobody", ("", 0)), b"ping", timeout=2)
    finally:
        a.close()
        b.transport.close()


def test_a_broker_killed_mid_stream_loses_nothing_and_repeats_nothing(
    tmp_path: Path, broker: NatsServer
) -> None:
    b = Receiver(tmp_path / "b", broker.url)
    a = sender(tmp_path, broker.url)
    sent = [f"event {i}".encode() for i in range(1500)]
    try:

        def produce() -> None:
            for e in sent:
                a.send(TO_B, e)
                time.sleep(0.0005)

        t = threading.Thread(target=produce)
        t.start()
        until(lambda: len(b.got()) > 100)
        broker.kill()
        killed_at = len(b.got())
        time.sleep(0.5)
        broker.start()  # same port, same store: the stream and its consumer come back
        t.join()
        until(lambda: len(b.got()) >= len(sent))
        time.sleep(0.5)  # anything redelivered would arrive now
        got = b.got()
        assert killed_at < len(sent), "the broker was killed mid-stream"
        assert_once_in_order(got, sent)
    finally:
        a.close()
        b.transport.close()


def test_events_sent_while_the_receiver_is_away_wait_on_the_broker(
    tmp_path: Path, broker: NatsServer
) -> None:
    a = sender(tmp_path, broker.url)
    b = Receiver(tmp_path / "b", broker.url)  # makes the stream and its consumer
    try:
        a.send_all(TO_B, [b"first"])
        until(lambda: b.got() == [b"first"])
        b.transport.close()
        a.send_all(TO_B, [f"later {i}".encode() for i in range(50)])
        until(lambda: a.links()[broker.url]["queued"] == 0)  # the broker holds them
        again = Receiver(tmp_path / "b", broker.url)  # the agent restarted, same state
        until(lambda: len(again.got()) >= 50)
        time.sleep(0.3)
        assert again.got() == [f"later {i}".encode() for i in range(50)]
        again.transport.close()
    finally:
        a.close()


def test_an_outbox_keeps_events_until_a_broker_is_reachable(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "store")  # not started yet
    a = sender(tmp_path, server.url)
    try:
        a.send_all(TO_B, [b"kept 1", b"kept 2"])
        time.sleep(0.3)
        assert a.links()[server.url] == {"up": False, "queued": 2, "dropped": 0}
        server.start()
        b = Receiver(tmp_path / "b", server.url)
        until(lambda: b.got() == [b"kept 1", b"kept 2"])
        b.transport.close()
    finally:
        a.close()
        server.stop()


@pytest.mark.parametrize(
    "value",
    ["", "tcp://x:1", "nats://", "nats://u:p@h:4222", "nats://h:4222/path", "nats://h:99999"],
)
def test_a_transport_that_is_neither_direct_nor_nats_is_one_clear_error(value: str) -> None:
    with pytest.raises(BadTransport):
        parse_transport(value)


def test_transports_are_normalised() -> None:
    assert parse_transport(" direct ") == "direct"
    assert parse_transport("nats://h") == "nats://h:4222"
    assert parse_transport("nats://a:1, nats://b:2") == "nats://a:1,nats://b:2"


def test_the_descriptor_names_the_transport_with_its_line(tmp_path: Path) -> None:
    base = (
        "app: t\nnodes: [{name: n, host: h, port: 1}]\n"
        "modules: [{name: m, node: n, binary: m.wasm}]\n"
    )
    assert desc_mod.parse(base + "transport: nats://b:4222\n").transport == "nats://b:4222"
    assert desc_mod.parse(base).transport is None
    with pytest.raises(DescriptorError, match=r"descriptor:4: transport: .*not a NATS URL"):
        desc_mod.parse(base + "transport: amqp://b\n")


def test_a_batch_is_framed_and_what_does_not_parse_is_one_event() -> None:
    events = [b"a", b"", b"c" * 300]
    assert unpack(pack(events)) == events
    for junk in (b"", b"\x00\x00\x00\x05ab", b"\xff" * 10, pack([b"x"]) + b"\x00"):
        assert unpack(junk) == [junk]


def test_an_event_over_the_brokers_limit_is_dropped_not_blocking_those_behind(
    tmp_path: Path, broker: NatsServer
) -> None:
    b = Receiver(tmp_path / "b", broker.url)
    a = sender(tmp_path, broker.url)
    try:
        a.send_all(TO_B, [b"before", bytes(2 * 1024 * 1024), b"after"])  # the default: 1 MiB
        until(lambda: b.got() == [b"before", b"after"])
        assert a.too_big == 1
        assert a.links()[broker.url]["queued"] == 0
    finally:
        a.close()
        b.transport.close()


def _replicas(url: str, app: str) -> int:
    import nats

    async def main() -> int:
        nc = await nats.connect(url)
        try:
            info = await nc.jetstream().stream_info(stream_name(app))
            return int(info.config.num_replicas or 1)
        finally:
            await nc.close()

    return asyncio.run(main())


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[NatsServer]]:
    ports = [free_port() for _ in range(3)]
    servers = [
        NatsServer(
            tmp_path / f"store-{i}",
            name=f"n{i}",
            cluster_port=ports[i],
            routes=tuple(p for j, p in enumerate(ports) if j != i),
        )
        for i in range(3)
    ]
    try:
        for s in servers:
            s.start()
        yield servers
    finally:
        for s in servers:
            s.stop()


def test_a_three_server_cluster_with_one_killed_mid_stream_loses_and_repeats_nothing(
    tmp_path: Path, cluster: list[NatsServer]
) -> None:
    url = ",".join(s.url for s in cluster)
    b = Receiver(tmp_path / "b", url)
    a = sender(tmp_path, url)
    sent = [f"event {i}".encode() for i in range(1500)]
    try:
        a.send_all(TO_B, [b"warm"])
        until(lambda: b.got() == [b"warm"], timeout=60)  # the cluster elected its leaders
        b.events.clear()
        assert _replicas(cluster[1].url, "t") == 3  # the stream is kept on all three

        def produce() -> None:
            for e in sent:
                a.send(TO_B, e)
                time.sleep(0.0005)

        t = threading.Thread(target=produce)
        t.start()
        until(lambda: len(b.got()) > 100)
        cluster[0].kill()  # the server both first connected to
        t.join()
        until(lambda: len(b.got()) >= len(sent), timeout=60)
        time.sleep(0.5)
        assert_once_in_order(b.got(), sent)
    finally:
        a.close()
        b.transport.close()


def test_node_start_with_a_wrong_transport_is_one_line_and_starts_nothing(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "veritee", "node", "start", "--home", str(tmp_path / "h"),
         "--transport", "amqp://broker:5672"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "not a NATS URL" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "h" / "node").exists()
