"""Secure-world processes that behave: one per home, own files only, children end with their
parent, a removed home stops its world, SIGTERM to ``node start`` stops what it booted.

Every test drives the real CLI and real processes (kill -9, SIGTERM, rm -rf); the time bounds
only catch hangs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Device

HANG = 30.0  # seconds: a bound that only catches a hang


def _wait(cond: Callable[[], bool], timeout: float = HANG) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _monitor_pid(dev: Device) -> int:
    return int((dev.home / "monitor.pid").read_text())


def _vtee_pid(dev: Device) -> int:
    import json

    out = dev.ok("tee", "status", "--json")
    return int(json.loads(out)["monitor"]["vtees"]["default"]["pid"])


def _foreground(dev: Device) -> subprocess.Popen[bytes]:
    """``veritee tee start --foreground`` on the device's home, as its owner types it."""
    return subprocess.Popen(
        [sys.executable, "-m", "veritee", "--home", str(dev.home), "tee", "start", "--foreground"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_second_secure_world_is_refused_and_leaves_the_first_reachable(
    fresh_device: Device,
) -> None:
    first = _monitor_pid(fresh_device)
    # The attack: a second world on the same home, in the foreground and in the background.
    proc = _foreground(fresh_device)
    try:
        out, err = proc.communicate(timeout=HANG * 3)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    assert proc.returncode == 4, out.decode() + err.decode()  # the secure world's code
    assert b"already running" in out + err
    again = fresh_device.cli("tee", "start")
    assert again.returncode == 4, again.stderr
    assert "already running" in again.stderr.decode()
    # The first world is untouched: its files, its pid, its answers.
    assert _monitor_pid(fresh_device) == first
    assert (fresh_device.home / "monitor.sock").exists()
    assert (fresh_device.home / "vtees" / "default" / "tee.sock").exists()
    assert _alive(first)
    fresh_device.ok("tee", "status")


def test_kill_9_of_the_monitor_ends_its_vtee_and_workers(fresh_device: Device) -> None:
    monitor = _monitor_pid(fresh_device)
    vtee = _vtee_pid(fresh_device)
    workers = _children(vtee)
    assert workers, "the vTEE keeps warm workers"
    os.kill(monitor, signal.SIGKILL)
    assert _wait(lambda: not _alive(vtee)), "the vTEE outlived its monitor"
    assert _wait(lambda: not any(_alive(w) for w in workers)), "a worker outlived its vTEE"
    # The owner starts the device again, and it serves.
    fresh_device.ok("tee", "start")
    fresh_device.ok("tee", "status")


def test_removed_home_stops_its_secure_world(tmp_path: Path) -> None:
    dev = Device(tmp_path / "home")
    dev.ok("device", "init")
    dev.start()
    monitor = _monitor_pid(dev)
    vtee = _vtee_pid(dev)
    try:
        shutil.rmtree(dev.home)
        assert _wait(lambda: not _alive(monitor)), "the monitor of a removed home runs on"
        assert _wait(lambda: not _alive(vtee)), "the vTEE of a removed home runs on"
    finally:
        for pid in (vtee, monitor):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_sigterm_to_node_start_stops_the_secure_world_it_booted(tmp_path: Path) -> None:
    dev = Device(tmp_path / "home")
    dev.ok("device", "init")
    ready = tmp_path / "ready.json"
    node = subprocess.Popen(
        [
            sys.executable, "-m", "veritee", "node", "start", "--home", str(dev.home),
            "--port", "0", "--ready-file", str(ready),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    monitor = -1
    try:
        assert _wait(ready.exists, HANG * 3), "the node agent did not come up"
        monitor = _monitor_pid(dev)
        vtee = _vtee_pid(dev)
        node.send_signal(signal.SIGTERM)
        node.wait(HANG)
        assert node.returncode == 128 + signal.SIGTERM  # an orderly stop, as the shell reports it
        assert node.stderr is not None
        assert b"Traceback" not in node.stderr.read()
        assert _wait(lambda: not _alive(monitor)), "SIGTERM left the secure world running"
        assert _wait(lambda: not _alive(vtee))
        assert not (dev.home / "monitor.sock").exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            node.kill()
        if monitor > 0 and _alive(monitor):
            os.kill(monitor, signal.SIGKILL)
    # Nothing of the owner's is lost: the device boots again.
    dev.start()
    dev.stop()


def test_an_exiting_process_removes_only_the_file_it_created(tmp_path: Path) -> None:
    """The check every exiting monitor and vTEE makes on its socket and pid file: a file
    another process put in its place (same path, another inode) stays."""
    from veritee.tee import lifeline

    path = tmp_path / "monitor.pid"
    path.write_text("1\n")
    mine = lifeline.own_file(path)
    path.unlink()
    path.write_text("2\n")  # the live process's, created since
    lifeline.remove_own(path, mine)
    assert path.read_text() == "2\n"
    lifeline.remove_own(path, lifeline.own_file(path))  # its own: removed
    assert not path.exists()


def test_stale_files_of_a_killed_world_do_not_stop_the_next(fresh_device: Device) -> None:
    """After kill -9 the socket and pid files stay; the next lock holder replaces them, and
    the dying vTEE's exit does not take the new one's socket with it."""
    monitor = _monitor_pid(fresh_device)
    vtee = _vtee_pid(fresh_device)
    os.kill(monitor, signal.SIGKILL)
    fresh_device.ok("tee", "start")  # at once: the old vTEE may still be on its way out
    assert _wait(lambda: not _alive(vtee))
    assert _monitor_pid(fresh_device) != monitor
    assert (fresh_device.home / "vtees" / "default" / "tee.sock").exists()
    fresh_device.ok("tee", "status")


def test_kill_9_of_a_vtee_ends_the_worker_in_the_middle_of_a_run(
    fresh_device: Device, wasm: Callable[..., Path]
) -> None:
    """A worker running a module (holding its sealing key) does not read its socket until the
    run ends: the lifeline ends it with its vTEE all the same."""
    spin = wasm("tests/assets/c/spin.c")
    vtee = _vtee_pid(fresh_device)
    run = subprocess.Popen(
        [sys.executable, "-m", "veritee", "--home", str(fresh_device.home), "run",
         "--timeout", "600", str(spin)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(2.0)  # let the spinner get going
        workers = _children(vtee)
        assert workers
        os.kill(vtee, signal.SIGKILL)
        assert _wait(lambda: not any(_alive(w) for w in workers)), "a worker outlived its vTEE"
    finally:
        run.kill()
        run.wait()
