"""The distributed demo, narrated: the smart home of the Authentic Execution talk (FOSDEM 2021).

Two nodes on this machine, each with its own emulated device and secure world, and a
verification service; five modules deployed, attested and connected; the button pressed
N times, the count read over HTTP; then the attacks an untrusted host could try, failing.
"""

from __future__ import annotations

import os
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path

from rich.panel import Panel
from rich.table import Table

from veritee import servicetls
from veritee.app import changes
from veritee.app import descriptor as desc_mod
from veritee.app import state as state_mod
from veritee.app.client import NodeClient
from veritee.app.cluster import LocalBroker, LocalCluster, descriptor_for
from veritee.app.deployer import Deployer, Step
from veritee.app.errors import AppError
from veritee.app.status import collect
from veritee.app.user import UserTool
from veritee.console import console as make_console
from veritee.console import rule
from veritee.errors import Error
from veritee.tee.channels import HEADER_BYTES
from veritee.wasm.build import build, sdk_dir

console = make_console(highlight=False)
MODULES = ("button_driver", "led_driver", "controller", "db", "webserver")
PRESSES = 5
APP = "smart-home"
WAIT = 20.0  # seconds for events to cross nodes (they take milliseconds)


def _step(n: int, title: str) -> None:
    console.print()
    rule(console, f"[bold cyan]{n}. {title}")


def _ok(text: str) -> None:
    console.print(f"  [green]✔[/] {text}")


def _refused(text: str, why: str) -> None:
    console.print(f"  [red]✘[/] {text}\n      [dim]→ {why}[/]")


def _until(check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def _progress(step: Step) -> None:
    if step.state == "start":
        return
    mark = "[green]✔[/]" if step.state == "done" else "[red]✘[/]"
    detail = f" [dim]{step.detail}[/]" if step.detail else ""
    console.print(f"  {mark} {step.step:8} {step.what}{detail}")


def run(workdir: Path, presses: int = PRESSES, *, nats: bool = False) -> None:
    """Run the whole story in ``workdir`` (replaced); raise Error if any step goes wrong.
    ``nats``: the node agents exchange events through a NATS JetStream broker the demo
    starts (nats-server), not over direct links."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    examples = sdk_dir().parent / "examples" / "smart-home"
    console.print(
        Panel.fit(
            "[bold]Veritee[/]: one event-driven app across attested modules on several nodes.\n"
            "The smart home of the Authentic Execution talk (FOSDEM 2021): a button and an LED\n"
            "on one node; a controller, a database and a web server on another. The node\n"
            "agents between them are [bold]untrusted[/]: they carry sealed events, hold no key.",
            border_style="cyan",
        )
    )

    _step(1, "Build the five modules from C (and a tampered controller)")
    binaries: dict[str, Path] = {}
    for name in MODULES:
        out = workdir / "modules" / f"{name}.wasm"
        size = build(examples / f"{name}.c", out)
        binaries[name] = out
        _ok(f"{name:14} {size:>7} bytes")
    evil = workdir / "modules" / "controller-evil.wasm"
    build(examples / "controller.c", evil, defines=["EVIL"])
    _ok("controller-evil.wasm: the same controller, built to count every press twice")

    _step(2, "Start a verifier and two nodes, each with its own device and secure world")
    # Every service speaks TLS 1.3, with one certificate for this host that the demo's
    # clients (deployer, user) trust; every request to a node is signed by the app's owner.
    tls = servicetls.make_self_signed(workdir / "tls", ["127.0.0.1", "localhost"])
    os.environ[servicetls.CA_ENV] = str(tls.cert)
    broker = LocalBroker(workdir / "nats" / "store").start() if nats else None
    cluster = LocalCluster(
        workdir / "cluster",
        tls=(tls.cert, tls.key),
        transport=None if broker is None else broker.url,
    )
    t0 = time.monotonic()
    try:
        cluster.start()
        if broker is not None:
            _ok(
                f"broker       nats-server (JetStream) at {broker.url}: untrusted like the "
                "agents, it stores and forwards sealed events"
            )
        for node in cluster.nodes.values():
            _ok(f"{node.name:12} agent {node.url}, events on port {node.events[1]}")
        _ok(f"verifier     {cluster.verifier_url} trusts both devices' CAs and boot values")
        _ok(f"all over TLS 1.3: clients trust {tls.cert.name} (SHA-256 {tls.fingerprint[:23]}…)")
        cluster.endorse((name, binaries[name].read_bytes()) for name in MODULES)
        _ok("the app owner endorsed the five genuine modules (not the tampered one)")
        _ok(f"up in {time.monotonic() - t0:.1f} s")
        _story(workdir, cluster, binaries, evil, examples, presses)
    finally:
        cluster.stop()
        if broker is not None:
            broker.stop()
    console.print()
    console.print(
        Panel.fit(
            "[bold green]Done.[/] Every module was attested before it was connected; the\n"
            "untrusted hosts could neither replay, alter nor misroute an event, nor sneak\n"
            "in a modified module.",
            border_style="green",
        )
    )


def _story(
    workdir: Path,
    cluster: LocalCluster,
    binaries: dict[str, Path],
    evil: Path,
    examples: Path,
    presses: int,
) -> None:
    state = workdir / "deployment.json"

    _step(3, "Deploy: load, attest (through the verifier), then connect")
    descriptor = descriptor_for(examples / "app.yaml", cluster, binaries, workdir / "app.yaml")
    dep = Deployer(state, progress=_progress, verifier=cluster.verifier_url).deploy(
        desc_mod.load(descriptor)
    )
    t = dep.timings
    _ok(
        f"deployed in {sum(t.values()):.2f} s (load {t['load']:.2f}, attest {t['attest']:.2f}, "
        f"connect {t['connect']:.2f}); each connection's key was agreed by its two secure "
        "worlds: the deployer never held one"
    )
    table = Table(show_edge=False, pad_edge=False)
    for col in ("module", "node", "measurement", "attestation"):
        table.add_column(col)
    for m in dep.modules.values():
        att = m.attestation
        table.add_row(
            m.name, m.node, m.measurement[:16] + "…", f"{att['status']} ({att['lifecycle']})"
        )
    console.print(table)
    console.print(
        "  [dim]'warning': the verifier's policy accepts an emulated TEE, and says so.[/]"
    )

    def tool() -> tuple[state_mod.Deployment, UserTool]:
        d = state_mod.load(state)
        return d, UserTool(d, state_mod.load_keys(state))

    def send(conn: str, payload: bytes = b"") -> None:
        d, user = tool()
        try:
            user.send(d.connection(conn), payload)
        finally:
            state_mod.save(state, d)

    def ask(conn: str) -> str:
        d, user = tool()
        try:
            return user.request(d.connection(conn), b"").decode()
        finally:
            state_mod.save(state, d)

    server = cluster.nodes["home-server"]
    page = f"{server.url}/v1/public/{APP}/webserver/http/presses"

    def count_over_http() -> int:
        import httpx

        return int(httpx.get(page, timeout=30, verify=servicetls.client_verify()).text)

    _step(4, f"Drive it: start the web server, press the button {presses} times")
    send("init-server", b"start")
    _ok("user → webserver.init (a direct connection: the user's tool holds its own key)")
    t0 = time.perf_counter()
    for _ in range(presses):
        send("trigger-btn", b"press")
    _ok(f"{presses} presses: user → button_driver → controller → led_driver, db")
    if not _until(lambda: count_over_http() == presses):
        raise AppError(f"the count did not reach {presses}")
    elapsed = time.perf_counter() - t0
    _ok(f"GET {page} → [bold]{count_over_http()}[/] ({elapsed * 1000:.0f} ms for all presses)")
    led = ask("led-state")
    expected = "on" if presses % 2 else "off"
    if led != expected:
        raise AppError(f"the LED is {led}, expected {expected} after {presses} presses")
    _ok(f"the LED is [bold]{led}[/]: {presses} toggles from off")

    _step(5, "Attacks by an untrusted host")
    captured = _captured(cluster.nodes["home-hub"].home / "node")
    # The demo plays the host through the agent's API, which takes only the app's owner: it
    # signs as the owner here (a real host reaches its secure world directly).
    owner = state_mod.load_keys(state).deployment
    with NodeClient(server.url, name=server.name, app=APP, key=owner) as srv:
        why = srv.submit(captured, wait=True).get("dropped")
        _refused(
            "the hub's host replays a button_pressed event it carried (sealed, kept on its disk)",
            f"controller's secure world: {why} (its counter is not above the last accepted)",
        )
        altered = bytearray(captured)
        altered[HEADER_BYTES - 8 : HEADER_BYTES] = (2**62).to_bytes(8, "big")
        altered[HEADER_BYTES + 1] ^= 0x01
        why = srv.submit(bytes(altered), wait=True).get("dropped")
        _refused(
            "…then alters it (a fresh counter, one bit of the payload flipped)",
            f"controller's secure world: {why} (the AEAD tag does not verify)",
        )
        why = srv.inject(APP, "db", captured).get("dropped")
        _refused(
            "…then pushes it into db instead",
            f"db's secure world: {why} (db has no such connection)",
        )
    if count_over_http() != presses:
        raise AppError("an attack changed the count")
    _ok(f"the count is still {presses}")

    try:
        changes.update(Deployer(state, progress=_progress), "controller", evil)
        raise AppError("the tampered controller was accepted")
    except Error as exc:
        _refused("swap in the tampered controller (veritee update)", str(exc))
    send("trigger-btn", b"press")
    if not _until(lambda: count_over_http() == presses + 1):
        raise AppError("the genuine controller stopped counting")
    _ok(f"the genuine controller runs on: one more press, count {presses + 1}")

    _step(6, "What the node agents counted")
    report = collect(state_mod.load(state), state_mod.load_keys(state).deployment)
    table = Table(show_edge=False, pad_edge=False)
    for col in ("connection / module", "dropped by its secure world"):
        table.add_column(col)
    for c in report["connections"]:
        if c["dropped"]:
            table.add_row(c["name"], ", ".join(f"{k} {v}" for k, v in c["dropped"].items()))
    for m in report["modules"]:
        if m["dropped"]:
            table.add_row(m["name"], ", ".join(f"{k} {v}" for k, v in m["dropped"].items()))
    console.print(table)


def _captured(node_dir: Path) -> bytes:
    """The newest event the hub's agent keeps in its outbox (a direct link's, or the
    broker's, whose records carry the subject too)."""
    direct = sorted((node_dir / "outbox").glob("*.spool"))
    if direct:
        return _last_record(direct[0])
    from veritee.app._nats_wire import read_outbox_record

    for spool in sorted(node_dir.rglob("outbox.spool")):
        return read_outbox_record(_last_record(spool))[1]
    raise AppError(f"{node_dir} keeps no outbox to replay an event from")


def _last_record(path: Path) -> bytes:
    """The newest record of a node agent's spool file: bytes its host can read and replay."""
    data, i, last = path.read_bytes(), 0, b""
    while i + 12 <= len(data):
        _, size = struct.unpack_from(">QI", data, i)
        last = data[i + 12 : i + 12 + size]
        i += 12 + size
    if not last:
        raise AppError(f"{path} holds no event to replay")
    return last


if __name__ == "__main__":  # python -m veritee.app.demo [WORKDIR]
    import sys

    try:
        run(Path(sys.argv[1] if len(sys.argv) > 1 else "out/app-demo").resolve())
    except Error as exc:
        console.print(f"[red]demo failed:[/] {exc}")
        sys.exit(exc.exit_code)
