"""Shared fixtures. Tests reach files by name (``asset``, ``vector``), never by hand-built paths."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

# Property tests draw the same examples on every `make test`, so CI passes or fails on the code
# alone, never on the luck of a draw. `make fuzz` (VERITEE_FUZZ=1) draws afresh each round to
# find new bugs; each one found becomes an @example of its test, so the fixed run keeps it.
settings.register_profile("fixed", derandomize=True, database=None)
settings.register_profile("fuzz", derandomize=False, database=None)
settings.load_profile("fuzz" if os.environ.get("VERITEE_FUZZ") else "fixed")

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "tests" / "assets"
# Published vectors from other projects, vendored with their provenance (tests/vectors/README.md).
VECTORS = REPO / "tests" / "vectors"


@pytest.fixture
def asset() -> Callable[[str], Path]:
    """Path of a fixture file under tests/assets/."""

    def _asset(name: str) -> Path:
        path = ASSETS / name
        assert path.exists(), f"missing test asset {name}"
        return path

    return _asset


@pytest.fixture
def vector() -> Callable[[str], Path]:
    """Path of a published test vector under tests/vectors/ (e.g. "psa/tfm-iak-pub.pem")."""

    def _vector(name: str) -> Path:
        path = VECTORS / name
        assert path.exists(), f"missing vendored vector {name} (tests/vectors/)"
        return path

    return _vector


# -- a real emulated device with its secure world running, driven through the real CLI -------

BUILD_TIMEOUT = 120  # seconds; a generous bound that only catches a hang
CLI_TIMEOUT = 120


@dataclass
class Device:
    """A provisioned device in its own state directory, its secure world running."""

    home: Path

    def cli(
        self, *args: str | Path, input: bytes | None = None, timeout: float = CLI_TIMEOUT
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``veritee --home HOME ARGS`` as a separate process."""
        return subprocess.run(
            [sys.executable, "-m", "veritee", "--home", str(self.home), *map(str, args)],
            input=input if input is not None else b"",
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str | Path, input: bytes | None = None) -> str:
        proc = self.cli(*args, input=input)
        assert proc.returncode == 0, proc.stderr.decode()
        return proc.stdout.decode()

    def start(self) -> None:
        self.ok("tee", "start")

    def stop(self) -> None:
        self.cli("tee", "stop")

    def context(self, vtee: str = "default") -> Any:
        from veritee.home import Home
        from veritee.tee import client as teec

        return teec.Context(home=Home(self.home), vtee=vtee)


def _provision(root: Path) -> Device:
    dev = Device(root)
    dev.ok("device", "init")
    return dev


# A test module that sets ``BACKENDS = ("emulated", "tpm")`` runs each of its tests that use
# ``device`` once per backend: the secure world's behaviour that is not about a backend's
# specifics must be the same on a TPM-rooted device (issue 20).
# A test there that is about the emulated backend's own evidence is marked
# ``emulated_backend`` and runs on it alone.
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    backends = getattr(metafunc.module, "BACKENDS", None)
    if not backends or metafunc.definition.get_closest_marker("emulated_backend"):
        return
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", backends, indirect=True, scope="session")
    elif "fresh_device" in metafunc.fixturenames:
        metafunc.parametrize("fresh_device", backends, indirect=True)


@contextlib.contextmanager
def _tpm_device(base: Path) -> Iterator[Device]:
    """A device provisioned on an swtpm of its own (its EK certified by a test CA), started."""
    from ._swtpm import make_ek_ca, provision_swtpm

    tpm = provision_swtpm(base / "swtpm", make_ek_ca())
    tpm.start()
    dev = Device(base / "home")
    try:
        dev.ok("device", "init", "--backend", "tpm", "--tpm", tpm.tcti)
        dev.start()
        yield dev
    finally:
        dev.stop()
        tpm.stop()


@pytest.fixture(scope="session")
def device(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Device]:
    """One device for the whole session (tests must not restart it: use ``fresh_device``);
    on its own swtpm when the test module asks for the TPM backend too."""
    if getattr(request, "param", "emulated") == "tpm":
        with _tpm_device(tmp_path_factory.mktemp("tpm-device")) as dev:
            yield dev
        return
    dev = _provision(tmp_path_factory.mktemp("device"))
    dev.start()
    yield dev
    dev.stop()


@pytest.fixture
def fresh_device(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Device]:
    """A device of this test's own, started; stopped at the end whatever happened."""
    if getattr(request, "param", "emulated") == "tpm":
        with _tpm_device(tmp_path / "tpm") as dev:
            yield dev
        return
    dev = _provision(tmp_path / "home")
    dev.start()
    yield dev
    dev.stop()


@pytest.fixture(scope="session")
def wasm(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Build a module from C or WAT in the repo (``examples/...`` or ``tests/assets/...``)."""
    out = tmp_path_factory.mktemp("wasm")
    built: dict[tuple[str, tuple[str, ...]], Path] = {}

    def _wasm(source: str, *defines: str) -> Path:
        key = (source, defines)
        if key not in built:
            from veritee.wasm.build import build

            src = REPO / source
            target = out / f"{src.stem}-{len(built)}.wasm"
            if defines:
                # Variants of one source (e.g. a "modified" module) via -D flags.
                cmd_src = out / f"{src.stem}-{len(built)}{src.suffix}"
                cmd_src.write_text("".join(f"#define {d}\n" for d in defines) + src.read_text())
                src = cmd_src
            build(src, target)
            built[key] = target
        return built[key]

    return _wasm
