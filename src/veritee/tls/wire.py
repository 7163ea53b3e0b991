"""The RA-TLS wire format: OIDs, the pre-handshake hello, frames inside TLS, the exporter.

Pure encoders and incremental decoders, shared by the secure world's TLS endpoint and the
normal-world helpers; docs/ratls.md is the prose version of this file.

On the TCP stream, in challenge mode::

    client -> server   HELLO  "VRA" 0x01 | flags (1) | n (1) | challenge (n = 8..64)
    server -> client   HELLO  "VRA" 0x01 | flags (1) | n (1) | challenge (n = 0 or 8..64)
    then the TLS 1.3 handshake; the certificate each side presents carries evidence over the
    challenge the other side sent.

A stream that starts with a TLS record (0x16) instead has no hello: the server's certificate
then carries evidence over a nonce it chose itself, marked by ``NO_CHALLENGE_PREFIX``, and the
server sends its evidence over the TLS exporter as the first frame (exporter mode).

Inside TLS, every message is a frame: ``kind (1) | length (4, big endian) | body``.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Literal

from cryptography import x509

from veritee.tls.errors import ProtocolViolation

Mode = Literal["challenge", "exporter"]
MODES: tuple[Mode, ...] = ("challenge", "exporter")

# Veritee's own evidence extension: an OID under 2.25 (X.667: a UUID as an integer, which
# anyone may mint without registration), UUID 4e3cb86a-901c-4284-ac55-4a12a441f68b. Its
# extnValue holds the Veritee evidence bytes (application/vnd.veritee.evidence+cbor) as is.
OID_VERITEE_EVIDENCE = x509.ObjectIdentifier("2.25.103995061888887831624385471322490271371")
# TCG DICE "tagged evidence" (since DICE Attestation Architecture 1.1: conceptual message
# wrapper): extnValue holds CBOR #6.<tag>(evidence), the tag naming the evidence format.
OID_DICE_TAGGED_EVIDENCE = x509.ObjectIdentifier("2.23.133.5.4.9")
# Our CBOR tag for "Veritee evidence as a byte string": 0x56524101 ("VRA" 1), from IANA's
# first-come-first-served range and below the range derived from CoAP content formats.
# Not registered yet: #6.1448231169(bstr .cbor veritee-evidence).
EVIDENCE_CBOR_TAG = 0x56524101

# RFC 5705 / RFC 8446 section 7.5: both ends derive the same value from the session's secrets.
# The context says whose evidence the value is for, so one side's evidence cannot be
# reflected back as the other's.
EXPORTER_LABEL = b"EXPORTER-veritee-attestation"
EXPORTER_LENGTH = 32
EXPORTER_CONTEXT = {"server": b"veritee-ratls/server", "client": b"veritee-ratls/client"}

# Evidence over a nonce the attester chose itself (no challenge arrived) starts with this
# text, inside the signed module token: anyone can tell such a certificate proves no freshness.
NO_CHALLENGE_PREFIX = b"veritee-ratls:no-challenge:"
NO_CHALLENGE_RANDOM = 16

HELLO_MAGIC = b"VRA\x01"  # 'V' (0x56) is no TLS record type (0x14-0x18): the two never mix
HELLO_HEADER = len(HELLO_MAGIC) + 2
CHALLENGE_MIN, CHALLENGE_MAX = 8, 64  # bytes, as EAT nonces
CHALLENGE_BYTES = 32  # what our relying parties send
TLS_HANDSHAKE_RECORD = 0x16

FRAME_EVIDENCE = 0x01  # body: Veritee evidence over the exporter value
FRAME_DATA = 0x02  # body: application bytes (a request or a response)
FRAME_ERROR = 0x03  # body: UTF-8 reason the sender refuses the channel; it closes next
_FRAME_HEADER = struct.Struct(">BI")
FRAME_HEADER = _FRAME_HEADER.size
# Bounds per kind, checked on the header before anything is buffered: a peer that announces
# more must not make us allocate it.
MAX_EVIDENCE_BYTES = 64 * 1024  # evidence is ~3 KiB; the COSE decoder refuses over 64 KiB
MAX_DATA_BYTES = 16 * 1024 * 1024  # one request or response; a module's stdout is capped too
MAX_ERROR_BYTES = 1024
_MAX_BODY = {
    FRAME_EVIDENCE: MAX_EVIDENCE_BYTES,
    FRAME_DATA: MAX_DATA_BYTES,
    FRAME_ERROR: MAX_ERROR_BYTES,
}
_KIND_NAMES = {FRAME_EVIDENCE: "evidence", FRAME_DATA: "data", FRAME_ERROR: "error"}


@dataclass(frozen=True)
class Hello:
    """The pre-handshake message: the challenge the sender wants evidence over (if any)."""

    challenge: bytes

    def encode(self) -> bytes:
        if self.challenge and not CHALLENGE_MIN <= len(self.challenge) <= CHALLENGE_MAX:
            raise ValueError(f"a challenge is {CHALLENGE_MIN} to {CHALLENGE_MAX} bytes")
        return HELLO_MAGIC + bytes([0, len(self.challenge)]) + self.challenge


def parse_hello(buf: bytes | bytearray) -> tuple[Hello, int] | None:
    """The hello at the start of ``buf`` and its length, or None while it is incomplete."""
    if len(buf) < HELLO_HEADER:
        if not HELLO_MAGIC.startswith(bytes(buf[: len(HELLO_MAGIC)])):
            raise ProtocolViolation("the stream starts with neither a hello nor a TLS record")
        return None
    if bytes(buf[: len(HELLO_MAGIC)]) != HELLO_MAGIC:
        raise ProtocolViolation("the stream starts with neither a hello nor a TLS record")
    flags, size = buf[len(HELLO_MAGIC)], buf[len(HELLO_MAGIC) + 1]
    if flags != 0:
        raise ProtocolViolation(f"hello has unknown flags 0x{flags:02x}")
    if size and not CHALLENGE_MIN <= size <= CHALLENGE_MAX:
        raise ProtocolViolation(
            f"hello challenge is {size} bytes; {CHALLENGE_MIN} to {CHALLENGE_MAX} are accepted"
        )
    if len(buf) < HELLO_HEADER + size:
        return None
    return Hello(bytes(buf[HELLO_HEADER : HELLO_HEADER + size])), HELLO_HEADER + size


def starts_with_hello(first: int) -> bool:
    """Whether a stream whose first byte is ``first`` opens with a hello (else: TLS)."""
    if first == HELLO_MAGIC[0]:
        return True
    if first == TLS_HANDSHAKE_RECORD:
        return False
    raise ProtocolViolation("the stream starts with neither a hello nor a TLS record")


def no_challenge_nonce() -> bytes:
    """A nonce an attester picks when nobody challenged it, marked as such."""
    return NO_CHALLENGE_PREFIX + os.urandom(NO_CHALLENGE_RANDOM)


def is_no_challenge(nonce: bytes) -> bool:
    return nonce.startswith(NO_CHALLENGE_PREFIX)


def frame(kind: int, body: bytes) -> bytes:
    limit = _MAX_BODY.get(kind)
    if limit is None:
        raise ValueError(f"unknown frame kind {kind}")
    if len(body) > limit:
        raise ValueError(f"{_KIND_NAMES[kind]} frame of {len(body)} bytes is over {limit}")
    return _FRAME_HEADER.pack(kind, len(body)) + body


def error_frame(check: str, reason: str) -> bytes:
    """An ERROR frame: ``check: reason``, cut to the frame's bound."""
    text = f"{check}: {reason}".encode()[:MAX_ERROR_BYTES]
    return frame(FRAME_ERROR, text.decode("utf-8", "ignore").encode())


def parse_error(body: bytes) -> tuple[str, str]:
    """(check, reason) of an ERROR frame's body."""
    text = body.decode("utf-8", "replace")
    check, sep, reason = text.partition(": ")
    return (check, reason) if sep and check.isidentifier() else ("PeerRefused", text)


class FrameReader:
    """Splits a byte stream into frames, refusing unknown kinds and oversized bodies early."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        frames = []
        while len(self._buf) >= FRAME_HEADER:
            kind, size = _FRAME_HEADER.unpack_from(self._buf)
            limit = _MAX_BODY.get(kind)
            if limit is None:
                raise ProtocolViolation(f"unknown frame kind 0x{kind:02x}")
            if size > limit:
                raise ProtocolViolation(
                    f"{_KIND_NAMES[kind]} frame announces {size} bytes; at most {limit}"
                )
            if len(self._buf) < FRAME_HEADER + size:
                break
            frames.append((kind, bytes(self._buf[FRAME_HEADER : FRAME_HEADER + size])))
            del self._buf[: FRAME_HEADER + size]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buf)
