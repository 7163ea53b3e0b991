"""Measured and secure boot of the emulated secure world.

Each boot stage is measured (SHA-256) into a boot log with extend semantics, as a TPM PCR:
``pcr = SHA-256(pcr || measurement)``. With secure boot on, every code stage must match the
digest in a boot manifest signed by the vendor key whose public half is fused into the device;
a stage that differs stops the boot. The configuration stage is measured but not signed: it is
the device owner's choice, and a verifier judges it from the evidence.

The code stages are what runs in the secure world's processes (started isolated, see
tee/spawn.py): the interpreter, the third-party libraries the secure world imports, Veritee's
secure-world code, and the Wasm runtime. The monitor also checks that every module of those
packages it has imported is one of the measured files, so nothing it runs escapes the log.
The emulation cannot hold one line real hardware does: the measuring code is itself part of
what it measures (no immutable boot ROM), and the interpreter's standard library is not
measured (hashing it at every boot would take seconds); both are owned by the system.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import site
import sys
import sysconfig
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

import veritee
from veritee.errors import BootError, EvidenceError
from veritee.evidence import cose
from veritee.evidence.claims import BootEntry
from veritee.tee.keys import spki_digest

STAGE_INTERPRETER = "interpreter"
STAGE_LIBRARIES = "python-libraries"
STAGE_SECURE_WORLD = "secure-world"
STAGE_RUNTIME = "wasm-runtime"
STAGE_CONFIG = "tee-config"
SIGNED_STAGES = (STAGE_INTERPRETER, STAGE_LIBRARIES, STAGE_SECURE_WORLD, STAGE_RUNTIME)
MANIFEST_PROFILE = "tag:veritee.dev,2026:boot-manifest"

# The secure world's code: what runs with the device secrets (tls: the TLS TA terminates
# modules' TLS with it). The CLI, verifier and deployer run in the normal world or elsewhere
# and are not part of the TCB being measured.
_SECURE_WORLD_PARTS = ("__init__.py", "errors.py", "home.py", "tee", "evidence", "wasm", "tls")
# The third-party packages the secure world's processes import (top-level module, and the
# distribution that installs it): their code runs next to the device secrets too.
# tests/test_attack_world.py checks this list against what the processes really import.
LIBRARIES = (
    ("cbor2", "cbor2"),
    ("cryptography", "cryptography"),
    ("OpenSSL", "pyOpenSSL"),
    ("_cffi_backend", "cffi"),
    ("typing_extensions", "typing_extensions"),
    ("_distutils_hack", "setuptools"),  # imported at startup by setuptools' .pth, if installed
    # The TPM backend's binding of the TSS (the monitor and vTEEs of a TPM-backed device import
    # it); measured wherever it is installed. The TSS's C libraries are the system's.
    ("tpm2_pytss", "tpm2-pytss"),
)
_CODE_SUFFIXES = (".py", ".so", ".dylib")


@dataclass(frozen=True)
class Stage:
    component: str
    measurement: bytes
    version: str


def _tree_digest(root: Path, paths: Iterable[Path]) -> bytes:
    """Digest of files by relative path and content, in sorted order (a flat Merkle list)."""
    h = hashlib.sha256()
    for path in sorted(paths):
        rel = path.relative_to(root).as_posix().encode()
        h.update(len(rel).to_bytes(4, "big") + rel)
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.digest()


def _code_files(root: Path, parts: Iterable[str], suffixes: tuple[str, ...]) -> list[Path]:
    files: list[Path] = []
    for part in parts:
        p = root / part
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files += [
                f
                for f in p.rglob("*")
                if f.is_file() and f.suffix in suffixes and "__pycache__" not in f.parts
            ]
    return files


def _named_digest(files: Iterable[tuple[str, Path]]) -> bytes:
    """Digest of files each under a name of its own, in the given order."""
    h = hashlib.sha256()
    for name, path in files:
        h.update(len(name).to_bytes(4, "big") + name.encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.digest()


def _interpreter_files() -> list[tuple[str, Path]]:
    """The interpreter binary that runs the secure world, its shared libpython if any, and
    the ``.pth`` files of its site-packages (the interpreter runs their code at startup,
    even in isolated mode)."""
    files = [("python", Path(os.path.realpath(sys.executable)))]
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
        lib = Path(str(libdir)) / str(soname)
        if lib.is_file():
            files.append(("libpython", Path(os.path.realpath(lib))))
    for sitedir in site.getsitepackages():
        for pth in sorted(Path(sitedir).glob("*.pth")):
            files.append((f"site/{pth.name}", pth))
    return files


def _library_roots() -> list[tuple[str, Path]]:
    """Each secure-world library's installed location (found without importing it); one that
    is not installed is left out (the digest then differs from one where it is)."""
    roots: list[tuple[str, Path]] = []
    for module, _dist in LIBRARIES:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None or not os.path.exists(spec.origin):
            continue
        origin = Path(spec.origin)
        roots.append((module, origin.parent if spec.submodule_search_locations else origin))
    return roots


def _library_files() -> list[tuple[str, Path]]:
    files: list[tuple[str, Path]] = []
    for module, root in _library_roots():
        if root.is_file():
            files.append((module, root))
            continue
        for f in sorted(_code_files(root, ["."], _CODE_SUFFIXES)):
            files.append((f"{module}/{f.relative_to(root).as_posix()}", f))
    return files


def _library_versions() -> str:
    versions = []
    for _module, dist in LIBRARIES:
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{dist} absent")
    return ", ".join(versions)


def _measured_packages() -> dict[str, tuple[Path, set[Path]]]:
    """Per top-level package the secure world runs: where it is, and its measured files."""
    import wasmtime

    code_root = Path(veritee.__file__).parent
    runtime_root = Path(wasmtime.__file__).parent
    packages = {
        "veritee": (code_root, set(_code_files(code_root, _SECURE_WORLD_PARTS, (".py",)))),
        "wasmtime": (runtime_root, set(_code_files(runtime_root, ["."], _CODE_SUFFIXES))),
    }
    for module, root in _library_roots():
        files = {root} if root.is_file() else set(_code_files(root, ["."], _CODE_SUFFIXES))
        packages[module] = (root, files)
    return packages


def check_imports(modules: Mapping[str, ModuleType] | None = None) -> None:
    """Refuse to boot if this process imported (``modules``: sys.modules) a module of a
    measured package from a file that is not measured (another copy shadowing it, or a part
    left out of the measurement)."""
    packages = _measured_packages()
    loaded = dict(sys.modules if modules is None else modules)
    for name, module in loaded.items():
        top = name.partition(".")[0]
        file = getattr(module, "__file__", None)
        if top not in packages or not isinstance(file, str):
            continue
        if Path(file) not in packages[top][1]:
            raise BootError(
                f"measured boot: module {name!r} was imported from {file}, which is not part "
                "of the measured secure world; refusing to boot"
            )


def measure_stages(config: dict[str, Any]) -> list[Stage]:
    """Measure the interpreter, the libraries, the secure world's code, the Wasm runtime,
    and the boot configuration."""
    import wasmtime

    from veritee.wasm.runtime import wasmtime_version

    code_root = Path(veritee.__file__).parent
    runtime_root = Path(wasmtime.__file__).parent
    return [
        Stage(STAGE_INTERPRETER, _named_digest(_interpreter_files()), platform.python_version()),
        Stage(STAGE_LIBRARIES, _named_digest(_library_files()), _library_versions()),
        Stage(
            STAGE_SECURE_WORLD,
            _tree_digest(code_root, _code_files(code_root, _SECURE_WORLD_PARTS, (".py",))),
            veritee.__version__,
        ),
        Stage(
            STAGE_RUNTIME,
            _tree_digest(runtime_root, _code_files(runtime_root, ["."], _CODE_SUFFIXES)),
            wasmtime_version(),
        ),
        Stage(STAGE_CONFIG, hashlib.sha256(cbor2.dumps(config, canonical=True)).digest(), ""),
    ]


def sign_manifest(stages: list[Stage], vendor_key: ec.EllipticCurvePrivateKey) -> bytes:
    """The vendor's signed statement of which code stages may boot."""
    payload = {
        "profile": MANIFEST_PROFILE,
        "stages": {
            s.component: [s.measurement, s.version] for s in stages if s.component in SIGNED_STAGES
        },
    }
    return cose.sign1(bytes(cbor2.dumps(payload)), vendor_key)


def secure_boot(
    stages: list[Stage], manifest: bytes, vendor_pub: ec.EllipticCurvePublicKey
) -> None:
    """Refuse to boot unless each signed stage matches the vendor-signed manifest."""
    try:
        msg = cose.decode(manifest)
        cose.verify(msg, vendor_pub, what="boot manifest")
        payload = cose.loads(msg.payload, what="boot manifest")
    except EvidenceError as exc:
        raise BootError(f"secure boot: {exc}") from None
    signed = payload.get("stages") if isinstance(payload, dict) else None
    if payload.get("profile") != MANIFEST_PROFILE or not isinstance(signed, dict):
        raise BootError("secure boot: the boot manifest is not a Veritee boot manifest")
    for stage in stages:
        if stage.component not in SIGNED_STAGES:
            continue
        entry = signed.get(stage.component)
        if not isinstance(entry, list) or not entry or entry[0] != stage.measurement:
            expected = entry[0].hex()[:16] if isinstance(entry, list) and entry else "nothing"
            raise BootError(
                f"secure boot: stage '{stage.component}' was modified: it measures "
                f"{stage.measurement.hex()[:16]}…, the vendor signed {expected}…; refusing to boot"
            )


def boot_log(
    stages: list[Stage], vendor_pub: ec.EllipticCurvePublicKey, secure: bool
) -> tuple[list[BootEntry], bytes]:
    """The boot log entries and the final extended register value."""
    signer = spki_digest(vendor_pub)
    entries = [
        BootEntry(
            s.component,
            s.measurement,
            signer if secure and s.component in SIGNED_STAGES else b"",
            s.version,
        )
        for s in stages
    ]
    pcr = bytes(32)
    for e in entries:
        pcr = hashlib.sha256(pcr + e.measurement).digest()
    return entries, pcr
