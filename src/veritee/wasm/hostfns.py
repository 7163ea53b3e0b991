"""Host functions Veritee offers to modules (Wasm import module ``veritee``; see sdk/veritee.h).

The runtime only plumbs bytes between guest memory and a :class:`HostServices` object that the
secure world supplies; the keys behind sealing never enter this package.
"""

from __future__ import annotations

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


def define(linker: Any, services: HostServices) -> None:
    """Define every ``veritee.*`` import on ``linker`` for one module instance."""
    i32 = wasmtime.ValType.i32()
    four = wasmtime.FuncType([i32, i32, i32, i32], [i32])
    one = wasmtime.FuncType([i32], [i32])

    def transform(fn: Any) -> Any:
        def host(caller: Any, in_ptr: int, in_len: int, out_ptr: int, out_cap: int) -> int:
            memory = _memory(caller)
            if memory is None or in_len > MAX_SEAL_INPUT:
                return ERR_BAD_ARG
            data = _read(memory, caller, in_ptr, in_len)
            if data is None or not _in_bounds(memory, caller, out_ptr, out_cap):
                return ERR_BAD_ARG
            try:
                out = fn(data)
            except SealingError:
                return ERR_UNSEAL
            if len(out) > out_cap:
                return ERR_SHORT_BUFFER
            memory.write(caller, out, out_ptr)
            return len(out)

        return host

    def measurement(caller: Any, out_ptr: int) -> int:
        memory = _memory(caller)
        value = services.measurement
        if memory is None or not _in_bounds(memory, caller, out_ptr, len(value)):
            return ERR_BAD_ARG
        memory.write(caller, value, out_ptr)
        return len(value)

    def evidence(
        caller: Any, n_ptr: int, n_len: int, u_ptr: int, u_len: int, out_ptr: int, out_cap: int
    ) -> int:
        return _call(caller, [(n_ptr, n_len), (u_ptr, u_len)], out_ptr, out_cap, services.evidence)

    def secret(
        caller: Any,
        k_ptr: int,
        k_len: int,
        n_ptr: int,
        n_len: int,
        out_ptr: int,
        out_cap: int,
        flags: int,
    ) -> int:
        return _call(
            caller,
            [(k_ptr, k_len), (n_ptr, n_len)],
            out_ptr,
            out_cap,
            lambda key, name: services.secret(key, name, bool(flags & 1)),
        )

    def aes_gcm_open(
        caller: Any, k_ptr: int, in_ptr: int, in_len: int, out_ptr: int, out_cap: int
    ) -> int:
        if in_len > MAX_SEAL_INPUT:
            return ERR_BAD_ARG
        return _call(
            caller,
            [(k_ptr, 32), (in_ptr, in_len)],
            out_ptr,
            out_cap,
            services.aes_gcm_open,
            small=False,
        )

    def output(caller: Any, n_ptr: int, n_len: int, d_ptr: int, d_len: int) -> int:
        code = _call(caller, [(n_ptr, n_len), (d_ptr, d_len)], 0, 0, services.output, small=False)
        return min(code, 0)

    def request(
        caller: Any, n_ptr: int, n_len: int, d_ptr: int, d_len: int, out_ptr: int, out_cap: int
    ) -> int:
        return _call(
            caller,
            [(n_ptr, n_len), (d_ptr, d_len)],
            out_ptr,
            out_cap,
            services.request,
            small=False,
        )

    def respond(caller: Any, d_ptr: int, d_len: int) -> int:
        return min(_call(caller, [(d_ptr, d_len)], 0, 0, services.respond, small=False), 0)

    two = wasmtime.FuncType([i32, i32], [i32])
    six = wasmtime.FuncType([i32] * 6, [i32])
    seven = wasmtime.FuncType([i32] * 7, [i32])
    five = wasmtime.FuncType([i32] * 5, [i32])
    linker.define_func(MODULE, "seal", four, transform(services.seal), access_caller=True)
    linker.define_func(MODULE, "unseal", four, transform(services.unseal), access_caller=True)
    linker.define_func(MODULE, "measurement", one, measurement, access_caller=True)
    linker.define_func(MODULE, "evidence", six, evidence, access_caller=True)
    linker.define_func(MODULE, "secret", seven, secret, access_caller=True)
    linker.define_func(MODULE, "aes_gcm_open", five, aes_gcm_open, access_caller=True)
    linker.define_func(MODULE, "output", four, output, access_caller=True)
    linker.define_func(MODULE, "request", six, request, access_caller=True)
    linker.define_func(MODULE, "respond", two, respond, access_caller=True)


def _call(
    caller: Any,
    inputs: list[tuple[int, int]],
    out_ptr: int,
    out_cap: int,
    fn: Any,
    *,
    small: bool = True,
) -> int:
    """Read the inputs, call the service, write its result: the common host-call shape."""
    memory = _memory(caller)
    if memory is None:
        return ERR_BAD_ARG
    args = []
    for ptr, length in inputs:
        if length > (MAX_SMALL_INPUT if small else MAX_SEAL_INPUT):
            return ERR_BAD_ARG
        data = _read(memory, caller, ptr, length)
        if data is None:
            return ERR_BAD_ARG
        args.append(data)
    if not _in_bounds(memory, caller, out_ptr, out_cap):
        return ERR_BAD_ARG
    try:
        out = fn(*args)
    except HostError as exc:
        return exc.code
    except SealingError:
        return ERR_UNSEAL
    if len(out) > out_cap:
        return ERR_SHORT_BUFFER
    memory.write(caller, out, out_ptr)
    return len(out)


def _memory(caller: Any) -> Any:
    memory = caller.get("memory")
    return memory if isinstance(memory, wasmtime.Memory) else None


def _in_bounds(memory: Any, caller: Any, ptr: int, length: int) -> bool:
    # i32 arguments arrive signed; a negative pointer is an attempt to reach outside.
    return bool(ptr >= 0 and length >= 0 and ptr + length <= memory.data_len(caller))


def _read(memory: Any, caller: Any, ptr: int, length: int) -> bytes | None:
    if not _in_bounds(memory, caller, ptr, length):
        return None
    return bytes(memory.read(caller, ptr, ptr + length))
