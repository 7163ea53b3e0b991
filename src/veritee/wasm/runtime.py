"""The Wasm runtime the secure world embeds: wasmtime, an authenticated AOT cache, and limits.

Compilation happens once per module (:class:`Compiler`, in the vTEE); the compiled artifact is
kept on disk under an HMAC tag. Execution (:func:`execute`) happens in a fresh worker process
per run, which deserialises the authenticated artifact into its own ``Store`` with a memory
cap from wasmtime's store limiter. The time budget is enforced from outside by ending the
worker, so compiled code carries no interruption checks at all: bench/compute.py measured
epoch interruption and fuel at about 1.7-1.8x the run time of uninstrumented code on the
PolyBench kernels (Cranelift spills loop-carried floating point values around the check).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import hmac
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import wasmtime

from veritee.errors import ModuleError, ModuleLimitExceeded, UsageError
from veritee.wasm import hostfns

log = logging.getLogger(__name__)

MAX_MODULE_BYTES = 256 * 1024 * 1024  # a module larger than this is refused before compiling
MAX_OUTPUT_BYTES = 16 * 1024 * 1024  # per stream, when collected (not streamed): more is dropped
# so a chatty module cannot OOM us. Streamed output has no total: it is sent as written.
STREAM_CHUNK_BYTES = 64 * 1024  # a write is streamed in pieces of at most this size
# Streamed stdin: the pump asks the normal world for at most this much at a time, and, when
# nothing was waiting, asks again after a pause that grows to STDIN_IDLE_MAX_S (an idle
# client is polled ten times a second, not in a busy loop that would starve the output).
STDIN_CHUNK_BYTES = 64 * 1024
STDIN_IDLE_MIN_S = 0.002
STDIN_IDLE_MAX_S = 0.1
MEMORY_CACHE_ENTRIES = 64  # compiled modules kept in memory (LRU); the disk cache holds the rest
MEMORY_NEAR_LIMIT = 0.9  # a module that failed while using this share of its cap ran out of memory
EVENT_ROOM_BYTES = 64 * 1024  # module memory kept for events; a larger one gets more

# Import modules a guest may name. Anything else is refused before instantiation.
OFFERED_IMPORTS = ("wasi_snapshot_preview1", hostfns.MODULE)


@dataclass(frozen=True)
class Limits:
    """What one module instance may consume."""

    memory_bytes: int = 256 * 1024 * 1024
    time_seconds: float = 300.0
    # Opt-in instruction budget (wasmtime fuel): deterministic, unlike the wall clock, at
    # the cost of instrumented code (see the module docstring); None: no fuel accounting.
    fuel: int | None = None

    def to_cbor(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "memory": self.memory_bytes,
            "time_ms": int(self.time_seconds * 1000),
        }
        if self.fuel is not None:
            out["fuel"] = self.fuel  # only when set: digests of runs without fuel unchanged
        return out


@dataclass(frozen=True)
class Preopen:
    """A directory the module may reach: ``host`` path inside the secure world, ``guest`` name."""

    host: str
    guest: str
    writable: bool = True


@dataclass(frozen=True)
class RunRequest:
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    stdin: bytes = b""
    preopens: tuple[Preopen, ...] = ()
    # Call this export with ``args`` as its parameters instead of running ``_start``
    # (wasmtime run --invoke); its results are printed on stdout, one a line.
    invoke: str | None = None
    # Streamed stdin instead of ``stdin``: called for the next piece as the module reads,
    # returning (bytes, at end); see :class:`_StdinPump`.
    stdin_stream: Callable[[], tuple[bytes, bool]] | None = None


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    elapsed: float
    truncated: bool = False
    # Set when the module was stopped (trap, limit) after it started: what it wrote before
    # stays in stdout/stderr, so the user sees it with the reason (kind: an errors.py name).
    stop_kind: str | None = None
    stop_message: str = ""
    fuel_used: int | None = None  # instructions' fuel consumed, when a fuel budget was set


@dataclass(frozen=True)
class CompiledModule:
    """A validated module whose authenticated native artifact is on disk."""

    measurement: bytes
    artifact_path: Path
    artifact_digest: bytes  # SHA-256 of the artifact bytes, checked by the worker that loads it
    wasm_size: int
    from_cache: bool
    exports: tuple[str, ...] = field(default=())
    fuel: bool = False  # compiled with fuel accounting (an engine of its own)


def new_engine(*, fuel: bool = False) -> Any:
    """The engine configuration compiler and workers share (artifacts depend on it).

    ``fuel``: code that counts its instructions, for runs with a fuel budget only.
    """
    config = wasmtime.Config()
    config.cranelift_opt_level = "speed"
    config.consume_fuel = fuel
    return wasmtime.Engine(config)


def wasmtime_version() -> str:
    """Version of the wasmtime package the runtime is built on (part of the boot measurement)."""
    from importlib.metadata import version

    return version("wasmtime")


def measure(wasm: bytes) -> bytes:
    """A module's measurement: SHA-256 of its binary bytes."""
    return hashlib.sha256(wasm).digest()


def to_binary(data: bytes) -> bytes:
    """Return Wasm binary bytes; WAT text is converted (the binary is what gets measured)."""
    if data[:4] == b"\0asm":
        return data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ModuleError(
            "module is not a Wasm binary (no \\0asm magic) and not WAT text"
        ) from None
    if not _looks_like_wat(text):
        raise ModuleError(
            "module is not a Wasm binary (no \\0asm magic) and not WAT text (no '(module')"
        )
    try:
        return bytes(wasmtime.wat2wasm(text))
    except wasmtime.WasmtimeError as exc:
        raise ModuleError(f"WAT text does not parse: {_first_line(exc)}") from None


def _looks_like_wat(text: str) -> bool:
    """Whether ``text`` starts, after blanks and comments, with a WAT s-expression."""
    rest = text.lstrip()
    while rest.startswith((";;", "(;")):
        if rest.startswith(";;"):
            _, _, rest = rest.partition("\n")
        else:
            end = rest.find(";)")
            if end < 0:
                return False
            rest = rest[end + 2 :]
        rest = rest.lstrip()
    return rest.startswith("(")


class Compiler:
    """Compiles modules, or takes them from the AOT cache after checking its HMAC tag."""

    def __init__(self, cache_dir: Path, cache_key: bytes, *, fuel: bool = False) -> None:
        self.fuel = fuel
        self.engine = new_engine(fuel=fuel)
        self._cache_dir = cache_dir
        self._cache_key = cache_key
        # Fuel-counting code is another artifact: its own tag and name, never confused.
        variant = ";fuel" if fuel else ""
        self._fingerprint = f"wasmtime-{wasmtime_version()};veritee-engine-1{variant}".encode()
        self._memory: OrderedDict[bytes, CompiledModule] = OrderedDict()
        self._lock = threading.Lock()
        self._fuel_variant: Compiler | None = None
        cache_dir.mkdir(parents=True, exist_ok=True)

    def for_limits(self, limits: Limits) -> Compiler:
        """This compiler, or its fuel-counting sibling when ``limits`` set a fuel budget."""
        if limits.fuel is None or self.fuel:
            return self
        with self._lock:
            if self._fuel_variant is None:
                self._fuel_variant = Compiler(self._cache_dir, self._cache_key, fuel=True)
            return self._fuel_variant

    def compile(self, wasm: bytes) -> CompiledModule:
        """Validate and compile ``wasm``, or take it from the cache; raise :class:`ModuleError`."""
        if len(wasm) > MAX_MODULE_BYTES:
            raise ModuleError(f"module is {len(wasm)} bytes; the limit is {MAX_MODULE_BYTES}")
        measurement = measure(wasm)
        with self._lock:
            cached = self._memory.get(measurement)
            if cached is not None:
                self._memory.move_to_end(measurement)
                return cached
        module, artifact = self._load_artifact(measurement)
        from_cache = module is not None
        if module is None:
            try:
                module = wasmtime.Module(self.engine, wasm)
            except wasmtime.WasmtimeError as exc:
                raise ModuleError(f"module does not validate: {_first_line(exc)}") from None
            artifact = bytes(module.serialize())
            self._store_artifact(measurement, artifact)
        _check_imports(module)
        compiled = CompiledModule(
            measurement=measurement,
            artifact_path=self._artifact_path(measurement),
            artifact_digest=hashlib.sha256(artifact).digest(),
            wasm_size=len(wasm),
            from_cache=from_cache,
            exports=tuple(e.name for e in module.exports),
            fuel=self.fuel,
        )
        with self._lock:
            self._memory[measurement] = compiled
            while len(self._memory) > MEMORY_CACHE_ENTRIES:
                self._memory.popitem(last=False)
        return compiled

    def forget(self, measurement: bytes) -> None:
        """Drop a module from the in-memory index (its artifact changed under us)."""
        with self._lock:
            self._memory.pop(measurement, None)

    def _artifact_tag(self, measurement: bytes, artifact: bytes) -> bytes:
        mac = hmac.new(self._cache_key, digestmod=hashlib.sha256)
        for part in (self._fingerprint, measurement, artifact):
            mac.update(len(part).to_bytes(8, "big"))
            mac.update(part)
        return mac.digest()

    def _artifact_path(self, measurement: bytes) -> Path:
        return self._cache_dir / f"{measurement.hex()}{'.fuel' if self.fuel else ''}.cwasm"

    def _load_artifact(self, measurement: bytes) -> tuple[Any, bytes]:
        path = self._artifact_path(measurement)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None, b""
        tag, artifact = blob[:32], blob[32:]
        # Deserialising native code runs it unchecked: only artifacts we authenticated may load.
        if len(tag) != 32 or not hmac.compare_digest(
            tag, self._artifact_tag(measurement, artifact)
        ):
            log.warning("AOT artifact %s failed authentication; recompiling", path.name)
            path.unlink(missing_ok=True)
            return None, b""
        try:
            return wasmtime.Module.deserialize(self.engine, artifact), artifact
        except wasmtime.WasmtimeError:
            log.warning("AOT artifact %s is incompatible with this engine; recompiling", path.name)
            return None, b""

    def _store_artifact(self, measurement: bytes, artifact: bytes) -> None:
        blob = self._artifact_tag(measurement, artifact) + artifact
        fd, tmp = tempfile.mkstemp(dir=self._cache_dir, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, self._artifact_path(measurement))


class ArtifactChanged(ModuleError):
    """The artifact on disk is not the one the compiler authenticated (changed since)."""


def load_artifact(engine: Any, path: Path, digest: bytes) -> Any:
    """Read an artifact the compiler authenticated, check it is that one, deserialise it."""
    try:
        blob = path.read_bytes()
    except OSError:
        raise ArtifactChanged(f"AOT artifact {path.name} is gone") from None
    artifact = blob[32:]
    # Read once, check, then deserialise the same bytes: nothing can swap them in between.
    if not hmac.compare_digest(hashlib.sha256(artifact).digest(), digest):
        raise ArtifactChanged(f"AOT artifact {path.name} changed after it was authenticated")
    return wasmtime.Module.deserialize(engine, artifact)


def execute(
    engine: Any,
    module: Any,
    request: RunRequest,
    limits: Limits,
    services: hostfns.HostServices,
    *,
    name: str = "module",
    scratch_dir: Path | None = None,
    output: Callable[[int, bytes], None] | None = None,
) -> RunResult:
    """Run a WASI command to completion in this process, under the memory limit.

    ``output``: called with (1 or 2, bytes) as the module writes stdout or stderr, in pieces
    of at most :data:`STREAM_CHUNK_BYTES`, blocking the module's write until it returns (a
    slow reader slows the module, nothing piles up here); without it, output is collected.
    The time budget is the caller's to enforce (by ending this process); raise
    :class:`ModuleError` if the module cannot run.
    """
    stdout: _Capture | _Stream
    stderr: _Capture | _Stream
    if output is not None:
        stdout, stderr = _Stream(1, output), _Stream(2, output)
    else:
        stdout, stderr = _Capture(), _Capture()
    wasi = wasmtime.WasiConfig()
    wasi.argv = [name, *request.args]
    wasi.env = [list(kv) for kv in request.env]
    wasi.stdout_custom = stdout.write
    wasi.stderr_custom = stderr.write
    stdin_path = None
    pump: _StdinPump | None = None
    if request.stdin_stream is not None:
        pump = _StdinPump(request.stdin_stream, scratch_dir)
        wasi.stdin_file = str(pump.path)  # opens the FIFO's read end; the pump has the other
    elif request.stdin:
        fd, stdin_path = tempfile.mkstemp(dir=scratch_dir, prefix="stdin-")
        with os.fdopen(fd, "wb") as f:
            f.write(request.stdin)
        wasi.stdin_file = stdin_path
    for p in request.preopens:
        wasi.preopen_dir(p.host, p.guest, p.writable)

    store = wasmtime.Store(engine)
    store.set_wasi(wasi)
    store.set_limits(memory_size=limits.memory_bytes)
    if limits.fuel is not None:
        store.set_fuel(limits.fuel)
    started = time.monotonic()
    linker = wasmtime.Linker(engine)
    _define_wasi(linker, store)
    callbacks = hostfns.define(linker, services)  # alive until the store is gone
    instance = None
    exit_code = 0
    fuel_used: int | None = None
    entry = request.invoke or "_start"
    failure: ModuleError | UsageError | None = None  # before it ran: nothing to show
    stopped: ModuleError | None = None  # after it started: shown with what it wrote
    try:
        try:
            instance = linker.instantiate(store, module)
        except wasmtime.WasmtimeError as exc:
            msg = _first_line(exc)
            if ("memory" in msg and "limit" in msg) or "exceeds" in msg:
                failure = ModuleLimitExceeded(
                    f"module needs more memory than its limit of {_mib(limits.memory_bytes)}"
                )
            else:
                failure = ModuleError(f"module cannot be instantiated: {msg}")
        func: Any = instance.exports(store).get(entry) if instance is not None else None
        if instance is not None and request.invoke is None and func is None:
            failure = ModuleError("module has no '_start' export: it is not a WASI command")
        elif instance is not None and not isinstance(func, wasmtime.Func):
            failure = UsageError(f"--invoke {entry}: the module exports no function of that name")
        elif instance is not None:
            try:
                params = _invoke_params(store, func, request) if request.invoke else []
                if request.invoke and "_initialize" in instance.exports(store):
                    init: Any = instance.exports(store)["_initialize"]
                    init(store)  # a reactor: set up first, as wasmtime run does
                results = func(store, *params)
                if request.invoke:
                    stdout.write(_format_results(results))
            except UsageError as exc:
                failure = exc
            except wasmtime.ExitTrap as exc:
                exit_code = exc.code
            except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
                stopped = _classify(exc, _memory_exhausted(instance, store, limits), limits)
            if limits.fuel is not None:
                fuel_used = limits.fuel - int(store.get_fuel())
            if exit_code != 0 and _memory_exhausted(instance, store, limits):
                # malloc failing under the cap makes a C module exit(1): that is the limit's
                # doing, not the module's answer, so it is reported as the limit (exit 5).
                stopped = ModuleLimitExceeded(
                    f"module stopped: memory limit of {_mib(limits.memory_bytes)} reached "
                    f"(it exited with code {exit_code})"
                )
    finally:
        # Drop the store now: wasmtime's WASI threads call back into its output capture,
        # and a store kept alive (say, by a traceback) outlives the interpreter otherwise.
        del instance, store, linker, wasi, callbacks
        if stdin_path:
            os.unlink(stdin_path)
        if pump is not None:
            pump.stop()  # before the caller replies: the pump shares its channel
    if failure is not None:
        # Raised outside the except blocks, so no traceback keeps the store alive.
        raise failure
    truncated = stdout.truncated or stderr.truncated
    if stopped is None and truncated:
        stopped = ModuleLimitExceeded(
            f"module output went over {_mib(MAX_OUTPUT_BYTES)} on one stream; the rest was dropped"
        )
    return RunResult(
        exit_code=exit_code,
        stdout=stdout.value(),
        stderr=stderr.value(),
        elapsed=time.monotonic() - started,
        truncated=truncated,
        stop_kind=type(stopped).__name__ if stopped is not None else None,
        stop_message=str(stopped) if stopped is not None else "",
        fuel_used=fuel_used,
    )


class _StdinPump:
    """Feeds a module's stdin as the normal world provides it, through a FIFO.

    wasmtime's WASI reads stdin from a file (its Python API has no custom stdin): the file
    is a FIFO in the worker's private scratch directory, and a thread writes into it what
    ``fetch`` returns. A write blocks while the module does not read (the pipe's buffer is
    the only queue here), and the module's read blocks until the next piece comes, as a
    pipe's would. ``fetch`` returning at-end closes the FIFO: the module reads EOF.
    """

    def __init__(self, fetch: Callable[[], tuple[bytes, bool]], scratch_dir: Path | None) -> None:
        self._fetch = fetch
        self._dir = Path(tempfile.mkdtemp(dir=scratch_dir, prefix="stdin-"))
        self.path = self._dir / "stdin"
        os.mkfifo(self.path, 0o600)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stdin-pump", daemon=True)
        self._thread.start()

    def _open(self) -> int | None:
        # Non-blocking until the module's side is open, so stop() never waits on an open()
        # that no reader will complete (a module that failed before wasmtime opened it).
        while not self._stopping.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:  # ENXIO: no reader yet
                time.sleep(STDIN_IDLE_MIN_S)
                continue
            os.set_blocking(fd, True)
            return fd
        return None

    def _run(self) -> None:
        fd = self._open()
        if fd is None:
            return
        idle = STDIN_IDLE_MIN_S
        try:
            while not self._stopping.is_set():
                data, at_end = self._fetch()
                view = memoryview(data)
                while view and not self._stopping.is_set():
                    view = view[os.write(fd, view) :]
                if at_end:
                    return
                if data:
                    idle = STDIN_IDLE_MIN_S
                else:
                    self._stopping.wait(idle)
                    idle = min(idle * 2, STDIN_IDLE_MAX_S)
        except OSError:  # EPIPE: the module's side is closed (it ended); nothing to feed
            return
        finally:
            os.close(fd)

    def stop(self) -> None:
        """End the pump (the module has ended, so its reader is closed and writes fail)."""
        self._stopping.set()
        self._thread.join()
        self.path.unlink(missing_ok=True)
        self._dir.rmdir()


def _invoke_params(store: Any, func: Any, request: RunRequest) -> list[Any]:
    """The command-line arguments as ``func``'s parameters (as wasmtime run --invoke)."""
    params = list(func.type(store).params)
    if len(params) != len(request.args):
        raise UsageError(
            f"--invoke {request.invoke}: the function takes {len(params)} argument(s) "
            f"({', '.join(str(p) for p in params) or 'none'}), {len(request.args)} given"
        )
    out: list[Any] = []
    for i, (ty, text) in enumerate(zip(params, request.args, strict=True), 1):
        kind = str(ty)
        try:
            if kind in ("i32", "i64"):
                value: Any = int(text, 0)
                bits = 32 if kind == "i32" else 64
                if not -(1 << (bits - 1)) <= value < (1 << bits):
                    raise ValueError
                if value >= 1 << (bits - 1):
                    value -= 1 << bits  # written unsigned: the same bits
            elif kind in ("f32", "f64"):
                value = float(text)
            else:
                raise UsageError(
                    f"--invoke {request.invoke}: argument {i} is of type {kind}, "
                    "which cannot be given on the command line"
                )
        except ValueError:
            raise UsageError(
                f"--invoke {request.invoke}: argument {i} {text!r} is not a valid {kind}"
            ) from None
        out.append(value)
    return out


def _format_results(results: Any) -> bytes:
    values = results if isinstance(results, list | tuple) else [] if results is None else [results]
    return b"".join(f"{v}\n".encode() for v in values)


def _classify(exc: BaseException, memory_exhausted: bool, limits: Limits) -> ModuleError:
    if "all fuel consumed" in str(exc):
        return ModuleLimitExceeded(
            f"module stopped: fuel budget of {limits.fuel} exhausted ({_first_line(exc)})"
        )
    if memory_exhausted:
        return ModuleLimitExceeded(
            f"module stopped: memory limit of {_mib(limits.memory_bytes)} reached "
            f"({_first_line(exc)})"
        )
    return ModuleError(f"module trapped: {_first_line(exc)}")


class _Stream:
    """Hands a WASI output stream on as it is written (see :func:`execute`)."""

    truncated = False

    def __init__(self, fd: int, sink: Callable[[int, bytes], None]) -> None:
        self._fd, self._sink = fd, sink

    def write(self, data: Any) -> None:
        view = bytes(data)
        for i in range(0, len(view), STREAM_CHUNK_BYTES):
            self._sink(self._fd, view[i : i + STREAM_CHUNK_BYTES])

    def value(self) -> bytes:
        return b""


class _Capture:
    """Collects a WASI output stream up to ``MAX_OUTPUT_BYTES``."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self.truncated = False

    def write(self, data: Any) -> None:
        room = MAX_OUTPUT_BYTES - self._size
        chunk = bytes(data[:room]) if room > 0 else b""
        if len(chunk) < len(data):
            self.truncated = True
        self._chunks.append(chunk)
        self._size += len(chunk)

    def value(self) -> bytes:
        return b"".join(self._chunks)

    def take(self) -> bytes:
        """What was captured so far, emptying the capture (WASI stays bound to it)."""
        data = self.value()
        self._chunks, self._size, self.truncated = [], 0, False
        return data


# WASI preview 1 as wasmtime defines it, with ``sock_shutdown`` answering undefined flags:
# wasmtime traps on undefined ``sdflags`` bits before it looks at the descriptor, where
# POSIX and the wasi-testsuite expect an errno (EBADF for a bad descriptor, ENOTSOCK for a
# non-socket, EINVAL for bad flags on a socket). The shim judges the descriptor with
# wasmtime's own sock_shutdown and the valid bits only: Veritee grants modules no sockets,
# so that call never shuts anything down. It is Wasm, not a host function, so that WASI
# sees a calling instance (with a memory export, empty); it shares the store's WASI state.
_WASI_SHIM = """(module
  (import "wasi_snapshot_preview1" "sock_shutdown" (func $ss (param i32 i32) (result i32)))
  (memory (export "memory") 0)
  (func (export "sock_shutdown") (param $fd i32) (param $how i32) (result i32)
    (local $errno i32)
    (if (result i32) (i32.and (local.get $how) (i32.const -4))
      (then
        (local.set $errno (call $ss (local.get $fd) (i32.const 3)))
        (select (local.get $errno) (i32.const 28) (local.get $errno)))
      (else (call $ss (local.get $fd) (local.get $how))))))"""


@functools.lru_cache(maxsize=4)  # one engine per worker process
def _wasi_shim(engine: Any) -> Any:
    return wasmtime.Module(engine, _WASI_SHIM)


def _define_wasi(linker: Any, store: Any) -> None:
    linker.define_wasi()
    instance = linker.instantiate(store, _wasi_shim(linker.engine))
    linker.allow_shadowing = True
    linker.define(
        store, "wasi_snapshot_preview1", "sock_shutdown", instance.exports(store)["sock_shutdown"]
    )
    linker.allow_shadowing = False


def _check_imports(module: Any) -> None:
    offered = hostfns.NAMES
    for imp in module.imports:
        if imp.module == "wasi_snapshot_preview1":
            continue
        if imp.module == hostfns.MODULE and imp.name in offered:
            continue
        raise ModuleError(
            f"module imports {imp.module}.{imp.name}, which Veritee does not offer "
            f"(offered: WASI preview 1 and {hostfns.MODULE}.{{{', '.join(sorted(offered))}}})"
        )


def _memory_exhausted(instance: Any, store: Any, limits: Limits) -> bool:
    if instance is None:
        return False
    memory = instance.exports(store).get("memory")
    if not isinstance(memory, wasmtime.Memory):
        return False
    # wasmtime's store limiter makes memory.grow return -1 without telling the host, so a
    # failure is charged to the memory limit when the module had grown to near it.
    return bool(memory.data_len(store) >= limits.memory_bytes * MEMORY_NEAR_LIMIT)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if "Caused by:" in lines[:-1]:
        # wasmtime puts the backtrace first and the reason ("wasm trap: ...") after it.
        return lines[lines.index("Caused by:") + 1]
    return lines[0] if lines else type(exc).__name__


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB"


class Reactor:
    """A long-lived module instance (WASI reactor) whose exports are called per event.

    Lives in its worker process; the caller enforces time by ending that process.
    """

    def __init__(
        self,
        engine: Any,
        module: Any,
        limits: Limits,
        services: hostfns.HostServices,
        *,
        name: str,
        preopens: tuple[Preopen, ...] = (),
    ) -> None:
        self._out = _Capture()
        wasi = wasmtime.WasiConfig()
        wasi.argv = [name]
        wasi.stdout_custom = self._out.write
        wasi.stderr_custom = self._out.write
        for p in preopens:
            wasi.preopen_dir(p.host, p.guest, p.writable)
        self._limits = limits
        self._store = wasmtime.Store(engine)
        self._store.set_wasi(wasi)
        self._store.set_limits(memory_size=limits.memory_bytes)
        linker = wasmtime.Linker(engine)
        _define_wasi(linker, self._store)
        self._callbacks = hostfns.define(linker, services)  # alive as long as the store
        try:
            self._instance = linker.instantiate(self._store, module)
        except wasmtime.WasmtimeError as exc:
            raise ModuleError(f"module cannot be instantiated: {_first_line(exc)}") from None
        self._exports = self._instance.exports(self._store)
        for required in ("veritee_alloc", "memory"):
            if required not in self._exports:
                raise ModuleError(f"app module does not export '{required}' (use veritee_app.h)")
        self._memory: Any = self._exports["memory"]
        self._callers: dict[str, Any] = {}
        # Where events are written for the module: allocated once with veritee_alloc, kept
        # across calls and grown when an event needs more (see _room).
        self._room_ptr, self._room_cap = 0, 0
        if "_initialize" in self._exports:
            self._invoke("_initialize", [])

    def call(self, export: str, payload: bytes) -> str:
        """Call endpoint ``export`` with ``payload``; returns what the module printed."""
        if export not in self._exports:
            raise ModuleError(f"module has no endpoint export {export!r}")
        ptr = self._room(len(payload))
        self._memory.write(self._store, payload, ptr)
        self._invoke(export, [ptr, len(payload)])
        return self._out.take().decode("utf-8", "replace")

    def _room(self, size: int) -> int:
        """A place in module memory for ``size`` bytes of event.

        One allocation serves every call (a call reads its payload only while it runs, as
        the SDK's handlers do): two calls into the module per event fewer than allocating
        and freeing each time.
        """
        if size > self._room_cap:
            if self._room_ptr and "veritee_free" in self._exports:
                self._invoke("veritee_free", [self._room_ptr])
            self._room_ptr, self._room_cap = 0, 0
            cap = max(size, EVENT_ROOM_BYTES)
            ptr = self._invoke("veritee_alloc", [cap])
            if not isinstance(ptr, int) or ptr <= 0:
                raise ModuleLimitExceeded("module could not allocate room for the event")
            self._room_ptr, self._room_cap = ptr, cap
        return self._room_ptr

    def _invoke(self, export: str, args: list[int]) -> Any:
        func = self._callers.get(export)
        if func is None:
            func = self._callers[export] = _caller(self._store, self._exports[export])
        failure: ModuleError | None = None
        try:
            result = func(*args)
        except wasmtime.ExitTrap as exc:
            failure = ModuleError(f"module exited with code {exc.code} inside {export}")
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            failure = _classify(
                exc, _memory_exhausted(self._instance, self._store, self._limits), self._limits
            )
        if failure is not None:
            raise failure  # outside the except block: no traceback keeps the store alive
        return result

    def close(self) -> None:
        del self._exports, self._instance, self._store


def _caller(store: Any, func: Any) -> Any:
    """``func`` as a Python callable taking i32 arguments.

    wasmtime-py's ``Func.__call__`` asks the function for its type, builds value objects and
    compares types again on every call: for a small endpoint, that is most of the call.
    An exported function whose parameters and result are all i32 (every endpoint, and the
    allocator) has its type checked once here and is then called through wasmtime's C API
    directly, with the same trap and error handling as ``Func.__call__``. Anything else,
    or a wasmtime-py whose internals differ, is called the ordinary way.
    """
    direct = _i32_caller(store, func) if _RAW is not None else None
    return direct if direct is not None else functools.partial(func, store)


def _i32_caller(store: Any, func: Any) -> Any:
    ffi, enter_wasm = _RAW  # type: ignore[misc]
    try:
        ty = func.type(store)
        i32 = wasmtime.ValType.i32()
        params, results = list(ty.params), list(ty.results)
        raw, context = func._func, store._context
    except (AttributeError, wasmtime.WasmtimeError):
        return None
    if any(t != i32 for t in params + results) or len(results) > 1:
        return None
    n, m, kind = len(params), len(results), ffi.WASMTIME_I32.value
    params_type, results_type = ffi.wasmtime_val_t * n, ffi.wasmtime_val_t * max(m, 1)

    def call(*args: int) -> int | None:
        if len(args) != n:
            raise wasmtime.WasmtimeError(f"expected {n} arguments, given {len(args)}")
        vals = params_type()
        for i, arg in enumerate(args):
            vals[i].kind = kind
            vals[i].of.i32 = arg
        out = results_type()
        with enter_wasm(store) as trap:
            error = ffi.wasmtime_func_call(context(), ctypes.byref(raw), vals, n, out, m, trap)
            if error:
                raise wasmtime.WasmtimeError._from_ptr(error)
        return int(out[0].of.i32) if m else None

    return call


def _raw_api() -> tuple[Any, Any] | None:
    try:
        from wasmtime import _ffi
        from wasmtime._func import enter_wasm

        _ffi.wasmtime_val_t, _ffi.WASMTIME_I32, _ffi.wasmtime_func_call  # noqa: B018
    except (ImportError, AttributeError):
        return None
    return _ffi, enter_wasm


_RAW = _raw_api()
