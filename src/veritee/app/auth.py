"""Who may ask a node agent about an app: its owner, by a request signed with its deployment key.

The agent records, per app, the deployment public key of the request that created the app
on this node (a new app id may be created by anyone: it is their own app); every later
request about that app must be signed by that key. What is signed binds the request whole:
method, path and query, a digest of the body, the app, the node it is for (its name in the
app), a time and a nonce. The agent accepts a time within ``WINDOW_MS`` of its clock and
not before it started, and remembers each nonce for that window, so a recorded request
cannot be replayed, to this node or (with another node name) to another.

This stops strangers who reach the agent's port (issue 18, attack 10). The agent itself is
untrusted: what it could do with its owner's requests, the secure world refuses (sealed
state bound to the deployment key, successions checked under the key it records).

I/O-free: :func:`sign` makes the header, :class:`Gate` checks it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from veritee.app.errors import (
    BadRequestSignature,
    NotAppOwner,
    ReplayedRequest,
    StaleRequest,
    TooManyRequests,
    Unauthenticated,
)
from veritee.errors import EvidenceError
from veritee.evidence import cose

HEADER = "veritee-auth"  # base64url of a COSE_Sign1 (ES256) over the request's claims
PROFILE = "tag:veritee.dev,2026:node-request"
# A signed request is accepted within this many ms of the agent's clock, either way (clocks
# of the deployer's and the node's machines differ a little); its nonce is remembered that
# long, so a recorded request cannot be replayed within it, and is stale after it.
WINDOW_MS = 120_000
NONCE_BYTES = 16
# Nonces one app's owner may spend within the window; past it the agent refuses rather than
# forget one early (which would let a recorded request replay). Only the owner can spend
# them (a nonce is recorded once its signature verified), so only the owner is slowed.
MAX_NONCES = 65_536
# Nonces remembered over all apps: a stranger may sign requests about apps this node does not
# hold (each with a key of its own), so the per-app bound alone would not bound memory.
MAX_NONCES_ALL = 262_144
MAX_HEADER_BYTES = 2048  # a signed header is ~250 bytes: a huge one is refused unread


@dataclass(frozen=True)
class Claims:
    """What an owner's request says about itself, as signed."""

    app: str
    node: str
    method: str
    path: str
    body: bytes  # SHA-256 of the body
    iat: int  # ms since the epoch
    nonce: bytes
    key: bytes  # the signer's deployment public key (SEC1); it authorises nothing alone


def raw_key(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def sign(
    key: ec.EllipticCurvePrivateKey,
    *,
    app: str,
    node: str,
    method: str,
    path: str,
    body: bytes,
    now_ms: int | None = None,
    nonce: bytes | None = None,
) -> str:
    """The value of the ``veritee-auth`` header for one request (``path`` with its query)."""
    claims = {
        "profile": PROFILE,
        "app": app,
        "node": node,
        "method": method.upper(),
        "path": path,
        "body": hashlib.sha256(body).digest(),
        "iat": int(time.time() * 1000) if now_ms is None else now_ms,
        "nonce": os.urandom(NONCE_BYTES) if nonce is None else nonce,
        "key": raw_key(key.public_key()),
    }
    signed = cose.sign1(bytes(cbor2.dumps(claims)), key)
    return base64.urlsafe_b64encode(signed).decode().rstrip("=")


def _claims(header: str) -> tuple[Claims, cose.Sign1]:
    if len(header) > MAX_HEADER_BYTES:
        raise Unauthenticated(f"the {HEADER} header is over {MAX_HEADER_BYTES} bytes")
    try:
        raw = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
        msg = cose.decode(raw, what="signed request")
        c: Any = cose.loads(msg.payload, what="signed request")
    except (binascii.Error, ValueError, EvidenceError):
        raise Unauthenticated(f"the {HEADER} header is not a signed request") from None
    if not isinstance(c, dict) or c.get("profile") != PROFILE:
        raise Unauthenticated(f"the {HEADER} header is not a Veritee signed request")
    try:
        claims = Claims(
            app=_typed(c["app"], str),
            node=_typed(c["node"], str),
            method=_typed(c["method"], str),
            path=_typed(c["path"], str),
            body=_typed(c["body"], bytes),
            iat=_typed(c["iat"], int),
            nonce=_typed(c["nonce"], bytes),
            key=_typed(c["key"], bytes),
        )
    except (KeyError, TypeError):
        raise Unauthenticated(
            "the signed request lacks a field or has one of a wrong type"
        ) from None
    if len(claims.nonce) != NONCE_BYTES:
        raise Unauthenticated(f"the signed request's nonce is not {NONCE_BYTES} bytes")
    return claims, msg


def _typed(value: Any, kind: type) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(kind.__name__)
    return value


class Gate:
    """Checks that a request about an app is its owner's, fresh and not seen before.

    ``owner_of(app)`` gives the deployment key recorded for ``app`` on this node, or None
    for an app this node does not hold yet (whose creator becomes its owner). ``node_of``
    gives this node's name in ``app``, or "" before it has one. Thread-safe.
    """

    def __init__(
        self,
        owner_of: Callable[[str], bytes | None],
        node_of: Callable[[str], str],
        *,
        agent_id: str = "",
        started_ms: int | None = None,
        clock: Callable[[], int] = lambda: int(time.time() * 1000),
        spent: Iterable[tuple[str, bytes, int]] = (),
        on_spend: Callable[[str, bytes, int], None] | None = None,
    ) -> None:
        """``agent_id``: this agent's own id, which a request that names no node yet (the
        configure that creates an app here) must be signed for. ``spent`` and ``on_spend``:
        the nonces an earlier life of this agent spent, and where to record each new one
        (so a restart does not make a recorded request new again)."""
        self._owner_of, self._node_of = owner_of, node_of
        self.agent_id = agent_id
        self._clock = clock
        self._on_spend = on_spend
        # Requests signed before this agent started, whose nonces are not in ``spent``, may
        # have been taken by its previous life: none is accepted.
        self.started_ms = clock() if started_ms is None else started_ms
        self._lock = threading.Lock()
        self._seen: dict[str, OrderedDict[bytes, int]] = {}  # app -> nonce -> expiry (ms)
        self._count = 0  # nonces remembered over all apps
        self._pruned = self._clock()
        now = self._clock()
        for app, nonce, expiry in spent:
            if expiry >= now:
                self._seen.setdefault(app, OrderedDict())[nonce] = expiry
                self._count += 1

    def check(
        self,
        header: str | None,
        *,
        method: str,
        path: str,
        app: str | None = None,
        naming_node: bool = True,
    ) -> Claims:
        """The request's claims, once they prove the app's owner signed this request (all
        but its body, which :meth:`admit` checks: a stranger's body is never read); else
        Unauthenticated, BadRequestSignature, StaleRequest (401) or NotAppOwner (403).
        ``app`` None: the app is the one the claims name (a route that finds it elsewhere
        checks it). ``naming_node`` False: the request sets this node's name (configuring
        it), so no name is checked."""
        if not header:
            raise Unauthenticated(
                "this request is about an app: sign it with the app's deployment key "
                f"(the {HEADER} header)"
            )
        claims, msg = _claims(header)
        try:
            signer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), claims.key)
            cose.verify(msg, signer, what="signed request")
        except (ValueError, EvidenceError):
            raise BadRequestSignature("the request's signature does not verify") from None
        if (claims.method, claims.path, claims.app) != (method.upper(), path, app or claims.app):
            raise BadRequestSignature("the signature is over another request (method, path or app)")
        owner = self._owner_of(claims.app)
        if owner is not None and owner != claims.key:
            raise NotAppOwner(
                f"app {claims.app!r} on this node belongs to another deployment key: only its "
                "owner may act on it"
            )
        node = self._node_of(claims.app)
        if naming_node and node and claims.node != node:
            raise BadRequestSignature(
                f"the request was signed for node {claims.node!r}, not this one ({node!r})"
            )
        if not naming_node and self.agent_id and claims.node != self.agent_id:
            raise BadRequestSignature(
                "the request that names this node must be signed for this agent's id "
                f"({self.agent_id}, from /v1/info), not {claims.node!r}"
            )
        now = self._clock()
        if claims.iat < self.started_ms or abs(now - claims.iat) > WINDOW_MS:
            raise StaleRequest(
                "the signed request is not fresh: its time is over "
                f"{WINDOW_MS // 1000} s from this node's clock, or before this agent started"
            )
        return claims

    def admit(self, claims: Claims, body: bytes) -> None:
        """The body is the one signed, and the request not taken before: spend its nonce.
        Else BadRequestSignature, ReplayedRequest (401) or TooManyRequests (429)."""
        if not hmac.compare_digest(hashlib.sha256(body).digest(), claims.body):
            raise BadRequestSignature("the signature is over another body")
        self._remember(claims.app, claims.nonce, claims.iat + WINDOW_MS, self._clock())

    def _remember(self, app: str, nonce: bytes, expiry: int, now: int) -> None:
        with self._lock:
            if self._count >= MAX_NONCES_ALL or now - self._pruned > WINDOW_MS:
                self._prune(now)
            seen = self._seen.setdefault(app, OrderedDict())
            while seen:  # oldest first: drop what is stale anyway
                oldest, until = next(iter(seen.items()))
                if until >= now:
                    break
                del seen[oldest]
                self._count -= 1
            if nonce in seen:
                raise ReplayedRequest("this signed request was taken already (its nonce is spent)")
            if len(seen) >= MAX_NONCES:
                raise TooManyRequests(
                    f"over {MAX_NONCES} signed requests for app {app!r} within "
                    f"{WINDOW_MS // 1000} s: wait"
                )
            if self._count >= MAX_NONCES_ALL:
                raise TooManyRequests(
                    f"over {MAX_NONCES_ALL} signed requests within {WINDOW_MS // 1000} s: wait"
                )
            seen[nonce] = expiry
            self._count += 1
            if self._on_spend is not None:
                self._on_spend(app, nonce, expiry)

    def _prune(self, now: int) -> None:
        """Forget every nonce past its window, in every app (the lock is held)."""
        self._pruned = now
        for app in list(self._seen):
            seen = self._seen[app]
            for nonce in [n for n, until in seen.items() if until < now]:
                del seen[nonce]
                self._count -= 1
            if not seen:
                del self._seen[app]
