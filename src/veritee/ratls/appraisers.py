"""Who judges the peer's evidence: this process (trust anchors and reference values it holds),
or a verification service (Veraison challenge-response API; its signed result, an EAR).

Both issue the freshness input (a challenge, or a registered exporter value) and return an
:class:`~veritee.tls.verify.AttestedPeer` or raise the failed check. The service's answer
is judged by :func:`judge_ear`, which is pure; only :class:`ServiceAppraiser` talks HTTP, and
it is reached through ``veritee.verifier.client`` (imported when first used, so the secure
world and plain clients do not need the HTTP stack).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from veritee.errors import EvidenceError
from veritee.evidence.claims import LIFECYCLES, MEDIA_TYPE
from veritee.evidence.errors import MeasurementNotEndorsed, NonceMismatch
from veritee.tls import certificate, verify, wire
from veritee.tls.appraisers import DEFAULT_ACCEPT, Appraiser, Clock, _utcnow
from veritee.tls.errors import AttestationRejected, ExporterMismatch, StaleChallenge, named
from veritee.tls.verify import AttestedPeer, Freshness

if TYPE_CHECKING:
    from veritee.verifier.client import VerifierClient
    from veritee.verifier.ear import Ear


class ServiceAppraiser(Appraiser):
    """Appraisal by a verification service: one session per connection, its EAR checked here.

    Challenge mode uses the service's own nonce as the challenge; exporter mode registers the
    session's exporter value as a client-chosen nonce (the service must allow those).
    """

    def __init__(
        self,
        url: str,
        *,
        accept: Iterable[str] = DEFAULT_ACCEPT,
        clock: Clock = _utcnow,
        client: VerifierClient | None = None,
    ) -> None:
        from veritee.verifier.client import VerifierClient

        self.url = url.rstrip("/")
        self.accept = frozenset(accept)
        self.clock = clock
        self._client = client or VerifierClient(self.url)
        self._key: Any = None

    def challenge(self) -> Freshness:
        from veritee.verifier.client import nonce_of

        url, session = self._client.new_session(nonce_size=wire.CHALLENGE_BYTES)
        return Freshness("challenge", nonce_of(session), session=url)

    def exporter(self, value: bytes) -> Freshness:
        url, _ = self._client.new_session(nonce=value)
        return Freshness("exporter", value, session=url)

    def appraise(
        self, cert_der: bytes, freshness: Freshness, evidence: bytes | None = None
    ) -> AttestedPeer:
        from veritee.verifier import ear

        cert = certificate.read(cert_der)
        certificate.check_validity(cert, self.clock())
        data = verify.evidence_of(cert, freshness, evidence)
        if freshness.session is None:
            raise AttestationRejected("no verification session was opened for this connection")
        done = self._client.submit(freshness.session, data, MEDIA_TYPE)
        token = done.get("result")
        if not isinstance(token, str):
            raise AttestationRejected(
                f"the verification service ended the session {done.get('status')!r} "
                "without a result"
            )
        if self._key is None:
            self._key = self._client.public_key()
        result = ear.verify(token, self._key, now=int(self.clock().timestamp()))
        return judge_ear(
            result,
            token,
            cert_der,
            data,
            freshness,
            accept=self.accept,
            verifier=self.url,
        )

    def close(self) -> None:
        self._client.close()


def judge_ear(
    result: Ear,
    token: str,
    cert_der: bytes,
    evidence: bytes,
    freshness: Freshness,
    *,
    accept: frozenset[str],
    verifier: str,
) -> AttestedPeer:
    """Accept a verified EAR for this connection, or raise the check it failed. Pure.

    The service checked the evidence and the nonce; the key binding (step 5) is checked here,
    on the very bytes the service appraised, as the EAR does not carry the TLS key.
    """
    from veritee.verifier.appraise import ANNOTATED, FAILURE, REASONS
    from veritee.verifier.ear import STATUSES, tier_of

    failure = result.extensions.get(FAILURE)
    if failure is not None:
        check = str(failure.get("check", ""))
        reason = str(failure.get("reason", "the verification service refused the evidence"))
        if check == NonceMismatch.__name__:
            cls = ExporterMismatch if freshness.mode == "exporter" else StaleChallenge
            raise cls(f"the verification service says: {reason}")
        err = named(check, reason)
        raise err if isinstance(err, EvidenceError) else AttestationRejected(reason)
    if result.nonce is None or not _same_nonce(result.nonce, freshness.nonce):
        cls = ExporterMismatch if freshness.mode == "exporter" else StaleChallenge
        raise cls("the attestation result is for another nonce than this connection's")
    cert = certificate.read(cert_der)
    platform, vtee, module = verify.decode_unverified(evidence)
    verify.check_key(cert, module, vtee)
    reasons: list[str] = []
    for appraisal in result.submods.values():
        reasons.extend(str(r) for r in appraisal.extensions.get(REASONS, ()))
        if tier_of(appraisal.trust_vector.executables) == "contraindicated":
            raise MeasurementNotEndorsed(
                "; ".join(reasons) or "a measurement is not among the reference values"
            )
    status = max((a.status for a in result.submods.values()), key=STATUSES.index)
    if status not in accept:
        detail = f": {'; '.join(reasons)}" if reasons else ""
        raise AttestationRejected(f"the verification service's status is {status}{detail}")
    annotated = result.submods.get("module")
    claims = annotated.extensions.get(ANNOTATED, {}) if annotated else {}
    endorsed_as = claims.get("endorsed-as") if isinstance(claims, Mapping) else None
    return verify.peer_of(
        cert,
        freshness,
        platform,
        module,
        lifecycle=_ear_lifecycle(result),
        status=status,
        appraised_by=verifier,
        endorsed_as=str(endorsed_as.get("name", "")) if isinstance(endorsed_as, Mapping) else "",
        ear=token,
    )


def _ear_lifecycle(result: Ear) -> str:
    """The lifecycle the service vouched for (its endorsed value), or the least if it says none:
    the unverified token's claim is never reported."""
    from veritee.verifier.appraise import ANNOTATED

    platform = result.submods.get("platform")
    claims = platform.extensions.get(ANNOTATED, {}) if platform else {}
    value = claims.get("lifecycle") if isinstance(claims, Mapping) else None
    return value if isinstance(value, str) and value in LIFECYCLES else LIFECYCLES[0]


def wire_nonce(nonce: bytes) -> str:
    """A nonce as an EAR carries it (base64url, padded as Veraison writes it)."""
    from veritee.verifier.ear import encode_nonce

    return encode_nonce(nonce)


def _same_nonce(carried: str, nonce: bytes) -> bool:
    """Whether an EAR's ``eat_nonce`` (padded or not) is ``nonce``."""
    import hmac

    from veritee.evidence.errors import MalformedToken
    from veritee.verifier.ear import decode_nonce

    try:
        return hmac.compare_digest(decode_nonce(carried), nonce)
    except MalformedToken:
        return False
