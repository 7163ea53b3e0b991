"""The C examples and benchmark kernels build to Wasm with clang and behave as documented.

They run in plain wasmtime-py here, not in the secure world: these tests check the
programs (and sdk/veritee.h), the secure world has its own tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import wasmtime
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

REPO = Path(__file__).resolve().parent.parent
SDK = REPO / "sdk"
EXAMPLES = REPO / "examples"
KERNELS = REPO / "bench" / "kernels"
KERNEL_NAMES = sorted(path.stem for path in KERNELS.glob("*.c"))

SETUP_HINT = (
    "install the C-to-Wasm toolchain as the setup describes "
    "(Debian: clang lld wasi-libc libclang-rt-14-dev-wasm32, and gcc)"
)
WASI_MODULE = "wasi_snapshot_preview1"

# Small enough that every kernel runs in a few milliseconds, large enough that each
# loop nest does real work (heat-3d is cubic in its size).
TINY_KERNEL_SIZE = {"heat-3d": 12}
TINY_DEFAULT_SIZE = 40


# ---- building ----------------------------------------------------------------------------


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` not found: {SETUP_HINT}")
    return path


def _compile(command: Sequence[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr}"


@pytest.fixture(scope="session")
def build_wasm(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], Path]:
    """Compile a C file with `clang --target=wasm32-wasi -O2 -I sdk` (once per session)."""
    clang = _tool("clang")
    out = tmp_path_factory.mktemp("wasm")
    built: dict[Path, Path] = {}

    def _build(source: Path) -> Path:
        if source not in built:
            target = out / f"{source.parent.name}-{source.stem}.wasm"
            flags = ["--target=wasm32-wasi", "-O2", "-Wall", "-Werror", "-I", str(SDK)]
            _compile([clang, *flags, str(source), "-o", str(target)])
            built[source] = target
        return built[source]

    return _build


@pytest.fixture(scope="session")
def build_native(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], Path]:
    """Compile a C file natively with `gcc -O2 -lm` (once per session)."""
    gcc = _tool("gcc")
    out = tmp_path_factory.mktemp("native")
    built: dict[Path, Path] = {}

    def _build(source: Path) -> Path:
        if source not in built:
            target = out / f"{source.parent.name}-{source.stem}"
            _compile([gcc, "-O2", "-Wall", "-Werror", str(source), "-o", str(target), "-lm"])
            built[source] = target
        return built[source]

    return _build


# ---- running -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str


HostSetup = Callable[[wasmtime.Linker], None]


def run_wasi(
    wasm: Path,
    argv: Sequence[str],
    env: Iterable[tuple[str, str]] = (),
    data_dir: Path | None = None,
    host: HostSetup | None = None,
) -> Run:
    """Run a WASI command module's `_start` in a fresh store; stdout/stderr captured."""
    out: list[bytes] = []
    err: list[bytes] = []
    engine = wasmtime.Engine()
    module = wasmtime.Module.from_file(engine, str(wasm))
    wasi = wasmtime.WasiConfig()
    wasi.argv = list(argv)
    wasi.env = [list(pair) for pair in env]
    wasi.stdout_custom = out.append
    wasi.stderr_custom = err.append
    if data_dir is not None:
        wasi.preopen_dir(str(data_dir), "/data")
    store = wasmtime.Store(engine)
    store.set_wasi(wasi)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    if host is not None:
        host(linker)
    code = 0
    instance = linker.instantiate(store, module)
    try:
        instance.exports(store)["_start"](store)
    except wasmtime.ExitTrap as trap:
        code = trap.code
    finally:
        # A Store or Instance alive at interpreter exit makes a wasmtime thread panic.
        del instance, linker, store, module, engine
    return Run(code, b"".join(out).decode(), b"".join(err).decode())


def imports_of(wasm: Path) -> set[tuple[str, str]]:
    engine = wasmtime.Engine()
    module = wasmtime.Module.from_file(engine, str(wasm))
    names = {(imp.module, imp.name or "") for imp in module.imports}
    del module, engine
    return names


# ---- every C file builds -----------------------------------------------------------------


@pytest.mark.parametrize("example", ["hello", "counter", "compute"])
def test_example_builds_to_wasi_module(build_wasm: Callable[[Path], Path], example: str) -> None:
    wasm = build_wasm(EXAMPLES / example / f"{example}.c")
    modules = {module for module, _ in imports_of(wasm)}
    allowed = {WASI_MODULE, "veritee"} if example == "counter" else {WASI_MODULE}
    assert modules <= allowed
    assert (EXAMPLES / example / "README.md").exists()


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_kernel_builds_to_plain_wasi_module(
    build_wasm: Callable[[Path], Path], kernel: str
) -> None:
    wasm = build_wasm(KERNELS / f"{kernel}.c")
    assert {module for module, _ in imports_of(wasm)} == {WASI_MODULE}


def test_there_are_at_least_six_kernels() -> None:
    assert len(KERNEL_NAMES) >= 6, KERNEL_NAMES


SDK_PROBE = r"""
#include <stdio.h>
#include "veritee.h"

int main(void) {
    uint8_t plain[4] = {1, 2, 3, 4}, sealed[4 + VERITEE_SEAL_OVERHEAD], id[VERITEE_MEASUREMENT_LEN];
    int32_t n = veritee_seal(plain, sizeof plain, sealed, sizeof sealed);
    n += veritee_unseal(sealed, (uint32_t)n, plain, sizeof plain);
    n += veritee_measurement(id);
    printf("%d %s\n", n, veritee_strerror(VERITEE_ERR_UNSEAL));
    return VERITEE_ERR_BAD_ARG + VERITEE_ERR_SHORT_BUFFER + VERITEE_ERR_NOT_SUPPORTED == -7 ? 0 : 1;
}
"""


def test_sdk_header_declares_the_abi(build_wasm: Callable[[Path], Path], tmp_path: Path) -> None:
    source = tmp_path / "probe.c"
    source.write_text(SDK_PROBE)
    engine = wasmtime.Engine()
    module = wasmtime.Module.from_file(engine, str(build_wasm(source)))
    signatures = {
        imp.name: ([str(t) for t in imp.type.params], [str(t) for t in imp.type.results])
        for imp in module.imports
        if imp.module == "veritee"
    }
    del module, engine
    four = (["i32"] * 4, ["i32"])
    assert signatures == {"seal": four, "unseal": four, "measurement": (["i32"], ["i32"])}


# ---- hello -------------------------------------------------------------------------------


def test_hello_prints_args_env_time_and_random(build_wasm: Callable[[Path], Path]) -> None:
    wasm = build_wasm(EXAMPLES / "hello" / "hello.c")
    before = time.time()
    run = run_wasi(wasm, ["hello.wasm", "alpha", "beta gamma"], env=[("GREETING", "bonjour")])
    after = time.time()

    assert run.code == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[:4] == [
        "argc = 3",
        "argv[0] = hello.wasm",
        "argv[1] = alpha",
        "argv[2] = beta gamma",
    ]
    assert "env: GREETING=bonjour" in lines
    clock = re.search(
        r"^time = (\d+)\.(\d{9}) \(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)$", run.stdout, re.M
    )
    assert clock is not None, run.stdout
    assert before - 1 <= int(clock[1]) <= after + 1
    random = re.search(r"^random = ([0-9a-f]{32})$", run.stdout, re.M)
    assert random is not None, run.stdout

    again = run_wasi(wasm, ["hello.wasm"])
    assert "env: (empty)" in again.stdout.splitlines()
    random_again = re.search(r"^random = ([0-9a-f]{32})$", again.stdout, re.M)
    assert random_again is not None and random_again[1] != random[1]


def test_hello_exits_with_the_requested_code(build_wasm: Callable[[Path], Path]) -> None:
    wasm = build_wasm(EXAMPLES / "hello" / "hello.c")
    assert run_wasi(wasm, ["hello.wasm", "--exit", "7"]).code == 7
    bad = run_wasi(wasm, ["hello.wasm", "--exit", "many"])
    assert bad.code == 2
    assert "--exit needs a number" in bad.stderr


# ---- compute -----------------------------------------------------------------------------


def test_compute_checksum_matches_native_build(
    build_wasm: Callable[[Path], Path], build_native: Callable[[Path], Path]
) -> None:
    source = EXAMPLES / "compute" / "compute.c"
    wasm, native = build_wasm(source), build_native(source)
    for size in ("1", "57"):
        expected = subprocess.run(
            [str(native), size], capture_output=True, text=True, check=True
        ).stdout
        run = run_wasi(wasm, ["compute.wasm", size])
        assert run.code == 0, run.stderr
        assert run.stdout == expected
        assert re.fullmatch(rf"n = {size}\nchecksum = -?\d+\n", run.stdout)
    # The documented default size, checked against a value computed independently.
    assert (
        run_wasi(wasm, ["compute.wasm"]).stdout == f"n = 200\nchecksum = {_compute_checksum(200)}\n"
    )


def _compute_checksum(n: int) -> int:
    """compute.c's checksum in exact integer arithmetic (its doubles hold integers)."""
    a = [[(i * i + 3 * j + 1) % 7 - 3 for j in range(n)] for i in range(n)]
    b = [[(2 * i + j * j) % 7 - 3 for j in range(n)] for i in range(n)]
    columns = list(zip(*b, strict=True))
    return sum(
        sum(x * y for x, y in zip(a[i], columns[j], strict=True)) * ((i + 2 * j) % 5 + 1)
        for i in range(n)
        for j in range(n)
    )


# ---- benchmark kernels -------------------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_kernel_checksum_matches_native_build(
    build_wasm: Callable[[Path], Path], build_native: Callable[[Path], Path], kernel: str
) -> None:
    source = KERNELS / f"{kernel}.c"
    size = str(TINY_KERNEL_SIZE.get(kernel, TINY_DEFAULT_SIZE))
    line = re.compile(rf"^kernel={re.escape(kernel)} ns=(\d+) checksum=(\S+)$")
    native = subprocess.run(
        [str(build_native(source)), size], capture_output=True, text=True, check=True
    ).stdout.strip()
    run = run_wasi(build_wasm(source), [kernel, size])
    assert run.code == 0, run.stderr
    native_match, wasm_match = line.match(native), line.match(run.stdout.strip())
    assert native_match is not None, native
    assert wasm_match is not None, run.stdout
    assert float(wasm_match[2]) == pytest.approx(float(native_match[2]), rel=1e-9)


# ---- counter, against a stand-in for the secure world's sealing ---------------------------

SEAL_OVERHEAD = 29  # VERITEE_SEAL_OVERHEAD in sdk/veritee.h
ERR_BAD_ARG, ERR_SHORT_BUFFER, ERR_UNSEAL = -1, -2, -3


def sealing_host(key: bytes) -> HostSetup:
    """veritee.seal/unseal as sdk/veritee.h specifies them, with AES-GCM under `key`.

    Only the ABI (signatures, lengths, error codes) matters here; the blob layout
    (version byte, 12-byte nonce, ciphertext and 16-byte tag = 29 bytes of overhead)
    is this stand-in's own.
    """
    aead = AESGCM(key)

    def memory_range(caller: wasmtime.Caller, ptr: int, length: int) -> tuple[int, int] | None:
        memory = caller["memory"]
        assert isinstance(memory, wasmtime.Memory)
        start, length = ptr & 0xFFFFFFFF, length & 0xFFFFFFFF
        return (start, start + length) if start + length <= memory.data_len(caller) else None

    def transform(caller: wasmtime.Caller, args: tuple[int, ...], seal: bool) -> int:
        source = memory_range(caller, args[0], args[1])
        target = memory_range(caller, args[2], args[3])
        if source is None or target is None:
            return ERR_BAD_ARG
        memory = caller["memory"]
        assert isinstance(memory, wasmtime.Memory)
        data = bytes(memory.read(caller, *source))
        if seal:
            nonce = os.urandom(12)
            result = b"\x01" + nonce + aead.encrypt(nonce, data, None)
        else:
            if len(data) < SEAL_OVERHEAD or data[0] != 1:
                return ERR_UNSEAL
            try:
                result = aead.decrypt(data[1:13], data[13:], None)
            except InvalidTag:  # tampered, or sealed under another key
                return ERR_UNSEAL
        if len(result) > target[1] - target[0]:
            return ERR_SHORT_BUFFER
        memory.write(caller, result, target[0])
        return len(result)

    def install(linker: wasmtime.Linker) -> None:
        for name, seal in (("seal", True), ("unseal", False)):
            # A FuncType binds to the first engine it is used with: reusing it with
            # another engine aborts the process (wasmtime panic, not an exception).
            i32 = wasmtime.ValType.i32()
            signature = wasmtime.FuncType([i32, i32, i32, i32], [i32])
            linker.define_func(
                "veritee",
                name,
                signature,
                lambda caller, *args, seal=seal: transform(caller, args, seal),
                access_caller=True,
            )

    return install


def test_counter_counts_across_restarts_and_refuses_tampering(
    build_wasm: Callable[[Path], Path], tmp_path: Path
) -> None:
    wasm = build_wasm(EXAMPLES / "counter" / "counter.c")
    host = sealing_host(bytes(range(32)))
    for expected in (1, 2, 3):
        run = run_wasi(wasm, ["counter.wasm"], data_dir=tmp_path, host=host)
        assert (run.code, run.stdout) == (0, f"count = {expected}\n"), run.stderr
    sealed = tmp_path / "counter.sealed"
    assert sealed.stat().st_size == 8 + SEAL_OVERHEAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter.sealed"]  # temp file renamed

    # Sealed by "another module or TEE": a different key must not unseal it.
    foreign = run_wasi(wasm, ["counter.wasm"], data_dir=tmp_path, host=sealing_host(bytes(32)))
    assert foreign.code == 1 and foreign.stdout == ""
    assert "cannot be unsealed" in foreign.stderr and "refusing to reset" in foreign.stderr

    blob = bytearray(sealed.read_bytes())
    blob[-1] ^= 0x01
    sealed.write_bytes(bytes(blob))
    tampered = run_wasi(wasm, ["counter.wasm"], data_dir=tmp_path, host=host)
    assert tampered.code == 1 and "cannot be unsealed" in tampered.stderr
    assert sealed.read_bytes() == bytes(blob)  # not reset, not rewritten

    sealed.unlink()
    fresh = run_wasi(wasm, ["counter.wasm"], data_dir=tmp_path, host=host)
    assert (fresh.code, fresh.stdout) == (0, "count = 1\n")


# ---- the benchmark script ----------------------------------------------------------------


@pytest.mark.slow
def test_benchmark_quick_runs_a_and_b() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "compute.py"),
            "--quick",
            "--json",
            "--kernels",
            "gemm,lu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [k["name"] for k in report["kernels"]] == ["gemm", "lu"]
    for kernel in report["kernels"]:
        assert kernel["checksum_ok"]
        assert kernel["ratios"]["b/a"] > 0 and kernel["ratios"]["fuel/b"] > 0
