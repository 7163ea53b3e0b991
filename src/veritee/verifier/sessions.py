"""Session ids that carry their own nonce and expiry, authenticated by the verifier.

A challenge-response session waiting for evidence is not stored anywhere: its id *is* its
state. The id is ``base64url(version ‖ created ‖ expiry ‖ nonce ‖ tag)``, times in
milliseconds since the epoch (8 bytes each, big-endian), ``tag`` the first 16 bytes of
HMAC-SHA256 under the verifier's session key (``STATE/session-key``, shared by every worker
like the signing key). So:

* creating a session writes nothing: an unauthenticated client asking for sessions in a loop
  fills no database, and every worker, after any restart, reads any session it issued;
* nobody else can mint or alter a session: a changed nonce, expiry or version fails the tag,
  and the id reads as no session at all;
* the database holds a session from its one submission on (or from its deletion, as a
  tombstone), under the tag as key; the unique key and the unique nonce are what make a
  session, and a nonce, good for one submission. Rows go when the retention after their
  expiry ends, and an id whose expiry has passed is refused anyway;
* the id names a session to whoever sees it (a relying party, a log, a proxy), but only its
  creator may delete it: newSession hands the creator alone a *capability*, the first
  16 bytes of HMAC-SHA256 under the same key over the tag and another context, and DELETE
  asks for it. It too is derived, never stored.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import struct
from dataclasses import dataclass

VERSION = 1
TAG_BYTES = 16
_HEAD = struct.Struct(">BQQ")  # version, created ms, expiry ms
_CONTEXT = b"veritee verifier session v1"
# Another context, so a capability is never a session tag, nor a tag a capability.
_CAPABILITY_CONTEXT = b"veritee verifier session capability v1"
# A presented capability longer than this is none (base64url of 16 bytes is 22 characters):
# a stranger's oversized header costs one comparison of bounded length.
MAX_CAPABILITY_CHARS = 64
# The longest id: 17 header + 64 nonce + 16 tag bytes, base64url without padding.
MAX_ID_CHARS = 4 * (_HEAD.size + 64 + TAG_BYTES) // 3 + 4


@dataclass(frozen=True)
class Ticket:
    """A session as its id describes it (authenticated, not yet checked for expiry)."""

    id: str  # what the client sees: the Location header's last segment
    key: str  # the database key: the tag, in hex
    nonce: bytes
    created: float  # seconds since the epoch
    expiry: float


class Tickets:
    """Issues and opens session ids under one session key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("a session key is at least 32 bytes")
        self._key = key

    def issue(self, nonce: bytes, created: float, expiry: float) -> Ticket:
        body = _HEAD.pack(VERSION, round(created * 1000), round(expiry * 1000)) + nonce
        tag = self._tag(body)
        sid = base64.urlsafe_b64encode(body + tag).rstrip(b"=").decode()
        return self._ticket(sid, body, tag)

    def open(self, sid: str) -> Ticket | None:
        """The session ``sid`` names, or None if it is not an id this verifier issued."""
        if not 0 < len(sid) <= MAX_ID_CHARS or not sid.isascii():
            return None
        try:
            raw = base64.urlsafe_b64decode(sid + "=" * (-len(sid) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) < _HEAD.size + TAG_BYTES or raw[0] != VERSION:
            return None
        body, tag = raw[:-TAG_BYTES], raw[-TAG_BYTES:]
        if not hmac.compare_digest(tag, self._tag(body)):
            return None
        # Only the canonical spelling of an id is that id (base64 has others for some bytes).
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != sid:
            return None
        return self._ticket(sid, body, tag)

    def capability(self, ticket: Ticket) -> str:
        """What only the creator of ``ticket``'s session receives, and DELETE asks for."""
        return base64.urlsafe_b64encode(self._capability(ticket)).rstrip(b"=").decode()

    def holds(self, ticket: Ticket, presented: str | None) -> bool:
        """Whether ``presented`` is ``ticket``'s capability (compared in constant time)."""
        if presented is None or not 0 < len(presented) <= MAX_CAPABILITY_CHARS:
            return False
        if not presented.isascii():
            return False
        return hmac.compare_digest(presented.encode(), self.capability(ticket).encode())

    def _capability(self, ticket: Ticket) -> bytes:
        tag = bytes.fromhex(ticket.key)
        return hmac.digest(self._key, _CAPABILITY_CONTEXT + tag, "sha256")[:TAG_BYTES]

    def _tag(self, body: bytes) -> bytes:
        return hmac.digest(self._key, _CONTEXT + body, "sha256")[:TAG_BYTES]

    @staticmethod
    def _ticket(sid: str, body: bytes, tag: bytes) -> Ticket:
        _, created_ms, expiry_ms = _HEAD.unpack_from(body)
        return Ticket(sid, tag.hex(), body[_HEAD.size :], created_ms / 1000, expiry_ms / 1000)
