"""Large modules (tens of MB) compile once, then start from the authenticated AOT cache."""

from __future__ import annotations

import time

import pytest

from veritee.tee.ta import WasmSession

from .conftest import Device

TARGET_BYTES = 24 * 1024 * 1024  # "tens of MB", as large generated or AOT-heavy programs are


def _leb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _section(sid: int, body: bytes) -> bytes:
    return bytes([sid]) + _leb(len(body)) + body


def _vec(items: list[bytes]) -> bytes:
    return _leb(len(items)) + b"".join(items)


def large_module(target: int = TARGET_BYTES, per_function: int = 12_000) -> bytes:
    """A valid WASI command of about ``target`` bytes: many functions of real arithmetic."""
    n = max(1, target // per_function)
    pairs = (per_function - 8) // 3
    body = b"\x41\x01" + b"\x41\x07\x6a" * pairs  # i32.const 1; (i32.const 7; i32.add)*
    func = _leb(len(body) + 2) + b"\x00" + body + b"\x0b"  # no locals ... end
    calls = b"".join(b"\x10" + _leb(i) + b"\x1a" for i in range(0, n, max(1, n // 64)))
    start_body = b"\x00" + calls + b"\x0b"
    start = _leb(len(start_body)) + start_body
    types = _vec([b"\x60\x00\x01\x7f", b"\x60\x00\x00"])  # () -> i32, () -> ()
    funcs = _vec([b"\x00"] * n + [b"\x01"])
    memory = _vec([b"\x00\x01"])
    exports = _vec([b"\x06_start\x00" + _leb(n), b"\x06memory\x02\x00"])
    code = _leb(n + 1) + func * n + start
    return (
        b"\x00asm\x01\x00\x00\x00"
        + _section(1, types)
        + _section(3, funcs)
        + _section(5, memory)
        + _section(7, exports)
        + _section(10, code)
    )


@pytest.mark.slow
def test_large_module_compiles_once_then_starts_from_cache(fresh_device: Device) -> None:
    module = large_module()
    assert len(module) >= 20 * 1024 * 1024
    t0 = time.monotonic()
    with fresh_device.context() as ctx:
        session = WasmSession(ctx)
        first = session.load(module, name="large")
        cold = time.monotonic() - t0
        assert first["from_cache"] is False
        assert session.run([]).exit_code == 0
    fresh_device.stop()
    fresh_device.start()  # a new secure world: only the disk cache can help
    t0 = time.monotonic()
    with fresh_device.context() as ctx:
        session = WasmSession(ctx)
        again = session.load(module, name="large")
        warm = time.monotonic() - t0
        assert again["from_cache"] is True
        assert session.run([]).exit_code == 0
    print(
        f"\n{len(module) / 2**20:.1f} MiB module: compile+load {cold:.2f} s, "
        f"cached load {warm:.2f} s, ratio {cold / warm:.1f}x"
    )
