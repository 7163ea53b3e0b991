"""Where an emulated device keeps its state: one directory, so devices can live side by side.

Layout (``Home(root)``)::

    manufacturer/   the manufacturer's side (CA and vendor signing key, endorsed reference
                    values); on real hardware this never sits on the device
    device/         the device's fused secrets and ROM: HUK, device attestation key (DAK),
                    device certificate, vendor public key, signed boot manifest. Only the
                    device monitor reads it.
    monitor.sock    the monitor's control socket (host-facing: vTEE lifecycle, status)
    vtees/NAME/     one virtual TEE: vtee.json (id, config), tee.sock (its TEE Client API
                    endpoint), storage/ (module private file systems), cache/ (AOT artifacts)

Chosen by ``--home``, else ``VERITEE_HOME``, else the user's data directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_VTEE = "default"


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | None = None) -> Home:
        if home is None:
            home = os.environ.get("VERITEE_HOME")
        if home is None:
            import platformdirs

            home = platformdirs.user_data_dir("veritee")
        return cls(Path(home).expanduser().resolve())

    @property
    def manufacturer(self) -> Path:
        return self.root / "manufacturer"

    @property
    def device(self) -> Path:
        return self.root / "device"

    @property
    def monitor_socket(self) -> Path:
        return self.root / "monitor.sock"

    @property
    def monitor_pid(self) -> Path:
        return self.root / "monitor.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "tee.log"

    @property
    def vtees(self) -> Path:
        return self.root / "vtees"

    def vtee(self, name: str) -> Path:
        return self.vtees / name

    def vtee_socket(self, name: str = DEFAULT_VTEE) -> Path:
        return self.vtee(name) / "tee.sock"
