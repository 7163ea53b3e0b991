"""The smart home on three hosts made with network namespaces (ip netns + veth + a bridge).

home-hub (button, LED), home-server (controller, db) and home-web (web server) each run in a
namespace of their own, at their own address; the deployer and the verifier are on the host.
The server node is killed (agent and secure world) while the hub keeps sending: it comes
back with its modules reloaded and re-attested, and gets the events sent meanwhile once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.test_app_deploy import APP, REPO, SmartHome, build_smart_home, until
from veritee.app import state as state_mod
from veritee.app.cluster import LocalCluster, descriptor_for

NAMES = ("home-hub", "home-server", "home-web")
TAG = f"v{os.getpid() % 100000}"  # interface and namespace names of this run (≤ 15 chars)
SUBNET = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "the 'ip' tool (iproute2) is not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"'ip netns' is not available: {probe.stderr.decode().strip()}"
    return None


pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(_netns_unavailable() is not None, reason=str(_netns_unavailable())),
]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def hosts() -> Iterator[list[tuple[str, str]]]:
    """Three namespaces on a bridge: [(namespace, address)], the host at SUBNET.1."""
    bridge = f"{TAG}br"
    made: list[str] = []
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{SUBNET}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        out = []
        for i, _ in enumerate(NAMES):
            ns, outside, inside = f"{TAG}n{i}", f"{TAG}h{i}", f"{TAG}c{i}"
            address = f"{SUBNET}.{i + 2}"
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", ns)
            _ip("link", "set", outside, "master", bridge)
            _ip("link", "set", outside, "up")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", inside)
            _ip("-n", ns, "link", "set", inside, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            out.append((ns, address))
        yield out
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], check=False, capture_output=True)


def deploy_on_three_hosts(
    workdir: Path,
    binaries: dict[str, Path],
    hosts: list[tuple[str, str]],
    *,
    transport: str | None = None,
) -> tuple[LocalCluster, SmartHome]:
    """The smart home on a cluster of one node per namespace, the web server on a third,
    deployed through the cluster's verifier and started; the caller stops the cluster."""
    cluster = LocalCluster(
        workdir / "cluster",
        NAMES,
        hosts=[address for _, address in hosts],
        prefixes=[["ip", "netns", "exec", ns] for ns, _ in hosts],
        transport=transport,
    )
    cluster.start()
    try:
        cluster.endorse((m, p.read_bytes()) for m, p in binaries.items())
        descriptor = descriptor_for(
            REPO / "examples/smart-home/app.yaml", cluster, binaries, workdir / "app.yaml"
        )
        data = yaml.safe_load(descriptor.read_text())
        web = cluster.nodes["home-web"]
        data["nodes"].append({"name": "home-web", "host": web.host, "port": web.port})
        for m in data["modules"]:
            if m["name"] == "webserver":
                m["node"] = "home-web"
        descriptor.write_text(yaml.safe_dump(data, sort_keys=False))
        sh = SmartHome(cluster, workdir / "deployment.json", binaries, workdir)
        proc = sh.cli("deploy", descriptor, "--verifier", str(cluster.verifier_url))
        assert proc.returncode == 0, proc.stderr
        sh.ok("output", "init-server", "start")
    except BaseException:
        cluster.stop()
        raise
    return cluster, sh


@pytest.fixture(scope="module")
def home(
    tmp_path_factory: pytest.TempPathFactory,
    wasm: Callable[..., Path],
    hosts: list[tuple[str, str]],
) -> Iterator[SmartHome]:
    workdir = tmp_path_factory.mktemp("smart-home-netns")
    cluster, sh = deploy_on_three_hosts(workdir, build_smart_home(wasm), hosts)
    try:
        yield sh
    finally:
        cluster.stop()


def _web(home: SmartHome) -> int:
    url = home.cluster.nodes["home-web"].url
    return int(httpx.get(f"{url}/v1/public/{APP}/webserver/http/presses", timeout=30).text)


def test_three_hosts_each_at_its_own_address(home: SmartHome) -> None:
    dep = state_mod.load(home.state)
    assert {n.host for n in dep.nodes.values()} == {n.host for n in home.cluster.nodes.values()}
    assert len({n.host for n in dep.nodes.values()}) == 3
    assert all(m.status == "connected" for m in dep.modules.values())
    for _ in range(2):
        home.ok("output", "trigger-btn", "press")
    until(lambda: _web(home) == 2)  # hub -> server -> (web asks db across hosts)


def test_a_killed_node_comes_back_and_gets_what_was_sent_meanwhile_once(home: SmartHome) -> None:
    until(lambda: home.count() == 2)
    home.cluster.kill_node("home-server", tee=True)
    for _ in range(3):
        home.ok("output", "trigger-btn", "press")
    hub = next(n for n in home.status()["nodes"] if n["name"] == "home-hub")
    assert hub["queued"] == 3  # kept, sealed, by the hub's agent

    time.sleep(1.0)  # down for a while
    home.cluster.start_node("home-server")
    proc = home.cli("status", "--attest")
    assert proc.returncode == 0, proc.stderr
    dep = state_mod.load(home.state)
    assert all(m.status == "connected" for m in dep.modules.values()), [
        (m.name, m.reason) for m in dep.modules.values()
    ]
    for name in ("controller", "db"):
        assert dep.module(name).attestation["via"] == home.cluster.verifier_url
    until(lambda: _web(home) == 5)
    time.sleep(1.0)
    assert _web(home) == 5 and home.count() == 5  # once, never twice
    server = [m for m in home.status()["modules"] if m["node"] == "home-server"]
    assert all(m["loads"] == 1 and m["running"] for m in server)
