"""Host functions Veritee offers to modules (Wasm import module ``veritee``; see sdk/veritee.h).

The runtime only plumbs bytes between guest memory and a :class:`HostServices` object that the
secure world supplies; the keys behind sealing never enter this package.
"""

from __future__ import annotations

from typing import Any, Protocol

import wasmtime

from veritee.errors import SealingError

MODULE = "veritee"
NAMES = frozenset({"seal", "unseal", "measurement"})

ERR_BAD_ARG = -1  # pointer or length outside the module's memory
ERR_SHORT_BUFFER = -2  # output buffer too small
ERR_UNSEAL = -3  # blob tampered, or sealed by another module or TEE
ERR_NOT_SUPPORTED = -4

MAX_SEAL_INPUT = 16 * 1024 * 1024  # one sealed blob; larger state should be sealed in chunks


class HostServices(Protocol):
    """What the secure world provides behind the host functions of one module instance."""

    measurement: bytes

    def seal(self, plaintext: bytes) -> bytes: ...

    def unseal(self, blob: bytes) -> bytes: ...


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

    linker.define_func(MODULE, "seal", four, transform(services.seal), access_caller=True)
    linker.define_func(MODULE, "unseal", four, transform(services.unseal), access_caller=True)
    linker.define_func(MODULE, "measurement", one, measurement, access_caller=True)


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
