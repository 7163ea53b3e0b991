"""The device monitor: the only holder of the device's secrets, through its backend (tee/backends).

It performs the measured (and, when configured, secure) boot, then creates each virtual TEE:
derives the vTEE's keys from the HUK, endorses the vTEE's attestation key in a platform token
signed with the DAK (naming the vTEE id, its configuration digest and the boot log), and starts
the vTEE as its own process, handing it those keys over a pipe, and a descriptor on its
rollback counters in the device's storage (tee/sealing.py: Counters). The single secure world of a
plain device is the vTEE named ``default``: one code path, not two.

The host talks to the monitor over ``monitor.sock`` (status, stop); it never receives a key.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives import serialization

from veritee.errors import (
    EXIT_CODES,
    BootError,
    DeviceError,
    Error,
    EvidenceError,
    SecureWorldError,
    UsageError,
)
from veritee.evidence import certs, cose
from veritee.evidence.claims import (
    LIFECYCLES,
    BootEntry,
    PlatformClaims,
)
from veritee.home import DEFAULT_VTEE, Home
from veritee.tee import backends, boot, device, lifeline, protocol, spawn, vtees

log = logging.getLogger("veritee.monitor")

VTEE_START_TIMEOUT = 60.0  # seconds for a vTEE process to import wasmtime and listen
READY_TIMEOUT = 90.0  # seconds 'veritee tee start' waits for boot to finish
AUTOSTART = "autostart"  # marker in a vTEE's directory: start it at boot
# The control socket takes one small request per connection: a bigger or slower one is an
# attempt to make the monitor (which holds the HUK) buffer or wait, and is dropped.
MAX_CONTROL_FRAME_BYTES = 64 * 1024
CONTROL_BUFFERED_BYTES = 8 * 1024 * 1024  # all control connections together
CONTROL_TIMEOUT = 10.0  # seconds for a control request to arrive whole
# Bounds on the device owner's "frame_idle_timeout" (seconds) and "frame_buffer_mb" (what all
# connections of a vTEE may buffer) in tee-config.json (tee/protocol.py).
FRAME_IDLE_TIMEOUT_RANGE = (0.5, 3600.0)
FRAME_BUFFER_MB_RANGE = (1, 64 * 1024)
LOCK_FILE = "monitor.lock"  # in the home: flock-ed for the monitor's whole life
# How often the monitor checks that its home is still there: a home removed (rm -rf) or
# replaced under a running world would leave it serving keys for a device that is gone.
HOME_WATCH_INTERVAL = 0.5


@dataclass
class VteeProcess:
    name: str
    vtee_id: bytes
    config_digest: bytes
    process: subprocess.Popen[bytes]
    started: float


class Monitor:
    def __init__(self, home: Home) -> None:
        self.home = home
        # The root of trust, and the only way to the device's secrets (tee/backends).
        self.backend = backends.open_device(home)
        self.info = self.backend.info
        self.config = device.tee_config(home)
        self.lifecycle = str(self.config.get("lifecycle", "emulated"))
        # What the device may say it is comes from its certificate, not from its own
        # configuration: stop here, with the reason, rather than sign evidence that every
        # verifier refuses (LifecycleNotEndorsed).
        try:
            endorsed = certs.endorsed_lifecycle(self.info.certificate, self.info.ca)
        except EvidenceError as exc:
            raise BootError(f"the device certificate's lifecycle mark: {exc}") from None
        if self.lifecycle not in LIFECYCLES:
            raise BootError(
                f"tee-config.json sets lifecycle {self.lifecycle!r}, which is not one of "
                f"{', '.join(LIFECYCLES)}"
            )
        if certs.lowest(self.lifecycle, endorsed) != self.lifecycle:
            raise BootError(
                f"tee-config.json sets lifecycle {self.lifecycle!r}, but the device certificate "
                f"endorses at most {endorsed!r}; refusing to boot"
            )
        self.secure_boot = bool(self.config.get("secure_boot", True))
        self.frame_idle_timeout = _boundary_setting(
            self.config, "frame_idle_timeout", protocol.FRAME_IDLE_TIMEOUT, FRAME_IDLE_TIMEOUT_RANGE
        )
        buffer_mb = _boundary_setting(
            self.config, "frame_buffer_mb", protocol.MAX_BUFFERED_BYTES >> 20, FRAME_BUFFER_MB_RANGE
        )
        self.frame_buffer_bytes = int(buffer_mb) << 20
        self.vtees: dict[str, VteeProcess] = {}
        self.lock = threading.Lock()
        self.boot_entries: list[BootEntry] = []
        self.pcr = b""
        # Every vTEE holds the read end; only this process the write end (tee/lifeline.py).
        self.lifeline = lifeline.Lifeline()

    def measured_boot(self) -> None:
        if not spawn.isolated():
            raise BootError(
                "the secure world must run in an isolated interpreter with its own environment "
                "(start it with 'veritee tee start'); refusing to boot"
            )
        boot.check_imports()
        stages = boot.measure_stages(self.config)
        if self.secure_boot:
            try:
                manifest = (self.home.device / device.MANIFEST).read_bytes()
            except FileNotFoundError:
                raise BootError("secure boot: the device has no signed boot manifest") from None
            boot.secure_boot(stages, manifest, self.info.vendor_pub)
        self.boot_entries, self.pcr = boot.boot_log(stages, self.info.vendor_pub, self.secure_boot)
        self.backend.record_boot(self.boot_entries, self.pcr)
        for e in self.boot_entries:
            log.info("measured %s %s", e.component, e.measurement.hex())

    def _platform_token(self, name: str, vtee_id: bytes, digest: bytes, ak_pub: Any) -> bytes:
        claims = PlatformClaims(
            ueid=self.info.ueid,
            lifecycle=self.lifecycle,
            secure_boot=self.secure_boot,
            rollback_protection=self.backend.rollback_protection,
            boot_log=tuple(self.boot_entries),
            vtee_id=vtee_id,
            vtee_name=name,
            vtee_config=digest,
            vtee_key=cose.ec_key_to_cose(ak_pub),
            iat=int(time.time()),
        )
        return self.backend.platform_token(claims)

    def start_vtee(self, name: str) -> VteeProcess:
        with self.lock:
            running = self.vtees.get(name)
            if running is not None and running.process.poll() is None:
                return running
        record = vtees.load(self.home, self.backend.root(), name)
        keys_ = vtees.derive_keys(self.home, self.backend.root(), record, boot_register=self.pcr)
        digest = record.config_digest
        handoff: dict[str, Any] = {
            "name": name,
            "id": record.vtee_id,
            "config": record.config,
            "config_digest": digest,
            "attestation_key": keys_.attestation_key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "platform_token": self._platform_token(
                name, record.vtee_id, digest, keys_.attestation_key.public_key()
            ),
            "seal_root": keys_.seal_root,
            "aot_key": keys_.aot_key,
            "frame_idle_timeout": self.frame_idle_timeout,
            "frame_buffer_bytes": self.frame_buffer_bytes,
            "dir": str(self.home.vtee(name)),
            "socket": str(self.home.vtee_socket(name)),
            "boot": {
                "log": [e.to_cbor() for e in self.boot_entries],
                "pcr": self.pcr,
                "lifecycle": self.lifecycle,
                "secure_boot": self.secure_boot,
                "ueid": self.info.ueid,
            },
        }
        handoff["counters_anchor"] = self.backend.counters_anchor(record.vtee_id)
        counters = self.backend.open_counters(record.vtee_id)
        handoff["counters_fd"] = counters
        handoff["lifeline_fd"] = self.lifeline.child_fd
        try:
            proc = subprocess.Popen(
                spawn.command("veritee.tee.world"),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=None,  # the vTEE logs to the monitor's log
                pass_fds=(counters, self.lifeline.child_fd),
                env=spawn.environment(),
                cwd=spawn.WORKING_DIRECTORY,
            )
        finally:
            os.close(counters)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(cbor2.dumps(handoff))
        proc.stdin.close()
        del handoff, keys_
        line = _read_line(proc.stdout, VTEE_START_TIMEOUT)
        if line.strip() != b"ready":
            proc.kill()
            raise SecureWorldError(f"vTEE {name!r} failed to start (see {self.home.log_file})")
        vp = VteeProcess(name, record.vtee_id, digest, proc, time.time())
        with self.lock:
            self.vtees[name] = vp
        (self.home.vtee(name) / AUTOSTART).touch()
        log.info("started vTEE %s (pid %d)", name, proc.pid)
        return vp

    def create_vtee(self, name: str, config: dict[str, Any]) -> vtees.VteeRecord:
        record = vtees.create(self.home, self.backend.root(), name, vtees.make_config(**config))
        log.info("created vTEE %s (id %s)", name, record.vtee_id.hex())
        return record

    def destroy_vtee(self, name: str) -> vtees.VteeRecord:
        self.stop_vtee(name)
        record = vtees.destroy(self.home, name)
        log.info(
            "destroyed vTEE %s (id %s): its seed and keys are gone", name, record.vtee_id.hex()
        )
        return record

    def list_vtees(self) -> list[dict[str, Any]]:
        out = []
        for name in vtees.names(self.home):
            try:
                record = vtees.load(self.home, self.backend.root(), name)
                entry: dict[str, Any] = {
                    "name": name,
                    "id": record.vtee_id,
                    "config": record.config,
                    "created": record.created,
                }
            except Error as exc:
                entry = {"name": name, "error": str(exc)}
            with self.lock:
                vp = self.vtees.get(name)
            entry["running"] = vp is not None and vp.process.poll() is None
            entry["pid"] = vp.process.pid if entry["running"] and vp else None
            out.append(entry)
        return out

    def stop_vtee(self, name: str, *, forget: bool = True) -> bool:
        with self.lock:
            vp = self.vtees.pop(name, None)
        if forget:
            (self.home.vtee(name) / AUTOSTART).unlink(missing_ok=True)
        if vp is None:
            return False
        vp.process.terminate()
        try:
            vp.process.wait(10)
        except subprocess.TimeoutExpired:
            vp.process.kill()
            vp.process.wait()
        return True

    def stop_all(self) -> None:
        # Shutting the device down is not stopping its vTEEs: they come back at next boot.
        for name in list(self.vtees):
            self.stop_vtee(name, forget=False)

    def status(self) -> dict[str, Any]:
        with self.lock:
            vtees = {
                vp.name: {
                    "pid": vp.process.pid,
                    "running": vp.process.poll() is None,
                    "id": vp.vtee_id,
                    "config_digest": vp.config_digest,
                    "started": vp.started,
                }
                for vp in self.vtees.values()
            }
        return {
            "ueid": self.info.ueid,
            "backend": self.backend.describe(),
            "lifecycle": self.lifecycle,
            "secure_boot": self.secure_boot,
            "boot_log": [e.to_cbor() for e in self.boot_entries],
            "pcr": self.pcr,
            "pid": os.getpid(),
            "vtees": vtees,
        }


def _boundary_setting(
    config: dict[str, Any], key: str, default: float, bounds: tuple[float, float]
) -> float:
    """One of the device owner's bounds on the world boundary (measured with the config)."""
    value = config.get(key, default)
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise DeviceError(f"tee-config.json: {key} must be a number from {low:g} to {high:g}")
    return float(value)


def _read_line(stream: Any, timeout: float) -> bytes:
    result: list[bytes] = []
    t = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return result[0] if result else b""


class _Control(socketserver.BaseRequestHandler):
    server: _ControlServer

    def handle(self) -> None:
        self.request.settimeout(CONTROL_TIMEOUT)
        reader = protocol.Reader(
            self.request,
            budget=self.server.budget,
            max_bytes=MAX_CONTROL_FRAME_BYTES,
            max_items=protocol.MAX_FRAME_ITEMS,
        )
        try:
            request = reader.recv()
        except (protocol.ProtocolError, OSError) as exc:
            log.warning("control request dropped: %s", exc or "timed out")
            return
        finally:
            reader.close()
        monitor = self.server.monitor
        op = request.get("op")
        try:
            name = str(request.get("name", ""))
            if op == "status":
                reply: dict[str, Any] = {"ok": True, "status": monitor.status()}
            elif op == "vtee-list":
                reply = {"ok": True, "vtees": monitor.list_vtees()}
            elif op == "vtee-create":
                config = request.get("config") or {}
                if not isinstance(config, dict):
                    raise UsageError("config must be a map")
                record = monitor.create_vtee(name, config)
                reply = {"ok": True, "id": record.vtee_id}
            elif op == "vtee-start":
                vp = monitor.start_vtee(name)
                reply = {"ok": True, "pid": vp.process.pid, "id": vp.vtee_id}
            elif op == "vtee-stop":
                if not monitor.stop_vtee(name):
                    raise UsageError(f"vTEE {name!r} is not running")
                reply = {"ok": True}
            elif op == "vtee-destroy":
                record = monitor.destroy_vtee(name)
                reply = {"ok": True, "id": record.vtee_id}
            elif op == "tpm-activate":
                # A verifier's credential activation, relayed by the host: only the TPM that
                # holds both the EK and the secure world's AK gives the secret back.
                blob, secret = request.get("credential"), request.get("secret")
                if not isinstance(blob, bytes) or not isinstance(secret, bytes):
                    raise UsageError("tpm-activate takes a credential and a secret (bytes)")
                reply = {"ok": True, "answer": monitor.backend.activate_credential(blob, secret)}
            elif op == "stop":
                reply = {"ok": True}
                threading.Thread(target=self.server.shutdown, daemon=True).start()
            else:
                reply = {"ok": False, "error": f"unknown request {op!r}"}
        except Error as exc:
            reply = {"ok": False, "error": str(exc), "exit_code": exc.exit_code}
        except TypeError as exc:  # e.g. a config key that make_config does not take
            reply = {"ok": False, "error": f"bad request: {exc}", "exit_code": 2}
        with contextlib.suppress(OSError, protocol.ProtocolError):
            protocol.send(self.request, reply)


class _ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    monitor: Monitor
    budget = protocol.Budget(CONTROL_BUFFERED_BYTES)


def control(home: Home, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send one request to a running monitor (host side)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(home.monitor_socket))
        protocol.send(sock, request)
        reply = protocol.recv(sock)
    except (FileNotFoundError, ConnectionRefusedError):
        raise SecureWorldError(
            f"no secure world is running for {home.root}: run 'veritee tee start'"
        ) from None
    except (OSError, protocol.ProtocolError) as exc:
        raise SecureWorldError(f"the device monitor did not answer: {exc}") from None
    finally:
        sock.close()
    if not reply.get("ok"):
        err = SecureWorldError(str(reply.get("error", "the device monitor refused the request")))
        code = reply.get("exit_code")
        # A code off the README's table (or none) is the secure world's refusal: 4.
        err.exit_code = code if code in EXIT_CODES and code else SecureWorldError.exit_code
        raise err
    return reply


class AlreadyRunning(SecureWorldError):
    """Another monitor holds this home's lock: one secure world per home."""


def lock_home(home: Home) -> int:
    """Take the home's lock for this process's life (its descriptor); or raise AlreadyRunning.

    An exclusive ``flock``, not a pid check: the kernel drops it when the holder dies however
    it dies (kill -9 included), and no two processes hold it at once, so two secure worlds
    never serve one home (each would replace the other's sockets and pid file).
    """
    fd = os.open(home.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = ""
        with contextlib.suppress(OSError, ValueError):
            pid = f" (pid {int(home.monitor_pid.read_text())})"
        raise AlreadyRunning(
            f"a secure world is already running for {home.root}{pid}: "
            f"stop it first with 'veritee --home {home.root} tee stop'"
        ) from None
    return fd


def _watch_home(home: Home, stop: Any) -> None:
    """Call ``stop`` once the home directory is gone or is no longer the one this world booted."""
    try:
        st = home.root.stat()
    except OSError:
        stop()
        return
    identity = (st.st_dev, st.st_ino)

    def watch() -> None:
        while True:
            time.sleep(HOME_WATCH_INTERVAL)
            try:
                now = home.root.stat()
                if (now.st_dev, now.st_ino) == identity and now.st_nlink > 0:
                    continue
            except OSError:
                pass
            log.error("the home %s was removed or replaced: stopping the secure world", home.root)
            stop()
            return

    threading.Thread(target=watch, name="home-watch", daemon=True).start()


def run(home: Home, ready: Any) -> int:
    """Boot and serve until stopped. ``ready`` gets one JSON line: ok, or the boot error."""
    try:
        lock = lock_home(home)  # held (open) until this process ends
        monitor = Monitor(home)
        monitor.measured_boot()
        monitor.start_vtee(DEFAULT_VTEE)
        for name in vtees.names(home):
            if name != DEFAULT_VTEE and (home.vtee(name) / AUTOSTART).exists():
                try:
                    monitor.start_vtee(name)
                except Error as exc:  # one broken vTEE must not keep the device down
                    log.error("vTEE %s not started: %s", name, exc)
    except (Error, OSError) as exc:
        log.error("%s", exc)
        failure = {
            "ok": False,
            "error": str(exc),
            "already_running": isinstance(exc, AlreadyRunning),
        }
        ready.write(json.dumps(failure) + "\n")
        ready.flush()
        # In the foreground this is the command's exit status: the README's table, as for a
        # background start (a device problem 3, the secure world's 4).
        return exc.exit_code if isinstance(exc, Error) else SecureWorldError.exit_code
    # Under the lock, a socket or pid file left here is a dead monitor's: replace it.
    home.monitor_socket.unlink(missing_ok=True)
    old = os.umask(0o077)
    try:
        server = _ControlServer(str(home.monitor_socket), _Control)
    finally:
        os.umask(old)
    server.monitor = monitor
    sock_id = lifeline.own_file(home.monitor_socket)

    def stop(_signo: int = 0, _frame: Any = None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    home.monitor_pid.write_text(f"{os.getpid()}\n")
    pid_id = lifeline.own_file(home.monitor_pid)
    _watch_home(home, stop)
    ready.write(json.dumps({"ok": True, "pid": os.getpid()}) + "\n")
    ready.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        monitor.stop_all()
        # Only this monitor's own files: never what another process put in their place.
        lifeline.remove_own(home.monitor_socket, sock_id)
        lifeline.remove_own(home.monitor_pid, pid_id)
        server.server_close()
        os.close(lock)
        log.info("secure world stopped")
    return 0


def start_daemon(home: Home) -> int:
    """Start the monitor in the background; return its pid once booted, or raise its error."""
    # One secure world per home: the monitor itself takes the home's lock (lock_home) and
    # reports AlreadyRunning beside a running one. Nothing is probed or unlinked from here: a
    # busy monitor slow to answer is not a dead one, and the lock holder replaces stale files.
    device.load_info(home)  # a clear error now if there is no device
    read_fd, write_fd = os.pipe()
    log_file = open(home.log_file, "ab")  # noqa: SIM115 - handed to the child
    # The caller's environment and directory stay behind (tee/spawn.py): the home is passed
    # as an absolute path because the monitor does not start where the caller stands.
    proc = subprocess.Popen(
        spawn.command(
            "veritee.tee.monitor",
            "--home",
            str(home.root.resolve()),
            "--ready-fd",
            str(write_fd),
        ),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=log_file,
        pass_fds=(write_fd,),
        start_new_session=True,
        env=spawn.environment(),
        cwd=spawn.WORKING_DIRECTORY,
    )
    os.close(write_fd)
    log_file.close()
    with os.fdopen(read_fd, "rb") as r:
        line = _read_line(r, READY_TIMEOUT)
    if not line:
        proc.kill()
        raise SecureWorldError(
            f"the secure world did not come up in {READY_TIMEOUT:g} s; see {home.log_file}"
        )
    reply = json.loads(line)
    if not reply.get("ok"):
        proc.wait(10)
        if reply.get("already_running"):
            raise AlreadyRunning(str(reply.get("error")))
        raise BootError(str(reply.get("error")))
    return int(reply["pid"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Veritee device monitor (started by 'veritee tee start')"
    )
    parser.add_argument("--home", required=True)
    parser.add_argument("--ready-fd", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s monitor[%(process)d] %(levelname)s %(message)s"
    )
    ready = os.fdopen(args.ready_fd, "w") if args.ready_fd is not None else sys.stdout
    code = run(Home(Path(args.home)), ready)
    ready.close()
    sys.exit(code)


if __name__ == "__main__":
    main()


__all__ = ["AlreadyRunning", "Monitor", "control", "lock_home", "start_daemon"]
