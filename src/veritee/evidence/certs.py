"""X.509 from untrusted bytes: the one list of every way ``cryptography`` refuses a certificate.

``cryptography`` parses lazily and does not raise one exception type for bad input: a mangled
version field is ``InvalidVersion``, a repeated extension ``DuplicateExtension``, a key of an
unknown kind ``UnsupportedAlgorithm`` (none of them a ``ValueError``). Every place that reads a
certificate an attacker may have shaped catches :data:`CERT_ERRORS`, so bad bytes become a
clear "does not parse" rather than a traceback.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

CERT_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    UnsupportedAlgorithm,
)
