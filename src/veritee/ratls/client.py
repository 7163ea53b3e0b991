"""Plain-Python relying parties: talk to an attested module only after its evidence passed.

::

    appraiser = LocalAppraiser(TrustAnchors.from_pem(ca_pem), refs)   # or ServiceAppraiser(url)
    with ratls.connect("127.0.0.1", 8443, appraiser, mode="exporter") as conn:
        print(conn.peer.claims())            # what the module proved
        answer = conn.request(b"alice")       # sent only after appraisal

and the other way round, a server that admits attested modules only::

    with ratls.RelyingServer(("127.0.0.1", 0), appraiser) as server:
        conn = server.accept()                # raises the failed check for a bad client
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
from types import TracebackType

from cryptography.hazmat.primitives.asymmetric import ec

from veritee.ratls.channel import DEFAULT_TIMEOUT, AttestedConnection, dial
from veritee.tls import certificate
from veritee.tls.appraisers import Appraiser
from veritee.tls.engine import Engine, Identity
from veritee.tls.errors import Unreachable
from veritee.tls.wire import MODES, Mode

log = logging.getLogger("veritee.ratls")
BACKLOG = 64


def connect(
    host: str,
    port: int,
    appraiser: Appraiser,
    *,
    mode: Mode = "challenge",
    timeout: float = DEFAULT_TIMEOUT,
    server_name: str | None = None,
) -> AttestedConnection:
    """Connect, run the attested handshake, appraise the server; raise the failed check.

    ``mode`` is how the evidence is made fresh: ``challenge`` (a random challenge travels in
    the ClientHello's server name; the certificate answers it) or ``exporter`` (the server's
    evidence over this TLS session's exported keying material follows the handshake).
    ``server_name`` is the name an SNI router or proxy on the way routes on (in challenge mode
    the challenge labels go in front of it: ``<hex>.challenge.<server_name>``).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    sock = dial(host, port, timeout)
    engine = Engine("client", None, appraiser, mode=mode, server_name=server_name)
    conn = AttestedConnection(sock, engine, timeout=timeout)
    try:
        engine.start()
    except BaseException:
        conn.close()
        raise
    conn.handshake()
    return conn


def plain_identity(name: str = "veritee relying party") -> Identity:
    """A fresh key and a plain self-signed certificate (no evidence): a non-attested server."""
    key = ec.generate_private_key(ec.SECP256R1())

    def certify(_nonce: bytes) -> bytes:
        return certificate.build_plain(key, name=name, now=dt.datetime.now(dt.UTC))

    return Identity(key=key, certify=certify)


class RelyingServer:
    """A TCP server whose clients must be attested modules; :meth:`accept` one at a time.

    With ``appraiser=None`` clients are not appraised (a plain RA-TLS server: it speaks the
    protocol, and presents ``identity``'s certificates).
    """

    def __init__(
        self,
        address: tuple[str, int],
        appraiser: Appraiser | None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        identity: Identity | None = None,
    ) -> None:
        self.appraiser, self.timeout = appraiser, timeout
        self.identity = identity or plain_identity()
        try:
            self._sock = socket.create_server(address, backlog=BACKLOG)
        except OSError as exc:
            raise Unreachable(f"cannot listen on {address[0]}:{address[1]}: {exc}") from None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def accept(self) -> AttestedConnection:
        """The next client whose evidence passes; a failing one raises its check (and is gone)."""
        sock, _ = self._sock.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        engine = Engine("server", self.identity, self.appraiser)
        conn = AttestedConnection(sock, engine, timeout=self.timeout)
        conn.handshake()
        return conn

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RelyingServer:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
