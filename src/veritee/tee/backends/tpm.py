"""The TPM 2.0 backend: the secure world's keys, boot measurements, sealing and counters
rooted in a TPM (``/dev/tpmrm0`` on a machine, swtpm in tests), through tpm2-pytss.

This is the only secure-world module that imports tpm2_pytss. What the TPM holds:

* identity: the EK (TCG default RSA 2048 template, its certificate at NV 0x01c00002) and an AK
  (restricted ECDSA P-256 signing key under the SRK) that a verifier activates against the EK;
* measured boot: each boot stage extends ``VERITEE_PCR`` and is recorded in an event log;
* evidence: TPM2_Quote over that PCR, its qualifying data binding the vTEE key and challenge;
* sealing: the secure world's root secret, unsealable only under a PolicyPCR of the genuine
  boot measurements;
* counters: NV counters (TPMA_NV counter type) that only ever go up.

What it does not hold: the secure world runs as ordinary processes, isolated by the OS. Anyone
who can open the TPM device can use it too (extend the PCR, quote with the AK): the guarantee
is that of measured boot, that the quote tells the truth about what was extended, given the
first measuring stage is the genuine one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_EO,
    TPM2_NT,
    TPM2_RC,
    TPM2_SE,
    TPMA_NV,
    TPMA_OBJECT,
    TPMA_SESSION,
)
from tpm2_pytss.types import (
    TPM2B_ATTEST,
    TPM2B_AUTH,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_NV_PUBLIC,
    TPM2B_OPERAND,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPM2B_SENSITIVE_DATA,
    TPML_DIGEST_VALUES,
    TPMS_NV_PUBLIC,
    TPMS_SENSITIVE_CREATE,
    TPMT_HA,
    TPMT_SIG_SCHEME,
    TPMT_SYM_DEF,
)
from tpm2_pytss.utils import NoSuchIndex, NVReadEK, create_ek_template

from veritee.errors import DeviceError, SealingError
from veritee.evidence.claims import ROLLBACK_TPM_NV
from veritee.evidence.tpm import (
    BACKEND_TPM,
    CAP_DIGEST,
    CAP_EVENT,
    DIGEST_SIZE,
    EK_TYPE,
    PCR_BANK,
    PROTECTION_TPM,
    QUOTE_BINDING_CONTEXT,
    VERITEE_PCR,
    TpmEvent,
    TpmPlatformEvidence,
    TpmQuote,
    encode_event_log,
    pcr_selection,
    quote_binding,
)
from veritee.tee.boot import Stage
from veritee.tee.keys import derive

log = logging.getLogger(__name__)

DEFAULT_TCTI = "device:/dev/tpmrm0"  # the kernel's resource manager; needs the `tss` group
EK_CERT_INDEX = 0x01C00002  # TCG EK Credential Profile: the RSA 2048 EK certificate
ROOT_BYTES = 32  # the secure world's root secret (the emulated backend's HUK)
# NV counters in the owner range the TCG registry leaves to platform software (0x01000000
# upwards); Veritee's own block, one index per counter.
NV_COUNTER_BASE = 0x01_56_0000
MAX_COUNTERS = 0x1_0000  # counters per device: the block's size
NV_EPOCH_INDEX = NV_COUNTER_BASE + MAX_COUNTERS  # the sealed root's epoch, above the block
_COUNTER_BYTES = 8

_SRK_ATTRS = (
    TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.DECRYPT
    | TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.NODA
)
_AK_ATTRS = (
    TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
    | TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.NODA
)
# The sealed root: no userWithAuth, so only the PCR policy opens it; fixedTPM so it never
# leaves this TPM.
_SEAL_ATTRS = TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.NODA


class TpmUnavailable(DeviceError):
    """The TPM cannot be reached or refused an operation that should not fail."""


class CredentialRefused(DeviceError):
    """The TPM did not activate the credential: it was not made for this TPM's EK and AK."""


class CounterTampered(SealingError):
    """The NV index of a counter is not a TPM counter (defined by someone else)."""


class AkRefused(DeviceError):
    """The TPM refused the AK's authorisation: the caller does not hold the secure world's
    root, from which the AK's authValue is derived."""


class UnsealRefused(SealingError):
    """The TPM refused to unseal: the boot measurements are not those it was sealed under."""


class CounterRolledBack(SealingError):
    """Stored state carries a counter value other than the TPM's: an older copy restored."""


def _pack(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def _unpack(data: bytes, n: int) -> list[bytes]:
    parts, i = [], 0
    for _ in range(n):
        if i + 4 > len(data):
            raise SealingError("sealed blob is truncated")
        size = int.from_bytes(data[i : i + 4], "big")
        parts.append(data[i + 4 : i + 4 + size])
        i += 4 + size
    if i != len(data) or any(len(p) == 0 for p in parts):
        raise SealingError("sealed blob is malformed")
    return parts


@dataclass(frozen=True)
class Identity:
    """What the device shows a verifier: the EK certificate (DER) and the AK's public area
    (marshalled TPM2B_PUBLIC)."""

    ek_certificate: bytes
    ak_public: bytes


class TpmBackend:
    """One secure world's view of its TPM. ``state`` is a directory the backend keeps the AK's
    TPM-wrapped blobs in (useless off this TPM).

    ``events`` continues an event log begun by an earlier context of this boot (the device
    monitor opens the TPM for each operation, so that it never holds the TPM from others).
    ``root``, when the caller already holds the secure world's root secret, authorises the AK:
    its authValue is derived from the root, so only a holder of the root can quote or
    activate with it (the host, which cannot unseal the root, cannot use the AK)."""

    #: What the evidence names (veritee.evidence.tpm): this backend, what it protects, and
    #: what keeps its counters.
    name = BACKEND_TPM
    protection = PROTECTION_TPM
    rollback_protection = ROLLBACK_TPM_NV

    def __init__(
        self,
        state: Path,
        tcti: str = DEFAULT_TCTI,
        *,
        events: Sequence[TpmEvent] = (),
        root: bytes | None = None,
    ) -> None:
        self._state = state
        try:
            self._ctx = ESAPI(tcti)
        except TSS2_Exception as exc:
            raise TpmUnavailable(f"cannot open the TPM at {tcti!r} ({exc})") from None
        self._events: list[TpmEvent] = list(events)
        self._srk: ESYS_TR | None = None
        self._ak: ESYS_TR | None = None
        self._root: bytes | None = root

    def close(self) -> None:
        for handle in (self._ak, self._srk):
            if handle is not None:
                # The TPM may have been reset meanwhile: then nothing is left to flush.
                with contextlib.suppress(TSS2_Exception):
                    self._ctx.flush_context(handle)
        self._ak = self._srk = None
        self._ctx.close()

    def __enter__(self) -> TpmBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- keys -------------------------------------------------------------------------

    def _srk_handle(self) -> ESYS_TR:
        if self._srk is None:
            template = TPM2B_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=_SRK_ATTRS)
            self._srk, *_ = self._ctx.create_primary(None, template, ESYS_TR.OWNER)
        return self._srk

    def _ek_handle(self) -> ESYS_TR:
        _, template = create_ek_template(EK_TYPE, NVReadEK(self._ctx))
        handle, *_ = self._ctx.create_primary(None, template, ESYS_TR.ENDORSEMENT)
        return handle

    def _ak_handle(self) -> ESYS_TR:
        if self._ak is not None:
            return self._ak
        pub_path, priv_path = self._state / "ak.pub", self._state / "ak.priv"
        srk = self._srk_handle()
        if pub_path.exists() and priv_path.exists():
            pub, _ = TPM2B_PUBLIC.unmarshal(pub_path.read_bytes())
            priv, _ = TPM2B_PRIVATE.unmarshal(priv_path.read_bytes())
        else:
            template = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=_AK_ATTRS)
            sensitive = TPM2B_SENSITIVE_CREATE(
                TPMS_SENSITIVE_CREATE(userAuth=TPM2B_AUTH(self._ak_auth()))
            )
            session = self._salted_session(TPM2_SE.HMAC)  # the authValue never crosses in clear
            try:
                priv, pub, *_ = self._ctx.create(srk, sensitive, template, session1=session)
            finally:
                self._ctx.flush_context(session)
            self._state.mkdir(mode=0o700, parents=True, exist_ok=True)
            pub_path.write_bytes(bytes(pub.marshal()))
            priv_path.write_bytes(bytes(priv.marshal()))
        self._ak = self._ctx.load(srk, priv, pub)
        self._ctx.tr_set_auth(self._ak, self._ak_auth())
        return self._ak

    def _ak_auth(self) -> bytes:
        # Without the root (tests of the primitives alone) the AK has an empty authValue;
        # the device backend (tpm_device.py) always makes and uses it with the root.
        return b"" if self._root is None else derive(self._root, "tpm-ak-auth")

    def identity(self) -> Identity:
        """The EK certificate from NV and the AK (made on first use)."""
        try:
            cert = NVReadEK(self._ctx)(EK_CERT_INDEX)
        except (NoSuchIndex, TSS2_Exception):  # the TPM has no EK certificate
            raise TpmUnavailable(
                f"the TPM has no EK certificate at NV index {EK_CERT_INDEX:#x}"
            ) from None
        pub, _, _ = self._ctx.read_public(self._ak_handle())
        return Identity(ek_certificate=bytes(cert), ak_public=bytes(pub.marshal()))

    def activate_credential(self, credential_blob: bytes, secret: bytes) -> bytes:
        """TPM2_ActivateCredential with the AK and the EK: the verifier's secret comes out
        only if this TPM holds both."""
        try:
            blob, _ = TPM2B_ID_OBJECT.unmarshal(credential_blob)
            enc, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(secret)
        except TSS2_Exception:
            raise CredentialRefused("the credential is not a TPM2B_ID_OBJECT and secret") from None
        ak = self._ak_handle()
        ek = self._ek_handle()
        # The EK's authPolicy is PolicySecret(TPM_RH_ENDORSEMENT) (EK Credential Profile).
        session = self._ctx.start_auth_session(
            ESYS_TR.NONE,
            ESYS_TR.NONE,
            TPM2_SE.POLICY,
            TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
            TPM2_ALG.SHA256,
        )
        try:
            self._ctx.policy_secret(ESYS_TR.ENDORSEMENT, session)
            cred = self._ctx.activate_credential(
                ak, ek, blob, enc, session1=ESYS_TR.PASSWORD, session2=session
            )
        except TSS2_Exception as exc:
            raise CredentialRefused(
                f"the TPM refused to activate the credential: it was not made for this "
                f"TPM's EK and AK ({exc})"
            ) from None
        finally:
            self._ctx.flush_context(session)
            self._ctx.flush_context(ek)
        return bytes(cred)

    # -- measured boot and quotes ----------------------------------------------------

    def measure_boot(self, stages: Iterable[Stage]) -> None:
        """Extend each secure-world boot stage (tee/boot.py's measure_stages) in order."""
        for stage in stages:
            self.extend(stage.component, stage.measurement)

    def extend(self, description: str, digest: bytes) -> None:
        """Measure one boot stage into ``VERITEE_PCR`` and the event log."""
        if len(digest) != DIGEST_SIZE:
            raise ValueError("a boot stage digest is SHA-256")
        ha = TPMT_HA(hashAlg=PCR_BANK)
        ha.digest.sha256 = digest
        values = TPML_DIGEST_VALUES([ha])
        self._ctx.pcr_extend(ESYS_TR.parse(f"pcr{VERITEE_PCR}"), values)
        self._events.append(TpmEvent(VERITEE_PCR, digest, description))

    @property
    def event_log(self) -> bytes:
        return encode_event_log(self._events)

    @property
    def events(self) -> tuple[TpmEvent, ...]:
        """This boot's event log so far (to continue it in a later context)."""
        return tuple(self._events)

    def pcr_value(self, pcr: int = VERITEE_PCR) -> bytes:
        _, _, digests = self._ctx.pcr_read(pcr_selection([pcr]))
        return bytes(digests[0])

    def quote(self, qualifying_data: bytes) -> TpmQuote:
        """TPM2_Quote by the AK over ``VERITEE_PCR`` with ``qualifying_data`` (from
        veritee.evidence.tpm.quote_binding), with this boot's event log."""
        try:
            attest, sig = self._ctx.quote(
                self._ak_handle(),
                pcr_selection([VERITEE_PCR]),
                qualifying_data,
                TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL),
            )
        except TSS2_Exception as exc:
            if exc.error in (TPM2_RC.AUTH_FAIL, TPM2_RC.BAD_AUTH):
                raise AkRefused(
                    "the TPM refuses the AK: it is authorised by the secure world's root only"
                ) from None
            raise TpmUnavailable(f"the TPM failed to quote ({exc})") from None
        assert isinstance(attest, TPM2B_ATTEST)
        return TpmQuote(bytes(attest), bytes(sig.marshal()), self.event_log)

    def platform_evidence(self, vtee_key_digest: bytes, challenge: bytes) -> TpmPlatformEvidence:
        """The platform part of the evidence: identity and a quote binding the vTEE key."""
        ident = self.identity()
        quote = self.quote(quote_binding(vtee_key_digest, challenge))
        return TpmPlatformEvidence(ident.ek_certificate, ident.ak_public, quote)

    # -- sealing ----------------------------------------------------------------------

    def _pcr_policy(self, session: ESYS_TR, pcr_digest: bytes | None, epoch: int) -> None:
        """PolicyPCR over ``VERITEE_PCR``, and PolicyNV: the root's epoch counter holds
        ``epoch``. An upgrade seals the root for the next epoch and steps the counter, so a
        root sealed for an older boot (a copy the host kept) never opens again."""
        self._ctx.policy_pcr(session, pcr_digest or b"", pcr_selection([VERITEE_PCR]))
        counter = self._epoch()
        self._ctx.policy_nv(
            counter.handle,
            counter.handle,
            session,
            TPM2B_OPERAND(epoch.to_bytes(_COUNTER_BYTES, "big")),
            TPM2_EO.EQ,
        )

    def _epoch(self) -> NvCounter:
        return NvCounter(self._ctx, NV_EPOCH_INDEX)

    def _salted_session(self, kind: TPM2_SE) -> ESYS_TR:
        # Salted with the SRK and parameter-encrypted: the root never crosses the bus (or
        # swtpm's socket) in the clear.
        session = self._ctx.start_auth_session(
            self._srk_handle(),
            ESYS_TR.NONE,
            kind,
            TPMT_SYM_DEF.parse("aes128cfb"),
            TPM2_ALG.SHA256,
        )
        self._ctx.trsess_set_attributes(
            session, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.DECRYPT | TPMA_SESSION.ENCRYPT
        )
        return session

    def seal(
        self, root: bytes, pcr_value: bytes | None = None, *, epoch: int | None = None
    ) -> bytes:
        """Seal ``root`` under a PolicyPCR: it unseals only while ``VERITEE_PCR`` holds
        ``pcr_value`` (by default the value it holds now, after the genuine boot), and while
        the root's epoch counter holds ``epoch`` (by default its value now)."""
        if len(root) != ROOT_BYTES:
            raise ValueError(f"the root secret is {ROOT_BYTES} bytes")
        if epoch is None:
            epoch = self._epoch().read()
        pcr_digest = hashlib.sha256(pcr_value).digest() if pcr_value is not None else None
        trial = self._ctx.start_auth_session(
            ESYS_TR.NONE,
            ESYS_TR.NONE,
            TPM2_SE.TRIAL,
            TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
            TPM2_ALG.SHA256,
        )
        try:
            self._pcr_policy(trial, pcr_digest, epoch)
            policy = bytes(self._ctx.policy_get_digest(trial))
        finally:
            self._ctx.flush_context(trial)
        template = TPM2B_PUBLIC.parse("keyedhash", objectAttributes=_SEAL_ATTRS, authPolicy=policy)
        sensitive = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(data=TPM2B_SENSITIVE_DATA(root)))
        session = self._salted_session(TPM2_SE.HMAC)
        try:
            priv, pub, *_ = self._ctx.create(
                self._srk_handle(), sensitive, template, session1=session
            )
        finally:
            self._ctx.flush_context(session)
        return _pack(bytes(pub.marshal()), bytes(priv.marshal()))

    def unseal(self, blob: bytes) -> bytes:
        """The sealed root, if the boot measurements are the ones it was sealed under;
        raises :class:`UnsealRefused` otherwise."""
        pub_b, priv_b = _unpack(blob, 2)
        try:
            pub, _ = TPM2B_PUBLIC.unmarshal(pub_b)
            priv, _ = TPM2B_PRIVATE.unmarshal(priv_b)
            handle = self._ctx.load(self._srk_handle(), priv, pub)
        except TSS2_Exception:  # unmarshal errors or TPM_RC_INTEGRITY: not this TPM's blob
            raise SealingError("sealed blob was not made by this TPM, or was altered") from None
        epoch = self._epoch().read()
        session = self._salted_session(TPM2_SE.POLICY)
        try:
            self._pcr_policy(session, None, epoch)
            data = self._ctx.unseal(handle, session1=session)
        except TSS2_Exception as exc:
            if exc.error in (TPM2_RC.POLICY_FAIL, TPM2_RC.VALUE, TPM2_RC.POLICY):
                raise UnsealRefused(
                    "the TPM refuses to unseal the root: the boot measurements differ from "
                    "those it was sealed under (a boot stage changed), or it was sealed for a "
                    "boot an upgrade retired"
                ) from None
            raise TpmUnavailable(f"the TPM failed to unseal ({exc})") from None
        finally:
            self._ctx.flush_context(session)
            self._ctx.flush_context(handle)
        return bytes(data)

    @property
    def _root_path(self) -> Path:
        return self._state / "root.sealed"

    def provision_root(self) -> bytes:
        """Make the secure world's root secret and seal it under the boot measured now
        (provisioning: run it on the genuine boot). Refuses to replace an existing one."""
        if self._root_path.exists():
            raise SealingError("this TPM backend already holds a sealed root; not replacing it")
        # The TPM's RNG and the OS's, mixed: either alone suffices.
        root = hashlib.sha256(
            secrets.token_bytes(ROOT_BYTES) + bytes(self._ctx.get_random(ROOT_BYTES))
        ).digest()
        self._write_root(self.seal(root))
        self.extend(CAP_EVENT, CAP_DIGEST)  # as root() does: no second unseal in this boot
        self._root = root
        self._forget_ak()  # an AK made before the root had no authValue: make it anew under it
        self._ak_handle()
        return root

    def _forget_handle_only(self) -> None:
        if self._ak is not None:
            with contextlib.suppress(TSS2_Exception):
                self._ctx.flush_context(self._ak)
            self._ak = None

    def _forget_ak(self) -> None:
        self._forget_handle_only()
        for name in ("ak.pub", "ak.priv"):
            (self._state / name).unlink(missing_ok=True)

    def store_root(self, root: bytes, pcr_value: bytes) -> None:
        """Seal ``root`` for a boot not yet run (its ``VERITEE_PCR`` value, from
        veritee.evidence.tpm.expected_pcr): what device provisioning does. Refuses to replace
        an existing one."""
        if self._root_path.exists():
            raise SealingError("this TPM backend already holds a sealed root; not replacing it")
        self._write_root(self.seal(root, pcr_value))
        self._root = root
        self._forget_ak()
        self._ak_handle()  # the AK the root authorises (root() checks it)

    def upgrade_root(self, pcr_value: bytes) -> None:
        """Seal the root held now for an upgraded boot (its ``VERITEE_PCR`` value) and retire
        every blob sealed before: the new one is for the next epoch, and the epoch counter
        steps to it. A copy of the old blob kept by the host opens on no boot again."""
        if self._root is None:
            raise SealingError("only a secure world holding its root can seal it for an upgrade")
        epoch = self._epoch()
        following = epoch.read() + 1
        upgraded = self._root_path.with_suffix(".next")
        tmp = upgraded.with_suffix(".tmp")
        tmp.write_bytes(self.seal(self._root, pcr_value, epoch=following))
        os.chmod(tmp, 0o600)
        os.replace(tmp, upgraded)
        if epoch.increment() != following:
            raise SealingError("the root's epoch counter moved meanwhile; upgrade again")
        os.replace(upgraded, self._root_path)

    def _write_root(self, blob: bytes) -> None:
        self._state.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self._root_path.with_suffix(".tmp")
        tmp.write_bytes(blob)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self._root_path)

    def root(self) -> bytes:
        """The sealed root secret (the emulated backend's HUK), if this boot is the genuine
        one; raises :class:`UnsealRefused` otherwise.

        Once unsealed, the root is capped: ``CAP_EVENT`` is extended into ``VERITEE_PCR``, so
        that the TPM refuses to unseal it again until the next platform reset. The secure
        world holds it from then on; a host process that opens the TPM after the genuine
        boot finds a PCR no sealed root opens under. Quotes show the cap in the event log."""
        if self._root is not None:
            return self._root
        try:
            blob = self._root_path.read_bytes()
        except FileNotFoundError:
            raise SealingError("no sealed root: provision this TPM backend first") from None
        try:
            root = self.unseal(blob)
        except UnsealRefused:
            # An upgrade interrupted after it stepped the epoch: its blob is the one to open.
            upgraded = self._root_path.with_suffix(".next")
            if not upgraded.exists():
                raise
            root = self.unseal(upgraded.read_bytes())
            os.replace(upgraded, self._root_path)
        self.extend(CAP_EVENT, CAP_DIGEST)
        self._check_root_made_here(root)
        self._root = root
        return root

    def _check_root_made_here(self, root: bytes) -> None:
        """Refuse a sealed root that provisioning did not make. Provisioning makes the AK
        right after it seals the root, with an authValue derived from that root: a root
        planted by a host process (which the SRK lets anyone seal under) does not authorise
        the device's AK. Who plants both a root and an AK of their own gets an AK no
        registrar activated (the verifier refuses it), unless they did so before the device
        was enrolled."""
        if not (self._state / "ak.pub").exists() or not (self._state / "ak.priv").exists():
            raise SealingError(
                "the sealed root has no attestation key made under it: it was not sealed by "
                "this device's provisioning (planted?); refusing it"
            )
        self._forget_handle_only()
        previous, self._root = self._root, root
        try:
            self.quote(QUOTE_BINDING_CONTEXT)  # needs the AK's authValue, derived from the root
        except AkRefused:
            raise SealingError(
                "the sealed root does not authorise this device's attestation key: it is not "
                "the root provisioning sealed (planted or swapped); refusing it"
            ) from None
        finally:
            self._root = previous
            self._forget_handle_only()

    # -- counters ---------------------------------------------------------------------

    def counter(self, number: int) -> NvCounter:
        """The NV counter ``number`` of this device (defined on first use)."""
        if not 0 <= number < MAX_COUNTERS:
            raise ValueError(f"counter number must be below {MAX_COUNTERS}")
        return NvCounter(self._ctx, NV_COUNTER_BASE + number)


class NvCounter:
    """A TPM NV counter: monotonic in the TPM, so no restore of files takes it back."""

    def __init__(self, ctx: ESAPI, index: int) -> None:
        self._ctx = ctx
        self.index = index
        self._handle: ESYS_TR | None
        try:
            self._handle = ctx.tr_from_tpmpublic(index)
        except TSS2_Exception:
            self._handle = None
        if self._handle is not None:
            # Whoever holds owner authorisation can define this index before us, as an
            # ordinary index holding a value of their choosing (then write an old value back);
            # only the counter type is one that can only go up.
            public, _ = ctx.nv_read_public(self._handle)
            attrs = TPMA_NV(public.nvPublic.attributes)
            if attrs.nt != TPM2_NT.COUNTER:
                raise CounterTampered(
                    f"NV index {index:#x} is not a TPM counter: it was defined by someone "
                    "else, to hold a value they can write; refusing it"
                )
            if not attrs & TPMA_NV.WRITTEN:  # defined, then interrupted before its first step
                self.increment()
        else:
            attrs = (
                TPMA_NV.AUTHREAD
                | TPMA_NV.AUTHWRITE
                | TPMA_NV.NO_DA
                | (TPM2_NT.COUNTER << TPMA_NV.TPM2_NT_SHIFT)
            )
            public = TPM2B_NV_PUBLIC(
                nvPublic=TPMS_NV_PUBLIC(
                    nvIndex=index,
                    nameAlg=TPM2_ALG.SHA256,
                    attributes=attrs,
                    dataSize=_COUNTER_BYTES,
                )
            )
            self._handle = ctx.nv_define_space(None, public)
            # A counter has no value until its first increment; the TPM then starts it at
            # the highest value any counter ever had, so a deleted and redefined counter
            # does not restart lower.
            ctx.nv_increment(self._handle)

    @property
    def handle(self) -> ESYS_TR:
        assert self._handle is not None
        return self._handle

    def read(self) -> int:
        try:
            data = self._ctx.nv_read(self._handle, _COUNTER_BYTES, 0)
        except TSS2_Exception as exc:
            raise self._refused(exc) from None
        return int.from_bytes(bytes(data), "big")

    def increment(self) -> int:
        """Increment and return the new value (write it into the state it protects)."""
        try:
            self._ctx.nv_increment(self._handle)
        except TSS2_Exception as exc:
            raise self._refused(exc) from None
        return self.read()

    def _refused(self, exc: TSS2_Exception) -> SealingError | DeviceError:
        # An index of the right type whose authValue is not Veritee's (empty): defined by
        # someone else, who can hold it at a value of their choosing. The index is noDA, so
        # the failed attempt counts towards no lockout.
        if exc.error in (TPM2_RC.AUTH_FAIL, TPM2_RC.BAD_AUTH):
            return CounterTampered(
                f"NV index {self.index:#x} refuses Veritee's authorisation: it was defined by "
                "someone else, with an authValue of their own; refusing it"
            )
        return TpmUnavailable(f"the TPM failed on NV counter {self.index:#x} ({exc})")

    def check(self, recorded: int) -> None:
        """Raises :class:`CounterRolledBack` unless ``recorded`` (from stored state) is the
        counter's current value: an older state file carries a smaller one."""
        current = self.read()
        if recorded != current:
            raise CounterRolledBack(
                f"stored state carries counter {recorded}, the TPM's NV counter is at "
                f"{current}: an older copy of the state was restored; refusing it"
            )


class NvAnchor:
    """A vTEE's counters file anchored in NV counter ``number`` of the TPM at ``tcti``
    (tee/sealing.py: CounterAnchor). It opens the TPM for each use, so it never holds the
    TPM from the monitor or other vTEEs."""

    def __init__(self, tcti: str, number: int) -> None:
        if not 0 <= number < MAX_COUNTERS:
            raise ValueError(f"counter number must be below {MAX_COUNTERS}")
        self.tcti = tcti
        self.index = NV_COUNTER_BASE + number

    def _use(self, step: bool) -> int:
        try:
            with ESAPI(self.tcti) as ctx:
                counter = NvCounter(ctx, self.index)
                return counter.increment() if step else counter.read()
        except TSS2_Exception as exc:
            raise TpmUnavailable(f"the TPM's NV counter {self.index:#x} failed ({exc})") from None

    def read(self) -> int:
        return self._use(False)

    def increment(self) -> int:
        return self._use(True)
