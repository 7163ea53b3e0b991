"""Build Rust modules for wasm32-wasi: one ``.rs`` file with rustc, or a cargo project.

The compiler is Debian's ``rustc`` with ``libstd-rust-dev-wasm32`` (target ``wasm32-wasi``)
or any rustc whose sysroot holds a wasm32-wasi (or, in newer releases, wasm32-wasip1)
standard library: a rustc without one (e.g. rustup's default, host-only) is passed over. The
SDK crate (``sdk/rust``) is compiled with the same compiler and linked in; cargo projects
take it as a path dependency and build ``--offline`` (no crates.io).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from veritee.errors import BuildError, ToolchainMissing

RUSTC_ENV = "VERITEE_RUSTC"  # the one rustc to use, instead of searching
# Debian's compiler first: it is the one setup installs with the wasm32 std beside it.
RUSTC_CANDIDATES = ("/usr/bin/rustc", "rustc")
CARGO_CANDIDATES = ("/usr/bin/cargo", "cargo")
TARGETS = ("wasm32-wasi", "wasm32-wasip1")
EDITION = "2021"
PACKAGES_HINT = "run 'make setup' (Debian: apt-get install rustc libstd-rust-dev-wasm32 cargo)"
TOOL_TIMEOUT = 600  # seconds: a compiler that hangs must not hang `veritee build` or a deploy
PROBE_TIMEOUT = 30  # seconds for `rustc --print sysroot`
MAX_DIAGNOSTIC = 400  # characters of the compiler's error quoted in the one-line message

# A file that declares endpoints with `veritee::app!` is an app module: a WASI reactor
# (cdylib), called per event; any other file is a command (bin) with a main.
_APP_MACRO = re.compile(r"\bapp!\s*[\{\(\[]")
_CFG = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:=([^\"\\]*))?$")


@dataclass(frozen=True)
class Toolchain:
    rustc: str
    target: str


def sdk_crate() -> Path:
    from veritee.wasm.build import sdk_dir

    return sdk_dir() / "rust"


def _candidates() -> list[str]:
    chosen = os.environ.get(RUSTC_ENV)
    names = [chosen] if chosen else list(RUSTC_CANDIDATES)
    found: list[str] = []
    for name in names:
        path = name if os.path.isabs(name) and os.access(name, os.X_OK) else shutil.which(name)
        if path and path not in found:
            found.append(path)
    return found


def find_rustc() -> Toolchain:
    """The first rustc that has a wasm32-wasi standard library; raises ToolchainMissing."""
    tried = []
    for rustc in _candidates():
        try:
            proc = subprocess.run(
                [rustc, "--print", "sysroot"],
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            tried.append(f"{rustc} (does not run)")
            continue
        sysroot = Path(proc.stdout.strip())
        for target in TARGETS:
            lib = sysroot / "lib" / "rustlib" / target / "lib"
            if proc.returncode == 0 and any(lib.glob("libstd-*.rlib")):
                return Toolchain(rustc, target)
        tried.append(f"{rustc} (no wasm32-wasi std in {sysroot})")
    where = f": tried {', '.join(tried)}" if tried else ""
    raise ToolchainMissing(
        f"no rustc with the wasm32-wasi standard library{where}; {PACKAGES_HINT}"
    )


def _find_cargo() -> str:
    for name in CARGO_CANDIDATES:
        path = name if os.path.isabs(name) and os.access(name, os.X_OK) else shutil.which(name)
        if path:
            return path
    raise ToolchainMissing(f"cargo is not installed; {PACKAGES_HINT}")


def _cfg_flags(defines: list[str]) -> list[str]:
    """``-D NAME[=VALUE]`` becomes ``--cfg NAME`` / ``--cfg NAME="VALUE"`` (``cfg!(NAME)``)."""
    flags = []
    for define in defines:
        m = _CFG.match(define)
        if not m:
            raise BuildError(f"-D {define!r} is not a cfg name (NAME or NAME=VALUE)")
        name, value = m.groups()
        flags += ["--cfg", name if value is None else f'{name}="{value}"']
    return flags


def _common_flags(source_dir: Path) -> list[str]:
    return [
        "-C",
        "strip=debuginfo",  # the std's debug info is megabytes; the name section stays
        # Paths compiled into the binary (panic locations) must not depend on where the
        # checkout is, or the same source would have another measurement on each machine.
        f"--remap-path-prefix={source_dir}=src",
        f"--remap-path-prefix={sdk_crate()}=veritee-sdk",
    ]


# What cargo says when a project needs crates.io, which a build never reaches.
_OFFLINE_MARKERS = ("no matching package named", "attempting to make an HTTP request", "offline")
OFFLINE_HINT = " (modules build --offline: depend only on path crates, such as the SDK in sdk/rust)"


def _run(
    cmd: list[str], what: str, env: dict[str, str] | None = None, *, offline: bool = False
) -> str:
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=TOOL_TIMEOUT, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        raise BuildError(f"{what}: the compiler did not finish in {TOOL_TIMEOUT} s") from None
    except OSError as exc:
        raise ToolchainMissing(f"{what}: cannot run {cmd[0]}: {exc.strerror}") from None
    if proc.returncode != 0:
        hint = OFFLINE_HINT if offline and any(m in proc.stderr for m in _OFFLINE_MARKERS) else ""
        raise BuildError(f"{what}: {_diagnostic(proc.stderr)}{hint}")
    return proc.stdout


def _diagnostic(stderr: str) -> str:
    """The first error and where it is, on one line."""
    lines = stderr.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("error"):
            where = next((ln.strip() for ln in lines[i + 1 : i + 3] if "-->" in ln), "")
            text = f"{line.strip()} {where}".strip()
            return text[:MAX_DIAGNOSTIC]
    return (stderr.strip().splitlines() or ["failed"])[-1][:MAX_DIAGNOSTIC]


def _crate_name(stem: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", stem)
    return name if name[:1].isalpha() else f"m_{name}"


def build_file(source: Path, output: Path, *, opt: str, defines: list[str]) -> None:
    """Compile one ``.rs`` file (with the SDK crate as ``veritee``) into ``output``."""
    toolchain = find_rustc()
    try:
        text = source.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError(f"cannot read {source}: {exc}") from None
    crate_type = "cdylib" if _APP_MACRO.search(text) else "bin"
    common = [
        "--target",
        toolchain.target,
        "-C",
        f"opt-level={opt}",
        *_common_flags(source.resolve().parent),
    ]
    with tempfile.TemporaryDirectory(prefix="veritee-rust-") as tmp:
        sdk = sdk_crate() / "src" / "lib.rs"
        _run(
            [
                toolchain.rustc,
                "--edition",
                EDITION,
                "--crate-type",
                "rlib",
                "--crate-name",
                "veritee",
                *common,
                str(sdk),
                "--out-dir",
                tmp,
            ],
            f"rustc failed on the SDK crate {sdk}",
        )
        _run(
            [
                toolchain.rustc,
                "--edition",
                EDITION,
                "--crate-type",
                crate_type,
                "--crate-name",
                _crate_name(source.stem),
                *common,
                *_cfg_flags(defines),
                "--extern",
                f"veritee={Path(tmp) / 'libveritee.rlib'}",
                "-L",
                tmp,
                str(source.resolve()),  # absolute: a file named "-x.rs" is not a flag
                "-o",
                str(output),
            ],
            f"rustc failed on {source}",
        )


def build_cargo(project: Path, output: Path, *, opt: str, defines: list[str]) -> None:
    """Build the cargo project at ``project`` (its directory or its Cargo.toml) offline, in
    release mode for wasm32-wasi, and copy its one Wasm artifact to ``output``."""
    manifest = (project / "Cargo.toml" if project.is_dir() else project).resolve()
    if not manifest.is_file():
        raise BuildError(
            f"{project}: no Cargo.toml (a Rust module is a .rs file or a cargo project)"
        )
    toolchain = find_rustc()
    cargo = _find_cargo()
    flags = [*_common_flags(manifest.parent), *_cfg_flags(defines)]
    with tempfile.TemporaryDirectory(prefix="veritee-cargo-") as target_dir:
        env = {
            **os.environ,
            "RUSTC": toolchain.rustc,
            "CARGO_TARGET_DIR": target_dir,
            "CARGO_ENCODED_RUSTFLAGS": "\x1f".join(flags),
            "CARGO_PROFILE_RELEASE_OPT_LEVEL": opt,
            "CARGO_TERM_COLOR": "never",
        }
        env.pop("RUSTFLAGS", None)
        out = _run(
            [
                cargo,
                "build",
                "--offline",
                "--release",
                "--target",
                toolchain.target,
                "--manifest-path",
                str(manifest),
                "--message-format=json-render-diagnostics",
            ],
            f"cargo failed on {manifest}",
            env,
            offline=True,
        )
        artifacts = _artifacts(out, manifest)
        if len(artifacts) != 1:
            names = ", ".join(p.name for p in artifacts) or "none"
            raise BuildError(
                f"{manifest}: a module is one Wasm binary, the project builds {names} "
                "(keep one bin or one cdylib target)"
            )
        output.write_bytes(artifacts[0].read_bytes())


def _artifacts(messages: str, manifest: Path) -> list[Path]:
    """The .wasm files cargo reports for the project's own package (not its dependencies)."""
    found = []
    for line in messages.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if not isinstance(msg, dict) or msg.get("reason") != "compiler-artifact":
            continue
        if Path(str(msg.get("manifest_path", ""))).resolve() != manifest:
            continue
        found += [Path(f) for f in msg.get("filenames", []) if str(f).endswith(".wasm")]
    return found
