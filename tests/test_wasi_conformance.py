"""WASI conformance: each program in tests/wasi runs under plain wasmtime and under `veritee run`
and must give what its JSON says under both.

The programs and their JSON follow wasi-testsuite's format (args, env, dirs, exit_code,
stdout), and `veritee run` is reached through scripts/wasi_testsuite_adapter.py exactly as that
suite's runner calls an adapter: one process per program, from the program's directory. So the
same adapter runs the official suite from a checkout of it (docs/modules.md says how).
Plain wasmtime is the reference: a program that fails there is a wrong program, not a finding.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import wasmtime

from .conftest import Device

# Not about a backend's specifics: the same on an emulated and on a TPM-rooted device.
BACKENDS = ("emulated", "tpm")

REPO = Path(__file__).resolve().parent.parent
CASES_DIR = REPO / "tests" / "wasi"
ADAPTER = REPO / "scripts" / "wasi_testsuite_adapter.py"
CASES = sorted(p.stem for p in CASES_DIR.glob("*.c"))
SPEC_FIELDS = {"args", "env", "dirs", "exit_code", "stdout"}


@dataclass(frozen=True)
class Spec:
    """A program's JSON, as wasi-testsuite's runner reads it."""

    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    dirs: list[str] = field(default_factory=list)
    exit_code: int = 0
    stdout: str | None = None


def _spec(name: str) -> Spec:
    raw = json.loads((CASES_DIR / f"{name}.json").read_text())
    assert set(raw) <= SPEC_FIELDS, f"{name}.json: fields the runner would not read"
    return Spec(**raw)


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from veritee.wasm.build import build

    out = tmp_path_factory.mktemp("wasi-programs")
    built = {}
    for name in CASES:
        built[name] = out / f"{name}.wasm"
        build(CASES_DIR / f"{name}.c", built[name])
    return built


def _stage(where: Path, name: str, programs: dict[str, Path]) -> Path:
    """The program's directory as the runner sees it: the program, its JSON, the fixtures."""
    shutil.copytree(
        CASES_DIR, where, symlinks=True, ignore=shutil.ignore_patterns("*.c", "*.h", "*.json")
    )
    (where / "fs-tests.dir" / "writeable").mkdir()
    shutil.copy(programs[name], where / f"{name}.wasm")
    shutil.copy(CASES_DIR / f"{name}.json", where / f"{name}.json")
    return where


def _under_wasmtime(case: Path, name: str, spec: Spec) -> tuple[int, str]:
    """The reference: wasmtime's own WASI, each directory granted under the name given."""
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    wasi.argv = [f"{name}.wasm", *spec.args]
    wasi.env = list(spec.env.items())
    for d in spec.dirs:
        wasi.preopen_dir(str(case / d), d)
    wasi.stdout_file = str(case / "stdout")
    wasi.stderr_file = str(case / "stderr")
    store.set_wasi(wasi)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    instance = linker.instantiate(store, wasmtime.Module.from_file(engine, case / f"{name}.wasm"))
    start = instance.exports(store)["_start"]
    assert isinstance(start, wasmtime.Func)
    try:
        start(store)
        code = 0
    except wasmtime.ExitTrap as exit_:
        code = exit_.code
    return code, (case / "stdout").read_text()


def _under_veritee(
    case: Path, name: str, spec: Spec, home: Path
) -> subprocess.CompletedProcess[str]:
    args = [a for arg in spec.args for a in ("--arg", arg)]
    dirs = [a for d in spec.dirs for a in ("--dir", d)]
    envs = [a for k, v in spec.env.items() for a in ("--env", f"{k}={v}")]
    return subprocess.run(
        [sys.executable, ADAPTER, "--test-file", case / f"{name}.wasm", *args, *dirs, *envs],
        cwd=case,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "VERITEE_HOME": str(home),
            "VERITEE": f"{sys.executable} -m veritee",
        },
        check=False,
    )


def _passes(name: str, device: Device, programs: dict[str, Path], tmp_path: Path) -> Path:
    """Run the program under both; return the directory it ran in under Veritee."""
    spec = _spec(name)
    want_code, want_out = spec.exit_code, spec.stdout

    code, out = _under_wasmtime(_stage(tmp_path / "wasmtime", name, programs), name, spec)
    assert code == want_code, f"{name} under plain wasmtime: exit {code}"
    if want_out is not None:
        assert out == want_out

    case = _stage(tmp_path / "veritee", name, programs)
    proc = _under_veritee(case, name, spec, device.home)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == want_code, proc.stderr
    if want_out is not None:
        assert proc.stdout == want_out
    return case


@pytest.mark.parametrize("name", [c for c in CASES if c != "sandbox"])
def test_program_gives_what_its_json_says_under_wasmtime_and_veritee(
    name: str, device: Device, programs: dict[str, Path], tmp_path: Path
) -> None:
    _passes(name, device, programs, tmp_path)


def test_a_module_cannot_leave_its_granted_directory(
    device: Device, programs: dict[str, Path], tmp_path: Path
) -> None:
    # A hostile module with one directory granted tries "..", a symlink that points out of the
    # grant, and absolute paths, to read a file beside the grant and to create one there.
    case = _passes("sandbox", device, programs, tmp_path)
    assert (case / "outside.txt").exists()
    assert not (case / "escape.txt").exists()


def test_the_adapter_names_veritee_as_the_runner_expects() -> None:
    proc = subprocess.run(
        [sys.executable, ADAPTER, "--version"],
        capture_output=True,
        text=True,
        env={**os.environ, "VERITEE": f"{sys.executable} -m veritee"},
        check=True,
    )
    name, version = proc.stdout.split()
    assert name == "veritee" and version[0].isdigit()
