"""One end of an RA-TLS connection, without I/O: bytes in, bytes out, events.

The same engine runs inside the secure world (a module's endpoint, in the TLS TA) and in
plain Python relying parties; only what is plugged in differs:

* an :class:`Identity` says what this end presents: a certificate per nonce (with evidence
  over it, if this end is attested) and evidence over an exporter value;
* an :class:`~veritee.tls.appraisers.Appraiser` judges the peer; with none, the peer is not
  appraised (a server that admits unattested clients; a module client that does not check
  its server, for a server authenticated some other way).

The transport feeds :meth:`Engine.receive` with what arrived, sends :meth:`Engine.outgoing`,
and acts on the events. Nothing precedes the TLS ClientHello: in challenge mode the client's
challenge is in its server name (SNI), and the server makes the certificate for this
connection while OpenSSL reads the ClientHello (the server-name callback). A failed check
raises out of ``receive``; :meth:`Engine.abort` then tells the peer why (an ERROR frame,
when TLS is up) and closes. TLS is 1.3 only: its exporter is bound to the full handshake,
and there is no renegotiation to swap keys later. Session resumption is off, since a
resumed session presents no certificate to check.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

from veritee.errors import Error
from veritee.tls import wire
from veritee.tls.appraisers import Appraiser
from veritee.tls.errors import (
    HandshakeFailed,
    NoEvidence,
    PeerRefused,
    ProtocolViolation,
)
from veritee.tls.verify import AttestedPeer, Freshness
from veritee.tls.wire import Mode

log = logging.getLogger("veritee.ratls")

Role = Literal["client", "server"]
READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Identity:
    """What one end presents: its key, a certificate per nonce, evidence per exporter value."""

    key: ec.EllipticCurvePrivateKey
    certify: Callable[[bytes], bytes]  # nonce -> DER certificate (evidence over the nonce)
    evidence: Callable[[bytes], bytes] | None = None  # nonce -> evidence; None: not attested
    # TLS contexts holding the key, made once (the certificate is set per connection).
    contexts: dict[tuple[str, bool], SSL.Context] = field(
        default_factory=dict, compare=False, repr=False
    )


@dataclass(frozen=True)
class Ready:
    """The channel is attested as far as this end requires; application data may flow."""

    peer: AttestedPeer | None


@dataclass(frozen=True)
class Data:
    payload: bytes


@dataclass(frozen=True)
class PeerError:
    """The peer refused the channel and said why."""

    check: str
    reason: str

    def error(self) -> PeerRefused:
        return PeerRefused(f"the peer refused: {self.check}: {self.reason}")


@dataclass(frozen=True)
class PeerClosed:
    pass


Event = Ready | Data | PeerError | PeerClosed

_START, _HANDSHAKE, _ATTEST, _READY, _CLOSED = "start", "handshake", "attest", "ready", "closed"
_CONTEXTS: dict[tuple[str, bool], SSL.Context] = {}  # for ends that present no certificate


def _accept_any(*_: object) -> bool:
    # Certificates here are self-signed by design; what vouches for them is the evidence,
    # checked after the handshake (the handshake itself proves possession of the key).
    return True


def tls_context(
    role: Role, cert_der: bytes | None, key: ec.EllipticCurvePrivateKey | None, *, peer: bool
) -> SSL.Context:
    """A TLS 1.3-only context with ``key`` (and ``cert_der``, if given); ``peer``: ask for the
    peer's certificate (a client always gets the server's)."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_options(SSL.OP_NO_TICKET)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    if key is not None:
        ctx.use_privatekey(key)
    if cert_der is not None:
        ctx.use_certificate(x509.load_der_x509_certificate(cert_der))
    if role == "client" or peer:
        # A missing peer certificate is not a TLS failure here: the protocol then refuses the
        # peer with a frame that names the check (NoEvidence), which a TLS alert could not.
        ctx.set_verify(SSL.VERIFY_PEER, _accept_any)
    if role == "server" and cert_der is None:
        # OpenSSL calls this for every ClientHello, with a server name or without one.
        ctx.set_tlsext_servername_callback(_on_server_name)
    return ctx


def _on_server_name(conn: SSL.Connection) -> None:
    """OpenSSL read the ClientHello: the engine picks this connection's certificate now."""
    engine = conn.get_app_data()
    if isinstance(engine, Engine):
        engine._certify_for(conn)


class Engine:
    """The RA-TLS protocol for one connection (see ``wire`` for the format)."""

    def __init__(
        self,
        role: Role,
        identity: Identity | None,
        appraiser: Appraiser | None,
        *,
        mode: Mode = "challenge",
        server_name: str | None = None,
    ) -> None:
        """``server_name`` (a client's): the name an SNI router or proxy routes on; in
        challenge mode the challenge goes in front of it (``wire.challenge_name``)."""
        if role == "server" and identity is None:
            raise ValueError("a server needs an identity (a certificate to present)")
        self.role, self.identity, self.appraiser = role, identity, appraiser
        self.mode: Mode | None = mode if role == "client" else None
        self.server_name = server_name
        self.peer: AttestedPeer | None = None
        self.certificate: bytes | None = None  # the one we presented
        self._state = _START
        self._refusal: Exception | None = None  # raised in the server-name callback
        self._out = bytearray()
        self._ssl: SSL.Connection | None = None
        self._frames = wire.FrameReader()
        self._challenge: Freshness | None = None  # what the peer's certificate must answer
        self._awaiting: Freshness | None = None  # exporter mode: the peer's evidence is due

    # -- what the transport calls ----------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._state == _READY

    @property
    def closed(self) -> bool:
        return self._state == _CLOSED

    def start(self) -> None:
        """Begin (a client speaks first: its ClientHello); then send :meth:`outgoing`."""
        if self.role == "server":
            return
        name = self.server_name
        if self.mode == "challenge":
            # Without an appraiser the challenge is still sent (the mode says there is one),
            # and the server's answer to it is not checked.
            self._challenge = (
                self.appraiser.challenge()
                if self.appraiser is not None
                else Freshness("challenge", os.urandom(wire.CHALLENGE_BYTES))
            )
            name = wire.challenge_name(
                self._challenge.nonce, self.server_name or wire.DEFAULT_SERVER_NAME
            )
        self._begin_tls(name)
        self._handshake()

    def receive(self, data: bytes) -> list[Event]:
        """Feed bytes from the peer; raises the failed check (then call :meth:`abort`)."""
        if self._state == _CLOSED:
            return []
        if self._state == _START:
            if not data:
                return []
            wire.check_first_byte(data[0])
            self._begin_tls(None)
        assert self._ssl is not None
        if data:
            self._ssl.bio_write(data)
        events: list[Event] = []
        if self._state == _HANDSHAKE and self._handshake():
            self._on_handshake(events)
        if self._state in (_ATTEST, _READY):
            self._read(events)
        self._drain()
        return events

    def eof(self) -> list[Event]:
        """The peer closed its side of the TCP connection."""
        if self._state in (_START, _HANDSHAKE):
            self._state = _CLOSED
            raise HandshakeFailed("the peer closed the connection before the handshake ended")
        if self._state == _ATTEST:
            self._state = _CLOSED
            raise NoEvidence("the peer closed the connection before its attestation was complete")
        self._state = _CLOSED
        return [PeerClosed()]

    def send(self, payload: bytes) -> None:
        """Send one DATA frame; only once the channel is ready."""
        if self._state != _READY or self._ssl is None:
            raise ProtocolViolation("no application data before attestation")
        try:
            self._ssl.sendall(wire.frame(wire.FRAME_DATA, payload))
        except SSL.Error as exc:
            raise ProtocolViolation(f"TLS error: {_ssl_reason(exc)}") from None
        self._drain()

    def close(self) -> None:
        """Close TLS (close_notify); send :meth:`outgoing`, then close the socket."""
        if self._ssl is not None and self._state in (_ATTEST, _READY):
            with contextlib.suppress(SSL.Error):
                self._ssl.shutdown()
            self._drain()
        self._state = _CLOSED

    def abort(self, err: Error) -> None:
        """Tell the peer which check failed (when TLS is up) and close."""
        if self._ssl is not None and self._state in (_ATTEST, _READY):
            with contextlib.suppress(SSL.Error):
                self._ssl.sendall(wire.error_frame(type(err).__name__, str(err)))
        self.close()
        self._drain()

    def outgoing(self) -> bytes:
        """Bytes to send to the peer now (and forget)."""
        self._drain()
        out, self._out = bytes(self._out), bytearray()
        return out

    def exporter(self, role: Role) -> bytes:
        """This session's exporter value for ``role``'s evidence."""
        assert self._ssl is not None
        return self._ssl.export_keying_material(
            wire.EXPORTER_LABEL, wire.EXPORTER_LENGTH, wire.EXPORTER_CONTEXT[role]
        )

    def peer_certificate(self) -> bytes | None:
        if self._ssl is None:
            return None
        cert = self._ssl.get_peer_certificate(as_cryptography=True)
        return None if cert is None else cert.public_bytes(serialization.Encoding.DER)

    # -- the protocol ------------------------------------------------------------------------

    def _begin_tls(self, server_name: str | None) -> None:
        """Start TLS. A client presents its certificate (if it has an identity) over a marked
        nonce of its own: its evidence that counts follows over the exporter. A server makes
        its certificate once the ClientHello is read (:meth:`_certify_for`)."""
        peer = self.appraiser is not None
        self._ssl = SSL.Connection(self._context(peer), None)
        self._ssl.set_app_data(self)
        if self.role == "server":
            self._ssl.set_accept_state()
        else:
            if self.identity is not None:
                self.certificate = self.identity.certify(wire.no_challenge_nonce())
                self._ssl.use_certificate(x509.load_der_x509_certificate(self.certificate))
            if server_name is not None:
                self._ssl.set_tlsext_host_name(server_name.encode("ascii"))
            self._ssl.set_connect_state()
        self._state = _HANDSHAKE

    def _certify_for(self, conn: SSL.Connection) -> None:
        """In OpenSSL's server-name callback: this connection's certificate, with evidence
        over the challenge in the server name, or over a marked nonce of ours (exporter
        mode). Nothing may raise out of a callback: a refusal is kept, and the handshake
        then fails for want of a certificate (see :meth:`_handshake`)."""
        try:
            assert self.identity is not None
            challenge = wire.parse_server_name(conn.get_servername())
            self.mode = "challenge" if challenge is not None else "exporter"
            self.certificate = self.identity.certify(challenge or wire.no_challenge_nonce())
            conn.use_certificate(x509.load_der_x509_certificate(self.certificate))
        except Exception as exc:  # kept, and raised by _handshake
            self._refusal = exc

    def _context(self, peer: bool) -> SSL.Context:
        """A shared context: making one (and loading the key into it) costs more than a
        connection does."""
        cache = self.identity.contexts if self.identity is not None else _CONTEXTS
        ctx = cache.get((self.role, peer))
        if ctx is None:
            key = self.identity.key if self.identity is not None else None
            ctx = cache[(self.role, peer)] = tls_context(self.role, None, key, peer=peer)
        return ctx

    def _handshake(self) -> bool:
        assert self._ssl is not None
        try:
            self._ssl.do_handshake()
        except SSL.WantReadError:
            self._drain()
            return False
        except SSL.Error as exc:
            self._drain()  # the alert, so the peer learns why
            if self._refusal is not None:
                raise self._refusal from None
            raise HandshakeFailed(f"TLS handshake failed: {_ssl_reason(exc)}") from None
        self._drain()
        if self._refusal is not None:  # pragma: no cover - no certificate: OpenSSL fails first
            raise self._refusal
        if self._ssl.get_protocol_version_name() != "TLSv1.3":
            raise HandshakeFailed("the peer did not negotiate TLS 1.3")
        self._state = _ATTEST
        return True

    def _on_handshake(self, events: list[Event]) -> None:
        other: Role = "client" if self.role == "server" else "server"
        # A server's evidence is in its certificate in challenge mode, in a frame over the
        # exporter otherwise; an attested client's is always in a frame (no challenge reached
        # it: it has nothing else to be fresh over).
        sends = self.role == "client" or self.mode == "exporter"
        if sends and self.identity is not None and self.identity.evidence:
            evidence = self.identity.evidence(self.exporter(self.role))
            assert self._ssl is not None
            self._ssl.sendall(wire.frame(wire.FRAME_EVIDENCE, evidence))
        if self.appraiser is None:
            self._become_ready(None, events)
        elif self.role == "client" and self.mode == "challenge":
            assert self._challenge is not None
            self._become_ready(self._appraise(self._challenge, None), events)
        else:
            self._awaiting = self.appraiser.exporter(self.exporter(other))

    def _appraise(self, freshness: Freshness, evidence: bytes | None) -> AttestedPeer:
        assert self.appraiser is not None
        cert = self.peer_certificate()
        if cert is None:
            raise NoEvidence("the peer presented no certificate")
        return self.appraiser.appraise(cert, freshness, evidence)

    def _become_ready(self, peer: AttestedPeer | None, events: list[Event]) -> None:
        self.peer = peer
        self._state = _READY
        events.append(Ready(peer))

    def _read(self, events: list[Event]) -> None:
        assert self._ssl is not None
        while self._state in (_ATTEST, _READY):
            try:
                chunk = self._ssl.recv(READ_CHUNK)
            except SSL.WantReadError:
                return
            except SSL.ZeroReturnError:
                if self._state == _ATTEST:
                    self._state = _CLOSED
                    raise NoEvidence(
                        "the peer closed TLS before its attestation was complete"
                    ) from None
                self._state = _CLOSED
                events.append(PeerClosed())
                return
            except SSL.Error as exc:
                raise ProtocolViolation(f"TLS error: {_ssl_reason(exc)}") from None
            for kind, body in self._frames.feed(chunk):
                self._on_frame(kind, body, events)
                if self._state == _CLOSED:
                    return

    def _on_frame(self, kind: int, body: bytes, events: list[Event]) -> None:
        if kind == wire.FRAME_ERROR:
            check, reason = wire.parse_error(body)
            self._state = _CLOSED
            events.append(PeerError(check, reason))
        elif kind == wire.FRAME_EVIDENCE:
            if self._awaiting is not None:
                freshness, self._awaiting = self._awaiting, None
                self._become_ready(self._appraise(freshness, body), events)
            elif not (self.role == "server" and self.appraiser is None):
                raise ProtocolViolation("the peer sent evidence nobody asked for")
        elif self._state == _READY:
            events.append(Data(body))
        elif self._awaiting is not None:
            raise NoEvidence("the peer sent data before its evidence over the TLS exporter")
        else:  # pragma: no cover - _ATTEST without awaiting evidence does not last
            raise ProtocolViolation("the peer sent data before attestation")

    def _drain(self) -> None:
        if self._ssl is None:
            return
        while True:
            try:
                chunk = self._ssl.bio_read(READ_CHUNK)
            except SSL.WantReadError:
                return
            if not chunk:
                return
            self._out += chunk


def _ssl_reason(exc: SSL.Error) -> str:
    """OpenSSL's reason string(s), without the library/function noise."""
    parts = []
    for entry in exc.args[0] if exc.args and isinstance(exc.args[0], list) else []:
        if isinstance(entry, tuple) and entry:
            parts.append(str(entry[-1]))
    return "; ".join(parts) or type(exc).__name__
