"""Attested TLS (RA-TLS): TLS channels whose endpoints prove they are attested modules.

A module's TLS endpoint runs in the secure world (the TLS TA); its certificate is self-signed
by the module attestation key and carries evidence, fresh for each connection. Relying
parties use :func:`connect` (or :class:`RelyingServer`) with an appraiser, and get a
connection only once the peer's evidence passed every check. See docs/ratls.md.

Layers: the protocol core is ``veritee.tls`` (``wire``, ``certificate`` and ``verify`` are
pure, bytes and values in, a result or one error out; ``engine`` is the protocol without I/O),
below the secure world, which runs it too; here, ``channel``, ``client`` and ``module`` move
its bytes over sockets and the TEE Client API, and ``appraisers`` asks a verification service.
"""

from veritee.ratls.appraisers import ServiceAppraiser
from veritee.ratls.channel import AttestedConnection
from veritee.ratls.client import RelyingServer, connect
from veritee.ratls.module import (
    ConnectionResult,
    ModuleEndpoint,
    ModuleResult,
    ModuleServer,
    PeerPolicy,
    module_request,
)
from veritee.tls.appraisers import Appraiser, LocalAppraiser
from veritee.tls.verify import AttestedPeer, Freshness
from veritee.tls.wire import MODES, Mode

__all__ = [
    "MODES",
    "Appraiser",
    "AttestedConnection",
    "AttestedPeer",
    "ConnectionResult",
    "Freshness",
    "LocalAppraiser",
    "Mode",
    "ModuleEndpoint",
    "ModuleResult",
    "ModuleServer",
    "PeerPolicy",
    "RelyingServer",
    "ServiceAppraiser",
    "connect",
    "module_request",
]
