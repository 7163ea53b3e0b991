"""Roots of trust behind one interface: what the device monitor needs from the hardware.

A backend gives the device monitor five things, and the monitor reaches device secrets through
nothing else (tests/test_backends.py checks that no other secure-world module reads them):

- **identity**: the key that signs platform evidence and the certificate chain that endorses it
  (:meth:`Backend.platform_token` signs; :attr:`Backend.info` is the public side);
- **measured boot**: :meth:`Backend.record_boot` takes each measured stage, in order, so a
  backend with boot registers of its own (a TPM's PCRs) extends them too;
- **platform evidence**: :meth:`Backend.platform_token` signs the platform claims, which bind
  the vTEE's key and the boot log, as the backend's root of trust does;
- **the secure world's root secret**: :meth:`Backend.root`, from which every vTEE key and record
  MAC is derived (the emulated backend's HUK; a TPM unseals it under a PCR policy);
- **monotonic counters**: :meth:`Backend.open_counters`, the storage a vTEE keeps its rollback
  counters in, and :attr:`Backend.rollback_protection`, what protects them (a claim in the
  evidence, so a verifier's policy can tell the backends apart).

A backend is one module with one class; adding one is that module and one entry in
:data:`BACKENDS`. The chosen backend is recorded in the device's home at ``device init``
(``device/backend.json``); a home without that file is an emulated device. Backends are imported
only when used: a machine without a backend's library loses that backend, not the others.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from veritee.errors import DeviceError, UsageError
from veritee.home import Home

if TYPE_CHECKING:
    from pathlib import Path

    from veritee.evidence.claims import BootEntry, PlatformClaims
    from veritee.tee.device import DeviceInfo
    from veritee.tee.sealing import CounterAnchor

# name -> "module:Class". The class implements Backend.
BACKENDS: dict[str, str] = {
    "emulated": "veritee.tee.backends.emulated:EmulatedBackend",
    "tpm": "veritee.tee.backends.tpm_device:TpmFactory",
}
DEFAULT = "emulated"
RECORD = "backend.json"  # in HOME/device: which backend provisioned this device, and its options


@dataclass(frozen=True)
class Choice:
    """The backend a device was provisioned with, and its options (e.g. a TPM's TCTI)."""

    name: str = DEFAULT
    options: dict[str, str] = field(default_factory=dict)


class Backend(Protocol):
    """A root of trust, opened for one boot of the secure world (see the module's docstring)."""

    name: str
    # The EAT-style value of the evidence's rollback-protection claim: what keeps the counters
    # from being rolled back (evidence.claims ROLLBACK_*).
    rollback_protection: str
    info: DeviceInfo

    def record_boot(self, entries: list[BootEntry], register: bytes) -> None:
        """Take the measured boot: each stage in order and the resulting boot register."""

    def platform_token(self, claims: PlatformClaims) -> bytes:
        """The platform token: ``claims`` signed by the device's attestation key, as COSE_Sign1
        carrying the key's certificate chain."""

    def root(self) -> bytes:
        """The secure world's root secret (32 bytes), from which vTEE keys are derived."""

    def open_counters(self, vtee_id: bytes) -> int:
        """A file descriptor on the vTEE's rollback-counter storage, for that vTEE alone."""

    def counters_anchor(self, vtee_id: bytes) -> dict[str, Any] | None:
        """What binds the vTEE's counters file to counters the host cannot roll back (handed
        to the vTEE, which opens it with :func:`open_anchor`); None when nothing does."""

    def activate_credential(self, credential_blob: bytes, secret: bytes) -> bytes:
        """A verifier's credential activation (TPM2_ActivateCredential with the AK and EK):
        the secret comes out only of the TPM that holds both. A backend whose identity is a
        certificate alone raises UsageError."""

    def describe(self) -> dict[str, Any]:
        """What ``tee status`` shows of the backend: its name and what it protects."""


class BackendFactory(Protocol):
    name: str

    def provision(
        self, home: Home, *, ca_dir: Path | None, force: bool, options: dict[str, str]
    ) -> DeviceInfo:
        """Provision a device of this backend in ``home`` (what a manufacturer does once)."""

    def open(self, home: Home, options: dict[str, str]) -> Backend:
        """Open the device for a boot of its secure world."""


def names() -> tuple[str, ...]:
    return tuple(BACKENDS)


def factory(name: str) -> BackendFactory:
    """The backend named ``name``, imported now; a clear error when it is unknown or its
    library is not installed."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise UsageError(
            f"unknown TEE backend {name!r} (available: {', '.join(BACKENDS)})"
        ) from None
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DeviceError(
            f"the {name!r} TEE backend needs {exc.name or 'a library'}, which is not installed "
            "here (run scripts/setup.sh, or install Veritee with its dependencies)"
        ) from None
    made: BackendFactory = getattr(module, attr)()
    return made


def recorded(home: Home) -> Choice:
    """The backend ``home``'s device was provisioned with (emulated when none is recorded)."""
    path = home.device / RECORD
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return Choice()
    except (OSError, ValueError) as exc:
        raise DeviceError(f"{path}: not a readable backend record: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("backend"), str):
        raise DeviceError(f"{path}: must hold an object with a 'backend' name")
    options = raw.get("options", {})
    if not isinstance(options, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in options.items()
    ):
        raise DeviceError(f"{path}: 'options' must map names to strings")
    return Choice(raw["backend"], dict(options))


def record(home: Home, choice: Choice) -> None:
    home.device.mkdir(parents=True, exist_ok=True)
    body = {"backend": choice.name, "options": choice.options}
    (home.device / RECORD).write_text(json.dumps(body, indent=2) + "\n")


def provision(
    home: Home,
    *,
    backend: str = DEFAULT,
    options: dict[str, str] | None = None,
    ca_dir: Path | None = None,
    force: bool = False,
) -> DeviceInfo:
    """Provision ``home``'s device with ``backend`` and record the choice."""
    chosen = factory(backend)
    opts = dict(options or {})
    info = chosen.provision(home, ca_dir=ca_dir, force=force, options=opts)
    record(home, Choice(backend, opts))
    return info


def open_device(home: Home) -> Backend:
    """The backend of ``home``'s device, opened for a boot."""
    choice = recorded(home)
    return factory(choice.name).open(home, choice.options)


def open_anchor(spec: Any) -> CounterAnchor | None:
    """The counter anchor a backend's :meth:`Backend.counters_anchor` described (in a vTEE)."""
    if spec is None:
        return None
    if not isinstance(spec, dict) or spec.get("kind") != "tpm-nv":
        raise DeviceError(f"unknown counters anchor {spec!r}")
    from veritee.tee.backends.tpm import NvAnchor

    return NvAnchor(str(spec["tcti"]), int(spec["counter"]))
