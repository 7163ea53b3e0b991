"""Virtual TEEs as the device monitor keeps them: records, seeds, and the keys derived from them.

A vTEE is a name, a random 16-byte id, a configuration, and a random 32-byte seed kept in the
monitor's own storage (``device/vtee-seeds/``). Every key of the vTEE is derived from the HUK,
the id, the seed and the digest of the configuration:

* another configuration gives other keys, so a host that edits a vTEE's limits gets a new
  identity, never the old one under new limits;
* destroying a vTEE deletes its seed, so its keys cannot be derived again even if its record
  is restored from a backup (crypto-shredding), and a vTEE re-created under the same name
  gets a fresh id and seed: a new identity.

The record on disk (``vtees/NAME/vtee.json``) is in host-reachable storage, so it carries an
HMAC under a HUK-derived key: the monitor refuses a record the host altered.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

from veritee.errors import DeviceError, UsageError
from veritee.evidence.claims import config_digest
from veritee.home import Home
from veritee.tee.keys import derive, derive_p256, read_secret, write_secret

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,31}$")  # also a directory name: keep it tame
SEED_BYTES = 32
MAX_MEMORY_MB = 64 * 1024
MAX_MODULES = 4096
MAX_WORKERS = 16
DEFAULT_CONFIG: dict[str, Any] = {"memory_mb": 4096, "max_modules": 64, "workers": 2}


@dataclass(frozen=True)
class VteeRecord:
    name: str
    vtee_id: bytes
    config: dict[str, Any]
    created: str

    @property
    def config_digest(self) -> bytes:
        return config_digest(self.config)

    def body(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.vtee_id.hex(),
            "config": self.config,
            "created": self.created,
        }


@dataclass(frozen=True)
class VteeKeys:
    """What a vTEE process receives: its own keys, nothing of the device's."""

    attestation_key: ec.EllipticCurvePrivateKey
    seal_root: bytes
    aot_key: bytes


def validate_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise UsageError(
            f"vTEE name {name!r}: use 1 to 32 lower-case letters, digits or '-', "
            "starting with a letter"
        )
    return name


def make_config(
    memory_mb: int | None = None, max_modules: int | None = None, workers: int | None = None
) -> dict[str, Any]:
    config = dict(DEFAULT_CONFIG)
    for key, value, high in (
        ("memory_mb", memory_mb, MAX_MEMORY_MB),
        ("max_modules", max_modules, MAX_MODULES),
        ("workers", workers, MAX_WORKERS),
    ):
        if value is not None:
            if not 1 <= value <= high:
                raise UsageError(f"{key.replace('_', '-')} must be between 1 and {high}")
            config[key] = value
    return config


def _record_mac(huk: bytes, body: dict[str, Any]) -> str:
    key = derive(huk, "vtee-record")
    return hmac.new(key, cbor2.dumps(body, canonical=True), hashlib.sha256).hexdigest()


def _seed_path(home: Home, vtee_id: bytes) -> Any:
    return home.device / "vtee-seeds" / f"{vtee_id.hex()}.seed"


def create(home: Home, huk: bytes, name: str, config: dict[str, Any]) -> VteeRecord:
    """A new vTEE: fresh id and seed, a record the monitor can later authenticate."""
    validate_name(name)
    if (home.vtee(name) / "vtee.json").exists():
        raise UsageError(f"a vTEE named {name!r} already exists (destroy it first)")
    record = VteeRecord(
        name=name,
        vtee_id=secrets.token_bytes(16),
        config=config,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    write_secret(_seed_path(home, record.vtee_id), secrets.token_bytes(SEED_BYTES))
    path = home.vtee(name)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    body = record.body()
    (path / "vtee.json").write_text(
        json.dumps({**body, "mac": _record_mac(huk, body)}, indent=2) + "\n"
    )
    return record


def load(home: Home, huk: bytes | None, name: str) -> VteeRecord:
    """Read a vTEE record; with ``huk``, refuse one whose HMAC does not verify."""
    validate_name(name)
    try:
        raw = json.loads((home.vtee(name) / "vtee.json").read_text())
        body = {k: raw[k] for k in ("name", "id", "config", "created")}
        record = VteeRecord(name, bytes.fromhex(body["id"]), dict(body["config"]), body["created"])
    except FileNotFoundError:
        raise DeviceError(f"no vTEE named {name!r} on this device") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise DeviceError(f"vTEE {name!r}: record is malformed ({exc})") from None
    if record.name != name:
        raise DeviceError(f"vTEE {name!r}: record names another vTEE ({record.name!r})")
    if huk is not None and not hmac.compare_digest(str(raw.get("mac", "")), _record_mac(huk, body)):
        raise DeviceError(
            f"vTEE {name!r}: its record was altered outside the monitor (configuration or "
            "identity changed); refusing to start it"
        )
    return record


def names(home: Home) -> list[str]:
    if not home.vtees.exists():
        return []
    return sorted(p.name for p in home.vtees.iterdir() if (p / "vtee.json").exists())


def derive_keys(home: Home, huk: bytes, record: VteeRecord, *, boot_register: bytes) -> VteeKeys:
    """The vTEE's keys; impossible once its seed is destroyed.

    The AOT cache key is also bound to ``boot_register`` (the measured boot's final value):
    native code an artifact holds runs unchecked once its tag verifies, so an artifact
    written under another boot (other code, other configuration, code injected into that
    boot) must never verify under this one. Sealing and attestation keys are not bound to
    it: sealed data survives an update of the secure world, and evidence names the boot.
    """
    try:
        seed = read_secret(_seed_path(home, record.vtee_id))
    except DeviceError:
        raise DeviceError(
            f"vTEE {record.name!r}: its seed is gone (the vTEE was destroyed); its keys cannot "
            "be derived again. Create a new vTEE instead"
        ) from None
    digest = record.config_digest
    root = derive(huk, "vtee", record.vtee_id, seed)
    return VteeKeys(
        attestation_key=derive_p256(root, "vtee-attestation", digest),
        seal_root=derive(root, "vtee-seal", digest),
        aot_key=derive(root, "vtee-aot", digest, boot_register),
    )


def destroy(home: Home, name: str) -> VteeRecord:
    """Delete a vTEE's seed (its keys with it), then its record, storage and cache."""
    record = load(home, None, name)
    _seed_path(home, record.vtee_id).unlink(missing_ok=True)
    (home.device / "counters" / f"{record.vtee_id.hex()}.ctr").unlink(missing_ok=True)
    shutil.rmtree(home.vtee(name), ignore_errors=True)
    return record
