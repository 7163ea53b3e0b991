"""The smart-home app deployed for real: two node agents, each with its own device and secure
world, and a verification service, all as processes on loopback; driven through the CLI.

The attacks an untrusted host can mount are played here too: replaying, altering and
misrouting sealed events, swapping a key in a connect statement, forging a statement, and
running a modified controller. Each must fail, and the drops must be counted.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest

from veritee.app import auth
from veritee.app import state as state_mod
from veritee.app.attest import Expected, app_config_digest
from veritee.app.client import NodeClient
from veritee.app.cluster import LocalCluster, descriptor_for
from veritee.app.errors import NodeError
from veritee.app.user import UserTool
from veritee.evidence import cose
from veritee.evidence.deployment import Connect, Peer, sign_connect
from veritee.tee.channels import HEADER_BYTES
from veritee.wasm.runtime import measure

REPO = Path(__file__).resolve().parent.parent
MODULES = ("button_driver", "led_driver", "controller", "db", "webserver")
APP = "smart-home"
DELIVERY_TIMEOUT = 20.0  # seconds for an event to cross nodes; it takes milliseconds


@dataclass
class SmartHome:
    cluster: LocalCluster
    state: Path
    binaries: dict[str, Path]
    workdir: Path

    def cli(self, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "VERITEE_DEPLOYMENT": str(self.state)}
        return subprocess.run(
            [sys.executable, "-m", "veritee", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )

    def ok(self, *args: str | Path) -> str:
        proc = self.cli(*args)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def node(self, name: str) -> NodeClient:
        """The node's agent, as the app's owner: its API takes no one else (the tests that
        play a malicious host through it sign as the owner; a real host needs no API)."""
        key = state_mod.load_keys(self.state).deployment
        app = state_mod.load(self.state).app
        return NodeClient(self.cluster.nodes[name].url, name=name, app=app, key=key)

    def http(self, path: str = "/presses") -> httpx.Response:
        url = self.cluster.nodes["home-server"].url
        return httpx.get(f"{url}/v1/public/{APP}/webserver/http{path}", timeout=30)

    def count(self) -> int:
        return int(self.ok("request", "get-presses").strip())

    def led(self) -> str:
        return self.ok("request", "led-state").strip()

    def tool(self) -> tuple[state_mod.Deployment, UserTool]:
        dep = state_mod.load(self.state)
        return dep, UserTool(dep, state_mod.load_keys(self.state))

    def status(self) -> dict[str, Any]:
        """The status report, whatever its health: 0 healthy, 11 a node down, 10 a module
        not serving (README's table); the report is printed on stdout in every case."""
        proc = self.cli("status", "--json")
        assert proc.returncode in (0, 10, 11), proc.stderr.decode()
        value: dict[str, Any] = json.loads(proc.stdout)
        assert value["ok"] == (proc.returncode == 0)
        return value


def until(check: Callable[[], bool], timeout: float = DELIVERY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("not reached in time")


def deploy_locally(
    cluster: LocalCluster,
    workdir: Path,
    app: str,
    modules: dict[str, tuple[str, Path]],
    connections: list[dict[str, Any]],
) -> SmartHome:
    """Deploy ``app`` (modules: name -> (node, binary)) on the cluster's nodes, appraised
    locally against their devices; fails the test if the deploy does not succeed whole."""
    descriptor = workdir / f"{app}.json"
    nodes = cluster.nodes.values()
    descriptor.write_text(
        json.dumps(
            {
                "app": app,
                "nodes": [
                    {
                        "name": n.name,
                        "host": n.host,
                        "port": n.port,
                        **({"tls": True} if n.tls else {}),
                    }
                    for n in nodes
                ],
                "modules": [
                    {"name": m, "node": node, "binary": str(binary)}
                    for m, (node, binary) in modules.items()
                ],
                "connections": connections,
            }
        )
    )
    home = SmartHome(
        cluster, workdir / f"{app}-state.json", {m: b for m, (_, b) in modules.items()}, workdir
    )
    trust = [a for n in nodes for a in ("--trust-home", str(n.home))]
    proc = home.cli("deploy", descriptor, *trust)
    assert proc.returncode == 0, proc.stderr
    return home


def deploy_trusting_homes(
    cluster: LocalCluster, descriptor: Path, binaries: dict[str, Path], workdir: Path
) -> SmartHome:
    """Deploy the smart home with local appraisal (each node's home trusted), and start it."""
    sh = SmartHome(cluster, workdir / "deployment.json", binaries, workdir)
    trust = [a for n in cluster.nodes.values() for a in ("--trust-home", str(n.home))]
    proc = sh.cli("deploy", descriptor, *trust)
    assert proc.returncode == 0, proc.stderr
    sh.ok("output", "init-server", "start")
    return sh


def build_smart_home(wasm: Callable[..., Path]) -> dict[str, Path]:
    return {m: wasm(f"examples/smart-home/{m}.c") for m in MODULES}


@pytest.fixture(scope="module")
def home(
    tmp_path_factory: pytest.TempPathFactory, wasm: Callable[..., Path]
) -> Iterator[SmartHome]:
    workdir = tmp_path_factory.mktemp("smart-home")
    binaries = build_smart_home(wasm)
    cluster = LocalCluster(workdir / "cluster")
    cluster.start()
    try:
        cluster.endorse((m, p.read_bytes()) for m, p in binaries.items())
        descriptor = descriptor_for(
            REPO / "examples/smart-home/app.yaml", cluster, binaries, workdir / "app.yaml"
        )
        sh = SmartHome(cluster, workdir / "deployment.json", binaries, workdir)
        proc = sh.cli("deploy", descriptor, "--verifier", str(cluster.verifier_url))
        assert proc.returncode == 0, proc.stderr
        assert "5/5 modules attested and connected, 8/8 connections" in proc.stderr
        sh.ok("output", "init-server", "start")
        yield sh
    finally:
        cluster.stop()


def test_every_module_is_attested_by_the_verifier_and_connected(home: SmartHome) -> None:
    dep = state_mod.load(home.state)
    for name in MODULES:
        m = dep.module(name)
        assert m.status == "connected", m.reason
        assert m.measurement == measure(home.binaries[name].read_bytes()).hex()
        assert m.attestation["via"] == home.cluster.verifier_url
        assert m.attestation["status"] == "warning"  # emulated TEE: accepted with a warning
        assert m.attestation["lifecycle"] == "emulated"
    assert all(c.status == "connected" for c in dep.connections.values())
    assert set(dep.timings) >= {"load", "attest", "connect"}
    # Accepted means the evidence's configuration digest was the one the deployer computed:
    # the module was loaded with this app's deployment key and the limits asked for.
    keys = state_mod.load_keys(home.state)
    assert (
        dep.module("db").config == app_config_digest(APP, keys.deployment_public, None, None).hex()
    )


def test_presses_are_counted_over_http_and_the_led_follows(home: SmartHome) -> None:
    before = int(home.http().text)
    led_before = home.led()
    presses = 5
    for _ in range(presses):
        home.ok("output", "trigger-btn", "press")
    until(lambda: int(home.http().text) == before + presses)
    response = home.http()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert home.count() == before + presses
    flipped = {"on": "off", "off": "on"}
    until(lambda: home.led() == (flipped[led_before] if presses % 2 else led_before))
    assert home.http("/other").status_code == 404  # the module decides what to answer


def _spool_records(path: Path) -> list[bytes]:
    """Every record in a node agent's spool file, consumed or not: what its host can read."""
    data, out, i = path.read_bytes(), [], 0
    while i + 12 <= len(data):
        _, size = struct.unpack_from(">QI", data, i)
        out.append(data[i + 12 : i + 12 + size])
        i += 12 + size
    return out


def test_replayed_altered_and_misrouted_events_are_dropped_and_counted(home: SmartHome) -> None:
    home.ok("output", "trigger-btn", "press")
    until(lambda: home.count() > 0)
    before = home.count()
    until(lambda: int(home.http().text) == before)

    # The hub's host kept a sealed button_pressed event in its outbox: it replays it.
    outbox = next((home.cluster.nodes["home-hub"].home / "node" / "outbox").glob("*.spool"))
    captured = _spool_records(outbox)[-1]
    with home.node("home-server") as server:
        assert server.submit(captured, wait=True)["dropped"] == "replay"

        # The same event altered: a fresh counter gets it past the replay check, and one
        # bit flipped in its ciphertext; its tag must then fail.
        altered = bytearray(captured)
        altered[HEADER_BYTES - 8 : HEADER_BYTES] = (2**62).to_bytes(8, "big")
        altered[HEADER_BYTES + 2] ^= 0x01
        assert server.submit(bytes(altered), wait=True)["dropped"] == "altered"

        # Misrouted: an event of the button's connection pushed into db directly.
        assert server.inject(APP, "db", captured)["dropped"] == "misrouted"

    # The user's own direct event, replayed.
    dep, tool = home.tool()
    event = tool.seal(dep.connection("trigger-btn"), b"press")
    state_mod.save(home.state, dep)
    with home.node("home-hub") as hub:
        assert hub.submit(event, wait=True).get("dropped") is None
        assert hub.submit(event, wait=True)["dropped"] == "replay"

    until(lambda: home.count() == before + 1)
    time.sleep(0.3)
    assert home.count() == before + 1  # nothing was counted twice

    report = home.status()
    by_name = {c["name"]: c for c in report["connections"]}
    button = by_name["button_driver.button_pressed->controller.button_pressed"]
    assert button["dropped"].get("replay", 0) >= 1
    assert button["dropped"].get("altered", 0) >= 1
    assert by_name["trigger-btn"]["dropped"].get("replay", 0) >= 1
    db = next(m for m in report["modules"] if m["name"] == "db")
    assert db["dropped"].get("misrouted", 0) >= 1
    table = home.ok("status")
    assert "replay" in table and "altered" in table and "misrouted" in table


def test_a_malformed_event_is_one_clear_error(home: SmartHome) -> None:
    with home.node("home-hub") as hub:
        with pytest.raises(NodeError, match="not an event: event is truncated"):
            hub.submit(b"\x01garbage")
        with pytest.raises(NodeError, match="no connection with that id"):
            hub.submit(b"\x01" + os.urandom(60))
        url = f"{home.cluster.nodes['home-hub'].url}/v1/events"
        response = httpx.post(url, content=b"\xff\xfe", timeout=10)
        assert response.status_code == 401  # unsigned: refused before it is even parsed
        signed = auth.sign(
            state_mod.load_keys(home.state).deployment,
            app=APP,
            node="home-hub",
            method="POST",
            path="/v1/events",
            body=b"\xff\xfe",
        )
        response = httpx.post(url, content=b"\xff\xfe", headers={auth.HEADER: signed}, timeout=10)
        assert response.status_code == 400
        assert cbor2.loads(response.content)["error"] == "request body is not CBOR"


def _signed_statement(home: SmartHome, **change: Any) -> tuple[bytes, Any]:
    dep = state_mod.load(home.state)
    keys = state_mod.load_keys(home.state)
    db, controller = dep.module("db"), dep.module("controller")
    statement = Connect(
        APP,
        os.urandom(16),
        "input",
        "increment_presses",
        bytes.fromhex(db.key),
        Peer(bytes.fromhex(controller.measurement), bytes.fromhex(controller.key), "x", "y"),
        False,
    )
    return sign_connect(statement, change.get("key", keys.deployment)), statement


def test_a_host_that_swaps_a_peer_key_makes_the_connection_fail_closed(home: SmartHome) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, x25519

    from veritee.app.routes import End, Route

    signed, statement = _signed_statement(home)
    # The host rewrites the peer key in the statement's payload to one it controls.
    payload = cbor2.loads(cose.decode(signed).payload)
    payload["peer"]["key"] = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
    outer = cbor2.loads(signed)
    parts = list(outer.value if isinstance(outer, cbor2.CBORTag) else outer)
    parts[2] = cbor2.dumps(payload)
    swapped = cbor2.dumps(cbor2.CBORTag(18, parts) if isinstance(outer, cbor2.CBORTag) else parts)
    route = Route(
        APP, statement.conn_id, "evil", End("home-server", "controller"), End("home-server", "db")
    )
    with home.node("home-server") as server:
        with pytest.raises(NodeError, match="not signed with this application's deployment key"):
            server.connect(APP, "db", swapped, route)
        forged, _ = _signed_statement(home, key=ec.generate_private_key(ec.SECP256R1()))
        with pytest.raises(NodeError, match="not signed with this application's deployment key"):
            server.connect(APP, "db", forged, route)
        tee = server.status()["apps"][APP]["modules"]["db"]["tee"]
    assert statement.conn_id not in {c["conn"] for c in tee["connections"]}


def _another_app(home: SmartHome, app: str, binaries: dict[str, Path]) -> Path:
    """The smart home's descriptor as app ``app`` on the same nodes, with these binaries."""
    descriptor = descriptor_for(
        REPO / "examples/smart-home/app.yaml", home.cluster, binaries, home.workdir / f"{app}.yaml"
    )
    descriptor.write_text(descriptor.read_text().replace(f"app: {APP}", f"app: {app}"))
    return descriptor


def test_a_modified_controller_fails_attestation_and_is_not_connected(
    home: SmartHome, wasm: Callable[..., Path]
) -> None:
    evil = wasm("examples/smart-home/controller.c", "EVIL")
    assert measure(evil.read_bytes()) != measure(home.binaries["controller"].read_bytes())

    # A second deployment of the app on the same nodes, with the modified controller.
    descriptor = _another_app(home, "evil-home", {**home.binaries, "controller": evil})
    state = home.workdir / "evil.json"
    proc = home.cli(
        "deploy", descriptor, "--state", state, "--verifier", str(home.cluster.verifier_url)
    )
    assert proc.returncode == 10, proc.stderr
    assert "module controller not connected" in proc.stderr
    assert "not among the reference values" in proc.stderr
    assert "Traceback" not in proc.stderr
    dep = state_mod.load(state)
    assert dep.module("controller").status == "refused"
    assert dep.module("controller").attestation["status"] == "contraindicated"
    for name in ("button_driver", "led_driver", "db", "webserver"):
        assert dep.module(name).status == "connected"
    touching = [c for c in dep.connections.values() if "controller" in (c.from_module, c.to_module)]
    assert touching and all(c.status == "refused" for c in touching)

    # Swapping it into the running deployment is refused too; the genuine one runs on.
    before = home.count()
    proc = home.cli("update", "controller", evil)
    assert proc.returncode == 7, proc.stderr
    assert "the old one runs on" in proc.stderr
    home.ok("output", "trigger-btn", "press")
    until(lambda: home.count() == before + 1)
    time.sleep(0.3)
    assert home.count() == before + 1  # the EVIL build would have counted two


def test_a_verifier_that_does_not_know_the_devices_says_so(home: SmartHome) -> None:
    # A verifier of its own, told of the modules but of neither device: every module is
    # refused, for the reason the verifier gave, not as if the evidence had been swapped.
    stranger = LocalCluster(home.workdir / "stranger-verifier", names=())
    stranger.start()
    try:
        stranger.endorse((m, p.read_bytes()) for m, p in home.binaries.items())
        descriptor = _another_app(home, "stranger-home", home.binaries)
        state = home.workdir / "stranger.json"
        proc = home.cli(
            "deploy", descriptor, "--state", state, "--verifier", str(stranger.verifier_url)
        )
    finally:
        stranger.stop()
    assert proc.returncode == 10, proc.stderr
    assert "0/5 modules attested and connected" in proc.stderr
    for name in MODULES:
        reasons = state_mod.load(state).module(name).attestation["reasons"]
        assert len(reasons) == 1 and "is not a trusted CA" in reasons[0], reasons
    assert "other evidence" not in proc.stderr and "Traceback" not in proc.stderr


def _db(home: SmartHome, reported_key: bytes | None = None) -> Expected:
    """What the deployer expects of the running db, as it recorded at deploy time."""
    db = state_mod.load(home.state).module("db")
    key = bytes.fromhex(db.key) if reported_key is None else reported_key
    return Expected("db", bytes.fromhex(db.measurement), bytes.fromhex(db.config), key)


def test_a_result_about_other_evidence_than_the_agent_gave_is_refused(home: SmartHome) -> None:
    # Between the deployer and the verifier, db's evidence is swapped for the webserver's,
    # genuine and over the same nonce: the verifier affirms it, and the deployer, which
    # parsed db's, must not take that verdict for db.
    from veritee.app.attest import VerifierAppraiser
    from veritee.evidence.claims import MEDIA_TYPE

    node = home.node("home-server")
    appraiser = VerifierAppraiser(str(home.cluster.verifier_url))
    genuine_attest = appraiser.client.attest

    def swapped(build: Callable[[bytes, list[str]], Any], **kw: Any) -> str:
        def other(nonce: bytes, accept: list[str]) -> tuple[bytes, str]:
            build(nonce, accept)  # the deployer keeps the agent's evidence of db
            return node.attest(APP, "webserver", nonce), MEDIA_TYPE

        token: str = genuine_attest(other, **kw)
        return token

    appraiser.client.attest = swapped
    try:
        result = appraiser.appraise(lambda nonce: node.attest(APP, "db", nonce), _db(home))
    finally:
        appraiser.close()
    assert not result.acceptable and result.status == "contraindicated"
    assert "other evidence than the node agent gave us" in result.reason


def test_a_swapped_key_is_contraindicated_even_when_the_verdict_is_refused_anyway(
    home: SmartHome,
) -> None:
    # Accepting only "affirming", an emulated device's "warning" is refused on the verifier's
    # word; a key the agent reported falsely must still show as what it is.
    from veritee.app.attest import VerifierAppraiser

    node = home.node("home-server")
    appraiser = VerifierAppraiser(str(home.cluster.verifier_url), accept="affirming")
    try:
        result = appraiser.appraise(
            lambda nonce: node.attest(APP, "db", nonce), _db(home, reported_key=bytes(32))
        )
    finally:
        appraiser.close()
    assert (result.acceptable, result.status) == (False, "contraindicated")
    assert any(r.startswith("KeyMismatch:") for r in result.reasons), result.reasons


def test_user_commands_fail_with_one_line(home: SmartHome) -> None:
    for args, expected, code in [
        (("output", "nope", "x"), "no connection 'nope' in this deployment", 10),
        (("request", "trigger-btn"), "use 'veritee output'", 10),
        (("output", "get-presses", "x"), "use 'veritee request'", 10),
        (("call", "db", "nothing"), "module 'db' has no entry point 'nothing' (its entry", 10),
        (("call", "nobody", "press"), "no module 'nobody' in this deployment (modules: ", 10),
        (("call", "db", "get_presses"), "has no entry point 'get_presses'", 10),
        (("output", "trigger-btn", "zz", "--hex"), "ARG is not hex", 2),
        (("status", "--state", "/nonexistent/x.json"), "no deployment state at", 10),
    ]:
        proc = home.cli(*args)
        assert proc.returncode == code, (args, proc.stderr)
        assert expected in proc.stderr, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_user_commands_print_json_results_and_failures(home: SmartHome) -> None:
    before = home.count()
    sent = json.loads(home.ok("output", "trigger-btn", "press", "--json"))
    assert sent["ok"] is True and "routed" in sent and isinstance(sent["log"], str)
    until(lambda: home.count() == before + 1)
    asked = json.loads(home.ok("request", "get-presses", "--json"))
    assert asked["ok"] is True and int(asked["answer"]) == before + 1
    assert bytes.fromhex(asked["answer_hex"]).decode() == asked["answer"]
    # A failure under --json is a JSON result with the same code, and one line on stderr.
    proc = home.cli("output", "nope", "x", "--json")
    assert proc.returncode == 10 and proc.stderr.count("\n") == 1
    failure = json.loads(proc.stdout)
    assert failure["ok"] is False and failure["exit_code"] == 10
    assert failure["error_type"] == "StateError" and "no connection 'nope'" in failure["error"]


def test_status_shows_nodes_modules_and_connections(home: SmartHome) -> None:
    table = home.ok("status")
    for word in ("home-hub", "home-server", *MODULES, "trigger-btn", "connected", "warning"):
        assert word in table
    report = home.status()
    assert all(n["up"] for n in report["nodes"])
    assert {m["name"] for m in report["modules"]} == set(MODULES)
    assert all(m["running"] for m in report["modules"])


def test_names_in_node_agent_paths_cannot_escape_its_directory(home: SmartHome) -> None:
    url = home.cluster.nodes["home-hub"].url
    response = httpx.put(
        f"{url}/v1/apps/%2e%2e/modules/x", content=cbor2.dumps({"wasm": b"", "deployment_key": b""})
    )
    assert response.status_code == 400
    assert "is not a name" in cbor2.loads(response.content)["error"]


def _app_descriptor(home: SmartHome) -> Path:
    return descriptor_for(
        REPO / "examples/smart-home/app.yaml",
        home.cluster,
        home.binaries,
        home.workdir / "again.yaml",
    )


def test_a_second_deploy_from_another_state_file_is_refused_and_the_first_runs_on(
    home: SmartHome,
) -> None:
    # The attack: a second deploy of the running app from another state file (its own new
    # deployment key), which would configure the nodes over the live deployment.
    before = home.count()
    other = home.workdir / "other-state.json"
    proc = home.cli(
        "deploy", _app_descriptor(home), "--state", other, "--verifier", home.cluster.verifier_url
    )
    assert proc.returncode == NodeError.exit_code, proc.stderr
    assert "already runs on node" in proc.stderr and "another deployment key" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not other.exists() and not state_mod.keys_path(other).exists()
    # Nothing of the owner's was touched: events flow, status says connected.
    home.ok("output", "trigger-btn", "press")
    until(lambda: home.count() > before)
    assert all(m["running"] for m in home.status()["modules"])


def test_a_second_deploy_under_the_same_key_says_what_it_would_replace(home: SmartHome) -> None:
    # The attack: the same deployment key (its keys file copied) under another state file; the
    # node's gate lets the owner through, so the deploy would replace the live modules.
    import shutil

    from veritee.app.errors import AppAlreadyRunning

    other = home.workdir / "copy-state.json"
    shutil.copy(state_mod.keys_path(home.state), state_mod.keys_path(other))
    before = home.count()
    proc = home.cli(
        "deploy", _app_descriptor(home), "--state", other, "--verifier", home.cluster.verifier_url
    )
    assert proc.returncode == AppAlreadyRunning.exit_code, proc.stderr
    assert f"app '{APP}' already runs" in proc.stderr
    assert "controller" in proc.stderr and "--force" in proc.stderr
    assert not other.exists()
    home.ok("output", "trigger-btn", "press")
    until(lambda: home.count() > before)
    assert all(m["running"] for m in home.status()["modules"])


def test_force_replaces_a_running_app_under_the_same_key_and_says_what(home: SmartHome) -> None:
    # The owner, with its keys file, deploys again from another state file on purpose: with
    # --force the running modules are replaced (listed in the progress), and the app then
    # works under the new state file. The app of the other tests is not touched.
    import shutil

    app = "forced-home"
    descriptor = _another_app(home, app, home.binaries)
    first, second = home.workdir / "forced-1.json", home.workdir / "forced-2.json"
    verifier = ("--verifier", str(home.cluster.verifier_url))
    home.ok("deploy", descriptor, "--state", first, *verifier)
    shutil.copy(state_mod.keys_path(first), state_mod.keys_path(second))

    proc = home.cli("deploy", descriptor, "--state", second, "--force", *verifier)
    assert proc.returncode == 0, proc.stderr
    said = proc.stdout + proc.stderr
    assert "replacing running" in said and "controller" in said
    assert "Traceback" not in said
    dep = state_mod.load(second)
    assert all(m.status == "connected" for m in dep.modules.values())

    def count() -> int:
        return int(home.ok("request", "get-presses", "--state", second).strip())

    before = count()
    home.ok("output", "trigger-btn", "press", "--state", second)
    until(lambda: count() == before + 1)
    # The other tests' app runs on beside it.
    home.ok("output", "trigger-btn", "press")


def test_an_unreachable_verifier_stops_a_deploy_before_anything_is_loaded(
    home: SmartHome,
) -> None:
    app = "smart-home-unverified"
    other = home.workdir / "unverified-state.json"
    proc = home.cli(
        "deploy",
        _another_app(home, app, home.binaries),
        "--state",
        other,
        "--verifier",
        "http://127.0.0.1:9",  # discard port: nothing listens
    )
    assert proc.returncode == 9, proc.stderr
    assert "did not answer" in proc.stderr and "Traceback" not in proc.stderr
    assert not other.exists()
    for node in home.cluster.nodes.values():  # no node configured or loaded anything of it
        assert not (node.home / "node" / "apps" / app).exists()
