"""Framing on the world boundary (tee/protocol.py), on real socket pairs: whole frames in
order however the bytes arrive, and a clear error for anything that is not a frame."""

from __future__ import annotations

import socket
import struct
import threading

import cbor2
import pytest

from veritee.tee import protocol


def _pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def _frame(message: object) -> bytes:
    data = cbor2.dumps(message)
    return struct.pack(">I", len(data)) + data


def test_frames_sent_together_come_back_one_by_one() -> None:
    # Each recv takes one frame and leaves the next where it is.
    ours, theirs = _pair()
    with ours, theirs:
        messages = [{"n": i, "data": bytes(i * 1000)} for i in range(20)]
        theirs.sendall(b"".join(_frame(m) for m in messages))
        assert [protocol.recv(ours) for _ in messages] == messages


def test_a_frame_arriving_a_byte_at_a_time_is_whole() -> None:
    ours, theirs = _pair()
    with ours, theirs:
        wire = _frame({"op": "call", "payload": b"x" * 300}) + _frame({"op": "next"})

        def trickle() -> None:
            for i in range(len(wire)):
                theirs.send(wire[i : i + 1])

        writer = threading.Thread(target=trickle)
        writer.start()
        assert protocol.recv(ours) == {"op": "call", "payload": b"x" * 300}
        assert protocol.recv(ours) == {"op": "next"}
        writer.join()


def test_a_large_frame_is_read_to_its_last_byte_and_no_further() -> None:
    ours, theirs = _pair()
    with ours, theirs:
        big = {"module": bytes(range(256)) * 4096 * 3}  # 3 MiB
        after = {"op": "after"}

        def send() -> None:
            theirs.sendall(_frame(big) + _frame(after))

        writer = threading.Thread(target=send)
        writer.start()
        assert protocol.recv(ours) == big
        assert protocol.recv(ours) == after
        writer.join()


def test_send_and_recv_round_trip() -> None:
    ours, theirs = _pair()
    with ours, theirs:
        protocol.send(theirs, {"rpc": {"op": "output", "data": b"\x00\xff"}})
        assert protocol.recv(ours) == {"rpc": {"op": "output", "data": b"\x00\xff"}}


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (b"", "peer closed"),
        (b"\x00\x00", "peer closed"),  # a header cut short
        (struct.pack(">I", 10) + b"abc", "peer closed"),  # a body cut short
        (struct.pack(">I", protocol.MAX_FRAME_BYTES + 1), "over the"),
        (struct.pack(">I", 3) + b"\xff\xff\xff", "not valid CBOR"),
        (_frame([1, 2, 3]), "not a CBOR map"),
    ],
)
def test_what_is_not_a_frame_is_refused_with_its_reason(wire: bytes, error: str) -> None:
    ours, theirs = _pair()
    with ours:
        theirs.sendall(wire)
        theirs.close()
        with pytest.raises(protocol.ProtocolError, match=error):
            protocol.recv(ours)
