"""Connection keys and sealed events between attested modules (I/O-free).

Each end derives the connection's keys itself: X25519 between its own attested key and the
peer's (named in the deployer's signed statement), HKDF-SHA256 salted with the connection id
and bound to both measurements and both keys, one key per direction. The deployer never
holds them.

Event on the wire::

    version (1) || connection id (16) || direction (1) || counter (8, big-endian) || AEAD

ChaCha20-Poly1305, nonce = 4 zero bytes || counter, associated data = the header. The
counter is 64-bit and strictly increasing per direction: a replayed, reordered, altered or
misrouted event is dropped and counted. (Unlike 16-bit nonces, 2^64 events never wrap.)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from veritee.errors import Error
from veritee.evidence.deployment import Connect, Peer

VERSION = 1
FORWARD, BACKWARD = 0, 1  # initiator -> responder, responder -> initiator (replies)
_HEADER = struct.Struct(">B16sBQ")
HEADER_BYTES = _HEADER.size
TAG_BYTES = 16
MAX_PAYLOAD = 4 * 1024 * 1024  # events up to 4 MiB (the issue asks for at least 1 MiB)
MAX_COUNTER = 2**64 - 1


class EventRejected(Error):
    """An event was dropped; ``reason`` is one of replay, altered, misrouted, malformed."""

    exit_code = 12

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Channel:
    """One end of one connection, as its secure world keeps it."""

    conn_id: bytes
    kind: str
    endpoint: str
    initiator: bool
    peer: Peer
    send_key: bytes
    recv_key: bytes
    sent: int = 0  # last counter used to send
    received: int = 0  # highest counter accepted
    dropped: dict[str, int] = field(default_factory=dict)
    _send_aead: ChaCha20Poly1305 | None = field(default=None, repr=False, compare=False)
    _recv_aead: ChaCha20Poly1305 | None = field(default=None, repr=False, compare=False)

    @property
    def send_direction(self) -> int:
        return FORWARD if self.initiator else BACKWARD

    def seal(self, payload: bytes) -> bytes:
        if len(payload) > MAX_PAYLOAD:
            raise EventRejected("malformed", f"event payload over {MAX_PAYLOAD} bytes")
        if self.sent >= MAX_COUNTER:
            raise EventRejected("malformed", "connection counter exhausted; reconnect")
        self.sent += 1
        header = _HEADER.pack(VERSION, self.conn_id, self.send_direction, self.sent)
        nonce = bytes(4) + self.sent.to_bytes(8, "big")
        if self._send_aead is None:
            self._send_aead = ChaCha20Poly1305(self.send_key)
        return header + self._send_aead.encrypt(nonce, payload, header)

    def open(self, event: bytes) -> bytes:
        """Check and decrypt an event addressed to this channel; raise EventRejected."""
        version, conn_id, direction, counter = parse_header(event)
        expected = BACKWARD if self.initiator else FORWARD
        if conn_id != self.conn_id or direction != expected or version != VERSION:
            return self._drop("misrouted", "event is for another connection or direction")
        if counter <= self.received:
            return self._drop(
                "replay",
                f"event counter {counter} is not above {self.received}: replayed or reordered",
            )
        header = event[:HEADER_BYTES]
        nonce = bytes(4) + counter.to_bytes(8, "big")
        if self._recv_aead is None:
            self._recv_aead = ChaCha20Poly1305(self.recv_key)
        try:
            payload = self._recv_aead.decrypt(nonce, event[HEADER_BYTES:], header)
        except InvalidTag:
            return self._drop("altered", "event does not authenticate: altered or forged")
        self.received = counter
        return payload

    def _drop(self, reason: str, message: str) -> bytes:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        raise EventRejected(reason, message)

    def to_cbor(self) -> dict[str, Any]:
        """What never changes: the connection, its ends and its keys (its counters move
        with every event and are kept apart, see tee/app_ta.py: AppModule.state)."""
        return {
            "conn": self.conn_id,
            "kind": self.kind,
            "endpoint": self.endpoint,
            "initiator": self.initiator,
            "peer": [self.peer.measurement, self.peer.key, self.peer.node, self.peer.endpoint],
            "keys": [self.send_key, self.recv_key],
        }

    @classmethod
    def from_cbor(cls, c: dict[str, Any]) -> Channel:
        """A channel from :meth:`to_cbor`, with its counters if the map has them (sealed
        states of format 2 kept each channel whole)."""
        m, k, node, ep = c["peer"]
        sent, received = c.get("counters", (0, 0))
        return cls(
            conn_id=c["conn"],
            kind=c["kind"],
            endpoint=c["endpoint"],
            initiator=c["initiator"],
            peer=Peer(m, k, node, ep),
            send_key=c["keys"][0],
            recv_key=c["keys"][1],
            sent=sent,
            received=received,
            dropped=dict(c.get("dropped", {})),
        )


def parse_header(event: bytes) -> tuple[int, bytes, int, int]:
    if len(event) < HEADER_BYTES + TAG_BYTES or len(event) > HEADER_BYTES + MAX_PAYLOAD + TAG_BYTES:
        raise EventRejected("malformed", "event is truncated or oversized")
    version, conn_id, direction, counter = _HEADER.unpack_from(event)
    return version, conn_id, direction, counter


def conn_id_of(event: bytes) -> bytes:
    return parse_header(event)[1]


def establish(
    own_key: x25519.X25519PrivateKey, own_measurement: bytes, statement: Connect
) -> Channel:
    """Derive this end's channel from a verified connect statement."""
    own_pub = own_key.public_key().public_bytes_raw()
    if statement.module_key != own_pub:
        raise EventRejected("misrouted", "connect statement is for another module instance")
    try:
        shared = own_key.exchange(x25519.X25519PublicKey.from_public_bytes(statement.peer.key))
    except ValueError:
        raise EventRejected("malformed", "peer key is not a usable X25519 key") from None
    if statement.initiator:
        parts = [own_measurement, statement.peer.measurement, own_pub, statement.peer.key]
    else:
        parts = [statement.peer.measurement, own_measurement, statement.peer.key, own_pub]
    info = b"veritee-connection-v1" + b"".join(parts)
    okm = HKDF(hashes.SHA256(), 64, salt=statement.conn_id, info=info).derive(shared)
    forward, backward = okm[:32], okm[32:]
    send, recv = (forward, backward) if statement.initiator else (backward, forward)
    return Channel(
        conn_id=statement.conn_id,
        kind=statement.kind,
        endpoint=statement.endpoint,
        initiator=statement.initiator,
        peer=statement.peer,
        send_key=send,
        recv_key=recv,
    )
