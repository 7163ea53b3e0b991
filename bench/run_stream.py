"""Cost of streamed output on a short run: `hello` run with and without streaming, same device.

Usage: python bench/run_stream.py HOME MODULE.wasm [N]   (HOME: a device with its TEE started)
Prints the median of N runs each way and their ratio (streamed / collected).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from veritee.home import Home
from veritee.tee import client as teec
from veritee.tee.ta import WasmSession


def _runs(home: Home, wasm: bytes, n: int, stream: bool) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        with teec.Context(home=home, vtee="default") as ctx:
            session = WasmSession(ctx)
            session.load(wasm, name="hello")
            session.run(["a"], output=(lambda fd, data: None) if stream else None)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    home, wasm = Home(Path(sys.argv[1])), Path(sys.argv[2]).read_bytes()
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    _runs(home, wasm, 3, True)  # warm the AOT cache and the pool
    # Interleaved, with a pause for the worker pool to refill, so both see the same machine.
    pairs = []
    for _ in range(n):
        time.sleep(0.5)
        collected_one = _runs(home, wasm, 1, False)
        time.sleep(0.5)
        pairs.append((collected_one, _runs(home, wasm, 1, True)))
    collected = statistics.median(c for c, _ in pairs)
    streamed = statistics.median(s for _, s in pairs)
    print(
        f"collected {collected * 1000:.1f} ms  streamed {streamed * 1000:.1f} ms  "
        f"ratio {streamed / collected:.2f}"
    )


if __name__ == "__main__":
    main()
