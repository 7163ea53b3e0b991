"""The TPM 2.0 backend as the device monitor's root of trust (the ``Backend`` of tee/backends).

What it holds in the TPM (primitives in ``tpm.py``):

* the secure world's root secret, sealed at ``device init`` under a PolicyPCR of the genuine
  boot's ``VERITEE_PCR`` value, computed from the stages as installed; at each boot the monitor
  extends every stage, unseals the root, and caps the PCR so that no one unseals it again
  until the next platform reset;
* the attestation key (AK), made at ``device init`` under the SRK with an authValue derived
  from the root: only the booted secure world can quote with it;
* the platform evidence of each vTEE: a TPM2_Quote over ``VERITEE_PCR`` whose qualifying data
  binds the vTEE key and the platform claims it vouches for, with the event log, the EK
  certificate and the AK (veritee.evidence.tpm.TpmPlatformEvidence);
* the vTEEs' rollback counters, anchored in a TPM NV counter (tee/sealing.py: Counters).

The monitor opens the TPM for each operation and closes it after: the TPM (and swtpm, which
serves one connection at a time) is never held from the vTEEs or other users of the machine.
What a verifier registers (the EK certificate and the AK, for credential activation) is
written to ``HOME/manufacturer/tpm-identity.cbor`` at ``device init``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

import cbor2
from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.utils import NoSuchIndex, NVReadEK

from veritee.errors import BootError, DeviceError, SecureWorldError, UsageError
from veritee.evidence import cose
from veritee.evidence.claims import (
    ROLLBACK_TPM_NV,
    BootEntry,
    PlatformClaims,
    encode_claims,
)
from veritee.evidence.tpm import (
    PROTECTION_TPM,
    TpmEvent,
    TpmPlatformEvidence,
    claims_binding,
    expected_pcr,
    tpm_ueid,
)
from veritee.home import Home
from veritee.tee import boot, device
from veritee.tee.backends.tpm import (
    DEFAULT_TCTI,
    EK_CERT_INDEX,
    MAX_COUNTERS,
    ROOT_BYTES,
    Identity,
    TpmBackend,
    TpmUnavailable,
    UnsealRefused,
)
from veritee.tee.device import DeviceInfo

NAME = "tpm"
STATE = "tpm"  # in HOME/device: the AK's and the sealed root's TPM-wrapped blobs
IDENTITY = "identity.cbor"  # in the state directory: EK certificate and AK public area
PUBLISHED_IDENTITY = "tpm-identity.cbor"  # in HOME/manufacturer, for verifiers to register
COUNTERS = "counters"  # in HOME/device: the vTEEs' counter files, anchored in NV counters
NV_ALLOCATION = "nv-counters.json"  # in the state directory: vTEE id -> NV counter number
# The TCTIs of the TSS: a kernel device (``device:/dev/tpmrm0``), swtpm and the simulator's
# sockets, and the access broker. Anything else is a typo, told as such before any TSS call.
TCTI_KINDS = ("device", "swtpm", "mssim", "tabrmd")


def parse_tcti(value: str) -> str:
    """``/dev/tpmrm0`` or a TCTI (``swtpm:host=127.0.0.1,port=2321``) as the TSS's TCTI."""
    if value.startswith("/"):
        return f"device:{value}"
    kind, sep, _ = value.partition(":")
    if kind not in TCTI_KINDS or (not sep and kind != "tabrmd"):
        raise UsageError(
            f"--tpm {value!r} is neither a TPM device path (/dev/tpmrm0) nor a TCTI "
            f"({', '.join(k + ':…' for k in TCTI_KINDS)})"
        )
    return value


def _open(state: Path, tcti: str, **kwargs: Any) -> TpmBackend:
    try:
        return TpmBackend(state, tcti, **kwargs)
    except TpmUnavailable as exc:
        raise TpmUnavailable(
            f"{exc}: is the TPM there, and may this user open it? (/dev/tpmrm0 needs the "
            "'tss' group; see docs/secure-world.md#tpm-20-backend)"
        ) from None


def read_identity(home: Home) -> Identity:
    """The device's TPM identity as provisioning recorded it (public: no secret)."""
    path = home.device / STATE / IDENTITY
    try:
        raw = cbor2.loads(path.read_bytes())
        return Identity(ek_certificate=bytes(raw["ek"]), ak_public=bytes(raw["ak"]))
    except FileNotFoundError:
        raise DeviceError(f"no TPM identity at {path}: provision with 'device init'") from None
    except (cbor2.CBORDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DeviceError(f"{path}: not a TPM identity ({exc})") from None


def _info(home: Home, identity: Identity) -> DeviceInfo:
    # The device is named by its TPM: its UEID is that of the EK certificate, which a verifier
    # checks the evidence against.
    return dataclasses.replace(device.load_info(home), ueid=tpm_ueid(identity.ek_certificate))


class TpmDevice:
    """One boot of a TPM-backed device (see the module's docstring)."""

    name = NAME
    rollback_protection = ROLLBACK_TPM_NV

    def __init__(self, home: Home, tcti: str) -> None:
        self.home = home
        self.tcti = tcti
        self.state = home.device / STATE
        self.identity = read_identity(home)
        self.info = _info(home, self.identity)
        self._events: tuple[TpmEvent, ...] = ()
        self._root: bytes | None = None
        with _open(self.state, tcti):  # no TPM there: say so now, not at the first vTEE
            pass

    def _tpm(self) -> TpmBackend:
        return _open(self.state, self.tcti, events=self._events, root=self._root)

    def record_boot(self, entries: list[BootEntry], register: bytes) -> None:
        with self._tpm() as tpm:
            if tpm.pcr_value() != bytes(32):
                raise BootError(
                    "the TPM's boot PCR was already extended since the last platform reset (the "
                    "secure world booted before, or another process extended it): the root "
                    "unseals only on a fresh boot; reboot the machine (or restart swtpm)"
                )
            for e in entries:
                tpm.extend(e.component, e.measurement)
            try:
                self._root = tpm.root()  # unsealed, then the PCR capped
            except UnsealRefused as exc:
                raise BootError(f"the TPM refuses this boot: {exc}") from None
            self._events = tpm.events

    def platform_token(self, claims: PlatformClaims) -> bytes:
        payload = encode_claims(claims)
        binding = claims_binding(cose.key_digest(claims.vtee_key), payload)
        with self._tpm() as tpm:
            quote = tpm.quote(binding)
        return TpmPlatformEvidence(
            self.identity.ek_certificate, self.identity.ak_public, quote, claims=payload
        ).encode()

    def root(self) -> bytes:
        if self._root is None:
            raise SecureWorldError("the TPM device's root is unsealed at boot, which has not run")
        return self._root

    def open_counters(self, vtee_id: bytes) -> int:
        path = self.home.device / COUNTERS / f"{vtee_id.hex()}.ctr"
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def counters_anchor(self, vtee_id: bytes) -> dict[str, Any] | None:
        return {"kind": "tpm-nv", "tcti": self.tcti, "counter": self._counter_number(vtee_id)}

    def _counter_number(self, vtee_id: bytes) -> int:
        """The NV counter of a vTEE, allocated on its first start. The allocation is a file
        of the host's: changing it points a vTEE at a counter its file does not record,
        which refuses its sealed state (a denial of service, never a rollback)."""
        path = self.state / NV_ALLOCATION
        try:
            table = json.loads(path.read_text())
        except FileNotFoundError:
            table = {}
        except (OSError, ValueError) as exc:
            raise DeviceError(f"{path}: not readable ({exc})") from None
        if not isinstance(table, dict):
            raise DeviceError(f"{path}: must map vTEE ids to NV counter numbers")
        number = table.get(vtee_id.hex())
        if not isinstance(number, int):
            used = {n for n in table.values() if isinstance(n, int)}
            number = next(n for n in range(MAX_COUNTERS) if n not in used)
            table[vtee_id.hex()] = number
            path.write_text(json.dumps(table, indent=2) + "\n")
        return number

    def activate_credential(self, credential_blob: bytes, secret: bytes) -> bytes:
        with self._tpm() as tpm:
            return tpm.activate_credential(credential_blob, secret)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tpm": self.tcti,
            "root_of_trust": "TPM 2.0: attestation key, boot measurements, sealed root and "
            "counters in the TPM; the secure world is isolated by the OS",
            "protection": PROTECTION_TPM,
            "rollback_protection": self.rollback_protection,
            "ek_certificate_sha256": hashlib.sha256(self.identity.ek_certificate).hexdigest(),
        }


class TpmFactory:
    name = NAME

    def provision(
        self, home: Home, *, ca_dir: Path | None, force: bool, options: dict[str, str]
    ) -> DeviceInfo:
        # The TSS logs each probe of an absent NV index (the EK templates', our counters'
        # before their first use) as an error on stderr: here, the user's terminal. (Not in
        # the secure world, whose environment is its own: its log is tee.log.)
        os.environ.setdefault("TSS2_LOG", "all+NONE")
        unknown = sorted(set(options) - {"tpm"})
        if unknown:
            raise UsageError(f"the tpm backend takes only --tpm (got {', '.join(unknown)})")
        tcti = parse_tcti(options.get("tpm", DEFAULT_TCTI))
        options["tpm"] = tcti  # recorded as the TSS takes it
        if device.is_provisioned(home) and not force:
            raise DeviceError(
                f"a device is already provisioned in {home.root} (use --force to replace it, "
                "which destroys its keys and sealed data)"
            )
        root = self._check_and_draw_root(tcti)
        info = device.provision(home, ca_dir=ca_dir, force=force, huk=root)
        config = device.tee_config(home)
        entries, _ = boot.boot_log(
            boot.measure_stages(config), info.vendor_pub, bool(config.get("secure_boot", True))
        )
        genuine = expected_pcr([(e.component, e.measurement) for e in entries])
        state = home.device / STATE
        with _open(state, tcti, root=root) as tpm:
            tpm.store_root(root, genuine)
            identity = tpm.identity()  # the AK is made now, authorised by the root
        body = cbor2.dumps({"ek": identity.ek_certificate, "ak": identity.ak_public})
        (state / IDENTITY).write_bytes(body)
        (home.manufacturer / PUBLISHED_IDENTITY).write_bytes(body)
        return _info(home, identity)

    @staticmethod
    def _check_and_draw_root(tcti: str) -> bytes:
        """Before anything is written: the TPM answers and has an EK certificate. Returns a
        fresh root secret from the TPM's RNG and the OS's (either alone suffices)."""
        try:
            ctx = ESAPI(tcti)
        except TSS2_Exception as exc:
            raise TpmUnavailable(
                f"cannot open the TPM at {tcti!r} ({exc}): is the TPM there, and may this user "
                "open it? (/dev/tpmrm0 needs the 'tss' group)"
            ) from None
        try:
            try:
                NVReadEK(ctx)(EK_CERT_INDEX)
            except (NoSuchIndex, TSS2_Exception):
                raise TpmUnavailable(
                    f"the TPM at {tcti!r} has no EK certificate at NV index {EK_CERT_INDEX:#x}: "
                    "a verifier could not tell it is a genuine TPM"
                ) from None
            drawn = bytes(ctx.get_random(ROOT_BYTES))
        finally:
            ctx.close()
        return hashlib.sha256(secrets.token_bytes(ROOT_BYTES) + drawn).digest()

    def open(self, home: Home, options: dict[str, str]) -> TpmDevice:
        return TpmDevice(home, parse_tcti(options.get("tpm", DEFAULT_TCTI)))
