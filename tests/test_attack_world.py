"""Issue 18, attacks 6 and 7: the secure world's processes and its boundary, attacked for real.

6. The normal-world user who starts the secure world controls the environment and the
   directory it starts in: code on ``PYTHONPATH`` (a ``sitecustomize``) or in the current
   directory must not run in the monitor, a vTEE or a worker; the boot log must cover the
   interpreter and the packages that do run; and an AOT artifact written under another boot
   (by injected code, or with the key of an older boot) must never verify.
7. Any local process that can reach a vTEE's socket may open connections that declare huge
   frames and then idle: the vTEE must buffer only what arrived, within a budget, and drop
   idle partial frames, while a legitimate client keeps working.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import wasmtime

from veritee.errors import BootError
from veritee.home import Home
from veritee.tee import boot, keys, monitor, protocol, spawn, vtees
from veritee.tee.device import HUK
from veritee.tee.ta import WasmSession
from veritee.wasm.runtime import Compiler, measure, new_engine

from .conftest import CLI_TIMEOUT, Device

# Not about a backend's specifics: the same on an emulated and on a TPM-rooted device.
BACKENDS = ("emulated", "tpm")

HANG_BOUND = 60.0  # seconds; generous on a shared 2-core machine, catches a hang only

# What code planted by the caller does when it runs: leave a marker naming the process.
_MARKER = """
import os, sys
argv = " ".join(getattr(sys, "orig_argv", sys.argv))
if "veritee.tee." in argv:
    with open(os.path.join({markers!r}, "{how}-%d" % os.getpid()), "w") as f:
        f.write(argv)
"""

# A module in the current directory that shadows cbor2 (imported by every secure-world
# process), leaves its marker, then hands over to the real cbor2 so nothing else changes.
_SHADOW = (
    _MARKER
    + """
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
del sys.modules[__name__]
import cbor2 as _real
sys.modules[__name__] = _real
"""
)

_POISON_WAT = b"""
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "poisoned artifact ran\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 22))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


def _cli(
    dev: Device, *args: str | Path, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "veritee", "--home", str(dev.home), *map(str, args)],
        env=env,
        cwd=cwd,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def test_code_planted_by_the_caller_does_not_run_in_the_secure_world(
    tmp_path: Path, wasm: Callable[..., Path]
) -> None:
    hello = wasm("examples/hello/hello.c")
    dev = Device(tmp_path / "home")
    dev.ok("device", "init")
    markers = tmp_path / "markers"
    markers.mkdir()
    planted = tmp_path / "planted"  # on the caller's PYTHONPATH
    planted.mkdir()
    (planted / "sitecustomize.py").write_text(
        _MARKER.format(markers=str(markers), how="sitecustomize")
    )
    cwd = tmp_path / "cwd"  # where the caller stands when it starts the secure world
    cwd.mkdir()
    (cwd / "cbor2.py").write_text(_SHADOW.format(markers=str(markers), how="cwd"))
    env = {
        **os.environ,
        "PYTHONPATH": str(planted),
        "VERITEE_INJECTED": "1",
        "LD_PRELOAD": str(planted / "missing.so"),  # the loader only warns it is missing
    }
    started = _cli(dev, "tee", "start", env=env, cwd=cwd)
    try:
        assert started.returncode == 0, started.stderr
        ran = _cli(dev, "run", hello, "--", "still", "works", env=env, cwd=cwd)
        assert ran.returncode == 0, ran.stderr
        assert b"still" in ran.stdout
        status = json.loads(dev.ok("tee", "status", "--json"))
        monitor_pid = int(status["monitor"]["pid"])
        vtee_pid = int(status["monitor"]["vtees"]["default"]["pid"])
        processes = [monitor_pid, vtee_pid, *_children(vtee_pid)]  # with the warm workers
        assert len(processes) > 2
        for pid in processes:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            names = {entry.partition(b"=")[0] for entry in environ if entry}
            assert names <= {b"PATH", b"LC_CTYPE"}, (pid, names)
            assert b"-I" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert os.readlink(f"/proc/{pid}/cwd") == "/"
    finally:
        dev.stop()
    # The planted code ran in the normal world (the CLI), which is the caller's own business;
    # in no monitor, vTEE or worker process.
    assert sorted(p.read_text() for p in markers.iterdir()) == []
    measured = {entry["component"] for entry in status["monitor"]["boot_log"]}
    assert {"interpreter", "python-libraries", "secure-world", "wasm-runtime"} <= measured


_IMPORTS = """
import sys
import veritee.tee.app_ta, veritee.tee.monitor, veritee.tee.tls_ta, veritee.tee.worker
import veritee.tee.world
print(" ".join({n.partition(".")[0] for n, m in sys.modules.items() if getattr(m, "__file__", 0)}))
"""


def test_measured_boot_covers_every_package_the_secure_world_imports() -> None:
    imported = subprocess.run(
        [sys.executable, spawn.ISOLATED, "-c", _IMPORTS],
        env=spawn.environment(),
        cwd=spawn.WORKING_DIRECTORY,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=True,
    ).stdout.split()
    outside_stdlib = set(imported) - set(sys.stdlib_module_names) - {"__main__"}
    measured = {"veritee", "wasmtime"} | {module for module, _dist in boot.LIBRARIES}
    assert outside_stdlib <= measured, "add the package to tee/boot.py: LIBRARIES"


def test_a_module_imported_from_outside_the_measured_files_stops_the_boot(
    tmp_path: Path,
) -> None:
    measured = {"veritee.tee.boot": boot, "veritee.tee.protocol": protocol}
    boot.check_imports(measured)
    shadow = types.ModuleType("veritee.tee.protocol")  # a copy of it, elsewhere
    shadow.__file__ = str(tmp_path / "veritee" / "tee" / "protocol.py")
    with pytest.raises(BootError, match=r"'veritee\.tee\.protocol' was imported from"):
        boot.check_imports({**measured, "veritee.tee.protocol": shadow})
    cli = types.ModuleType("veritee.cli")  # a part of veritee that is not measured
    cli.__file__ = str(Path(boot.__file__).parent.parent / "cli" / "__init__.py")
    with pytest.raises(BootError, match="not part of the measured secure world"):
        boot.check_imports({**measured, "veritee.cli": cli})


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _old_aot_key(home: Home) -> bytes:
    """The AOT key as it was derived before it was bound to the boot: the same at every boot,
    so injected code that once held it (or one boot's key) forged artifacts for all later ones."""
    huk = keys.read_secret(home.device / HUK)
    record = vtees.load(home, huk, "default")
    seed = keys.read_secret(home.device / "vtee-seeds" / f"{record.vtee_id.hex()}.seed")
    root = keys.derive(huk, "vtee", record.vtee_id, seed)
    return keys.derive(root, "vtee-aot", record.config_digest)


# Forges with the emulated backend's HUK file (a TPM device has none to read).
@pytest.mark.emulated_backend
def test_an_aot_artifact_forged_under_another_boot_is_discarded(
    fresh_device: Device, wasm: Callable[..., Path], tmp_path: Path
) -> None:
    hello = wasm("examples/hello/hello.c")
    assert "hello" in fresh_device.ok("run", hello, "--", "hello")
    fresh_device.stop()
    # The injected code's parting gift: a native artifact of its own code, filed under the
    # measurement of the owner's module and tagged with a key of an earlier boot.
    home = Home(fresh_device.home)
    poison = bytes(wasmtime.Module(new_engine(), wasmtime.wat2wasm(_POISON_WAT)).serialize())
    forge = Compiler(tmp_path / "forge", _old_aot_key(home))
    forge._store_artifact(measure(hello.read_bytes()), poison)  # tagged as before
    name = f"{measure(hello.read_bytes()).hex()}.cwasm"
    planted = (tmp_path / "forge" / name).read_bytes()
    (home.vtee("default") / "cache" / name).write_bytes(planted)
    fresh_device.start()  # a clean boot
    with fresh_device.context() as ctx:
        session = WasmSession(ctx)
        assert session.load(hello.read_bytes())["from_cache"] is False
        result = session.run(["hello", "again"])
    assert result.exit_code == 0
    assert b"poisoned" not in result.stdout and b"again" in result.stdout
    assert "failed authentication; recompiling" in home.log_file.read_text()
    # The owner's cache keeps working under this boot.
    fresh_device.stop()
    fresh_device.start()
    with fresh_device.context() as ctx:
        assert WasmSession(ctx).load(hello.read_bytes())["from_cache"] is True


# -- attack 7: memory at the world boundary -------------------------------------------------

ATTACKERS = 4  # connections, each declaring the largest frame: 2 GiB before the fix
RSS_GROWTH_BOUND = 96 * 1024 * 1024  # what the vTEE may grow while they idle
IDLE_TIMEOUT = 3  # seconds, set in the device's own tee-config.json (measured at boot)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _vtee_pid(dev: Device) -> int:
    status = monitor.control(Home(dev.home), {"op": "status"})["status"]
    return int(status["vtees"]["default"]["pid"])


def _eof_within(sock: socket.socket, seconds: float) -> bytes:
    """Everything the server sends until it closes; fails if it does not close in time."""
    sock.settimeout(seconds)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    return got


def _configured_device(root: Path, **settings: float) -> Device:
    """A device whose owner set bounds of the world boundary in its own tee-config.json."""
    dev = Device(root)
    dev.ok("device", "init")
    config_file = dev.home / "device" / "tee-config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **settings}))
    return dev


@pytest.fixture
def idle_timeout_device(tmp_path: Path) -> Device:
    return _configured_device(tmp_path / "home", frame_idle_timeout=IDLE_TIMEOUT)


def test_idle_connections_declaring_huge_frames_do_not_pin_memory(
    idle_timeout_device: Device, wasm: Callable[..., Path]
) -> None:
    dev = idle_timeout_device
    hello = wasm("examples/hello/hello.c")
    dev.start()
    attackers: list[socket.socket] = []
    try:
        pid = _vtee_pid(dev)
        before = _rss(pid)
        for _ in range(ATTACKERS):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(Home(dev.home).vtee_socket("default")))
            s.sendall(struct.pack(">I", protocol.MAX_FRAME_BYTES) + b"\xa1")
            attackers.append(s)
        time.sleep(1.0)  # let every connection's thread read its header
        grown = _rss(pid) - before
        assert grown < RSS_GROWTH_BOUND, f"the vTEE grew {grown >> 20} MiB"
        # A legitimate client is served meanwhile.
        assert "works" in dev.ok("run", hello, "--", "works")
        # The idle partial frames are dropped after the timeout, with a reason.
        started = time.monotonic()
        for s in attackers:
            said = _eof_within(s, HANG_BOUND)
            assert b"idle" in said
        assert time.monotonic() - started < HANG_BOUND
        assert "works" in dev.ok("run", hello, "--", "works")
        assert _rss(pid) - before < RSS_GROWTH_BOUND
    finally:
        for s in attackers:
            s.close()
        dev.stop()


BUFFER_MB = 8  # the vTEE's budget for all connections, set by the device owner for this test


def _leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _padded(module: bytes, size: int) -> bytes:
    """The same module with a custom section of ``size`` bytes (another measurement)."""
    name = b"veritee-padding"
    body = _leb128(len(name)) + name + bytes(size)
    return module + b"\x00" + _leb128(len(body)) + body


def test_a_frame_over_the_vtees_budget_is_refused_while_other_clients_keep_working(
    tmp_path: Path, wasm: Callable[..., Path]
) -> None:
    from veritee.tee import client as teec

    dev = _configured_device(
        tmp_path / "home", frame_idle_timeout=IDLE_TIMEOUT, frame_buffer_mb=BUFFER_MB
    )
    hello = wasm("examples/hello/hello.c")
    big = _padded(hello.read_bytes(), 3 << 20)
    dev.start()
    try:
        # The attacker spends most of the budget with a partial frame, then idles.
        hog = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        hog.connect(str(Home(dev.home).vtee_socket("default")))
        hog.sendall(struct.pack(">I", protocol.MAX_FRAME_BYTES) + b"\xa1" + bytes(6 << 20))
        time.sleep(1.0)  # let the vTEE read what was sent
        with dev.context() as ctx:
            session = WasmSession(ctx)
            with pytest.raises(teec.TeecError, match="frame buffers") as refused:
                session.load(big)
            assert refused.value.code == teec.TEEC_ERROR_BUSY
            # Small requests still fit, from this client and from others.
            assert "fits" in dev.ok("run", hello, "--", "fits")
            said = _eof_within(hog, HANG_BOUND)  # the hog's partial frame is dropped...
            assert b"idle" in said
            hog.close()
            assert session.load(big)["from_cache"] is False  # ...and the budget is back
            assert b"whole" in session.run(["whole"]).stdout
    finally:
        dev.stop()


def test_connections_over_the_cap_are_refused_and_served_again_once_others_leave(
    fresh_device: Device, wasm: Callable[..., Path]
) -> None:
    from veritee.tee import client as teec
    from veritee.tee.world import MAX_CONNECTIONS

    hello = wasm("examples/hello/hello.c")
    path = str(Home(fresh_device.home).vtee_socket("default"))
    idle: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            idle.append(s)
        # The vTEE takes its connections one by one; wait until it refuses the next one.
        deadline = time.monotonic() + HANG_BOUND
        while True:
            proc = fresh_device.cli("run", hello)
            if proc.returncode != 0:
                break
            assert time.monotonic() < deadline, "the vTEE never refused a connection"
            time.sleep(0.2)
        assert b"already serves" in proc.stderr and b"Traceback" not in proc.stderr
        with pytest.raises(teec.TeecError, match="already serves"), fresh_device.context() as ctx:
            WasmSession(ctx).load(hello.read_bytes())
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + HANG_BOUND
    while (proc := fresh_device.cli("run", hello, "--", "back")).returncode != 0:
        assert time.monotonic() < deadline, proc.stderr
        time.sleep(0.2)
    assert b"back" in proc.stdout


def test_a_frame_that_would_decode_into_gigabytes_is_refused_unread(
    device: Device, wasm: Callable[..., Path]
) -> None:
    # 4 MiB of one-byte CBOR items: about 32 MiB of Python objects once decoded, and a 512
    # MiB frame of them would be 4 GiB. The vTEE counts items before it decodes.
    items = 4 << 20
    bomb = b"\xa1\x66params\x9a" + items.to_bytes(4, "big") + bytes(items)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with s:
        s.connect(str(Home(device.home).vtee_socket("default")))
        s.sendall(struct.pack(">I", len(bomb)) + bomb)
        assert b"CBOR items" in _eof_within(s, HANG_BOUND)
    assert "unharmed" in device.ok("run", wasm("examples/hello/hello.c"), "--", "unharmed")
