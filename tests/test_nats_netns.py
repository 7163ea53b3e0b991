"""The smart home on three hosts (network namespaces), its events through a NATS JetStream
broker on a fourth (the host, on the bridge): no node reaches another directly. The broker is
killed by its PID while the hub keeps sending and comes back: nothing lost, nothing twice."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests._nats import NatsServer
from tests.test_app_deploy import APP, SmartHome, build_smart_home, until
from tests.test_app_netns import NAMES, SUBNET, _netns_unavailable, deploy_on_three_hosts, hosts

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(_netns_unavailable() is not None, reason=str(_netns_unavailable())),
]
__all__ = ["hosts"]  # the three namespaces (tests/test_app_netns.py)


@pytest.fixture(scope="module")
def broker(
    tmp_path_factory: pytest.TempPathFactory, hosts: list[tuple[str, str]]
) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats-netns") / "store", host=f"{SUBNET}.1")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def home(
    tmp_path_factory: pytest.TempPathFactory,
    wasm: Callable[..., Path],
    hosts: list[tuple[str, str]],
    broker: NatsServer,
) -> Iterator[SmartHome]:
    workdir = tmp_path_factory.mktemp("smart-home-nats-netns")
    cluster, sh = deploy_on_three_hosts(
        workdir, build_smart_home(wasm), hosts, transport=broker.url
    )
    try:
        yield sh
    finally:
        cluster.stop()


def _web(home: SmartHome) -> int:
    """The count the web server gets from db (a request across hosts, through the broker);
    -1 while it cannot (the broker restarting)."""
    url = home.cluster.nodes["home-web"].url
    text = httpx.get(f"{url}/v1/public/{APP}/webserver/http/presses", timeout=30).text
    return int(text) if text.strip().isdigit() else -1


def test_three_hosts_exchange_events_only_through_the_broker(
    home: SmartHome, broker: NatsServer
) -> None:
    for _ in range(2):
        home.ok("output", "trigger-btn", "press")
    until(lambda: _web(home) == 2)  # hub -> server, then web asks db: all across hosts
    for name in NAMES:
        with home.node(name) as node:
            links = node.status()["links"]
        assert [a for a in links if not a.startswith("nats://")] == [], (name, links)
        assert links[broker.url]["up"], (name, links)


def test_the_broker_killed_mid_stream_loses_and_repeats_nothing_across_hosts(
    home: SmartHome, broker: NatsServer
) -> None:
    until(lambda: _web(home) == 2)
    broker.kill()  # SIGKILL by its PID while the hub is sending
    for _ in range(3):
        home.ok("output", "trigger-btn", "press")  # the hub's agent keeps them in its outbox
    time.sleep(1.0)
    broker.start()  # the same port and store
    until(lambda: _web(home) == 5)
    time.sleep(1.0)
    assert _web(home) == 5 and home.count() == 5  # once, never twice
