"""Framing on the world boundary: length-prefixed CBOR messages over a Unix stream socket.

The normal world is untrusted, so the secure world reads every frame defensively: the length
is bounded before any allocation, and a frame that is not CBOR, or not a map, ends that
connection only.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import cbor2

# Tens-of-MB modules and their inputs must fit; an attacker-sized length must not allocate.
MAX_FRAME_BYTES = 512 * 1024 * 1024
_HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """The peer sent something that is not a frame of this protocol, or went away."""


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    data = cbor2.dumps(message)
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes is over the {MAX_FRAME_BYTES} limit")
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ProtocolError("peer closed the connection")
        got += k
    return bytes(buf)


def recv(sock: socket.socket) -> dict[str, Any]:
    (length,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    if length > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {length} bytes is over the {MAX_FRAME_BYTES} limit")
    data = _recv_exact(sock, length)
    try:
        message = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError):
        raise ProtocolError("frame is not valid CBOR") from None
    if not isinstance(message, dict):
        raise ProtocolError("frame is not a CBOR map")
    return message
