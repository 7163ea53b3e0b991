"""The emulated backend: a software root of trust whose secrets are files of the device's user.

The hardware-unique key (HUK) and the device attestation key (DAK) live in ``HOME/device``,
written 0600 at provisioning (tee/device.py, what a factory does). Whoever can act as that user
can read them, so nothing this backend signs may claim more than ``emulated``: its certificates
carry that lifecycle mark, and its counters are a file of the user (``host-file``), which the
evidence says. It is for development; a hardware backend keeps the same structure with secrets
no software on the host can read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from veritee.evidence import cose
from veritee.evidence.claims import ROLLBACK_HOST_FILE, BootEntry, PlatformClaims, encode_claims
from veritee.home import Home
from veritee.tee import device, keys
from veritee.tee.device import DeviceInfo


class EmulatedDevice:
    """One boot of an emulated device: the HUK and DAK read from its files."""

    name = "emulated"
    rollback_protection = ROLLBACK_HOST_FILE  # the emulated RPMB: a file of the user's

    def __init__(self, home: Home) -> None:
        self.home = home
        self.info = device.load_info(home)
        self._huk = keys.read_secret(home.device / device.HUK)
        self._dak = keys.read_private_key(home.device / device.DAK_KEY)

    def record_boot(self, entries: list[BootEntry], register: bytes) -> None:
        # No boot registers of its own: the monitor's software register is the only one.
        pass

    def platform_token(self, claims: PlatformClaims) -> bytes:
        # One certificate: x5chain is that certificate's bytes, not an array (RFC 9360).
        chain = self.info.certificate.public_bytes(serialization.Encoding.DER)
        return cose.sign1(encode_claims(claims), self._dak, unprotected={cose.HDR_X5CHAIN: chain})

    def root(self) -> bytes:
        return self._huk

    def open_counters(self, vtee_id: bytes) -> int:
        path = self.home.device / "counters" / f"{vtee_id.hex()}.ctr"
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def counters_anchor(self, vtee_id: bytes) -> dict[str, Any] | None:
        return None  # the emulated RPMB is the file alone

    def activate_credential(self, credential_blob: bytes, secret: bytes) -> bytes:
        from veritee.errors import UsageError

        raise UsageError(
            "an emulated device has no TPM credential to activate: its identity is its "
            "device certificate"
        )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "root_of_trust": "software: device secrets are files of the device's user",
            "rollback_protection": self.rollback_protection,
        }


class EmulatedBackend:
    name = "emulated"

    def provision(
        self, home: Home, *, ca_dir: Path | None, force: bool, options: dict[str, str]
    ) -> DeviceInfo:
        if options:
            from veritee.errors import UsageError

            raise UsageError(f"the emulated backend takes no options (got {', '.join(options)})")
        return device.provision(home, ca_dir=ca_dir, force=force)

    def open(self, home: Home, options: dict[str, str]) -> EmulatedDevice:
        return EmulatedDevice(home)
