"""How a relying party judges a peer's RA-TLS certificate: the appraiser interface, and
appraisal in this process against trust anchors and reference values it is given (what the
secure world's TLS TA uses). Appraisal by a verification service is ``veritee.ratls``'s.
"""

from __future__ import annotations

import datetime as dt
import os
from abc import ABC, abstractmethod
from collections.abc import Callable

from veritee.evidence.appraisal import ReferenceValues, TrustAnchors
from veritee.tls import verify, wire
from veritee.tls.verify import AttestedPeer, Freshness

# Statuses a relying party accepts by default. The emulated TEE's lifecycle makes its
# hardware claim a warning at best, so affirming alone would refuse every emulated device.
DEFAULT_ACCEPT = frozenset({verify.STATUS_AFFIRMING, verify.STATUS_WARNING})
Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Appraiser(ABC):
    """Issues freshness inputs and appraises a peer's certificate and evidence against them."""

    @abstractmethod
    def challenge(self) -> Freshness:
        """A fresh challenge to send before the handshake (challenge mode)."""

    @abstractmethod
    def exporter(self, value: bytes) -> Freshness:
        """The freshness input for a session whose exporter value is ``value``."""

    @abstractmethod
    def appraise(
        self, cert_der: bytes, freshness: Freshness, evidence: bytes | None = None
    ) -> AttestedPeer:
        """Every check; raise the failed one."""

    def close(self) -> None:  # noqa: B027 - optional hook: most appraisers hold nothing
        """Release what the appraiser holds (connections to a service)."""


class LocalAppraiser(Appraiser):
    """Appraisal in this process against the trust anchors and reference values it is given."""

    def __init__(
        self, anchors: TrustAnchors, refs: ReferenceValues, *, clock: Clock = _utcnow
    ) -> None:
        self.anchors, self.refs, self.clock = anchors, refs, clock

    def challenge(self) -> Freshness:
        return Freshness("challenge", os.urandom(wire.CHALLENGE_BYTES))

    def exporter(self, value: bytes) -> Freshness:
        return Freshness("exporter", value)

    def appraise(
        self, cert_der: bytes, freshness: Freshness, evidence: bytes | None = None
    ) -> AttestedPeer:
        return verify.appraise(
            cert_der, freshness, self.anchors, self.refs, evidence=evidence, now=self.clock()
        )
