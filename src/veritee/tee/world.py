"""A secure world (one vTEE) as its own process: the TEE Client API endpoint and its TAs.

Started by the device monitor, which hands it, over a pipe, only what this vTEE may hold:
its identity, its attestation key and endorsement (platform token), its sealing root and AOT
cache key; never the HUK or the device key. It then serves the world boundary on a Unix
socket, a thread per client connection, so a long-running module does not hold up others.
A client that disconnects mid-run has its module cancelled at the next epoch tick.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import select
import signal
import socket
import socketserver
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from veritee.errors import Error, ModuleError, ModuleLimitExceeded, UsageError
from veritee.tee import app_ta, backends, lifeline, protocol, runtime_ta, spawn, tls_ta
from veritee.tee import client as teec
from veritee.tee.keys import derive
from veritee.tee.runtime_ta import LoadedModule, VteeIdentity
from veritee.tee.sealing import Counters
from veritee.tee.ta import (
    APP_TA,
    CMD_APP_ATTEST,
    CMD_APP_CONNECT,
    CMD_APP_DELIVER,
    CMD_APP_DELIVER_BATCH,
    CMD_APP_DISCONNECT,
    CMD_APP_FORGET,
    CMD_APP_LOAD,
    CMD_APP_PUBLIC,
    CMD_APP_STATUS,
    CMD_ATTEST,
    CMD_INFO,
    CMD_LOAD,
    CMD_RUN,
    CMD_STATUS,
    RUNTIME_TA,
    SYSTEM_TA,
    TLS_TA,
)
from veritee.tee.worker import WorkerPool
from veritee.wasm.runtime import Compiler

log = logging.getLogger("veritee.world")

WATCH_INTERVAL = 0.05  # seconds between checks that a client is still there during a run
MAX_SESSIONS_PER_CONNECTION = 256
FRAME_IDLE_TIMEOUT = protocol.FRAME_IDLE_TIMEOUT
MAX_BUFFERED_BYTES = protocol.MAX_BUFFERED_BYTES
# Each connection is a thread of the vTEE: a flood of idle connections must not exhaust its
# threads (or the memory of their stacks). Those over the limit get TEEC_ERROR_BUSY.
MAX_CONNECTIONS = 512


class _Reply(Exception):
    """Carries a TEEC error back to the client from deep in a handler."""

    def __init__(self, code: int, origin: int, message: str) -> None:
        super().__init__(message)
        self.code, self.origin, self.message = code, origin, message


class SecureWorld:
    """State shared by all connections of one vTEE."""

    def __init__(self, handoff: dict[str, Any]) -> None:
        key = serialization.load_der_private_key(handoff["attestation_key"], password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.identity = VteeIdentity(
            name=handoff["name"],
            vtee_id=handoff["id"],
            config=handoff["config"],
            config_digest=handoff["config_digest"],
            attestation_key=key,
            platform_token=handoff["platform_token"],
            seal_root=handoff["seal_root"],
        )
        self.root = Path(handoff["dir"])
        self.storage = self.root / "storage"
        self.scratch = self.root / "tmp"
        for d in (self.storage, self.scratch):
            d.mkdir(parents=True, exist_ok=True)
        self.compiler = Compiler(self.root / "cache", handoff["aot_key"])
        self.counters = Counters(
            int(handoff["counters_fd"]),
            backends.open_anchor(handoff.get("counters_anchor")),
            derive(handoff["seal_root"], "counters-file-mac"),
        )
        self.pool = WorkerPool(int(self.identity.config.get("workers", 2)))
        self.boot = handoff["boot"]
        # What all connections may buffer, and how long a partial frame may idle: the
        # boundary's defence against memory exhaustion (tee/protocol.py). Both come from the
        # device's own tee-config.json (measured at boot), never from the caller.
        self.budget = protocol.Budget(int(handoff.get("frame_buffer_bytes", MAX_BUFFERED_BYTES)))
        self.frame_idle_timeout = float(handoff.get("frame_idle_timeout", FRAME_IDLE_TIMEOUT))
        self.started = time.time()
        self.max_modules = int(self.identity.config.get("max_modules", 64))
        self.modules: dict[int, LoadedModule] = {}
        self.apps: dict[int, app_ta.AppModule] = {}
        self.lock = threading.Lock()
        self.ids = itertools.count(1)

    def reader(self, sock: socket.socket) -> protocol.Reader:
        """A frame reader for a connection of the normal world, within this vTEE's budget."""
        return protocol.Reader(
            sock,
            budget=self.budget,
            idle_timeout=self.frame_idle_timeout,
            max_items=protocol.MAX_FRAME_ITEMS,
        )

    def close_session(self, sid: int, *, hung_up: bool = False) -> None:
        """Free what a session held (its module, its app instance's worker). ``hung_up``:
        the client went away without closing it (a node agent killed)."""
        with self.lock:
            self.modules.pop(sid, None)
            app = self.apps.pop(sid, None)
        if app is not None:
            if hung_up:
                with app.lock:  # after a call under way, before another instance loads
                    try:
                        app.keep_unanswered()
                    except (OSError, Error) as exc:
                        log.warning("%s/%s: its last answer is lost: %s", app.app, app.name, exc)
            app.counters.release(app.lineage, app.measurement)
            if app.reactor is not None:
                app.reactor.close()
        tls_ta.close_session(sid)

    def admit(self, sid: int, new: LoadedModule | app_ta.AppModule) -> None:
        """Register a loaded module if this vTEE has room for it, else raise _Reply.

        The vTEE's memory is shared by its modules: their limits must fit in it together.
        """
        with self.lock:
            count = len(self.modules) + len(self.apps)
            committed = sum(m.limits.memory_bytes for m in self.modules.values()) + sum(
                a.limits.memory_bytes for a in self.apps.values()
            )
            if count >= self.max_modules:
                raise _Reply(
                    teec.TEEC_ERROR_BUSY,
                    teec.TEEC_ORIGIN_TRUSTED_APP,
                    f"this TEE already holds its maximum of {self.max_modules} modules",
                )
            if committed + new.limits.memory_bytes > self.identity.memory_cap:
                raise _Reply(
                    teec.TEEC_ERROR_OUT_OF_MEMORY,
                    teec.TEEC_ORIGIN_TRUSTED_APP,
                    f"this TEE's {self.identity.memory_cap >> 20} MiB are committed to its "
                    f"loaded modules ({committed >> 20} MiB); cannot load "
                    f"{new.limits.memory_bytes >> 20} MiB more",
                )
            if isinstance(new, LoadedModule):
                self.modules[sid] = new
            else:
                self.apps[sid] = new

    def status(self) -> dict[str, Any]:
        with self.lock:
            modules = [
                {
                    "session": sid,
                    "name": m.name,
                    "measurement": m.measurement,
                    "running": m.running,
                    "loaded_at": m.loaded_at,
                }
                for sid, m in self.modules.items()
            ]
        ident = self.identity
        return {
            "vtee": {
                "name": ident.name,
                "id": ident.vtee_id,
                "config": ident.config,
                "config_digest": ident.config_digest,
            },
            "boot": self.boot,
            "uptime": time.time() - self.started,
            "modules": modules,
        }


class _Connection(socketserver.BaseRequestHandler):
    """One TEEC context: its sessions live and die with this connection."""

    server: _Server

    def handle(self) -> None:
        world = self.server.world
        sock: socket.socket = self.request
        sessions: dict[int, str] = {}
        reader = world.reader(sock)
        try:
            while True:
                try:
                    message = reader.recv()
                except protocol.BoundaryBusy as exc:
                    # The frame was read and discarded: tell this client, keep its connection.
                    log.warning("refused a frame: %s", exc)
                    busy: dict[str, Any] = {
                        "rc": teec.TEEC_ERROR_BUSY,
                        "origin": teec.TEEC_ORIGIN_TEE,
                        "msg": str(exc),
                    }
                    try:
                        protocol.send(sock, busy)
                    except OSError:
                        return
                    continue
                except (
                    protocol.FrameIdle,
                    protocol.FrameTooLarge,
                    protocol.FrameTooComplex,
                    protocol.NotAMessage,
                ) as exc:
                    log.warning("dropped a connection: %s", exc)
                    with contextlib.suppress(OSError):
                        protocol.send(
                            sock,
                            {
                                "rc": teec.TEEC_ERROR_BAD_FORMAT,
                                "origin": teec.TEEC_ORIGIN_TEE,
                                "msg": str(exc),
                            },
                        )
                    return
                except (protocol.ProtocolError, OSError):
                    return
                try:
                    reply = self._dispatch(world, sock, sessions, message)
                    reply.setdefault("rc", teec.TEEC_SUCCESS)
                except _Reply as r:
                    reply = {"rc": r.code, "origin": r.origin, "msg": r.message}
                try:
                    protocol.send(sock, reply)
                except (OSError, protocol.ProtocolError):
                    return
        finally:
            reader.close()
            for sid in sessions:
                world.close_session(sid, hung_up=True)

    def _dispatch(
        self,
        world: SecureWorld,
        sock: socket.socket,
        sessions: dict[int, str],
        message: dict[str, Any],
    ) -> dict[str, Any]:
        op = message.get("op")
        if op == "open":
            uuid = message.get("uuid")
            if uuid not in _TAS:
                raise _Reply(
                    teec.TEEC_ERROR_ITEM_NOT_FOUND,
                    teec.TEEC_ORIGIN_TEE,
                    f"no trusted application with UUID {uuid!r} in this TEE",
                )
            if len(sessions) >= MAX_SESSIONS_PER_CONNECTION:
                raise _Reply(teec.TEEC_ERROR_BUSY, teec.TEEC_ORIGIN_TEE, "too many sessions")
            new_sid = next(world.ids)
            sessions[new_sid] = str(uuid)
            return {"session": new_sid}
        sid = message.get("session")
        if not isinstance(sid, int) or sid not in sessions:
            # Sessions are per connection: another client's session id is simply unknown here.
            raise _Reply(
                teec.TEEC_ERROR_BAD_STATE, teec.TEEC_ORIGIN_TEE, f"no open session {sid!r}"
            )
        if op == "close":
            del sessions[sid]
            world.close_session(sid)
            return {}
        if op != "invoke":
            raise _Reply(teec.TEEC_ERROR_BAD_FORMAT, teec.TEEC_ORIGIN_TEE, f"unknown op {op!r}")
        params = message.get("params")
        if not isinstance(params, list) or len(params) != teec.MAX_PARAMS:
            raise _Reply(teec.TEEC_ERROR_BAD_PARAMETERS, teec.TEEC_ORIGIN_TEE, "need 4 params")
        cmd = message.get("cmd")
        try:
            return _TAS[sessions[sid]](world, sock, sid, cmd, params)
        except ModuleLimitExceeded as exc:
            raise _Reply(teec.TEEC_ERROR_CANCEL, teec.TEEC_ORIGIN_TRUSTED_APP, str(exc)) from None
        except (ModuleError, UsageError) as exc:
            raise _Reply(
                teec.TEEC_ERROR_BAD_FORMAT
                if isinstance(exc, ModuleError)
                else teec.TEEC_ERROR_BAD_PARAMETERS,
                teec.TEEC_ORIGIN_TRUSTED_APP,
                str(exc),
            ) from None
        except Error as exc:
            raise _Reply(teec.TEEC_ERROR_GENERIC, teec.TEEC_ORIGIN_TRUSTED_APP, str(exc)) from None


def _memref(params: list[Any], i: int, *, output: bool = False) -> dict[str, Any]:
    p = params[i]
    want = (
        (teec.TEEC_MEMREF_TEMP_OUTPUT, teec.TEEC_MEMREF_TEMP_INOUT)
        if output
        else (teec.TEEC_MEMREF_TEMP_INPUT, teec.TEEC_MEMREF_TEMP_INOUT)
    )
    if not isinstance(p, dict) or p.get("t") not in want or not isinstance(p.get("buf"), bytes):
        raise _Reply(
            teec.TEEC_ERROR_BAD_PARAMETERS,
            teec.TEEC_ORIGIN_TRUSTED_APP,
            f"parameter {i} must be a memref {'output' if output else 'input'}",
        )
    return p


def _out(params: list[Any], i: int, data: bytes) -> dict[str, Any]:
    """Fill output memref ``i``; GP semantics: too small a buffer gets SHORT_BUFFER + size."""
    p = _memref(params, i, output=True)
    size = p.get("size")
    if not isinstance(size, int) or size < len(data):
        raise _Reply(
            teec.TEEC_ERROR_SHORT_BUFFER,
            teec.TEEC_ORIGIN_TRUSTED_APP,
            f"output parameter {i} needs {len(data)} bytes",
        )
    return {"t": p["t"], "buf": data, "size": len(data)}


def _reply(params: list[Any], outs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    return {"params": [outs.get(i) for i in range(teec.MAX_PARAMS)]}


def _system(
    world: SecureWorld, _sock: socket.socket, _sid: int, cmd: Any, params: list[Any]
) -> dict[str, Any]:
    if cmd != CMD_STATUS:
        raise _Reply(teec.TEEC_ERROR_NOT_SUPPORTED, teec.TEEC_ORIGIN_TRUSTED_APP, "unknown cmd")
    return _reply(params, {0: _out(params, 0, bytes(cbor2.dumps(world.status())))})


def _runtime(
    world: SecureWorld, sock: socket.socket, sid: int, cmd: Any, params: list[Any]
) -> dict[str, Any]:
    with world.lock:
        loaded = world.modules.get(sid)
    if cmd == CMD_LOAD:
        if loaded is not None:
            raise _Reply(teec.TEEC_ERROR_BAD_STATE, teec.TEEC_ORIGIN_TRUSTED_APP, "already loaded")
        module = _memref(params, 0)["buf"]
        config = _memref(params, 1)["buf"]
        new = runtime_ta.load(world.compiler, world.identity, world.storage, module, config)
        world.admit(sid, new)
        log.info("loaded %s (%s)", new.name, new.measurement.hex()[:16])
        return _reply(params, {2: _out(params, 2, bytes(cbor2.dumps(new.info())))})
    if loaded is None:
        raise _Reply(teec.TEEC_ERROR_BAD_STATE, teec.TEEC_ORIGIN_TRUSTED_APP, "no module loaded")
    if cmd == CMD_RUN:
        request = _memref(params, 0)["buf"]
        cancel = threading.Event()
        done = threading.Event()
        watcher = threading.Thread(target=_watch, args=(sock, cancel, done), daemon=True)
        watcher.start()
        try:
            code, body = runtime_ta.run(
                world.compiler,
                world.pool,
                world.identity,
                loaded,
                request,
                cancel.is_set,
                world.scratch,
                relay=lambda rpc: _relay(world, sock, rpc),
            )
        finally:
            done.set()
        out = _out(params, 1, body)
        return _reply(
            params, {1: out, 2: {"t": teec.TEEC_VALUE_OUTPUT, "a": code & 0xFFFFFFFF, "b": 0}}
        )
    if cmd == CMD_ATTEST:
        nonce = _memref(params, 0)["buf"]
        # The normal world's data goes into host-data, never user-data (issue 18, 11a).
        host_data = _memref(params, 1)["buf"]
        evidence = runtime_ta.attest(world.identity, loaded, nonce, host_data=host_data)
        return _reply(params, {2: _out(params, 2, evidence)})
    if cmd == CMD_INFO:
        return _reply(params, {0: _out(params, 0, bytes(cbor2.dumps(loaded.info())))})
    raise _Reply(teec.TEEC_ERROR_NOT_SUPPORTED, teec.TEEC_ORIGIN_TRUSTED_APP, f"cmd {cmd!r}")


def _app(
    world: SecureWorld, sock: socket.socket, sid: int, cmd: Any, params: list[Any]
) -> dict[str, Any]:
    """The application TA: one long-lived module instance of a distributed app."""
    with world.lock:
        loaded = world.apps.get(sid)
    if cmd == CMD_APP_LOAD:
        if loaded is not None:
            raise _Reply(teec.TEEC_ERROR_BAD_STATE, teec.TEEC_ORIGIN_TRUSTED_APP, "already loaded")
        new = app_ta.load(
            world.compiler,
            world.pool,
            world.counters,
            world.identity,
            world.storage,
            world.scratch,
            _memref(params, 0)["buf"],
            _memref(params, 1)["buf"],
        )
        try:
            world.admit(sid, new)
        except _Reply:
            new.counters.release(new.lineage, new.measurement)
            if new.reactor is not None:
                new.reactor.close()
            raise
        log.info("loaded app module %s/%s (%s)", new.app, new.name, new.measurement.hex()[:16])
        info = new.info()
        if new.recovery is not None:
            log.warning(
                "%s/%s: took up the answer its node agent went away without (%d events)",
                new.app,
                new.name,
                len(new.recovery["events"]),
            )
            info["recovered"], new.recovery = new.recovery, None
        return _reply(params, {2: _out(params, 2, bytes(cbor2.dumps(info)))})
    if cmd == CMD_APP_FORGET:
        if loaded is not None:
            raise _Reply(
                teec.TEEC_ERROR_BAD_STATE,
                teec.TEEC_ORIGIN_TRUSTED_APP,
                "a session with a module loaded cannot discard a state",
            )
        app_ta.forget(
            world.counters,
            world.identity,
            world.storage,
            _memref(params, 0)["buf"],
            _memref(params, 1)["buf"],
        )
        return _reply(params, {})
    if loaded is None:
        raise _Reply(teec.TEEC_ERROR_BAD_STATE, teec.TEEC_ORIGIN_TRUSTED_APP, "no module loaded")
    loaded.took()  # a command after an answer: the node agent took that answer
    relay = lambda rpc: _relay(world, sock, rpc)  # noqa: E731 - one-line adapter
    if cmd == CMD_APP_ATTEST:
        evidence = loaded.attester(world.identity.platform_token).evidence(
            _memref(params, 0)["buf"], host_data=_memref(params, 1)["buf"]
        )
        return _reply(params, {2: _out(params, 2, evidence)})
    if cmd == CMD_APP_CONNECT:
        result = app_ta.connect(loaded, _memref(params, 0)["buf"])
        outs = {1: _out(params, 1, result["state"])} if params[1] is not None else {}
        return _reply(params, outs)
    if cmd == CMD_APP_DISCONNECT:
        result = app_ta.disconnect(loaded, _memref(params, 0)["buf"])
        return _reply(params, {1: _out(params, 1, result["state"])})
    if cmd == CMD_APP_DELIVER:
        outcome = app_ta.deliver(loaded, _memref(params, 0)["buf"], relay)
        return _reply(params, {1: _out(params, 1, bytes(cbor2.dumps(outcome)))})
    if cmd == CMD_APP_DELIVER_BATCH:
        try:
            events = cbor2.loads(_memref(params, 0)["buf"])
        except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError):
            events = None
        if not isinstance(events, list) or not all(isinstance(e, bytes) for e in events):
            raise _Reply(
                teec.TEEC_ERROR_BAD_PARAMETERS,
                teec.TEEC_ORIGIN_TRUSTED_APP,
                "a batch must be a CBOR list of sealed events (byte strings)",
            )
        batch = app_ta.deliver_batch(loaded, events, relay)
        return _reply(params, {1: _out(params, 1, bytes(cbor2.dumps(batch)))})
    if cmd == CMD_APP_PUBLIC:
        endpoint = _memref(params, 0)["buf"].decode("utf-8", "replace")
        outcome = app_ta.public(loaded, endpoint, _memref(params, 1)["buf"], relay)
        return _reply(params, {2: _out(params, 2, bytes(cbor2.dumps(outcome)))})
    if cmd == CMD_APP_STATUS:
        return _reply(params, {0: _out(params, 0, bytes(cbor2.dumps(app_ta.status(loaded))))})
    raise _Reply(teec.TEEC_ERROR_NOT_SUPPORTED, teec.TEEC_ORIGIN_TRUSTED_APP, f"cmd {cmd!r}")


def _relay(world: SecureWorld, sock: socket.socket, rpc: dict[str, Any]) -> dict[str, Any]:
    """Ask the client (the normal world's supplicant) to carry a request; wait for its answer."""
    try:
        protocol.send(sock, {"rpc": rpc})
        with world.reader(sock) as reader:
            answer = reader.recv().get("rpc_reply")
    except (OSError, protocol.ProtocolError) as exc:
        return {"error": f"client gone: {exc}"}
    return answer if isinstance(answer, dict) else {"error": "malformed relay answer"}


def _watch(sock: socket.socket, cancel: threading.Event, done: threading.Event) -> None:
    """Cancel the run if the client hangs up (EOF on its socket) before it ends."""
    while not done.is_set():
        readable, _, _ = select.select([sock], [], [], WATCH_INTERVAL)
        if readable and not done.is_set():
            try:
                if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                    cancel.set()
                    return
            except BlockingIOError:
                continue
            except OSError:
                cancel.set()
                return
            # Data pending (a relay answer): the client is alive; look again shortly.
            done.wait(WATCH_INTERVAL)


def _tls(
    world: SecureWorld, sock: socket.socket, sid: int, cmd: Any, params: list[Any]
) -> dict[str, Any]:
    """The TLS TA (attested TLS, see veritee.tee.tls_ta): p0 in CBOR request, p1 out reply."""
    answer = tls_ta.invoke(world, sid, cmd, _memref(params, 0)["buf"])
    return _reply(params, {1: _out(params, 1, answer)})


# The trusted applications of this TEE, by UUID: add a TA here.
_TAS = {RUNTIME_TA: _runtime, SYSTEM_TA: _system, APP_TA: _app, TLS_TA: _tls}


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    world: SecureWorld
    slots: threading.BoundedSemaphore

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.settimeout(WATCH_INTERVAL)
                protocol.send(
                    request,
                    {
                        "rc": teec.TEEC_ERROR_BUSY,
                        "origin": teec.TEEC_ORIGIN_TEE,
                        "msg": f"this TEE already serves {MAX_CONNECTIONS} connections",
                    },
                )
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def serve(handoff: dict[str, Any], ready: Any = None) -> None:
    """Run one vTEE until SIGTERM; ``ready`` (a writable file) gets one line once listening."""
    world = SecureWorld(handoff)
    path = Path(handoff["socket"])
    # The monitor holds the home's lock, so a socket here is a dead vTEE's: replace it.
    path.unlink(missing_ok=True)
    old = os.umask(0o077)
    try:
        server = _Server(str(path), _Connection)
    finally:
        os.umask(old)
    sock_id = lifeline.own_file(path)
    server.world = world
    server.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def stop(_signo: int, _frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("vTEE %s listening on %s", world.identity.name, path)
    if ready is not None:
        ready.write("ready\n")
        ready.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        lifeline.remove_own(path, sock_id)  # never a socket another vTEE bound since
        server.server_close()
        world.pool.close()
        world.modules.clear()


def main() -> None:
    """Entry of a vTEE process: the handoff arrives as one CBOR map on stdin."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s vtee[%(process)d] %(levelname)s %(message)s"
    )
    if not spawn.isolated():
        # Only the monitor starts a vTEE, and it starts it isolated (tee/spawn.py).
        log.error("a vTEE must run in an isolated interpreter with its own environment")
        sys.exit(1)
    handoff = cbor2.loads(sys.stdin.buffer.read())
    sys.stdin.close()
    if "lifeline_fd" in handoff:
        lifeline.watch(int(handoff["lifeline_fd"]))  # end with the monitor, however it ends
    serve(handoff, ready=sys.stdout)
    # wasmtime's worker threads must not outlive the objects they call back into.
    os._exit(0)


if __name__ == "__main__":
    main()
