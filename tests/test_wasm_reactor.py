"""A long-lived module instance (runtime.Reactor) called directly: how events reach its
memory, and how its failures come back, on the fast call path it uses for endpoints."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import wasmtime

from veritee.errors import ModuleError
from veritee.tee.app_ta import EVENTS_OUTPUT, _records
from veritee.wasm import runtime


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
