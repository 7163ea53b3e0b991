"""An attested connection over a TCP socket: the engine's bytes moved with time limits.

This is the thin I/O layer around :mod:`veritee.tls.engine` for ends that run in plain
Python (relying parties); a module's end runs in the secure world (see ``ratls.module``).
"""

from __future__ import annotations

import socket
import time
from collections import deque
from types import TracebackType

from veritee.errors import Error
from veritee.tls.engine import Data, Engine, Event, PeerClosed, PeerError
from veritee.tls.errors import ChannelError, Unreachable
from veritee.tls.verify import AttestedPeer

# A handshake plus appraisal takes milliseconds on a LAN; a peer that takes this long is
# stuck or stalling on purpose, and holds a socket and a thread meanwhile.
DEFAULT_TIMEOUT = 30.0
RECV_BYTES = 64 * 1024


class AttestedConnection:
    """A TLS channel whose peer passed appraisal (``peer``), carrying DATA frames."""

    def __init__(self, sock: socket.socket, engine: Engine, *, timeout: float) -> None:
        self._sock, self._engine, self.timeout = sock, engine, timeout
        self._events: deque[Event] = deque()

    @property
    def peer(self) -> AttestedPeer | None:
        """The appraised peer (None only for a server that admits unattested clients)."""
        return self._engine.peer

    @property
    def certificate(self) -> bytes | None:
        """The peer's certificate (DER)."""
        return self._engine.peer_certificate()

    def exporter(self, role: str) -> bytes:
        return self._engine.exporter("server" if role == "server" else "client")

    def handshake(self) -> None:
        """Run the engine until the channel is attested, or raise the failed check."""
        deadline = time.monotonic() + self.timeout
        try:
            self._flush()
            while not self._engine.ready:
                self._next_event(deadline, waiting_for="the attested handshake")
        except BaseException:
            self.close()
            raise

    def send(self, payload: bytes) -> None:
        self._engine.send(payload)
        self._flush()

    def receive(self) -> bytes | None:
        """The next DATA frame's payload, or None when the peer closed the channel."""
        deadline = time.monotonic() + self.timeout
        while True:
            event = self._next_event(deadline, waiting_for="data")
            if isinstance(event, Data):
                return event.payload
            if isinstance(event, PeerClosed):
                return None

    def request(self, payload: bytes) -> bytes:
        """Send one request, return the one response."""
        self.send(payload)
        answer = self.receive()
        if answer is None:
            raise ChannelError("the peer closed the channel without answering")
        return answer

    def close(self) -> None:
        try:
            if not self._engine.closed:
                self._engine.close()
                self._sock.sendall(self._engine.outgoing())
        except OSError:
            pass
        finally:
            self._sock.close()

    def __enter__(self) -> AttestedConnection:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------------

    def _next_event(self, deadline: float, *, waiting_for: str) -> Event:
        while not self._events:
            if self._engine.closed:
                raise ChannelError(f"the channel closed while waiting for {waiting_for}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unreachable(f"the peer sent nothing for {self.timeout:g} s ({waiting_for})")
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(RECV_BYTES)
            except TimeoutError:
                raise Unreachable(
                    f"the peer sent nothing for {self.timeout:g} s ({waiting_for})"
                ) from None
            except OSError as exc:
                raise Unreachable(f"the connection broke: {exc.strerror or exc}") from None
            try:
                events = self._engine.receive(data) if data else self._engine.eof()
            except Error as err:
                self._engine.abort(err)
                self._flush(quiet=True)
                raise
            self._flush()
            self._events.extend(events)
        event = self._events.popleft()
        if isinstance(event, PeerError):
            raise event.error()
        return event

    def _flush(self, *, quiet: bool = False) -> None:
        out = self._engine.outgoing()
        if not out:
            return
        try:
            self._sock.sendall(out)
        except OSError as exc:
            if not quiet:
                raise Unreachable(f"the connection broke: {exc.strerror or exc}") from None


def dial(host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to ``host:port``, or Unreachable."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise Unreachable(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
