"""The wire protocol (docs/secrets.md, "Protocol"): paths, limits, request parsing, error codes.

Pure functions over bytes and values, shared by the service and its tests; the secure world's
client is written against the same text, so a change here is a protocol change.

    GET  /secrets/v1/key        200 {"alg": "ES256", "public_key": HEX (65-byte P-256 point)}
    POST /secrets/v1/challenge  201 {"nonce": HEX (32 bytes), "expires": UNIX_SECONDS}
    POST /secrets/v1/release    {"nonce", "name", "evidence", "suite"}
                                200 {"name", "suite", "ciphertext", "signature", "binding"}
                                ("binding": the module token's user data, echoed and signed)
    any refusal                 {"error": CODE, "detail": ONE_LINE}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from veritee.errors import Error, EvidenceError
from veritee.evidence.cose import MAX_TOKEN_BYTES
from veritee.evidence.errors import (
    BadSignature,
    BindingMismatch,
    LifecycleNotEndorsed,
    MalformedToken,
    MeasurementNotEndorsed,
    NonceMismatch,
    PolicyRejected,
    UntrustedDevice,
)
from veritee.evidence.provisioning import MAX_NAME, Envelope
from veritee.secrets.errors import (
    BadRequest,
    BodyTooLarge,
    NoKeyForSuite,
    NonceExpired,
    NonceUnknown,
    NonceUsed,
    PolicyFailed,
    TooManyChallenges,
    TooManyChallengesFromClient,
    UnknownSecret,
    UnknownSuite,
    VerifierUnavailable,
)
from veritee.secrets.store import NONCE_BYTES

KEY_PATH = "/secrets/v1/key"
CHALLENGE_PATH = "/secrets/v1/challenge"
RELEASE_PATH = "/secrets/v1/release"
HEALTH_PATH = "/health"

# The evidence parser refuses more than one token's limit, so nothing larger is worth reading.
MAX_EVIDENCE_BYTES = MAX_TOKEN_BYTES
# A release body: the evidence in hex, plus the nonce, a name and a suite with their JSON.
MAX_BODY_BYTES = 2 * MAX_EVIDENCE_BYTES + 4 * 1024
# An error's detail is one line a person reads, not a place to echo attacker input.
MAX_DETAIL_CHARS = 400
_FIELDS = frozenset({"nonce", "name", "evidence", "suite"})

# Every refusal, most specific class first: (class, HTTP status, wire code).
_ERRORS: tuple[tuple[type[Error], int, str], ...] = (
    (BodyTooLarge, 413, "body_too_large"),
    (BadRequest, 400, "bad_request"),
    (UnknownSecret, 404, "unknown_secret"),
    (NonceUnknown, 410, "nonce_unknown"),
    (NonceUsed, 410, "nonce_used"),
    (NonceExpired, 410, "nonce_expired"),
    (TooManyChallengesFromClient, 429, "too_many_client_challenges"),
    (TooManyChallenges, 503, "too_many_challenges"),
    (VerifierUnavailable, 502, "verifier_unavailable"),
    (UnknownSuite, 400, "unknown_suite"),
    (NoKeyForSuite, 400, "no_key_for_suite"),
    (MalformedToken, 400, "malformed_evidence"),
    (UntrustedDevice, 403, "untrusted_device"),
    (LifecycleNotEndorsed, 403, "lifecycle_not_endorsed"),
    (BadSignature, 403, "bad_signature"),
    (BindingMismatch, 403, "binding_mismatch"),
    (NonceMismatch, 403, "nonce_mismatch"),
    (MeasurementNotEndorsed, 403, "boot_not_endorsed"),
    (PolicyRejected, 403, "policy_refused"),
    # The operator's policy is broken: nothing is released, and it is not the client's fault.
    (PolicyFailed, 500, "policy_error"),
    (EvidenceError, 403, "evidence_refused"),
)


@dataclass(frozen=True)
class ReleaseRequest:
    nonce: bytes
    name: str
    evidence: bytes
    suite: str


def error_status(err: Error) -> tuple[int, str]:
    """HTTP status and wire code of a refusal."""
    for cls, status, code in _ERRORS:
        if isinstance(err, cls):
            return status, code
    return 500, "internal_error"


def error_body(code: str, detail: str) -> dict[str, str]:
    line = " ".join(detail.split())
    if len(line) > MAX_DETAIL_CHARS:
        line = line[: MAX_DETAIL_CHARS - 1] + "…"
    return {"error": code, "detail": line}


def envelope_body(env: Envelope) -> dict[str, str]:
    return {
        "name": env.name,
        "suite": env.suite,
        "ciphertext": env.ciphertext.hex(),
        "signature": env.signature.hex(),
        "binding": env.binding.hex(),
    }


def parse_body(body: bytes) -> dict[str, Any]:
    """A release body as a JSON object; raise BodyTooLarge or BadRequest."""
    if len(body) > MAX_BODY_BYTES:
        raise BodyTooLarge(f"the body is over the {MAX_BODY_BYTES}-byte limit")
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("the body is not JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(str(k)[:40] for k in value if k not in _FIELDS)
    if unknown:
        raise BadRequest(f"unknown field(s) {unknown}; expected {sorted(_FIELDS)}")
    return value


def parse_nonce(body: dict[str, Any]) -> bytes:
    """The ``nonce`` field: 32 bytes in hex; raise BadRequest."""
    text = body.get("nonce")
    if not isinstance(text, str) or len(text) != 2 * NONCE_BYTES:
        raise BadRequest(f"'nonce' must be the challenge's {NONCE_BYTES} bytes in hex")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise BadRequest("'nonce' is not hex") from None


def parse_release(body: dict[str, Any], nonce: bytes) -> ReleaseRequest:
    """The rest of a release body; raise BadRequest."""
    name, evidence, suite = body.get("name"), body.get("evidence"), body.get("suite")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        raise BadRequest(f"'name' must be a secret's name (1 to {MAX_NAME} characters)")
    if not isinstance(suite, str):
        raise BadRequest("'suite' must be a string: 'x25519' or 'mlkem768-x25519'")
    if not isinstance(evidence, str) or not evidence:
        raise BadRequest("'evidence' must be the evidence (CBOR) in hex")
    if len(evidence) > 2 * MAX_EVIDENCE_BYTES:
        raise BodyTooLarge(f"the evidence is over the {MAX_EVIDENCE_BYTES}-byte limit")
    try:
        raw = bytes.fromhex(evidence)
    except ValueError:
        raise BadRequest("'evidence' is not hex") from None
    return ReleaseRequest(nonce, name, raw, suite)
