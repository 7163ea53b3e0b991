"""Veritee evidence: claim keys, typed claim sets, and the CBOR encoding of the token chain.

Evidence is one CBOR map holding three COSE_Sign1 tokens, each binding the key that signs the
next (as Arm CCA's platform token binds the realm key)::

    manufacturer CA --X.509--> device cert (DAK)
    platform token  signed by DAK       : device + boot claims, the vTEE's identity, cnf = vTEE key
    vtee token      signed by vTEE key  : module measurement + config, cnf = module attestation key
    module token    signed by module AK : verifier nonce, module measurement + config, HPKE key

The platform token is issued by the device monitor once per vTEE boot (it endorses the vTEE
attestation key); the vtee token once per loaded module; the module token per challenge.
Claim keys follow EAT (RFC 9711) where one exists; Veritee's own claims use private negative
keys. Encoders here are pure: signing happens in the secure world, checking in appraisal.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import cbor2

from veritee.evidence import cose
from veritee.evidence.errors import MalformedToken

PROFILE_EVIDENCE = "tag:veritee.dev,2026:evidence"
PROFILE_PLATFORM = "tag:veritee.dev,2026:platform"
PROFILE_VTEE = "tag:veritee.dev,2026:vtee"
PROFILE_MODULE = "tag:veritee.dev,2026:module"
# The envelope is a CMW collection (draft-ietf-rats-msg-wrap, its media type registered):
# {"__cmwc_t": PROFILE_EVIDENCE, "platform": [type, token], "vtee": [...], "module": [...]}.
MEDIA_TYPE = f'application/cmw+cbor; cmwc_t="{PROFILE_EVIDENCE}"'
# The format before the CMW collection (an untagged map with "profile"), read for one
# release: decoding it sets Evidence.old_format, and `evidence show` says to update.
OLD_MEDIA_TYPE = "application/vnd.veritee.evidence+cbor"
CMWC_TYPE_LABEL = "__cmwc_t"
# Each token's CMW record type: an EAT in CWT form with its profile (RFC 9782); a TPM-backed
# device's platform part is a CBOR map of its quote and event log (evidence/tpm.py).
TOKEN_MEDIA_TYPES = {
    "platform": f'application/eat+cwt; eat_profile="{PROFILE_PLATFORM}"',
    "vtee": f'application/eat+cwt; eat_profile="{PROFILE_VTEE}"',
    "module": f'application/eat+cwt; eat_profile="{PROFILE_MODULE}"',
}
TPM_PLATFORM_MEDIA_TYPE = "application/vnd.veritee.tpm-platform+cbor"

# EAT / CWT claim keys.
IAT = 6
CNF = 8  # RFC 8747 confirmation: {1: COSE_Key}
NONCE = 10
UEID = 256
HWMODEL = 259  # bytes (RFC 9711): here the UTF-8 of the model's name
SECBOOT = 262
DBGSTAT = 263  # RFC 9711 debug status, derived from the lifecycle (see DBGSTAT_OF)
PROFILE = 265
SWNAME = 270  # the module's name (module token)
# Veritee private claims.
LIFECYCLE = -76000
BOOT_LOG = -76001
VTEE_ID = -76002
VTEE_NAME = -76003
VTEE_CONFIG = -76004
MODULE_MEASUREMENT = -76010
MODULE_CONFIG = -76011
MODULE_NAME = -76012
PROVISIONING_KEY = -76013
USER_DATA = -76014
PROVISIONING_KEY_PQ = -76015  # {1: ML-KEM-768 public, 2: X25519 public}: the hybrid PQ suite
MODULE_GRANTS = -76016  # [[host path, guest path, writable], ...]: host dirs the module may reach
MAX_GRANTS_CLAIM = 64  # bound on a token's grants claim: a forged list must not cost memory
# What keeps the monotonic counters that sealed state is checked against (platform token).
ROLLBACK_PROTECTION = -76008
# Data the untrusted caller of ATTEST chose (module token); never confused with user data.
HOST_DATA = -76020

_CNF_COSE_KEY = 1
# Boot-log entry keys.
_COMPONENT, _MEASUREMENT, _SIGNER, _VERSION = 1, 2, 3, 4

LIFECYCLES = ("emulated", "debug", "secured")
# dbgstat for each lifecycle: an emulated or debug secure world can be debugged by whoever
# runs it (enabled, 0); a secured one says debugging is disabled (1). Lifecycle stays the
# claim Veritee judges by (its values say more than dbgstat can); the two must agree.
DBGSTAT_OF = {"emulated": 0, "debug": 0, "secured": 1}
HWMODEL_EMULATED = "veritee-emulated-tee"
MAX_USER_DATA = 1024  # bound on caller-supplied data folded into a module token
MAX_HWMODEL = 64
MAX_HOST_DATA = MAX_USER_DATA  # the same bound for what the normal world asks to be folded in

# Rollback protection, as the platform reports it (claim ROLLBACK_PROTECTION):
# "none": nothing keeps counters (a token without the claim says this);
# "host-file": the emulated RPMB, a file of the device's user: whoever acts as that user
#   can snapshot it with older sealed state and restore both, so an event already accepted
#   is accepted again (docs/apps.md);
# "rpmb", "tpm-nv": counters in replay-protected hardware the host cannot roll back.
ROLLBACK_NONE = "none"
ROLLBACK_HOST_FILE = "host-file"
ROLLBACK_RPMB = "rpmb"
ROLLBACK_TPM_NV = "tpm-nv"
ROLLBACK_PROTECTIONS = (ROLLBACK_NONE, ROLLBACK_HOST_FILE, ROLLBACK_RPMB, ROLLBACK_TPM_NV)
HARDWARE_ROLLBACK_PROTECTIONS = frozenset({ROLLBACK_RPMB, ROLLBACK_TPM_NV})


@dataclass(frozen=True)
class BootEntry:
    """One measured boot stage: what it is, its SHA-256, who signed it."""

    component: str
    measurement: bytes
    signer: bytes  # SHA-256 of the vendor public key that signed the stage (empty if unsigned)
    version: str = ""

    def to_cbor(self) -> dict[int, Any]:
        return {
            _COMPONENT: self.component,
            _MEASUREMENT: self.measurement,
            _SIGNER: self.signer,
            _VERSION: self.version,
        }

    @classmethod
    def from_cbor(cls, value: Any) -> BootEntry:
        if not isinstance(value, dict):
            raise MalformedToken("boot log entry is not a map")
        return cls(
            component=_req(value, _COMPONENT, str, "boot entry component"),
            measurement=_digest(value, _MEASUREMENT, "boot entry measurement"),
            signer=_req(value, _SIGNER, bytes, "boot entry signer"),
            version=_req(value, _VERSION, str, "boot entry version"),
        )


@dataclass(frozen=True)
class PlatformClaims:
    """Signed by the device attestation key: the device, its boot, and the vTEE it endorses."""

    ueid: bytes
    lifecycle: str
    secure_boot: bool
    boot_log: tuple[BootEntry, ...]
    vtee_id: bytes
    vtee_name: str
    vtee_config: bytes
    vtee_key: dict[int, Any]  # COSE_Key of the vTEE attestation key
    iat: int
    hwmodel: str = HWMODEL_EMULATED
    rollback_protection: str = ROLLBACK_NONE  # one of ROLLBACK_PROTECTIONS

    def to_cbor(self) -> dict[int, Any]:
        return {
            PROFILE: PROFILE_PLATFORM,
            UEID: self.ueid,
            HWMODEL: self.hwmodel.encode(),
            LIFECYCLE: self.lifecycle,
            DBGSTAT: DBGSTAT_OF[self.lifecycle],
            SECBOOT: self.secure_boot,
            BOOT_LOG: [e.to_cbor() for e in self.boot_log],
            VTEE_ID: self.vtee_id,
            VTEE_NAME: self.vtee_name,
            VTEE_CONFIG: self.vtee_config,
            NONCE: cose.key_digest(self.vtee_key),
            CNF: {_CNF_COSE_KEY: self.vtee_key},
            IAT: self.iat,
            ROLLBACK_PROTECTION: self.rollback_protection,
        }

    def appraised_rollback_protection(self) -> str:
        """The rollback protection to believe: what the token says, except that an emulated
        device's counters are a file of its user (host-file) whatever it reports.

        This judges by the token alone; an appraisal reads ``Verified.rollback_protection``,
        which also judges by what the device's certificate chain endorses."""
        emulated = self.lifecycle == "emulated" or self.hwmodel == HWMODEL_EMULATED
        if emulated and self.rollback_protection in HARDWARE_ROLLBACK_PROTECTIONS:
            return ROLLBACK_HOST_FILE
        return self.rollback_protection

    @classmethod
    def from_cbor(cls, c: dict[Any, Any]) -> PlatformClaims:
        _profile(c, PROFILE_PLATFORM)
        lifecycle = _req(c, LIFECYCLE, str, "lifecycle")
        if lifecycle not in LIFECYCLES:
            raise MalformedToken(f"lifecycle {lifecycle!r} is not one of {LIFECYCLES}")
        log = _req(c, BOOT_LOG, list, "boot log")
        rollback = c.get(ROLLBACK_PROTECTION, ROLLBACK_NONE)
        if rollback not in ROLLBACK_PROTECTIONS:
            raise MalformedToken(
                f"rollback protection {str(rollback)[:40]!r} is not one of {ROLLBACK_PROTECTIONS}"
            )
        dbgstat = c.get(DBGSTAT, DBGSTAT_OF[lifecycle])
        if dbgstat != DBGSTAT_OF[lifecycle] or isinstance(dbgstat, bool):
            raise MalformedToken(
                f"claim 'dbgstat' ({DBGSTAT}) is {str(dbgstat)[:20]}, which lifecycle "
                f"{lifecycle!r} contradicts ({DBGSTAT_OF[lifecycle]})"
            )
        key = _cnf_key(c)
        _check_binding(c, key, "platform")
        return cls(
            ueid=_req(c, UEID, bytes, "ueid"),
            lifecycle=lifecycle,
            secure_boot=_req(c, SECBOOT, bool, "secure boot"),
            boot_log=tuple(BootEntry.from_cbor(e) for e in log),
            vtee_id=_req(c, VTEE_ID, bytes, "vTEE id"),
            vtee_name=_req(c, VTEE_NAME, str, "vTEE name"),
            vtee_config=_digest(c, VTEE_CONFIG, "vTEE config digest"),
            vtee_key=key,
            iat=_req(c, IAT, int, "iat"),
            hwmodel=_hwmodel(c),
            rollback_protection=rollback,
        )


@dataclass(frozen=True)
class VteeClaims:
    """Signed by the vTEE attestation key: this module instance's attestation key and identity."""

    vtee_id: bytes
    measurement: bytes
    config: bytes
    module_key: dict[int, Any]  # COSE_Key of the module attestation key
    iat: int
    # The host directories the module was granted (real paths), as it sees them, and whether
    # it may write: also folded into ``config``, here so a verifier can read them.
    grants: tuple[tuple[str, str, bool], ...] = ()

    def to_cbor(self) -> dict[int, Any]:
        return {
            PROFILE: PROFILE_VTEE,
            VTEE_ID: self.vtee_id,
            MODULE_MEASUREMENT: self.measurement,
            MODULE_CONFIG: self.config,
            NONCE: cose.key_digest(self.module_key),
            CNF: {_CNF_COSE_KEY: self.module_key},
            IAT: self.iat,
            MODULE_GRANTS: [list(g) for g in self.grants],
        }

    @classmethod
    def from_cbor(cls, c: dict[Any, Any]) -> VteeClaims:
        _profile(c, PROFILE_VTEE)
        key = _cnf_key(c)
        _check_binding(c, key, "vtee")
        return cls(
            vtee_id=_req(c, VTEE_ID, bytes, "vTEE id"),
            measurement=_digest(c, MODULE_MEASUREMENT, "module measurement"),
            config=_digest(c, MODULE_CONFIG, "module config digest"),
            module_key=key,
            iat=_req(c, IAT, int, "iat"),
            grants=_grants(c.get(MODULE_GRANTS, [])),
        )


def _grants(value: Any) -> tuple[tuple[str, str, bool], ...]:
    """The grants claim: a list of [host, guest, writable]; raise MalformedToken."""
    if not isinstance(value, list) or len(value) > MAX_GRANTS_CLAIM:
        raise MalformedToken(f"claim 'grants' ({MODULE_GRANTS}) is not a short list")
    out = []
    for g in value:
        if not (
            isinstance(g, list)
            and len(g) == 3
            and isinstance(g[0], str)
            and isinstance(g[1], str)
            and isinstance(g[2], bool)
        ):
            raise MalformedToken(f"claim 'grants' ({MODULE_GRANTS}) has a malformed entry")
        out.append((g[0], g[1], g[2]))
    return tuple(out)


@dataclass(frozen=True)
class ModuleClaims:
    """Signed by the module attestation key, per challenge."""

    nonce: bytes
    measurement: bytes
    config: bytes
    name: str
    provisioning_key: dict[int, Any]  # COSE_Key (X25519) secrets are encrypted to (HPKE)
    iat: int
    # Supplied from inside the TEE (the module through WASI-RA, the secure world's TLS TA):
    # e.g. a TLS key digest that the token vouches for. Never what the normal world chose.
    user_data: bytes = b""
    provisioning_key_pq: dict[int, bytes] | None = None  # see veritee.evidence.provisioning
    # Chosen by the untrusted caller of ATTEST (the host): the token says only that it was
    # asked to carry it; nothing may bind a key or a statement of the module through it.
    host_data: bytes = b""

    def to_cbor(self) -> dict[int, Any]:
        return {
            PROFILE: PROFILE_MODULE,
            NONCE: self.nonce,
            MODULE_MEASUREMENT: self.measurement,
            MODULE_CONFIG: self.config,
            SWNAME: self.name,
            PROVISIONING_KEY: self.provisioning_key,
            USER_DATA: self.user_data,
            IAT: self.iat,
            **({PROVISIONING_KEY_PQ: self.provisioning_key_pq} if self.provisioning_key_pq else {}),
            **({HOST_DATA: self.host_data} if self.host_data else {}),
        }

    @classmethod
    def from_cbor(cls, c: dict[Any, Any]) -> ModuleClaims:
        _profile(c, PROFILE_MODULE)
        nonce = _req(c, NONCE, bytes, "nonce")
        if not 8 <= len(nonce) <= 64:
            raise MalformedToken(f"nonce is {len(nonce)} bytes; 8 to 64 are accepted")
        user_data = _req(c, USER_DATA, bytes, "user data")
        if len(user_data) > MAX_USER_DATA:
            raise MalformedToken("user data is over its size limit")
        host_data = c.get(HOST_DATA, b"")
        if not isinstance(host_data, bytes) or len(host_data) > MAX_HOST_DATA:
            raise MalformedToken("claim 'host data' is not a byte string within its size limit")
        pkey = c.get(PROVISIONING_KEY)
        cose.x25519_public_bytes(pkey)
        pq = c.get(PROVISIONING_KEY_PQ)
        if pq is not None:
            from veritee.evidence.provisioning import pq_public_key

            pq_public_key(pq)
        return cls(
            nonce=nonce,
            measurement=_digest(c, MODULE_MEASUREMENT, "module measurement"),
            config=_digest(c, MODULE_CONFIG, "module config digest"),
            name=_swname(c),
            provisioning_key=pkey,  # type: ignore[arg-type]
            iat=_req(c, IAT, int, "iat"),
            user_data=user_data,
            provisioning_key_pq=pq,
            host_data=host_data,
        )


@dataclass(frozen=True)
class Evidence:
    """The three signed tokens, still encoded (appraisal decodes and checks them)."""

    platform: bytes
    vtee: bytes
    module: bytes
    # Decoded from the format before the CMW collection (read for one release).
    old_format: bool = field(default=False, compare=False)

    def encode(self) -> bytes:
        """A CMW collection of three records (see :data:`MEDIA_TYPE`)."""
        return bytes(
            cbor2.dumps(
                {
                    CMWC_TYPE_LABEL: PROFILE_EVIDENCE,
                    "platform": [_platform_type(self.platform), self.platform],
                    "vtee": [TOKEN_MEDIA_TYPES["vtee"], self.vtee],
                    "module": [TOKEN_MEDIA_TYPES["module"], self.module],
                }
            )
        )

    @classmethod
    def decode(cls, data: bytes) -> Evidence:
        value = cose.loads(data, what="evidence")
        if isinstance(value, dict) and CMWC_TYPE_LABEL in value:
            return cls._collection(value)
        if isinstance(value, dict) and value.get("profile") == PROFILE_EVIDENCE:
            platform, vtee, module = (value.get(k) for k in ("platform", "vtee", "module"))
            if not (
                isinstance(platform, bytes)
                and isinstance(vtee, bytes)
                and isinstance(module, bytes)
            ):
                raise MalformedToken("evidence lacks one of its platform, vtee or module tokens")
            return cls(platform, vtee, module, old_format=True)
        raise MalformedToken(
            f"not Veritee evidence (expected a CMW collection of type {PROFILE_EVIDENCE})"
        )

    @classmethod
    def _collection(cls, value: dict[Any, Any]) -> Evidence:
        if value[CMWC_TYPE_LABEL] != PROFILE_EVIDENCE:
            raise MalformedToken(
                f"a CMW collection of type {str(value[CMWC_TYPE_LABEL])[:60]!r}, not Veritee "
                f"evidence ({PROFILE_EVIDENCE})"
            )
        extra = sorted(str(k)[:20] for k in value if k not in (CMWC_TYPE_LABEL, *TOKEN_MEDIA_TYPES))
        if extra:
            raise MalformedToken(f"the evidence collection holds unknown entries: {extra}")
        parts = []
        for label in TOKEN_MEDIA_TYPES:
            record = value.get(label)
            if not (
                isinstance(record, list)
                and len(record) == 2
                and isinstance(record[0], str)
                and isinstance(record[1], bytes)
            ):
                raise MalformedToken(
                    f"evidence entry {label!r} is missing or not a CMW record [type, bytes]"
                )
            want = _platform_type(record[1]) if label == "platform" else TOKEN_MEDIA_TYPES[label]
            if record[0] != want:
                raise MalformedToken(
                    f"evidence entry {label!r} says it is {record[0][:80]!r}, not {want!r}"
                )
            parts.append(record[1])
        return cls(parts[0], parts[1], parts[2])


def _platform_type(token: bytes) -> str:
    """The record type of a platform part: a CBOR map is a TPM-backed device's quote and
    event log; anything else is the platform EAT (a COSE_Sign1)."""
    if token[:1] and 0xA0 <= token[0] <= 0xBF:
        return TPM_PLATFORM_MEDIA_TYPE
    return TOKEN_MEDIA_TYPES["platform"]


def unverified_platform_claims(token: bytes) -> PlatformClaims:
    """The claims of a platform token someone else verified (a verification service), NOT
    checked here: the emulated backend's COSE_Sign1, or a TPM-backed device's quote evidence
    (a CBOR map whose ``claims`` the quote binds; read without the TPM's libraries)."""
    if token[:1] and 0xA0 <= token[0] <= 0xBF:
        raw = cose.loads(token, what="TPM platform evidence")
        claims = raw.get("claims") if isinstance(raw, dict) else None
        if not isinstance(claims, bytes):
            raise MalformedToken("TPM platform evidence carries no platform claims")
        value = cose.loads(claims, what="TPM platform claims")
        if not isinstance(value, dict):
            raise MalformedToken("TPM platform claims are not a map")
        return PlatformClaims.from_cbor(value)
    return PlatformClaims.from_cbor(cose.decode(token).claims())


def encode_claims(claims: PlatformClaims | VteeClaims | ModuleClaims) -> bytes:
    return bytes(cbor2.dumps(claims.to_cbor()))


def ueid_of(cose_key: dict[int, Any]) -> bytes:
    """Instance id of a device: 0x01 (RAND type) || SHA-256 of its attestation key."""
    return b"\x01" + cose.key_digest(cose_key)


def config_digest(config: dict[str, Any]) -> bytes:
    """SHA-256 of the canonical CBOR of a configuration map (module or vTEE)."""
    return hashlib.sha256(cbor2.dumps(config, canonical=True)).digest()


def _hwmodel(c: dict[Any, Any]) -> str:
    """hwmodel: bytes (RFC 9711), the UTF-8 of a model name; old tokens: text."""
    value = c.get(HWMODEL)
    if isinstance(value, str):  # the old format
        return value
    if not isinstance(value, bytes) or len(value) > MAX_HWMODEL:
        raise MalformedToken(f"claim 'hwmodel' ({HWMODEL}) is missing or not a short byte string")
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise MalformedToken(f"claim 'hwmodel' ({HWMODEL}) is not a model name") from None


def _swname(c: dict[Any, Any]) -> str:
    """The module's name: swname (270); old tokens: the private key -76012. Not both."""
    if SWNAME in c and MODULE_NAME in c:
        raise MalformedToken(
            f"the module's name is given twice (claims {SWNAME} and {MODULE_NAME})"
        )
    key = SWNAME if SWNAME in c or MODULE_NAME not in c else MODULE_NAME
    name: str = _req(c, key, str, "module name")
    return name


def _req(c: dict[Any, Any], key: int, typ: type, what: str) -> Any:
    value = c.get(key)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise MalformedToken(f"claim '{what}' ({key}) is missing or not a {typ.__name__}")
    return value


def _digest(c: dict[Any, Any], key: int, what: str) -> bytes:
    value: bytes = _req(c, key, bytes, what)
    if len(value) != 32:
        raise MalformedToken(f"claim '{what}' is {len(value)} bytes, not a SHA-256 digest")
    return value


def _profile(c: dict[Any, Any], expected: str) -> None:
    if c.get(PROFILE) != expected:
        raise MalformedToken(f"token profile is {c.get(PROFILE)!r}, expected {expected!r}")


def _cnf_key(c: dict[Any, Any]) -> dict[int, Any]:
    cnf = c.get(CNF)
    if not isinstance(cnf, dict) or not isinstance(cnf.get(_CNF_COSE_KEY), dict):
        raise MalformedToken("claim 'cnf' does not hold a COSE_Key")
    key: dict[int, Any] = cnf[_CNF_COSE_KEY]
    cose.cose_to_ec_key(key)
    return key


def _check_binding(c: dict[Any, Any], key: dict[int, Any], token: str) -> None:
    from veritee.evidence.errors import BindingMismatch

    if c.get(NONCE) != cose.key_digest(key):
        raise BindingMismatch(f"{token} token's challenge is not the digest of the key it binds")
