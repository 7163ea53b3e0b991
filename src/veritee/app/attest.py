"""How the deployer decides whether a module may be connected: attestation, then appraisal.

Through a verification service when one is configured (a Veraison challenge-response
session: its nonce, the module's evidence over it, a signed EAR back), else locally against
the device CAs and boot reference values the deployer is given. Either way the deployer
then checks what only it knows (:func:`check_expected`, I/O-free): the evidence is of the
binary it shipped, loaded with this app's deployment key and the limits it asked for, and
its key-agreement key is the one the node agent reported. The peer key written into connect
statements is the one from the appraised evidence, never the agent's word.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from veritee.app.errors import AttestationRefused, KeyMismatch
from veritee.errors import Error
from veritee.evidence import cose, deployment
from veritee.evidence.claims import Evidence, ModuleClaims

ACCEPTABLE = {"affirming": ("affirming",), "warning": ("affirming", "warning")}
# The secure world's defaults for an app module (tee/app_ta.py), and where its private
# storage appears to it: both are part of the configuration digest its evidence carries.
DEFAULT_MEMORY_MB = 64
DEFAULT_TIMEOUT_S = 10.0

Attester = Callable[[bytes], bytes]  # nonce -> evidence (the node agent asks the TEE)


@dataclass(frozen=True)
class Expected:
    """What the deployer knows a genuine instance of this module must attest to."""

    module: str
    measurement: bytes
    config: bytes
    reported_key: bytes  # the X25519 key the node agent said the module has


@dataclass(frozen=True)
class Appraised:
    """The deployer's verdict on one module instance."""

    module: str
    status: str  # affirming, warning, contraindicated
    acceptable: bool
    via: str  # "local" or the verifier's URL
    measurement: bytes = b""
    key: bytes = b""  # X25519 key from the appraised evidence
    lifecycle: str = ""
    reasons: tuple[str, ...] = ()
    ear: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons) or self.status


def app_config_digest(
    app: str, deployment_key: bytes, memory_mb: int | None, timeout: float | None
) -> bytes:
    """The configuration digest the secure world computes for an app module's load.

    The same function the secure world uses, with the same defaults (tee/app_ta.py).
    """
    memory = (memory_mb or DEFAULT_MEMORY_MB) * 1024 * 1024
    seconds = DEFAULT_TIMEOUT_S if timeout is None else float(timeout)
    return deployment.app_config_digest(app, deployment_key, memory, int(seconds * 1000))


def module_claims(evidence: bytes) -> ModuleClaims:
    """The module token's claims, decoded but not verified (the appraisal verifies them)."""
    return ModuleClaims.from_cbor(cose.decode(Evidence.decode(evidence).module).claims())


def x25519_of(claims: ModuleClaims) -> bytes:
    return bytes(cose.cose_to_x25519_key(claims.provisioning_key).public_bytes_raw())


def check_expected(claims: ModuleClaims, expected: Expected) -> bytes:
    """The deployer's own checks on appraised claims; returns the attested X25519 key."""
    if not hmac.compare_digest(claims.measurement, expected.measurement):
        raise AttestationRefused(
            f"module {expected.module!r} on its node measures {claims.measurement.hex()[:16]}…, "
            f"not the binary that was shipped ({expected.measurement.hex()[:16]}…)"
        )
    if not hmac.compare_digest(claims.config, expected.config):
        raise AttestationRefused(
            f"module {expected.module!r} was loaded with another configuration (deployment key "
            "or limits) than the deployer asked for"
        )
    key = x25519_of(claims)
    if not hmac.compare_digest(key, expected.reported_key):
        raise KeyMismatch(
            f"module {expected.module!r}: the node agent reported a key-agreement key that is "
            "not the attested one (a swapped key)"
        )
    return key


class LocalAppraiser:
    """Appraisal in the deployer itself: device CAs and boot reference values given to it."""

    def __init__(self, anchors: Any, boot_refs: Any, accept: str = "warning") -> None:
        self.anchors, self.boot_refs, self.accept = anchors, boot_refs, accept
        self.via = "local"

    def appraise(self, attester: Attester, expected: Expected) -> Appraised:
        from veritee.evidence.appraisal import ReferenceValues, appraise

        nonce = os.urandom(32)
        try:
            evidence = attester(nonce)
            refs = self.boot_refs.merge(
                ReferenceValues({}, {expected.measurement: expected.module})
            )
            verified = appraise(evidence, self.anchors, refs, nonce=nonce)
            key = check_expected(verified.module, expected)
        except Error as exc:
            return _refused(expected, self.via, exc)
        lifecycle = verified.lifecycle  # endorsed by the chain, not the token's word
        if not verified.platform.secure_boot:
            status = "contraindicated"
            reasons: tuple[str, ...] = ("the platform booted without secure boot",)
        elif lifecycle == "secured":
            status, reasons = "affirming", ()
        else:
            status, reasons = "warning", (f"the platform's lifecycle is {lifecycle!r}",)
        return Appraised(
            expected.module,
            status,
            status in ACCEPTABLE[self.accept],
            self.via,
            verified.module.measurement,
            key,
            lifecycle,
            reasons,
        )


class VerifierAppraiser:
    """Appraisal by a verification service; its signed result (EAR) decides."""

    def __init__(self, url: str, accept: str = "warning") -> None:
        from veritee.verifier.client import VerifierClient

        self.client = VerifierClient(url)
        self.via = url
        self.accept = accept
        self._key: Any = None

    def close(self) -> None:
        self.client.close()

    def appraise(self, attester: Attester, expected: Expected) -> Appraised:
        from veritee.evidence.claims import MEDIA_TYPE
        from veritee.verifier import ear
        from veritee.verifier.errors import VerifierUnreachable

        seen: list[bytes] = []

        def build(nonce: bytes, _accept: list[str]) -> tuple[bytes, str]:
            seen.append(attester(nonce))
            return seen[-1], MEDIA_TYPE

        try:
            if self._key is None:
                self._key = self.client.public_key()
            token = self.client.attest(build)
            result = ear.verify(token, self._key)
            claims = module_claims(seen[-1])
        except VerifierUnreachable:
            raise  # not a verdict on the module: the deploy cannot go on
        except Error as exc:
            return _refused(expected, self.via, exc)
        statuses = {name: a.status for name, a in result.submods.items()}
        worst = max(statuses.values(), key=lambda s: ear.STATUSES.index(s))
        reasons = []
        failure = result.extensions.get("ear.veritee.failure")
        if isinstance(failure, Mapping):  # a check failed: every submodule says no for it
            reasons.append(f"{failure.get('check')}: {failure.get('reason')}")
        for name, a in result.submods.items():
            for reason in a.extensions.get("ear.veritee.reasons", ()):
                reasons.append(f"{name}: {reason}")
            if a.status == "contraindicated" and not reasons:
                reasons.append(f"{name}: contraindicated")
        acceptable = worst in ACCEPTABLE[self.accept]
        key = b""
        if acceptable:
            # What the deploy acts on must be what the verifier appraised.
            try:
                _same_as_appraised(result, claims, expected.module)
                key = check_expected(claims, expected)
            except Error as exc:
                return _refused(expected, self.via, exc)
        else:
            # Refused on the verifier's word, whose reasons say why. A verifier that could
            # not appraise the module (an unknown device, say) annotates no evidence, so
            # whether this is the evidence it saw is moot; the deployer's own checks may
            # still add a reason, which makes it contraindicated whatever the verifier said.
            try:
                check_expected(claims, expected)
            except Error as exc:
                reasons.append(f"{type(exc).__name__}: {exc}")
                worst = "contraindicated"
        platform = result.submods.get("platform")
        annotated = (
            platform.extensions.get("ear.veraison.annotated-evidence", {}) if platform else {}
        )
        return Appraised(
            expected.module,
            worst,
            acceptable,
            self.via,
            claims.measurement,
            key,
            str(annotated.get("lifecycle", "")),
            tuple(reasons),
            token,
            {"submods": statuses, "appraisal": str(result.extensions.get(ear.APPRAISAL_ID, ""))},
        )


def _same_as_appraised(result: Any, claims: ModuleClaims, module: str) -> None:
    """The evidence we parse must be the evidence the verifier appraised."""
    submod = result.submods.get("module")
    annotated = submod.extensions.get("ear.veraison.annotated-evidence", {}) if submod else {}
    key = base64.urlsafe_b64encode(x25519_of(claims)).rstrip(b"=").decode()
    if (
        annotated.get("measurement") != claims.measurement.hex()
        or annotated.get("provisioning-key") != key
        or annotated.get("config") != claims.config.hex()
    ):
        raise AttestationRefused(
            f"module {module!r}: the verifier's result is about other evidence than the node "
            "agent gave us"
        )


def _refused(expected: Expected, via: str, exc: Error) -> Appraised:
    return Appraised(
        expected.module,
        "contraindicated",
        False,
        via,
        reasons=(f"{type(exc).__name__}: {exc}",),
    )


def measure(binary: bytes) -> bytes:
    return hashlib.sha256(binary).digest()
