"""Prometheus metrics, correct across worker processes (prometheus-client multiprocess mode).

``serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before any worker starts;
each worker then writes its counters to memory-mapped files there and ``/metrics``, whichever
worker answers, sums them all. Without the variable (one process, tests) the default
in-process registry is used.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

APPRAISALS = Counter(
    "veritee_appraisals_total",
    "Evidence appraisals, by scheme and outcome (affirming, warning, contraindicated, none, "
    "malformed).",
    ["scheme", "outcome"],
)
# A full submission is a few milliseconds on loopback; the buckets resolve that range.
LATENCY = Histogram(
    "veritee_appraisal_seconds",
    "Time to handle one evidence submission, from request to signed result.",
    buckets=(0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)
SESSIONS = Counter("veritee_sessions_total", "Challenge-response sessions created.")
PROBLEMS = Counter(
    "veritee_problems_total",
    "Requests refused with a problem, by the check that failed.",
    ["check"],
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


def render() -> bytes:
    """The exposition text: every worker's metrics when running multiprocess."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)
