"""Compute benchmark: PolyBench-style kernels, native vs Wasm vs the Veritee secure world.

Each kernel in bench/kernels/ is built twice, natively (gcc -O2) and to Wasm (clang
--target=wasm32-wasi -O2), then run as:

  a        the native binary;
  b        the Wasm module in wasmtime-py, in this process, default engine config;
  epoch    as b, with epoch interruption on (deadline never reached);
  fuel     as b, with fuel metering on (fuel never runs out);
  c        the Wasm module in the Veritee secure world, through the `veritee` CLI.

Times are the kernel's own measurement of its compute region (CLOCK_MONOTONIC around
the loops), so compilation, instantiation and process start-up are excluded. Each
configuration runs --reps times, interleaved, and the median is reported.

Examples:

    python bench/compute.py --quick            # a few seconds: small sizes, one rep
    python bench/compute.py --reps 5 --kernels gemm,lu --json > result.json

Exit codes: 0 done (c may have been skipped: the table says so), 1 a kernel failed or
checksums disagree, 2 bad arguments or the toolchain is missing or a build failed.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import wasmtime

BENCH = Path(__file__).resolve().parent
KERNELS = BENCH / "kernels"
OUT = BENCH / "out"

# Sizes for --quick: each runs natively in roughly 10-40 ms, enough to time
# meaningfully, small enough that the whole quick run stays well under a minute.
QUICK_SIZES = {
    "2mm": 200,
    "cholesky": 500,
    "floyd-warshall": 300,
    "gemm": 300,
    "heat-3d": 50,
    "jacobi-2d": 300,
    "lu": 400,
    "seidel-2d": 300,
}
DEFAULT_REPS = 3
QUICK_REPS = 1

# Native x86-64 and Wasm both use IEEE doubles without fused multiply-add here, so
# checksums usually agree to the bit; a libm or compiler difference may still move
# the last digits, which is not a wrong result.
CHECKSUM_REL_TOL = 1e-9

# A full-size kernel takes under 2 s even metered; these stop a hung run, not a slow one.
RUN_TIMEOUT_S = 300
TEE_COMMAND_TIMEOUT_S = 120

# Plenty for any benchmark: fuel is about one unit per Wasm instruction, and the
# epoch is never incremented, so neither mechanism ever interrupts a kernel.
FUEL_BUDGET = 2**62
EPOCH_DEADLINE = 2**62

NATIVE, WASM, EPOCH, FUEL, TEE = "a", "b", "epoch", "fuel", "c"
MODES = (NATIVE, WASM, EPOCH, FUEL, TEE)
MODE_TITLES = {
    NATIVE: "a native",
    WASM: "b wasm",
    EPOCH: "b+epoch",
    FUEL: "b+fuel",
    TEE: "c veritee",
}
RATIOS = (
    ("b/a", WASM, NATIVE),
    ("c/a", TEE, NATIVE),
    ("c/b", TEE, WASM),
    ("epoch/b", EPOCH, WASM),
    ("fuel/b", FUEL, WASM),
)

OUTPUT_LINE = re.compile(
    r"^kernel=(?P<name>\S+) ns=(?P<ns>\d+) checksum=(?P<checksum>\S+)$", re.MULTILINE
)


class BenchError(Exception):
    """A failure that stops the benchmark; its message says what to do."""


class KernelFailed(Exception):
    """One run of one kernel failed; the others go on."""


class TeeUnavailable(Exception):
    """The Veritee secure world cannot be used; c is skipped."""


@dataclass(frozen=True)
class Sample:
    ns: int
    checksum: float
    checksum_text: str


@dataclass(frozen=True)
class Kernel:
    name: str
    source: Path
    native: Path
    wasm: Path
    size: int | None  # None: the kernel's built-in default


@dataclass
class KernelResult:
    kernel: Kernel
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def median_ns(self, mode: str) -> float | None:
        runs = self.samples.get(mode)
        return statistics.median(s.ns for s in runs) if runs else None

    def ratio(self, top: str, bottom: str) -> float | None:
        t, b = self.median_ns(top), self.median_ns(bottom)
        return t / b if t is not None and b else None

    def checksums(self) -> dict[str, str]:
        return {mode: runs[0].checksum_text for mode, runs in self.samples.items() if runs}

    def checksum_ok(self) -> bool:
        values = [s.checksum for runs in self.samples.values() for s in runs]
        reference = values[0] if values else 0.0
        return all(
            math.isclose(v, reference, rel_tol=CHECKSUM_REL_TOL, abs_tol=1e-12) for v in values
        )


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_output(name: str, stdout: str) -> Sample:
    """The kernel's `kernel=... ns=... checksum=...` line; KernelFailed if absent."""
    match = OUTPUT_LINE.search(stdout)
    if match is None or match["name"] != name:
        raise KernelFailed(f"no `kernel={name} ns=... checksum=...` line in output {stdout!r}")
    try:
        checksum = float(match["checksum"])
    except ValueError as exc:
        raise KernelFailed(f"checksum {match['checksum']!r} is not a number") from exc
    return Sample(ns=int(match["ns"]), checksum=checksum, checksum_text=match["checksum"])


# ---- build -------------------------------------------------------------------------------


def find_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BenchError(
            f"`{name}` not found: install the toolchain (clang, lld, wasi-libc, "
            "libclang-rt-14-dev-wasm32, gcc) as the setup describes"
        )
    return path


def compile_c(command: Sequence[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BenchError(f"build failed: {' '.join(command)}\n{result.stderr.strip()}")


def build(names: Sequence[str], quick: bool) -> list[Kernel]:
    gcc, clang = find_tool("gcc"), find_tool("clang")
    native_dir, wasm_dir = OUT / "native", OUT / "wasm"
    native_dir.mkdir(parents=True, exist_ok=True)
    wasm_dir.mkdir(parents=True, exist_ok=True)
    kernels = []
    for name in names:
        source = KERNELS / f"{name}.c"
        native, wasm = native_dir / name, wasm_dir / f"{name}.wasm"
        progress(f"build {name}")
        compile_c([gcc, "-O2", str(source), "-o", str(native), "-lm"])
        compile_c([clang, "--target=wasm32-wasi", "-O2", str(source), "-o", str(wasm)])
        size = QUICK_SIZES.get(name) if quick else None
        kernels.append(Kernel(name, source, native, wasm, size))
    return kernels


# ---- runners -----------------------------------------------------------------------------


def kernel_args(kernel: Kernel) -> list[str]:
    return [] if kernel.size is None else [str(kernel.size)]


def run_native(kernel: Kernel) -> Sample:
    result = subprocess.run(
        [str(kernel.native), *kernel_args(kernel)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise KernelFailed(f"exit code {result.returncode}: {result.stderr.strip()}")
    return parse_output(kernel.name, result.stdout)


def make_engines() -> dict[str, wasmtime.Engine]:
    epoch = wasmtime.Config()
    epoch.epoch_interruption = True
    fuel = wasmtime.Config()
    fuel.consume_fuel = True
    return {WASM: wasmtime.Engine(), EPOCH: wasmtime.Engine(epoch), FUEL: wasmtime.Engine(fuel)}


def run_wasm(mode: str, engine: wasmtime.Engine, module: wasmtime.Module, kernel: Kernel) -> Sample:
    chunks: list[bytes] = []
    wasi = wasmtime.WasiConfig()
    wasi.argv = [kernel.name, *kernel_args(kernel)]
    wasi.stdout_custom = chunks.append
    wasi.inherit_stderr()
    store = wasmtime.Store(engine)
    if mode == EPOCH:
        store.set_epoch_deadline(EPOCH_DEADLINE)
    elif mode == FUEL:
        store.set_fuel(FUEL_BUDGET)
    store.set_wasi(wasi)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    code = 0
    try:
        instance = linker.instantiate(store, module)
        try:
            instance.exports(store)["_start"](store)
        except wasmtime.ExitTrap as trap:
            code = trap.code
        finally:
            # An Instance or Store still alive at interpreter exit makes a wasmtime
            # worker thread panic during shutdown: drop them here, deterministically.
            del instance
    except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
        raise KernelFailed(f"wasm trap: {exc}") from None
    finally:
        del linker, store
    if code != 0:
        raise KernelFailed(f"exit code {code}")
    return parse_output(kernel.name, b"".join(chunks).decode(errors="replace"))


def find_veritee() -> str | None:
    # Prefer the command installed beside this interpreter (the project's venv).
    beside = Path(sys.executable).parent / "veritee"
    return str(beside) if beside.exists() else shutil.which("veritee")


class TeeSession:
    """A secure world started for the benchmark through the `veritee` CLI."""

    def __init__(self, veritee: str, home: Path) -> None:
        self._base = [veritee, "--home", str(home)]

    def command(self, *args: str, timeout: float = TEE_COMMAND_TIMEOUT_S) -> str:
        try:
            result = subprocess.run(
                [*self._base, *args], capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise TeeUnavailable(
                f"`veritee {' '.join(args)}` timed out after {timeout} s"
            ) from None
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise TeeUnavailable(f"`veritee {args[0]} ...` exited {result.returncode}: {last}")
        return result.stdout

    def run(self, kernel: Kernel) -> Sample:
        try:
            stdout = self.command(
                "run", str(kernel.wasm), "--", *kernel_args(kernel), timeout=RUN_TIMEOUT_S
            )
        except TeeUnavailable as exc:
            raise KernelFailed(str(exc)) from None
        return parse_output(kernel.name, stdout)


@contextmanager
def tee_session() -> Iterator[TeeSession]:
    """Init a device in a temporary home, start its secure world, stop it afterwards."""
    veritee = find_veritee()
    if veritee is None:
        raise TeeUnavailable("the `veritee` command is not installed")
    with tempfile.TemporaryDirectory(prefix="veritee-bench-") as home:
        session = TeeSession(veritee, Path(home))
        session.command("device", "init")
        try:
            session.command("tee", "start")
        except TeeUnavailable:
            # A start that failed half-way may have left a secure world behind.
            with suppress(TeeUnavailable):
                session.command("tee", "stop")
            raise
        try:
            yield session
        finally:
            try:
                session.command("tee", "stop")
            except TeeUnavailable as exc:
                progress(f"warning: could not stop the secure world: {exc}")


# ---- the benchmark -----------------------------------------------------------------------


def measure(kernel: Kernel, reps: int, tee: TeeSession | None) -> KernelResult:
    result = KernelResult(kernel)
    engines = make_engines()
    wasm_bytes = kernel.wasm.read_bytes()
    modules = {mode: wasmtime.Module(engine, wasm_bytes) for mode, engine in engines.items()}
    modes = [NATIVE, WASM, EPOCH, FUEL] + ([TEE] if tee is not None else [])

    def run_once(mode: str) -> Sample:
        if mode == NATIVE:
            return run_native(kernel)
        if mode == TEE:
            assert tee is not None
            return tee.run(kernel)
        return run_wasm(mode, engines[mode], modules[mode], kernel)

    # Interleaved, so slow drift on a noisy machine spreads over every mode.
    for rep in range(reps):
        for mode in modes:
            if mode in result.errors:
                continue
            try:
                sample = run_once(mode)
            except (KernelFailed, subprocess.TimeoutExpired) as exc:
                result.errors[mode] = str(exc)
                progress(f"  {kernel.name} {MODE_TITLES[mode]}: FAILED: {exc}")
                continue
            result.samples.setdefault(mode, []).append(sample)
            progress(
                f"  {kernel.name} rep {rep + 1}/{reps} {MODE_TITLES[mode]}: "
                f"{sample.ns / 1e6:.1f} ms"
            )
    return result


def geomean(values: Sequence[float]) -> float | None:
    return math.exp(statistics.fmean(math.log(v) for v in values)) if values else None


def summary(results: Sequence[KernelResult]) -> dict[str, float | None]:
    return {
        label: geomean([r for res in results if (r := res.ratio(top, bottom)) is not None])
        for label, top, bottom in RATIOS
    }


def to_json(
    results: Sequence[KernelResult], tee_skipped: str | None, reps: int, quick: bool
) -> dict[str, object]:
    return {
        "reps": reps,
        "quick": quick,
        "checksum_rel_tol": CHECKSUM_REL_TOL,
        "c_skipped": tee_skipped,
        "kernels": [
            {
                "name": res.kernel.name,
                "size": res.kernel.size,
                "median_ns": {mode: res.median_ns(mode) for mode in MODES},
                "samples_ns": {mode: [s.ns for s in runs] for mode, runs in res.samples.items()},
                "ratios": {label: res.ratio(top, bottom) for label, top, bottom in RATIOS},
                "checksums": res.checksums(),
                "checksum_ok": res.checksum_ok(),
                "errors": res.errors,
            }
            for res in results
        ],
        "geomean": summary(results),
    }


def print_table(results: Sequence[KernelResult], tee_skipped: str | None, reps: int) -> None:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value / 1e6:.1f}"

    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    time_modes = (NATIVE, WASM, TEE)
    header = (
        f"{'kernel':<15}{'size':>8}"
        + "".join(f"{MODE_TITLES[m] + ' ms':>14}" for m in time_modes)
        + "".join(f"{label:>9}" for label, _, _ in RATIOS)
        + "  checksum"
    )
    print(header)
    print("-" * len(header))
    for res in results:
        size = "default" if res.kernel.size is None else str(res.kernel.size)
        print(
            f"{res.kernel.name:<15}{size:>8}"
            + "".join(f"{ms(res.median_ns(m)):>14}" for m in time_modes)
            + "".join(f"{ratio(res.ratio(top, bottom)):>9}" for _, top, bottom in RATIOS)
            + ("  agree" if res.checksum_ok() else "  DIFFER " + str(res.checksums()))
        )
    means = summary(results)
    print("-" * len(header))
    print(
        f"{'geomean':<15}{'':>8}{'':>42}"
        + "".join(f"{ratio(means[label]):>9}" for label, _, _ in RATIOS)
    )
    print()
    print(f"times: median of {reps} run(s) of the compute region only, in ms.")
    print(
        "checksums compared across every run with relative tolerance "
        f"{CHECKSUM_REL_TOL:g} (native and Wasm may round differently in the last digits)."
    )
    if tee_skipped is not None:
        print(f"c (Veritee secure world) SKIPPED: {tee_skipped}")
    for res in results:
        for mode, error in res.errors.items():
            print(f"{res.kernel.name} {MODE_TITLES[mode]} FAILED: {error}")


def available_kernels() -> list[str]:
    return sorted(path.stem for path in KERNELS.glob("*.c"))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="example: python bench/compute.py --quick --kernels gemm,lu",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 rep (seconds)")
    parser.add_argument("--json", action="store_true", help="print results as JSON on stdout")
    parser.add_argument("--reps", type=int, help=f"runs per configuration (default {DEFAULT_REPS})")
    parser.add_argument(
        "--kernels", help=f"comma-separated subset of: {','.join(available_kernels())}"
    )
    args = parser.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    reps = args.reps or (QUICK_REPS if args.quick else DEFAULT_REPS)
    known = available_kernels()
    names = known if args.kernels is None else [n.strip() for n in args.kernels.split(",")]
    unknown = sorted(set(names) - set(known))
    if unknown:
        print(f"unknown kernel(s) {', '.join(unknown)}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    try:
        kernels = build(names, args.quick)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    results: list[KernelResult] = []
    tee_skipped: str | None = None
    try:
        with tee_session() as tee:
            progress("secure world started: c runs inside Veritee")
            results = [measure(kernel, reps, tee) for kernel in kernels]
    except TeeUnavailable as exc:
        # Raised only while setting up (init, start): no kernel has run yet.
        tee_skipped = str(exc)
        progress(f"c (Veritee secure world) skipped: {exc}; running a and b only")
        results = [measure(kernel, reps, None) for kernel in kernels]

    if args.json:
        print(json.dumps(to_json(results, tee_skipped, reps, args.quick), indent=2))
    else:
        print_table(results, tee_skipped, reps)
    failed = any(res.errors or not res.checksum_ok() for res in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
