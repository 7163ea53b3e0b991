"""Observability through the real processes: /health and Prometheus /metrics of node agents
(events in and out per connection, drops by reason, link queues, module states, the secure
world's call latency) and of the secret service (releases by outcome); one JSON log schema.

Two node agents with their own devices, appraisal local (no verification service).
"""

from __future__ import annotations

import json
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import test_secrets_service
from tests.test_app_deploy import SmartHome, deploy_locally, until
from tests.test_secrets_service import SECRET, Setup
from veritee.app import state as state_mod
from veritee.app.cluster import LocalCluster
from veritee.app.errors import NodeError
from veritee.verifier import ear
from veritee.verifier.client import VerifierClient

APP = "obs"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample of ``url``/metrics, parsed by prometheus_client's own parser (which
    raises on text that is not the exposition format)."""
    response = httpx.get(f"{url}/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def bulk(
    tmp_path_factory: pytest.TempPathFactory, wasm: Callable[..., Path]
) -> Iterator[SmartHome]:
    workdir = tmp_path_factory.mktemp("obs")
    binary = wasm("tests/assets/c/app_bulk.c")
    cluster = LocalCluster(workdir / "cluster", verifier=False)
    cluster.start()
    try:
        hub, server = cluster.nodes
        yield deploy_locally(
            cluster,
            workdir,
            APP,
            {"maker": (hub, binary), "checker": (server, binary)},
            [
                {"from_module": "maker", "from_output": "out", "to_module": "checker",
                 "to_input": "in"},
                _direct("make", "maker", "to_input"),
                _direct("push", "checker", "to_input", "in"),
                _direct("seen", "checker", "to_handler"),
            ],
        )  # fmt: skip
    finally:
        cluster.stop()


def _direct(name: str, module: str, kind: str, endpoint: str | None = None) -> dict[str, Any]:
    return {"name": name, "direct": True, "to_module": module, kind: endpoint or name}


def seen(home: SmartHome) -> int:
    dep, tool = home.tool()
    answer = tool.request(dep.connection("seen"), b"")
    state_mod.save(home.state, dep)
    return int(struct.unpack("<III", answer)[0])


def urls(home: SmartHome) -> tuple[str, str]:
    hub, server = home.cluster.nodes.values()
    return hub.url, server.url


def conn_id(home: SmartHome, name: str) -> str:
    return state_mod.load(home.state).connection(name).id


def test_health_answers_on_every_node(bulk: SmartHome) -> None:
    for url in urls(bulk):
        response = httpx.get(f"{url}/health", timeout=30)
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


def test_events_in_and_out_are_counted_per_connection(bulk: SmartHome) -> None:
    hub_url, server_url = urls(bulk)
    make = conn_id(bulk, "make")
    name = next(c for c in state_mod.load(bulk.state).connections.values() if not c.direct).name
    across = conn_id(bulk, name)
    hub0, server0 = scrape(hub_url), scrape(server_url)
    before = seen(bulk)
    events = 3
    for _ in range(events):
        bulk.ok("output", "make", "--hex", struct.pack("<I", 64).hex())
    until(lambda: seen(bulk) == before + events)
    hub1, server1 = scrape(hub_url), scrape(server_url)

    def moved(a: Samples, b: Samples, conn: str, direction: str) -> float:
        name = "veritee_node_events_total"
        return value(b, name, conn=conn, direction=direction) - value(
            a, name, conn=conn, direction=direction
        )

    assert moved(hub0, hub1, make, "in") == events  # the user's events into maker
    assert moved(hub0, hub1, across, "out") == events  # maker's, sent on to the server
    assert moved(server0, server1, across, "in") == events  # ... taken into checker
    assert moved(server0, server1, across, "out") == 0
    # Every event was one call into the secure world at least (batches may join them).
    calls = "veritee_node_tee_call_seconds_count"
    assert value(hub1, calls) - value(hub0, calls) >= 1
    assert value(server1, calls) - value(server0, calls) >= 1
    # The hub's link to the server: up, nothing left queued once all arrived.
    links = [labels for (n, labels) in hub1 if n == "veritee_node_link_up"]
    assert links and all(value(hub1, "veritee_node_link_up", **dict(lb)) == 1 for lb in links)
    until(
        lambda: all(
            value(scrape(hub_url), "veritee_node_link_queued_events", **dict(lb)) == 0
            for lb in links
        )
    )
    assert value(hub1, "veritee_node_modules", state="loaded") == 1
    assert value(hub1, "veritee_node_modules", state="failed") == 0
    assert value(hub1, "veritee_node_apps") == 1


def test_an_event_the_secure_world_drops_is_counted_by_reason(bulk: SmartHome) -> None:
    _, server_url = urls(bulk)
    before = scrape(server_url)
    dep, tool = bulk.tool()
    event = tool.seal(dep.connection("push"), b"x" * 16)
    state_mod.save(bulk.state, dep)
    with bulk.node("home-server") as server:
        assert server.submit(event, wait=True).get("dropped") is None
        assert server.submit(event, wait=True)["dropped"] == "replay"  # the host replays it
        with pytest.raises(NodeError):
            server.submit(event[:1] + b"\xee" * 16 + event[17:], wait=True)  # unrouted
    after = scrape(server_url)
    dropped = "veritee_node_events_dropped_total"
    push = conn_id(bulk, "push")
    assert (
        value(after, dropped, by="secure-world", reason="replay")
        - value(before, dropped, by="secure-world", reason="replay")
        == 1
    )
    assert (
        value(after, "veritee_node_events_total", conn=push, direction="in")
        - value(before, "veritee_node_events_total", conn=push, direction="in")
        == 2
    )
    assert (
        value(after, dropped, by="agent", reason="unrouted")
        - value(before, dropped, by="agent", reason="unrouted")
        == 1
    )
    # The legitimate flow goes on after the replay.
    count = seen(bulk)
    dep, tool = bulk.tool()
    fresh = tool.seal(dep.connection("push"), b"y" * 16)
    state_mod.save(bulk.state, dep)
    with bulk.node("home-server") as server:
        assert server.submit(fresh, wait=True).get("dropped") is None
    until(lambda: seen(bulk) == count + 1)


def test_metrics_name_no_app_module_or_key(bulk: SmartHome) -> None:
    for url in urls(bulk):
        text = httpx.get(f"{url}/metrics", timeout=30).text
        for secret in (APP, "maker", "checker", "push", "seen"):
            assert secret not in text


# -- the secret service --------------------------------------------------------------------

setup = test_secrets_service.setup  # its real service, with a device and a module


def test_the_secret_service_counts_releases_by_outcome(setup: Setup) -> None:
    url = setup.service.url
    health = httpx.get(f"{url}/health", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    before = scrape(url)
    setup.release_ok()
    nonce = setup.service.challenge()
    evidence = setup.evidence(nonce)
    assert setup.service.release(nonce, evidence, "other-module").status_code == 403
    assert setup.service.release(nonce, evidence).status_code == 410  # replayed nonce
    setup.release_ok()  # the service goes on serving the legitimate client
    after = scrape(url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("veritee_secret_releases_total", outcome="released") == 2
    assert moved("veritee_secret_releases_total", outcome="policy_refused") == 1
    assert moved("veritee_secret_releases_total", outcome="nonce_used") == 1
    assert moved("veritee_secret_challenges_total", outcome="issued") == 3
    assert moved("veritee_secret_release_seconds_count") == 4
    text = httpx.get(f"{url}/metrics", timeout=30).text
    for name in ("data-key", "other-module", "by-name", SECRET.hex()):
        assert name not in text  # no secret's name, let alone its value


# -- one log schema, and the appraisal id ------------------------------------------------------

SCHEMA = {"ts", "level", "logger", "pid", "msg"}


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a service's log, each of which must be a JSON object of the schema."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    assert lines, f"{path} is empty"
    out = []
    for line in lines:
        record = json.loads(line)  # a line that is not JSON fails here
        assert isinstance(record, dict) and set(record) >= SCHEMA, line
        out.append(record)
    return out


@pytest.fixture(scope="module")
def attested(
    tmp_path_factory: pytest.TempPathFactory, wasm: Callable[..., Path]
) -> Iterator[tuple[LocalCluster, SmartHome, subprocess.CompletedProcess[str]]]:
    workdir = tmp_path_factory.mktemp("obs-verifier")
    binary = wasm("tests/assets/c/app_counter.c")
    cluster = LocalCluster(workdir / "cluster", names=("obs-node",))
    cluster.log_level = "info"
    cluster.start()
    try:
        cluster.endorse([("counter", binary.read_bytes())])
        descriptor = workdir / "app.json"
        node = cluster.nodes["obs-node"]
        descriptor.write_text(
            json.dumps(
                {
                    "app": "obs-ear",
                    "nodes": [{"name": node.name, "host": node.host, "port": node.port}],
                    "modules": [{"name": "counter", "node": node.name, "binary": str(binary)}],
                    "connections": [
                        {"name": "count", "direct": True, "to_module": "counter",
                         "to_handler": "count"}
                    ],
                }
            )
        )  # fmt: skip
        home = SmartHome(cluster, workdir / "state.json", {"counter": binary}, workdir)
        proc = home.cli("deploy", descriptor, "--verifier", str(cluster.verifier_url))
        assert proc.returncode == 0, proc.stderr
        yield cluster, home, proc
    finally:
        cluster.stop()


def test_one_appraisal_id_in_the_verifiers_log_the_ear_and_the_deployers_output(
    attested: tuple[LocalCluster, SmartHome, subprocess.CompletedProcess[str]],
) -> None:
    cluster, home, deploy = attested
    attestation = state_mod.load(home.state).module("counter").attestation
    appraisal = attestation["appraisal"]
    assert len(appraisal) == 32 and int(appraisal, 16) >= 0
    assert f"appraisal {appraisal}" in deploy.stderr  # the deployer's output
    assert cluster.verifier_url is not None
    with VerifierClient(cluster.verifier_url) as client:
        result = ear.verify(attestation["ear"], client.public_key())  # signed by the verifier
    assert result.extensions[ear.APPRAISAL_ID] == appraisal
    logged = [
        r
        for r in json_lines(cluster.workdir / "verifier.log")
        if r["msg"] == "evidence appraised" and r.get("appraisal") == appraisal
    ]
    assert len(logged) == 1 and logged[0]["outcome"] == "warning"


def test_every_service_logs_json_lines_of_one_schema(
    attested: tuple[LocalCluster, SmartHome, subprocess.CompletedProcess[str]], setup: Setup
) -> None:
    cluster, _, _ = attested
    verifier = json_lines(cluster.workdir / "verifier.log")
    node = json_lines(cluster.workdir / "obs-node.log")
    secrets = json_lines(setup.service.log)
    assert any(r["logger"].startswith("veritee.node") for r in node)
    assert any(r["logger"] == "veritee.verifier" for r in verifier)
    assert any(r["logger"] == "veritee.secrets" for r in secrets)
    for record in (*verifier, *node, *secrets):
        assert record["ts"].endswith("Z") and record["level"] in {
            "debug",
            "info",
            "warning",
            "error",
            "critical",
        }
