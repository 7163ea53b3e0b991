"""Framing on the world boundary: length-prefixed CBOR messages over a Unix stream socket.

The normal world is untrusted, so the secure world reads every frame defensively:

* the declared length is bounded, and nothing is allocated for it: a frame's buffer grows
  only as its bytes actually arrive (a header declaring 512 MiB costs nothing until they do);
* all the connections of one server share a :class:`Budget` of buffered bytes; a frame that
  would overspend it is read to its end and discarded (the connection stays in step) and
  refused with :class:`BoundaryBusy`;
* a partial frame whose next byte does not come within the idle timeout is dropped with its
  connection (:class:`FrameIdle`); waiting for the next frame has no timeout (a TEEC context
  may be idle for hours between commands);
* a frame that is not CBOR, or not a map, ends that connection only.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from typing import Any

import cbor2

# Tens-of-MB modules and their inputs must fit in one frame; one connection buffers at most
# one frame at a time, so this also bounds what a single connection can make a server hold.
MAX_FRAME_BYTES = 512 * 1024 * 1024
# A frame's buffer grows by at most this much per read: memory follows the bytes that
# arrived, never the length a header declared (idle headers declaring 512 MiB pinned GiBs).
CHUNK_BYTES = 256 * 1024
# What all connections of one vTEE may hold in frames at once (two frames of the largest
# size): many connections each sending part of a big frame cannot exhaust the vTEE's memory.
MAX_BUFFERED_BYTES = 2 * MAX_FRAME_BYTES
# Seconds a partial frame may wait for its next byte before it is dropped with its
# connection: an idle, half-sent frame must not hold its buffer and its budget forever.
FRAME_IDLE_TIMEOUT = 30.0
# CBOR items a frame from the normal world may hold (a TEEC message has a few dozen; bulk data
# travels as byte strings). Decoding turns each item into a Python object of 8 bytes or more,
# so a frame of 512 MiB of one-byte items would become gigabytes; counted before decoding.
MAX_FRAME_ITEMS = 4096
_HEADER = struct.Struct(">I")
# Bytes that follow a CBOR head for additional information 24..27.
_ARGUMENT_BYTES = {24: 1, 25: 2, 26: 4, 27: 8}
_BREAK = 0xFF


class ProtocolError(Exception):
    """The peer sent something that is not a frame of this protocol, or went away."""


class PeerClosed(ProtocolError):
    """The peer closed the connection (between frames, or within one)."""


class FrameTooLarge(ProtocolError):
    """A header declared a frame over the reader's limit."""


class FrameIdle(ProtocolError):
    """A partial frame's next byte did not come within the idle timeout."""


class BoundaryBusy(ProtocolError):
    """The frame would overspend the buffers all connections share; it was read and discarded,
    so the connection is still in step and may send again."""


class NotAMessage(ProtocolError):
    """A whole frame arrived, but it is not a CBOR map."""


class FrameTooComplex(ProtocolError):
    """A frame holds more CBOR items than the reader takes (decoding would amplify it)."""


def count_items(data: bytes | bytearray, limit: int) -> int:
    """The number of CBOR data items in ``data`` (nested ones included, string contents
    skipped), counted without decoding; raise :class:`FrameTooComplex` past ``limit``.
    Malformed input stops the count early: the decoder then reports it."""
    view = memoryview(data)
    pos, count, end = 0, 0, len(view)
    while pos < end:
        initial = view[pos]
        pos += 1
        if initial == _BREAK:
            continue
        count += 1
        if count > limit:
            raise FrameTooComplex(f"frame holds more than {limit} CBOR items")
        major, info = initial >> 5, initial & 0x1F
        argument = info
        if info in _ARGUMENT_BYTES:
            size = _ARGUMENT_BYTES[info]
            argument = int.from_bytes(view[pos : pos + size], "big")
            pos += size
        elif info > 23 and info != 31:
            return count  # reserved: malformed
        if major in (2, 3) and info != 31:
            pos += argument  # a definite string's content is not items
    return count


class Budget:
    """Bytes that all connections of one server may hold in frame buffers at once."""

    def __init__(self, limit: int = MAX_BUFFERED_BYTES) -> None:
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        with self._lock:
            return self._used

    def take(self, n: int) -> bool:
        with self._lock:
            if self._used + n > self.limit:
                return False
            self._used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self._used -= n


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    data = cbor2.dumps(message)
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes is over the {MAX_FRAME_BYTES} limit")
    sock.sendall(_HEADER.pack(len(data)) + data)


class Reader:
    """Reads the frames of one connection, holding what it buffered against ``budget``.

    A frame's bytes stay charged to the budget until the next :meth:`recv` or :meth:`close`,
    so a message is accounted for while the server acts on it.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        budget: Budget | None = None,
        max_bytes: int = MAX_FRAME_BYTES,
        idle_timeout: float | None = None,
        max_items: int | None = None,
    ) -> None:
        self._sock = sock
        self._max_items = max_items
        self._budget = budget
        self._max = max_bytes
        self._idle = idle_timeout
        self._held = 0
        self._poller: select.poll | None = None

    def release(self) -> None:
        """Give back what the last frame held."""
        if self._budget is not None and self._held:
            self._budget.give(self._held)
        self._held = 0

    def close(self) -> None:
        self.release()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def recv(self) -> dict[str, Any]:
        """The next frame's message; raise a :class:`ProtocolError` subclass for each way
        the peer fails to send one."""
        self.release()
        header = self._sock.recv(_HEADER.size)  # waiting for a frame has no idle timeout
        if not header:
            raise PeerClosed("peer closed the connection")
        try:
            header += self._exact(_HEADER.size - len(header))
            (length,) = _HEADER.unpack(header)
            if length > self._max:
                raise FrameTooLarge(f"frame of {length} bytes is over the {self._max} limit")
            data = self._body(length)
        except BaseException:
            self.release()  # a frame that failed holds nothing
            raise
        try:
            return self._decode(data)
        except ProtocolError:
            self.release()
            raise

    def _decode(self, data: bytearray) -> dict[str, Any]:
        if self._max_items is not None:
            count_items(data, self._max_items)
        try:
            message = cbor2.loads(data)
        except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError):
            raise NotAMessage("frame is not valid CBOR") from None
        if not isinstance(message, dict):
            raise NotAMessage("frame is not a CBOR map")
        return message

    def _read(self, n: int) -> bytes:
        want = min(n, CHUNK_BYTES)
        # Without an idle timeout, the socket's own timeout (if any) applies.
        idle = self._idle
        chunk = self._sock.recv(want) if idle is None else self._recv_within(want, idle)
        if not chunk:
            raise PeerClosed("peer closed the connection")
        return chunk

    def _recv_within(self, want: int, idle: float) -> bytes:
        # Bytes already there cost one call; only a frame that stalls is waited for. The
        # socket's own mode is left alone (other threads poll it during a run).
        while True:
            try:
                return self._sock.recv(want, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
            if self._poller is None:
                self._poller = select.poll()
                self._poller.register(self._sock, select.POLLIN)
            if not self._poller.poll(idle * 1000):
                raise FrameIdle(f"a partial frame was idle for {idle:g} s; dropping the connection")

    def _exact(self, n: int) -> bytes:
        got = b""
        while len(got) < n:
            got += self._read(n - len(got))
        return got

    def _body(self, length: int) -> bytearray:
        buf = bytearray()
        while len(buf) < length:
            chunk = self._read(length - len(buf))
            if self._budget is not None and not self._budget.take(len(chunk)):
                self._discard(length - len(buf) - len(chunk))
                self.release()
                raise BoundaryBusy(
                    f"the secure world's frame buffers ({self._budget.limit} bytes for all "
                    "connections) are in use; frame refused, try again later"
                )
            self._held += len(chunk) if self._budget is not None else 0
            buf += chunk
        return buf

    def _discard(self, n: int) -> None:
        while n > 0:
            n -= len(self._read(n))


def recv(sock: socket.socket, *, max_bytes: int = MAX_FRAME_BYTES) -> dict[str, Any]:
    """One frame's message, read incrementally, without a shared budget or idle timeout
    (for clients reading the secure world's answers, and for the secure world's own pipes)."""
    return Reader(sock, max_bytes=max_bytes).recv()
