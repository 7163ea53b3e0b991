"""TLS for Veritee's HTTP services (verifier, secret service, node agent) and their clients.

A server's settings are a certificate chain file, its key file and, optionally, a CA whose
clients it requires; the context is TLS 1.3 only. ``--tls-self-signed`` makes a key and a
self-signed certificate for the listening names under the service's state directory, and
prints its SHA-256 fingerprint, so that a client can pin it (``--ca`` that very file).

Clients verify the server's chain and host name against ``--ca FILE`` (or ``$VERITEE_CA``),
else against the system's CAs, and never send a bearer token over plain HTTP to a host
other than loopback (:func:`require_private`); servers refuse one that arrived so
(:func:`carried_privately`).

This is the base layer: it imports only :mod:`veritee.errors`.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from veritee.errors import UsageError

CA_ENV = "VERITEE_CA"  # a CA file clients verify servers against (as --ca)
# TLS 1.3 only, both sides: no downgrade to a protocol version with known weaknesses
# (renegotiation, static RSA, CBC suites) by anyone on the path.
MIN_VERSION = ssl.TLSVersion.TLSv1_3
# A self-signed certificate is for trying TLS out; it lasts this long, then is made anew.
SELF_SIGNED_DAYS = 90
SELF_SIGNED_DIR = "tls"  # under the service's state directory
SELF_SIGNED_CERT = "self-signed.pem"
SELF_SIGNED_KEY = "self-signed.key"


class TlsSetupError(UsageError):
    """A certificate, key or CA file cannot be used, or the TLS options do not fit together."""


class PlainTransport(UsageError):
    """A secret (a bearer token) would cross a network in clear: refused before it is sent."""


def is_loopback(host: str) -> bool:
    """``host`` (a name or an address, brackets allowed) is this machine's loopback."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def carried_privately(scheme: str, peer: str | None) -> bool:
    """A request that came over ``scheme`` from ``peer`` may carry a secret: over TLS, or
    from loopback (no network saw it)."""
    return scheme == "https" or (peer is not None and is_loopback(peer))


def require_private(url: str, what: str = "the token") -> None:
    """Refuse (PlainTransport) to send ``what`` to ``url`` over plain HTTP off loopback."""
    parts = urlsplit(url)
    if parts.scheme == "https" or is_loopback(parts.hostname or ""):
        return
    raise PlainTransport(
        f"refusing to send {what} over plain HTTP to {parts.hostname}: anyone on the network "
        "could read it; use an https:// URL (the service's --tls-cert or --tls-self-signed)"
    )


def client_verify(ca: Path | str | None = None) -> ssl.SSLContext | bool:
    """What an httpx client verifies servers with: ``ca`` (or ``$VERITEE_CA``), else the
    system's CAs (True). Host names are always checked."""
    ca = ca or os.environ.get(CA_ENV) or None
    if ca is None:
        return True
    try:
        context = ssl.create_default_context(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(f"cannot use CA file {ca}: {_reason(exc)}") from None
    context.minimum_version = MIN_VERSION
    return context


@dataclass(frozen=True)
class ServerTls:
    """A server's TLS settings; picklable (worker processes build their own context), and
    callable as uvicorn's ``ssl_context_factory``."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = MIN_VERSION
        try:
            context.load_cert_chain(str(self.cert), str(self.key))
        except (OSError, ssl.SSLError) as exc:
            raise TlsSetupError(
                f"cannot use certificate {self.cert} with key {self.key}: {_reason(exc)}"
            ) from None
        if self.client_ca is not None:
            try:
                context.load_verify_locations(cafile=str(self.client_ca))
            except (OSError, ssl.SSLError) as exc:
                raise TlsSetupError(
                    f"cannot use client CA file {self.client_ca}: {_reason(exc)}"
                ) from None
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def __call__(self, *_: Any) -> ssl.SSLContext:
        return self.context()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)


def check_options(
    cert: Path | None, key: Path | None, self_signed: bool, client_ca: Path | None
) -> None:
    """The ``--tls-*`` options go together; raise :class:`TlsSetupError` when they do not."""
    if self_signed and (cert or key):
        raise TlsSetupError(
            "--tls-self-signed makes its own certificate: drop --tls-cert/--tls-key"
        )
    if bool(cert) != bool(key):
        raise TlsSetupError("--tls-cert and --tls-key go together")
    if client_ca is not None and not (cert or self_signed):
        raise TlsSetupError("--tls-client-ca needs TLS (--tls-cert/--tls-key or --tls-self-signed)")


def from_options(
    cert: Path | None,
    key: Path | None,
    self_signed: bool,
    *,
    client_ca: Path | None = None,
    state: Path,
    host: str,
) -> ServerTls | None:
    """The settings a serve command's ``--tls-*`` options ask for (None: plain HTTP), checked
    now, so a bad file is one clear error line at start rather than at the first client."""
    check_options(cert, key, self_signed, client_ca)
    if self_signed:
        tls = make_self_signed(state / SELF_SIGNED_DIR, _names(host), client_ca=client_ca)
    elif cert and key:
        tls = ServerTls(cert.resolve(), key.resolve(), client_ca)
    else:
        return None
    tls.context()
    return tls


def _names(host: str) -> list[str]:
    """The names a self-signed certificate for a server listening on ``host`` is for."""
    names = ["localhost", "127.0.0.1", "::1"]
    if host in ("0.0.0.0", "::", ""):
        names.append(socket.gethostname())
        with contextlib.suppress(OSError):
            names += [str(i[4][0]) for i in socket.getaddrinfo(socket.gethostname(), None)]
        names += _routed_addresses()
    else:
        names.append(host)
    return list(dict.fromkeys(n.split("%", 1)[0] for n in names))


def _routed_addresses() -> list[str]:
    """This machine's addresses that other hosts reach it at (the source of its default
    routes); connecting a UDP socket sends nothing."""
    found = []
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            found.append(str(s.getsockname()[0]))
    return found


def make_self_signed(
    directory: Path, names: list[str], *, client_ca: Path | None = None
) -> ServerTls:
    """A key and a self-signed certificate for ``names`` in ``directory`` (0600), kept
    across restarts (so a pinned fingerprint stays valid) while it covers the names and has
    a day left; else made anew."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = directory / SELF_SIGNED_CERT, directory / SELF_SIGNED_KEY
    if _still_good(cert_path, key_path, names):
        return ServerTls(cert_path, key_path, client_ca)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[-1][:64])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return ServerTls(cert_path, key_path, client_ca)


def _still_good(cert_path: Path, key_path: Path, names: list[str]) -> bool:
    from cryptography import x509

    if not (cert_path.exists() and key_path.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    have = {str(v) for v in sans.get_values_for_type(x509.DNSName)}
    have |= {str(v) for v in sans.get_values_for_type(x509.IPAddress)}
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    return set(names) <= have and left > datetime.timedelta(days=1)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    tmp.replace(path)


def fingerprint(cert_path: Path) -> str:
    """The SHA-256 fingerprint of the (first) certificate in ``cert_path``, as AA:BB:…"""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise TlsSetupError(f"cannot read certificate {cert_path}: {exc}") from None
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    return getattr(exc, "strerror", None) or str(exc)
