"""The Wasm runtime the secure world embeds: wasmtime with an authenticated AOT cache and limits.

One :class:`Runtime` per secure world. Every run gets its own ``Store`` (so modules never share
memory), a memory cap enforced by wasmtime's store limiter, and a wall-clock budget enforced by
epoch interruption: a ticker thread bumps the engine epoch every ``EPOCH_TICK`` seconds and a
per-store deadline callback decides whether the module may go on. Epochs cost a load and a
compare at loop back-edges; fuel costs a counter update per basic block (bench/compute.py
measures both), which is why epochs were chosen.
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

from veritee.errors import ModuleError, ModuleLimitExceeded
from veritee.wasm import hostfns

log = logging.getLogger(__name__)

EPOCH_TICK = 0.01  # seconds; the granularity of time budgets and of cancellation
MAX_MODULE_BYTES = 256 * 1024 * 1024  # a module larger than this is refused before compiling
MAX_OUTPUT_BYTES = 16 * 1024 * 1024  # per stream; more is dropped so a chatty module cannot OOM us
MEMORY_CACHE_ENTRIES = 64  # compiled modules kept in memory (LRU); the disk cache holds the rest
MEMORY_NEAR_LIMIT = 0.9  # a module that failed while using this share of its cap ran out of memory

# Import modules a guest may name. Anything else is refused before instantiation.
OFFERED_IMPORTS = ("wasi_snapshot_preview1", hostfns.MODULE)

_CONTINUE = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE
_DeadlineCallback = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.POINTER(ffi.wasmtime_context_t),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(ffi.wasmtime_update_deadline_kind_t),
)
_Finalizer = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_NO_FINALIZER = _Finalizer(lambda _data: None)


@dataclass(frozen=True)
class Limits:
    """What one module instance may consume."""

    memory_bytes: int = 256 * 1024 * 1024
    time_seconds: float = 300.0

    def to_cbor(self) -> dict[str, Any]:
        return {"memory": self.memory_bytes, "time_ms": int(self.time_seconds * 1000)}


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


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    elapsed: float
    truncated: bool = False


@dataclass(frozen=True)
class CompiledModule:
    measurement: bytes
    module: Any  # wasmtime.Module
    wasm_size: int
    from_cache: bool
    exports: tuple[str, ...] = field(default=())


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
            "module is neither a Wasm binary (no \\0asm magic) nor WAT text"
        ) from None
    try:
        return bytes(wasmtime.wat2wasm(text))
    except wasmtime.WasmtimeError as exc:
        raise ModuleError(f"WAT text does not parse: {_first_line(exc)}") from None


class Runtime:
    """Compiles (or loads from the AOT cache) and runs modules under limits."""

    def __init__(self, cache_dir: Path, cache_key: bytes) -> None:
        config = wasmtime.Config()
        config.epoch_interruption = True
        config.cranelift_opt_level = "speed"
        self.engine = wasmtime.Engine(config)
        self._cache_dir = cache_dir
        self._cache_key = cache_key
        self._fingerprint = f"wasmtime-{wasmtime_version()};epoch".encode()
        self._memory: OrderedDict[bytes, CompiledModule] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="epoch-ticker", daemon=True)
        self._ticker.start()
        cache_dir.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        self._stop.set()
        self._memory.clear()

    def _tick(self) -> None:
        while not self._stop.wait(EPOCH_TICK):
            self.engine.increment_epoch()

    # -- compilation and the AOT cache ------------------------------------------------------

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
        module = self._load_artifact(measurement)
        from_cache = module is not None
        if module is None:
            try:
                module = wasmtime.Module(self.engine, wasm)
            except wasmtime.WasmtimeError as exc:
                raise ModuleError(f"module does not validate: {_first_line(exc)}") from None
            self._store_artifact(measurement, module)
        _check_imports(module)
        exports = tuple(e.name for e in module.exports)
        compiled = CompiledModule(measurement, module, len(wasm), from_cache, exports)
        with self._lock:
            self._memory[measurement] = compiled
            while len(self._memory) > MEMORY_CACHE_ENTRIES:
                self._memory.popitem(last=False)
        return compiled

    def _artifact_tag(self, measurement: bytes, artifact: bytes) -> bytes:
        mac = hmac.new(self._cache_key, digestmod=hashlib.sha256)
        for part in (self._fingerprint, measurement, artifact):
            mac.update(len(part).to_bytes(8, "big"))
            mac.update(part)
        return mac.digest()

    def _artifact_path(self, measurement: bytes) -> Path:
        return self._cache_dir / f"{measurement.hex()}.cwasm"

    def _load_artifact(self, measurement: bytes) -> Any:
        path = self._artifact_path(measurement)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        tag, artifact = blob[:32], blob[32:]
        # Deserialising native code runs it unchecked: only artifacts we authenticated may load.
        if len(tag) != 32 or not hmac.compare_digest(
            tag, self._artifact_tag(measurement, artifact)
        ):
            log.warning("AOT artifact %s failed authentication; recompiling", path.name)
            path.unlink(missing_ok=True)
            return None
        try:
            return wasmtime.Module.deserialize(self.engine, artifact)
        except wasmtime.WasmtimeError:
            log.warning("AOT artifact %s is incompatible with this engine; recompiling", path.name)
            return None

    def _store_artifact(self, measurement: bytes, module: Any) -> None:
        artifact = bytes(module.serialize())
        blob = self._artifact_tag(measurement, artifact) + artifact
        fd, tmp = tempfile.mkstemp(dir=self._cache_dir, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, self._artifact_path(measurement))

    # -- running ------------------------------------------------------------------------------

    def run(
        self,
        compiled: CompiledModule,
        request: RunRequest,
        limits: Limits,
        services: hostfns.HostServices,
        *,
        name: str = "module",
        cancel: threading.Event | None = None,
        scratch_dir: Path | None = None,
    ) -> RunResult:
        """Run a WASI command to completion; raise :class:`ModuleError` if it cannot run."""
        if "_start" not in compiled.exports:
            raise ModuleError("module has no '_start' export: it is not a WASI command")
        cancel = cancel or threading.Event()
        stdout, stderr = _Capture(), _Capture()
        wasi = wasmtime.WasiConfig()
        wasi.argv = [name, *request.args]
        wasi.env = [list(kv) for kv in request.env]
        wasi.stdout_custom = stdout.write
        wasi.stderr_custom = stderr.write
        stdin_path = None
        if request.stdin:
            fd, stdin_path = tempfile.mkstemp(dir=scratch_dir, prefix="stdin-")
            with os.fdopen(fd, "wb") as f:
                f.write(request.stdin)
            wasi.stdin_file = stdin_path
        for p in request.preopens:
            wasi.preopen_dir(p.host, p.guest, p.writable)

        store = wasmtime.Store(self.engine)
        store.set_wasi(wasi)
        store.set_limits(memory_size=limits.memory_bytes)
        started = time.monotonic()
        deadline = started + limits.time_seconds
        reason: list[str] = []

        def on_deadline(_ctx: Any, _data: Any, delta: Any, kind: Any) -> int:
            if cancel.is_set():
                reason.append("cancelled: the client went away")
            elif time.monotonic() >= deadline:
                reason.append(f"time budget of {limits.time_seconds:g} s exhausted")
            if reason:
                err = ffi.wasmtime_error_new(reason[-1].encode())
                return ctypes.cast(err, ctypes.c_void_p).value or 0
            delta[0] = 1
            kind[0] = _CONTINUE
            return 0

        callback = _DeadlineCallback(on_deadline)
        ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), callback, None, _NO_FINALIZER)
        store.set_epoch_deadline(1)
        linker = wasmtime.Linker(self.engine)
        linker.define_wasi()
        hostfns.define(linker, services)
        instance = None
        exit_code = 0
        failure: ModuleError | None = None
        try:
            try:
                instance = linker.instantiate(store, compiled.module)
            except wasmtime.WasmtimeError as exc:
                msg = _first_line(exc)
                if ("memory" in msg and "limit" in msg) or "exceeds" in msg:
                    failure = ModuleLimitExceeded(
                        f"module needs more memory than its limit of {_mib(limits.memory_bytes)}"
                    )
                else:
                    failure = ModuleError(f"module cannot be instantiated: {msg}")
            if instance is not None:
                try:
                    instance.exports(store)["_start"](store)
                except wasmtime.ExitTrap as exc:
                    exit_code = exc.code
                except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
                    failure = _classify(exc, reason, _memory_exhausted(instance, store, limits),
                                        limits)
                if exit_code != 0 and _memory_exhausted(instance, store, limits):
                    stderr.write(
                        f"veritee: memory limit of {_mib(limits.memory_bytes)} reached\n".encode()
                    )
        finally:
            # Drop the store now: wasmtime's WASI threads call back into its output capture,
            # and a store kept alive (say, by a traceback) outlives the interpreter otherwise.
            del instance, store, linker, wasi
            if stdin_path:
                os.unlink(stdin_path)
        if failure is not None:
            # Raised outside the except blocks, so no traceback keeps the store alive.
            raise failure
        return RunResult(
            exit_code=exit_code,
            stdout=stdout.value(),
            stderr=stderr.value(),
            elapsed=time.monotonic() - started,
            truncated=stdout.truncated or stderr.truncated,
        )


def _classify(
    exc: BaseException, reason: list[str], memory_exhausted: bool, limits: Limits
) -> ModuleError:
    if reason:
        return ModuleLimitExceeded(f"module stopped: {reason[-1]}")
    if memory_exhausted:
        return ModuleLimitExceeded(
            f"module stopped: memory limit of {_mib(limits.memory_bytes)} reached "
            f"({_first_line(exc)})"
        )
    return ModuleError(f"module trapped: {_first_line(exc)}")


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
