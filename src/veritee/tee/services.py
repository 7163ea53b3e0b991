"""What the secure world does behind a module's host functions (runs in the module's worker).

Sealing, evidence, secrets (WASI-RA) and AES-GCM for one module instance. Network traffic
goes out as requests relayed by the normal world (as OP-TEE's tee-supplicant does): the
secure world decides what is sent, checks what comes back, and the relay sees only the
challenge, the evidence and HPKE ciphertext.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from veritee.errors import EvidenceError, SealingError, UsageError
from veritee.evidence import cose, provisioning
from veritee.evidence.claims import (
    MAX_HOST_DATA,
    MAX_USER_DATA,
    Evidence,
    ModuleClaims,
    encode_claims,
)
from veritee.tee.sealing import Sealer
from veritee.wasm import hostfns
from veritee.wasm.hostfns import HostError

NONCE_MIN, NONCE_MAX = 8, 64
# The secure world's own nonce per secret request: the service's challenge reaches it through
# the untrusted relay, so freshness must also come from here (a replayed answer stops here).
RELEASE_BINDING_BYTES = 32
SECRETS_API = "/secrets/v1"
GCM_IV = 12

Relay = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Attester:
    """Makes evidence for one module instance: the three tokens, the last one fresh."""

    key: ec.EllipticCurvePrivateKey  # the module attestation key
    platform_token: bytes
    vtee_token: bytes
    measurement: bytes
    config: bytes
    name: str
    keys: provisioning.ProvisioningKeys

    def evidence(self, nonce: bytes, user_data: bytes = b"", *, host_data: bytes = b"") -> bytes:
        """Evidence over ``nonce``; raise UsageError for a nonce or data of a bad size.

        ``user_data`` only from inside the TEE (the module, the secure world); what the
        normal world asks to be carried is ``host_data``, a claim of its own, so no host can
        make an endorsed module's token vouch for data of its choosing.
        """
        if not NONCE_MIN <= len(nonce) <= NONCE_MAX:
            raise UsageError(f"nonce must be {NONCE_MIN} to {NONCE_MAX} bytes, got {len(nonce)}")
        if len(user_data) > MAX_USER_DATA:
            raise UsageError(f"user data must be at most {MAX_USER_DATA} bytes")
        if len(host_data) > MAX_HOST_DATA:
            raise UsageError(f"host data must be at most {MAX_HOST_DATA} bytes")
        claims = ModuleClaims(
            nonce=nonce,
            measurement=self.measurement,
            config=self.config,
            name=self.name,
            provisioning_key=cose.x25519_key_to_cose(self.keys.x25519.public_key()),
            iat=int(time.time()),
            user_data=user_data,
            provisioning_key_pq=self.keys.pq_public_claim(),
            host_data=host_data,
        )
        token = cose.sign1(encode_claims(claims), self.key)
        return Evidence(self.platform_token, self.vtee_token, token).encode()


class Attestable(Protocol):
    """A loaded module instance, of either kind (run module or app module)."""

    attestation_key: ec.EllipticCurvePrivateKey
    vtee_token: bytes
    config_digest: bytes
    name: str
    provisioning: provisioning.ProvisioningKeys

    @property
    def measurement(self) -> bytes: ...


def attester_of(module: Attestable, platform_token: bytes) -> Attester:
    return Attester(
        module.attestation_key,
        platform_token,
        module.vtee_token,
        module.measurement,
        module.config_digest,
        module.name,
        module.provisioning,
    )


class ModuleServices:
    """HostServices of one module instance, as its worker holds them."""

    def __init__(
        self,
        *,
        measurement: bytes,
        seal_key: bytes,
        unseal_keys: list[tuple[bytes, bytes]] | None = None,
        attestation_key: ec.EllipticCurvePrivateKey,
        platform_token: bytes,
        vtee_token: bytes,
        config: bytes,
        name: str,
        keys: provisioning.ProvisioningKeys,
        relay: Relay | None,
        note: Callable[[str], None],
    ) -> None:
        self.measurement = measurement
        self._sealer = Sealer(seal_key, measurement, unseal_keys)
        self._attester = Attester(
            attestation_key, platform_token, vtee_token, measurement, config, name, keys
        )
        self._keys = keys
        self._relay = relay
        self._note = note

    def seal(self, plaintext: bytes) -> bytes:
        return self._sealer.seal(plaintext)

    def unseal(self, blob: bytes) -> bytes:
        return self._sealer.unseal(blob)

    def evidence(self, nonce: bytes, user_data: bytes) -> bytes:
        try:
            return self._attester.evidence(nonce, user_data)
        except UsageError as exc:
            raise HostError(hostfns.ERR_BAD_ARG, str(exc)) from None

    def aes_gcm_open(self, key: bytes, blob: bytes) -> bytes:
        if len(blob) < GCM_IV + 16:
            raise SealingError("ciphertext is shorter than an IV and a tag")
        try:
            return AESGCM(key).decrypt(blob[:GCM_IV], blob[GCM_IV:], None)
        except InvalidTag:
            raise SealingError("ciphertext does not authenticate under this key") from None

    # -- app modules: events go through the vTEE, which holds the connection keys ----------

    def output(self, name: bytes, data: bytes) -> bytes:
        self._app("output", name=name.decode("utf-8", "replace"), data=data)
        return b""

    def request(self, name: bytes, data: bytes) -> bytes:
        answer = self._app("request", name=name.decode("utf-8", "replace"), data=data)
        reply = answer.get("data")
        if not isinstance(reply, bytes):
            raise HostError(hostfns.ERR_RELAY, "request got no answer")
        return reply

    def respond(self, data: bytes) -> bytes:
        self._app("respond", data=data)
        return b""

    def _app(self, op: str, **fields: Any) -> dict[str, Any]:
        if self._relay is None:
            raise HostError(hostfns.ERR_NOT_SUPPORTED, "not an app module")
        answer = self._relay({"op": op, **fields})
        if "error" in answer:
            self._note(f"veritee: {op}: {answer['error']}")
            raise HostError(hostfns.ERR_RELAY, str(answer["error"]))
        return answer

    def secret(self, service_key: bytes, name: bytes, post_quantum: bool) -> bytes:
        """One WASI-RA handshake with the secret service; raise HostError with the reason."""
        try:
            pinned = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), service_key)
            label = name.decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise HostError(hostfns.ERR_BAD_ARG, "service key or secret name malformed") from None
        if not 0 < len(label) <= provisioning.MAX_NAME:
            raise HostError(hostfns.ERR_BAD_ARG, "secret name is empty or too long")
        challenge = self._request("challenge", {}, expect=201)
        try:
            nonce = bytes.fromhex(str(challenge["nonce"]))
        except (KeyError, ValueError):
            raise HostError(hostfns.ERR_RELAY, "challenge answer has no nonce") from None
        if not NONCE_MIN <= len(nonce) <= NONCE_MAX:
            raise HostError(hostfns.ERR_RELAY, "challenge nonce has the wrong size")
        suite = provisioning.SUITE_PQ if post_quantum else provisioning.SUITE_X25519
        # Drawn here, kept only for this call, checked once against the answer: the relay
        # chose the challenge, so only this makes a recorded answer useless later.
        binding = secrets.token_bytes(RELEASE_BINDING_BYTES)
        body = {
            "nonce": nonce.hex(),
            "name": label,
            "evidence": self.evidence(nonce, binding).hex(),
            "suite": suite,
        }
        answer = self._request("release", body, expect=200)
        try:
            envelope = provisioning.Envelope(
                name=str(answer["name"]),
                suite=str(answer["suite"]),
                ciphertext=bytes.fromhex(str(answer["ciphertext"])),
                signature=bytes.fromhex(str(answer["signature"])),
                binding=bytes.fromhex(str(answer.get("binding", ""))),
            )
        except (KeyError, ValueError):
            raise HostError(hostfns.ERR_NOT_AUTHENTIC, "release answer is malformed") from None
        if envelope.name != label or envelope.suite != suite:
            raise HostError(hostfns.ERR_NOT_AUTHENTIC, "release answer is for another request")
        try:
            return provisioning.open_(
                envelope, nonce=nonce, binding=binding, keys=self._keys, service_key=pinned
            )
        except EvidenceError as exc:
            self._note(f"veritee: secret {label!r}: {exc}")
            raise HostError(hostfns.ERR_NOT_AUTHENTIC, str(exc)) from None

    def _request(self, op: str, body: dict[str, Any], *, expect: int) -> dict[str, Any]:
        if self._relay is None:
            self._note("veritee: no secret service: run the module with --attest-to URL")
            raise HostError(hostfns.ERR_RELAY, "no relay")
        reply = self._relay(
            {
                "op": "http",
                "method": "POST",
                "path": f"{SECRETS_API}/{op}",
                "body": json.dumps(body).encode(),
            }
        )
        status, raw = reply.get("status"), reply.get("body", b"")
        if not isinstance(status, int) or not isinstance(raw, bytes):
            self._note(f"veritee: secret service unreachable: {reply.get('error', 'no answer')}")
            raise HostError(hostfns.ERR_RELAY, "relay failed")
        try:
            value = json.loads(raw) if raw else {}
        except ValueError:
            value = {}
        if not isinstance(value, dict):
            value = {}
        if status != expect:
            detail = value.get("detail") or value.get("error") or raw[:200].decode("latin-1")
            self._note(f"veritee: secret service refused ({status}): {detail}")
            code = hostfns.ERR_REFUSED if 400 <= status < 500 else hostfns.ERR_RELAY
            raise HostError(code, str(detail))
        return value
