"""`veritee run` used as `wasmtime run` is: options, errors, limits, WASI, through the real CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from .conftest import Device

# Not about a backend's specifics: the same on an emulated and on a TPM-rooted device.
BACKENDS = ("emulated", "tpm")


def _error_lines(stderr: bytes) -> list[str]:
    text = stderr.decode()
    assert "Traceback" not in text, text
    return [ln for ln in text.splitlines() if ln.startswith("veritee: error:")]


def _wat(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- limits keep what the module wrote ----------------------------------------------------


def test_memory_limit_exits_5_and_keeps_the_output_written_before(
    device: Device, wasm: Callable[..., Path]
) -> None:
    proc = device.cli("run", "--max-memory", "16", wasm("tests/assets/c/write_then_oom.c"))
    # Old code: exit 1 (the module's own, after malloc failed), as if the module had chosen it.
    assert proc.returncode == 5, proc.stderr.decode()
    assert proc.stdout == b"before the limit\n"
    assert b"to stderr before the limit\n" in proc.stderr
    (line,) = _error_lines(proc.stderr)
    assert "memory limit of 16 MiB reached" in line
    # The secure world still runs the next module.
    assert device.cli("run", wasm("examples/hello/hello.c")).returncode == 0


def test_trap_keeps_the_output_written_before(device: Device, tmp_path: Path) -> None:
    mod = _wat(
        tmp_path,
        "trap.wat",
        """(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "written first\\n")
  (data (i32.const 0) "\\10\\00\\00\\00\\0e\\00\\00\\00")
  (func (export "_start")
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    unreachable))""",
    )
    proc = device.cli("run", mod)
    # Old code: the trap's error line only; what the module wrote was dropped with the worker.
    assert proc.returncode == 5
    assert proc.stdout == b"written first\n"
    (line,) = _error_lines(proc.stderr)
    assert "module trapped" in line and "unreachable" in line


# -- usage errors say what is wrong -------------------------------------------------------


def test_unknown_option_is_a_usage_error(device: Device, wasm: Callable[..., Path]) -> None:
    proc = device.cli("run", "--no-such-option", wasm("examples/hello/hello.c"))
    # Old code: "File '--no-such-option' does not exist" (taken for the module's path).
    assert proc.returncode == 2
    assert b"No such option '--no-such-option'" in proc.stderr
    assert b"does not exist" not in proc.stderr


def test_options_after_the_module_are_the_modules(
    device: Device, wasm: Callable[..., Path]
) -> None:
    out = device.ok("run", wasm("examples/hello/hello.c"), "--verbose", "-x")
    assert "--verbose" in out and "-x" in out


def test_a_file_that_is_not_wasm_says_so(device: Device, tmp_path: Path) -> None:
    text = tmp_path / "notes.wasm"
    text.write_text("just some text, not a module\n")
    proc = device.cli("run", text)
    # Old code: "WAT text does not parse: expected `(`" for any UTF-8 file.
    assert proc.returncode == 5
    (line,) = _error_lines(proc.stderr)
    assert "not a Wasm binary" in line
    assert "does not parse" not in line


def test_wat_with_comments_still_runs(device: Device, tmp_path: Path) -> None:
    mod = _wat(tmp_path, "ok.wat", ';; a comment\n(; block ;)\n(module (func (export "_start")))')
    assert device.cli("run", mod).returncode == 0


# -- build ----------------------------------------------------------------------------------


def test_build_validates_wat(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = _wat(tmp_path, "bad.wat", '(module (func (export "_start") (result i32)))')
    proc = subprocess.run(
        [sys.executable, "-m", "veritee", "build", str(bad), "-o", str(tmp_path / "bad.wasm")],
        capture_output=True,
        check=False,
    )
    # Old code: wat2wasm parsed it and build wrote a module that fails only at run.
    assert proc.returncode == 8, proc.stderr.decode()
    (line,) = _error_lines(proc.stderr)
    assert "does not validate" in line
    assert not (tmp_path / "bad.wasm").exists()


def test_build_shows_all_of_clangs_diagnostics(tmp_path: Path) -> None:
    import subprocess
    import sys

    src = tmp_path / "two.c"
    src.write_text("int main(void) { int unused; undefined_one(); return nope; }\n")
    proc = subprocess.run(
        [sys.executable, "-m", "veritee", "build", str(src), "-o", str(tmp_path / "two.wasm")],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 8
    text = proc.stderr.decode()
    # Old code: only the first line with "error" in it.
    assert "undefined_one" in text and "nope" in text and "unused" in text
    assert len(_error_lines(proc.stderr)) == 1


# -- WASI -----------------------------------------------------------------------------------


def test_sock_shutdown_on_a_bad_descriptor_returns_ebadf(device: Device, tmp_path: Path) -> None:
    # The wasi-testsuite case: shutdown of a descriptor that is not open, with flags wasmtime
    # does not define; old code trapped ("Invalid flag value Sdflags") instead of EBADF (8).
    tmpl = """(module
  (import "wasi_snapshot_preview1" "sock_shutdown" (func $ss (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (call $ss (i32.const FD) (i32.const HOW)))))"""
    for fd, how, errno in ((999, 4, 8), (999, 3, 8), (1, 3, 57), (1, 4, 57)):
        mod = _wat(
            tmp_path, f"ss-{fd}-{how}.wat", tmpl.replace("FD", str(fd)).replace("HOW", str(how))
        )
        proc = device.cli("run", mod)
        assert proc.returncode == errno, (fd, how, proc.stderr.decode())


# -- --invoke and --fuel --------------------------------------------------------------------

MATH = """(module
  (func (export "mix") (param i32 i64 f32 f64) (result f64)
    (f64.add (f64.add (f64.convert_i32_s (local.get 0)) (f64.convert_i64_s (local.get 1)))
             (f64.add (f64.promote_f32 (local.get 2)) (local.get 3))))
  (func (export "pair") (param i64) (result i32 i64) (i32.const 7) (local.get 0))
  (func (export "_start") (loop (br 0))))"""


def test_invoke_calls_an_export_with_typed_arguments(device: Device, tmp_path: Path) -> None:
    mod = _wat(tmp_path, "math.wat", MATH)
    assert device.ok("run", "--invoke", "mix", mod, "-2", "40", "0.5", "1.5") == "40.0\n"
    # i64 written unsigned means the same bits; several results, one a line.
    assert device.ok("run", "--invoke", "pair", mod, "0xffffffffffffffff") == "7\n-1\n"


def test_invoke_refuses_a_wrong_arity_a_bad_value_and_an_unknown_function(
    device: Device, tmp_path: Path
) -> None:
    mod = _wat(tmp_path, "math.wat", MATH)
    for args, expected in (
        (("mix", mod, "1"), "takes 4 argument(s) (i32, i64, f32, f64), 1 given"),
        (("mix", mod, "x", "1", "1", "1"), "argument 1 'x' is not a valid i32"),
        (("mix", mod, "4294967296", "1", "1", "1"), "argument 1 '4294967296' is not a valid i32"),
        (("nope", mod), "--invoke nope: the module exports no function of that name"),
    ):
        proc = device.cli("run", "--invoke", *args)
        assert proc.returncode == 2, proc.stderr.decode()
        (line,) = _error_lines(proc.stderr)
        assert expected in line


def test_fuel_exhausted_exits_5_with_its_message(device: Device, tmp_path: Path) -> None:
    mod = _wat(tmp_path, "math.wat", MATH)  # _start loops for ever
    proc = device.cli("run", "--fuel", "100000", "--timeout", "60", mod)
    assert proc.returncode == 5
    (line,) = _error_lines(proc.stderr)
    assert "fuel budget of 100000 exhausted" in line
    # A budget large enough lets a finite call finish, with the fuel-counting artifact.
    assert device.ok("run", "--fuel", "100000", "--invoke", "pair", mod, "3") == "7\n3\n"
    assert device.ok("run", "--invoke", "pair", mod, "3") == "7\n3\n"


def test_fuel_and_invoke_are_attested(device: Device, tmp_path: Path) -> None:
    from veritee.tee.ta import WasmSession

    mod = _wat(tmp_path, "math.wat", MATH).read_bytes()
    digests = set()
    with device.context() as ctx:
        for kwargs in ({}, {"fuel": 1000}, {"invoke": "pair"}):
            digests.add(WasmSession(ctx).load(mod, **kwargs)["config_digest"])  # type: ignore[arg-type]
    assert len(digests) == 3


# -- streaming ------------------------------------------------------------------------------


def _popen(
    device: Device, *args: str | Path, stdin: int = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "veritee", "--home", str(device.home), "run", *map(str, args)],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _readline(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> bytes:
    """A line of the module's stdout, or fail after ``timeout`` (a bound that catches a hang)."""
    import select

    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no line within {timeout} s"
    return proc.stdout.readline()


def test_stdin_streams_to_the_module_as_it_reads(device: Device, wasm: Callable[..., Path]) -> None:
    proc = _popen(device, wasm("tests/assets/c/line_echo.c"), stdin=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        # Each line is answered before the next is written: stdin and stdout interleave,
        # as with a pipe. Old code: stdin was read to its end before the run, so the first
        # answer never came while stdin stayed open.
        for word in (b"one", b"two", b"three"):
            proc.stdin.write(word + b"\n")
            proc.stdin.flush()
            assert _readline(proc) == b"got: " + word + b"\n"
        assert proc.poll() is None, "the module waits for more input while stdin is open"
        rest, err = proc.communicate(timeout=60)  # closes stdin: EOF reaches the module
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rest == b"eof after 3 lines\n", err
    assert proc.returncode == 0


def test_megabytes_of_stdin_pass_through_intact(device: Device, wasm: Callable[..., Path]) -> None:
    data = os.urandom(6 << 20)
    proc = device.cli("run", wasm("tests/assets/c/echo_stdin.c"), input=data)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert proc.stdout == bytes(data).upper()  # the module's toupper, byte for byte


def test_a_module_that_never_reads_stdin_ends_while_stdin_stays_open(
    device: Device, wasm: Callable[..., Path]
) -> None:
    # stdin never written, never closed (communicate() would close it)
    proc = _popen(device, wasm("tests/assets/c/slow_writer.c"), stdin=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stdout.read() == b"first\nsecond\n"
    assert code == 0


def test_output_streams_while_the_module_runs(device: Device, wasm: Callable[..., Path]) -> None:
    proc = _popen(device, wasm("tests/assets/c/slow_writer.c"))
    assert proc.stdout is not None
    first = proc.stdout.readline()
    # Old code: nothing until the module exited (both lines at once, 3 s later).
    assert first == b"first\n"
    assert proc.poll() is None, "the first line should arrive while the module still runs"
    rest, err = proc.communicate(timeout=60)
    assert rest == b"second\n"
    assert b"err first\n" in err
    assert proc.returncode == 0


def test_64_mib_of_output_arrives_complete(device: Device, wasm: Callable[..., Path]) -> None:
    proc = device.cli("run", wasm("tests/assets/c/bulk_out.c"), "64")
    # Old code: cut at 16 MiB and exit 0.
    assert proc.returncode == 0, proc.stderr[-500:]
    assert len(proc.stdout) == 64 << 20
    expected = hashlib.sha256()
    block = bytearray(1 << 20)
    for i in range(64):
        for j in range(26):
            block[j::26] = bytes([97 + (i + j) % 26]) * len(block[j::26])
        expected.update(block)
    assert hashlib.sha256(proc.stdout).hexdigest() == expected.hexdigest()
    assert proc.stderr.endswith(b"end\n")


def test_json_result_on_success_and_on_a_limit(device: Device, tmp_path: Path) -> None:
    import json

    mod = _wat(tmp_path, "math.wat", MATH)
    ok = device.cli("run", "--json", "--fuel", "100000", "--invoke", "pair", mod, "3")
    assert ok.returncode == 0 and ok.stdout == b"7\n3\n"
    result = json.loads(ok.stderr.decode().splitlines()[-1])
    assert result["exit_code"] == 0 and result["stopped"] is None
    assert 0 < result["fuel_used"] <= 100000
    stopped = device.cli("run", "--json", "--fuel", "1000", mod)
    assert stopped.returncode == 5
    lines = stopped.stderr.decode().splitlines()
    result = json.loads(next(ln for ln in lines if ln.startswith("{")))
    assert result["exit_code"] == 5 and result["fuel_used"] == 1000
    assert result["stopped"]["error"] == "ModuleLimitExceeded"
    assert "fuel budget of 1000 exhausted" in result["stopped"]["reason"]
