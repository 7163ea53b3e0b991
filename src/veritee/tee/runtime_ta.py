"""The Wasm runtime trusted application, server side: one session = one loaded module.

At LOAD the secure world measures the module, compiles it (or takes the authenticated AOT
artifact), and mints the instance's keys: a module attestation key (P-256) endorsed by the
vTEE key in a vtee token, and an X25519 key that secrets are provisioned to. Neither private
key ever leaves this process; the normal world sees measurements, tokens and output only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from veritee.errors import ModuleError, UsageError
from veritee.evidence import cose
from veritee.evidence.claims import (
    VteeClaims,
    config_digest,
    encode_claims,
)
from veritee.evidence.provisioning import ProvisioningKeys
from veritee.tee import grants
from veritee.tee.sealing import module_key
from veritee.tee.services import Attester, attester_of
from veritee.tee.worker import WorkerPool, raise_for
from veritee.wasm.runtime import (
    ArtifactChanged,
    CompiledModule,
    Compiler,
    Limits,
    Preopen,
    to_binary,
)

PRIVATE_DIR_GUEST = "/data"  # where a module finds its private storage
MAX_NAME = 64
MAX_ARGS_BYTES = 1024 * 1024  # argv + env of one run
MAX_FUEL = 2**62  # wasmtime's fuel is a u64: a larger budget would not fit (and is no budget)
NONCE_MIN, NONCE_MAX = 8, 64  # bytes; EAT nonces are 8 to 64 bytes


@dataclass(frozen=True)
class VteeIdentity:
    """What a vTEE was given by the monitor at start."""

    name: str
    vtee_id: bytes
    config: dict[str, Any]
    config_digest: bytes
    attestation_key: ec.EllipticCurvePrivateKey
    platform_token: bytes
    seal_root: bytes

    @property
    def memory_cap(self) -> int:
        return int(self.config.get("memory_mb", 4096)) * 1024 * 1024


@dataclass
class LoadedModule:
    name: str
    wasm: bytes
    compiled: CompiledModule
    limits: Limits
    preopens: tuple[Preopen, ...]
    config_digest: bytes
    seal_key: bytes
    attestation_key: ec.EllipticCurvePrivateKey
    provisioning: ProvisioningKeys
    vtee_token: bytes
    protected: tuple[Path, ...] = ()  # the secure world's own places, refused to grants
    invoke: str | None = None  # the export a run calls instead of _start (attested)
    loaded_at: float = field(default_factory=time.time)
    running: bool = False

    @property
    def measurement(self) -> bytes:
        return self.compiled.measurement

    def attester(self, platform_token: bytes) -> Attester:
        return attester_of(self, platform_token)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "measurement": self.measurement,
            "config_digest": self.config_digest,
            "size": self.compiled.wasm_size,
            "from_cache": self.compiled.from_cache,
            "limits": self.limits.to_cbor(),
            "dirs": [[p.guest, p.writable] for p in self.preopens],
            "grants": [[p.host, p.guest, p.writable] for p in self.preopens[1:]],
        }


def load(
    compiler: Compiler, vtee: VteeIdentity, storage: Path, module: bytes, raw_config: bytes
) -> LoadedModule:
    """Measure, compile and key one module instance; raise ModuleError/UsageError."""
    config = _decode_map(raw_config, "load config")
    name = config.get("name", "module")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        raise UsageError(f"module name must be 1 to {MAX_NAME} characters")
    limits = parse_limits(config, vtee, memory_mb=256, timeout=300.0, max_timeout=86400)
    invoke = config.get("invoke")
    if invoke is not None and not (isinstance(invoke, str) and 0 < len(invoke) <= MAX_NAME):
        raise UsageError(f"--invoke must name an export of 1 to {MAX_NAME} characters")

    wasm = to_binary(module)
    compiled = compiler.for_limits(limits).compile(wasm)
    if invoke is not None and invoke not in compiled.exports:
        raise UsageError(f"--invoke {invoke}: the module exports no function of that name")
    if invoke is None and "_start" not in compiled.exports:
        raise ModuleError("module has no '_start' export: it is not a WASI command")
    private = grants.private_dir(storage, compiled.measurement.hex())
    preopens = [Preopen(str(private), PRIVATE_DIR_GUEST, True)]
    granted = config.get("dirs", [])
    if not isinstance(granted, list) or len(granted) > grants.MAX_GRANTS:
        raise UsageError(f"at most {grants.MAX_GRANTS} granted dirs, as a list")
    protected = grants.protected_paths(storage.parent)
    for entry in granted:
        if not (isinstance(entry, list) and len(entry) == 3):
            raise UsageError("each granted dir must be [host, guest, writable]")
        host, guest, writable = entry
        if not isinstance(writable, bool):
            raise UsageError("a granted dir's mode must be true (writable) or false")
        # The secure world opens the directory, so it is judged by its real path: a grant
        # must never reach the device's secrets, the vTEEs or other modules' storage.
        real = grants.check_grant(host, protected)
        guest = grants.check_guest(guest, PRIVATE_DIR_GUEST)
        if any(p.guest == guest for p in preopens):
            raise UsageError(f"guest path {guest!r} is granted twice")
        preopens.append(Preopen(real, guest, writable))

    # The configuration digest names what the module may do, and on which data: the real
    # host paths behind granted dirs, their guest names and modes are attested (a verifier
    # sees them in the vtee token's grants claim too), so a module granted a directory it
    # should not see does not pass for one that was not.
    module_config: dict[str, Any] = {
        "limits": limits.to_cbor(),
        "dirs": [[p.guest, p.writable] for p in preopens],
        "grants": [[p.host, p.guest, p.writable] for p in preopens[1:]],
    }
    if invoke is not None:
        module_config["invoke"] = invoke  # what runs is part of what is attested
    digest = config_digest(module_config)
    mak = ec.generate_private_key(ec.SECP256R1())
    vtee_claims = VteeClaims(
        vtee_id=vtee.vtee_id,
        measurement=compiled.measurement,
        config=digest,
        module_key=cose.ec_key_to_cose(mak.public_key()),
        iat=int(time.time()),
        grants=tuple((p.host, p.guest, p.writable) for p in preopens[1:]),
    )
    vtee_token = cose.sign1(encode_claims(vtee_claims), vtee.attestation_key)
    return LoadedModule(
        name=name,
        wasm=wasm,
        compiled=compiled,
        limits=limits,
        preopens=tuple(preopens),
        config_digest=digest,
        seal_key=module_key(vtee.seal_root, compiled.measurement),
        attestation_key=mak,
        provisioning=ProvisioningKeys(),
        vtee_token=vtee_token,
        protected=protected,
        invoke=invoke,
    )


def run(
    compiler: Compiler,
    pool: WorkerPool,
    vtee: VteeIdentity,
    loaded: LoadedModule,
    raw_request: bytes,
    cancelled: Callable[[], bool],
    scratch: Path,
    relay: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> tuple[int, bytes]:
    """Run the loaded module in a fresh worker; returns (exit code, CBOR result)."""
    request = _decode_map(raw_request, "run request")
    args, env, stdin = request.get("args", []), request.get("env", []), request.get("stdin", b"")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise UsageError("args must be a list of strings")
    if not isinstance(env, list) or not all(
        isinstance(kv, list) and len(kv) == 2 and all(isinstance(x, str) for x in kv) for kv in env
    ):
        raise UsageError("env must be a list of [name, value] strings")
    if not isinstance(stdin, bytes):
        raise UsageError("stdin must be bytes")
    if sum(len(a) for a in args) + sum(len(k) + len(v) for k, v in env) > MAX_ARGS_BYTES:
        raise UsageError(f"arguments and environment exceed {MAX_ARGS_BYTES} bytes")
    loaded.running = True
    try:
        for attempt in (1, 2):
            compiled = loaded.compiled
            job = {
                "artifact_path": str(compiled.artifact_path),
                "artifact_digest": compiled.artifact_digest,
                "measurement": compiled.measurement,
                "seal_key": loaded.seal_key,
                "name": loaded.name,
                "args": args,
                "env": env,
                "stdin": stdin,
                "preopens": [[p.host, p.guest, p.writable] for p in loaded.preopens],
                # The worker checks again what it opens: the first is the private dir.
                "protected": [str(p) for p in loaded.protected],
                "private_preopens": 1,
                "memory": loaded.limits.memory_bytes,
                "time": loaded.limits.time_seconds,
                "fuel": loaded.limits.fuel,
                "invoke": loaded.invoke,
                "scratch": str(scratch),
                # What the module's host functions need, for this module only.
                "attestation_key": loaded.attestation_key.private_bytes(
                    serialization.Encoding.DER,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
                "platform_token": vtee.platform_token,
                "vtee_token": loaded.vtee_token,
                "config_digest": loaded.config_digest,
                "provisioning": loaded.provisioning.export(),
                "relay": bool(request.get("relay")) and relay is not None,
                # Output to the client as written (through the relay), not at exit.
                "stream": request.get("stream") is True and relay is not None,
                # Stdin from the client as the module reads it (through the relay too).
                "stdin_stream": request.get("stdin_stream") is True and relay is not None,
            }
            reply = pool.run(job, loaded.limits.time_seconds, cancelled, relay)
            try:
                raise_for(reply)
            except ArtifactChanged:
                # The normal world owns the disk: an artifact swapped after we checked it is
                # dropped and the module compiled afresh from the bytes we measured.
                if attempt == 2:
                    raise
                compiler.for_limits(loaded.limits).forget(compiled.measurement)
                compiled.artifact_path.unlink(missing_ok=True)
                loaded.compiled = compiler.for_limits(loaded.limits).compile(loaded.wasm)
                continue
            break
    finally:
        loaded.running = False
    body = {
        "stdout": reply["stdout"],
        "stderr": reply["stderr"],
        "elapsed": reply["elapsed"],
        "truncated": reply["truncated"],
    }
    if "fuel_used" in reply:
        body["fuel_used"] = int(reply["fuel_used"])
    stop = reply.get("stop")
    if isinstance(stop, list) and len(stop) == 2:
        # A trap or a limit after the module started: its output goes back with the reason.
        body["stopped"] = {"kind": str(stop[0]), "message": str(stop[1])}
    return int(reply["exit"]), bytes(cbor2.dumps(body))


def attest(
    vtee: VteeIdentity,
    loaded: LoadedModule,
    nonce: bytes,
    *,
    user_data: bytes = b"",
    host_data: bytes = b"",
) -> bytes:
    """Evidence over ``nonce``: platform token, vtee token, and a fresh module token.

    ``user_data`` from the secure world only (the TLS TA's key binding); ``host_data`` is
    what the normal world's ATTEST asked for (see services.Attester.evidence)."""
    return loaded.attester(vtee.platform_token).evidence(nonce, user_data, host_data=host_data)


def parse_limits(
    config: dict[str, Any],
    vtee: VteeIdentity,
    *,
    memory_mb: int,
    timeout: float,
    max_timeout: float,
) -> Limits:
    """The limits a load asks for, within what the vTEE allows; raise UsageError."""
    memory_mb = config.get("memory_mb", memory_mb)
    timeout = config.get("timeout", timeout)
    if not isinstance(memory_mb, int) or not 1 <= memory_mb * 1024 * 1024 <= vtee.memory_cap:
        raise UsageError(f"memory limit must be 1 to {vtee.memory_cap >> 20} MiB")
    if not isinstance(timeout, int | float) or not 0 < timeout <= max_timeout:
        raise UsageError(f"time budget must be between 0 and {max_timeout:g} seconds")
    fuel = config.get("fuel")
    if fuel is not None and (
        not isinstance(fuel, int) or isinstance(fuel, bool) or not 0 < fuel <= MAX_FUEL
    ):
        raise UsageError(f"fuel budget must be 1 to {MAX_FUEL}")
    return Limits(memory_bytes=memory_mb * 1024 * 1024, time_seconds=float(timeout), fuel=fuel)


def _decode_map(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = cbor2.loads(raw) if raw else {}
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError):
        raise UsageError(f"{what} is not valid CBOR") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what} must be a CBOR map")
    return value


__all__ = ["LoadedModule", "ModuleError", "VteeIdentity", "attest", "load", "run"]
