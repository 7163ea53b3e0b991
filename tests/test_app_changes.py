"""A deployment that lives on: a node killed and restarted, modules added, updated, disabled.

Appraisal is local here (the deployer is given each device's CA and boot reference values,
no verification service), so that path is exercised end to end too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.test_app_deploy import (
    APP,
    REPO,
    SmartHome,
    build_smart_home,
    deploy_trusting_homes,
    until,
)
from veritee.app import state as state_mod
from veritee.app.cluster import LocalCluster, descriptor_for


@pytest.fixture(scope="module")
def home(
    tmp_path_factory: pytest.TempPathFactory, wasm: Callable[..., Path]
) -> Iterator[SmartHome]:
    workdir = tmp_path_factory.mktemp("smart-home-changes")
    binaries = build_smart_home(wasm)
    # Its agents never poll their links (the other clusters of the tests do, by default).
    cluster = LocalCluster(workdir / "cluster", verifier=False, poll_us=0)
    cluster.start()
    try:
        descriptor = descriptor_for(
            REPO / "examples/smart-home/app.yaml", cluster, binaries, workdir / "app.yaml"
        )
        sh = deploy_trusting_homes(cluster, descriptor, binaries, workdir)
        yield sh
    finally:
        cluster.stop()


def test_local_appraisal_connects_everything(home: SmartHome) -> None:
    dep = state_mod.load(home.state)
    assert dep.verifier is None
    for m in dep.modules.values():
        assert m.status == "connected"
        assert (m.attestation["via"], m.attestation["status"]) == ("local", "warning")


def test_a_restarted_node_reloads_its_modules_and_gets_what_was_kept_for_it(
    home: SmartHome,
) -> None:
    home.ok("output", "trigger-btn", "press")
    until(lambda: home.count() >= 1)
    before = home.count()

    home.cluster.kill_node("home-server", tee=True)
    for _ in range(3):
        home.ok("output", "trigger-btn", "press")  # the hub keeps these for the server
    hub = home.status()["nodes"][0]
    assert hub["name"] == "home-hub" and hub["queued"] == 3
    # A node down is not a healthy deployment: status shows it, then exits 11 (one line).
    down = home.cli("status")
    assert down.returncode == 11, down.stderr
    assert "node agent(s) down: home-server" in down.stderr and "Traceback" not in down.stderr
    assert "home-server" in down.stdout

    home.cluster.start_node("home-server")
    until(lambda: home.count() == before + 3)
    time.sleep(0.5)
    assert home.count() == before + 3  # delivered once, never twice

    proc = home.cli("status", "--attest", "--json")
    assert proc.returncode == 0, proc.stderr
    dep = state_mod.load(home.state)
    assert all(m.status == "connected" for m in dep.modules.values()), [
        (m.name, m.reason) for m in dep.modules.values()
    ]
    server = [m for m in home.status()["modules"] if m["node"] == "home-server"]
    assert all(m["loads"] == 1 and m["running"] for m in server)

    # The whole app works after the restart (the web server needs starting again).
    home.ok("output", "init-server", "start")
    home.ok("output", "trigger-btn", "press")
    until(lambda: home.http().text.strip() == str(before + 4))


def test_modules_and_connections_are_added_later(home: SmartHome) -> None:
    fragment = home.workdir / "led2.yaml"
    fragment.write_text(
        f"""\
app: {APP}
modules:
  - {{name: led2, node: home-hub, binary: {home.binaries["led_driver"]}}}
connections:
  - {{from_module: controller, from_output: toggle_led, to_module: led2, to_input: toggle_led}}
  - {{name: led2-state, direct: true, to_module: led2, to_handler: get_state}}
"""
    )
    proc = home.cli("add", fragment)
    assert proc.returncode == 0, proc.stderr
    first, second = home.led(), home.ok("request", "led2-state").strip()
    home.ok("output", "trigger-btn", "press")
    flipped = {"on": "off", "off": "on"}
    until(lambda: home.led() == flipped[first])
    until(lambda: home.ok("request", "led2-state").strip() == flipped[second])

    duplicate = home.cli("add", fragment)
    assert duplicate.returncode == 2
    assert "led2.yaml:3: modules[0].name: module 'led2' is already deployed" in duplicate.stderr


def test_a_module_is_updated_in_place(home: SmartHome, wasm: Callable[..., Path]) -> None:
    v2 = wasm("examples/smart-home/webserver.c", "WEB_V2")
    assert home.http().headers["x-web-version"] == "1"
    name = "webserver.get_presses->db.get_presses"
    old = state_mod.load(home.state).connections[name].conn
    proc = home.cli("update", "webserver", v2)
    assert proc.returncode == 0, proc.stderr
    # db's secure world ended the old build's connection and holds the new one.
    held = _tee_connections(home, "db")
    assert old not in held and state_mod.load(home.state).connections[name].conn in held
    assert "webserver updated" in proc.stderr
    home.ok("output", "init-server", "start")
    response = home.http()
    assert response.status_code == 200
    assert response.headers["x-web-version"] == "2"
    assert int(response.text) == home.count()


def test_an_update_keeps_sealed_state_only_when_the_owner_signs_for_it(
    home: SmartHome, wasm: Callable[..., Path]
) -> None:
    home.ok("output", "trigger-btn", "press")
    until(lambda: home.count() >= 1)
    before = home.count()
    original = wasm("examples/smart-home/db.c").read_bytes()

    def build(tag: bytes) -> Path:  # the same code, another build (a custom section)
        body = bytes([len(tag)]) + tag
        path = home.workdir / f"db-{tag.decode()}.wasm"
        path.write_bytes(original + b"\x00" + bytes([len(body)]) + body)
        return path

    proc = home.cli("update", "db", build(b"v2"), "--keep-state")
    assert proc.returncode == 0, proc.stderr
    assert home.count() == before  # the count, sealed by the old build, came across
    home.ok("output", "trigger-btn", "press")
    until(lambda: home.count() == before + 1)

    proc = home.cli("update", "db", build(b"v3"))  # no succession signed
    assert proc.returncode == 0, proc.stderr
    assert home.count() == 0  # the new build cannot open the old state: it starts empty


def test_periodic_events_call_a_public_endpoint(home: SmartHome, wasm: Callable[..., Path]) -> None:
    ticker = wasm("tests/assets/c/app_counter.c")
    fragment = home.workdir / "ticker.yaml"
    fragment.write_text(
        f"""\
modules:
  - {{name: ticker, node: home-server, binary: {ticker}}}
periodic-events:
  - {{module: ticker, entry: http, period: 50}}
"""
    )
    proc = home.cli("add", fragment)
    assert proc.returncode == 0, proc.stderr

    def ticks() -> int:
        module = next(m for m in home.status()["modules"] if m["name"] == "ticker")
        return int(module["delivered"] or 0)

    until(lambda: ticks() >= 5)

    wrong = home.workdir / "wrong.yaml"
    wrong.write_text(
        f"modules:\n  - {{name: t2, node: home-server, binary: {ticker}}}\n"
        "periodic-events:\n  - {module: t2, entry: count, period: 50}\n"
    )
    proc = home.cli("add", wrong)
    assert proc.returncode == 2
    assert "periodic events call a public endpoint" in proc.stderr
    assert "t2.count is a handler" in proc.stderr


def test_entry_points_are_called_by_the_user(home: SmartHome, wasm: Callable[..., Path]) -> None:
    sender, counter = wasm("tests/assets/c/app_sender.c"), wasm("tests/assets/c/app_counter.c")
    fragment = home.workdir / "entries.yaml"
    fragment.write_text(
        f"""\
modules:
  - {{name: sender, node: home-hub, binary: {sender}}}
  - {{name: counter, node: home-server, binary: {counter}}}
connections:
  - {{from_module: sender, from_output: pressed, to_module: counter, to_input: pressed}}
  - {{from_module: sender, from_request: ask, to_module: counter, to_handler: count}}
  - {{name: count, direct: true, to_module: counter, to_handler: count}}
"""
    )
    proc = home.cli("add", fragment)
    assert proc.returncode == 0, proc.stderr
    for _ in range(3):
        home.ok("call", "sender", "press", "hello")
    until(lambda: home.ok("request", "count").strip() == "3")
    proc = home.cli("call", "sender", "query")
    assert proc.returncode == 0, proc.stderr
    report = home.status()
    assert any(c["name"] == "sender.press" for c in report["connections"])


def _tee_connections(home: SmartHome, module: str) -> set[bytes]:
    """The connections a module's secure world holds, as its node agent reports them."""
    dep = state_mod.load(home.state)
    with home.node(dep.module(module).node) as client:  # as the app's owner
        tee = client.status()["apps"][APP]["modules"][module]["tee"]
    return {c["conn"] for c in tee["connections"]}


def test_a_disabled_module_is_gone_and_its_connections_end(home: SmartHome) -> None:
    dep = state_mod.load(home.state)
    asking = dep.connections["webserver.get_presses->db.get_presses"].conn
    assert asking in _tee_connections(home, "db")
    node_home = home.cluster.nodes[dep.module("webserver").node].home
    bases = lambda: len(list(node_home.glob("**/storage/bases/*.sealed")))  # noqa: E731
    before = bases()
    proc = home.cli("disable", "webserver")
    assert proc.returncode == 0, proc.stderr
    # Its secure world let its state go (db, whose connection ended, has a new base).
    assert bases() == before - 1
    # The owner's signed disconnect ended it in db's secure world, not only in the agents.
    assert asking not in _tee_connections(home, "db")
    assert "webserver.get_presses->db.get_presses" in proc.stdout
    assert home.http().status_code == 404
    report = home.status()
    web = next(m for m in report["modules"] if m["name"] == "webserver")
    assert web["status"] == "disabled"
    conns = {c["name"]: c["status"] for c in report["connections"]}
    assert conns["init-server"] == "retired"
    proc = home.cli("output", "init-server", "x")
    assert proc.returncode == 10 and "is retired" in proc.stderr
    # The rest of the app goes on.
    before = home.count()
    home.ok("output", "trigger-btn", "press")
    until(lambda: home.count() == before + 1)


def test_a_host_that_hands_back_an_older_state_gets_the_module_refused(home: SmartHome) -> None:
    """Last here: it leaves led_driver refused, as a rolled-back state must."""
    dep = state_mod.load(home.state)
    node = home.cluster.nodes[dep.module("led_driver").node]
    log = node.home / "node" / "apps" / APP / "modules" / "led_driver" / "state.log"
    older = log.read_bytes()
    before = home.led()
    home.ok("output", "trigger-btn", "press")
    until(lambda: home.led() != before)  # led_driver took an event: its state moved on
    home.cluster.kill_node(node.name, tee=True)
    log.write_bytes(older)  # the host hands back the state from before that event
    home.cluster.start_node(node.name)
    led = next(m for m in home.status()["modules"] if m["name"] == "led_driver")
    assert not led["running"]
    assert "rolled back" in str(led["failed"])
