"""What an app's events look like on a NATS broker: the transport's names, framing and URL.

Pure functions, no I/O, no NATS client: the descriptor reads a ``transport`` with
:func:`parse_transport`, and app/transport_nats.py carries events with the rest.
"""

from __future__ import annotations

import hashlib
import struct
from urllib.parse import urlsplit

from veritee.app.errors import AppError

DIRECT = "direct"  # the default transport: Veritee's own TCP links
SCHEME = "nats"
DEFAULT_NATS_PORT = 4222
# Servers of one broker URL (a cluster's, comma-separated); a descriptor is not a phone book.
MAX_SERVERS = 16


class BadTransport(AppError):
    """A transport that is neither ``direct`` nor a NATS URL."""


def parse_transport(value: str) -> str:
    """``direct``, or a NATS URL (``nats://host:port``, several comma-separated for a
    cluster), normalised; raises BadTransport saying what is wrong."""
    text = value.strip()
    if text == DIRECT:
        return DIRECT
    servers = [s.strip() for s in text.split(",")]
    if not text or len(servers) > MAX_SERVERS:
        raise BadTransport(
            f"transport must be 'direct' or nats://host:port (at most {MAX_SERVERS} servers)"
        )
    out = []
    for server in servers:
        try:
            parts = urlsplit(server)
            port = parts.port or DEFAULT_NATS_PORT
        except ValueError:
            raise BadTransport(f"{server!r} is not a NATS URL (nats://host:port)") from None
        if parts.scheme != SCHEME or not parts.hostname:
            raise BadTransport(f"{server!r} is not a NATS URL (nats://host:port)")
        if parts.username or parts.password or parts.path not in ("", "/") or parts.query:
            # Credentials in a descriptor or an app's configuration would be shown in status.
            raise BadTransport(f"{server!r}: give only nats://host:port")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        out.append(f"{SCHEME}://{host}:{port}")
    return ",".join(out)


def is_broker(transport: str) -> bool:
    return transport.startswith(f"{SCHEME}://")


def stream_name(app: str) -> str:
    return f"veritee-{app}"


def events_subject(app: str, node: str) -> str:
    return f"veritee.{app}.events.{node}"


def fanout_stream_name(app: str) -> str:
    """The app's stream of fan-out events (no app's :func:`stream_name` is this)."""
    return f"veritee_fanout-{app}"


def fanout_subject(app: str, source: str) -> str:
    """Where node ``source`` publishes its fan-out events of ``app``, once for all nodes."""
    return f"veritee.{app}.fanout.{source}"


def fanout_durable(node: str, source: str) -> str:
    """The name, without its generation, of the consumer taking ``source``'s fan-out events
    for ``node`` (names are hashed: with ``-`` and ``_`` allowed in both, no separator
    would keep two pairs apart; the consumer's description names them)."""
    digest = hashlib.sha256(f"{node}\0{source}".encode()).hexdigest()[:24]
    return f"F{digest}"


def requests_subject(app: str, node: str) -> str:
    return f"veritee.{app}.requests.{node}"


def outbox_record(subject: str, event: bytes) -> bytes:
    """An event as an agent's outbox keeps it: with the subject it goes to."""
    raw = subject.encode()
    return len(raw).to_bytes(1, "big") + raw + event


def read_outbox_record(record: bytes) -> tuple[str, bytes]:
    n = record[0]
    return record[1 : 1 + n].decode(), record[1 + n :]


_LENGTH = struct.Struct(">I")


def pack(events: list[bytes]) -> bytes:
    """Events as one broker message: ``length (4) || event`` each. One publish, one
    acknowledgement, stored whole or not at all: a batch keeps its order."""
    return b"".join(_LENGTH.pack(len(e)) + e for e in events)


def unpack(payload: bytes) -> list[bytes]:
    """The events of a message; one that does not parse is handed on whole, as one event
    (the agent counts it malformed: whoever published it is not a node agent)."""
    out, i = [], 0
    while i + _LENGTH.size <= len(payload):
        (n,) = _LENGTH.unpack_from(payload, i)
        i += _LENGTH.size
        if i + n > len(payload):
            return [payload]
        out.append(payload[i : i + n])
        i += n
    return out if i == len(payload) and out else [payload]
