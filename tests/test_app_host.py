"""A module host's inbox in a real secure world: which thread delivers an event that arrives
from another node, and that every event is delivered once, in order, whoever delivers it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from veritee.app._host import LoadParams, ModuleHost
from veritee.home import Home
from veritee.tee import channels
from veritee.tee.ta import BatchOutcome

from ._user import user_channel
from .conftest import Device

APP = "host-test"


class RecordingHost(ModuleHost):
    """A module host that notes which thread hands each batch to the secure world."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[tuple[str, list[bytes]]] = []

    def deliver_batch(self, events: list[bytes]) -> BatchOutcome:
        self.batches.append((threading.current_thread().name, list(events)))
        return super().deliver_batch(events)


@pytest.fixture
def make_host(
    device: Device, wasm: Callable[..., Path], tmp_path: Path
) -> Iterator[Callable[[str, str, str], tuple[RecordingHost, channels.Channel]]]:
    """A loaded module host, and the user's end of a direct connection to one endpoint."""
    key = ec.generate_private_key(ec.SECP256R1())
    raw = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    hosts: list[RecordingHost] = []

    def make(source: str, kind: str, endpoint: str) -> tuple[RecordingHost, channels.Channel]:
        name = Path(source).stem
        host = RecordingHost(
            tmp_path / name,
            LoadParams(APP, name, raw),
            home=Home(device.home),
            vtee="default",
            absorb=lambda _host, _events: None,
            relay=lambda _rpc: {"error": "nothing is relayed in this test"},
        )
        hosts.append(host)
        host.load(wasm(source).read_bytes())
        user = user_channel(
            APP,
            key,
            x25519.X25519PrivateKey.generate(),
            bytes([len(hosts)]) * 16,
            host,
            kind,
            endpoint,
        )
        return host, user

    yield make
    for host in hosts:
        host.close()


def _settled(host: RecordingHost, delivered: int) -> None:
    deadline = time.monotonic() + 30
    while (host.delivered < delivered or len(host.inbox)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert host.delivered == delivered and not len(host.inbox), (host.delivered, host.dropped)


def _count(host: RecordingHost) -> bytes:
    """The count the module reports (its public endpoint answers "count=N bytes=...")."""
    return (host.public("http", b"").reply or b"").split(b" ")[0]


def test_an_event_from_the_network_is_delivered_on_the_thread_that_took_it(
    make_host: Callable[..., tuple[RecordingHost, channels.Channel]],
) -> None:
    host, user = make_host("tests/assets/c/app_counter.c", "input", "pressed")
    event = user.seal(b"one")
    host.deliver_arrived(host.keep([event]))
    # Delivered before deliver_arrived returned, by this thread, and done with.
    assert host.batches == [(threading.current_thread().name, [event])]
    assert host.delivered == 1 and not host.dropped and not len(host.inbox)
    assert _count(host) == b"count=1"


def test_a_module_that_makes_requests_is_delivered_to_by_its_inbox_thread(
    make_host: Callable[..., tuple[RecordingHost, channels.Channel]],
) -> None:
    # app_sender declares a request: its delivery may wait on another node, which may be
    # waiting on the very link this event came by. The network thread must not take it.
    host, user = make_host("tests/assets/c/app_sender.c", "entry", "press")
    event = user.seal(b"press")
    host.deliver_arrived(host.keep([event]))
    _settled(host, 1)
    assert host.batches == [("deliver app_sender", [event])]


def test_events_queued_first_are_delivered_first_and_nothing_twice(
    make_host: Callable[..., tuple[RecordingHost, channels.Channel]],
) -> None:
    host, user = make_host("tests/assets/c/app_counter.c", "input", "pressed")
    # Several network threads at once, each with a few events, while the inbox thread
    # delivers what they leave: every event reaches the module once, in the inbox's order.
    # (Each thread seals and keeps under one lock, as events of one link arrive in order:
    # the secure world would drop one sealed before another but kept after it as a replay.)
    order: list[bytes] = []
    lock = threading.Lock()

    def arrive() -> None:
        with lock:
            batch = [user.seal(b"%d" % len(order)) for _ in range(5)]
            before = host.keep(batch)
            order.extend(batch)
        host.deliver_arrived(before)

    threads = [threading.Thread(target=arrive) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    _settled(host, 40)
    assert [e for _, batch in host.batches for e in batch] == order
    assert not host.dropped  # a replay or a reordering would be dropped by the secure world
    assert _count(host) == b"count=40"


def test_an_event_queued_behind_others_waits_for_the_inbox_thread(
    make_host: Callable[..., tuple[RecordingHost, channels.Channel]],
) -> None:
    host, user = make_host("tests/assets/c/app_counter.c", "input", "pressed")
    first, second = user.seal(b"first"), user.seal(b"second")
    with host._baton:  # a delivery under way (as the inbox thread holds it)
        host.keep([first])
        host.deliver_arrived(host.keep([second]))
        assert host.batches == []  # not delivered here, not ahead of the first
    _settled(host, 2)
    assert [e for _, batch in host.batches for e in batch] == [first, second]
    assert all(thread == "deliver app_counter" for thread, _ in host.batches)
