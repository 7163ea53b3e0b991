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

Fan-out event: one output connected to several inputs seals its payload once, for all of
them (so a broker stores and forwards it once)::

    version 2 (1) || wraps n (2, big-endian) || n x wrap || ChaCha20-Poly1305_D(0, payload, 02)
    wrap = connection id (16) || counter (8) || ChaCha20-Poly1305_K(counter, D, ad)
    ad   = 02 || connection id || counter || SHA-256(payload ciphertext)

D is a fresh key drawn for the event; each wrap carries it under one connection's forward
key K, at that connection's own next counter, so each input checks order and replay exactly
as for a version 1 event. A wrap binds the hash of the payload's ciphertext: an input knows
D, but without the other inputs' keys it cannot make a payload they would accept. A node
agent splits a fan-out event into one event per wrap (:func:`split`); a secure world takes
one wrap at a time.
"""

from __future__ import annotations

import hashlib
import os
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
FANOUT = 2  # the version of a fan-out event
_FANOUT = struct.Struct(">BH")
_WRAP_HEAD = struct.Struct(">16sQ")
WRAP_BYTES = _WRAP_HEAD.size + 32 + TAG_BYTES
MAX_WRAPS = 1024  # a module has at most 1024 connections (tee/app_ta.py: MAX_CONNECTIONS)
_ZERO_NONCE = bytes(12)


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
        counter = self._next()
        header = _HEADER.pack(VERSION, self.conn_id, self.send_direction, counter)
        nonce = bytes(4) + counter.to_bytes(8, "big")
        return header + self._aead(True).encrypt(nonce, payload, header)

    def _next(self) -> int:
        if self.sent >= MAX_COUNTER:
            raise EventRejected("malformed", "connection counter exhausted; reconnect")
        self.sent += 1
        return self.sent

    def _aead(self, send: bool) -> ChaCha20Poly1305:
        if send:
            if self._send_aead is None:
                self._send_aead = ChaCha20Poly1305(self.send_key)
            return self._send_aead
        if self._recv_aead is None:
            self._recv_aead = ChaCha20Poly1305(self.recv_key)
        return self._recv_aead

    def open(self, event: bytes) -> bytes:
        """Check and decrypt an event addressed to this channel; raise EventRejected."""
        version, conn_id, direction, counter = parse_header(event)
        expected = BACKWARD if self.initiator else FORWARD
        if conn_id != self.conn_id or direction != expected:
            return self._drop("misrouted", "event is for another connection or direction")
        if counter <= self.received:
            return self._drop(
                "replay",
                f"event counter {counter} is not above {self.received}: replayed or reordered",
            )
        nonce = bytes(4) + counter.to_bytes(8, "big")
        try:
            if version == FANOUT:
                payload = self._open_fanout(event, nonce)
            else:
                header = event[:HEADER_BYTES]
                payload = self._aead(False).decrypt(nonce, event[HEADER_BYTES:], header)
        except InvalidTag:
            return self._drop("altered", "event does not authenticate: altered or forged")
        self.received = counter
        return payload

    def _open_fanout(self, event: bytes, nonce: bytes) -> bytes:
        start = _FANOUT.size
        wrap, body = event[start : start + WRAP_BYTES], event[start + WRAP_BYTES :]
        ad = bytes([FANOUT]) + wrap[: _WRAP_HEAD.size] + hashlib.sha256(body).digest()
        key = self._aead(False).decrypt(nonce, wrap[_WRAP_HEAD.size :], ad)
        return ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, body, bytes([FANOUT]))

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


def seal_fanout(outputs: list[Channel], payload: bytes) -> bytes:
    """One event for every connection of one output (see the module docstring)."""
    if len(payload) > MAX_PAYLOAD:
        raise EventRejected("malformed", f"event payload over {MAX_PAYLOAD} bytes")
    if not 0 < len(outputs) <= MAX_WRAPS or any(not c.initiator for c in outputs):
        raise EventRejected("malformed", f"a fan-out goes to 1 to {MAX_WRAPS} inputs")
    key = os.urandom(32)
    body = ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, payload, bytes([FANOUT]))
    digest = hashlib.sha256(body).digest()
    parts = [_FANOUT.pack(FANOUT, len(outputs))]
    for channel in outputs:
        counter = channel._next()
        head = _WRAP_HEAD.pack(channel.conn_id, counter)
        nonce = bytes(4) + counter.to_bytes(8, "big")
        ad = bytes([FANOUT]) + head + digest
        parts.append(head + channel._aead(True).encrypt(nonce, key, ad))
    parts.append(body)
    return b"".join(parts)


def split(event: bytes) -> list[tuple[bytes, int, bytes]]:
    """(connection id, direction, event for that connection alone) for each connection an
    event is for: one for a version 1 event, one per wrap for a fan-out. Checks lengths
    only (the secure world checks the rest); raises EventRejected if they do not fit."""
    if event[:1] != bytes([FANOUT]):
        _, conn_id, direction, _ = parse_header(event)
        return [(conn_id, direction, event)]
    conns = fanout_conns(event)
    if len(conns) == 1:
        return [(conns[0], FORWARD, event)]
    return [(conn, FORWARD, fanout_part(event, i)) for i, conn in enumerate(conns)]


def fanout_conns(event: bytes) -> list[bytes]:
    """The connection id of each wrap of a fan-out event, in order (lengths checked, no
    copy of the payload: a node agent looks at these before it builds any part)."""
    n, _ = _fanout_shape(event)
    start = _FANOUT.size
    return [event[start + i * WRAP_BYTES : start + i * WRAP_BYTES + 16] for i in range(n)]


def fanout_part(event: bytes, i: int) -> bytes:
    """The event for wrap ``i`` alone of a fan-out event whose shape :func:`fanout_conns`
    checked (one copy of the payload)."""
    n, _ = _fanout_shape(event)
    start = _FANOUT.size
    if n == 1:
        return event
    wrap = event[start + i * WRAP_BYTES : start + (i + 1) * WRAP_BYTES]
    return _FANOUT.pack(FANOUT, 1) + wrap + event[start + n * WRAP_BYTES :]


def keep_wraps(event: bytes, conn_ids: set[bytes]) -> bytes:
    """A fan-out event with only the wraps of ``conn_ids`` (what one node needs of it)."""
    n, body = _fanout_shape(event)
    start = _FANOUT.size
    wraps = [event[start + i * WRAP_BYTES : start + (i + 1) * WRAP_BYTES] for i in range(n)]
    kept = [w for w in wraps if w[:16] in conn_ids]
    return _FANOUT.pack(FANOUT, len(kept)) + b"".join(kept) + event[len(event) - body :]


def _fanout_shape(event: bytes) -> tuple[int, int]:
    """The number of wraps of a fan-out event and the length of its payload ciphertext."""
    if len(event) < _FANOUT.size:
        raise EventRejected("malformed", "event is truncated")
    _, n = _FANOUT.unpack_from(event)
    body = len(event) - _FANOUT.size - n * WRAP_BYTES
    if not 0 < n <= MAX_WRAPS or not TAG_BYTES <= body <= MAX_PAYLOAD + TAG_BYTES:
        raise EventRejected("malformed", "fan-out event is truncated or oversized")
    return n, body


def parse_header(event: bytes) -> tuple[int, bytes, int, int]:
    """Version, connection id, direction and counter of an event for one connection (a
    fan-out event split to one wrap is one, see :func:`split`)."""
    if event[:1] == bytes([FANOUT]):
        n, _ = _fanout_shape(event)
        if n != 1:
            raise EventRejected("malformed", "a fan-out event reaches a module one wrap at a time")
        conn_id, counter = _WRAP_HEAD.unpack_from(event, _FANOUT.size)
        return FANOUT, conn_id, FORWARD, counter
    if len(event) < HEADER_BYTES + TAG_BYTES or len(event) > HEADER_BYTES + MAX_PAYLOAD + TAG_BYTES:
        raise EventRejected("malformed", "event is truncated or oversized")
    version, conn_id, direction, counter = _HEADER.unpack_from(event)
    if version != VERSION:
        raise EventRejected("malformed", f"event version {version} is not known here")
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
