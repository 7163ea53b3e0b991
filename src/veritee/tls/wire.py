"""The RA-TLS wire format: OIDs, the challenge in the TLS server name, frames, the exporter.

Pure encoders and decoders, shared by the secure world's TLS endpoint and the normal-world
helpers; docs/ratls.md is the prose version of this file. Nothing precedes the ClientHello:

* challenge mode: the client's challenge travels in the ClientHello's server name (SNI) as
  ``<hex>[.<hex>...].challenge.<server name>`` (see :func:`challenge_name`); the server's
  certificate for this connection carries evidence over it;
* exporter mode: a server name without a challenge (or none): the certificate carries
  evidence over a nonce the server chose itself, marked by ``NO_CHALLENGE_PREFIX``, and the
  server sends its evidence over the TLS exporter as the first frame.

Inside TLS, every message is a frame: ``kind (1) | length (4, big endian) | body``.
"""

from __future__ import annotations

import os
import string
import struct
from typing import Literal

from cryptography import x509

from veritee.evidence.claims import MEDIA_TYPE
from veritee.tls.errors import MalformedChallenge, ProtocolViolation

Mode = Literal["challenge", "exporter"]
MODES: tuple[Mode, ...] = ("challenge", "exporter")

# TCG DICE Attestation Architecture 1.1, tcg-dice-conceptual-message-wrapper: the extnValue
# holds a RATS conceptual message wrapper (CMW, RFC 9999 / draft-ietf-rats-msg-wrap), here a
# CBOR record ``[type, value]``: the evidence's media type and the evidence as a byte string.
OID_DICE_CMW = x509.ObjectIdentifier("2.23.133.5.4.9")
# The CMW record's type: Veritee evidence's media type (itself a CMW collection, see
# veritee.evidence.claims), which has no CoAP content format yet.
CMW_TYPE = MEDIA_TYPE
CMW_IND_EVIDENCE = 4  # the CMW "ind" bit for Evidence, if an encoder adds the optional third member

# The old format (certificates of Veritee before the CMW, read for one more release): the
# evidence as is under a private OID (2.25: a UUID as an integer), and again in the DICE
# extension as CBOR #6.OLD_EVIDENCE_CBOR_TAG(bstr), a tag that was never registered.
OLD_OID_VERITEE_EVIDENCE = x509.ObjectIdentifier("2.25.103995061888887831624385471322490271371")
OLD_EVIDENCE_CBOR_TAG = 0x56524101

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

CHALLENGE_MIN, CHALLENGE_MAX = 8, 64  # bytes, as EAT nonces
CHALLENGE_BYTES = 32  # what our relying parties send
# The challenge in a server name: hex labels before this label. A DNS label is at most 63
# characters, so the hex is cut into labels of 32 (16 bytes); 64 bytes make four labels.
CHALLENGE_LABEL = "challenge"
CHALLENGE_HEX_PER_LABEL = 32
DEFAULT_SERVER_NAME = "veritee"
MAX_SERVER_NAME = 253  # RFC 1035; RFC 6066 carries a DNS host name
# What is left for the routing name behind the longest challenge (128 hex digits, 4 labels).
MAX_ROUTING_NAME = MAX_SERVER_NAME - (
    2 * CHALLENGE_MAX + 2 * CHALLENGE_MAX // CHALLENGE_HEX_PER_LABEL + len(CHALLENGE_LABEL) + 1
)
_HEX = frozenset(string.hexdigits)
_HOST_CHARS = frozenset(string.ascii_lowercase + string.digits + "-")
# The first byte of the pre-handshake hello that Veritee clients sent before the challenge
# moved into the server name: 'V' is no TLS record type, so it is told apart and named.
OLD_HELLO_FIRST_BYTE = ord("V")

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


def challenge_name(challenge: bytes, server_name: str = DEFAULT_SERVER_NAME) -> str:
    """The TLS server name that carries ``challenge``: ``<hex>...challenge.<server_name>``.

    ``server_name`` is what an SNI router or proxy in front of the server routes on (it must
    route ``*.challenge.<server_name>``); the default suits a direct connection.
    """
    if not CHALLENGE_MIN <= len(challenge) <= CHALLENGE_MAX:
        raise ValueError(f"a challenge is {CHALLENGE_MIN} to {CHALLENGE_MAX} bytes")
    check_routing_name(server_name)
    text = challenge.hex()
    labels = [
        text[i : i + CHALLENGE_HEX_PER_LABEL] for i in range(0, len(text), CHALLENGE_HEX_PER_LABEL)
    ]
    return ".".join([*labels, CHALLENGE_LABEL, server_name.rstrip(".").lower()])


def check_routing_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a DNS host name short enough to carry a challenge."""
    labels = name.rstrip(".").lower().split(".")
    if len(name) > MAX_ROUTING_NAME:
        raise ValueError(
            f"the server name is {len(name)} characters; at most {MAX_ROUTING_NAME} leave "
            "room for a challenge"
        )
    for label in labels:
        if not label or len(label) > 63 or not set(label) <= _HOST_CHARS:
            raise ValueError(f"{name!r} is not a DNS host name (letters, digits, '-', dots)")


def parse_server_name(name: bytes | None) -> bytes | None:
    """The challenge a ClientHello's server name carries; None if it carries none.

    A name carries a challenge when a label ``challenge`` follows at least one other label;
    those labels must then be hex (any case: DNS names are case-insensitive, and a proxy may
    change the case) and decode to 8 to 64 bytes, or the name is refused
    (:class:`MalformedChallenge`). Any other name (``localhost``, ``db.example``, none) is
    exporter mode.
    """
    if not name:
        return None
    try:
        text = name.decode("ascii").rstrip(".").lower()
    except UnicodeDecodeError:
        raise MalformedChallenge("the TLS server name is not ASCII") from None
    labels = text.split(".")
    if CHALLENGE_LABEL not in labels[1:]:
        return None
    hex_labels = labels[: labels.index(CHALLENGE_LABEL, 1)]
    for label in hex_labels:
        if not label or not set(label) <= _HEX or len(label) > 63:
            raise MalformedChallenge(
                "the challenge in the TLS server name must be hex labels before "
                f"'.{CHALLENGE_LABEL}.' (got {_shown(text)})"
            )
    digits = "".join(hex_labels)
    if len(digits) % 2:
        raise MalformedChallenge(
            f"the challenge in the TLS server name has an odd number of hex digits ({len(digits)})"
        )
    challenge = bytes.fromhex(digits)
    if not CHALLENGE_MIN <= len(challenge) <= CHALLENGE_MAX:
        raise MalformedChallenge(
            f"the challenge in the TLS server name is {len(challenge)} bytes; "
            f"{CHALLENGE_MIN} to {CHALLENGE_MAX} are accepted"
        )
    return challenge


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def check_first_byte(first: int) -> None:
    """Refuse, by name, a stream that opens with what older Veritee clients sent first."""
    if first == OLD_HELLO_FIRST_BYTE:
        raise ProtocolViolation(
            "the stream starts with the pre-handshake hello of older Veritee clients; "
            "the challenge now travels in the TLS server name: update the client"
        )


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
