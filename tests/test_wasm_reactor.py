"""A long-lived module instance (runtime.Reactor) called directly: how events reach its
memory, and how its failures come back, on the fast call path it uses for endpoints."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from veritee.errors import ModuleError
from veritee.tee.app_ta import EVENTS_OUTPUT, _records
from veritee.wasm import hostfns, runtime


class Services:
    """What the secure world would answer; keeps what the module emits."""

    measurement = bytes(32)

    def __init__(self) -> None:
        self.emitted: list[tuple[bytes, bytes]] = []

    def output(self, name: bytes, data: bytes) -> bytes:
        self.emitted.append((name, data))
        return b""

    def payloads(self) -> list[bytes]:
        """What was emitted, the SDK's buffered records unpacked."""
        out = []
        for name, data in self.emitted:
            if name.decode() == EVENTS_OUTPUT:
                out += [payload for _, payload in _records(data)]
            else:
                out.append(data)
        return out

    def __getattr__(self, name: str) -> Callable[..., bytes]:
        def not_here(*_: object) -> bytes:  # seal, request, evidence...: not used here
            raise AssertionError(f"host function {name} called")

        return not_here


def _reactor(path: Path, services: Services) -> runtime.Reactor:
    engine = runtime.new_engine()
    module = wasmtime.Module(engine, path.read_bytes())
    return runtime.Reactor(engine, module, runtime.Limits(), services, name=path.stem)


def test_events_of_any_size_reach_the_module_whole(wasm: Callable[..., Path]) -> None:
    # One place in module memory serves every event and grows for a larger one; each
    # event arrives whole, whatever came before it.
    services = Services()
    reactor = _reactor(wasm("tests/assets/c/app_sender.c"), services)
    sizes = [10, 100 * 1024, 7, 300 * 1024, 64 * 1024]
    payloads = [os.urandom(n) for n in sizes]
    rooms = []
    for payload in payloads:
        reactor.call("veritee_entry_press", payload)
        rooms.append(reactor._room_cap)
    assert services.payloads() == payloads
    assert rooms == [64 * 1024, 100 * 1024, 100 * 1024, 300 * 1024, 300 * 1024]


def test_endpoints_are_called_without_wasmtime_pys_per_call_checks(
    wasm: Callable[..., Path],
) -> None:
    # Every endpoint takes (i32, i32): each is called through the C API directly. A
    # wasmtime-py whose internals moved would fall back to Func.__call__: this says so.
    reactor = _reactor(wasm("tests/assets/c/app_sender.c"), Services())
    reactor.call("veritee_entry_press", b"x")
    assert runtime._RAW is not None
    for export in ("veritee_alloc", "veritee_entry_press"):
        assert not isinstance(reactor._callers[export], functools.partial)


@pytest.mark.parametrize(
    ("entry", "message"),
    [("trap", "trap|unreachable"), ("quit", "exited with code 3 inside veritee_entry_quit")],
)
def test_a_failing_endpoint_is_a_module_error(
    wasm: Callable[..., Path], entry: str, message: str
) -> None:
    reactor = _reactor(wasm("tests/assets/c/app_faults.c"), Services())
    with pytest.raises(ModuleError, match=message):
        reactor.call(f"veritee_entry_{entry}", b"")


# -- host functions: the module's pointers are checked against its memory --------------------

# Each export hands its arguments straight to a veritee.* import, so a test can call a host
# function with any pointers a hostile module could pass.
_HOSTILE = """
(module
  (import "veritee" "seal" (func $seal (param i32 i32 i32 i32) (result i32)))
  (import "veritee" "measurement" (func $measurement (param i32) (result i32)))
  (import "veritee" "output" (func $output (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "abcd")
  (func (export "veritee_alloc") (param i32) (result i32) (i32.const 4096))
  (func (export "seal") (param i32 i32 i32 i32) (result i32)
    (call $seal (local.get 0) (local.get 1) (local.get 2) (local.get 3)))
  (func (export "measurement") (param i32) (result i32) (call $measurement (local.get 0)))
  (func (export "output") (param i32 i32 i32 i32) (result i32)
    (call $output (local.get 0) (local.get 1) (local.get 2) (local.get 3))))
"""
PAGE = 65536


class SealingServices(Services):
    def __init__(self) -> None:
        super().__init__()
        self.sealed: list[bytes] = []

    def seal(self, plaintext: bytes) -> bytes:
        if plaintext == b"boom":
            raise RuntimeError("a bug in the secure world")
        self.sealed.append(plaintext)
        return plaintext[::-1] + b"!"


@pytest.fixture(params=["C API", "wasmtime-py"])
def hostile(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    # Host functions are defined through wasmtime's C API; a wasmtime-py without what that
    # needs gets the ordinary path. Both must refuse the same things.
    if request.param == "wasmtime-py":
        monkeypatch.setattr(hostfns, "_RAW", None)
    else:
        assert hostfns._RAW is not None
    path = tmp_path / "hostile.wasm"
    path.write_bytes(wasmtime.wat2wasm(_HOSTILE))
    services = SealingServices()
    return _reactor(path, services), services


def test_host_functions_read_and_write_module_memory(hostile: Any) -> None:
    reactor, services = hostile
    assert reactor._invoke("seal", [0, 4, 100, 16]) == 5
    assert services.sealed == [b"abcd"]
    assert bytes(reactor._memory.read(reactor._store, 100, 105)) == b"dcba!"
    assert reactor._invoke("measurement", [PAGE - 32]) == 32
    assert reactor._invoke("output", [0, 2, 2, 2]) == 0
    assert services.emitted == [(b"ab", b"cd")]


@pytest.mark.parametrize(
    "args",
    [
        [-1, 4, 100, 16],  # input before the memory (i32 arrive signed)
        [PAGE - 2, 4, 100, 16],  # input running past its end
        [0, -4, 100, 16],  # negative length
        [0, 4, PAGE - 8, 16],  # room for the result past the end
        [0, 4, -100, 16],
        [0, 4, 100, -1],
        [0, 0x7FFFFFFF, 100, 16],  # a length no memory holds
    ],
)
def test_host_functions_refuse_pointers_outside_memory(hostile: Any, args: list[int]) -> None:
    reactor, services = hostile
    before = bytes(reactor._memory.read(reactor._store, 0, PAGE))
    assert reactor._invoke("seal", args) == hostfns.ERR_BAD_ARG
    assert services.sealed == []  # refused before the secure world is asked
    assert bytes(reactor._memory.read(reactor._store, 0, PAGE)) == before


def test_host_functions_refuse_short_room_and_bad_pointers_elsewhere(hostile: Any) -> None:
    reactor, services = hostile
    assert reactor._invoke("seal", [0, 4, 100, 3]) == hostfns.ERR_SHORT_BUFFER
    assert reactor._invoke("measurement", [PAGE - 31]) == hostfns.ERR_BAD_ARG
    assert reactor._invoke("measurement", [-32]) == hostfns.ERR_BAD_ARG
    assert reactor._invoke("output", [PAGE - 1, 2, 0, 2]) == hostfns.ERR_BAD_ARG
    assert reactor._invoke("output", [0, 2, 0, PAGE + 1]) == hostfns.ERR_BAD_ARG
    assert services.emitted == []


def test_a_failing_host_service_fails_the_call_with_its_error(hostile: Any) -> None:
    # An unexpected error behind a host function traps the module, and the error itself
    # reaches whoever called it, as with wasmtime-py's own host functions.
    reactor, _ = hostile
    reactor._memory.write(reactor._store, b"boom", 0)
    with pytest.raises(RuntimeError, match="a bug in the secure world"):
        reactor._invoke("seal", [0, 4, 100, 16])


def test_a_memory_less_view_fits_nothing() -> None:
    view = hostfns._NO_MEMORY
    assert not view.fits(0, 0) and view.read(0, 0) is None
