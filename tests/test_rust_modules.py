"""Modules written in Rust: built by `veritee build` (one .rs file with rustc, or a cargo
project) with the SDK crate sdk/rust, and run for real in the secure world.

The point is memory-safe trusted code: the examples and assets deny `unsafe` and reach every
host function through the SDK's safe API. Sealing, attestation and secrets are exercised
through a real device (and the real secret service); the Rust controller and db replace
their C twins in a deployment of the smart-home app across two node agents.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.test_app_deploy import APP, MODULES, SmartHome, deploy_trusting_homes, until
from tests.test_wasi_ra import KEY, MESSAGE, _config
from tests.test_wasm_reactor import Services, _reactor
from veritee.app import state as state_mod
from veritee.app.cluster import LocalCluster, descriptor_for
from veritee.tee.app_ta import EVENTS_OUTPUT, _pack, _records
from veritee.wasm.endpoints import Endpoint, recorded
from veritee.wasm.runtime import measure

from .conftest import REPO, Device
from .test_secrets_service import start_service

# Not about a backend's specifics: the same on an emulated and on a TPM-rooted device.
BACKENDS = ("emulated", "tpm")

RUST = REPO / "examples" / "rust"
HOSTCALLS = REPO / "tests" / "assets" / "rust" / "hostcalls.rs"
RUST_MODULES = ("controller", "db", "webserver")  # the smart-home modules with a Rust twin


def _build(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`veritee build ARGS` as a separate process."""
    return subprocess.run(
        [sys.executable, "-m", "veritee", "build", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        check=False,
    )


def _built(source: Path, out: Path, *args: str) -> Path:
    proc = _build(source, "-o", out, *args)
    assert proc.returncode == 0, proc.stderr
    return out


def _hostcalls(tmp: Path, service_key: str) -> Path:
    """The hostcalls asset with ``service_key`` (hex) compiled in, built."""
    source = tmp / "hostcalls.rs"
    source.write_text(HOSTCALLS.read_text().replace("SERVICE_KEY_PLACEHOLDER", service_key))
    return _built(source, tmp / "hostcalls.wasm")


def _storage(dev: Device, module: bytes) -> Path:
    return dev.home / "vtees" / "default" / "storage" / measure(module).hex()


# -- building ---------------------------------------------------------------------------------


def test_the_examples_write_no_unsafe_code() -> None:
    sources = [*RUST.rglob("*.rs"), *HOSTCALLS.parent.glob("*.rs")]
    assert len(sources) >= 6
    for source in sources:
        text = source.read_text()
        assert "#![deny(unsafe_code)]" in text, source  # the compiler holds the line
        assert not re.search(r"\bunsafe\b", text.replace("unsafe_code", "")), source


def test_an_app_module_records_its_endpoints(tmp_path: Path) -> None:
    controller = _built(RUST / "smart-home" / "controller.rs", tmp_path / "controller.wasm")
    assert recorded(controller.read_bytes()) == [
        Endpoint("input", "button_pressed"),
        Endpoint("output", "increment_presses"),
        Endpoint("output", "toggle_led"),
    ]
    db = _built(RUST / "smart-home" / "db.rs", tmp_path / "db.wasm")
    assert recorded(db.read_bytes()) == [
        Endpoint("handler", "get_presses"),
        Endpoint("input", "increment_presses"),
    ]


def test_a_build_does_not_depend_on_where_the_source_is(tmp_path: Path) -> None:
    # The measurement is the reference value a verifier is given: the same source must give
    # the same binary from any checkout (paths compiled in are remapped).
    elsewhere = tmp_path / "elsewhere" / "deeper"
    elsewhere.mkdir(parents=True)
    shutil.copy(RUST / "smart-home" / "db.rs", elsewhere / "db.rs")
    one = _built(RUST / "smart-home" / "db.rs", tmp_path / "one.wasm").read_bytes()
    two = _built(elsewhere / "db.rs", tmp_path / "two.wasm").read_bytes()
    assert one == two
    evil = _built(RUST / "smart-home" / "controller.rs", tmp_path / "evil.wasm", "-D", "EVIL")
    good = _built(RUST / "smart-home" / "controller.rs", tmp_path / "good.wasm")
    assert measure(evil.read_bytes()) != measure(good.read_bytes())  # -D is a cfg


def test_a_compile_error_is_one_line_naming_the_place(tmp_path: Path) -> None:
    bad = tmp_path / "bad.rs"
    bad.write_text('fn main() {\n    let x: u32 = "text";\n}\n')
    proc = _build(bad, "-o", tmp_path / "bad.wasm")
    assert proc.returncode == 8
    assert "Traceback" not in proc.stderr
    assert "error[E0308]: mismatched types" in proc.stderr
    assert "bad.rs:2:" in proc.stderr
    assert not (tmp_path / "bad.wasm").exists()


def test_a_rustc_without_the_wasm32_std_is_passed_over_with_the_packages_named(
    tmp_path: Path,
) -> None:
    # rustup's default toolchain (host std only) is what such a machine has on PATH.
    sysroot = tmp_path / "sysroot"
    (sysroot / "lib" / "rustlib" / "x86_64-unknown-linux-gnu" / "lib").mkdir(parents=True)
    fake = tmp_path / "rustc"
    fake.write_text(f"#!/bin/sh\necho {sysroot}\n")
    fake.chmod(0o755)
    proc = _build(
        RUST / "smart-home" / "db.rs", "-o", tmp_path / "db.wasm", env={"VERITEE_RUSTC": str(fake)}
    )
    assert proc.returncode == 8
    assert "Traceback" not in proc.stderr
    assert "no rustc with the wasm32-wasi standard library" in proc.stderr
    assert f"{fake} (no wasm32-wasi std in {sysroot})" in proc.stderr
    assert "apt-get install rustc libstd-rust-dev-wasm32 cargo" in proc.stderr


def test_c_only_flags_and_odd_cfgs_are_refused(tmp_path: Path) -> None:
    source = RUST / "smart-home" / "db.rs"
    proc = _build(source, "-o", tmp_path / "x.wasm", "-I", tmp_path)
    assert proc.returncode == 8 and "-I is for C sources" in proc.stderr
    proc = _build(source, "-o", tmp_path / "x.wasm", "-D", 'A="b"')
    assert proc.returncode == 8 and "is not a cfg name" in proc.stderr


def test_a_cargo_project_with_several_binaries_is_refused(tmp_path: Path) -> None:
    project = tmp_path / "two"
    shutil.copytree(RUST / "counter", project)
    (project / "src" / "bin").mkdir()
    (project / "src" / "bin" / "other.rs").write_text("fn main() {}\n")
    manifest = project / "Cargo.toml"
    sdk = (REPO / "sdk" / "rust").as_posix()
    manifest.write_text(manifest.read_text().replace("../../../sdk/rust", sdk))
    proc = _build(project, "-o", tmp_path / "x.wasm")
    assert proc.returncode == 8, proc.stderr
    assert "a module is one Wasm binary" in proc.stderr


def test_the_documented_app_module_builds(tmp_path: Path) -> None:
    docs = (REPO / "docs" / "apps.md").read_text()
    example = re.search(r"```rust\n(.*?)```", docs, re.S)
    assert example is not None
    source = tmp_path / "documented.rs"
    source.write_text(example.group(1))
    module = _built(source, tmp_path / "documented.wasm")
    assert recorded(module.read_bytes()) == [
        Endpoint("handler", "get_state"),
        Endpoint("input", "button_pressed"),
        Endpoint("output", "increment_presses"),
        Endpoint("output", "toggle_led"),
        Endpoint("request", "get_presses"),
    ]


def test_an_output_the_module_did_not_declare_does_not_compile(tmp_path: Path) -> None:
    source = tmp_path / "typo.rs"
    source.write_text(
        (RUST / "smart-home" / "controller.rs")
        .read_text()
        .replace("outputs::toggle_led,", "outputs::toggle_lde,")
    )
    proc = _build(source, "-o", tmp_path / "typo.wasm")
    assert proc.returncode == 8
    assert "cannot find value `toggle_lde` in module `outputs`" in proc.stderr


def test_a_descriptor_names_rust_sources_and_cargo_projects() -> None:
    from veritee.app import descriptor

    desc = descriptor.load(RUST / "smart-home" / "app.yaml")
    sources = {m.name: m.source for m in desc.modules}
    assert sources["db"] == RUST / "smart-home" / "db.rs"
    text = (RUST / "smart-home" / "app.yaml").read_text()
    edited = text.replace("source: db.rs", "source: ../counter/Cargo.toml")
    desc = descriptor.parse(edited, base=RUST / "smart-home")
    db = next(m for m in desc.modules if m.name == "db")
    assert db.source == RUST / "smart-home" / ".." / "counter" / "Cargo.toml"


# -- the SDK's event plumbing, called as the secure world calls it ----------------------------


def _emitted_records(services: Services) -> list[tuple[str, bytes]]:
    out = []
    for name, data in services.emitted:
        assert name.decode() == EVENTS_OUTPUT  # handed over buffered, never one by one
        out += [(export, payload) for export, payload in _records(data)]
    return out


def test_a_batch_runs_each_event_and_hands_over_what_it_emitted_once(tmp_path: Path) -> None:
    controller = _built(RUST / "smart-home" / "controller.rs", tmp_path / "controller.wasm")
    services = Services()
    reactor = _reactor(controller, services)
    press = ("veritee_input_button_pressed", b"")
    batch = _pack([press, ("veritee_input_no_such_endpoint", b"x"), press, press])
    reactor.call("veritee_batch", batch)
    assert len(services.emitted) == 1
    assert _emitted_records(services) == [("toggle_led", b""), ("increment_presses", b"")] * 3

    # A hostile batch: a record that claims more bytes than there are ends the batch, and
    # the SDK reads nothing outside it (safe slices, no pointer arithmetic of its own).
    services.emitted.clear()
    hostile = _pack([press]) + (0xFFFFFFF0).to_bytes(4, "little") + b"veritee_input_button"
    reactor.call("veritee_batch", hostile)
    reactor.call("veritee_batch", b"\x01\x00")
    reactor.call("veritee_input_button_pressed", b"")  # a single event, as deliver() calls it
    assert _emitted_records(services) == [("toggle_led", b""), ("increment_presses", b"")] * 2


def test_a_cargo_project_builds_offline_and_says_so_for_a_crates_io_dependency(
    tmp_path: Path,
) -> None:
    project = tmp_path / "deps"
    shutil.copytree(RUST / "counter", project)
    (project / "Cargo.lock").unlink()
    manifest = project / "Cargo.toml"
    sdk = (REPO / "sdk" / "rust").as_posix()
    text = manifest.read_text().replace("../../../sdk/rust", sdk)
    manifest.write_text(text + 'serde = "1"\n')
    proc = _build(project, "-o", tmp_path / "x.wasm")
    assert proc.returncode == 8
    assert "Traceback" not in proc.stderr
    assert "cargo failed on" in proc.stderr and "offline" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


class _AppServices(Services):
    """Services that also take answers and answer requests (lookup -> its data reversed)."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[bytes] = []
        self.requests: list[tuple[bytes, bytes]] = []

    def respond(self, data: bytes) -> bytes:
        self.answers.append(data)
        return b""

    def request(self, name: bytes, data: bytes) -> bytes:
        self.requests.append((name, data))
        return data[::-1]


def test_every_endpoint_kind_runs_as_the_secure_world_calls_it(tmp_path: Path) -> None:
    module = _built(REPO / "tests" / "assets" / "rust" / "app_kinds.rs", tmp_path / "kinds.wasm")
    assert {e.kind for e in recorded(module.read_bytes()) or []} == {
        "output",
        "request",
        "input",
        "handler",
        "entry",
        "public",
    }
    services = _AppServices()
    reactor = _reactor(module, services)
    reactor.call("veritee_entry_press", b"one")
    assert services.emitted == [(EVENTS_OUTPUT.encode(), _pack_events([b"one", b"second"]))]
    services.emitted.clear()
    reactor.call("veritee_handler_echo", b"hi")
    reactor.call("veritee_public_page", b"abc")
    assert services.answers == [b"echo:hi", b"looked up:cba"]
    assert services.requests == [(b"lookup", b"abc")]
    assert _emitted_records(services) == [("pressed", b"before the request")]
    services.emitted.clear()
    services.answers.clear()
    batch = _pack([("veritee_input_event", b"1"), ("veritee_handler_echo", b"2")])
    reactor.call("veritee_batch", batch)
    assert _emitted_records(services) == [("pressed", b"event:1")]
    assert services.answers == [b"echo:2"]


def _pack_events(payloads: list[bytes]) -> bytes:
    return _pack([("pressed", p) for p in payloads])


# -- running in the secure world --------------------------------------------------------------


# Restarts the secure world, which a TPM device does once per platform reset only.
@pytest.mark.emulated_backend
def test_the_rust_counter_is_sealed_and_survives_restarts(
    fresh_device: Device, tmp_path: Path
) -> None:
    counter = _built(RUST / "counter", tmp_path / "counter.wasm")  # the cargo project
    assert "count = 1" in fresh_device.ok("run", counter)
    assert "count = 2" in fresh_device.ok("run", counter)
    fresh_device.stop()
    fresh_device.start()
    assert "count = 3" in fresh_device.ok("run", counter)

    # The host that keeps the file alters it: the module refuses instead of starting over.
    path = _storage(fresh_device, counter.read_bytes()) / "counter.sealed"
    good = path.read_bytes()
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 0x80]))
    proc = fresh_device.cli("run", counter)
    assert proc.returncode == 1
    assert b"cannot be unsealed" in proc.stderr and b"count =" not in proc.stdout

    # Another module (the C counter, same file name) is handed the Rust counter's state.
    c_counter = tmp_path / "c-counter.wasm"
    _built(REPO / "examples" / "counter" / "counter.c", c_counter)
    theirs = _storage(fresh_device, c_counter.read_bytes())
    theirs.mkdir(parents=True, exist_ok=True)
    (theirs / "counter.sealed").write_bytes(good)
    proc = fresh_device.cli("run", c_counter)
    assert proc.returncode == 1 and b"cannot be unsealed" in proc.stderr

    path.write_bytes(good)  # the owner's state is intact: put back, it counts on
    assert "count = 4" in fresh_device.ok("run", counter)


def test_every_host_function_is_reached_through_the_safe_api(
    device: Device, tmp_path: Path
) -> None:
    # A well-formed service key, but this run is wired to no secret service.
    module = _hostcalls(tmp_path, device.ok("secrets", "key", "--state", tmp_path / "st").strip())
    out = device.ok("run", module, "--", "identity")
    assert f"measurement {measure(module.read_bytes()).hex()}" in out
    evidence = re.search(r"evidence (\d+) bytes", out)
    assert evidence and int(evidence.group(1)) > 1000
    assert "short nonce: argument outside the module's memory or out of range" in out
    assert "sealed 42 bytes" in out  # 13 + SEAL_OVERHEAD
    assert 'unsealed "the plaintext"' in out
    assert "tampered: sealed data was altered or sealed by another module or TEE (Unseal)" in out
    assert "truncated: Unseal" in out
    proc = device.cli("run", module, "--", "secret", "/nowhere")
    assert proc.returncode == 1
    assert b"no key: the normal world could not relay the request" in proc.stderr


@pytest.fixture
def rust_secret_module(tmp_path: Path, device: Device) -> Iterator[tuple[str, Path, Path]]:
    service_key = device.ok("secrets", "key", "--state", tmp_path / "state").strip()
    module = _hostcalls(tmp_path, service_key)
    data = tmp_path / "data"
    data.mkdir()
    iv = os.urandom(12)
    (data / "msg.enc").write_bytes(iv + AESGCM(KEY).encrypt(iv, MESSAGE, None))
    config = _config(tmp_path, device, [measure(module.read_bytes()).hex()])
    svc = start_service(device.home, config, tmp_path / "state")
    try:
        yield svc.url, module, data
    finally:
        svc.stop()


# The secret service trusts the emulated device's CA (TPM: tests/test_tpm_device.py).
@pytest.mark.emulated_backend
def test_a_rust_module_receives_a_secret_and_decrypts(
    device: Device, rust_secret_module: tuple[str, Path, Path], tmp_path: Path
) -> None:
    url, module, data = rust_secret_module
    args = ("run", "--attest-to", url, "--dir", f"{data}::/in")
    proc = device.cli(*args, module, "--", "secret", "/in/msg.enc")
    assert proc.returncode == 0, proc.stderr
    assert MESSAGE in proc.stdout
    # A module the policy does not name (the same code, another build) gets nothing.
    other = tmp_path / "other.wasm"
    other.write_bytes(module.read_bytes() + b"\x00\x05\x04test")  # a custom section
    proc = device.cli(*args, other, "--", "secret", "/in/msg.enc")
    assert proc.returncode == 1
    assert b"no key: the secret service refused" in proc.stderr
    assert MESSAGE not in proc.stdout


# -- the smart home with Rust modules ---------------------------------------------------------


@pytest.fixture(scope="module")
def rust_home(
    tmp_path_factory: pytest.TempPathFactory, wasm: Callable[..., Path]
) -> Iterator[SmartHome]:
    workdir = tmp_path_factory.mktemp("smart-home-rust")
    binaries = {m: wasm(f"examples/smart-home/{m}.c") for m in MODULES if m not in RUST_MODULES}
    cluster = LocalCluster(workdir / "cluster", verifier=False, poll_us=0)
    cluster.start()
    try:
        descriptor = descriptor_for(
            RUST / "smart-home" / "app.yaml", cluster, binaries, workdir / "app.yaml"
        )
        # The Rust modules stay sources: the deployer builds them (sources are relative to
        # the descriptor, which now lives in workdir).
        data = yaml.safe_load(descriptor.read_text())
        for module in data["modules"]:
            if module["name"] in RUST_MODULES:
                assert module["source"] == f"{module['name']}.rs"
                module["source"] = str(RUST / "smart-home" / module["source"])
        descriptor.write_text(yaml.safe_dump(data, sort_keys=False))
        for name in RUST_MODULES:
            binaries[name] = _built(RUST / "smart-home" / f"{name}.rs", workdir / f"{name}.wasm")
        sh = deploy_trusting_homes(cluster, descriptor, binaries, workdir)
        yield sh
    finally:
        cluster.stop()


def test_rust_modules_replace_their_c_twins_in_the_smart_home(rust_home: SmartHome) -> None:
    dep = state_mod.load(rust_home.state)
    for name in MODULES:
        m = dep.module(name)
        assert m.status == "connected", m.reason
        # What the deployer built from the Rust sources is what `veritee build` makes.
        assert m.measurement == measure(rust_home.binaries[name].read_bytes()).hex()
    assert all(c.status == "connected" for c in dep.connections.values())

    led_before = rust_home.led()
    for _ in range(3):
        rust_home.ok("output", "trigger-btn", "press")  # C button -> Rust controller
    until(lambda: rust_home.count() == 3)  # Rust controller -> Rust db, sealed count
    page = rust_home.http()  # anyone -> Rust webserver (public) -> request -> Rust db
    assert (page.status_code, page.text) == (200, "3\n")
    assert page.headers["x-web-version"] == "1"
    flipped = {"on": "off", "off": "on"}
    until(lambda: rust_home.led() == flipped[led_before])  # Rust controller -> C LED


def test_hostile_http_to_the_rust_webserver_is_answered_and_changes_nothing(
    rust_home: SmartHome,
) -> None:
    # Anyone can send the public endpoint anything; the Rust code only reads it through
    # checked slices, answers, and keeps running.
    url = rust_home.cluster.nodes["home-server"].url
    public = f"{url}/v1/public/{APP}/webserver/http"
    count = str(rust_home.count())
    for junk in (b"", b"GET /presses", os.urandom(4096), b"\xff" * 700_000):
        response = httpx.post(public, content=junk, timeout=30)
        assert response.status_code == 404, response.text
        response = httpx.request("GET", f"{public}/presses", content=junk, timeout=30)
        assert (response.status_code, response.text) == (200, f"{count}\n")
    assert httpx.get(f"{public}/presses%00%ff/../x", timeout=30).status_code == 404
    assert rust_home.http("/other").status_code == 404
    assert rust_home.http().status_code == 200
    assert rust_home.http().text.strip() == str(rust_home.count())


def test_the_rust_db_keeps_its_sealed_count_across_a_node_restart(rust_home: SmartHome) -> None:
    rust_home.ok("output", "trigger-btn", "press")
    until(lambda: rust_home.count() >= 1)
    before = rust_home.count()
    rust_home.cluster.kill_node("home-server", tee=True)
    rust_home.cluster.start_node("home-server")
    until(lambda: rust_home.cli("request", "get-presses").returncode == 0, timeout=60)
    assert rust_home.count() == before  # unsealed from /data by the same binary
    assert rust_home.http().status_code == 503  # the restarted webserver waits to be started
    rust_home.ok("output", "init-server", "start")
    rust_home.ok("output", "trigger-btn", "press")
    until(lambda: rust_home.count() == before + 1)
    assert rust_home.http().text.strip() == str(before + 1)
