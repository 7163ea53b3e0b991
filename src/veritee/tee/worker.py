"""Module workers: each run of a module happens in a fresh process of the secure world.

Why processes: the time budget and a client's hang-up must be able to stop a module at any
instruction, and the only mechanisms wasmtime offers inside a process (epoch interruption,
fuel) slowed the compute kernels by 1.7-1.8x (bench/compute.py). Ending a process costs the
module nothing while it runs. A fresh process per run also keeps one module's leftovers
(heap, wasmtime internals) away from the next module.

A worker is told only what its one run needs: the authenticated artifact's path and digest,
that module's sealing key (never the vTEE's sealing root), its inputs and limits. The pool
keeps a few workers started ahead (importing wasmtime takes ~0.1 s), so runs do not wait.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from veritee.errors import ModuleError, ModuleLimitExceeded, SecureWorldError, UsageError
from veritee.tee import lifeline, protocol, spawn

log = logging.getLogger("veritee.worker")

POOL_SIZE = 2  # warm workers kept ready; each is one idle Python process (~40 MB)
POLL_INTERVAL = 0.05  # seconds between checks of the deadline and the client while a run goes


class _Worker:
    def __init__(self, line: lifeline.Lifeline) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock = parent
        # The lifeline ends the worker with its vTEE, even in the middle of a run (when it
        # does not read its socket): a worker holds a module's sealing key.
        self.process = subprocess.Popen(
            spawn.command("veritee.tee.worker", str(child.fileno()), str(line.child_fd)),
            pass_fds=(child.fileno(), line.child_fd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            env=spawn.environment(),  # isolated like every secure-world process (tee/spawn.py)
            cwd=spawn.WORKING_DIRECTORY,
        )
        child.close()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.sock.close()


class WorkerPool:
    """Hands each run to a fresh worker process; ends it at the deadline or on cancel."""

    def __init__(self, size: int = POOL_SIZE) -> None:
        self._size = size
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self._lifeline = lifeline.Lifeline()  # every worker's; its write end only here
        for _ in range(size):
            self._idle.append(_Worker(self._lifeline))

    def _take(self) -> _Worker:
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        threading.Thread(target=self._refill, daemon=True).start()
        return worker or _Worker(self._lifeline)

    def _refill(self) -> None:
        with self._lock:
            missing = 0 if self._closed else self._size - len(self._idle)
        for _ in range(missing):
            fresh = _Worker(self._lifeline)
            with self._lock:
                if self._closed or len(self._idle) >= self._size:
                    fresh.kill()
                else:
                    self._idle.append(fresh)

    def run(
        self,
        job: dict[str, Any],
        time_seconds: float,
        cancelled: Callable[[], bool],
        relay: Relay | None = None,
    ) -> dict[str, Any]:
        """Run ``job`` in a worker; return its reply, or raise when stopped or failed.

        Requests the worker makes of the normal world (``{"rpc": …}``) go to ``relay``.
        """
        worker = self._take()
        try:
            return _exchange(worker, job, time_seconds, cancelled, relay)
        finally:
            worker.kill()

    def reactor(
        self, job: dict[str, Any], time_seconds: float, relay: Relay | None
    ) -> ReactorProcess:
        """Start a long-lived module instance in a worker of its own."""
        worker = self._take()
        try:
            reply = _exchange(worker, {**job, "op": "reactor"}, time_seconds, _never, relay)
        except BaseException:
            worker.kill()
            raise
        if "error" in reply:
            worker.kill()
            raise_for(reply)
        return ReactorProcess(worker, str(reply.get("log", "")))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for w in idle:
            w.kill()


Relay = Callable[[dict[str, Any]], dict[str, Any]]


def _never() -> bool:
    return False


def _exchange(
    worker: _Worker,
    message: dict[str, Any],
    time_seconds: float,
    cancelled: Callable[[], bool],
    relay: Relay | None,
) -> dict[str, Any]:
    """Send one message to a worker and wait for its answer, serving its relay requests."""
    deadline = time.monotonic() + time_seconds
    try:
        protocol.send(worker.sock, message)
        while True:
            ready, _, _ = select.select([worker.sock], [], [], POLL_INTERVAL)
            if ready:
                answer = protocol.recv(worker.sock)
                if "rpc" not in answer:
                    return answer
                rpc = answer["rpc"]
                result = relay(rpc) if relay and isinstance(rpc, dict) else {"error": "no relay"}
                protocol.send(worker.sock, {"rpc_reply": result})
            # Checked after each relayed request too: a module streaming output without
            # pause never leaves select idle, and must still stop at its deadline.
            if cancelled():
                raise ModuleLimitExceeded("module stopped: cancelled, the client went away")
            if time.monotonic() >= deadline:
                raise ModuleLimitExceeded(
                    f"module stopped: time budget of {time_seconds:g} s exhausted"
                )
    except (OSError, protocol.ProtocolError):
        code = worker.process.poll()
        raise SecureWorldError(f"module worker died (exit status {code})") from None


class ReactorProcess:
    """The vTEE's handle on a long-lived module instance; one call at a time."""

    def __init__(self, worker: _Worker, log: str) -> None:
        self._worker = worker
        self.initial_log = log
        self._lock = threading.Lock()

    def call(self, export: str, payload: bytes, time_seconds: float, relay: Relay) -> str:
        """Call an endpoint; raise (and end the instance) if it fails or overruns."""
        with self._lock:
            try:
                reply = _exchange(
                    self._worker, {"call": export, "payload": payload}, time_seconds, _never, relay
                )
            except BaseException:
                self.close()
                raise
        raise_for(reply)
        return str(reply.get("log", ""))

    @property
    def alive(self) -> bool:
        return self._worker.process.poll() is None

    def close(self) -> None:
        if self._worker.process.poll() is None:
            self._worker.kill()


def _serve(fd: int) -> None:
    """Worker side: wait for one job, run it, reply, exit."""
    import cbor2  # noqa: F401 - imported ahead, with wasmtime, so a job starts at once
    from cryptography.hazmat.primitives import serialization

    from veritee.evidence.provisioning import ProvisioningKeys
    from veritee.tee.services import ModuleServices
    from veritee.wasm import runtime

    engine = runtime.new_engine()
    sock = socket.socket(fileno=fd)
    try:
        job = protocol.recv(sock)
    except protocol.ProtocolError:
        return  # the pool closed us before giving us work
    fuel = job.get("fuel")
    if fuel is not None:
        engine = runtime.new_engine(fuel=True)  # the artifact was compiled to count fuel
    try:
        module = runtime.load_artifact(engine, Path(job["artifact_path"]), job["artifact_digest"])
        preopens = _open_preopens(job)
        notes: list[str] = []
        relay_lock = threading.Lock()  # output may come from wasmtime's threads

        def relay(request: dict[str, Any]) -> dict[str, Any]:
            with relay_lock:  # one request in flight: the answer is this request's
                protocol.send(sock, {"rpc": request})
                answer = protocol.recv(sock).get("rpc_reply")
            return answer if isinstance(answer, dict) else {"error": "bad relay answer"}

        def stream(fd: int, data: bytes) -> None:
            # One chunk in flight: the module's write returns once the client has taken it.
            relay({"op": "output", "fd": fd, "data": data})

        def stdin_piece() -> tuple[bytes, bool]:
            # What the client has read of its stdin since we last asked, never waiting for
            # more: the relay is one request at a time, and output must not queue behind it.
            answer = relay({"op": "stdin", "max": runtime.STDIN_CHUNK_BYTES})
            data = answer.get("data")
            if not isinstance(data, bytes) or len(data) > runtime.STDIN_CHUNK_BYTES:
                if "error" not in answer:  # a client that does not speak it: EOF, said once
                    notes.append("veritee: stdin closed: malformed stdin piece from the client")
                return b"", True
            return data, answer.get("eof") is True

        request = runtime.RunRequest(
            args=tuple(job["args"]),
            env=tuple((k, v) for k, v in job["env"]),
            stdin=job["stdin"],
            preopens=preopens,
            invoke=job.get("invoke"),
            stdin_stream=stdin_piece if job.get("stdin_stream") else None,
        )
        limits = runtime.Limits(memory_bytes=job["memory"], time_seconds=job["time"], fuel=fuel)

        key = serialization.load_der_private_key(job["attestation_key"], password=None)
        services = ModuleServices(
            measurement=job["measurement"],
            seal_key=job["seal_key"],
            unseal_keys=[(k, m) for k, m in job.get("unseal_keys", [])],
            attestation_key=key,  # type: ignore[arg-type]
            platform_token=job["platform_token"],
            vtee_token=job["vtee_token"],
            config=job["config_digest"],
            name=job["name"],
            keys=ProvisioningKeys.restore(job["provisioning"]),
            relay=relay if job.get("relay") else None,
            note=notes.append,
        )
        if job.get("op") == "reactor":
            _serve_reactor(sock, engine, module, limits, services, job, notes, preopens)
            return
        result = runtime.execute(
            engine,
            module,
            request,
            limits,
            services,
            name=job["name"],
            scratch_dir=Path(job["scratch"]),
            output=stream if job.get("stream") else None,
        )
        reply: dict[str, Any] = {
            "exit": result.exit_code,
            "stdout": result.stdout,
            "stderr": result.stderr + "".join(f"{n}\n" for n in notes).encode(),
            "elapsed": result.elapsed,
            "truncated": result.truncated,
        }
        if result.fuel_used is not None:
            reply["fuel_used"] = result.fuel_used
        if result.stop_kind is not None:
            reply["stop"] = [result.stop_kind, result.stop_message]
    except (ModuleError, UsageError) as exc:  # UsageError: a grant moved since load
        reply = {"error": type(exc).__name__, "message": str(exc)}
    protocol.send(sock, reply)


def _serve_reactor(
    sock: socket.socket,
    engine: Any,
    module: Any,
    limits: Any,
    services: Any,
    job: dict[str, Any],
    notes: list[str],
    preopens: tuple[Any, ...],
) -> None:
    """Worker side of a long-lived instance: instantiate once, then call endpoints."""
    from veritee.wasm import runtime

    reactor = runtime.Reactor(
        engine,
        module,
        limits,
        services,
        name=job["name"],
        preopens=preopens,
    )
    protocol.send(sock, {"ready": True, "log": "".join(notes)})
    while True:
        try:
            message = protocol.recv(sock)
        except protocol.ProtocolError:
            return  # the vTEE let this instance go
        notes.clear()
        try:
            log = reactor.call(str(message["call"]), message["payload"])
            reply: dict[str, Any] = {"log": log + "".join(f"{n}\n" for n in notes)}
        except ModuleError as exc:
            reply = {"error": type(exc).__name__, "message": str(exc)}
        protocol.send(sock, reply)
        if "error" in reply:
            return  # a trapped instance is not trusted to go on


def _open_preopens(job: dict[str, Any]) -> tuple[Any, ...]:
    """The job's directories, each opened and checked here, named by its descriptor.

    The vTEE checked them at load; the normal world owns the disk and may since have put a
    symlink into the secure world's state where a checked directory was. What the module
    gets is the directory this process opened and checked (``grants.open_checked``); the
    descriptors stay open until the process ends. The first ``private_preopens`` are the
    module's own storage (inside the vTEE, so only checked not to have moved).
    """
    from veritee.tee import grants
    from veritee.wasm import runtime

    protected = tuple(Path(p) for p in job.get("protected", []))
    private = int(job.get("private_preopens", len(job["preopens"])))
    out = []
    for i, (host, guest, writable) in enumerate(job["preopens"]):
        _, fd_path = grants.open_checked(host, () if i < private else protected)
        out.append(runtime.Preopen(fd_path, guest, writable))
    return tuple(out)


def raise_for(reply: dict[str, Any]) -> None:
    """Turn a worker's error reply back into the exception it reported."""
    kind = reply.get("error")
    if kind is None:
        return
    from veritee.tee.grants import GrantMoved, GrantRefused
    from veritee.wasm.runtime import ArtifactChanged  # wasmtime: only once a call failed

    cls: type[Exception] = {
        "ModuleLimitExceeded": ModuleLimitExceeded,
        "ArtifactChanged": ArtifactChanged,
        "GrantMoved": GrantMoved,
        "GrantRefused": GrantRefused,
        "UsageError": UsageError,
    }.get(str(kind), ModuleError)
    raise cls(str(reply.get("message", "module failed")))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    if len(sys.argv) > 2:
        lifeline.watch(int(sys.argv[2]))  # end with the vTEE, however it ends
    _serve(int(sys.argv[1]))
    # wasmtime's threads must not outlive the objects they call back into.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
