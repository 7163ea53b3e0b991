"""Continuous attestation: `veritee watch` re-attests a running app and cuts off what is no
longer acceptable, through real node agents, secure worlds and a verifier.

The adversary: a device stolen or found compromised after the deploy (revoked at the
verifier), or a module build found bad (its reference value withdrawn). Until the watcher
acts, the app keeps trusting what it attested at deploy time; these tests revoke and
withdraw while the app runs and assert the affected modules are disconnected on the owner's
signed statement, within the watcher's poll, while the rest of the app keeps running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.test_app_deploy import APP, REPO, SmartHome, build_smart_home, until
from veritee.app import state as state_mod
from veritee.app.cluster import LocalCluster, descriptor_for

# The watcher asks the verifier every POLL s whether provisioning changed; a cut-off must
# follow a change within that and one round of attestation (a bound that catches a hang).
POLL = 0.5
CUT_OFF_WITHIN = 30.0
HUB = ("button_driver", "led_driver")


@pytest.fixture
def app(tmp_path: Path, wasm: Callable[..., Path]) -> Iterator[SmartHome]:
    """The smart home deployed through a verifier of its own, on a cluster of its own."""
    binaries = build_smart_home(wasm)
    cluster = LocalCluster(tmp_path / "cluster")
    cluster.start()
    try:
        cluster.endorse((m, p.read_bytes()) for m, p in binaries.items())
        descriptor = descriptor_for(
            REPO / "examples/smart-home/app.yaml", cluster, binaries, tmp_path / "app.yaml"
        )
        sh = SmartHome(cluster, tmp_path / "deployment.json", binaries, tmp_path)
        proc = sh.cli("deploy", descriptor, "--verifier", str(cluster.verifier_url))
        assert proc.returncode == 0, proc.stderr
        yield sh
    finally:
        cluster.stop()


def _provision(app: SmartHome, *args: str) -> str:
    token = app.cluster.workdir / "verifier" / "admin-token"
    return app.ok(
        "verifier", "provision", "--verifier", str(app.cluster.verifier_url),
        "--token-file", token, *args,
    )  # fmt: skip


@pytest.fixture
def watcher(app: SmartHome) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "veritee", "watch", "--interval", "600", "--poll", str(POLL)],
        env={**os.environ, "VERITEE_DEPLOYMENT": str(app.state)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()  # its first round, before anything changes
    assert first.startswith("round 1 (start): 5/5 modules attested and connected"), first
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


def _modules(app: SmartHome) -> dict[str, state_mod.ModuleState]:
    return dict(state_mod.load(app.state).modules)


def test_a_revoked_device_is_cut_off_and_the_rest_of_the_app_runs_on(
    app: SmartHome, watcher: subprocess.Popen[str]
) -> None:
    app.ok("output", "trigger-btn", "press")
    until(lambda: app.count() == 1)
    hub = app.cluster.nodes["home-hub"].home
    ueid = json.loads(app.ok("--home", hub, "device", "show", "--json"))["ueid"]

    def server_conns() -> set[str]:
        view = app.node("home-server").status()["apps"][APP]["modules"]
        return {c["conn"].hex() for m in view.values() for c in m["tee"].get("connections", [])}

    dep = state_mod.load(app.state)
    hub_conns = {c.id for c in dep.connections.values() if {c.from_module, c.to_module} & set(HUB)}
    assert server_conns() & hub_conns  # the server's modules hold connections with the hub

    _provision(app, "revoke", "--device", ueid, "--reason", "stolen")
    revoked = time.monotonic()
    assert watcher.stderr is not None
    line = watcher.stderr.readline()
    assert "provisioning changed" in line and "3/5 modules attested and connected" in line, line
    cut = [watcher.stderr.readline() for _ in HUB]
    elapsed = time.monotonic() - revoked
    print(f"hub's modules cut off {elapsed:.2f} s after the revocation (poll {POLL} s)")
    assert elapsed < CUT_OFF_WITHIN
    assert sorted(ln.split()[2].rstrip(":") for ln in cut) == sorted(HUB), cut

    modules = _modules(app)
    for name in HUB:
        assert modules[name].status == "refused"
        assert "revoked" in modules[name].reason, modules[name].reason
    for name in ("controller", "db", "webserver"):
        assert modules[name].status == "connected", modules[name].reason
    dep = state_mod.load(app.state)
    for c in dep.connections.values():
        touches_hub = {c.from_module, c.to_module} & set(HUB)
        assert (c.status == "refused") == bool(touches_hub), (c.name, c.status)

    # The server's secure worlds ended their connections with the hub on the owner's
    # statement, whatever the revoked hub's own agent does with its copy: the controller
    # takes no button press from it and sends it no toggle.
    live = server_conns()
    assert live and not (live & hub_conns), (live, hub_conns)
    # The database on the server still answers its user.
    assert app.count() == 1
    status = app.status()
    server = {m["name"]: m for m in status["modules"] if m["node"] == "home-server"}
    assert all(m["running"] for m in server.values())


def test_a_withdrawn_reference_value_cuts_off_that_module_only(
    app: SmartHome, watcher: subprocess.Popen[str]
) -> None:
    shown = json.loads(_provision(app, "show", "--json"))
    refs = [
        r
        for r in shown["reference-values"]
        if r.get("kind") == "module" and r.get("name") == "controller"
    ]
    assert len(refs) == 1, shown["reference-values"]
    _provision(app, "remove", "reference-values", refs[0]["id"])
    assert watcher.stderr is not None
    line = watcher.stderr.readline()
    assert "provisioning changed" in line and "4/5 modules attested and connected" in line, line
    assert watcher.stderr.readline().startswith("  cut off controller:")

    modules = _modules(app)
    assert modules["controller"].status == "refused"
    assert "not among the reference values" in modules["controller"].reason
    for name in ("button_driver", "led_driver", "db", "webserver"):
        assert modules[name].status == "connected", modules[name].reason
    # The controller's connections ended; the user's own to db did not.
    dep = state_mod.load(app.state)
    for c in dep.connections.values():
        assert (c.status == "refused") == ("controller" in (c.from_module, c.to_module))
    assert app.count() == 0
    app.ok("output", "trigger-btn", "press")  # the button driver takes it ...
    time.sleep(1.0)
    assert app.count() == 0  # ... and nothing reaches the database past the controller


def test_watch_rounds_and_status_show_when_each_module_was_last_attested(
    app: SmartHome,
) -> None:
    before = {m.name: m.attestation["at"] for m in _modules(app).values()}
    proc = app.cli("watch", "--rounds", "2", "--interval", "1")
    assert proc.returncode == 0, proc.stderr
    rounds = [ln for ln in proc.stderr.splitlines() if ln.startswith("round ")]
    assert [r.split(" (")[0] for r in rounds] == ["round 1", "round 2"]
    assert "round 2 (interval)" in rounds[1]
    after = _modules(app)
    assert all(after[n].attestation["at"] > before[n] for n in before)
    assert all(m.status == "connected" for m in after.values())
    table = app.ok("status")
    assert "s ago" in table


def test_a_round_the_verifier_does_not_answer_cuts_nothing_off(app: SmartHome) -> None:
    from veritee.app.cluster import _stop

    _stop(app.cluster._verifier)  # the verifier is down: no verdict on anything
    proc = app.cli("watch", "--rounds", "2", "--interval", "1")
    assert proc.returncode == 0, proc.stderr
    rounds = [ln for ln in proc.stderr.splitlines() if ln.startswith("round ")]
    assert len(rounds) == 2 and all("not done" in r and "did not answer" in r for r in rounds)
    assert "Traceback" not in proc.stderr
    assert all(m.status == "connected" for m in _modules(app).values())
