"""X.509 from untrusted bytes, and Veritee's device-certificate profile.

``cryptography`` parses lazily and does not raise one exception type for bad input: a mangled
version field is ``InvalidVersion``, a repeated extension ``DuplicateExtension``, a key of an
unknown kind ``UnsupportedAlgorithm`` (none of them a ``ValueError``). Every place that reads a
certificate an attacker may have shaped catches :data:`CERT_ERRORS`, so bad bytes become a
clear "does not parse" rather than a traceback.

The profile (docs/secure-world.md, "Device certificates") fixes the chain's shape: a trusted
manufacturer CA (basicConstraints CA:true, pathlen 0; keyUsage keyCertSign) directly issues the
device certificate (CA:false; keyUsage digitalSignature), which certifies the device
attestation key (DAK). :func:`validate_device_chain` is the one place that judges such a chain,
and the judgement is ``cryptography``'s path validator (``x509.verification``) with extension
policies for this profile, never a hand-written walk.

Each certificate of the chain may carry the *lifecycle endorsement* extension
(:data:`LIFECYCLE_OID`): the highest lifecycle the devices it covers may claim. The endorsed
lifecycle of a device is the lowest over its chain; a CA without the mark endorses only
``emulated``, so a CA has to say explicitly that its devices may claim more.

A mark is the word of whoever holds the CA's key, and the owner of an emulated device holds
its CA's key: they can re-mint their CA (same subject, same key) marked ``secured``. So the
lifecycle a trust anchor may endorse is also capped by the word of whoever *provisioned* the
anchor (a per-key *ceiling*, see :func:`validate_device_chain`), and every anchor sharing one
key counts: the lowest mark and ceiling over them, whatever the store's order.

A trust anchor is identified by its public key (:func:`key_id`, SHA-256 of its
SubjectPublicKeyInfo): every certificate of one key is one CA, for ceilings and revocation.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from veritee.evidence.claims import LIFECYCLES
from veritee.evidence.errors import UntrustedDevice

CERT_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    UnsupportedAlgorithm,
)

# Private OID (2.25.<UUID>, ITU-T X.667) of Veritee's lifecycle endorsement extension. Its value
# is a DER UTF8String naming one of LIFECYCLES; it is not critical, so other X.509 software
# ignores it, and only Veritee's appraisal gives it meaning.
LIFECYCLE_OID = x509.ObjectIdentifier("2.25.236139353109395264848835231284066416806")
# What a trust anchor may endorse when its provisioner said nothing: the least. A CA file can be
# re-minted by whoever holds its key (the owner of an emulated device holds ca.key), so its
# mark alone never lifts a device above emulated; the operator has to say "secured".
DEFAULT_CEILING = "emulated"
# What a CA without the mark endorses: the least. A CA must say "secured" to let its devices
# claim it, so an emulated device's owner cannot promote it by claiming more in its tokens.
UNMARKED_CA_LIFECYCLE = "emulated"
# The profile has no intermediate CA: the manufacturer CA issues device certificates itself.
# A longer path is how a device certificate would sign a certificate of its own (issue 18,
# attack 3: a revoked device mints a new device under another UEID).
MAX_INTERMEDIATES = 0
# x5chain entries read: the device certificate and, optionally, its CA. More is not this profile.
MAX_X5CHAIN = 2
# A path-validation message is the library's and names certificates the attacker chose: bound it.
MAX_REASON_CHARS = 300


def _utf8string(text: str) -> bytes:
    raw = text.encode()
    return bytes([0x0C, len(raw)]) + raw  # DER UTF8String, short form (names are < 128 bytes)


# The only values the extension may hold: compared as whole DER byte strings, nothing parsed.
_MARKS: dict[bytes, str] = {_utf8string(lc): lc for lc in LIFECYCLES}


def lifecycle_extension(lifecycle: str) -> x509.UnrecognizedExtension:
    """The lifecycle endorsement extension for a certificate: "devices here may claim at most
    ``lifecycle``". Add it non-critical."""
    if lifecycle not in LIFECYCLES:
        raise ValueError(f"lifecycle {lifecycle!r} is not one of {LIFECYCLES}")
    return x509.UnrecognizedExtension(LIFECYCLE_OID, _utf8string(lifecycle))


def lifecycle_mark(cert: x509.Certificate) -> str | None:
    """The lifecycle a certificate endorses, or None if it carries no mark; raise
    :class:`UntrustedDevice` for a mark that is not one of :data:`LIFECYCLES`."""
    try:
        ext = cert.extensions.get_extension_for_oid(LIFECYCLE_OID)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    found = _MARKS.get(raw)
    if found is None:
        raise UntrustedDevice(
            f"certificate '{cert.subject.rfc4514_string()}' carries a malformed lifecycle "
            "endorsement"
        )
    return found


def lowest(*lifecycles: str) -> str:
    """The least trustworthy of ``lifecycles`` (emulated < debug < secured)."""
    return min(lifecycles, key=LIFECYCLES.index)


def endorsed_lifecycle(device_cert: x509.Certificate, ca: x509.Certificate) -> str:
    """The highest lifecycle a device certified by ``device_cert`` under ``ca`` may claim, by
    the marks alone (no provisioner's ceiling: see :func:`validate_device_chain`)."""
    ca_mark = lifecycle_mark(ca) or UNMARKED_CA_LIFECYCLE
    device_mark = lifecycle_mark(device_cert)
    return ca_mark if device_mark is None else lowest(ca_mark, device_mark)


def key_id(cert: x509.Certificate) -> bytes:
    """A CA's identity: SHA-256 of its SubjectPublicKeyInfo (DER). Every certificate of one key
    is one CA: a twin re-minted with the same key (new serial, other mark) is the same CA."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


def anchor_ceilings(
    cas: Iterable[x509.Certificate], ceilings: Mapping[bytes, str] | None = None
) -> dict[bytes, str]:
    """The most each trust anchor's key may endorse: the lowest over every anchor of that key
    of its mark and of the ceiling its provisioner recorded (``ceilings``, by :func:`key_id`;
    a key without one: no cap beyond the marks). Independent of the anchors' order."""
    out: dict[bytes, str] = {}
    for ca in cas:
        kid = key_id(ca)
        bound = lifecycle_mark(ca) or UNMARKED_CA_LIFECYCLE
        if ceilings is not None and kid in ceilings:
            bound = lowest(bound, ceilings[kid])
        out[kid] = lowest(out.get(kid, bound), bound)
    return out


def ca_profile_problem(cert: x509.Certificate) -> str | None:
    """Why ``cert`` is not a manufacturer CA under the profile (basicConstraints critical
    CA:true pathlen 0; keyUsage keyCertSign), or None. A trust anchor must fit it:
    cryptography's path validator takes a leaf that is itself in the store as trusted and never
    applies the CA policy to it, so a self-signed *device* certificate provisioned as an anchor
    would be its own whole path."""
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return "it has no basicConstraints"
    if not bc.critical or not bc.value.ca or bc.value.path_length != 0:
        return "its basicConstraints is not critical CA:true, pathlen 0"
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    except x509.ExtensionNotFound:
        return "it has no keyUsage"
    if not ku.value.key_cert_sign:
        return "its keyUsage lacks keyCertSign"
    lifecycle_mark(cert)  # a malformed mark: UntrustedDevice
    return None


def check_anchor(cert: x509.Certificate) -> None:
    """Raise :class:`UntrustedDevice` unless ``cert`` fits the CA profile (see
    :func:`ca_profile_problem`)."""
    problem = ca_profile_problem(cert)
    if problem is not None:
        raise UntrustedDevice(
            f"trust anchor '{cert.subject.rfc4514_string()[:MAX_REASON_CHARS]}' is not a "
            f"manufacturer CA under the device-certificate profile: {problem}"
        )


@dataclass(frozen=True)
class DeviceChain:
    """A device certificate chain that validated under the profile."""

    device_certificate: x509.Certificate
    ca: x509.Certificate  # the trust anchor the path ends in
    lifecycle: str  # the endorsed lifecycle: the device's mark, capped by its anchor's ceiling


def validate_device_chain(
    chain: list[x509.Certificate],
    cas: tuple[x509.Certificate, ...],
    now: dt.datetime,
    ceilings: Mapping[bytes, str] | None = None,
) -> DeviceChain:
    """Validate ``chain`` (device certificate first) to one of ``cas`` at ``now``.

    Raises :class:`UntrustedDevice` for every failure: no trusted CA, a certificate outside its
    validity, a path that is not CA -> device certificate, a certificate off the profile, a
    trust anchor off the CA profile, a device certificate that is itself a trust anchor.
    Revocation is the caller's (it changes between uses; the path does not).

    The endorsed lifecycle is the lowest of the device certificate's mark and its anchor key's
    bound (:func:`anchor_ceilings`: every anchor of that key, its mark and ``ceilings``, the
    provisioner's word by :func:`key_id`).
    """
    if not chain or len(chain) > MAX_X5CHAIN:
        raise UntrustedDevice(
            f"x5chain holds {len(chain)} certificates; the device-certificate profile has the "
            f"device certificate and at most its CA ({MAX_X5CHAIN})"
        )
    if not cas:
        raise UntrustedDevice("no manufacturer CA is trusted")
    leaf, rest = chain[0], chain[1:]
    for ca in cas:
        check_anchor(ca)
    try:
        verifier = (
            PolicyBuilder()
            .store(Store(list(cas)))
            .time(now)
            .max_chain_depth(MAX_INTERMEDIATES)
            .extension_policies(ca_policy=_CA_POLICY, ee_policy=_DEVICE_POLICY)
            .build_client_verifier()
        )
        path = verifier.verify(leaf, rest).chain
    except VerificationError as exc:
        raise UntrustedDevice(_reason(leaf, exc)) from None
    device, ca = path[0], path[-1]
    # cryptography takes a leaf that is itself in the store as a whole path, the CA policy
    # never applied to it: a device certificate is never its own anchor.
    if len(path) != 2 or leaf in cas:
        raise UntrustedDevice(
            "device certificate is itself a trust anchor: a path must be CA -> device certificate"
        )
    bound = anchor_ceilings(cas, ceilings)[key_id(ca)]
    device_mark = lifecycle_mark(device)
    lifecycle = bound if device_mark is None else lowest(bound, device_mark)
    return DeviceChain(device, ca, lifecycle)


def _reason(leaf: x509.Certificate, exc: VerificationError) -> str:
    detail = str(exc)[:MAX_REASON_CHARS]
    try:
        issuer = leaf.issuer.rfc4514_string()[:MAX_REASON_CHARS]
    except CERT_ERRORS:
        issuer = "?"
    return (
        f"device certificate refused: its issuer '{issuer}' is not a trusted CA under the "
        f"device-certificate profile (CA -> device certificate): {detail}"
    )


# -- the profile, as cryptography's extension policies -----------------------------------------
# A validator raises to refuse; cryptography turns that into a VerificationError naming it.


def _ca_constraints(_policy: Any, _cert: x509.Certificate, bc: x509.BasicConstraints) -> None:
    if not bc.ca or bc.path_length != 0:
        raise ValueError("a manufacturer CA must be basicConstraints CA:true, pathlen 0")


def _ca_usage(_policy: Any, _cert: x509.Certificate, ku: x509.KeyUsage) -> None:
    if not ku.key_cert_sign:
        raise ValueError("a manufacturer CA's keyUsage must include keyCertSign")


def _device_constraints(_policy: Any, _cert: x509.Certificate, bc: x509.BasicConstraints) -> None:
    if bc.ca:
        raise ValueError("a device certificate must be basicConstraints CA:false")


def _device_usage(_policy: Any, _cert: x509.Certificate, ku: x509.KeyUsage) -> None:
    if not ku.digital_signature or ku.key_cert_sign:
        raise ValueError(
            "a device certificate's keyUsage must be digitalSignature, never keyCertSign"
        )


_CA_POLICY = (
    ExtensionPolicy.permit_all()
    .require_present(x509.BasicConstraints, Criticality.CRITICAL, _ca_constraints)
    .require_present(x509.KeyUsage, Criticality.AGNOSTIC, _ca_usage)
)
_DEVICE_POLICY = (
    ExtensionPolicy.permit_all()
    .require_present(x509.BasicConstraints, Criticality.AGNOSTIC, _device_constraints)
    .require_present(x509.KeyUsage, Criticality.AGNOSTIC, _device_usage)
)
