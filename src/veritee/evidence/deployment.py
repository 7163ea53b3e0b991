"""Deployment statements: what an application's owner tells a module's secure world.

An application has a deployment key (P-256) that its owner's deployer holds. Each module is
loaded with the public half in its configuration (so it is part of what the module's
evidence attests). The deployer then tells each end of each connection, in a statement
signed with that key, which attested peer to trust; the secure worlds derive the
connection key from their own attested key-agreement keys, so the deployer never holds it.

Statements are COSE_Sign1 (ES256) over a CBOR map; pure encode/verify, no I/O.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

from veritee.evidence import cose
from veritee.evidence.errors import BadSignature, MalformedToken

PROFILE_CONNECT = "tag:veritee.dev,2026:connect"
ENDPOINT_KINDS = ("input", "output", "request", "handler", "entry")  # connectable kinds
MAX_NAME = 64
CONN_ID_BYTES = 16


@dataclass(frozen=True)
class Peer:
    """The attested other end of a connection, as the deployer appraised it."""

    measurement: bytes  # 32 bytes; all-zero for a user's tool (a direct connection)
    key: bytes  # the peer's X25519 key-agreement public key (32 bytes, from its evidence)
    node: str  # where the node agents should route (informational for the secure world)
    endpoint: str  # the peer's endpoint name


@dataclass(frozen=True)
class Connect:
    """Tells a module instance: bind ``endpoint`` (of ``kind``) to ``peer`` under ``conn_id``."""

    app: str
    conn_id: bytes
    kind: str  # this end's endpoint kind
    endpoint: str  # this end's endpoint name
    module_key: bytes  # X25519 key of the module instance this statement is for
    peer: Peer
    initiator: bool  # True at the sending end (output/request), False at input/handler/entry
    iat: int = 0

    def to_cbor(self) -> dict[str, Any]:
        return {
            "profile": PROFILE_CONNECT,
            "app": self.app,
            "conn": self.conn_id,
            "kind": self.kind,
            "endpoint": self.endpoint,
            "module_key": self.module_key,
            "peer": {
                "measurement": self.peer.measurement,
                "key": self.peer.key,
                "node": self.peer.node,
                "endpoint": self.peer.endpoint,
            },
            "initiator": self.initiator,
            "iat": self.iat or int(time.time()),
        }

    @classmethod
    def from_cbor(cls, c: Any) -> Connect:
        if not isinstance(c, dict) or c.get("profile") != PROFILE_CONNECT:
            raise MalformedToken("not a Veritee connect statement")
        p = c.get("peer")
        if not isinstance(p, dict):
            raise MalformedToken("connect statement has no peer")
        try:
            peer = Peer(
                measurement=_bytes(p["measurement"], 32, "peer measurement"),
                key=_bytes(p["key"], 32, "peer key"),
                node=_text(p["node"], "peer node", 256),
                endpoint=_text(p["endpoint"], "peer endpoint", MAX_NAME),
            )
            kind = _text(c["kind"], "kind", 16)
            if kind not in ENDPOINT_KINDS:
                raise MalformedToken(f"endpoint kind {kind!r} is not one of {ENDPOINT_KINDS}")
            initiator = c["initiator"]
            if not isinstance(initiator, bool) or not isinstance(c["iat"], int):
                raise MalformedToken("connect statement: initiator or iat has the wrong type")
            return cls(
                app=_text(c["app"], "app", MAX_NAME),
                conn_id=_bytes(c["conn"], CONN_ID_BYTES, "connection id"),
                kind=kind,
                endpoint=_text(c["endpoint"], "endpoint", MAX_NAME),
                module_key=_bytes(c["module_key"], 32, "module key"),
                peer=peer,
                initiator=initiator,
                iat=c["iat"],
            )
        except (KeyError, TypeError):
            raise MalformedToken("connect statement lacks a field") from None


def sign_connect(statement: Connect, deployment_key: ec.EllipticCurvePrivateKey) -> bytes:
    return _sign(statement.to_cbor(), deployment_key)


def verify_connect(data: bytes, deployment_key: ec.EllipticCurvePublicKey) -> Connect:
    """Check a statement's signature against the app's deployment key; raise EvidenceError."""
    return Connect.from_cbor(
        _signed_payload(data, deployment_key, "connect statement", PROFILE_CONNECT)
    )


def _sign(claims: dict[str, Any], deployment_key: ec.EllipticCurvePrivateKey) -> bytes:
    """A statement of the app owner: its claims in CBOR, COSE_Sign1 with the deployment key."""
    return cose.sign1(bytes(cbor2.dumps(claims)), deployment_key)


def _signed_payload(
    data: bytes, deployment_key: ec.EllipticCurvePublicKey, what: str, profile: str
) -> dict[Any, Any]:
    """The claims of a ``profile`` statement signed with the app's deployment key; raise
    EvidenceError (BadSignature, or MalformedToken for anything but such a statement)."""
    msg = cose.decode(data, what=what)
    try:
        cose.verify(msg, deployment_key, what=what)
    except BadSignature:
        raise BadSignature(f"{what} is not signed with this application's deployment key") from None
    claims = cose.loads(msg.payload, what=what)
    if not isinstance(claims, dict) or claims.get("profile") != profile:
        raise MalformedToken(f"not a Veritee {what}")
    return claims


def _bytes(value: Any, size: int, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise MalformedToken(f"{what} must be {size} bytes")
    return value


def _text(value: Any, what: str, limit: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise MalformedToken(f"{what} must be a string of 1 to {limit} characters")
    return value


APP_PRIVATE_DIR = "/data"  # where an app module finds its private storage (as run modules do)


def app_config_digest(app: str, deployment_key: bytes, memory_bytes: int, time_ms: int) -> bytes:
    """The configuration digest of an app module: its limits, its private directory, the app
    it belongs to and that app's deployment key (SEC1 bytes). The secure world puts it in the
    evidence; a deployer recomputes it to check that a module was loaded as it asked."""
    from veritee.evidence.claims import config_digest

    return config_digest(
        {
            "limits": {"memory": memory_bytes, "time_ms": time_ms},
            "dirs": [[APP_PRIVATE_DIR, True]],
            "app": app,
            "deployment_key": deployment_key,
        }
    )


PROFILE_SUCCESSION = "tag:veritee.dev,2026:succession"


@dataclass(frozen=True)
class Succession:
    """The app owner's word that ``successor`` (a new build) may take over ``predecessor``'s
    sealed state: what 'veritee update' carries across, when the owner allows it."""

    app: str
    name: str
    predecessor: bytes  # measurement of the module being replaced
    successor: bytes  # measurement of the module that takes over

    def to_cbor(self) -> dict[str, Any]:
        return {
            "profile": PROFILE_SUCCESSION,
            "app": self.app,
            "name": self.name,
            "predecessor": self.predecessor,
            "successor": self.successor,
        }


def sign_succession(statement: Succession, deployment_key: ec.EllipticCurvePrivateKey) -> bytes:
    return _sign(statement.to_cbor(), deployment_key)


def verify_succession(data: bytes, deployment_key: ec.EllipticCurvePublicKey) -> Succession:
    """Check a succession statement's signature; raise EvidenceError."""
    c = _signed_payload(data, deployment_key, "succession statement", PROFILE_SUCCESSION)
    try:
        return Succession(
            app=_text(c["app"], "app", MAX_NAME),
            name=_text(c["name"], "name", MAX_NAME),
            predecessor=_bytes(c["predecessor"], 32, "predecessor measurement"),
            successor=_bytes(c["successor"], 32, "successor measurement"),
        )
    except (KeyError, TypeError):
        raise MalformedToken("succession statement lacks a field") from None


PROFILE_DISCONNECT = "tag:veritee.dev,2026:disconnect"
MAX_DISCONNECT = 1024  # connection ids in one statement (= a module's most connections)


@dataclass(frozen=True)
class Disconnect:
    """The app owner's word that connections ``conn_ids`` are over (a module at one of
    their ends was updated or disabled): each secure world that has one ends it, stops
    sealing events on it and refuses events on it, for good."""

    app: str
    conn_ids: tuple[bytes, ...]
    iat: int = 0

    def to_cbor(self) -> dict[str, Any]:
        return {
            "profile": PROFILE_DISCONNECT,
            "app": self.app,
            "conns": list(self.conn_ids),
            "iat": self.iat or int(time.time()),
        }


def sign_disconnect(statement: Disconnect, deployment_key: ec.EllipticCurvePrivateKey) -> bytes:
    return _sign(statement.to_cbor(), deployment_key)


def verify_disconnect(data: bytes, deployment_key: ec.EllipticCurvePublicKey) -> Disconnect:
    """Check a disconnect statement's signature; raise EvidenceError."""
    c = _signed_payload(data, deployment_key, "disconnect statement", PROFILE_DISCONNECT)
    try:
        conns = c["conns"]
        if not isinstance(conns, list) or not 0 < len(conns) <= MAX_DISCONNECT:
            raise MalformedToken(f"disconnect statement names 1 to {MAX_DISCONNECT} connections")
        if not isinstance(c["iat"], int):
            raise MalformedToken("disconnect statement: iat has the wrong type")
        return Disconnect(
            app=_text(c["app"], "app", MAX_NAME),
            conn_ids=tuple(_bytes(x, CONN_ID_BYTES, "connection id") for x in conns),
            iat=c["iat"],
        )
    except (KeyError, TypeError):
        raise MalformedToken("disconnect statement lacks a field") from None
