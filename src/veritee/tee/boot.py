"""Measured and secure boot of the emulated secure world.

Each boot stage is measured (SHA-256) into a boot log with extend semantics, as a TPM PCR:
``pcr = SHA-256(pcr || measurement)``. With secure boot on, every code stage must match the
digest in a boot manifest signed by the vendor key whose public half is fused into the device;
a stage that differs stops the boot. The configuration stage is measured but not signed: it is
the device owner's choice, and a verifier judges it from the evidence.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

import veritee
from veritee.errors import BootError, EvidenceError
from veritee.evidence import cose
from veritee.evidence.claims import BootEntry
from veritee.tee.keys import spki_digest

STAGE_SECURE_WORLD = "secure-world"
STAGE_RUNTIME = "wasm-runtime"
STAGE_CONFIG = "tee-config"
SIGNED_STAGES = (STAGE_SECURE_WORLD, STAGE_RUNTIME)
MANIFEST_PROFILE = "tag:veritee.dev,2026:boot-manifest"

# The secure world's code: what runs with the device secrets (ratls: the TLS TA terminates
# modules' TLS with it). The CLI, verifier and deployer run in the normal world or elsewhere
# and are not part of the TCB being measured.
_SECURE_WORLD_PARTS = ("errors.py", "home.py", "tee", "evidence", "wasm", "ratls")


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


def measure_stages(config: dict[str, Any]) -> list[Stage]:
    """Measure the secure world's code, the Wasm runtime, and the boot configuration."""
    import wasmtime

    from veritee.wasm.runtime import wasmtime_version

    code_root = Path(veritee.__file__).parent
    runtime_root = Path(wasmtime.__file__).parent
    return [
        Stage(
            STAGE_SECURE_WORLD,
            _tree_digest(code_root, _code_files(code_root, _SECURE_WORLD_PARTS, (".py",))),
            veritee.__version__,
        ),
        Stage(
            STAGE_RUNTIME,
            _tree_digest(runtime_root, _code_files(runtime_root, ["."], (".py", ".so", ".dylib"))),
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
