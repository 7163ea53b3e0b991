"""Build modules: C with clang or Rust with rustc/cargo for wasm32-wasi (WASI preview 1), or
WAT text."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import veritee
from veritee.errors import BuildError

CLANG_CANDIDATES = ("clang", "clang-16", "clang-15", "clang-14")
TARGET = "wasm32-wasi"


def sdk_dir() -> Path:
    """The SDK headers: in a source checkout, ``sdk/`` at the repository root."""
    return Path(veritee.__file__).resolve().parents[2] / "sdk"


def find_clang() -> str:
    for name in CLANG_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    raise BuildError(
        "clang is not installed: run 'make setup' (Debian: apt-get install clang lld wasi-libc "
        "libclang-rt-14-dev-wasm32)"
    )


def build(
    source: Path,
    output: Path,
    *,
    opt: str = "2",
    includes: list[Path] | None = None,
    defines: list[str] | None = None,
) -> int:
    """Compile ``source`` into ``output``; returns the module size in bytes.

    ``source`` is a ``.c`` file, a ``.wat`` file, a ``.rs`` file, or a cargo project (its
    directory or its ``Cargo.toml``). For Rust, ``defines`` become ``--cfg`` flags.
    """
    if source.suffix == ".wat":
        return _build_wat(source, output)
    if opt not in ("0", "1", "2", "3", "s", "z"):
        raise BuildError(f"-O{opt} is not an optimisation level")
    if source.suffix == ".rs" or source.name == "Cargo.toml" or source.is_dir():
        return _build_rust(source, output, opt=opt, includes=includes, defines=defines)
    if source.suffix != ".c":
        raise BuildError(
            f"{source}: only .c, .rs, .wat sources and cargo projects (a directory with a "
            "Cargo.toml) are supported"
        )
    cmd = [find_clang(), f"--target={TARGET}", f"-O{opt}", "-Wall"]
    is_app = "veritee_app.h" in source.read_text(errors="replace")
    if is_app:
        cmd.append("-mexec-model=reactor")  # an app module is called, it has no main
    for inc in [sdk_dir(), *(includes or [])]:
        cmd += ["-I", str(inc)]
    for define in defines or []:
        if not define or define.startswith("-"):
            raise BuildError(f"-D {define!r} is not a macro definition")
        cmd.append(f"-D{define}")
    cmd += [str(source), "-o", str(output)]
    output.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    # Every diagnostic clang gave (warnings too), as clang wrote them: the one error line
    # below is a summary, not a replacement for them.
    sys.stderr.write(proc.stderr)
    sys.stderr.flush()
    if proc.returncode != 0:
        first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip())
        if "wasi" in proc.stderr and ("not found" in proc.stderr or "cannot find" in proc.stderr):
            first += " (is wasi-libc installed? run 'make setup')"
        errors = sum(1 for ln in proc.stderr.splitlines() if ": error:" in ln)
        more = f" (and {errors - 1} more error(s) above)" if errors > 1 else ""
        raise BuildError(f"clang failed on {source}: {first}{more}")
    if is_app:
        from veritee.wasm.endpoints import record

        output.write_bytes(record(output.read_bytes()))
    return output.stat().st_size


def _build_rust(
    source: Path,
    output: Path,
    *,
    opt: str,
    includes: list[Path] | None,
    defines: list[str] | None,
) -> int:
    from veritee.wasm import rust
    from veritee.wasm.endpoints import exports, record

    if includes:
        raise BuildError("-I is for C sources; a Rust module takes its crates from Cargo.toml")
    output.parent.mkdir(parents=True, exist_ok=True)
    if source.suffix == ".rs":
        rust.build_file(source, output, opt=opt, defines=list(defines or []))
    else:
        rust.build_cargo(source, output, opt=opt, defines=list(defines or []))
    wasm = output.read_bytes()
    if "veritee_alloc" in exports(wasm):  # an app module (veritee::app!): record its endpoints
        output.write_bytes(record(wasm))
    return output.stat().st_size


def _build_wat(source: Path, output: Path) -> int:
    """WAT text to a binary that wasmtime validates (wat2wasm alone only parses)."""
    import wasmtime

    from veritee.errors import ModuleError
    from veritee.wasm.runtime import new_engine, to_binary

    try:
        wasm = to_binary(source.read_bytes())
    except ModuleError as exc:
        raise BuildError(f"{source}: {exc}") from None
    try:
        wasmtime.Module.validate(new_engine(), wasm)
    except wasmtime.WasmtimeError as exc:
        reason = str(exc).strip().splitlines()
        raise BuildError(
            f"{source}: module does not validate: {reason[-1] if reason else exc}"
        ) from None
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(wasm)
    return output.stat().st_size
