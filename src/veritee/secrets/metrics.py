"""The secret service's Prometheus metrics (``GET /metrics``).

Releases and challenges by outcome (``released``/``issued``, or the refusal's error code of
the protocol, e.g. ``nonce_replayed``, ``policy_refused``), and the time a release takes. No
secret's name is a label: the service tells which names exist only to a genuine device (a
secret is looked up after the evidence verified), and an unauthenticated scrape must not
list them either. Bind the service, or a proxy before ``/metrics``, where only the
operator's scraper reaches it.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST
# A release is a nonce write, an appraisal (signatures over a chain) and an HPKE seal: a few
# milliseconds here, tens or hundreds with a remote verifier in the loop.
RELEASE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


class SecretMetrics:
    """One service's registry (an instance each, so tests and embedders keep them apart)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.releases = Counter(
            "veritee_secret_releases",
            "Release requests by outcome: released, or the refusal's error code.",
            ["outcome"],
            registry=self.registry,
        )
        self.challenges = Counter(
            "veritee_secret_challenges",
            "Challenge requests by outcome: issued, or the refusal's error code.",
            ["outcome"],
            registry=self.registry,
        )
        self.release_seconds = Histogram(
            "veritee_secret_release_seconds",
            "Time to answer one release request, released or refused.",
            buckets=RELEASE_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
