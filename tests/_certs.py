"""Certificates no honest encoder makes, for the RA-TLS attack tests.

cryptography refuses to build a certificate with one extension twice, so this builds one
with a stand-in extension of the same OID length, swaps the OID in the to-be-signed bytes,
and signs those again (DER assembled here: SEQUENCE { tbs, algorithm, BIT STRING }).
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from veritee.tls import certificate, wire

# 2.23.133.5.4.8 (tcg-dice-MultiTcbInfoComp) has the DICE CMW OID's length: its DER differs
# in the last byte only.
_STAND_IN = x509.ObjectIdentifier("2.23.133.5.4.8")
_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _encoded_oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for part in parts[2:]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.append(0x80 | (part & 0x7F))
            part >>= 7
        body += bytes(reversed(chunk))
    return _der(0x06, bytes(body))


def duplicate_extension(
    key: ec.EllipticCurvePrivateKey, value: bytes, *, second: bytes | None = None
) -> bytes:
    """A certificate of ``key`` with the DICE CMW extension twice (``value``, then ``second``
    or ``value`` again), validly self-signed."""
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "duplicated")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(9)
        .not_valid_before(now - certificate.CLOCK_SKEW)
        .not_valid_after(now + certificate.CERT_LIFETIME)
        .add_extension(x509.UnrecognizedExtension(wire.OID_DICE_CMW, value), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(_STAND_IN, value if second is None else second),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    stand_in, real = (
        _encoded_oid(_STAND_IN.dotted_string),
        _encoded_oid(wire.OID_DICE_CMW.dotted_string),
    )
    tbs = cert.tbs_certificate_bytes
    assert tbs.count(stand_in) == 1 and len(stand_in) == len(real)
    tbs = tbs.replace(stand_in, real)
    signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    der = _der(0x30, tbs + _ECDSA_SHA256 + _der(0x03, b"\x00" + signature))
    x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.DER)  # parses
    return der
