"""Host functions Veritee offers to modules (Wasm import module ``veritee``; see sdk/veritee.h).

The runtime only plumbs bytes between guest memory and a :class:`HostServices` object that the
secure world supplies; the keys behind sealing never enter this package.
"""

from __future__ import annotations

import ctypes
from typing import Any, Protocol

import wasmtime

from veritee.errors import SealingError

MODULE = "veritee"
NAMES = frozenset(
    {
        "seal",
        "unseal",
        "measurement",
        "evidence",
        "secret",
        "aes_gcm_open",
        "output",
        "request",
        "respond",
    }
)

ERR_BAD_ARG = -1  # pointer or length outside the module's memory
ERR_SHORT_BUFFER = -2  # output buffer too small
ERR_UNSEAL = -3  # blob tampered, or sealed by another module or TEE
ERR_NOT_SUPPORTED = -4
ERR_REFUSED = -5  # the secret service refused
ERR_NOT_AUTHENTIC = -6  # the secret is not from the expected service / not for us
ERR_RELAY = -7  # the normal world could not relay

MAX_SEAL_INPUT = 16 * 1024 * 1024  # one sealed blob; larger state should be sealed in chunks
MAX_SMALL_INPUT = 4096  # nonces, names, keys, user data: anything larger is a mistake


class HostError(Exception):
    """A host function failed with ``code``; ``message`` goes to the module's stderr."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class HostServices(Protocol):
    """What the secure world provides behind the host functions of one module instance."""

    measurement: bytes

    def seal(self, plaintext: bytes) -> bytes: ...

    def unseal(self, blob: bytes) -> bytes: ...

    def evidence(self, nonce: bytes, user_data: bytes) -> bytes: ...

    def secret(self, service_key: bytes, name: bytes, post_quantum: bool) -> bytes: ...

    def aes_gcm_open(self, key: bytes, blob: bytes) -> bytes: ...

    def output(self, name: bytes, data: bytes) -> bytes: ...

    def request(self, name: bytes, data: bytes) -> bytes: ...

    def respond(self, data: bytes) -> bytes: ...


def define(linker: Any, services: HostServices) -> list[Any]:
    """Define every ``veritee.*`` import on ``linker`` for one module instance.

    Returns what must stay alive as long as any instance made with ``linker`` (the C
    callbacks of :func:`_define`): keep it with the instance.
    """

    def transform(fn: Any) -> Any:
        def host(mem: _View, in_ptr: int, in_len: int, out_ptr: int, out_cap: int) -> int:
            if in_len > MAX_SEAL_INPUT:
                return ERR_BAD_ARG
            data = mem.read(in_ptr, in_len)
            if data is None or not mem.fits(out_ptr, out_cap):
                return ERR_BAD_ARG
            try:
                out = fn(data)
            except SealingError:
                return ERR_UNSEAL
            if len(out) > out_cap:
                return ERR_SHORT_BUFFER
            mem.write(out_ptr, out)
            return len(out)

        return host

    def measurement(mem: _View, out_ptr: int) -> int:
        value = services.measurement
        if not mem.fits(out_ptr, len(value)):
            return ERR_BAD_ARG
        mem.write(out_ptr, value)
        return len(value)

    def evidence(
        mem: _View, n_ptr: int, n_len: int, u_ptr: int, u_len: int, out_ptr: int, out_cap: int
    ) -> int:
        return _call(mem, [(n_ptr, n_len), (u_ptr, u_len)], out_ptr, out_cap, services.evidence)

    def secret(
        mem: _View,
        k_ptr: int,
        k_len: int,
        n_ptr: int,
        n_len: int,
        out_ptr: int,
        out_cap: int,
        flags: int,
    ) -> int:
        return _call(
            mem,
            [(k_ptr, k_len), (n_ptr, n_len)],
            out_ptr,
            out_cap,
            lambda key, name: services.secret(key, name, bool(flags & 1)),
        )

    def aes_gcm_open(
        mem: _View, k_ptr: int, in_ptr: int, in_len: int, out_ptr: int, out_cap: int
    ) -> int:
        if in_len > MAX_SEAL_INPUT:
            return ERR_BAD_ARG
        return _call(
            mem,
            [(k_ptr, 32), (in_ptr, in_len)],
            out_ptr,
            out_cap,
            services.aes_gcm_open,
            small=False,
        )

    def output(mem: _View, n_ptr: int, n_len: int, d_ptr: int, d_len: int) -> int:
        code = _call(mem, [(n_ptr, n_len), (d_ptr, d_len)], 0, 0, services.output, small=False)
        return min(code, 0)

    def request(
        mem: _View, n_ptr: int, n_len: int, d_ptr: int, d_len: int, out_ptr: int, out_cap: int
    ) -> int:
        return _call(
            mem,
            [(n_ptr, n_len), (d_ptr, d_len)],
            out_ptr,
            out_cap,
            services.request,
            small=False,
        )

    def respond(mem: _View, d_ptr: int, d_len: int) -> int:
        return min(_call(mem, [(d_ptr, d_len)], 0, 0, services.respond, small=False), 0)

    functions = {
        "seal": (4, transform(services.seal)),
        "unseal": (4, transform(services.unseal)),
        "measurement": (1, measurement),
        "evidence": (6, evidence),
        "secret": (7, secret),
        "aes_gcm_open": (5, aes_gcm_open),
        "output": (4, output),
        "request": (6, request),
        "respond": (2, respond),
    }
    return [_define(linker, name, n, fn) for name, (n, fn) in functions.items()]


def _call(
    mem: _View,
    inputs: list[tuple[int, int]],
    out_ptr: int,
    out_cap: int,
    fn: Any,
    *,
    small: bool = True,
) -> int:
    """Read the inputs, call the service, write its result: the common host-call shape."""
    args = []
    for ptr, length in inputs:
        if length > (MAX_SMALL_INPUT if small else MAX_SEAL_INPUT):
            return ERR_BAD_ARG
        data = mem.read(ptr, length)
        if data is None:
            return ERR_BAD_ARG
        args.append(data)
    if not mem.fits(out_ptr, out_cap):
        return ERR_BAD_ARG
    try:
        out = fn(*args)
    except HostError as exc:
        return exc.code
    except SealingError:
        return ERR_UNSEAL
    if len(out) > out_cap:
        return ERR_SHORT_BUFFER
    mem.write(out_ptr, out)
    return len(out)


class _View:
    """The calling module's linear memory, for the length of one host call: every read and
    write is checked against its size (-1 for a module without a memory: nothing fits)."""

    def __init__(self, size: int) -> None:
        self._size = size

    def fits(self, ptr: int, length: int) -> bool:
        """Whether ``length`` bytes at ``ptr`` lie inside the memory."""
        # i32 arguments arrive signed; a negative pointer is an attempt to reach outside.
        return ptr >= 0 and length >= 0 and ptr + length <= self._size

    def read(self, ptr: int, length: int) -> bytes | None:
        """The bytes, or None if they do not lie inside the memory."""
        return self._get(ptr, length) if self.fits(ptr, length) else None

    def write(self, ptr: int, data: bytes) -> None:
        """Write ``data`` at ``ptr``; the caller has checked that it fits."""
        if not self.fits(ptr, len(data)):  # a bug of ours must not write outside
            raise ValueError("host write outside the module's memory")
        self._put(ptr, data)

    def _get(self, ptr: int, length: int) -> bytes:
        raise NotImplementedError

    def _put(self, ptr: int, data: bytes) -> None:
        raise NotImplementedError


def _define(linker: Any, name: str, params: int, fn: Any) -> Any:
    """Define ``veritee.name`` taking ``params`` i32s and returning one, as ``fn(view, *args)``.

    wasmtime-py's ``define_func`` converts every argument and result through value objects
    and looks the memory up through several wrappers on every call: for ``output``, which a
    module calls for every event it emits, that was 45 µs of a 57 µs event. So the function
    is defined through wasmtime's C API directly when this wasmtime-py offers what that
    needs (as ``runtime._caller`` calls exports); else the ordinary way.
    """
    if _RAW is not None:
        return _RAW.define(linker, name, params, fn)
    i32 = wasmtime.ValType.i32()
    ty = wasmtime.FuncType([i32] * params, [i32])
    linker.define_func(
        MODULE, name, ty, lambda caller, *args: fn(_CallerView(caller), *args), access_caller=True
    )
    return None


class _CallerView(_View):
    """:class:`_View` through wasmtime-py's ``Caller`` and ``Memory`` (the fallback)."""

    def __init__(self, caller: Any) -> None:
        memory = caller.get("memory")
        self._caller = caller
        self._memory = memory if isinstance(memory, wasmtime.Memory) else None
        super().__init__(-1 if self._memory is None else self._memory.data_len(caller))

    def _get(self, ptr: int, length: int) -> bytes:
        assert self._memory is not None
        return bytes(self._memory.read(self._caller, ptr, ptr + length))

    def _put(self, ptr: int, data: bytes) -> None:
        assert self._memory is not None
        self._memory.write(self._caller, data, ptr)


class _RawView(_View):
    """:class:`_View` on the memory's base address and size, read once per host call.

    They stay valid for the call: nothing in a host function runs the module (which alone
    could grow its memory) before it returns.
    """

    def __init__(self, base: int, size: int) -> None:
        super().__init__(size)
        self._base = base

    def _get(self, ptr: int, length: int) -> bytes:
        return ctypes.string_at(self._base + ptr, length)

    def _put(self, ptr: int, data: bytes) -> None:
        ctypes.memmove(self._base + ptr, data, len(data))


_NO_MEMORY = _RawView(0, -1)  # a module without a memory


class _RawApi:
    """Host functions defined through wasmtime's C API (see :func:`_define`)."""

    def __init__(self) -> None:
        from wasmtime import _ffi, _func

        self.func_module: Any = _func
        # Every name used below, looked up now: a wasmtime-py without one falls back.
        self.callback_t = _ffi.wasmtime_func_callback_t
        self.memory_kind = _ffi.WASMTIME_EXTERN_MEMORY.value
        self.i32 = _ffi.WASMTIME_I32.value
        self.extern_t = _ffi.wasmtime_extern_t
        self.export_get = _ffi.wasmtime_caller_export_get
        self.context = _ffi.wasmtime_caller_context
        self.data = _ffi.wasmtime_memory_data
        self.data_size = _ffi.wasmtime_memory_data_size
        self.define_func = _ffi.wasmtime_linker_define_func
        self.trap = wasmtime.Trap
        self.no_finalizer = ctypes.CFUNCTYPE(None, ctypes.c_void_p)()  # a NULL pointer
        self.func_module.LAST_EXCEPTION  # noqa: B018
        wasmtime.Trap._consume, wasmtime.Linker.ptr, wasmtime.FuncType.ptr  # noqa: B018
        wasmtime.WasmtimeError._from_ptr  # noqa: B018

    def view(self, caller: Any) -> _RawView:
        item = self.extern_t()
        if not self.export_get(caller, b"memory", 6, ctypes.byref(item)):
            return _NO_MEMORY
        if item.kind != self.memory_kind:  # type: ignore[comparison-overlap]
            return _NO_MEMORY
        context = self.context(caller)
        memory = ctypes.byref(item.of.memory)
        base = ctypes.cast(self.data(context, memory), ctypes.c_void_p).value or 0
        return _RawView(base, self.data_size(context, memory))

    def define(self, linker: Any, name: str, params: int, fn: Any) -> Any:
        i32, view = self.i32, self.view

        def call(_env: Any, caller: Any, args: Any, nargs: int, results: Any, _n: int) -> Any:
            try:
                code = fn(view(caller), *(args[i].of.i32 for i in range(nargs)))
                results[0].kind = i32
                results[0].of.i32 = code
                return 0
            except BaseException as exc:
                # As wasmtime-py does: the call traps, and the exception is raised again
                # where the module was called (wasmtime._func.enter_wasm).
                self.func_module.LAST_EXCEPTION = exc
                return ctypes.cast(self.trap("python exception")._consume(), ctypes.c_void_p).value

        callback = self.callback_t(call)
        i32_type = wasmtime.ValType.i32()
        ty = wasmtime.FuncType([i32_type] * params, [i32_type])
        module, fname = MODULE.encode(), name.encode()
        error = self.define_func(
            linker.ptr(),
            module,
            len(module),
            fname,
            len(fname),
            ty.ptr(),
            callback,
            None,
            self.no_finalizer,
        )
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)
        return callback


def _raw_api() -> _RawApi | None:
    try:
        return _RawApi()
    except (ImportError, AttributeError):
        return None


_RAW = _raw_api()
