"""``veritee demo``: a narrated tour, from a provisioned device to appraised evidence.

Builds the example modules from C, provisions an emulated device, boots its secure world,
runs a module inside it, has it attested over a fresh nonce and appraised, then shows the
attacks that must fail: a replayed token, a modified module, tampered evidence, and sealed
data moved to another module.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from rich.panel import Panel
from rich.table import Table

from veritee.console import console as make_console
from veritee.console import rule
from veritee.errors import Error, EvidenceError, ModuleError, SealingError, SecureWorldError
from veritee.evidence.appraisal import ReferenceValues, TrustAnchors, appraise
from veritee.home import Home
from veritee.tee import client as teec
from veritee.tee import device, monitor
from veritee.tee.ta import WasmSession
from veritee.wasm.build import build, sdk_dir
from veritee.wasm.runtime import measure

console = make_console(highlight=False)


def _step(n: int, title: str) -> None:
    console.print()
    rule(console, f"[bold cyan]{n}. {title}")


def _ok(text: str) -> None:
    console.print(f"  [green]✔[/] {text}")


def _refused(text: str, err: BaseException) -> None:
    console.print(f"  [red]✘[/] {text}\n      [dim]→ {type(err).__name__}: {err}[/]")


def run(workdir: Path) -> None:
    examples = sdk_dir().parent / "examples"
    home = Home(workdir / "home")
    modules = workdir / "modules"
    console.print(
        Panel.fit(
            "[bold]Veritee[/]: WebAssembly modules inside a TEE that prove what they are.\n"
            "This tour uses the [bold]emulated[/] TEE backend (a separate secure-world process);\n"
            "its evidence says so honestly, and a verifier's policy decides if that is enough.",
            border_style="cyan",
        )
    )

    _step(1, "Build modules from C (clang, wasm32-wasi)")
    built = {}
    for name, src in (("hello", "hello/hello.c"), ("counter", "counter/counter.c")):
        out = modules / f"{name}.wasm"
        size = build(examples / src, out)
        built[name] = out
        _ok(f"{name}.wasm  {size:>7} bytes  measurement {measure(out.read_bytes()).hex()[:32]}…")

    _step(2, "Provision an emulated device (the factory's job)")
    with _stopped(home):
        info = device.provision(home, force=True)
    _ok(f"manufacturer CA, HUK and device attestation key created in {home.root}")
    _ok(f"device certificate: {info.certificate.subject.rfc4514_string()}")
    _ok("boot manifest signed by the vendor key over the secure world as installed")

    _step(3, "Boot the secure world: measured boot, then secure boot checks")
    t0 = time.monotonic()
    monitor.start_daemon(home)
    status = monitor.control(home, {"op": "status"})["status"]
    table = Table(show_edge=False, pad_edge=False)
    for col in ("stage", "version", "measurement", "vendor-signed"):
        table.add_column(col)
    for e in status["boot_log"]:
        table.add_row(e[1], e[4] or "-", e[2].hex()[:32] + "…", "yes" if e[3] else "no")
    console.print(table)
    _ok(f"booted in {time.monotonic() - t0:.2f} s; lifecycle [bold]{status['lifecycle']}[/]")

    try:
        _tour(home, built)
    finally:
        monitor.control(home, {"op": "stop"})
        deadline = time.monotonic() + 20
        while home.monitor_socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    console.print()
    console.print(
        Panel.fit(
            "[bold green]Tour complete.[/] Every attack above was refused.", border_style="green"
        )
    )


def _tour(home: Home, built: dict[str, Path]) -> None:
    hello = built["hello"].read_bytes()

    _step(4, "Run a module inside the secure world")
    with teec.Context(home=home) as ctx:
        session = WasmSession(ctx)
        info = session.load(hello, name="hello")
        result = session.run(["from", "the", "demo"], [("WHERE", "secure world")])
    for line in result.stdout.decode().splitlines():
        console.print(f"  [dim]│[/] {line}")
    _ok(f"exit code {result.exit_code}; measured {info['measurement'].hex()[:32]}…")

    _step(5, "Remote attestation: a verifier's fresh nonce → evidence → appraisal")
    nonce = os.urandom(32)
    with teec.Context(home=home) as ctx:
        session = WasmSession(ctx)
        session.load(hello, name="hello")
        evidence = session.attest(nonce)
    _ok(f"verifier nonce {nonce.hex()[:32]}…")
    _ok(f"evidence: platform token (device key) → vtee token → module token, {len(evidence)} B")
    anchors = TrustAnchors.from_pem((home.manufacturer / "ca.pem").read_bytes())
    refs = ReferenceValues.from_json(
        json.loads((home.manufacturer / "reference-values.json").read_text())
    ).merge(ReferenceValues({}, {measure(hello): "hello"}))
    verified = appraise(evidence, anchors, refs, nonce=nonce)
    _ok(
        f"appraised: certificate chain, 3 signatures, key bindings, nonce, boot measurements "
        f"and module measurement all check out (lifecycle {verified.lifecycle!r})"
    )

    _step(6, "Attacks that must fail")
    _must_fail(
        "replaying that evidence to answer a new challenge",
        lambda: appraise(evidence, anchors, refs, nonce=os.urandom(32)),
    )
    tampered = bytearray(evidence)
    tampered[-40] ^= 0x01
    _must_fail(
        "one bit flipped in the evidence",
        lambda: appraise(bytes(tampered), anchors, refs, nonce=nonce),
    )
    modified = hello + b"\x00\x06\x04evil!"  # a custom section: same code, other bytes
    with teec.Context(home=home) as ctx:
        session = WasmSession(ctx)
        session.load(modified, name="hello")
        evil = session.attest(nonce)
    _must_fail(
        "a modified hello.wasm presenting itself as hello",
        lambda: appraise(evil, anchors, refs, nonce=nonce),
    )

    _step(7, "Sealed storage: state only this module on this device can open")
    counter = built["counter"].read_bytes()
    for _ in range(2):
        console.print(f"  [dim]│[/] {_run(home, counter)[0]}")
    monitor.control(home, {"op": "stop"})
    while home.monitor_socket.exists():
        time.sleep(0.05)
    monitor.start_daemon(home)
    _ok("secure world restarted")
    console.print(f"  [dim]│[/] {_run(home, counter)[0]}")
    storage = home.vtee("default") / "storage"
    other = counter + b"\x00\x06\x04evil!"
    dst = storage / measure(other).hex()
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(storage / measure(counter).hex() / "counter.sealed", dst / "counter.sealed")
    line, code = _run(home, other, check=False)
    console.print(f"  [dim]│[/] {line}")
    if code == 0:
        raise SealingError("demo: a modified counter opened the original's sealed state")
    console.print(f"  [red]✘[/] another module given the sealed file: refused (exit {code})")


def _must_fail(what: str, attack: Any) -> None:
    try:
        attack()
    except EvidenceError as err:
        _refused(what, err)
        return
    raise SecureWorldError(f"demo: the attack '{what}' was not refused")


def _run(
    home: Home,
    module: bytes,
    *,
    check: bool = True,
) -> tuple[str, int]:
    with teec.Context(home=home) as ctx:
        session = WasmSession(ctx)
        session.load(module, name="counter")
        result = session.run([])
    if check and result.exit_code != 0:
        raise ModuleError(f"demo: counter failed: {result.stderr.decode().strip()}")
    text = (result.stdout or result.stderr).decode().strip().splitlines()
    return (text[0] if text else "(no output)"), result.exit_code


class _stopped:
    """Stop a secure world left running in ``home`` by an earlier demo."""

    def __init__(self, home: Home) -> None:
        self.home = home

    def __enter__(self) -> None:
        if self.home.monitor_socket.exists():
            try:
                monitor.control(self.home, {"op": "stop"}, timeout=5)
                while self.home.monitor_socket.exists():
                    time.sleep(0.05)
            except Error:
                self.home.monitor_socket.unlink(missing_ok=True)

    def __exit__(self, *exc: object) -> None:
        return None
